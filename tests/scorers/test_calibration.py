"""Judge calibration: `shadowtap judge calibrate` runs the configured judge (a scripted endpoint on
loopback, through the OpenAI SDK) on human-labelled pairs and records its agreement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from shadowtap.cli import main
from shadowtap.labels import Label, append_label
from shadowtap.records import PairRecord
from shadowtap.scorers.calibration import (
    calibration_status,
    cohen_kappa,
    family_warnings,
    load_calibration,
    low_agreement_segments,
    model_family,
)
from shadowtap.testing import Reply, SimulatedLLM, make_pair, make_side, serve_in_thread

# (segment, human verdict, primary answer, candidate answer)
LABELLED = [
    ("billing", "candidate", "fine answer one", "GOOD answer one"),
    ("billing", "candidate", "fine answer two", "GOOD answer two"),
    ("billing", "candidate", "fine answer six", "GOOD answer six"),
    ("billing", "primary", "GOOD answer ten", "fine answer ten"),
    ("billing", "primary", "GOOD answer 11.", "fine answer 11."),
    ("billing", "tie", "the same answer", "the same answer"),
    # tech: the judge prefers the longer of two answers the human found equal, and flips once.
    ("tech", "tie", "fine answer", "fine answer with many more words"),
    ("tech", "both_bad", "poor answer", "poor answer, only longer"),
    ("tech", "candidate", "fine reply 1", "GOOD reply 1"),
    ("tech", "candidate", "fine reply 2", "GOOD reply 2"),
    ("tech", "primary", "GOOD reply 3", "fine reply 3"),
    ("tech", "candidate", "FLIP reply 4", "FLIP reply 5"),
]


def scripted_judge(route: str, body: dict[str, Any]) -> Reply:
    """GOOD wins; FLIP always picks A (position bias); otherwise the longer answer; equal: a tie."""
    prompt = body["messages"][-1]["content"]
    a = prompt.split("[The Start of Answer A]")[1].split("[The End of Answer A]")[0].strip()
    b = prompt.split("[The Start of Answer B]")[1].split("[The End of Answer B]")[0].strip()
    if "FLIP" in a + b:
        winner = "A"
    elif ("GOOD" in a) != ("GOOD" in b):
        winner = "A" if "GOOD" in a else "B"
    elif len(a) != len(b):
        winner = "A" if len(a) > len(b) else "B"
    else:
        winner = "tie"
    return Reply(text=json.dumps({"winner": winner, "reason": "scripted"}))


def write_inputs(tmp: Path) -> tuple[Path, Path]:
    pairs: list[PairRecord] = []
    labels = tmp / "labels.jsonl"
    for i, (segment, better, primary, candidate) in enumerate(LABELLED):
        pair_id = f"pair-{i:02d}"
        pairs.append(
            make_pair(
                pair_id=pair_id,
                request={"model": "m", "messages": [{"role": "user", "content": f"question {i}"}]},
                tags={"segment": segment},
                primary=make_side(primary, model="llama-3-70b"),
                candidate=make_side(candidate, model="gpt-4o-mini"),
            )
        )
        label: Label = {
            "schema": "shadowtap.label/v1",
            "pair_id": pair_id,
            "reviewer": "scripted-reviewer",
            "ts": "2026-01-05T10:00:00Z",
            "shown": "primary",
            "better": better,  # type: ignore[typeddict-item]  # a verdict from the list above
            "refused": {"primary": False, "candidate": False},
            "format_ok": {"primary": None, "candidate": None},
            "note": None,
            "reason": "calibration",
        }
        append_label(labels, label)
    pairs_path = tmp / "pairs.jsonl"
    pairs_path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return labels, pairs_path


def test_calibrate_reports_agreement_kappa_flips_length_bias_and_segments(tmp_path: Path) -> None:
    labels, pairs_path = write_inputs(tmp_path)
    judge = SimulatedLLM("gpt-4o-judge", scripted_judge)
    with serve_in_thread(judge.app) as endpoint:
        config = tmp_path / "shadowtap.yaml"
        config.write_text(
            f"sink:\n  data_dir: {tmp_path / 'data'}\n"
            f"sentinel:\n  judge: {{base_url: '{endpoint.base_url}', model: gpt-4o-judge, backoff_base_s: 0}}\n"
        )
        result = CliRunner().invoke(
            main,
            [
                "judge",
                "calibrate",
                "--labels",
                str(labels),
                "--pairs",
                str(pairs_path),
                "--config",
                str(config),
            ],
        )
    assert result.exit_code == 0, result.output
    # one identical pair is a tie without a call; the other 11 in both orders
    assert len(judge.received) == 2 * 11
    record = load_calibration(tmp_path / "data" / "judge-calibration.json")
    assert record is not None
    assert record["judged"] == 12 and record["labels"] == 12
    # 11 verdicts did not flip; 9 agree (the two longer-answer ties do not).
    assert record["agreement"]["n"] == 11 and record["agreement"]["value"] == pytest.approx(9 / 11)
    assert record["agreement"]["lower"] == pytest.approx(0.5230, abs=1e-3)
    assert record["confusion"]["tie"] == {"primary": 0, "candidate": 2, "tie": 1}
    assert (
        record["confusion"]["candidate"]["candidate"] == 5 and record["confusion"]["primary"]["primary"] == 3
    )
    # kappa: po 9/11; marginals human (3, 5, 3), judge (3, 7, 1): pe 47/121; (99 - 47) / (121 - 47).
    assert record["kappa"]["value"] == pytest.approx(52 / 74)
    assert record["flip_rate"]["value"] == pytest.approx(1 / 12) and record["flip_rate"]["n"] == 12
    # Both unequal-length pairs: the judge picks the longer (+1), the human neither (0).
    assert record["length_bias"]["value"] == pytest.approx(1.0) and record["length_bias"]["n"] == 2
    assert record["length_bias"]["lower"] > 0
    assert record["segments"]["billing"]["value"] == 1.0
    assert record["segments"]["tech"]["value"] == pytest.approx(3 / 5)
    assert record["below_floor"] == ["tech"]
    assert "BELOW FLOOR" in result.output and "Cohen's kappa" in result.output
    assert "of the openai family, as the candidate (gpt-4o-mini) is" in result.output

    status = calibration_status(record, "gpt-4o-judge", record["prompt_template_hash"])
    assert status == "calibrated on 11 labels, agreement 0.82 [0.52, 0.95]"
    assert calibration_status(record, "another-judge", None).startswith("uncalibrated")
    assert calibration_status(None, "gpt-4o-judge", None) == "uncalibrated"
    assert low_agreement_segments(record, "gpt-4o-judge", record["prompt_template_hash"], 0.7) == {"tech"}


def test_a_bad_labels_file_is_named_with_its_line(tmp_path: Path) -> None:
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"pair_id": "x"}\n')
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("")
    config = tmp_path / "shadowtap.yaml"
    config.write_text("sentinel:\n  judge: {base_url: 'http://127.0.0.1:9/v1', model: j}\n")
    result = CliRunner().invoke(
        main, ["judge", "calibrate", "--labels", str(labels), "--pairs", str(pairs), "--config", str(config)]
    )
    assert result.exit_code == 1 and f"{labels}:1" in result.output


@pytest.mark.unit
def test_cohens_kappa_matches_the_textbook_example() -> None:
    # 50 items, two raters: yes/yes 20, yes/no 5, no/yes 10, no/no 15: po 0.7, pe 0.5, kappa 0.4.
    confusion = {
        "candidate": {"candidate": 20, "primary": 5, "tie": 0},
        "primary": {"candidate": 10, "primary": 15, "tie": 0},
        "tie": {"candidate": 0, "primary": 0, "tie": 0},
    }
    kappa = cohen_kappa(confusion)
    assert kappa["value"] == pytest.approx(0.4) and kappa["n"] == 50
    # Cohen's large-sample se: sqrt(po (1 - po) / (n (1 - pe)^2)) = sqrt(0.21 / 12.5).
    assert kappa["upper"] == pytest.approx(0.4 + 1.959964 * (0.21 / 12.5) ** 0.5)


@pytest.mark.unit
def test_model_families_and_the_own_family_warning() -> None:
    assert model_family("gpt-4o-mini") == "openai"
    assert model_family("meta-llama/Llama-3.1-8B-Instruct") == "meta"
    assert model_family("Qwen/Qwen2.5-7B") == "qwen"
    assert model_family("acme-7b") is None
    assert model_family("acme-7b", {"acme": "acme"}) == "acme"
    warnings = family_warnings("claude-3-5-sonnet", {"baseline": "claude-3-haiku", "candidate": "qwen2-7b"})
    assert len(warnings) == 1 and "baseline (claude-3-haiku)" in warnings[0]
    assert family_warnings("judge-x", {"baseline": "gpt-4o"}) == []


def test_the_report_shows_the_judges_calibration_beside_its_name(tmp_path: Path) -> None:
    from shadowtap.report import build_report
    from shadowtap.report.view import headline
    from shadowtap.scorers.calibration import LabelledVerdict, summarise_calibration

    labels, pairs_path = write_inputs(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "pairs.jsonl").write_text(pairs_path.read_text())
    score = {
        "schema": "shadowtap.score/v1",
        "pair_id": "pair-00",
        "scorer": "judge",
        "side": "pair",
        "outcome": "candidate_win",
        "value": 1.0,
        "detail": {"judge_model": "gpt-4o-judge"},
    }
    (data / "scores.jsonl").write_text(json.dumps(score) + "\n")
    assert "judge gpt-4o-judge (uncalibrated)" in headline(build_report(data))
    verdicts = [LabelledVerdict("candidate", "candidate", "billing", 1.0)] * 8 + [
        LabelledVerdict("tie", "candidate", "billing", 1.0)
    ] * 2
    record = summarise_calibration(
        verdicts, judge_model="gpt-4o-judge", prompt_template_hash="p", labels_file=str(labels), floor=0.7
    )
    (data / "judge-calibration.json").write_text(json.dumps(record))
    assert "judge gpt-4o-judge (calibrated on 10 labels, agreement 0.80 [0.49, 0.94])" in headline(
        build_report(data)
    )
