"""`shadowtap sentinel build | run | gate | pin | history`: the drift sentinel's command line."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from shadowtap.config import load_settings
from shadowtap.errors import ConfigError
from shadowtap.sentinel.settings import SentinelConfig

if TYPE_CHECKING:
    from http.server import HTTPServer

    from shadowtap.sentinel.build import BuildResult, Records
    from shadowtap.sentinel.gate import GateDecision
    from shadowtap.sentinel.history import History
    from shadowtap.sentinel.metrics import SentinelMetrics
    from shadowtap.sentinel.run import RunRecord

log = logging.getLogger("shadowtap.sentinel")

CONFIG_HELP = "YAML config (the sentinel, scoring and tags sections); SHADOWTAP_* variables override it."


class NotComparable(click.ClickException):
    """The gate could not decide (runs missing or not comparable): exit 2, distinct from a regression."""

    exit_code = 2


def _config(config_file: str | None, sentinel_overrides: dict[str, Any]) -> SentinelConfig:
    given = {k: v for k, v in sentinel_overrides.items() if v is not None}
    try:
        return SentinelConfig(load_settings(config_file, overrides={"sentinel": given} if given else None))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


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
    "--probes",
    type=click.Choice(["reasoning"]),
    help="Generate a probe set instead: reasoning (inferences with known answers; --size, --seed).",
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
    probes: str | None,
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

    if len([s for s in (input_path, kafka_topic, from_set, probes) if s]) != 1:
        raise click.UsageError(
            "give exactly one of --input FILE, --kafka-topic TOPIC, --from-set DIR or --probes KIND"
        )
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
    try:
        label_map = read_labels(Path(labels)) if labels else None
        out_dir = Path(out) if out else None
        if probes:
            result = _build_probes(config, out_dir)
        elif from_set:
            result = rebuild_set(Path(from_set), sets_dir=config.sets_dir, out=out_dir, labels=label_map)
        else:
            records, source = _pair_source(config, input_path, kafka_topic, bootstrap_servers)
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
    _report_build(result, config)


def _build_probes(config: SentinelConfig, out: Path | None) -> BuildResult:
    from shadowtap.sentinel.build import BuildResult
    from shadowtap.sentinel.probes import build_probe_set

    settings = config.sentinel
    built, created = build_probe_set(settings.size, settings.seed, sets_dir=config.sets_dir, out=out)
    return BuildResult(built, created, read=len(built.rows))


def _pair_source(
    config: SentinelConfig, input_path: str | None, kafka_topic: str | None, bootstrap_servers: str | None
) -> tuple[Records, dict[str, Any]]:
    """The pair records to build from, and how the manifest names where they came from."""
    from shadowtap.sentinel.sources import iter_jsonl, iter_kafka

    if input_path:
        return iter_jsonl(Path(input_path)), {"kind": "jsonl", "path": str(input_path)}
    assert kafka_topic is not None  # one of --input, --kafka-topic (checked by the caller)
    servers = bootstrap_servers or config.settings.sink.kafka.bootstrap_servers
    if not servers:
        raise click.UsageError("--kafka-topic needs --bootstrap-servers or sink.kafka.bootstrap_servers")
    return iter_kafka(servers, kafka_topic), {
        "kind": "kafka",
        "bootstrap_servers": servers,
        "topic": kafka_topic,
    }


def _report_build(result: BuildResult, config: SentinelConfig) -> None:
    from shadowtap.sentinel.build import required_set_size
    from shadowtap.sentinel.render import build_table, console

    built = result.set
    console().print(build_table(result))
    for cell in result.short_cells:
        click.echo(f"warning: {cell.describe()}", err=True)
    settings = config.sentinel
    needed = required_set_size(built, settings)
    decision = (
        f"a production decision (a {settings.threshold_points:g}-point drop in one failure mode caught with "
        f"{settings.power:.0%} power, false blocks at most {settings.alpha:g} family-wise, answers changing "
        f"between runs on {settings.expected_discordance:.0%} of examples) needs about {needed} examples"
    )
    if len(built.rows) < needed:
        click.echo(f"warning: set of {len(built.rows)} examples: {decision}; use --size {needed}", err=True)
    else:
        click.echo(f"note: {decision}; this set has {len(built.rows)}", err=True)
    if result.masked_inputs:
        click.echo(
            f"note: {result.masked_inputs} example(s) had values masked in their request (marked masked_input): "
            "their replay is not what the user sent, so the gate leaves them out (sentinel.gate_masked_inputs)",
            err=True,
        )
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
@click.option(
    "--baseline",
    metavar="RUN",
    help="Judge each answer head to head against this run's (a run id, a run .json, `pinned` for "
    "--model's pinned run, or `pinned:MODEL`); needs a judge.",
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
    baseline: str | None,
    pushgateway: str | None,
    metrics_port: int | None,
    concurrency: int | None,
    output_path: str | None,
    no_progress: bool,
    config_file: str | None,
) -> None:
    """Replay the set against TARGET at temperature 0, score it, record it in the history, export it."""
    from shadowtap.errors import SetError
    from shadowtap.sentinel.history import History
    from shadowtap.sentinel.metrics import SentinelMetrics
    from shadowtap.sentinel.schedule import run_every

    config = _config(
        config_file,
        {
            "history": history_path,
            "pushgateway": pushgateway,
            "metrics_port": metrics_port,
            "concurrency": concurrency,
        },
    )
    interval = _interval(every)
    _check_runnable(config, set_dir)
    if config.sentinel.metrics_port is not None and interval is None:
        click.echo(
            "note: --metrics-port serves only while this process runs; for a run-once job use --pushgateway",
            err=True,
        )
    history = History(config.history_path)
    served = SentinelMetrics()
    server = _serve_metrics(config, history, served)

    if baseline is not None and config.judge_config() is None:
        raise click.UsageError("--baseline judges answers head to head: configure sentinel.judge first")

    async def once() -> RunRecord:
        base = _resolve_run(history, baseline, model) if baseline is not None else None
        record = await _run_once(config, set_dir, target, model, base, progress=not no_progress)
        _store_run(config, record, history, served, output_path)
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


def _interval(every: str | None) -> float | None:
    """Seconds between scheduled runs (`--every`), or None to run once."""
    from shadowtap.sentinel.schedule import parse_duration

    if every is None:
        return None
    try:
        return parse_duration(every)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--every") from None


def _check_runnable(config: SentinelConfig, set_dir: str) -> None:
    """Fail now, not at the first scheduled run, on a bad set or bad scorer settings."""
    from shadowtap.errors import SetError
    from shadowtap.sentinel.run import check_scorers
    from shadowtap.sentinel.sets import read_set

    try:
        read_set(set_dir)
        asyncio.run(check_scorers(config))
    except (SetError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


def _serve_metrics(config: SentinelConfig, history: History, served: SentinelMetrics) -> HTTPServer | None:
    """With `metrics_port`, serve the latest runs' and gates' metrics (from the history) from now on."""
    from prometheus_client import start_http_server

    settings = config.sentinel
    if settings.metrics_port is None:
        return None
    for record in history.latest_runs():
        served.record_run(record)
    for decision in history.latest_gates():
        served.record_gate(decision)
    server, _thread = start_http_server(
        settings.metrics_port, addr=settings.metrics_host, registry=served.registry
    )
    click.echo(f"sentinel metrics on http://{settings.metrics_host}:{server.server_port}/metrics", err=True)
    return server


async def _run_once(
    config: SentinelConfig,
    set_dir: str,
    target: str,
    model: str | None,
    baseline: RunRecord | None,
    *,
    progress: bool,
) -> RunRecord:
    from shadowtap.sentinel.run import Target, run_set
    from shadowtap.sentinel.sets import read_set

    current = read_set(set_dir)
    return await run_set(
        current, config, Target(target, model, config.sentinel.api_key), baseline=baseline, progress=progress
    )


def _store_run(
    config: SentinelConfig,
    record: RunRecord,
    history: History,
    served: SentinelMetrics,
    output_path: str | None,
) -> None:
    """Record a run in the history and the served metrics, show it, write it, push it."""
    from shadowtap.sentinel.metrics import SentinelMetrics, push
    from shadowtap.sentinel.render import console, run_table

    settings = config.sentinel
    history.add_run(record)
    served.record_run(record)
    shown = console()
    shown.print(run_table(record))
    if record["errors"]:
        shown.print(f"[yellow]{record['errors']} example(s) got no answer from {record['target']}[/]")
    judge = record.get("head_to_head")
    if judge:
        click.echo(_judge_line(judge))
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


# --------------------------------------------------------------------------------------------------
# gate


def _load_run(history: History, ref: str) -> RunRecord:
    """A run by id from the history, or from a run record .json file."""
    from shadowtap.sentinel.history import read_run

    path = Path(ref)
    if path.suffix == ".json" and path.is_file():
        return read_run(path.read_text())
    record = history.run(ref)
    if record is None:
        raise NotComparable(f"no run {ref!r} in {history.path} (give a run id or a run record .json)")
    return record


def _judge_line(judge: dict[str, Any] | Any) -> str:
    """The head-to-head judge's figures in one line: verdicts, flips, calibration."""
    flagged = " FLAGGED: over the allowed share, its verdicts go to human review" if judge["flagged"] else ""
    return (
        f"judge {judge['judge_model']} vs baseline run {judge['baseline_run']}: {judge['wins']} better, "
        f"{judge['ties']} tie, {judge['losses']} worse; flips {judge['flips']} of {judge['judged']} "
        f"({judge['flip_share']:.1%}, allowed {judge['max_flip_share']:.0%}){flagged}; {judge['calibration']}"
    )


