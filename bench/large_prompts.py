"""Large prompts: other users' latency while 1, 2 and 5 MB chat requests are mirrored at 100%, against
the same load with mirroring off — in one run.

Starts a simulated primary and candidate and two `shadowtap serve` processes on loopback with the default
settings (`shadow.max_body_bytes` 8 MiB), one mirroring every chat request and one mirroring none (the
normal users ask on /v1/completions, which neither mirrors unless `--mirror-everyone`). For
each prompt size, each proxy in turn gets small "normal" requests at a steady open-loop rate while a
second stream of large-prompt requests arrives beside them; the normal users' p50/p99 are compared. The
first row (10 KB "large" prompts, parsed and recorded on the loop like any small request) is what
mirroring costs at all; the rows below it read against it.

Latency on a shared machine moves with whatever else runs on it, so the table also gives figures that do
not: the CPU time the proxy's event-loop thread spent per large prompt, and that of the processes it
started (the offload worker, which parses, masks and encodes large pairs, and the scoring process). Prints a table and writes it
to bench/results/large_prompts.txt. Stops by itself (each phase `--seconds`, at most 60; `--repeats` phases per size and mode, at most 10).

    python bench/large_prompts.py [--rate 40] [--large-rate 2] [--seconds 10] [--repeats 3] [--sizes 0.01,1,2,5]
        [--no-scoring] [--no-pin] [--offload-anywhere] [--mirror-everyone]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from shadowtap.scorers.embedded import PROCESS_NAME

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    RawClient,
    children_cpu_seconds,
    cpu_seconds,
    descendants,
    free_port,
    pct,
    processes,
    start_proxy,
    start_simulated,
)

MAX_SECONDS = 60
MAX_REPEATS = 10
CHAT_PATH, NORMAL_PATH = "/v1/chat/completions", "/v1/completions"
# The normal users ask on another route than the large prompts, so the proxy's own histogram of the time
# it added (client-facing minus the primary's, per request and route) is theirs alone.
NORMAL = {"model": "bench", "prompt": "Summarise the refund policy in one line."}
LAG_INTERVAL_S = 0.002  # the proxies' event-loop lag sampler: a timer every 2 ms
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
    normal, heavy = RawClient(url.replace(CHAT_PATH, NORMAL_PATH)), RawClient(url)
    body = json.dumps(NORMAL).encode()
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


async def start_workers(urls: dict[str, str]) -> None:
    """One large prompt through each proxy: the one mirroring starts its offload worker."""
    for url in urls.values():
        client = RawClient(url)
        await client.request(large_request(1.0), False)
        client.close()
    await asyncio.sleep(2.0)


def cpu(pid: int) -> tuple[float, float]:
    """CPU seconds so far: the proxy's main (event-loop) thread, and the processes it started."""
    return cpu_seconds(pid, pid), children_cpu_seconds(pid)


def buckets(url: str) -> dict[str, dict[float, float]]:
    """The proxy's histograms the table reads, as cumulative counts by bound: the time it added to the
    normal route's requests, and how late its event loop ran a timer."""
    text = httpx.get(url.split("/v1/")[0] + "/metrics", timeout=10).text
    added = r'shadowtap_added_latency_seconds_bucket\{(?=[^}]*route="%s")[^}]*le="([^"]+)"[^}]*\} ([0-9.e+]+)'
    lag = r'shadowtap_event_loop_delay_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)'
    return {
        "added": {float(le): float(n) for le, n in re.findall(added % re.escape(NORMAL_PATH), text)},
        "lag": {float(le): float(n) for le, n in re.findall(lag, text)},
    }


def delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


def quantile(buckets: dict[float, float], q: float) -> float:
    """A quantile (ms) of a cumulative histogram, interpolated within its bucket."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if not total:
        return float("nan")
    rank, low, below = q * total, 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return low * 1000
            share = (rank - below) / max(buckets[bound] - below, 1e-9)
            return (low + (bound - low) * share) * 1000
        low, below = bound, buckets[bound]
    return low * 1000


async def measured_phase(url: str, pid: int, large: bytes, args: argparse.Namespace) -> dict[str, object]:
    """The normal users' latencies beside large prompts; then, alone, what one large prompt costs."""
    before = buckets(url)
    latencies, _ = await phase(url, args.rate, large, args.large_rate, args.seconds)
    after = buckets(url)
    added, lag = delta(after["added"], before["added"]), delta(after["lag"], before["lag"])
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
        "latencies": latencies,
        "p50": statistics.median(latencies),
        "p99": pct(latencies, 0.99),
        "added_p50": quantile(added, 0.5),
        "added_p99": quantile(added, 0.99),
        "lag_p99": quantile(lag, 0.99),
        "lag_over_5ms": lag[float("inf")] - lag.get(0.005, 0.0),
        "loop_ms": (loop_after - loop_before) * 1000 / ALONE,
        "worker_ms": (workers_after - workers_before) * 1000 / ALONE,
    }


