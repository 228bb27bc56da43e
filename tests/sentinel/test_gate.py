"""The gate's decision rule, comparability, pinned baselines, review items, masked inputs and the
reasoning probes: on run records made to order, and end to end against scripted endpoints on loopback."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any, cast

import pytest
from click.testing import CliRunner

from shadowtap.config import SentinelSettings
from shadowtap.errors import GateError
from shadowtap.request_text import last_user_text
from shadowtap.sentinel.build import build_set
from shadowtap.sentinel.cli import sentinel
from shadowtap.sentinel.decision import GateRule, StratumData, decide
from shadowtap.sentinel.gate import check_comparable, compare_runs, regressed_examples
from shadowtap.sentinel.probes import build_probe_set, probe_rows
from shadowtap.sentinel.run import RunRecord, Target, run_set
from shadowtap.sentinel.sources import iter_jsonl
from shadowtap.stats import PairedCounts
from shadowtap.testing import Reply, SimulatedLLM, default_policy, make_pair, make_side, serve_in_thread

from .test_sentinel import REFUSAL, refuses_segment, sentinel_config, write_pairs

SHARES = {"a": 0.6, "b": 0.3, "c": 0.1}


def run_record(
    run_id: str, outcomes: dict[str, list[tuple[str, dict[str, float | None]]]] | None = None, **extra: Any
) -> RunRecord:
    """A run record with only what the gate reads: examples (id -> (stratum, outcomes))."""
    examples = []
    for example_id, (stratum, values) in (outcomes or {}).items():
        examples.append(
            {
                "id": example_id,
                "stratum": stratum,
                "segment": stratum,
                "outcomes": values,
                "answer": f"answer of {run_id}",
            }
        )
    record = {
        "run_id": run_id,
        "model": extra.pop("model", run_id),
        "ts": 0.0,
        "set_version": "v1",
        "scorer_config_hash": "h",
        "replay": {"temperature": 0, "seed": 1234, "max_tokens": None},
        "weights": SHARES,
        "examples": examples,
        "results": [],
        **extra,
    }
    return cast(RunRecord, record)


def examples(n_per: dict[str, int], value: Any) -> dict[str, tuple[str, dict[str, float | None]]]:
    out = {}
    for stratum, n in n_per.items():
        for i in range(n):
            out[f"{stratum}-{i}"] = (stratum, value(stratum, i))
    return out


# --------------------------------------------------------------------------------------------------
# The rule


@pytest.mark.unit
def test_a_one_example_cell_with_a_changed_verdict_does_not_block() -> None:
    # The old gate's worst false block: n = 1, a zero-width interval, one verdict changed.
    by_mode = {
        "format_pass": {
            "a": StratumData(PairedCounts(60, 2, 2), 60, 0.6),
            "tiny": StratumData(PairedCounts(1, 0, 1), 1, 0.1),
        }
    }
    comparisons = decide(by_mode, GateRule())
    tiny = next(c for c in comparisons if c["stratum"] == "tiny")
    assert tiny["role"] == "diagnostic" and not tiny["regressed"]
    assert tiny["interval_points"][1] - tiny["interval_points"][0] > 50  # wide, never zero-width
    assert not any(c["regressed"] for c in comparisons)


@pytest.mark.unit
def test_a_mode_is_weighted_by_the_share_of_the_cell_it_applies_to() -> None:
    # The mode applies to 10 of b's 100 examples: b weighs 0.5 x 0.1, a 0.5 x 1 (a's share of the
    # mode's traffic 0.909, not 0.5).
    by_mode = {
        "format_pass": {
            "a": StratumData(PairedCounts(100, 0, 0), 100, 0.5, 90, 90),
            "b": StratumData(PairedCounts(10, 0, 10), 100, 0.5, 10, 0),
        }
    }
    overall = decide(by_mode, GateRule())[0]
    assert overall["stratum"] == "all"
    assert overall["drop_points"] == pytest.approx(100 / 11, abs=1e-3)
    assert overall["weight"] == pytest.approx(0.55)
    assert overall["baseline_score"] == pytest.approx((0.5 * 0.9 + 0.05 * 1.0) / 0.55)


@pytest.mark.unit
def test_holm_and_the_minimum_drop_decide_what_blocks() -> None:
    strata = {"a": StratumData(PairedCounts(200, 0, 12), 200, 1.0)}  # one stratum: no cells family
    small = {"a": StratumData(PairedCounts(5000, 10, 60), 5000, 1.0)}  # certain, but 1 point only
    comparisons = decide({"no_error": strata, "format_pass": small}, GateRule(min_drop_points=1.5))
    by_mode = {c["failure_mode"]: c for c in comparisons}
    assert by_mode["no_error"]["regressed"] and by_mode["no_error"]["p_value"] == pytest.approx(2**-12)
    # Holm over the two modes: format_pass's p is the smaller (x 2), no_error's second (x 1).
    assert by_mode["no_error"]["p_adjusted"] == pytest.approx(2**-12)
    assert by_mode["format_pass"]["p_adjusted"] == pytest.approx(2 * by_mode["format_pass"]["p_value"])
    assert by_mode["no_error"]["family_alpha"] == 0.05  # no cell gates: the rows get all of alpha
    assert by_mode["format_pass"]["p_value"] < 1e-9 and not by_mode["format_pass"]["regressed"]


def test_the_gate_refuses_runs_that_are_not_like_for_like() -> None:
    base = run_record("r1", model="prod", scorer_code={"package": "1.0", "scorers": {"format": "x"}})
    same = run_record("r2", model="prod", scorer_code={"package": "1.0", "scorers": {"format": "x"}})
    check_comparable(base, same)
    with pytest.raises(GateError, match="same run"):
        check_comparable(base, base)
    for change, named in (
        ({"replay": {"temperature": 0, "seed": 99, "max_tokens": 5}}, "decoding setting seed"),
        ({"replay": {"temperature": 0, "seed": 1234, "max_tokens": 5}}, "decoding setting max_tokens"),
        ({"set_version": "v2"}, "set version"),
        ({"scorer_code": {"package": "1.1", "scorers": {"format": "x"}}}, "scorer code version"),
        ({"scorer_code": {"package": "1.0", "scorers": {"format": "y"}}}, "scorer code version"),
        ({"judge_model": "other-judge"}, "judge model"),
        ({"prompt_template_hash": "abc"}, "judge prompt template"),
    ):
        other = cast(RunRecord, {**copy.deepcopy(same), **change})
        with pytest.raises(GateError, match=named):
            check_comparable(base, other)
    revised = cast(RunRecord, {**same, "model_revision": "fp_b"})
    with pytest.raises(GateError, match="revision fp_a .* fp_b"):
        check_comparable(cast(RunRecord, {**base, "model_revision": "fp_a"}), revised)
    check_comparable(cast(RunRecord, {**base, "model_revision": "fp_a"}), revised, allow_revision_change=True)


def test_one_review_item_per_example_with_every_mode_it_regressed_on() -> None:
    n = {"a": 40, "b": 40, "c": 40}
    base = run_record(
        "base", examples(n, lambda s, i: {"no_error": 1.0, "format_pass": 1.0, "not_refused": 1.0})
    )
    worse = {"no_error": 1.0, "format_pass": 0.0, "not_refused": 0.0}
    cand = run_record(
        "cand",
        examples(
            n, lambda s, i: worse if s == "b" else {"no_error": 1.0, "format_pass": 1.0, "not_refused": 1.0}
        ),
    )
    decision = compare_runs(base, cand, SentinelSettings())
    assert {(r["failure_mode"], r["stratum"]) for r in decision["regressions"]} == {
        ("format_pass", "all"),
        ("format_pass", "b"),
        ("not_refused", "all"),
        ("not_refused", "b"),
    }
    items = regressed_examples(decision, base, cand)
    assert len(items) == 40  # one per example, not one per (example, mode)
    assert all(i["failure_modes"] == ["format_pass", "not_refused"] for i in items)
    assert items[0]["changes"]["format_pass"] == {"baseline": 1.0, "candidate": 0.0}


def test_masked_inputs_are_left_out_of_the_gate_by_default() -> None:
    n = {"a": 40, "b": 40}
    base = run_record("base", examples(n, lambda s, i: {"not_refused": 1.0}))
    cand = run_record("cand", examples(n, lambda s, i: {"not_refused": 0.0 if s == "b" else 1.0}))
    for example in cand["examples"]:
        example["masked_input"] = example["stratum"] == "b"  # the only bad answers had masked inputs
    decision = compare_runs(base, cand, SentinelSettings())
    assert decision["regressions"] == [] and decision["excluded_masked"] == 40
    assert regressed_examples(decision, base, cand) == []
    assert any("masked inputs left out" in w for w in decision["warnings"])
    included = compare_runs(base, cand, SentinelSettings(gate_masked_inputs=True))
    assert ("not_refused", "b") in {(r["failure_mode"], r["stratum"]) for r in included["regressions"]}
    assert len(regressed_examples(included, base, cand)) == 40


def test_judge_losses_in_a_segment_below_the_agreement_floor_go_to_review_not_the_gate() -> None:
    n = {"a": 40, "b": 40}
    base = run_record("base", examples(n, lambda s, i: {"no_error": 1.0}))
    judged = {"baseline_run": "base", "flagged": False, "judged": 80, "flips": 0, "flip_share": 0.0}
    cand = run_record(
        "cand",
        examples(n, lambda s, i: {"no_error": 1.0, "judge_vs_baseline": -1.0 if s == "b" else 0.0}),
        head_to_head=judged,
    )
    gated = compare_runs(base, cand, SentinelSettings())
    assert ("judge_vs_baseline", "b") in {(r["failure_mode"], r["stratum"]) for r in gated["regressions"]}
    routed = compare_runs(base, cand, SentinelSettings(), review_segments=frozenset({"b"}))
    assert routed["regressions"] == []
    cell = next(
        c for c in routed["comparisons"] if c["stratum"] == "b" and c["failure_mode"] == "judge_vs_baseline"
    )
    assert cell["role"] == "review"
    items = regressed_examples(routed, base, cand)
    assert len(items) == 40 and all(i["routed"] == ["judge_vs_baseline"] for i in items)
    # A judge whose verdicts flip too often is not trusted with the gate at all.
    flagged = cast(RunRecord, {**cand, "head_to_head": {**judged, "flagged": True, "flips": 30}})
    decision = compare_runs(base, flagged, SentinelSettings())
    assert decision["regressions"] == [] and any("judge flips" in w for w in decision["warnings"])


# --------------------------------------------------------------------------------------------------
# End to end


def test_drift_production_is_gated_against_its_own_pinned_run(tmp_path: Path) -> None:
    pairs_path = tmp_path / "pairs.jsonl"
    write_pairs(pairs_path, {"general": 80, "billing": 30})
    cli = CliRunner()
    data = ["--config", str(tmp_path / "shadowtap.yaml")]
    (tmp_path / "shadowtap.yaml").write_text(
        f"sink:\n  data_dir: {tmp_path / 'data'}\nsentinel:\n  strata: [segment]\n  size: 70\n"
    )
    built = cli.invoke(sentinel, ["build", "--input", str(pairs_path), "--out", str(tmp_path / "set"), *data])
    assert built.exit_code == 0, built.output
    assert "needs about" in built.output and "use --size" in built.output  # 70 is far too few
    drifted = {"on": False}

    def production(route: str, body: dict[str, Any]) -> Reply:
        if drifted["on"] and last_user_text(body).startswith("billing question"):
            return Reply(text=REFUSAL)
        return default_policy(route, body)

    run_ids = []
    with serve_in_thread(SimulatedLLM("prod", production).app) as prod:
        for drift in (False, False, True):
            drifted["on"] = drift
            ran = cli.invoke(
                sentinel,
                [
                    "run",
                    "--set",
                    str(tmp_path / "set"),
                    "--target",
                    prod.base_url,
                    "--model",
                    "prod",
                    "--no-progress",
                    *data,
                ],
            )
            assert ran.exit_code == 0, ran.output
            run_ids.append(ran.output.split("run ")[-1].split()[0])
    pinned = cli.invoke(sentinel, ["pin", run_ids[0], *data])
    assert pinned.exit_code == 0 and f"pinned run {run_ids[0]}" in pinned.output, pinned.output
    gated = cli.invoke(sentinel, ["gate", "--baseline", "pinned", "--candidate", run_ids[1], *data])
    assert gated.exit_code == 0, gated.output  # the same production twice: no drift
    drift = cli.invoke(sentinel, ["gate", "--baseline", "pinned", "--candidate-model", "prod", *data])
    assert drift.exit_code == 1, drift.output
    assert "not_refused on billing" in drift.output
    previous = cli.invoke(sentinel, ["gate", "--baseline-model", "prod", "--candidate-model", "prod", *data])
    assert previous.exit_code == 1 and run_ids[1] in previous.output  # the run before the latest
    missing = cli.invoke(
        sentinel,
        ["gate", "--baseline", "pinned", "--baseline-model", "cand", "--candidate-model", "prod", *data],
    )
    assert missing.exit_code == 2 and "no pinned baseline for model 'cand'" in missing.output


async def test_a_reasoning_regression_is_caught_on_the_probe_set(tmp_path: Path) -> None:
    config = sentinel_config(tmp_path)
    built, created = build_probe_set(120, 5, sets_dir=config.sets_dir)
    again, _ = build_probe_set(120, 5, sets_dir=tmp_path / "elsewhere")
    assert created and again.version == built.version  # generated by construction from the seed
    assert build_probe_set(120, 6, sets_dir=tmp_path / "other")[0].version != built.version
    answers = {row["request"]["messages"][-1]["content"]: str(row["expected"]) for row in built.rows}
    kinds = {row["request"]["messages"][-1]["content"]: row["probe"] for row in built.rows}

    def reasoner(broken: str | None) -> Any:
        def policy(route: str, body: dict[str, Any]) -> Reply:
            question = last_user_text(body)
            answer = answers[question]
            if kinds[question] == broken:
                answer = str(int(answer) + 1)
            return Reply(text=f"Working it through step by step.\nAnswer: {answer}")

        return policy

    with (
        serve_in_thread(SimulatedLLM("good", reasoner(None)).app) as good,
        serve_in_thread(SimulatedLLM("bad", reasoner("arithmetic")).app) as bad,
    ):
        base = await run_set(built, config, Target(good.base_url, "prod"), progress=False)
        cand = await run_set(built, config, Target(bad.base_url, "cand"), progress=False)
    score = {r["stratum"]: r["score"] for r in base["results"] if r["failure_mode"] == "reasoning_correct"}
    assert score == {"all": 1.0, "arithmetic": 1.0, "if_then": 1.0, "ordering": 1.0, "syllogism": 1.0}
    assert not any(r["failure_mode"] == "reference_match" for r in base["results"])
    decision = compare_runs(base, cand, config.sentinel)
    regressed = {(r["failure_mode"], r["stratum"]) for r in decision["regressions"]}
    assert regressed == {("reasoning_correct", "all"), ("reasoning_correct", "arithmetic")}
    overall = next(
        c
        for c in decision["comparisons"]
        if c["failure_mode"] == "reasoning_correct" and c["stratum"] == "all"
    )
    assert overall["drop_points"] == pytest.approx(25.0) and overall["threshold_points"] == 3.0


@pytest.mark.unit
def test_probe_answers_are_right_by_construction() -> None:
    rows = probe_rows(80, 11)
    assert len(rows) == 80 and {r["stratum"] for r in rows} == {
        "if_then",
        "syllogism",
        "arithmetic",
        "ordering",
    }
    for row in rows:
        question = row["request"]["messages"][-1]["content"]
        if row["probe"] == "arithmetic":
            numbers = [int(w) for w in question.replace(".", " ").split() if w.isdigit()]
            start, boxes, per_box, given, friends = numbers
            assert (start + boxes * per_box - given) / friends == int(str(row["expected"]))
        if row["probe"] == "ordering":
            assert str(row["expected"]) in question
    assert probe_rows(80, 11) == rows


def test_build_flags_examples_whose_inputs_were_masked(tmp_path: Path) -> None:
    pairs = []
    for i in range(40):
        pair = make_pair(
            pair_id=f"p{i:02d}",
            request={
                "model": "m",
                "messages": [{"role": "user", "content": f"general question {i} about w{i:03d}"}],
            },
            tags={"segment": "general"},
            primary=make_side(f"answer {i}", model="prod"),
            candidate=make_side(f"answer {i}", model="cand"),
        )
        pair["masked"] = {"request": 1 if i % 4 == 0 else 0, "primary": 0, "candidate": 0}
        pairs.append(pair)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    config = sentinel_config(tmp_path, size=40, min_per_cell=10)
    result = build_set(
        iter_jsonl(path),
        config.sentinel,
        source={"kind": "jsonl"},
        length_bounds=[500],
        sets_dir=config.sets_dir,
    )
    assert result.masked_inputs == 10
    flagged = {row["id"] for row in result.set.rows if row.get("masked_input")}
    assert flagged == {f"p{i:02d}" for i in range(0, 40, 4)}
    with serve_in_thread(SimulatedLLM("prod").app) as target:
        record = asyncio.run(run_set(result.set, config, Target(target.base_url, "prod"), progress=False))
    assert sum(1 for e in record["examples"] if e.get("masked_input")) == 10


def test_the_cli_gate_shows_the_rule_and_warns_on_a_small_set(tmp_path: Path) -> None:
    pairs_path = tmp_path / "pairs.jsonl"
    write_pairs(pairs_path, {"general": 80, "billing": 30})
    cli = CliRunner()
    data = ["--config", str(tmp_path / "shadowtap.yaml")]
    (tmp_path / "shadowtap.yaml").write_text(
        f"sink:\n  data_dir: {tmp_path / 'data'}\nsentinel:\n  strata: [segment]\n  size: 70\n"
    )
    assert (
        cli.invoke(
            sentinel, ["build", "--input", str(pairs_path), "--out", str(tmp_path / "set"), *data]
        ).exit_code
        == 0
    )
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
    gated = cli.invoke(
        sentinel, ["gate", "--baseline-model", "prod-v1", "--candidate-model", "cand-v2", *data]
    )
    assert gated.exit_code == 1, gated.output
    assert "Holm" in gated.output and "p (Holm)" in gated.output
    assert "a pass here is weak evidence" in gated.output


def test_a_judge_that_flips_too_often_is_flagged_and_sent_to_review(tmp_path: Path) -> None:
    pairs_path = tmp_path / "pairs.jsonl"
    write_pairs(pairs_path, {"general": 40})
    cli = CliRunner()

    def biased_judge(route: str, body: dict[str, Any]) -> Reply:
        return Reply(text=json.dumps({"winner": "A", "reason": "always the first"}))  # every verdict flips

    def reworded(route: str, body: dict[str, Any]) -> Reply:
        return Reply(text=f"In other words: {last_user_text(body)[:20]}")

    with (
        serve_in_thread(SimulatedLLM("prod").app) as prod,
        serve_in_thread(SimulatedLLM("cand", reworded).app) as cand,
        serve_in_thread(SimulatedLLM("judge-x", biased_judge).app) as judge,
    ):
        (tmp_path / "shadowtap.yaml").write_text(
            f"sink:\n  data_dir: {tmp_path / 'data'}\nsentinel:\n  strata: [segment]\n  size: 40\n"
            f"  judge: {{base_url: '{judge.base_url}', model: judge-x, backoff_base_s: 0}}\n"
        )
        data = ["--config", str(tmp_path / "shadowtap.yaml")]
        assert (
            cli.invoke(
                sentinel, ["build", "--input", str(pairs_path), "--out", str(tmp_path / "set"), *data]
            ).exit_code
            == 0
        )
        common = ["run", "--set", str(tmp_path / "set"), "--no-progress", *data]
        first = cli.invoke(sentinel, [*common, "--target", prod.base_url, "--model", "prod"])
        assert first.exit_code == 0, first.output
        assert cli.invoke(sentinel, ["pin", "latest", "--model", "prod", *data]).exit_code == 0
        second = cli.invoke(
            sentinel, [*common, "--target", cand.base_url, "--model", "cand", "--baseline", "pinned:prod"]
        )
        assert second.exit_code == 0, second.output
    assert "flips 40 of 40 (100.0%, allowed 20%) FLAGGED" in second.output
    assert "uncalibrated" in second.output
    gated = cli.invoke(
        sentinel,
        ["gate", "--baseline", "pinned", "--baseline-model", "prod", "--candidate-model", "cand", *data],
    )
    assert gated.exit_code == 0, gated.output  # nothing else changed; the judge's verdicts are not trusted
    assert "judge flips: 40 of 40" in gated.output and "to human review" in gated.output


@pytest.mark.unit
def test_new_sentinel_keys_are_validated_by_name() -> None:
    from shadowtap.config import load_settings
    from shadowtap.errors import ConfigError

    with pytest.raises(ConfigError, match="sentinel.judge_agreement_floor"):
        load_settings(overrides={"sentinel": {"judge_agreement_floor": 2}}, environ={})
    with pytest.raises(ConfigError, match="sentinel.min_gating_cell"):
        load_settings(overrides={"sentinel": {"min_gating_cell": 0}}, environ={})


def test_the_gate_shows_the_baseline_models_own_noise_floor_beside_each_drop(tmp_path: Path) -> None:
    pairs_path = tmp_path / "pairs.jsonl"
    write_pairs(pairs_path, {"general": 40, "billing": 40})
    cli = CliRunner()
    data = ["--config", str(tmp_path / "shadowtap.yaml")]
    (tmp_path / "shadowtap.yaml").write_text(
        f"sink:\n  data_dir: {tmp_path / 'data'}\nsentinel:\n  strata: [segment]\n  size: 80\n"
    )
    built = cli.invoke(sentinel, ["build", "--input", str(pairs_path), "--out", str(tmp_path / "set"), *data])
    assert built.exit_code == 0, built.output
    with (
        serve_in_thread(SimulatedLLM("good").app) as good,
        serve_in_thread(SimulatedLLM("bad", refuses_segment("billing")).app) as bad,
    ):
        # The production model twice (its noise floor), then the candidate.
        for url, model in ((good.base_url, "prod-v1"), (good.base_url, "prod-v1"), (bad.base_url, "cand-v2")):
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
    out = tmp_path / "decision.json"
    gated = cli.invoke(
        sentinel,
        ["gate", "--baseline-model", "prod-v1", "--candidate-model", "cand-v2", "--output", str(out), *data],
    )

    assert gated.exit_code == 1, gated.output  # the candidate's billing refusals still block
    assert "A/A drop" in gated.output and "the noise floor" in gated.output
    decision = json.loads(out.read_text())
    noise = decision["noise_floor"]
    assert noise["not_refused|all"] == 0.0  # the scripted production model answers alike both times
    [refusals] = [
        c for c in decision["comparisons"] if (c["failure_mode"], c["stratum"]) == ("not_refused", "all")
    ]
    assert refusals["drop_points"] > 10  # the candidate's drop stands far above its noise floor
