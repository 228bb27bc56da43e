"""`shadowtap demo`: the whole pipeline on one machine, with no setup, for a first look.

One process runs three SIMULATED models (a primary that answers well, a candidate with planted
regressions, a judge), the proxy in its embedded default (pairs scored by its scoring process), and a traffic
generator that replays the bundled workload through the real OpenAI SDK. When scoring has drained, it
prints the same report as `shadowtap report`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shadowtap.cli.server import build
from shadowtap.config import Settings, load_settings
from shadowtap.demo.reviewer import SCRIPTED_REVIEWER, scripted_feedback, scripted_review
from shadowtap.demo.scripted import (
    CANDIDATE_BILLING_REFUSAL_RATE,
    CANDIDATE_SCHEMA_BREAK_RATE,
    CANDIDATE_TOOL_BREAK_RATE,
    candidate_policy,
    judge_policy,
    primary_policy,
)
from shadowtap.demo.workload import ORDER_SCHEMA, SEGMENTS, WorkItem, build_workload
from shadowtap.errors import DemoError
from shadowtap.metrics import Metrics
from shadowtap.report import build_report, print_report, write_html
from shadowtap.report.model import DEMO_MARKER, RECORD_FILES
from shadowtap.testing import ServerHandle, SimulatedLLM, serve_in_thread

PRIMARY_MODEL = "sim-primary"
CANDIDATE_MODEL = "sim-candidate"
JUDGE_MODEL = "sim-judge"
DEMO_NOISE_FLOOR_RATE = 0.10


@dataclass(frozen=True, slots=True)
class DemoOptions:
    data_dir: Path = Path("shadowtap-demo")
    requests: int = 300
    seed: int = 7
    concurrency: int = 8
    port: int = 0
    keep_running: bool = False
    html: Path | None = None
    drain_deadline_s: float = 60.0


@dataclass(slots=True)
class DemoResult:
    data_dir: Path
    sent: int
    client_errors: int
    drained: bool
    wall_s: float
    findings: list[str] = field(default_factory=list)


def prepare_data_dir(data_dir: Path) -> None:
    """A fresh directory, or one a previous demo wrote (its records are replaced); never anyone else's."""
    existing = [data_dir / name for name in RECORD_FILES if (data_dir / name).exists()]
    if existing and not (data_dir / DEMO_MARKER).exists():
        raise DemoError(
            f"{data_dir} already holds shadowtap records ({', '.join(p.name for p in existing)}) that a "
            "demo did not write; pass --data-dir with a new directory"
        )
    for path in existing:
        path.unlink()
    if (data_dir / DEMO_MARKER).exists():  # a previous demo's feedback and labels are on its pairs
        for name in ("feedback.jsonl", "labels.jsonl"):
            (data_dir / name).unlink(missing_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)


def demo_settings(data_dir: Path, primary_url: str, candidate_url: str, judge_url: str) -> Settings:
    """The embedded default with every scorer on: format (the extraction rule and the request's own
    schema), tool calls, refusal, latency/length, and the judge pointed at the scripted judge."""
    overrides = {
        "primary": {"url": primary_url},
        "candidate": {"url": candidate_url, "model": CANDIDATE_MODEL},
        "tags": {"segments": list(SEGMENTS)},
        "sink": {"kind": "jsonl", "data_dir": str(data_dir)},
        # The primary is asked again on a tenth of mirrored requests: the report's noise floor.
        "shadow": {"concurrency": 32, "queue_size": 1024, "noise_floor_rate": DEMO_NOISE_FLOOR_RATE},
        "scoring": {
            "concurrency": 16,
            "queue_size": 5000,
            "scorers": {
                "format": {"rules": [{"segment": "extraction", "json": True, "schema": ORDER_SCHEMA}]},
                "tools": {},
                "refusal": {},
                "latency": {},
                "judge": {
                    "base_url": judge_url,
                    "model": JUDGE_MODEL,
                    "api_key": "sim-judge-key",
                    "sample_rate": 1.0,
                    "concurrency": 16,
                    "requests_per_second": 1000.0,
                    "backoff_base_s": 0.05,
                    "timeout_s": 10.0,
                },
            },
        },
    }
    return load_settings(overrides=overrides, environ={})


