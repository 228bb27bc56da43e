"""`shadowtap report` on production signals: retry and thumbs-down rates per segment for the primary, and on
the pairs users disliked, the candidate's judged win rate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from shadowtap.report import build_report, print_report
from shadowtap.report.view import build_view
from shadowtap.testing.pairs import make_pair

pytestmark = pytest.mark.unit


def feedback(
    signal: str, *, pair_id: str | None = None, response_id: str | None = None, segment: str | None = None
) -> dict[str, Any]:
    return {
        "schema": "shadowtap.feedback/v1",
        "id": f"fb-{signal}-{pair_id or response_id}",
        "ts": "2026-01-01T00:00:00.000Z",
        "response_id": response_id,
        "pair_id": pair_id,
        "signal": signal,
        "value": None,
        "comment": None,
        "segment": segment,
        "source": "proxy" if signal == "retry" else "client",
    }


def judge(pair_id: str, outcome: str) -> dict[str, Any]:
    return {
        "schema": "shadowtap.score/v1",
        "pair_id": pair_id,
        "scorer": "judge",
        "side": "pair",
        "outcome": outcome,
        "value": None,
        "detail": {},
    }


def write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_report_shows_retry_and_thumbs_down_rates_and_the_candidate_on_disliked_pairs(
    tmp_path: Path,
) -> None:
    pairs = [make_pair(pair_id=f"b{n}", tags={"segment": "billing"}) for n in range(10)]
    pairs += [make_pair(pair_id=f"s{n}", tags={"segment": "support"}) for n in range(10)]
    for pair in pairs:
        pair["primary"]["response_id"] = f"chatcmpl-{pair['id']}"
    write(tmp_path / "pairs.jsonl", pairs)
    # billing: 4 disliked (3 judged: candidate won 2), 2 retried; support: 1 retried; 2 on answers not mirrored
    write(
        tmp_path / "scores.jsonl",
        [
            judge("b0", "candidate_win"),
            judge("b1", "candidate_win"),
            judge("b2", "primary_win"),
            judge("s5", "tie"),
        ],
    )
    write(
        tmp_path / "feedback.jsonl",
        [feedback("thumbs_down", response_id=f"chatcmpl-b{n}") for n in range(3)]
        + [
            feedback("thumbs_down", pair_id="b3"),
            feedback("retry", pair_id="b0"),
            feedback("retry", response_id="chatcmpl-b7"),
        ]
        + [feedback("retry", pair_id="s1"), feedback("thumbs_up", pair_id="s2")]
        + [
            feedback("thumbs_down", response_id="chatcmpl-gone", segment="billing"),
            feedback("escalated", response_id="x"),
        ],
    )

    report = build_report(tmp_path)
    view = build_view(report)

    [table] = [t for t in view.tables if t.key == "signals"]
    rows = {row.cells[0].text: [c.text for c in row.cells[1:]] for row in table.rows}
    assert rows["billing"][:3] == ["2/10  20% [6–51]", "4/10  40% [17–69]", "2/3  67% [21–94]"]
    assert "(1 on answers not mirrored)" in rows["billing"][3]
    assert rows["support"][:3] == ["1/10  10% [2–40]", "0/10  0% [0–28]", "–"]
    assert rows["all"][1] == "4/20  20% [8–42]"
    [line] = [s.sentence for s in view.summary if "users disliked" in s.sentence]
    assert "on the pairs users disliked, the judge preferred the candidate in 2/3  67%" in line
    console = Console(record=True, width=200)
    print_report(report, console)
    assert "candidate wins where disliked" in console.export_text()


def test_without_feedback_the_report_has_no_signals_section(tmp_path: Path) -> None:
    write(tmp_path / "pairs.jsonl", [make_pair()])
    view = build_view(build_report(tmp_path))
    assert "signals" not in [t.key for t in view.tables]
    assert not [s for s in view.summary if "retried" in s.sentence]
