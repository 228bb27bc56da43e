"""The drift sentinel: building versioned sets from recorded pairs, replaying them against scripted
endpoints on loopback, history, metrics and the promotion gate."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shadowtap.config import load_settings
from shadowtap.errors import GateError, SetError, SetExistsError
from shadowtap.records import PairRecord
from shadowtap.request_text import last_user_text
from shadowtap.sentinel.build import BuildResult, build_set, read_labels, rebuild_set
from shadowtap.sentinel.cli import sentinel
from shadowtap.sentinel.gate import Comparison, GateDecision, compare_runs, regressed_examples
from shadowtap.sentinel.history import History
from shadowtap.sentinel.metrics import SentinelMetrics, push
from shadowtap.sentinel.run import Target, run_set
from shadowtap.sentinel.sets import read_set
from shadowtap.sentinel.settings import SentinelConfig
from shadowtap.sentinel.sources import iter_jsonl
from shadowtap.testing import (
    Policy,
    Reply,
    ServerHandle,
    SimulatedLLM,
    default_policy,
    make_pair,
    make_side,
    serve_in_thread,
)

REFUSAL = "I'm sorry, but I can't help with that request."
VOCABULARY = [f"w{i:03d}" for i in range(400)]
# Production traffic: billing is small, so reaching its minimum over-samples it.
TRAFFIC = {"general": 300, "tech": 120, "billing": 30}


def question(segment: str, rng: random.Random) -> str:
    return f"{segment} question: " + " ".join(rng.sample(VOCABULARY, 12))


def pair(pair_id: str, segment: str, text: str, *, json_mode: bool = False) -> PairRecord:
    """A chat pair from production traffic in `segment`: both sides answered `text` alike."""
    request: dict[str, Any] = {"model": "prod-model", "messages": [{"role": "user", "content": text}]}
    if json_mode:
        request["response_format"] = {"type": "json_object"}
    answer = json.dumps({"answer": text[:20]}) if json_mode else f"Here is what you asked about {text[:30]}."
    return make_pair(
        pair_id=pair_id,
        ts="2025-01-06T10:00:00.000Z",
        request=request,
        tags={"segment": segment},
        primary=make_side(answer, model="prod-model", latency_ms=12.0),
        candidate=make_side(answer, model="cand-model", latency_ms=15.0),
    )


def write_pairs(path: Path, traffic: dict[str, int], seed: int = 7) -> list[PairRecord]:
    rng = random.Random(seed)
    pairs = []
    for segment, count in traffic.items():
        for i in range(count):
            pairs.append(
                pair(
                    f"{segment}-{i:04d}",
                    segment,
                    question(segment, rng),
                    json_mode=segment == "tech" and i % 3 == 0,
                )
            )
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return pairs


def sentinel_config(tmp: Path, **sentinel: Any) -> SentinelConfig:
    overrides = {
        "sink": {"data_dir": str(tmp / "data")},
        "sentinel": {
            "strata": ["segment"],
            "size": 120,
            "min_per_cell": 30,
            "backoff_base_s": 0.01,
            **sentinel,
        },
    }
    return SentinelConfig(load_settings(overrides=overrides, environ={}))


def build(tmp: Path, pairs_path: Path, out: Path | None = None, **sentinel: Any) -> BuildResult:
    config = sentinel_config(tmp, **sentinel)
    return build_set(
        iter_jsonl(pairs_path),
        config.sentinel,
        source={"kind": "jsonl", "path": str(pairs_path)},
        length_bounds=[500, 2000, 8000],
        sets_dir=config.sets_dir,
        out=out,
    )


def refuses(texts: set[str]) -> Policy:
    """A policy that refuses exactly these requests and answers everything else."""

    def policy(route: str, body: dict[str, Any]) -> Reply:
        return Reply(text=REFUSAL) if last_user_text(body) in texts else default_policy(route, body)

    return policy


def refuses_segment(segment: str) -> Policy:
    def policy(route: str, body: dict[str, Any]) -> Reply:
        text = last_user_text(body)
        return Reply(text=REFUSAL) if text.startswith(f"{segment} question") else default_policy(route, body)

    return policy


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One set, and runs of it against a good, a degraded and a noisy endpoint (shared: they take time)."""
    tmp = tmp_path_factory.mktemp("sentinel")
    pairs_path = tmp / "pairs.jsonl"
    write_pairs(pairs_path, TRAFFIC)
    built = build(tmp, pairs_path).set
    by_stratum: dict[str, list[str]] = {}
    for row in built.rows:
        by_stratum.setdefault(row["stratum"], []).append(row["request"]["messages"][0]["content"])
    # Noise: one refusal in each stratum, two in billing (6.7 points there: past the threshold, not past noise).
    noisy = {texts[0] for texts in by_stratum.values()} | {by_stratum["billing"][1]}
    servers: list[ServerHandle] = []
    sims = {
        "prod-v1": SimulatedLLM("prod-v1"),
        "cand-bad": SimulatedLLM("cand-bad", refuses_segment("billing")),
        "cand-noisy": SimulatedLLM("cand-noisy", refuses(noisy)),
    }
    urls = {}
    for name, sim in sims.items():
        handle = serve_in_thread(sim.app)
        servers.append(handle)
        urls[name] = handle.base_url
    config = sentinel_config(tmp)
    runs = {
        name: asyncio.run(run_set(built, config, Target(urls[name], name), progress=False)) for name in sims
    }
    history = History(config.history_path)
    metrics = SentinelMetrics(CollectorRegistry())
    for record in runs.values():
        history.add_run(record)
        metrics.record_run(record)
    yield {
        "tmp": tmp,
        "set": built,
        "config": config,
        "runs": runs,
        "sims": sims,
        "urls": urls,
        "history": history,
        "metrics": metrics,
    }
    for handle in servers:
        handle.stop()