async def measure(
    urls: dict[str, str], pids: dict[str, int], args: argparse.Namespace
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for size in args.sizes:
        large = large_request(size)
        for repeat in range(args.repeats):
            # Off then on, then on then off: a drift in the machine's load over a size's phases does not
            # read as one mode's cost.
            for mode in ("off", "on") if repeat % 2 == 0 else ("on", "off"):
                row = await measured_phase(urls[mode], pids[mode], large, args)
                rows.append({"size": size, "mode": mode, "repeat": repeat, **row})
                print(
                    f"  done: {size} MB, mirroring {mode} ({repeat + 1} of {args.repeats})", file=sys.stderr
                )
    return rows


def table(rows: list[dict[str, object]], args: argparse.Namespace) -> str:
    lines = [
        "other users' latency with large prompts mirrored at 100% vs mirroring off (ms; loopback, simulated upstreams)",
        f"machine: {os.cpu_count()} cores; normal {args.rate}/s on {NORMAL_PATH}, large prompts {args.large_rate}/s on "
        f"{CHAT_PATH}, {args.seconds}s per phase, {args.repeats} phases per size and mode (off and on in turn); "
        + (
            "each proxy on core 0 with its scoring process and "
            + ("" if not args.offload_anywhere else "(on any core) ")
            + "its offload worker (both at nice 10), the upstreams and the load "
            "generator on the others (the candidate at nice 19, as if on its own machine)"
            if args.pinned
            else "every process on any core"
        )
        + (
            "; the normal users' requests mirrored too"
            if args.mirror_everyone
            else "; only the large prompts mirrored (the normal users' requests in neither mode)"
        )
        + (
            "; no scoring"
            if args.no_scoring
            else "; pairs scored by each proxy's scoring process (the embedded default)"
        ),
        "each figure is the median over the phases; `+`: the median of each phase pair's on minus off, with the"
        " smallest and largest in brackets; pooled: the p99 of all the phases' latencies of a mode together",
        "end to end: as the normal users saw it (the simulated primary's own pauses on a large prompt included);"
        " added: what the proxy added to their requests (its shadowtap_added_latency_seconds, interpolated);"
        f" loop lag: how late the proxy's event loop ran a {LAG_INTERVAL_S * 1000:g} ms timer (p99, and the"
        " samples over 5 ms late)",
        f"then {ALONE} large prompts alone: loop ms = CPU of the proxy's event-loop thread per large prompt"
        " (its own request included); worker ms = CPU of the processes it started (the offload worker)",
        f"{'prompt':>7} | {'end to end p50':>15} {'p99 off/on':>15} {'p99 +':>22} {'pooled p99 off/on, +':>23} |"
        f" {'added p99 off/on':>16}"
        f" {'p99 +':>21} | {'lag p99 off/on':>14} {'>5ms':>7} | {'loop ms off/on':>14} {'worker ms':>9}",
    ]

    def figure(size: float, mode: str, name: str) -> float:
        return statistics.median(
            float(r[name])  # type: ignore[arg-type]
            for r in rows
            if r["size"] == size and r["mode"] == mode
        )

    def pooled(size: float) -> str:
        """p99 of every phase's latencies together, per mode: the phases of both modes alternate, so a
        stretch of load from elsewhere falls on both alike."""
        p99 = {
            mode: pct(
                [x for r in rows if r["size"] == size and r["mode"] == mode for x in r["latencies"]],  # type: ignore[attr-defined]
                0.99,
            )
            for mode in ("off", "on")
        }
        return f"{p99['off']:>7.2f}/{p99['on']:<7.2f} {p99['on'] - p99['off']:>+7.2f}"

    def growth(size: float, name: str) -> str:
        by = {(r["mode"], r["repeat"]): float(r[name]) for r in rows if r["size"] == size}  # type: ignore[arg-type]
        deltas = [by[("on", k)] - by[("off", k)] for k in range(args.repeats)]
        return f"{statistics.median(deltas):+.2f} [{min(deltas):+.2f}, {max(deltas):+.2f}]"

    for size in args.sizes:

        def pair(name: str, fmt: str, size: float = size) -> str:
            return f"{figure(size, 'off', name):>{fmt}}/{figure(size, 'on', name):<{fmt}}"

        lines.append(
            f"{size:>5g} MB | {pair('p50', '7.2f')} {pair('p99', '7.2f')} {growth(size, 'p99'):>22} {pooled(size)} |"
            f" {pair('added_p99', '8.2f')} {growth(size, 'added_p99'):>21} | {pair('lag_p99', '6.2f')}"
            f" {pair('lag_over_5ms', '3.0f')} | {pair('loop_ms', '6.1f')} {figure(size, 'on', 'worker_ms'):>9.1f}"
        )
    return "\n".join(lines)


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--large-rate", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3, help="phases per prompt size and mode (default 3)")
    parser.add_argument(
        "--sizes", type=lambda s: [float(x) for x in s.split(",")], default=[0.01, 1.0, 2.0, 5.0]
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="let every process run on any core (default: the proxies on core 0, the simulated upstreams and "
        "the load generator on the others, as on separate machines; the scoring processes with their proxy, "
        "the offload workers anywhere)",
    )
    parser.add_argument(
        "--offload-anywhere",
        action="store_true",
        help="let each proxy's offload worker run on any core (default: on the proxy's core, with its scoring "
        "process: all of shadowtap on the proxy's machine, the upstreams undisturbed on theirs)",
    )
    parser.add_argument(
        "--no-scoring",
        action="store_true",
        help="no scoring process beside each proxy (as when pairs go to Kafka and `shadowtap score` workers "
        "run elsewhere): what mirroring costs with no scoring on the machine",
    )
    parser.add_argument(
        "--mirror-everyone",
        action="store_true",
        help="mirror the normal users' requests as well as the large prompts in the mirroring proxy (default: "
        "the large prompts only, so that the comparison is of their mirroring alone)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "large_prompts.txt"
    )
    args = parser.parse_args()
    args.seconds = min(args.seconds, MAX_SECONDS)
    args.repeats = max(1, min(args.repeats, MAX_REPEATS))
    cores = sorted(os.sched_getaffinity(0))
    proxy_cpus = None if args.no_pin or len(cores) < 2 else {cores[0]}
    if proxy_cpus is not None:
        os.sched_setaffinity(0, set(cores[1:]))  # this process and the upstreams it starts
    args.pinned = proxy_cpus is not None
    with tempfile.TemporaryDirectory() as tmp, processes(grace_s=15) as procs:
        work = Path(tmp)
        p_port, c_port = free_port(), free_port()
        procs.append(start_simulated(p_port, "primary-sim", work / "primary.log"))
        # The candidate runs elsewhere in production: here it yields the shared cores to the others.
        niceness = 19 if args.pinned else 0
        procs.append(start_simulated(c_port, "candidate-sim", work / "candidate.log", niceness=niceness))
        urls, pids = {}, {}
        for mode, rate in (("on", "1"), ("off", "0")):
            port = free_port()
            (work / mode).mkdir()
            settings = {
                "SHADOWTAP_SHADOW_SAMPLE_RATE": rate,
                # What is compared is the large prompts' mirroring: the normal users' requests are not
                # mirrored in either mode unless asked (what mirroring them costs is bench/proxy_overhead.py's).
                "SHADOWTAP_SHADOW_ROUTES": json.dumps(
                    {NORMAL_PATH: float(rate) if args.mirror_everyone else 0.0}
                ),
                "SHADOWTAP_CANDIDATE_MODEL": "candidate-sim",
                "SHADOWTAP_SERVER_LOOP_LAG_INTERVAL_S": str(LAG_INTERVAL_S),
                "SHADOWTAP_SCORING_ENABLED": "false" if args.no_scoring else "true",
            }
            proxy = start_proxy(p_port, c_port, port, work / mode, settings, proxy_cpus)
            procs.append(proxy)
            urls[mode], pids[mode] = f"http://127.0.0.1:{port}/v1/chat/completions", proxy.pid
        asyncio.run(start_workers(urls))
        if proxy_cpus is not None and args.offload_anywhere:
            for pid in pids.values():
                for child in descendants(pid):
                    # The offload worker: wherever there is room, at its nice. The scoring process stays on
                    # the proxy's core: it is the proxy's own work, on the proxy's machine.
                    if process_name(child) != PROCESS_NAME:
                        os.sched_setaffinity(child, set(cores))
        rows = asyncio.run(measure(urls, pids, args))
    text = table(rows, args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
