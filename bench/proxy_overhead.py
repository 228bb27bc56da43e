"""Latency the proxy adds, with 100% mirroring, against calling the primary directly — in one run.

Starts a simulated primary, a (slower) simulated candidate and `shadowtap serve` as separate processes
on loopback, then drives an open-loop load at several request rates. Each tick sends one request
straight to the primary and one through the proxy, in random order, so both arms see the same machine.
Prints medians/p99s side by side, the added latency and the ratio, and streamed time to first token,
and writes the table to bench/results/.

    python bench/proxy_overhead.py [--rates 50,100,200] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import REQUEST, RawClient, free_port, pct, processes, start_proxy, start_simulated


async def run_rate(
    direct_url: str, proxy_url: str, rate: float, seconds: float, stream: bool
) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"direct": [], "proxy": []}
    errors: collections.Counter[str] = collections.Counter()
    body = json.dumps(dict(REQUEST, stream=True) if stream else REQUEST).encode()
    clients = {"direct": RawClient(direct_url), "proxy": RawClient(proxy_url)}
    for _ in range(20):  # warm both paths
        for client in clients.values():
            await client.request(body, stream)

    async def one(arm: str) -> None:
        try:
            results[arm].append(await clients[arm].request(body, stream))
        except Exception as exc:
            errors[f"{arm}: {type(exc).__name__}: {exc}"[:160]] += 1

    tasks: list[asyncio.Task[None]] = []
    interval = 1.0 / rate
    start_t = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start_t + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        arms = ["direct", "proxy"]
        random.shuffle(arms)
        tasks.extend(asyncio.create_task(one(arm)) for arm in arms)
    await asyncio.gather(*tasks)
    for client in clients.values():
        client.close()
    for what, count in errors.items():
        print(f"  {count} request(s) failed at {rate:g}/s, {what}", file=sys.stderr)
    return results


def measure(direct: str, proxied: str, rates: list[float], seconds: float) -> list[dict[str, Any]]:
    """Both arms at every rate, plain answers; streamed TTFT at the lowest and highest rate."""
    rows: list[dict[str, Any]] = []
    for stream in (False, True):
        for rate in rates if not stream else sorted({rates[0], rates[-1]}):
            res = asyncio.run(run_rate(direct, proxied, rate, seconds, stream))
            d, p = res["direct"], res["proxy"]
            rows.append(
                {
                    "mode": "stream TTFT" if stream else "non-stream",
                    "rate": rate,
                    "n": min(len(d), len(p)),
                    "direct_p50": statistics.median(d),
                    "proxy_p50": statistics.median(p),
                    "direct_p99": pct(d, 0.99),
                    "proxy_p99": pct(p, 0.99),
                }
            )
            print(f"  done: {rows[-1]['mode']} at {rate:g}/s", file=sys.stderr)
    return rows


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="50,100,200", help="request rates per arm (requests/s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each rate")
    parser.add_argument(
        "--sample-rate", type=float, default=1.0, help="share of requests mirrored (1.0: all, 0: none)"
    )
    parser.add_argument("--out", default="bench/results/proxy_overhead.txt")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="shadowtap-bench-"))
    p_port, c_port, x_port = free_port(), free_port(), free_port()
    with processes(grace_s=15) as procs:
        procs.append(start_simulated(p_port, "primary-sim", workdir / "primary.log"))
        procs.append(start_simulated(c_port, "candidate-sim", workdir / "candidate.log", "--profile", "slow"))
        settings = {
            "SHADOWTAP_SHADOW_SAMPLE_RATE": str(args.sample_rate),
            "SHADOWTAP_SHADOW_QUEUE_SIZE": "10000",
        }
        procs.append(start_proxy(p_port, c_port, x_port, workdir, settings))
        direct = f"http://127.0.0.1:{p_port}/v1/chat/completions"
        proxied = f"http://127.0.0.1:{x_port}/v1/chat/completions"
        rows = measure(direct, proxied, rates, args.seconds)
        pairs = count_lines(workdir / "data" / "pairs.jsonl")

    header = f"{'mode':<12} {'req/s':>6} {'n':>6} {'direct p50':>11} {'proxy p50':>10} {'added p50':>10} {'direct p99':>11} {'proxy p99':>10} {'added p99':>10} {'p50 ratio':>9}"
    lines = [
        f"shadowtap proxy overhead, {args.sample_rate:.0%} mirroring to a slower candidate, in-process scoring on"
        " (ms; loopback, simulated upstreams)",
        f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}",
        header,
        "-" * len(header),
    ]
    for r in rows:
        lines.append(
            f"{r['mode']:<12} {r['rate']:>6g} {r['n']:>6} {r['direct_p50']:>11.3f} {r['proxy_p50']:>10.3f} "
            f"{r['proxy_p50'] - r['direct_p50']:>10.3f} {r['direct_p99']:>11.3f} {r['proxy_p99']:>10.3f} "
            f"{r['proxy_p99'] - r['direct_p99']:>10.3f} {r['proxy_p50'] / r['direct_p50']:>9.2f}"
        )
    lines.append(f"pairs recorded by the proxy during the run: {pairs}")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    (out.with_suffix(".json")).write_text(json.dumps(rows, indent=2))
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