# --------------------------------------------------------------------------------------------------
# Building


def test_every_stratum_gets_its_minimum_and_short_cells_are_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pairs_path = tmp_path / "pairs.jsonl"
    write_pairs(pairs_path, {"general": 300, "tech": 120, "billing": 40, "legal": 12})
    with caplog.at_level(logging.WARNING, logger="shadowtap.sentinel"):
        result = build(tmp_path, pairs_path, size=150)
    sampled = Counter(row["stratum"] for row in result.set.rows)
    assert sampled["legal"] == 12  # all it has
    assert min(sampled["general"], sampled["tech"], sampled["billing"]) >= 30
    assert sampled["general"] > sampled["tech"] > sampled["billing"]  # the rest follows traffic
    assert sum(sampled.values()) == 150
    assert [c.stratum for c in result.short_cells] == ["legal"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("segment=legal" in w and "12" in w and "30" in w for w in warnings)
    assert not any("segment=billing" in w or "segment=general" in w for w in warnings)
    manifest = result.set.manifest
    assert manifest["short_cells"] == ["legal"]
    assert manifest["strata"]["cells"]["general"]["traffic"] == 300
    assert manifest["strata"]["cells"]["billing"]["traffic_share"] == pytest.approx(40 / 472, abs=1e-6)


def test_near_duplicate_requests_are_sampled_once(tmp_path: Path) -> None:
    rng = random.Random(3)
    base = question("general", rng)
    copies = [base, base.upper(), "  " + base.replace(" ", "   ") + "!!", base + " w399"]
    pairs = [pair(f"dup-{i}", "general", text) for i, text in enumerate(copies)]
    pairs += [pair(f"other-{i}", "general", question("general", rng)) for i in range(10)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    result = build(tmp_path, path, size=50, min_per_cell=5)
    ids = [row["id"] for row in result.set.rows]
    assert sum(1 for i in ids if i.startswith("dup-")) == 1
    assert sum(1 for i in ids if i.startswith("other-")) == 10
    assert result.duplicates == 3


def test_version_changes_when_and_only_when_content_changes(tmp_path: Path) -> None:
    pairs_path = tmp_path / "pairs.jsonl"
    pairs = write_pairs(pairs_path, {"general": 60, "billing": 35})
    first = build(tmp_path, pairs_path, out=tmp_path / "set-a").set

    # Same records in another order, from another file, at another time: the same version.
    shuffled = tmp_path / "copy" / "pairs.jsonl"
    shuffled.parent.mkdir()
    reordered = list(pairs)
    random.Random(1).shuffle(reordered)
    shuffled.write_text("".join(json.dumps(p) + "\n" for p in reordered))
    second = build(tmp_path, shuffled, out=tmp_path / "set-b").set
    assert second.version == first.version
    assert (tmp_path / "set-a" / "data.jsonl").read_bytes() == (
        tmp_path / "set-b" / "data.jsonl"
    ).read_bytes()

    # Building the same content into the same directory yields that directory, untouched.
    mtime = (tmp_path / "set-a" / "manifest.json").stat().st_mtime_ns
    again = build(tmp_path, pairs_path, out=tmp_path / "set-a")
    assert not again.created and again.set.version == first.version
    assert (tmp_path / "set-a" / "manifest.json").stat().st_mtime_ns == mtime

    # One reference answer changed: a new version, and the old directory is never overwritten.
    sampled_id = first.rows[0]["id"]
    changed = [p.copy() for p in pairs]
    for p in changed:
        if p["id"] == sampled_id:
            p["primary"] = {**p["primary"], "text": "A different reference answer."}
    changed_path = tmp_path / "changed.jsonl"
    changed_path.write_text("".join(json.dumps(p) + "\n" for p in changed))
    with pytest.raises(SetExistsError):
        build(tmp_path, changed_path, out=tmp_path / "set-a")
    third = build(tmp_path, changed_path).set
    assert third.version != first.version
    assert third.path == tmp_path / "data" / "sentinel-sets" / third.version
    assert read_set(tmp_path / "set-a").version == first.version

    # Different sampling parameters that pick the same examples: the same version.
    assert build(tmp_path, pairs_path, out=tmp_path / "set-c", seed=99).set.version == first.version

    # Traffic shares are content too: the same examples weighted differently are another version
    # (here: more general traffic, all of it failed requests, which cannot be references).
    failed = [pair(f"failed-{i}", "general", f"general failed {i}") for i in range(20)]
    for p in failed:
        p["primary"] = make_side(
            None, model="prod-model", latency_ms=12.0, error={"kind": "http_5xx", "message": "HTTP 502"}
        )
    more_traffic = tmp_path / "more-traffic.jsonl"
    more_traffic.write_text(pairs_path.read_text() + "".join(json.dumps(p) + "\n" for p in failed))
    reweighted = build(tmp_path, more_traffic).set
    assert [r["id"] for r in reweighted.rows] == [r["id"] for r in first.rows]
    assert reweighted.version != first.version


def test_an_edited_set_is_refused_and_labels_make_a_new_version(tmp_path: Path) -> None:
    pairs_path = tmp_path / "pairs.jsonl"
    write_pairs(pairs_path, {"general": 40})
    original = build(tmp_path, pairs_path, out=tmp_path / "v1", min_per_cell=10, size=10).set
    labelled_id = original.rows[0]["id"]

    edited = tmp_path / "v1-edited"
    edited.mkdir()
    rows = [dict(r, expected="42") if r["id"] == labelled_id else r for r in original.rows]
    (edited / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (edited / "manifest.json").write_text((original.path / "manifest.json").read_text())
    with pytest.raises(SetError, match="changed after it was built"):
        read_set(edited)

    config = sentinel_config(tmp_path)
    from_edit = rebuild_set(edited, sets_dir=config.sets_dir, out=tmp_path / "v2").set
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps({"id": labelled_id, "expected": "42"}) + "\n")
    from_labels = rebuild_set(original.path, sets_dir=config.sets_dir, labels=read_labels(labels)).set
    assert from_edit.version == from_labels.version != original.version
    assert from_edit.manifest["parent"] == original.version
    assert from_edit.manifest["labelled"] == 1
    assert from_edit.traffic_shares == original.traffic_shares


# --------------------------------------------------------------------------------------------------
# Running


async def test_replay_is_pinned_and_retried(tmp_path: Path) -> None:
    pairs_path = tmp_path / "pairs.jsonl"
    write_pairs(pairs_path, {"general": 6})
    built = build(tmp_path, pairs_path, min_per_cell=6, size=6).set
    attempts: Counter[str] = Counter()

    def flaky(route: str, body: dict[str, Any]) -> Reply:
        text = last_user_text(body)
        attempts[text] += 1
        if attempts[text] == 1:
            return Reply(status=503, headers={"retry-after": "0"})
        return default_policy(route, body)

    sim = SimulatedLLM("flaky", flaky)
    with serve_in_thread(sim.app) as handle:
        record = await run_set(
            built, sentinel_config(tmp_path), Target(handle.base_url, "cand-7b"), progress=False
        )
    sent = [r.json for r in sim.received]
    assert len(sent) == 12 and all(n == 2 for n in attempts.values())
    assert all(
        b["temperature"] == 0 and b["seed"] == 1234 and b["model"] == "cand-7b" and "stream" not in b
        for b in sent
    )
    no_error = next(r for r in record["results"] if r["failure_mode"] == "no_error" and r["stratum"] == "all")
    assert no_error["score"] == 1.0 and record["errors"] == 0
    assert all(e["attempts"] == 2 for e in record["examples"])
    assert record["set_version"] == built.version and record["model"] == "cand-7b"
    assert record["scorer_config_hash"] and record["judge_model"] is None


def _comparison(decision: GateDecision, mode: str, stratum: str) -> Comparison:
    return next(c for c in decision["comparisons"] if c["failure_mode"] == mode and c["stratum"] == stratum)


def test_gate_names_the_failure_mode_and_stratum_that_regressed(world: dict[str, Any]) -> None:
    runs, settings = world["runs"], world["config"].sentinel
    decision = compare_runs(runs["prod-v1"], runs["cand-bad"], settings)
    regressed = {(r["failure_mode"], r["stratum"]) for r in decision["regressions"]}
    assert ("not_refused", "billing") in regressed
    assert not {s for m, s in regressed if s not in ("billing", "all")}
    assert {m for m, _ in regressed} == {"not_refused"}
    billing = _comparison(decision, "not_refused", "billing")
    assert (
        billing["drop_points"] == pytest.approx(100.0)
        and billing["worse"] == 30
        and billing["p_value"] < 1e-6
    )

    items = regressed_examples(decision, runs["prod-v1"], runs["cand-bad"])
    assert len(items) == 30
    assert {i["stratum"] for i in items} == {"billing"} and {i["failure_mode"] for i in items} == {
        "not_refused"
    }
    assert all(i["candidate"]["answer"] == REFUSAL and i["request"] and i["reference"] for i in items)


def test_noise_level_differences_do_not_fail_the_gate(world: dict[str, Any]) -> None:
    runs, settings = world["runs"], world["config"].sentinel
    decision = compare_runs(runs["prod-v1"], runs["cand-noisy"], settings)
    assert decision["regressions"] == []
    billing = _comparison(decision, "not_refused", "billing")
    assert billing["drop_points"] > settings.threshold_points  # a visible drop ...
    assert billing["p_value"] > settings.alpha and not billing["regressed"]  # ... that is chance
    low, high = billing["interval_points"]
    assert low < 0 < high
    with pytest.raises(GateError, match="same run"):
        compare_runs(runs["prod-v1"], runs["prod-v1"], settings)


def test_the_aggregate_is_weighted_by_traffic_not_by_the_set(world: dict[str, Any]) -> None:
    built, bad = world["set"], world["runs"]["cand-bad"]
    shares = built.manifest["strata"]["cells"]
    assert bad["weights"] == {key: cell["traffic_share"] for key, cell in shares.items()}
    sampled = Counter(row["stratum"] for row in built.rows)
    assert sampled["billing"] / len(built.rows) > 3 * bad["weights"]["billing"]  # over-sampled

    per_stratum = {r["stratum"]: r for r in bad["results"] if r["failure_mode"] == "not_refused"}
    expected = sum(bad["weights"][s] * per_stratum[s]["score"] for s in ("general", "tech", "billing"))
    assert per_stratum["all"]["score"] == pytest.approx(expected)
    assert per_stratum["all"]["score"] == pytest.approx(1 - 30 / 450, abs=1e-4)  # billing's share of traffic
    set_weighted = bad["set_weighted"]["not_refused"]["score"]
    assert set_weighted == pytest.approx(1 - sampled["billing"] / len(built.rows))
    assert per_stratum["all"]["score"] - set_weighted > 0.15
    assert per_stratum["all"]["lower"] <= per_stratum["all"]["score"] <= per_stratum["all"]["upper"]


def test_history_and_metrics_hold_every_run(world: dict[str, Any]) -> None:
    runs, history, metrics = world["runs"], world["history"], world["metrics"]
    with sqlite3.connect(history.path) as db:
        stored = {row[0]: row[1] for row in db.execute("SELECT run_id, model FROM runs")}
        modes = {
            row[0] for row in db.execute("SELECT DISTINCT failure_mode FROM scores WHERE stratum = 'all'")
        }
    assert stored == {r["run_id"]: r["model"] for r in runs.values()}
    assert {"no_error", "format_pass", "not_refused"} <= modes
    version = world["set"].version
    for model, record in runs.items():
        labels = {"failure_mode": "not_refused", "set_version": version, "model": model}
        assert (
            metrics.registry.get_sample_value("shadowtap_sentinel_score", {**labels, "stratum": "all"})
            is not None
        )
        assert (
            metrics.registry.get_sample_value("shadowtap_sentinel_score", {**labels, "stratum": "billing"})
            is not None
        )
        last = metrics.registry.get_sample_value(
            "shadowtap_sentinel_last_run_timestamp_seconds", {"set_version": version, "model": model}
        )
        assert last == pytest.approx(record["ts"])
    bad_billing = {
        "failure_mode": "not_refused",
        "set_version": version,
        "model": "cand-bad",
        "stratum": "billing",
    }
    assert metrics.registry.get_sample_value("shadowtap_sentinel_score", bad_billing) == 0.0

    decision = compare_runs(runs["prod-v1"], runs["cand-bad"], world["config"].sentinel)
    history.add_gate(decision)
    metrics.record_gate(decision)
    regression = {"set_version": version}
    assert (
        metrics.registry.get_sample_value(
            "shadowtap_sentinel_regression", {**regression, "failure_mode": "not_refused"}
        )
        == 1
    )
    assert (
        metrics.registry.get_sample_value(
            "shadowtap_sentinel_regression", {**regression, "failure_mode": "no_error"}
        )
        == 0
    )
    assert history.latest_gates()[-1]["candidate_run"] == runs["cand-bad"]["run_id"]

    # A Pushgateway (stand-in on loopback) receives the run's series in a group per set version and model.
    pushed: list[tuple[str, str, bytes]] = []

    async def receive(request: Request) -> Response:
        pushed.append((request.method, request.url.path, await request.body()))
        return Response(status_code=200)

    gateway = Starlette(routes=[Route("/metrics/{rest:path}", receive, methods=["PUT", "POST"])])
    with serve_in_thread(gateway) as handle:
        one = SentinelMetrics()
        one.record_run(runs["cand-bad"])
        push(handle.url, one.registry, {"set_version": version, "model": "cand-bad"})
    method, path, body = pushed[0]
    assert method == "PUT" and path == f"/metrics/job/shadowtap_sentinel/model/cand-bad/set_version/{version}"
    assert b'shadowtap_sentinel_score{failure_mode="not_refused",model="cand-bad"' in body


def scripted_judge(route: str, body: dict[str, Any]) -> Reply:
    """Prefers the answer without WRONG; on answers marked FLIP always picks A (a position-biased judge)."""
    prompt = body["messages"][-1]["content"]
    a = prompt.split("[The Start of Answer A]")[1].split("[The End of Answer A]")[0]
    b = prompt.split("[The Start of Answer B]")[1].split("[The End of Answer B]")[0]
    if "FLIP" in a + b:
        winner = "A"
    else:
        winner = "B" if "WRONG" in a else "A" if "WRONG" in b else "tie"
    return Reply(text=json.dumps({"winner": winner, "reason": "scripted"}))


async def test_reference_match_and_the_judge_head_to_head_against_the_baseline_run(tmp_path: Path) -> None:
    pairs_path = tmp_path / "pairs.jsonl"
    write_pairs(pairs_path, {"general": 8})
    original = build(tmp_path, pairs_path, min_per_cell=8, size=8).set
    labelled = original.rows[:4]
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"id": r["id"], "expected": "1,234.5"}) + "\n" for r in labelled))
    config = sentinel_config(tmp_path)
    built = rebuild_set(original.path, sets_dir=config.sets_dir, labels=read_labels(labels)).set
    texts = [r["request"]["messages"][0]["content"] for r in original.rows]
    right = {texts[0], texts[1]}

    def baseline_target(route: str, body: dict[str, Any]) -> Reply:
        text = last_user_text(body)
        return Reply(
            text="Adding it all up, the total comes to 1234.5" if text in right else "A fine answer."
        )

    def candidate_target(route: str, body: dict[str, Any]) -> Reply:
        text = last_user_text(body)
        if text in right:
            return Reply(text="Adding it all up, the total comes to 1234.5")  # identical: a tie, no call
        if text == texts[4]:
            return Reply(text="WRONG and unhelpful")
        if text == texts[5]:
            return Reply(text="A FLIP of an answer")
        return Reply(text="The total is 99." if text in {texts[2], texts[3]} else "A fine answer, reworded.")

    judge_sim = SimulatedLLM("judge-model", scripted_judge)
    with (
        serve_in_thread(SimulatedLLM("base", baseline_target).app) as b,
        serve_in_thread(SimulatedLLM("cand", candidate_target).app) as c,
        serve_in_thread(judge_sim.app) as j,
    ):
        config = sentinel_config(
            tmp_path, judge={"base_url": j.base_url, "model": "judge-model", "backoff_base_s": 0}
        )
        base = await run_set(built, config, Target(b.base_url, "prod"), progress=False)
        assert base["head_to_head"] is None and not judge_sim.received  # no baseline: nothing to judge
        record = await run_set(built, config, Target(c.base_url, "cand"), baseline=base, progress=False)
    all_rows = {r["failure_mode"]: r for r in record["results"] if r["stratum"] == "all"}
    assert all_rows["reference_match"]["score"] == 0.5 and all_rows["reference_match"]["count"] == 4
    judge = record["head_to_head"]
    assert judge is not None and judge["baseline_run"] == base["run_id"]
    # 8 judged: 2 identical (ties without a call), 2 numeric answers reworded and 2 plain ones (ties),
    # one WRONG (a loss) and one that flips with the order.
    assert (judge["wins"], judge["ties"], judge["losses"], judge["flips"], judge["judged"]) == (0, 6, 1, 1, 8)
    assert judge["flip_share"] == pytest.approx(1 / 8) and not judge["flagged"]  # 12.5% <= 20%
    assert judge["calibration"].startswith("uncalibrated")
    assert all_rows["judge_vs_baseline"]["count"] == 7  # the flip is left out, not counted as a tie
    assert all_rows["judge_vs_baseline"]["score"] == pytest.approx(-1 / 7)
    assert len(judge_sim.received) == 2 * 6  # both orders, for each example whose answers differ
    flipped = next(e for e in record["examples"] if e["answer"] == "A FLIP of an answer")
    assert flipped["judge"] == {
        "outcome": "flip",
        "length_ratio": pytest.approx(19 / 14, abs=1e-3),
        "identical": False,
    }
    assert record["judge_model"] == "judge-model" and record["prompt_template_hash"]
    assert record["scorer_code"]["scorers"].keys() >= {"format", "refusal", "reference_match", "judge"}


