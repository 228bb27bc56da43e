"""Large prompts: other users' latency while 1, 2 and 5 MB chat requests are mirrored at 100%, against
the same load with mirroring off — in one run.

Starts a simulated primary and candidate and two `shadowtap serve` processes on loopback with the default
settings (`shadow.max_body_bytes` 8 MiB), one mirroring every chat request and one mirroring none (the
normal users ask on /v1/completions, which neither mirrors unless `--mirror-everyone`). For each prompt
size, the two proxies take turns, in short phases (off then on, then on then off), getting small
"normal" requests arriving at random (a Poisson stream, open loop) while a second such stream of
large-prompt requests arrives beside them, sent by a process of its own (as their users would send them
from machines of their own). The two phases of a pair get the same arrival times, each pair its own;
one unmeasured phase per mode comes first at each size.
The normal users' latencies of all the phases of a mode are pooled; the p99's growth comes with a 95%
bootstrap interval over the phase pairs, and the target (under 2 ms) is called met only when the whole
interval is under it, with at least 10 phase pairs. The first row (10 KB "large" prompts,
parsed and recorded on the loop like any small request) is what mirroring costs at all; the rows below
it read against it.

Latency on a shared machine moves with whatever else runs on it, so the table also gives figures that do
not: the CPU time the proxy's event-loop thread spent per large prompt, and that of the processes it
started (the offload worker, which parses, masks and encodes large pairs, and the scoring process).
Prints a table and writes it to bench/results/large_prompts.txt. Stops by itself (each phase
`--seconds`, at most 60; `--repeats` phases per size and mode, at most 60).

    python bench/large_prompts.py [--rate 40] [--large-rate 2] [--seconds 3] [--repeats 20] [--sizes 0.01,1,2,5]
        [--no-scoring] [--no-pin] [--offload-anywhere] [--mirror-everyone]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import re
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
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
MAX_REPEATS = 60
CHAT_PATH, NORMAL_PATH = "/v1/chat/completions", "/v1/completions"
# The normal users ask on another route than the large prompts, so the proxy's own histogram of the time
# it added (client-facing minus the primary's, per request and route) is theirs alone.
NORMAL = {"model": "bench", "prompt": "Summarise the refund policy in one line."}
LAG_INTERVAL_S = 0.002  # the proxies' event-loop lag sampler: a timer every 2 ms
IDLE_S = 2.0  # before those, the proxy left idle: what its loop and helpers spend doing nothing
ALONE = 10  # large prompts sent one after another, with nothing else, to measure what one costs
SETTLE_S = 1.0  # after a phase, for its last pairs to be recorded and scored
BOOTSTRAP = 2000  # resamples of the phase pairs for the growth's interval
TARGET_MS = 2.0  # the growth of other users' p99 that mirroring large prompts may cost
MIN_PAIRS_FOR_VERDICT = 10


def large_request(megabytes: float) -> bytes:
    """A chat request whose user message is about `megabytes` MB of prose."""
    sentence = "The customer asked about the refund policy for an order placed last spring. "
    text = sentence * int(megabytes * 1_000_000 / len(sentence))
    return json.dumps({"model": "bench", "messages": [{"role": "user", "content": text}]}).encode()


def arrivals(rate: float, seconds: float, rng: random.Random) -> list[float]:
    """Offsets (s) of a Poisson stream of `rate` per second over `seconds`: open-loop users arriving at
    random, never in step with another stream."""
    offsets, at = [], rng.expovariate(rate)
    while at < seconds:
        offsets.append(at)
        at += rng.expovariate(rate)
    return offsets


def schedule(repeat: int, args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """The normal users' and the large prompts' arrival offsets for one phase pair: the off and on phases
    of a pair get the same ones (so a difference between them is the mode's, not the draw's), each pair
    its own."""
    rng = random.Random(repeat)
    return arrivals(args.rate, args.seconds, rng), arrivals(args.large_rate, args.seconds, rng)


def large_sender(conn: Connection) -> None:
    """A process of its own that sends the large prompts, as their users would from machines of their own:
    writing megabytes from the normal users' loop would hold up their requests in the load generator
    itself, not in the proxy. Takes (url, body, offsets, start) and answers with how many were answered."""

    async def send(url: str, body: bytes, offsets: list[float], start: float) -> int:
        client, answered = RawClient(url), 0

        async def one(offset: float) -> None:
            nonlocal answered
            await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
            await client.request(body, False)
            answered += 1

        if offsets:
            await asyncio.wait([asyncio.ensure_future(one(o)) for o in offsets], timeout=60)
        client.close()
        return answered

    while (job := conn.recv()) is not None:
        conn.send(asyncio.run(send(*job)))


async def phase(
    url: str, normal_at: list[float], large: bytes, large_at: list[float], sender: Connection
) -> tuple[list[float], int]:
    """Normal users' latencies (ms) at `normal_at`, with large prompts sent by the sender process at
    `large_at` (offsets in s from the phase's start); and how many large prompts were answered."""
    normal = RawClient(url.replace(CHAT_PATH, NORMAL_PATH))
    body = json.dumps(NORMAL).encode()
    for _ in range(20):
        await normal.request(body, False)
    latencies: list[float] = []

    async def one(offset: float) -> None:
        await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
        latencies.append(await normal.request(body, False))

    start = time.perf_counter() + 0.05  # the sender's first request is on time too
    sender.send((url, large, large_at, start))
    if normal_at:
        await asyncio.wait([asyncio.ensure_future(one(o)) for o in normal_at], timeout=60)
    answered = await asyncio.get_running_loop().run_in_executor(None, sender.recv)
    normal.close()
    return latencies, answered


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


async def measured_phase(
    url: str, large: bytes, arrivals_at: tuple[list[float], list[float]], sender: Connection
) -> dict[str, object]:
    """The normal users' latencies beside large prompts, and the proxy's histograms over the phase."""
    before = buckets(url)
    normal_at, large_at = arrivals_at
    latencies, answered = await phase(url, normal_at, large, large_at, sender)
    if answered < len(large_at):
        raise RuntimeError(f"{len(large_at) - answered} of {len(large_at)} large prompts got no answer")
    after = buckets(url)
    # The last pairs are recorded and scored before the other proxy's phase begins, on the same core.
    await asyncio.sleep(SETTLE_S)
    return {
        "latencies": latencies,
        "added": delta(after["added"], before["added"]),
        "lag": delta(after["lag"], before["lag"]),
    }


async def alone(url: str, pid: int, large: bytes) -> dict[str, float]:
    """What one large prompt costs, sent ALONE times one after another with nothing else: CPU ms of the
    proxy's event-loop thread, and of the processes it started, less what they spend idle over as long
    (the loop-lag sampler's timer, the scoring process's polling), measured just before."""
    client = RawClient(url)
    idle_before, idle_start = cpu(pid), time.perf_counter()
    await asyncio.sleep(IDLE_S)
    idle_after = cpu(pid)
    idle_rate = [
        (a - b) / (time.perf_counter() - idle_start) for a, b in zip(idle_after, idle_before, strict=True)
    ]
    before, start = cpu(pid), time.perf_counter()
    for _ in range(ALONE):
        await client.request(large, False)
    await asyncio.sleep(2.0)  # the last records are written and scored
    after, elapsed = cpu(pid), time.perf_counter() - start
    client.close()
    loop_ms, worker_ms = (
        max(0.0, (a - b - rate * elapsed) * 1000 / ALONE)
        for a, b, rate in zip(after, before, idle_rate, strict=True)
    )
    return {"loop_ms": loop_ms, "worker_ms": worker_ms}


async def measure(
    urls: dict[str, str], pids: dict[str, int], sender: Connection, args: argparse.Namespace
) -> tuple[list[dict[str, object]], dict[tuple[float, str], dict[str, float]]]:
    """The phases of every size and mode, and what one large prompt costs each proxy at each size."""
    rows: list[dict[str, object]] = []
    costs: dict[tuple[float, str], dict[str, float]] = {}
    for size in args.sizes:
        large = large_request(size)
        for mode in ("off", "on"):  # unmeasured: a size's first large prompts cost more (first-touch memory)
            await measured_phase(urls[mode], large, schedule(-1, args), sender)
        for repeat in range(args.repeats):
            # Off then on, then on then off: a drift in the machine's load over a size's phases does not
            # read as one mode's cost.
            for mode in ("off", "on") if repeat % 2 == 0 else ("on", "off"):
                row = await measured_phase(urls[mode], large, schedule(repeat, args), sender)
                rows.append({"size": size, "mode": mode, "repeat": repeat, **row})
            print(f"  {size} MB: phase pair {repeat + 1} of {args.repeats} done", file=sys.stderr)
        for mode in ("off", "on"):
            costs[(size, mode)] = await alone(urls[mode], pids[mode], large)
    return rows, costs


def pooled_p99(latencies: list[list[float]]) -> float:
    return pct([x for phase in latencies for x in phase], 0.99)


def growth_interval(off: list[list[float]], on: list[list[float]], seed: int = 1) -> tuple[float, float]:
    """A 95% bootstrap interval for the growth of the pooled p99: the phase pairs resampled with
    replacement (a pair's two phases stay together, so the machine's drift falls on both modes alike)."""
    rng = random.Random(seed)
    growths = []
    for _ in range(BOOTSTRAP):
        picks = [rng.randrange(len(off)) for _ in off]
        growths.append(pooled_p99([on[k] for k in picks]) - pooled_p99([off[k] for k in picks]))
    growths.sort()
    return growths[int(0.025 * BOOTSTRAP)], growths[int(0.975 * BOOTSTRAP) - 1]


def summed(rows: list[dict[str, object]], name: str) -> dict[float, float]:
    """One mode's histogram over all its phases."""
    total: dict[float, float] = {}
    for r in rows:
        for bound, count in r[name].items():  # type: ignore[attr-defined]
            total[bound] = total.get(bound, 0.0) + count
    return total


def table(
    rows: list[dict[str, object]], costs: dict[tuple[float, str], dict[str, float]], args: argparse.Namespace
) -> str:
    lines = [
        "other users' latency with large prompts mirrored at 100% vs mirroring off (ms; loopback, simulated upstreams)",
        f"machine: {os.cpu_count()} cores; normal {args.rate}/s on {NORMAL_PATH}, large prompts {args.large_rate}/s on "
        f"{CHAT_PATH} (both Poisson arrivals, the same for the two phases of a pair), {args.seconds}s per phase, {args.repeats} phases per size and mode (off and on in turn); "
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
        "each figure pools every phase of a mode; p99 +: the on mode's p99 minus the off mode's, with a 95%"
        f" bootstrap interval over the {args.repeats} phase pairs",
        "end to end: as the normal users saw it (the simulated primary's own pauses on a large prompt included);"
        " added: what the proxy added to their requests (its shadowtap_added_latency_seconds, interpolated);"
        f" loop lag: how late the proxy's event loop ran a {LAG_INTERVAL_S * 1000:g} ms timer (p99, and the"
        " samples over 5 ms late)",
        f"then {ALONE} large prompts alone: loop ms = CPU of the proxy's event-loop thread per large prompt"
        " (its own request included); helpers ms = CPU of the processes it started (offload worker, scoring);"
        " both less what they spend idle over as long",
        f"{'prompt':>7} | {'end to end p50':>15} {'p99 off/on':>15} {'p99 + [95%]':>24} |"
        f" {'added p99 off/on':>16} {'+':>6} | {'lag p99 off/on':>14} {'>5ms':>9} | {'loop ms off/on':>14}"
        f" {'helpers ms':>10}",
    ]
    verdicts = []
    for size in args.sizes:
        of = {mode: [r for r in rows if r["size"] == size and r["mode"] == mode] for mode in ("off", "on")}
        by_repeat = {
            mode: [r["latencies"] for r in sorted(of[mode], key=lambda r: int(r["repeat"]))]  # type: ignore[arg-type]
            for mode in ("off", "on")
        }
        p50 = {m: statistics.median(x for phase in by_repeat[m] for x in phase) for m in by_repeat}  # type: ignore[attr-defined]
        p99 = {m: pooled_p99(by_repeat[m]) for m in by_repeat}  # type: ignore[arg-type]
        low, high = growth_interval(by_repeat["off"], by_repeat["on"])  # type: ignore[arg-type]
        added = {m: quantile(summed(of[m], "added"), 0.99) for m in of}
        lags = {m: summed(of[m], "lag") for m in of}
        lag = {m: quantile(lags[m], 0.99) for m in lags}
        late = {m: lags[m][float("inf")] - lags[m].get(0.005, 0.0) for m in lags}
        cost = {m: costs[(size, m)] for m in ("off", "on")}
        growth = p99["on"] - p99["off"]
        lines.append(
            f"{size:>5g} MB | {p50['off']:>7.2f}/{p50['on']:<7.2f} {p99['off']:>7.2f}/{p99['on']:<7.2f}"
            f" {growth:>+7.2f} [{low:+.2f}, {high:+.2f}] |"
            f" {added['off']:>8.2f}/{added['on']:<7.2f} {added['on'] - added['off']:>+6.2f} |"
            f" {lag['off']:>6.2f}/{lag['on']:<7.2f} {late['off']:>4.0f}/{late['on']:<4.0f} |"
            f" {cost['off']['loop_ms']:>6.1f}/{cost['on']['loop_ms']:<7.1f} {cost['on']['worker_ms']:>10.1f}"
        )
        if size >= 1:
            verdict = "met" if high < TARGET_MS else "missed" if low >= TARGET_MS else "not shown"
            if args.repeats < MIN_PAIRS_FOR_VERDICT:  # a bootstrap over a few pairs is far too narrow
                verdict = f"not shown with under {MIN_PAIRS_FOR_VERDICT} phase pairs"
            verdicts.append(f"{size:g} MB {verdict} (interval's upper end {high:+.2f} ms)")
    if verdicts:
        lines.append(f"target, end-to-end p99 grows by under {TARGET_MS:g} ms: " + "; ".join(verdicts))
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
    parser.add_argument("--seconds", type=float, default=3.0, help="length of a phase (default 3 s)")
    parser.add_argument(
        "--repeats", type=int, default=20, help="phases per prompt size and mode (default 20, at most 60)"
    )
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
        ours, theirs = multiprocessing.get_context("spawn").Pipe()
        sender = multiprocessing.get_context("spawn").Process(
            target=large_sender, args=(theirs,), daemon=True
        )
        sender.start()  # on the load generator's cores, as this process is
        try:
            rows, costs = asyncio.run(measure(urls, pids, ours, args))
        finally:
            ours.send(None)
            sender.join(10)
    text = table(rows, costs, args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
