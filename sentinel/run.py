"""Running a sentinel set: replay every example, score each answer, summarise it as a run record.

Each answer is scored by the production scorers (through the same `ScoringPipeline`) plus the reference
match, as a sentinel pair whose `primary` side is the set's reference (sentinel/replay.py). Given a
baseline run, the judge then compares each answer with the baseline's, head to head (headtohead.py).
The record pins what a comparison needs to be like for like: set version, scorer configuration and
code version, decoding, judge model and prompt-template hash, and the model revision the target reports.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import httpx
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from shadowtap.metrics import ScoringMetrics
from shadowtap.proxy.record import SideResult
from shadowtap.records import ScoreRecord, utc_now_rfc3339
from shadowtap.scorers.base import Scorer
from shadowtap.scorers.calibration import calibration_status, load_calibration
from shadowtap.scorers.judge import JudgeScorer
from shadowtap.scorers.runner import ScoringPipeline, build_scorers
from shadowtap.sentinel.headtohead import HeadToHead, judge_head_to_head
from shadowtap.sentinel.modes import example_outcomes
from shadowtap.sentinel.reference import ReferenceMatchScorer
from shadowtap.sentinel.replay import Replayer, SentinelPair, Target, sentinel_pair
from shadowtap.sentinel.sets import SentinelSet, SetRow, canonical_json
from shadowtap.sentinel.settings import SentinelConfig
from shadowtap.sentinel.summary import ALL_STRATA, Example, ResultRow, summarise

__all__ = [
    "ALL_STRATA",
    "RUN_SCHEMA",
    "RunRecord",
    "Target",
    "build_sentinel_scorers",
    "check_scorers",
    "run_set",
    "scorer_code_version",
    "scorer_config_fingerprint",
]

log = logging.getLogger("shadowtap.sentinel")

RUN_SCHEMA = "shadowtap.sentinel_run/v1"
# Judge settings that change verdicts (pacing, budgets, prices and secrets do not).
JUDGE_SCORING_KEYS = ("model", "max_answer_chars", "max_request_chars", "max_tokens", "rubric_file")


class RunRecord(TypedDict):
    """`shadowtap.sentinel_run/v1`: one replay of a set, as stored in the history and compared by the gate."""

    schema: str
    run_id: str
    set_version: str
    set_path: str
    target: str
    model: str
    started_at: str
    finished_at: str
    ts: float
    duration_s: float
    scorer_config: dict[str, Any]
    scorer_config_hash: str
    judge_model: str | None
    prompt_template_hash: str | None
    replay: dict[str, Any]
    weights: dict[str, float]
    results: list[ResultRow]
    set_weighted: dict[str, ResultRow]
    errors: int
    scorer_errors: dict[str, int]
    examples: list[Example]
    scorer_code: NotRequired[dict[str, Any]]
    model_revision: NotRequired[str | None]
    model_revisions: NotRequired[dict[str, int]]
    head_to_head: NotRequired[HeadToHead | None]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def scorer_config_fingerprint(config: SentinelConfig) -> tuple[dict[str, Any], str]:
    judge = config.judge_config()
    pinned = {
        "pipeline": config.pipeline_scorers(),
        "reference": ["reference_match"],
        "judge": {k: judge.get(k) for k in JUDGE_SCORING_KEYS} if judge else None,
    }
    return pinned, _sha256(canonical_json(pinned))[:16]


def _package_version() -> str:
    try:
        return version("shadowtap")
    except PackageNotFoundError:
        return "unknown"


def _source_hash(obj: object) -> str:
    """A hash of the file that defines `obj`'s class (its code), or "unknown" without one."""
    try:
        source = inspect.getsourcefile(type(obj))
    except TypeError:
        source = None
    if not source:
        return "unknown"
    return _sha256(Path(source).read_bytes())[:16]


def scorer_code_version(
    scorers: list[Scorer], judge: JudgeScorer | None, pinned: dict[str, Any]
) -> dict[str, Any]:
    """The package version and, per scorer, a hash of its code and its configuration."""
    configs = {**pinned.get("pipeline", {}), "judge": pinned.get("judge")}
    hashes = {
        scorer.name: _sha256(
            (_source_hash(scorer) + "\n").encode() + canonical_json(configs.get(scorer.name))
        )[:16]
        for scorer in [*scorers, *([judge] if judge is not None else [])]
    }
    return {"package": _package_version(), "scorers": dict(sorted(hashes.items()))}


