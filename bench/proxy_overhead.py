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
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

REQUEST = {
    "model": "bench",
    "messages": [{"role": "user", "content": "Summarise the refund policy in one line."}],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], url: str, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return proc
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise SystemExit(f"{cmd[:3]} exited; see {log}") from None
            time.sleep(0.1)
    raise SystemExit(f"{cmd[:3]} did not come up; see {log}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


CONTENT = re.compile(rb'"content": ?"[^"]')


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams.

    The load generator shares the 2-core machine with the servers it measures; httpx would spend more
    CPU per request than the proxy does, so the generator would be the first thing to saturate.
    Connections idle for longer than `KEEPALIVE_S` are closed rather than reused: the servers (uvicorn)
    close theirs after 5 s, and a request sent on one they are closing fails for either arm.
    """

    KEEPALIVE_S = 4.0

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname, parts.port, parts.path
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = time.monotonic()
        while self.idle:
            reader, writer, since = self.idle.pop()
            if now - since < self.KEEPALIVE_S:
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port)

    async def request(self, body: bytes, stream: bool) -> float:
        reader, writer = await self.connection()
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        t0 = time.perf_counter()
        writer.write(head + body)
        headers = (await reader.readuntil(b"\r\n\r\n")).lower()
        if not headers.startswith(b"http/1.1 200"):
            raise RuntimeError(headers[:40])
        first_content = None
        if b"transfer-encoding: chunked" in headers:
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await reader.readexactly(size + 2)
                if first_content is None and CONTENT.search(chunk):
                    first_content = time.perf_counter()
                if size == 0:
                    break
        else:
            length = int(headers.split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        done = time.perf_counter()
        self.idle.append((reader, writer, time.monotonic()))
        if stream:
            if first_content is None:
                raise RuntimeError("stream carried no content")
            return (first_content - t0) * 1000
        return (done - t0) * 1000

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()


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

    tasks = []
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
    py = sys.executable
    procs = []
    try:
        procs.append(
            start(
                [py, "-m", "shadowtap.testing.upstreams", "--port", str(p_port), "--name", "primary-sim"],
                f"http://127.0.0.1:{p_port}/v1/models",
                workdir / "primary.log",
            )
        )
        procs.append(
            start(
                [
                    py,
                    "-m",
                    "shadowtap.testing.upstreams",
                    "--port",
                    str(c_port),
                    "--name",
                    "candidate-sim",
                    "--profile",
                    "slow",
                ],
                f"http://127.0.0.1:{c_port}/v1/models",
                workdir / "candidate.log",
            )
        )
        env = dict(
            os.environ,
            SHADOWTAP_SHADOW_SAMPLE_RATE=str(args.sample_rate),
            SHADOWTAP_SHADOW_QUEUE_SIZE="10000",
        )
        procs.append(
            subprocess.Popen(
                [
                    py,
                    "-m",
                    "shadowtap.cli",
                    "serve",
                    "--primary",
                    f"http://127.0.0.1:{p_port}/v1",
                    "--candidate",
                    f"http://127.0.0.1:{c_port}/v1",
                    "--port",
                    str(x_port),
                    "--data-dir",
                    str(workdir / "data"),
                ],
                stdout=(workdir / "proxy.log").open("wb"),
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{x_port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"proxy did not come up; see {workdir / 'proxy.log'}") from None
                time.sleep(0.1)

        direct = f"http://127.0.0.1:{p_port}/v1/chat/completions"
        proxied = f"http://127.0.0.1:{x_port}/v1/chat/completions"
        rows = []
        for stream in (False, True):
            for rate in rates if not stream else sorted({rates[0], rates[-1]}):
                res = asyncio.run(run_rate(direct, proxied, rate, args.seconds, stream))
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
        pairs = (
            sum(1 for _ in (workdir / "data" / "pairs.jsonl").open())
            if (workdir / "data" / "pairs.jsonl").exists()
            else 0
        )
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

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
