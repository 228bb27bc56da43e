"""Replaying a sentinel set against an endpoint, scoring every answer, and summarising it as a run record.

Decoding is pinned (temperature 0, a fixed seed that servers such as vLLM honour) so that two runs differ
because the model did, not the dice. Each answer is scored by the production scorers (through the same
`ScoringPipeline`) plus the reference scorers, as a pair whose `primary` side is the set's reference.
The record pins what a comparison needs to be like for like: set version, scorer-config hash, judge
model and prompt-template hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
import uuid
import zlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shadowtap.metrics import ScoringMetrics
from shadowtap.proxy.record import SideAssembler, SideResult
from shadowtap.records import PAIR_SCHEMA, utc_now_rfc3339
from shadowtap.scorers.base import Scorer
from shadowtap.scorers.judge import JudgeScorer
from shadowtap.scorers.runner import ScoringPipeline, build_scorers
from shadowtap.sentinel.modes import BY_NAME, FAILURE_MODES, example_outcomes
from shadowtap.sentinel.reference import JudgeReferenceScorer, ReferenceMatchScorer
from shadowtap.sentinel.sets import SentinelSet, canonical_json
from shadowtap.sentinel.settings import SentinelConfig
from shadowtap.stats import bootstrap_mean, weighted_estimate, wilson

log = logging.getLogger("shadowtap.sentinel")

RUN_SCHEMA = "shadowtap.sentinel_run/v1"
ALL_STRATA = "all"
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
# Judge settings that change verdicts (pacing, budgets, prices and secrets do not).
JUDGE_SCORING_KEYS = ("model", "max_answer_chars", "max_request_chars", "max_tokens", "rubric_file")
# Request fields dropped before a replay: they would make answers random or arrive as a stream.
UNPINNED_FIELDS = ("stream", "stream_options", "top_p", "top_k", "n", "logit_bias", "user")


@dataclass(frozen=True)
class Target:
    """The endpoint a run replays against, as the OpenAI SDK's base_url (http://host:8000/v1)."""

    url: str
    model: str | None = None
    api_key: str | None = None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def replay_body(row: dict[str, Any], model: str | None, seed: int, max_tokens: int | None) -> dict[str, Any]:
    body = {k: v for k, v in row["request"].items() if k not in UNPINNED_FIELDS}
    body["temperature"] = 0
    body["seed"] = seed
    if model is not None:
        body["model"] = model
    elif "model" not in body and row.get("reference_model"):
        body["model"] = row["reference_model"]
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            return None


class Replayer:
    """Sends one example to the target, retrying 408/409/429/5xx and connection errors with backoff."""

    def __init__(self, client: httpx.AsyncClient, config: SentinelConfig, target: Target) -> None:
        self.client = client
        self.settings = config.sentinel
        self.target = target
        self.jitter = random.Random()

    async def replay(self, row: dict[str, Any]) -> tuple[dict[str, Any], SideResult, int]:
        """(the body sent, what came back, attempts made)."""
        s = self.settings
        body = replay_body(row, self.target.model, s.seed, s.max_tokens)
        url = self.target.url.rstrip("/") + "/" + row["route"].removeprefix("/v1/").lstrip("/")
        headers = {"Authorization": f"Bearer {self.target.api_key}"} if self.target.api_key else {}
        result = SideResult()
        for attempt in range(s.retries + 1):
            started = time.perf_counter()
            wait: float | None = None
            try:
                response = await self.client.post(url, json=body, headers=headers)
            except httpx.TimeoutException as exc:
                result = SideResult().fail("timeout", f"{type(exc).__name__}: {exc}")
            except httpx.TransportError as exc:
                result = SideResult().fail("connect", f"{type(exc).__name__}: {exc}")
            else:
                assembler = SideAssembler(streaming=False, started=started)
                assembler.feed(response.content, time.perf_counter())
                result = assembler.finish(
                    SideResult(status=response.status_code), time.perf_counter(), row["route"]
                )
                if response.status_code not in RETRY_STATUSES:
                    return body, result, attempt + 1
                wait = _retry_after(response)
            if attempt == s.retries:
                break
            backoff = min(s.backoff_max_s, s.backoff_base_s * 2**attempt) * self.jitter.uniform(0.5, 1.0)
            await asyncio.sleep(min(s.backoff_max_s, wait) if wait is not None else backoff)
        return body, result, s.retries + 1