def build_sentinel_scorers(
    config: SentinelConfig, metrics: ScoringMetrics
) -> tuple[list[Scorer], JudgeScorer | None]:
    """The production scorers the sentinel runs and the reference match, and the judge (for head-to-head
    comparisons with a baseline run) when one is configured. Raises ValueError naming the config key."""
    try:
        scorers = build_scorers({"scorers": config.pipeline_scorers()}, metrics, config.segments)
    except (ValueError, ImportError, AttributeError) as exc:
        raise ValueError(f"sentinel scorers: {exc}") from None
    scorers.append(ReferenceMatchScorer())
    judge_config = config.judge_config()
    if judge_config is None:
        return scorers, None
    try:
        judge = JudgeScorer(judge_config, metrics=metrics, segments=config.segments)
    except ValueError as exc:
        raise ValueError(f"sentinel judge: {exc}") from None
    return scorers, judge


async def check_scorers(config: SentinelConfig) -> None:
    """Fail at start-up, not at the first scheduled run, when the scorer or judge settings are wrong."""
    _scorers, judge = build_sentinel_scorers(config, ScoringMetrics(CollectorRegistry()))
    if judge is not None:
        await judge.aclose()


async def score_answer(pipeline: ScoringPipeline, pair: SentinelPair) -> list[ScoreRecord]:
    """The score records of one sentinel pair, from the production pipeline (review items are not kept)."""
    records, _review = await pipeline.score_pair(pair)
    return records


def _example(row: SetRow, answer: SideResult, attempts: int, records: list[ScoreRecord]) -> Example:
    answered = answer.error is None and answer.text is not None
    probe = row.get("probe")
    return {
        "id": row["id"],
        "stratum": row["stratum"],
        "segment": (row.get("tags") or {}).get("segment"),
        "masked_input": bool(row.get("masked_input")),
        "probe": probe,
        "outcomes": example_outcomes(records, answered, probe=bool(probe)),
        "answer": answer.text,
        "error": answer.error,
        "attempts": attempts,
        "scores": [
            {"scorer": r["scorer"], "side": r["side"], "outcome": r["outcome"], "value": r["value"]}
            for r in records
        ],
    }


class _Replay:
    """Replays a set's rows, at most `concurrency` at a time, and collects their examples."""

    def __init__(self, replayer: Replayer, pipeline: ScoringPipeline, set_version: str, slots: int) -> None:
        self.replayer = replayer
        self.pipeline = pipeline
        self.set_version = set_version
        self.slots = asyncio.Semaphore(slots)
        self.examples: list[Example] = []
        self.reported_models: Counter[str] = Counter()
        self.revisions: Counter[str] = Counter()

    async def one(self, row: SetRow, bar: Progress, task: TaskID) -> None:
        async with self.slots:
            body, answer, attempts = await self.replayer.replay(row)
            records: list[ScoreRecord] = []
            if answer.error is None and answer.text is not None:
                records = await score_answer(
                    self.pipeline, sentinel_pair(row, body, answer, self.set_version)
                )
        if answer.model:
            self.reported_models[answer.model] += 1
        self.examples.append(_example(row, answer, attempts, records))
        bar.advance(task)


