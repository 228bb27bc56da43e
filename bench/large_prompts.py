"""Large prompts: other users' latency while 1, 2 and 5 MB chat requests are mirrored at 100%, against
the same load with mirroring off — in one run.

Starts a simulated primary and candidate and two `shadowtap serve` processes on loopback with the default
settings (`shadow.max_body_bytes` 8 MiB), one mirroring every chat request and one mirroring none. For
each prompt size, each proxy in turn gets small "normal" requests at a steady open-loop rate while a
second stream of large-prompt requests arrives beside them; the normal users' p50/p99 are compared.

Latency on a shared machine moves with whatever else runs on it, so the table also gives figures that do
not: the CPU time the proxy's event-loop thread spent per large prompt, and that of the processes it
started (the offload worker, which parses, masks and encodes large pairs). Prints a table and writes it
to bench/results/large_prompts.txt. Stops by itself (each phase `--seconds`, at most 60).

    python bench/large_prompts.py [--rate 40] [--large-rate 2] [--seconds 10] [--sizes 1,2,5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    REQUEST,
    RawClient,
    children_cpu_seconds,
    cpu_seconds,
    free_port,
    pct,
    processes,
    start_proxy,
    start_simulated,
)

MAX_SECONDS = 60
ALONE = 10  # large prompts sent one after another, with nothing else, to measure what one costs


def large_request(megabytes: float) -> bytes:
    """A chat request whose user message is about `megabytes` MB of prose."""
    sentence = "The customer asked about the refund policy for an order placed last spring. "
    text = sentence * int(megabytes * 1_000_000 / len(sentence))
    return json.dumps({"model": "bench", "messages": [{"role": "user", "content": text}]}).encode()


async def phase(
    url: str, rate: float, large: bytes, large_rate: float, seconds: float
) -> tuple[list[float], int]:
    """Normal users' latencies (ms) over `seconds`, with large prompts arriving beside them; and how many
    large prompts were sent."""
    normal, heavy = RawClient(url), RawClient(url)
    body = json.dumps(REQUEST).encode()
    for _ in range(20):
        await normal.request(body, False)
    latencies: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        latencies.append(await normal.request(body, False))

    async def big() -> None:
        await heavy.request(large, False)

    start = time.perf_counter()
    next_normal = next_large = start
    while (now := time.perf_counter()) - start < seconds:
        if now >= next_normal:
            tasks.add(asyncio.ensure_future(one()))
            next_normal += 1 / rate
        if now >= next_large:
            tasks.add(asyncio.ensure_future(big()))
            next_large += 1 / large_rate
        await asyncio.sleep(max(0.0, min(next_normal, next_large) - time.perf_counter()))
    await asyncio.wait(tasks, timeout=30)
    normal.close()
    heavy.close()
    return latencies, int(seconds * large_rate) + 1


def cpu(pid: int) -> tuple[float, float]:
    """CPU seconds so far: the proxy's main (event-loop) thread, and the processes it started."""
    return cpu_seconds(pid, pid), children_cpu_seconds(pid)


async def measured_phase(url: str, pid: int, large: bytes, args: argparse.Namespace) -> dict[str, object]:
    """The normal users' latencies beside large prompts; then, alone, what one large prompt costs."""
    latencies, _ = await phase(url, args.rate, large, args.large_rate, args.seconds)
    await asyncio.sleep(2.0)  # the last records are written
    client = RawClient(url)
    loop_before, workers_before = cpu(pid)
    for _ in range(ALONE):
        await client.request(large, False)
    await asyncio.sleep(2.0)
    loop_after, workers_after = cpu(pid)
    client.close()
    return {
        "n": len(latencies),
        "p50": statistics.median(latencies),
        "p99": pct(latencies, 0.99),
        "loop_ms": (loop_after - loop_before) * 1000 / ALONE,
        "worker_ms": (workers_after - workers_before) * 1000 / ALONE,
    }


async def measure(
    urls: dict[str, str], pids: dict[str, int], args: argparse.Namespace
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for size in args.sizes:
        large = large_request(size)
        for mode in ("off", "on"):
            row = await measured_phase(urls[mode], pids[mode], large, args)
            rows.append({"size": size, "mode": mode, **row})
            print(f"  done: {size} MB, mirroring {mode}", file=sys.stderr)
    return rows


def table(rows: list[dict[str, object]], args: argparse.Namespace) -> str:
    lines = [
        "other users' latency with large prompts mirrored at 100% vs mirroring off (ms; loopback, simulated upstreams)",
        f"machine: {os.cpu_count()} cores; normal {args.rate}/s, large prompts {args.large_rate}/s, {args.seconds}s per phase",
        f"then {ALONE} large prompts alone: loop ms = CPU of the proxy's event-loop thread per large prompt"
        " (its own request included); worker ms = CPU of the processes it started (the offload worker)",
        f"{'prompt':>7} {'off p50':>8} {'on p50':>8} {'off p99':>8} {'on p99':>8} {'p99 +':>8}"
        f" {'loop ms off':>11} {'loop ms on':>10} {'worker ms on':>12}",
    ]
    by = {(r["size"], r["mode"]): r for r in rows}
    for size in args.sizes:
        off, on = by[(size, "off")], by[(size, "on")]
        grow = float(on["p99"]) - float(off["p99"])  # type: ignore[arg-type]
        lines.append(
            f"{size:>5} MB {off['p50']:>8.2f} {on['p50']:>8.2f} {off['p99']:>8.2f} {on['p99']:>8.2f} {grow:>+8.2f}"
            f" {off['loop_ms']:>11.1f} {on['loop_ms']:>10.1f} {on['worker_ms']:>12.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--large-rate", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sizes", type=lambda s: [float(x) for x in s.split(",")], default=[1.0, 2.0, 5.0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "large_prompts.txt"
    )
    args = parser.parse_args()
    args.seconds = min(args.seconds, MAX_SECONDS)
    with tempfile.TemporaryDirectory() as tmp, processes(grace_s=15) as procs:
        work = Path(tmp)
        p_port, c_port = free_port(), free_port()
        procs.append(start_simulated(p_port, "primary-sim", work / "primary.log"))
        procs.append(start_simulated(c_port, "candidate-sim", work / "candidate.log"))
        urls, pids = {}, {}
        for mode, rate in (("on", "1"), ("off", "0")):
            port = free_port()
            (work / mode).mkdir()
            settings = {"SHADOWTAP_SHADOW_SAMPLE_RATE": rate, "SHADOWTAP_CANDIDATE_MODEL": "candidate-sim"}
            proxy = start_proxy(p_port, c_port, port, work / mode, settings)
            procs.append(proxy)
            urls[mode], pids[mode] = f"http://127.0.0.1:{port}/v1/chat/completions", proxy.pid
        rows = asyncio.run(measure(urls, pids, args))
    text = table(rows, args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
