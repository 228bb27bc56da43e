"""`shadowtap sentinel build | run | gate | history`: the drift sentinel's command line."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from shadowtap.config import load_settings
from shadowtap.errors import ConfigError
from shadowtap.sentinel.settings import SentinelConfig

log = logging.getLogger("shadowtap.sentinel")

CONFIG_HELP = "YAML config (the sentinel, scoring and tags sections); SHADOWTAP_* variables override it."


class NotComparable(click.ClickException):
    """The gate could not decide (runs missing or not comparable): exit 2, distinct from a regression."""

    exit_code = 2


def _console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 160, soft_wrap=False)


def _config(config_file: str | None, sentinel_overrides: dict[str, Any]) -> SentinelConfig:
    given = {k: v for k, v in sentinel_overrides.items() if v is not None}
    try:
        return SentinelConfig(load_settings(config_file, overrides={"sentinel": given} if given else None))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _fmt(score: float | None, low: float | None = None, high: float | None = None) -> str:
    if score is None:
        return "-"
    if low is None or high is None:
        return f"{score:.3f}"
    return f"{score:.3f} [{low:.3f}, {high:.3f}]"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def sentinel() -> None:
    """Drift sentinel: a fixed, versioned set sampled from real traffic, replayed on a schedule, gated."""


# --------------------------------------------------------------------------------------------------
# build


@sentinel.command()
@click.option(
    "--input",
    "input_path",
    type=click.Path(dir_okay=False, exists=True),
    help="Recorded pairs (DATA_DIR/pairs.jsonl).",
)
@click.option(
    "--kafka-topic",
    metavar="TOPIC",
    help="Read pairs from this Kafka topic instead (sink.kafka.bootstrap_servers).",
)
@click.option(
    "--bootstrap-servers",
    metavar="HOSTS",
    help="Kafka bootstrap servers (default: sink.kafka.bootstrap_servers).",
)
@click.option(
    "--from-set",
    "from_set",
    type=click.Path(file_okay=False, exists=True),
    help="Make a new version of this set (with --labels, or with expected answers filled in by hand).",
)
@click.option(
    "--labels",
    type=click.Path(dir_okay=False, exists=True),
    help='JSONL of {"id", "expected", "match"?, "tolerance"?}: labelled expected answers.',
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Set directory to write (default: SETS_DIR/<version>). Never overwritten.",
)
@click.option(
    "--strata",
    metavar="AXES",
    help="Comma-separated tag axes to stratify on (default segment,length_bucket).",
)
@click.option("--size", type=int, help="Target number of examples (default 150).")
@click.option("--min-per-cell", type=int, help="Minimum examples per stratum (default 30).")
@click.option("--seed", type=int, help="Sampling seed (default 1234).")
@click.option(
    "--dedup-threshold",
    type=float,
    help="Word-shingle Jaccard similarity at which two requests are near-duplicates (default 0.9).",
)
@click.option("--since", type=click.DateTime(), help="Only pairs recorded at or after this time (UTC).")
@click.option("--until", type=click.DateTime(), help="Only pairs recorded before this time (UTC).")
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
def build(
    input_path: str | None,
    kafka_topic: str | None,
    bootstrap_servers: str | None,
    from_set: str | None,
    labels: str | None,
    out: str | None,
    strata: str | None,
    size: int | None,
    min_per_cell: int | None,
    seed: int | None,
    dedup_threshold: float | None,
    since: datetime | None,
    until: datetime | None,
    config_file: str | None,
) -> None:
    """Sample a sentinel set from recorded pairs and write it as a versioned, read-only directory."""
    from shadowtap.errors import SetError
    from shadowtap.sentinel.build import build_set, read_labels, rebuild_set
    from shadowtap.sentinel.sources import iter_jsonl, iter_kafka

    sources = [s for s in (input_path, kafka_topic, from_set) if s]
    if len(sources) != 1:
        raise click.UsageError("give exactly one of --input FILE, --kafka-topic TOPIC or --from-set DIR")
    config = _config(
        config_file,
        {
            "strata": [a.strip() for a in strata.split(",") if a.strip()] if strata else None,
            "size": size,
            "min_per_cell": min_per_cell,
            "seed": seed,
            "near_duplicate_threshold": dedup_threshold,
        },
    )
    console = _console()
    try:
        label_map = read_labels(Path(labels)) if labels else None
        out_dir = Path(out) if out else None
        if from_set:
            result = rebuild_set(Path(from_set), sets_dir=config.sets_dir, out=out_dir, labels=label_map)
        else:
            if input_path:
                records, source = iter_jsonl(Path(input_path)), {"kind": "jsonl", "path": str(input_path)}
            else:
                servers = bootstrap_servers or config.settings.sink.kafka.bootstrap_servers
                if not servers:
                    raise click.UsageError(
                        "--kafka-topic needs --bootstrap-servers or sink.kafka.bootstrap_servers"
                    )
                records = iter_kafka(servers, kafka_topic)  # type: ignore[arg-type]
                source = {"kind": "kafka", "bootstrap_servers": servers, "topic": kafka_topic}
            result = build_set(
                records,
                config.sentinel,
                source=source,
                length_bounds=config.settings.tags.length_buckets,
                sets_dir=config.sets_dir,
                out=out_dir,
                labels=label_map,
                since=since.replace(tzinfo=UTC) if since else None,
                until=until.replace(tzinfo=UTC) if until else None,
            )
    except (SetError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None

    built = result.set
    cells = built.manifest["strata"]["cells"]
    table = Table(title=f"sentinel set {built.version} ({len(built.rows)} examples) -> {built.path}")
    for column in ("stratum", "traffic share", "in traffic", "sampled"):
        table.add_column(column, justify="left" if column == "stratum" else "right")
    for key, cell in cells.items():
        sampled = str(cell["sampled"])
        if key in built.manifest.get("short_cells", []):
            sampled = f"[yellow]{sampled}[/]"
        table.add_row(key, f"{cell['traffic_share']:.1%}", str(cell["traffic"]), sampled)
    console.print(table)
    for cell in result.short_cells:
        click.echo(f"warning: {cell.describe()}", err=True)
    if result.invalid:
        click.echo(f"note: {result.invalid} record(s) were not valid pair records and were skipped", err=True)
    if result.duplicates:
        click.echo(f"note: {result.duplicates} duplicate or near-duplicate request(s) left out", err=True)
    if not result.created:
        click.echo(
            f"{built.path} already holds this set (version {built.version}); nothing written", err=True
        )
    click.echo(f"version {built.version}: {built.path}")


# --------------------------------------------------------------------------------------------------
# run


def _print_run(console: Console, record: dict[str, Any]) -> None:
    table = Table(
        title=f"sentinel run {record['run_id']}: model {record['model']} on set {record['set_version']}"
    )
    for column in ("failure mode", "stratum", "score [95% CI]", "n"):
        table.add_column(column, justify="right" if column == "n" else "left")
    for row in record["results"]:
        stratum = "all (traffic-weighted)" if row["stratum"] == "all" else row["stratum"]
        table.add_row(
            row["failure_mode"], stratum, _fmt(row["score"], row["lower"], row["upper"]), str(row["count"])
        )
    console.print(table)
    if record["errors"]:
        console.print(f"[yellow]{record['errors']} example(s) got no answer from {record['target']}[/]")


@sentinel.command()
@click.option(
    "--set",
    "set_dir",
    required=True,
    type=click.Path(file_okay=False, exists=True),
    help="The sentinel set directory.",
)
@click.option(
    "--target",
    required=True,
    metavar="URL",
    help="OpenAI-compatible base URL to replay against (http://host:8000/v1).",
)
@click.option(
    "--model",
    metavar="M",
    help="Model name to send (default: the recorded request's); also the label of the run.",
)
@click.option(
    "--every",
    metavar="DURATION",
    help="Keep running on this schedule (7d, 12h, 30m); stops cleanly on SIGTERM.",
)
@click.option(
    "--history",
    "history_path",
    metavar="FILE",
    help="SQLite history file (default DATA_DIR/sentinel.sqlite).",
)
@click.option("--pushgateway", metavar="URL", help="Push the run's metrics to this Prometheus Pushgateway.")
@click.option("--metrics-port", type=int, help="Serve the latest runs' metrics on this port (with --every).")
@click.option("--concurrency", type=int, help="Requests in flight to the target (default 8).")
@click.option(
    "--output", "output_path", type=click.Path(dir_okay=False), help="Also write the run record (JSON) here."
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
def run(
    set_dir: str,
    target: str,
    model: str | None,
    every: str | None,
    history_path: str | None,
    pushgateway: str | None,
    metrics_port: int | None,
    concurrency: int | None,
    output_path: str | None,
    no_progress: bool,
    config_file: str | None,
) -> None:
    """Replay the set against TARGET at temperature 0, score it, record it in the history, export it."""
    from prometheus_client import start_http_server

    from shadowtap.errors import SetError
    from shadowtap.sentinel.history import History
    from shadowtap.sentinel.metrics import SentinelMetrics, push
    from shadowtap.sentinel.run import Target, check_scorers, run_set
    from shadowtap.sentinel.schedule import parse_duration, run_every
    from shadowtap.sentinel.sets import read_set

    config = _config(
        config_file,
        {
            "history": history_path,
            "pushgateway": pushgateway,
            "metrics_port": metrics_port,
            "concurrency": concurrency,
        },
    )
    settings = config.sentinel
    interval = None
    if every is not None:
        try:
            interval = parse_duration(every)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--every") from None
    try:
        read_set(set_dir)
        asyncio.run(check_scorers(config))
    except (SetError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if settings.metrics_port is not None and interval is None:
        click.echo(
            "note: --metrics-port serves only while this process runs; for a run-once job use --pushgateway",
            err=True,
        )
    history = History(config.history_path)
    console = _console()
    served = SentinelMetrics()
    server = None
    if settings.metrics_port is not None:
        for record in history.latest_runs():
            served.record_run(record)
        for decision in history.latest_gates():
            served.record_gate(decision)
        server, _thread = start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=served.registry
        )
        click.echo(
            f"sentinel metrics on http://{settings.metrics_host}:{server.server_port}/metrics", err=True
        )

    async def once() -> dict[str, Any]:
        current = read_set(set_dir)
        record = await run_set(
            current,
            config,
            Target(target, model, settings.api_key),
            progress=not no_progress,
        )
        history.add_run(record)
        served.record_run(record)
        _print_run(console, record)
        if output_path:
            Path(output_path).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        if settings.pushgateway:
            pushed = SentinelMetrics()
            pushed.record_run(record)
            push(
                settings.pushgateway,
                pushed.registry,
                {"set_version": record["set_version"], "model": record["model"]},
            )
        click.echo(f"run {record['run_id']} recorded in {config.history_path}")
        return record

    try:
        if interval is None:
            asyncio.run(once())
        else:
            asyncio.run(run_every(interval, once))
    except (SetError, ValueError, OSError) as exc:
        raise click.ClickException(
            f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else str(exc)
        ) from None
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


# --------------------------------------------------------------------------------------------------
# gate


def _load_run(history: Any, ref: str) -> dict[str, Any]:
    path = Path(ref)
    if path.suffix == ".json" and path.is_file():
        return json.loads(path.read_text())
    record = history.run(ref)
    if record is None:
        raise NotComparable(f"no run {ref!r} in {history.path} (give a run id or a run record .json)")
    return record


@sentinel.command()
@click.option(
    "--baseline", metavar="RUN", help="Baseline run: a run id from the history, or a run record .json."
)
@click.option(
    "--candidate", metavar="RUN", help="Candidate run: a run id from the history, or a run record .json."
)
@click.option("--baseline-model", metavar="M", help="Use the latest run of this model as the baseline.")
@click.option("--candidate-model", metavar="M", help="Use the latest run of this model as the candidate.")
@click.option(
    "--set-version",
    metavar="V",
    help="With the model options: the set version (default: the candidate's latest).",
)
@click.option("--threshold", type=float, help="Points a failure mode may drop before it counts (default 5).")
@click.option(
    "--history",
    "history_path",
    metavar="FILE",
    help="SQLite history file (default DATA_DIR/sentinel.sqlite).",
)
@click.option(
    "--review",
    "review_path",
    metavar="FILE",
    help="Review queue for regressed examples (default DATA_DIR/review.jsonl).",
)
@click.option("--pushgateway", metavar="URL", help="Push shadowtap_sentinel_regression to this Pushgateway.")
@click.option(
    "--output", "output_path", type=click.Path(dir_okay=False), help="Also write the decision (JSON) here."
)
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
def gate(
    baseline: str | None,
    candidate: str | None,
    baseline_model: str | None,
    candidate_model: str | None,
    set_version: str | None,
    threshold: float | None,
    history_path: str | None,
    review_path: str | None,
    pushgateway: str | None,
    output_path: str | None,
    config_file: str | None,
) -> None:
    """Compare a candidate run with a baseline; exit 1 when a failure mode regresses beyond noise."""
    from shadowtap.errors import GateError
    from shadowtap.sentinel.gate import append_review, compare_runs, regressed_examples
    from shadowtap.sentinel.history import History
    from shadowtap.sentinel.metrics import SentinelMetrics, push

    if (baseline is None) == (baseline_model is None) or (candidate is None) == (candidate_model is None):
        raise click.UsageError(
            "give --baseline RUN or --baseline-model M, and --candidate RUN or --candidate-model M"
        )
    config = _config(
        config_file,
        {
            "history": history_path,
            "review_queue": review_path,
            "pushgateway": pushgateway,
            "threshold_points": threshold,
        },
    )
    if not config.history_path.exists():
        raise NotComparable(
            f"no sentinel history at {config.history_path} (run `sentinel run` first, or pass --history)"
        )
    history = History(config.history_path)
    if candidate is not None:
        cand = _load_run(history, candidate)
    else:
        found = history.latest_run(candidate_model, set_version)  # type: ignore[arg-type]
        if found is None:
            raise NotComparable(f"no run of model {candidate_model!r} in {history.path}")
        cand = found
    if baseline is not None:
        base = _load_run(history, baseline)
    else:
        found = history.latest_run(baseline_model, set_version or cand["set_version"])  # type: ignore[arg-type]
        if found is None:
            raise NotComparable(
                f"no run of model {baseline_model!r} on set {set_version or cand['set_version']} in {history.path}"
            )
        base = found
    try:
        decision = compare_runs(base, cand, config.sentinel)
    except GateError as exc:
        raise NotComparable(str(exc)) from None

    console = _console()
    table = Table(
        title=f"sentinel gate: {base['model']} ({base['run_id']}) -> {cand['model']} ({cand['run_id']}), set {decision['set_version']}"
    )
    for column in (
        "failure mode",
        "stratum",
        "baseline [95% CI]",
        "candidate [95% CI]",
        "change (points)",
        "paired p",
        "n",
        "verdict",
    ):
        table.add_column(
            column, justify="left" if column in ("failure mode", "stratum", "verdict") else "right"
        )
    for c in decision["comparisons"]:
        b, n = c["baseline"], c["candidate"]
        verdict = f"[bold red]REGRESSED[/] (> {c['threshold_points']:g})" if c["regressed"] else "ok"
        table.add_row(
            c["failure_mode"],
            c["stratum"],
            _fmt(b["score"], b["lower"], b["upper"]),
            _fmt(n["score"], n["lower"], n["upper"]),
            f"{-c['drop_points']:+.1f}",
            f"{c['p_value']:.3g}",
            str(n["count"]),
            verdict,
        )
    console.print(table)

    history.add_gate(decision)
    if config.sentinel.pushgateway:
        pushed = SentinelMetrics()
        pushed.record_gate(decision)
        push(
            config.sentinel.pushgateway,
            pushed.registry,
            {"set_version": decision["set_version"]},
            job="shadowtap_sentinel_gate",
        )
    if output_path:
        Path(output_path).write_text(json.dumps(decision, indent=2, ensure_ascii=False) + "\n")
    if decision["regressions"]:
        items = regressed_examples(decision, base, cand)
        append_review(config.review_path, items)
        names = ", ".join(
            f"{r['failure_mode']} on {r['stratum']} ({-r['drop_points']:+.1f} points)"
            for r in decision["regressions"]
        )
        click.echo(f"gate: FAIL: regressed: {names}")
        click.echo(f"{len(items)} regressed example(s) written to {config.review_path}")
        click.get_current_context().exit(1)
    click.echo("gate: pass: no failure mode regressed beyond its threshold and noise")


# --------------------------------------------------------------------------------------------------
# history


@sentinel.command("history")
@click.option(
    "--history",
    "history_path",
    metavar="FILE",
    help="SQLite history file (default DATA_DIR/sentinel.sqlite).",
)
@click.option("--model", metavar="M", help="Only this model's runs.")
@click.option("--set-version", metavar="V", help="Only runs on this set version.")
@click.option(
    "--stratum",
    default="all",
    show_default=True,
    help="Stratum to show ('all' is the traffic-weighted aggregate).",
)
@click.option(
    "--plot", "plot_path", type=click.Path(dir_okay=False), help="Also draw the history as a PNG here."
)
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
def history_command(
    history_path: str | None,
    model: str | None,
    set_version: str | None,
    stratum: str,
    plot_path: str | None,
    config_file: str | None,
) -> None:
    """The score history per failure mode, as a table and optionally a PNG plot."""
    from shadowtap.sentinel.history import History, plot_history
    from shadowtap.sentinel.modes import FAILURE_MODES

    config = _config(config_file, {"history": history_path})
    if not config.history_path.exists():
        raise click.ClickException(
            f"no sentinel history at {config.history_path} (run `sentinel run` first, or pass --history)"
        )
    rows = History(config.history_path).scores(stratum=stratum, model=model, set_version=set_version)
    if not rows:
        raise click.ClickException(f"no sentinel runs in {config.history_path} match")
    by_run: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = by_run.setdefault(
            row["run_id"], {"ts": row["ts"], "model": row["model"], "set": row["set_version"], "scores": {}}
        )
        entry["scores"][row["failure_mode"]] = row
    modes = [m.name for m in FAILURE_MODES if any(m.name in e["scores"] for e in by_run.values())]
    table = Table(title=f"sentinel history ({len(by_run)} runs, stratum {stratum})")
    for column in ("time (UTC)", "model", "set", *modes):
        table.add_column(column)
    for entry in by_run.values():
        cells = []
        for mode in modes:
            row = entry["scores"].get(mode)
            cells.append(_fmt(row["score"], row["lower"], row["upper"]) if row else "-")
        when = datetime.fromtimestamp(entry["ts"], UTC).strftime("%Y-%m-%d %H:%M")
        table.add_row(when, entry["model"], entry["set"], *cells)
    _console().print(table)
    if plot_path:
        plot_history(rows, plot_path)
        click.echo(f"plot: {plot_path}")