def _progress_bar(console: Console | None, progress: bool) -> Progress:
    return Progress(
        TextColumn("sentinel {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console or Console(stderr=True),
        disable=not progress,
        transient=False,
    )


async def _replay_set(
    sentinel_set: SentinelSet,
    config: SentinelConfig,
    target: Target,
    pipeline: ScoringPipeline,
    *,
    concurrency: int,
    bar: Progress,
) -> _Replay:
    settings = config.sentinel
    limits = httpx.Limits(max_connections=concurrency)
    timeout = httpx.Timeout(settings.timeout_s, connect=min(10.0, settings.timeout_s))
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        replay = _Replay(Replayer(client, config, target), pipeline, sentinel_set.version, concurrency)
        with bar:
            task = bar.add_task(sentinel_set.version, total=len(sentinel_set.rows))
            await asyncio.gather(*(replay.one(row, bar, task) for row in sentinel_set.rows))
    replay.examples.sort(key=lambda e: (e["stratum"], e["id"]))
    replay.revisions = replay.replayer.revisions
    return replay


def _scorer_errors(metrics: ScoringMetrics) -> dict[str, int]:
    """Examples each scorer failed on (left out of its failure mode), each logged as a warning."""
    errors = {
        sample.labels["scorer"]: int(sample.value)
        for metric in metrics.scorer_errors.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.value
    }
    for scorer, count in errors.items():
        log.warning(
            "scorer %s failed on %d example(s); those are left out of its failure mode", scorer, count
        )
    return errors


def _run_model(target: Target, reported: Counter[str]) -> str:
    """The run's label: the model asked for, else the one the target reported most, else `unknown`."""
    if target.model:
        return target.model
    return max(reported, key=lambda model: reported[model]) if reported else "unknown"


async def _head_to_head(
    config: SentinelConfig,
    judge: JudgeScorer | None,
    sentinel_set: SentinelSet,
    examples: list[Example],
    baseline: RunRecord | None,
    model: str,
) -> HeadToHead | None:
    """With a judge and a baseline run of the same set: each answer judged against the baseline's."""
    if judge is None or baseline is None:
        return None
    status = calibration_status(
        load_calibration(config.calibration_path), judge.config.model, judge.template_hash
    )
    return await judge_head_to_head(
        judge,
        {row["id"]: row for row in sentinel_set.rows},
        examples,
        baseline,
        max_flip_share=config.sentinel.judge_max_flip_share,
        calibration=status,
        candidate_model=model,
    )


def _check_baseline(sentinel_set: SentinelSet, baseline: RunRecord | None) -> None:
    if baseline is not None and baseline["set_version"] != sentinel_set.version:
        raise ValueError(
            f"baseline run {baseline['run_id']} is of set {baseline['set_version']}, not {sentinel_set.version}"
        )


async def run_set(
    sentinel_set: SentinelSet,
    config: SentinelConfig,
    target: Target,
    *,
    baseline: RunRecord | None = None,
    concurrency: int | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> RunRecord:
    """Replay every example of the set, score it, judge it against `baseline`'s answers when a judge is
    configured, and return the run record (not yet stored)."""
    _check_baseline(sentinel_set, baseline)
    settings = config.sentinel
    started_at, started = utc_now_rfc3339(), time.time()
    scoring_metrics = ScoringMetrics(CollectorRegistry())
    scorers, judge = build_sentinel_scorers(config, scoring_metrics)
    pipeline = ScoringPipeline(scorers, scoring_metrics, config.segments)
    try:
        replay = await _replay_set(
            sentinel_set,
            config,
            target,
            pipeline,
            concurrency=concurrency or settings.concurrency,
            bar=_progress_bar(console, progress),
        )
        model = _run_model(target, replay.reported_models)
        head_to_head = await _head_to_head(config, judge, sentinel_set, replay.examples, baseline, model)
    finally:
        if judge is not None:
            await judge.aclose()
    examples = replay.examples
    weights = sentinel_set.traffic_shares
    results, pooled = summarise(examples, weights, settings.bootstrap_samples)
    pinned, scorer_hash = scorer_config_fingerprint(config)
    revisions = replay.revisions
    return {
        "schema": RUN_SCHEMA,
        "run_id": f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}",
        "set_version": sentinel_set.version,
        "set_path": str(sentinel_set.path),
        "target": target.url,
        "model": model,
        "started_at": started_at,
        "finished_at": utc_now_rfc3339(),
        "ts": started,
        "duration_s": round(time.time() - started, 3),
        "scorer_config": pinned,
        "scorer_config_hash": scorer_hash,
        "scorer_code": scorer_code_version(scorers, judge, pinned),
        "judge_model": judge.config.model if judge is not None else None,
        "prompt_template_hash": judge.template_hash if judge is not None else None,
        "replay": {
            "temperature": 0,
            "seed": settings.seed,
            "max_tokens": settings.max_tokens,
            "retries": settings.retries,
        },
        "model_revision": revisions.most_common(1)[0][0] if revisions else None,
        "model_revisions": dict(revisions),
        "weights": weights,
        "results": results,
        "set_weighted": pooled,
        "errors": sum(1 for e in examples if e["error"] is not None),
        "scorer_errors": _scorer_errors(scoring_metrics),
        "examples": examples,
        "head_to_head": head_to_head,
    }