def sentinel_pair(
    row: dict[str, Any], body: dict[str, Any], answer: SideResult, set_version: str
) -> dict[str, Any]:
    """A pair record with the reference in the primary's place and the replayed answer as the candidate."""
    return {
        "schema": PAIR_SCHEMA,
        "id": row["id"],
        "ts": utc_now_rfc3339(),
        "route": row["route"],
        "stream": False,
        "request": body,
        "tags": dict(row.get("tags") or {}),
        "primary": SideResult(model=row.get("reference_model"), status=200, text=row["reference"]).to_dict(),
        "candidate": answer.to_dict(),
        "sentinel": {
            "set_version": set_version,
            "stratum": row["stratum"],
            "expected": row.get("expected"),
            "match": row.get("match"),
            "tolerance": row.get("tolerance"),
        },
    }


def _seed(*parts: str) -> int:
    return zlib.crc32("/".join(parts).encode())


def summarise(
    examples: list[dict[str, Any]], weights: dict[str, float], samples: int
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Per failure mode × stratum: score, count and 95% interval; stratum `all` is weighted by traffic.

    Also returns the set-weighted (pooled) figure per failure mode, for comparison: it over-weights the
    strata that were over-sampled to reach their minimum.
    """
    results: list[dict[str, Any]] = []
    pooled: dict[str, dict[str, Any]] = {}
    for mode in FAILURE_MODES:
        by_stratum: dict[str, list[float]] = defaultdict(list)
        for example in examples:
            value = example["outcomes"].get(mode.name)
            if value is not None:
                by_stratum[example["stratum"]].append(value)
        if not by_stratum:
            continue
        for stratum in sorted(by_stratum):
            values = by_stratum[stratum]
            results.append(_row(mode.name, stratum, values, samples))
        aggregate = weighted_estimate(
            by_stratum, weights, rate=mode.kind == "rate", samples=samples, seed=_seed(mode.name, ALL_STRATA)
        )
        count = sum(len(by_stratum[s]) for s in by_stratum if weights.get(s, 0) > 0)
        if aggregate is not None:
            score, low, high = aggregate
            results.append(_result(mode.name, ALL_STRATA, score, count, (low, high)))
        everything = [v for values in by_stratum.values() for v in values]
        pooled[mode.name] = _row(mode.name, "set", everything, samples)
    return results, pooled


def _row(mode: str, stratum: str, values: list[float], samples: int) -> dict[str, Any]:
    n = len(values)
    score = sum(values) / n
    if BY_NAME[mode].kind == "rate":
        interval = wilson(sum(values), n)
    else:
        interval = bootstrap_mean(values, samples, _seed(mode, stratum))
    return _result(mode, stratum, score, n, interval)


def _result(
    mode: str, stratum: str, score: float, count: int, interval: tuple[float, float] | None
) -> dict[str, Any]:
    low, high = interval if interval is not None else (None, None)
    return {
        "failure_mode": mode,
        "kind": BY_NAME[mode].kind,
        "stratum": stratum,
        "score": score,
        "count": count,
        "lower": low,
        "upper": high,
    }


def scorer_config_fingerprint(config: SentinelConfig) -> tuple[dict[str, Any], str]:
    judge = config.judge_config()
    pinned = {
        "pipeline": config.pipeline_scorers(),
        "reference": ["reference_match", *(["judge_reference"] if judge else [])],
        "judge": {k: judge.get(k) for k in JUDGE_SCORING_KEYS} if judge else None,
    }
    return pinned, _sha256(canonical_json(pinned))[:16]


def build_sentinel_scorers(
    config: SentinelConfig, metrics: ScoringMetrics
) -> tuple[list[Scorer], JudgeScorer | None]:
    """The production scorers the sentinel runs, the reference match, and the judge against the
    reference when one is configured. Raises ValueError naming the config key on a bad setting."""
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
    scorers.append(JudgeReferenceScorer(judge))
    return scorers, judge


async def check_scorers(config: SentinelConfig) -> None:
    """Fail at start-up, not at the first scheduled run, when the scorer or judge settings are wrong."""
    _scorers, judge = build_sentinel_scorers(config, ScoringMetrics(CollectorRegistry()))
    if judge is not None:
        await judge.aclose()


async def run_set(
    sentinel_set: SentinelSet,
    config: SentinelConfig,
    target: Target,
    *,
    concurrency: int | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    """Replay every example of the set, score it, and return the run record (not yet stored)."""
    settings = config.sentinel
    started_at, started = utc_now_rfc3339(), time.time()
    scoring_metrics = ScoringMetrics(CollectorRegistry())
    segments = config.segments
    scorers, judge = build_sentinel_scorers(config, scoring_metrics)
    pipeline = ScoringPipeline(scorers, scoring_metrics, segments)
    slots = asyncio.Semaphore(concurrency or settings.concurrency)
    examples: list[dict[str, Any]] = []
    reported_models: dict[str, int] = defaultdict(int)

    limits = httpx.Limits(max_connections=concurrency or settings.concurrency)
    timeout = httpx.Timeout(settings.timeout_s, connect=min(10.0, settings.timeout_s))
    bar = Progress(
        TextColumn("sentinel {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console or Console(stderr=True),
        disable=not progress,
        transient=False,
    )
    try:
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            replayer = Replayer(client, config, target)

            async def one(row: dict[str, Any], task: Any) -> None:
                async with slots:
                    body, answer, attempts = await replayer.replay(row)
                    pair = sentinel_pair(row, body, answer, sentinel_set.version)
                    answered = answer.error is None and answer.text is not None
                    records: list[dict[str, Any]] = []
                    if answered:
                        records, _review = await pipeline.score_pair(pair)
                if answer.model:
                    reported_models[answer.model] += 1
                examples.append(
                    {
                        "id": row["id"],
                        "stratum": row["stratum"],
                        "outcomes": example_outcomes(records, answered),
                        "answer": answer.text,
                        "error": answer.error,
                        "attempts": attempts,
                        "scores": [
                            {k: r[k] for k in ("scorer", "side", "outcome", "value")} for r in records
                        ],
                    }
                )
                bar.advance(task)

            with bar:
                task = bar.add_task(sentinel_set.version, total=len(sentinel_set.rows))
                await asyncio.gather(*(one(row, task) for row in sentinel_set.rows))
    finally:
        if judge is not None:
            await judge.aclose()

    examples.sort(key=lambda e: (e["stratum"], e["id"]))
    weights = sentinel_set.traffic_shares
    results, pooled = summarise(examples, weights, settings.bootstrap_samples)
    pinned, scorer_hash = scorer_config_fingerprint(config)
    model = target.model or (max(reported_models, key=reported_models.get) if reported_models else "unknown")
    scorer_errors = {
        sample.labels["scorer"]: int(sample.value)
        for metric in scoring_metrics.scorer_errors.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.value
    }
    for scorer, count in scorer_errors.items():
        log.warning(
            "scorer %s failed on %d example(s); those are left out of its failure mode", scorer, count
        )
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
        "judge_model": judge.config.model if judge is not None else None,
        "prompt_template_hash": _sha256(judge.template.encode())[:16] if judge is not None else None,
        "replay": {
            "temperature": 0,
            "seed": settings.seed,
            "max_tokens": settings.max_tokens,
            "retries": settings.retries,
        },
        "weights": weights,
        "results": results,
        "set_weighted": pooled,
        "errors": sum(1 for e in examples if e["error"] is not None),
        "scorer_errors": scorer_errors,
        "examples": examples,
    }