# --------------------------------------------------------------------------------------------------
# The command line


def test_cli_build_run_gate_history(tmp_path: Path) -> None:
    pairs_path = tmp_path / "pairs.jsonl"
    write_pairs(pairs_path, {"general": 80, "billing": 30})
    cli = CliRunner()
    data = ["--config", str(tmp_path / "shadowtap.yaml")]
    (tmp_path / "shadowtap.yaml").write_text(
        f"sink:\n  data_dir: {tmp_path / 'data'}\nsentinel:\n  strata: [segment]\n  size: 70\n"
    )
    built = cli.invoke(sentinel, ["build", "--input", str(pairs_path), "--out", str(tmp_path / "set"), *data])
    assert built.exit_code == 0, built.output
    assert "version" in built.output and "billing" in built.output

    with (
        serve_in_thread(SimulatedLLM("good").app) as good,
        serve_in_thread(SimulatedLLM("bad", refuses_segment("billing")).app) as bad,
    ):
        for url, model in ((good.base_url, "prod-v1"), (bad.base_url, "cand-v2")):
            ran = cli.invoke(
                sentinel,
                [
                    "run",
                    "--set",
                    str(tmp_path / "set"),
                    "--target",
                    url,
                    "--model",
                    model,
                    "--no-progress",
                    *data,
                ],
            )
            assert ran.exit_code == 0, ran.output
            assert "not_refused" in ran.output
    gated = cli.invoke(
        sentinel, ["gate", "--baseline-model", "prod-v1", "--candidate-model", "cand-v2", *data]
    )
    assert gated.exit_code == 1, gated.output
    assert "REGRESSED" in gated.output and "gate: FAIL" in gated.output
    assert "not_refused on billing (-100.0 points)" in gated.output
    review = [json.loads(line) for line in (tmp_path / "data" / "review.jsonl").read_text().splitlines()]
    assert len(review) == 30 and review[0]["reason"] == "sentinel_regression"

    same = cli.invoke(
        sentinel, ["gate", "--baseline-model", "prod-v1", "--candidate-model", "prod-v1", *data]
    )
    assert same.exit_code == 2 and "not gated against itself" in same.output, same.output

    plot = tmp_path / "history.png"
    shown = cli.invoke(sentinel, ["history", "--plot", str(plot), *data])
    assert shown.exit_code == 0, shown.output
    assert "prod-v1" in shown.output and "cand-v2" in shown.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_scheduled_run_serves_its_metrics_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    pairs_path = tmp_path / "pairs.jsonl"
    write_pairs(pairs_path, {"general": 10})
    built = build(tmp_path, pairs_path, min_per_cell=10, size=10).set
    history_path = tmp_path / "history.sqlite"
    with serve_in_thread(SimulatedLLM("prod-v1").app) as target:
        command = [
            sys.executable, "-c", "from shadowtap.sentinel.cli import sentinel; sentinel()",
            "run", "--set", str(built.path), "--target", target.base_url, "--model", "prod-v1",
            "--every", "1s", "--history", str(history_path), "--metrics-port", "0", "--no-progress",
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(process.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
        reader.start()
        try:
            deadline = time.monotonic() + 30
            while not (history_path.exists() and History(history_path).count_runs() >= 2):
                assert process.poll() is None, "".join(lines)
                assert time.monotonic() < deadline, "two scheduled runs did not happen in time"
                time.sleep(0.1)
            url = next(line.split()[-1] for line in lines if "sentinel metrics on" in line)
            exposition = urllib.request.urlopen(url, timeout=5).read().decode()
            assert 'shadowtap_sentinel_score{failure_mode="not_refused",model="prod-v1"' in exposition
            assert "shadowtap_sentinel_last_run_timestamp_seconds" in exposition
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            reader.join(timeout=10)
            process.stderr.close()  # type: ignore[union-attr]
    assert History(history_path).count_runs() >= 2