def metric_total(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of a metric's samples over every label set that matches `labels`."""
    total = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def send(client: openai.OpenAI, item: WorkItem) -> str:
    """One user request through the proxy, as an application would send it; returns the answer."""
    extra: dict[str, Any] = {}
    if item.response_format is not None:
        extra["response_format"] = item.response_format
    if item.tools:
        extra["tools"] = list(item.tools)
    common: dict[str, Any] = {
        "model": PRIMARY_MODEL,
        "messages": list(item.messages),
        "user": item.customer,
        "extra_headers": {"X-Shadow-Segment": item.segment},
        **extra,
    }
    if item.stream:
        stream = client.chat.completions.create(stream=True, **common)
        return "".join((chunk.choices[0].delta.content or "") for chunk in stream if chunk.choices)
    answer = client.chat.completions.create(**common)
    return answer.choices[0].message.content or ""


@dataclass(frozen=True, slots=True)
class Servers:
    urls: dict[str, str]
    proxy: ServerHandle
    metrics: Metrics


@contextmanager
def running_servers(options: DemoOptions, items: list[WorkItem]) -> Iterator[Servers]:
    """The three simulated models and the proxy, each in a thread on loopback; all stopped on exit."""
    handles: list[ServerHandle] = []
    try:
        sims = {
            "primary": SimulatedLLM(PRIMARY_MODEL, primary_policy(items, options.seed)),
            "candidate": SimulatedLLM(CANDIDATE_MODEL, candidate_policy(items, options.seed)),
            "judge": SimulatedLLM(JUDGE_MODEL, judge_policy()),
        }
        urls: dict[str, str] = {}
        for role, sim in sims.items():
            handles.append(serve_in_thread(sim.app))
            urls[role] = handles[-1].base_url
        settings = demo_settings(options.data_dir, urls["primary"], urls["candidate"], urls["judge"])
        app, metrics, _ = build(settings)
        proxy = serve_in_thread(app, port=options.port)
        handles.append(proxy)
        yield Servers(urls, proxy, metrics)
    finally:
        for handle in reversed(handles):
            handle.stop()


def _banner(console: Console, options: DemoOptions, urls: dict[str, str], proxy: ServerHandle) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_column()
    sim = "[black on yellow] SIMULATED [/]"
    table.add_row("primary", sim, f"{urls['primary']}  a scripted model that answers every request well")
    table.add_row(
        "candidate",
        sim,
        f"{urls['candidate']}  a scripted model with planted differences: refuses "
        f"{CANDIDATE_BILLING_REFUSAL_RATE:.0%} of billing requests, breaks the JSON schema on "
        f"{CANDIDATE_SCHEMA_BREAK_RATE:.0%} of extraction requests and the booking tool's schema on "
        f"{CANDIDATE_TOOL_BREAK_RATE:.0%} of bookings, slower to first token, wordier",
    )
    table.add_row("judge", sim, f"{urls['judge']}  a scripted stand-in for an LLM judge")
    table.add_row(
        "proxy", "", f"{proxy.base_url}  shadowtap, embedded default: pairs and scores in {options.data_dir}/"
    )
    console.rule("[bold]shadowtap demo[/]")
    console.print(
        "Every model in this demo is [bold]SIMULATED[/]: scripted stand-ins on loopback, no real LLM is "
        "called. The proxy, the recording and the scoring are the real thing."
    )
    console.print(table)
    console.print(
        f"Replaying {options.requests} requests (billing, troubleshooting, engineer bookings with a tool, "
        f"extraction to JSON, out-of-scope; short and long inputs; some streamed) with {options.concurrency} concurrent "
        "clients through the OpenAI SDK.\n"
    )


def _drive(
    client: openai.OpenAI, items: list[WorkItem], concurrency: int, progress: Progress
) -> tuple[int, int]:
    task = progress.add_task("requests through the proxy", total=len(items))
    sent = errors = 0
    with ThreadPoolExecutor(concurrency, thread_name_prefix="demo-client") as pool:
        futures = [pool.submit(send, client, item) for item in items]
        try:
            for future in as_completed(futures):
                sent += 1
                if future.exception() is not None:
                    errors += 1
                progress.advance(task)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return sent, errors


def _drain(metrics: Metrics, deadline_s: float, progress: Progress) -> bool:
    """Poll until every mirrored request (and noise-floor twin) is a pair, every pair is scored and every
    record is written."""
    registry = metrics.registry
    expected = metric_total(registry, "shadowtap_shadow_sampled_total") - metric_total(
        registry, "shadowtap_shadow_dropped_total"
    )
    task = progress.add_task("pairs scored", total=max(1, int(expected)))
    deadline = time.monotonic() + deadline_s
    while True:
        pairs = metric_total(registry, "shadowtap_pairs_total")
        # Noise-floor twins are pairs too (scored, written), though not in shadowtap_pairs_total.
        every_pair = pairs + metric_total(registry, "shadowtap_noise_floor_pairs_total")
        scored = metric_total(registry, "shadowtap_pairs_scored_total") + metric_total(
            registry, "shadowtap_scoring_dropped_total"
        )
        waiting = metric_total(registry, "shadowtap_sink_queue_depth")
        shadows = metric_total(registry, "shadowtap_shadow_queue_depth") + metric_total(
            registry, "shadowtap_shadow_in_flight"
        )
        progress.update(task, completed=min(scored, expected))
        if pairs >= expected and shadows == 0 and scored >= every_pair and waiting == 0:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _users_give_feedback(servers: Servers, options: DemoOptions, console: Console) -> None:
    """SIMULATED users rate some answers through the proxy's feedback endpoint; wait until it is written."""
    posted = scripted_feedback(servers.proxy.url, options.data_dir, options.seed)
    deadline = time.monotonic() + 10
    registry = servers.metrics.registry
    while (
        metric_total(registry, "shadowtap_sink_records_total", sink="feedback", outcome="written")
        < sum(posted.values())
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    said = ", ".join(f"{n} {signal}" for signal, n in sorted(posted.items()))
    console.print(f"SIMULATED users posted feedback on the primary's answers: {said}.")


def _closing_lines(options: DemoOptions, console: Console) -> None:
    """The scripted reviewer's labels, and how to open the review page on this run's data."""
    labelled = scripted_review(options.data_dir, options.seed)
    data_dir = options.data_dir
    console.print(
        f"The scripted reviewer [black on yellow] SIMULATED [/] ({SCRIPTED_REVIEWER}) labelled {labelled} queued "
        f"pairs in {data_dir / 'labels.jsonl'}; `shadowtap judge calibrate --labels {data_dir / 'labels.jsonl'}` "
        "measures a judge against them.",
        soft_wrap=True,
    )
    console.print(
        f"Label the queue yourself, blind, with the keyboard: [bold]shadowtap review --data-dir {data_dir}[/] "
        "and open http://127.0.0.1:8090/",
        soft_wrap=True,
    )


def run_demo(
    options: DemoOptions,
    console: Console,
    stop: threading.Event | None = None,
    started: float | None = None,
) -> DemoResult:
    """Run the demo and print its report; with `keep_running`, leave the proxy up until `stop` is set
    (or Ctrl-C). `started` (a `time.perf_counter()` reading) is when the user's command began."""
    started = time.perf_counter() if started is None else started
    prepare_data_dir(options.data_dir)
    items = build_workload(options.requests, options.seed)
    (options.data_dir / DEMO_MARKER).write_text(
        json.dumps(
            {
                "simulated": True,
                "requests": options.requests,
                "seed": options.seed,
                "models": {"primary": PRIMARY_MODEL, "candidate": CANDIDATE_MODEL, "judge": JUDGE_MODEL},
            },
            indent=2,
        )
    )
    with running_servers(options, items) as servers:
        proxy = servers.proxy
        _banner(console, options, servers.urls, proxy)
        client = openai.OpenAI(base_url=proxy.base_url, api_key="demo-client-key", max_retries=1, timeout=30)
        columns = (
            TextColumn("{task.description:<27}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=False) as progress:
            sent, errors = _drive(client, items, options.concurrency, progress)
            drained = _drain(servers.metrics, options.drain_deadline_s, progress)
        client.close()
        _users_give_feedback(servers, options, console)
        if not drained:
            console.print(
                f"[yellow]Scoring had not finished after {options.drain_deadline_s:.0f}s; the report "
                "covers what was scored.[/]"
            )
        if errors:
            console.print(f"[yellow]{errors} of {sent} client requests failed.[/]")
        if not options.keep_running:
            proxy.stop()
        report = build_report(options.data_dir)
        wall_s = time.perf_counter() - started
        console.print()
        print_report(report, console)
        if options.html is not None:
            write_html(report, options.html)
            console.print(f"HTML report: {options.html}")
        console.print(f"\nDemo finished in {wall_s:.1f}s ({sent} requests).")
        _closing_lines(options, console)
        if options.keep_running:
            console.print(
                f"\nThe proxy is still up: send OpenAI requests to [bold]{proxy.base_url}[/]; "
                f"Prometheus can scrape [bold]{proxy.url}/metrics[/]. Press Ctrl-C to stop.",
                soft_wrap=True,
            )
            stop = stop or threading.Event()
            try:
                while not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                console.print("stopping")
    return DemoResult(options.data_dir, sent, errors, drained, wall_s, [f.sentence for f in report.findings])