def _resolve_run(history: History, ref: str, model: str | None) -> RunRecord:
    """A run id, a run .json, `pinned` (the pinned run of `model`) or `pinned:MODEL`."""
    if ref == "pinned" or ref.startswith("pinned:"):
        pinned_model = ref.partition(":")[2] or model
        if not pinned_model:
            raise NotComparable(
                "`pinned` needs a model: give --baseline-model M (or --model) or pinned:MODEL"
            )
        found = history.pinned(pinned_model)
        if found is None:
            raise NotComparable(
                f"no pinned baseline for model {pinned_model!r} in {history.path} (`sentinel pin RUN` names one)"
            )
        return found
    return _load_run(history, ref)


@sentinel.command()
@click.option(
    "--baseline",
    metavar="RUN",
    help="Baseline run: a run id, a run record .json, or `pinned` (the pinned run of --baseline-model, "
    "else of the candidate's model).",
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
@click.option(
    "--threshold",
    type=float,
    help="The drop (points) the set is sized to catch; shown beside each mode (default 5).",
)
@click.option(
    "--allow-revision-change",
    is_flag=True,
    help="Gate runs of one model name that report different revisions (another model under the same name).",
)
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
    allow_revision_change: bool,
    history_path: str | None,
    review_path: str | None,
    pushgateway: str | None,
    output_path: str | None,
    config_file: str | None,
) -> None:
    """Compare a candidate run with a baseline; exit 1 when a failure mode regresses beyond chance."""
    from shadowtap.errors import GateError
    from shadowtap.sentinel.gate import compare_runs, noise_floor
    from shadowtap.sentinel.history import History
    from shadowtap.sentinel.render import console, gate_table

    if (baseline is None and baseline_model is None) or (candidate is None) == (candidate_model is None):
        raise click.UsageError(
            "give --baseline RUN (or pinned) or --baseline-model M, and --candidate RUN or --candidate-model M"
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
    cand = _gate_run(history, candidate, candidate_model, set_version)
    base = _gate_baseline(history, baseline, baseline_model, cand, set_version)
    try:
        decision = compare_runs(
            base,
            cand,
            config.sentinel,
            review_segments=_review_segments(config, cand),
            allow_revision_change=allow_revision_change,
        )
    except GateError as exc:
        raise NotComparable(str(exc)) from None
    earlier = history.latest_run_before(base["model"], base["set_version"], base["ts"])
    decision["noise_floor"] = None if earlier is None else noise_floor(earlier, base, config.sentinel)
    console().print(gate_table(decision, base, cand))
    if decision.get("judge"):
        click.echo(_judge_line(decision["judge"]))
    for warning in decision["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    _publish_gate(config, history, decision, output_path)
    if decision["regressions"]:
        _fail_gate(config, decision, base, cand)
    _queue_routed(config, decision, base, cand)
    click.echo(
        "gate: pass: no failure mode dropped beyond chance (one-sided paired tests, Holm, family-wise "
        f"alpha {decision['alpha']:g})"
    )


def _review_segments(config: SentinelConfig, cand: RunRecord) -> frozenset[str]:
    """Segments where the calibrated judge agrees with humans less than the floor."""
    from shadowtap.scorers.calibration import load_calibration, low_agreement_segments

    return low_agreement_segments(
        load_calibration(config.calibration_path),
        cand.get("judge_model"),
        cand.get("prompt_template_hash"),
        config.sentinel.judge_agreement_floor,
    )


def _queue_routed(config: SentinelConfig, decision: GateDecision, base: RunRecord, cand: RunRecord) -> None:
    """On a pass, judge-decided losses routed to review (not the gate) still go to the review queue."""
    from shadowtap.sentinel.gate import append_review, regressed_examples

    items = regressed_examples(decision, base, cand)
    if items:
        append_review(config.review_path, items)
        click.echo(f"{len(items)} judge verdict(s) routed to human review in {config.review_path}")


def _gate_run(history: History, ref: str | None, model: str | None, set_version: str | None) -> RunRecord:
    """The run given by `ref` (id or .json), else the latest run of `model` (on `set_version`, if given)."""
    if ref is not None:
        return _load_run(history, ref)
    assert model is not None  # a run or a model (checked by the caller)
    found = history.latest_run(model, set_version)
    if found is None:
        on_set = f" on set {set_version}" if set_version is not None else ""
        raise NotComparable(f"no run of model {model!r}{on_set} in {history.path}")
    return found


def _gate_baseline(
    history: History, ref: str | None, model: str | None, cand: RunRecord, set_version: str | None
) -> RunRecord:
    """The baseline: a run, `pinned`, or the latest run of `model`; of the candidate's own model, the
    latest run before the candidate (never the candidate itself)."""
    if ref is not None:
        return _resolve_run(history, ref, model or cand["model"])
    assert model is not None  # a run or a model (checked by the caller)
    version = set_version or cand["set_version"]
    if model == cand["model"]:
        found = history.latest_run_before(model, version, cand["ts"])
        if found is None:
            raise NotComparable(
                f"no run of model {model!r} on set {version} before {cand['run_id']} in {history.path} "
                "(a run is not gated against itself)"
            )
        return found
    return _gate_run(history, None, model, version)


def _publish_gate(
    config: SentinelConfig, history: History, decision: GateDecision, output_path: str | None
) -> None:
    """Record the decision in the history, push its metric, write it."""
    from shadowtap.sentinel.metrics import SentinelMetrics, push

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


def _fail_gate(config: SentinelConfig, decision: GateDecision, base: RunRecord, cand: RunRecord) -> None:
    """Queue the regressed examples for review, name the regressions, exit 1."""
    from shadowtap.sentinel.gate import append_review, regressed_examples

    items = regressed_examples(decision, base, cand)
    append_review(config.review_path, items)
    names = ", ".join(
        f"{r['failure_mode']} on {r['stratum']} ({-r['drop_points']:+.1f} points)"
        for r in decision["regressions"]
    )
    click.echo(f"gate: FAIL: regressed: {names}")
    click.echo(f"{len(items)} regressed example(s) written to {config.review_path}")
    click.get_current_context().exit(1)


# --------------------------------------------------------------------------------------------------
# pin


@sentinel.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--model", metavar="M", help="Pin it as this model's baseline (default: the run's model).")
@click.option(
    "--history",
    "history_path",
    metavar="FILE",
    help="SQLite history file (default DATA_DIR/sentinel.sqlite).",
)
@click.option("--config", "config_file", metavar="FILE", help=CONFIG_HELP)
def pin(run_ref: str, model: str | None, history_path: str | None, config_file: str | None) -> None:
    """Name RUN (a run id, or `latest` for --model's latest run) as a model's baseline: `gate --baseline
    pinned` and `run --baseline pinned` use it, so production can be gated against its own earlier run."""
    from shadowtap.sentinel.history import History

    config = _config(config_file, {"history": history_path})
    if not config.history_path.exists():
        raise click.ClickException(f"no sentinel history at {config.history_path}")
    history = History(config.history_path)
    if run_ref == "latest":
        if model is None:
            raise click.UsageError("`latest` needs --model M")
        record = history.latest_run(model)
        if record is None:
            raise click.ClickException(f"no run of model {model!r} in {history.path}")
    else:
        found = history.run(run_ref)
        if found is None:
            raise click.ClickException(f"no run {run_ref!r} in {history.path}")
        record = found
    pinned_model = model or record["model"]
    history.pin(pinned_model, record["run_id"])
    click.echo(
        f"pinned run {record['run_id']} (set {record['set_version']}) as the baseline of {pinned_model}"
    )


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
    from shadowtap.sentinel.render import console, history_table

    config = _config(config_file, {"history": history_path})
    if not config.history_path.exists():
        raise click.ClickException(
            f"no sentinel history at {config.history_path} (run `sentinel run` first, or pass --history)"
        )
    rows = History(config.history_path).scores(stratum=stratum, model=model, set_version=set_version)
    if not rows:
        raise click.ClickException(f"no sentinel runs in {config.history_path} match")
    console().print(history_table(rows, stratum))
    if plot_path:
        plot_history(rows, plot_path)
        click.echo(f"plot: {plot_path}")
