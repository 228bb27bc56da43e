"""Soak: a steady request rate through the proxy for minutes, 100% mirrored to a candidate slower than the primary.

Starts a simulated primary, a simulated candidate that answers after `--candidate-delay` seconds and
`shadowtap serve` as separate processes on loopback; this process is the load generator (the lean
asyncio client of bench/proxy_overhead.py). Every 10 s it samples the proxy's RSS and open file
descriptors (from /proc), the shadow queue depth (also polled every second for its maximum), shadow drops
and pairs from /metrics, and the user latency percentiles of the interval. Prints a table and a summary
and writes both to bench/results/soak.txt. Stops by itself after `--seconds` (at most 900).

    python bench/soak.py [--rate 150] [--seconds 180] [--candidate-delay 0.25]
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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    REQUEST,
    RawClient,
    cpu_seconds,
    free_port,
    open_fds,
    pct,
    processes,
    rss_mb,
    start,
    start_proxy,
    start_simulated,
)

MAX_SECONDS = 900
INTERVAL_S = 10.0


def serve_candidate(port: int, delay: float) -> None:
    """The slow candidate: a simulated model that answers every request after `delay` seconds."""
    import uvicorn

    from shadowtap.testing.upstreams import Reply, SimulatedLLM, default_policy

    sim = SimulatedLLM(
        "candidate-sim", lambda route, body: Reply(text=default_policy(route, body).text, ttft_s=delay)
    )
    config = uvicorn.Config(sim, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    uvicorn.Server(config).run()


async def scrape(client: httpx.AsyncClient, url: str) -> dict[str, float] | None:
    """Sums of the metrics the soak watches, over all their label sets; None when /metrics did not answer."""
    try:
        text = (await client.get(url)).text
    except httpx.HTTPError:
        return None
    wanted = {
        "shadowtap_shadow_queue_depth": "queue",
        "shadowtap_shadow_in_flight": "in_flight",
        "shadowtap_shadow_dropped_total": "dropped",
        "shadowtap_shadow_sampled_total": "sampled",
        "shadowtap_pairs_total": "pairs",
        "shadowtap_scoring_dropped_total": "scoring_dropped",
    }
    out = dict.fromkeys(wanted.values(), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                out[wanted[sample.name]] += sample.value
    return out


@dataclass
class Interval:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    max_queue: float = 0.0


ERRORS: Counter[str] = Counter()


class Soak:
    """An open-loop load at `rate` through the proxy; every INTERVAL_S a row of the proxy's resources, its
    shadow queue and the user latencies of the interval."""

    def __init__(self, proxy_url: str, metrics_url: str, pid: int, rate: float, seconds: float) -> None:
        self.body = json.dumps(REQUEST).encode()
        self.client = RawClient(proxy_url)
        self.scraper = httpx.AsyncClient(timeout=10)
        self.metrics_url = metrics_url
        self.pid = pid
        self.rate = rate
        self.seconds = seconds
        self.current = Interval()
        self.rows: list[dict[str, Any]] = []
        self.last: dict[str, float] = {}
        self.cpu_before = 0.0
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> list[dict[str, Any]]:
        for _ in range(50):  # warm the connection and the proxy's upstream pools
            await self.client.request(self.body, False)
        baseline = await scrape(self.scraper, self.metrics_url)
        if baseline is None:
            raise SystemExit("the proxy's /metrics did not answer")
        self.last = baseline
        self.rows.append({"t": 0, "rss_mb": rss_mb(self.pid), "fds": open_fds(self.pid), **baseline, "n": 0})
        self.cpu_before = cpu_seconds(self.pid)
        watcher = asyncio.create_task(self.watch_queue())
        try:
            await self.drive()
        finally:
            watcher.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=30)
        self.client.close()
        await self.scraper.aclose()
        return self.rows

    async def one(self, bucket: Interval) -> None:
        try:
            bucket.latencies.append(await self.client.request(self.body, False))
        except Exception as exc:
            bucket.errors += 1
            ERRORS[f"{type(exc).__name__}: {str(exc)[:60]}"] += 1

    async def watch_queue(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            sample = await scrape(self.scraper, self.metrics_url)
            if sample is not None:
                self.current.max_queue = max(self.current.max_queue, sample["queue"])

    async def drive(self) -> None:
        """Send at the asked rate until `seconds` have passed, a row every INTERVAL_S."""
        interval = 1.0 / self.rate
        t0 = time.perf_counter()
        next_report = t0 + INTERVAL_S
        i = 0
        while True:
            now = time.perf_counter()
            if now >= next_report:
                await self.report(round(next_report - t0))
                next_report += INTERVAL_S
                if next_report - t0 > self.seconds + 1e-6:
                    return
            due = t0 + i * interval
            if due - now > 0:
                await asyncio.sleep(min(due - now, next_report - now))
                continue
            task = asyncio.create_task(self.one(self.current))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            i += 1

    async def report(self, t: int) -> None:
        """Close the current interval: its row, printed as it comes."""
        sample = await scrape(self.scraper, self.metrics_url)
        if sample is None:  # an overloaded proxy: keep the last figures, say so in the table
            print(f"  /metrics did not answer within {self.scraper.timeout.read} s", flush=True)
            sample = self.last
        self.last = sample
        cpu_now = cpu_seconds(self.pid)
        cpu_share, self.cpu_before = (cpu_now - self.cpu_before) / INTERVAL_S * 100, cpu_now
        done, self.current = self.current, Interval()
        self.rows.append(
            {
                "t": t,
                **interval_figures(done),
                **self.resources(),
                "cpu": cpu_share,
                "max_queue": max(done.max_queue, sample["queue"]),
                **sample,
            }
        )
        print(format_row(self.rows[-1]), flush=True)

    def resources(self) -> dict[str, float]:
        return {"rss_mb": rss_mb(self.pid), "fds": open_fds(self.pid)}


def interval_figures(done: Interval) -> dict[str, float]:
    lat = done.latencies
    nan = float("nan")
    return {
        "n": len(lat),
        "errors": done.errors,
        "p50": statistics.median(lat) if lat else nan,
        "p99": pct(lat, 0.99) if lat else nan,
        "max": max(lat) if lat else nan,
    }


HEADER = (
    f"{'t(s)':>5} {'reqs':>6} {'err':>4} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'RSS MB':>7} {'fds':>5} {'cpu%':>5} "
    f"{'queue':>6} {'max q':>6} {'in-fl':>6} {'sampled':>8} {'pairs':>8} {'dropped':>8}"
)


def format_row(r: dict[str, Any]) -> str:
    if r["t"] == 0:
        return (
            f"{0:>5} {'-':>6} {'-':>4} {'-':>8} {'-':>8} {'-':>8} {r['rss_mb']:>7.1f} {r['fds']:>5} {'-':>5} "
            f"{r['queue']:>6.0f} {'-':>6} {r['in_flight']:>6.0f} {r['sampled']:>8.0f} {r['pairs']:>8.0f} "
            f"{r['dropped']:>8.0f}"
        )
    return (
        f"{r['t']:>5} {r['n']:>6} {r['errors']:>4} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['max']:>8.1f} "
        f"{r['rss_mb']:>7.1f} {r['fds']:>5} {r['cpu']:>5.0f} {r['queue']:>6.0f} {r['max_queue']:>6.0f} {r['in_flight']:>6.0f} "
        f"{r['sampled']:>8.0f} {r['pairs']:>8.0f} {r['dropped']:>8.0f}"
    )


def summary(rows: list[dict[str, Any]], args: argparse.Namespace, queue_size: int) -> list[str]:
    first, last = rows[0], rows[-1]
    load = rows[1:]
    sent = sum(r["n"] + r["errors"] for r in load)
    errors = sum(r["errors"] for r in load)
    steady = load[len(load) // 2 :]
    return [
        f"rate held: {sent / (load[-1]['t'] or 1):.1f} req/s of {args.rate:g} asked; {sent} requests, {errors} errors"
        + "".join(f"\n  {n} x {kind}" for kind, n in ERRORS.most_common(5)),
        f"RSS: {first['rss_mb']:.1f} MB before load, {load[0]['rss_mb']:.1f} MB after the first interval, "
        f"{last['rss_mb']:.1f} MB at the end (second half: {min(r['rss_mb'] for r in steady):.1f}"
        f"-{max(r['rss_mb'] for r in steady):.1f} MB)",
        f"open fds: {first['fds']} before, {last['fds']} at the end",
        f"shadow queue: max depth {max(r['max_queue'] for r in load):.0f} (bound {queue_size})",
        f"shadows: {last['sampled'] - first['sampled']:.0f} sampled, {last['pairs'] - first['pairs']:.0f} pairs, "
        f"{last['dropped'] - first['dropped']:.0f} dropped (counted in shadowtap_shadow_dropped_total)",
        f"user latency per interval: p50 {min(r['p50'] for r in load):.2f}-{max(r['p50'] for r in load):.2f} ms, "
        f"p99 {min(r['p99'] for r in load):.2f}-{max(r['p99'] for r in load):.2f} ms",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=150.0, help="requests per second (open loop)")
    parser.add_argument("--seconds", type=float, default=180.0, help=f"duration, at most {MAX_SECONDS}")
    parser.add_argument("--candidate-delay", type=float, default=0.25, help="candidate answer time (s)")
    parser.add_argument("--sample-rate", type=float, default=1.0, help="shadow.sample_rate (1.0: mirror all)")
    parser.add_argument("--queue-size", type=int, default=256, help="shadow.queue_size of the proxy")
    parser.add_argument("--concurrency", type=int, default=32, help="shadow.concurrency of the proxy")
    parser.add_argument("--out", default="bench/results/soak.txt")
    parser.add_argument("--serve-candidate", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_candidate is not None:
        serve_candidate(args.serve_candidate, args.candidate_delay)
        return
    seconds = min(args.seconds, MAX_SECONDS)

    workdir = Path(tempfile.mkdtemp(prefix="shadowtap-soak-"))
    p_port, c_port, x_port = free_port(), free_port(), free_port()
    with processes(grace_s=30) as procs:
        procs.append(start_simulated(p_port, "primary-sim", workdir / "primary.log"))
        candidate = [sys.executable, __file__, "--serve-candidate", str(c_port)]
        candidate += ["--candidate-delay", str(args.candidate_delay)]
        procs.append(start(candidate, f"http://127.0.0.1:{c_port}/v1/models", workdir / "candidate.log"))
        # The proxy gets the asked sampling, queue and slots.
        settings = {
            "SHADOWTAP_SHADOW_SAMPLE_RATE": str(args.sample_rate),
            "SHADOWTAP_SHADOW_QUEUE_SIZE": str(args.queue_size),
            "SHADOWTAP_SHADOW_CONCURRENCY": str(args.concurrency),
        }
        proxy = start_proxy(p_port, c_port, x_port, workdir, settings)
        procs.append(proxy)
        print(
            f"soak: {args.rate:g} req/s for {seconds:g} s, {args.sample_rate:.0%} mirrored, candidate answers in "
            f"{args.candidate_delay:g} s (shadow concurrency {args.concurrency}, queue {args.queue_size})",
            flush=True,
        )
        print(HEADER, flush=True)
        base = f"http://127.0.0.1:{x_port}"
        soak = Soak(f"{base}/v1/chat/completions", f"{base}/metrics", proxy.pid, args.rate, seconds)
        rows = asyncio.run(soak.run())

    lines = [
        f"shadowtap soak: steady load, {args.sample_rate:.0%} mirroring, candidate slower than the primary "
        "(loopback, simulated upstreams)",
        f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}; rate {args.rate:g} req/s, "
        f"{seconds:g} s, candidate delay {args.candidate_delay:g} s, shadow concurrency {args.concurrency}, "
        f"queue {args.queue_size}",
        HEADER,
        "-" * len(HEADER),
        *(format_row(r) for r in rows),
        "",
        *summary(rows, args, args.queue_size),
    ]
    text = "\n".join(lines)
    print("\n".join(lines[len(lines) - len(summary(rows, args, args.queue_size)) :]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
