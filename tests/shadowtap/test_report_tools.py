"""The report on tool calls: a candidate whose calls break the offered tool's schema is a finding with its
rate, 95% interval, kinds of failure and an example; equal failure rates are not; a few are a note."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from shadowtap.records import PairRecord, ScoreRecord
from shadowtap.report import build_report, print_report, write_html
from shadowtap.report.numbers import Rate
from shadowtap.report.view import build_view
from shadowtap.scorers.tools import ToolsScorer
from shadowtap.testing.pairs import make_output, make_pair, make_side

pytestmark = pytest.mark.unit

SLOT = {"type": "string", "enum": ["morning", "afternoon", "evening"]}
BOOK = {
    "type": "function",
    "function": {
        "name": "book_visit",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"day": {"type": "string"}, "slot": SLOT, "sms": {"type": "boolean"}},
            "required": ["day", "slot", "sms"],
        },
    },
}
VALID = json.dumps({"day": "Tuesday", "slot": "morning", "sms": True})
WRONG_ENUM = json.dumps({"day": "Tuesday", "slot": "am", "sms": True})
NOT_JSON = "{'day': 'Tuesday', 'slot': 'morning', 'sms': True}"


def booking(n: int, primary: str, candidate: str) -> PairRecord:
    """A booking request that offers `book_visit`, each side answering with one call."""

    def side(arguments: str) -> Any:
        return make_side(None, outputs=[make_output("", tool_calls=[("book_visit", arguments)])])

    request = {"model": "m", "messages": [{"role": "user", "content": f"Book visit {n}"}], "tools": [BOOK]}
    return make_pair(
        request=request,
        tags={"segment": "bookings"},
        pair_id=f"booking-{n}",
        primary=side(primary),
        candidate=side(candidate),
    )


def write_run(data_dir: Path, pairs: list[PairRecord]) -> None:
    """The pairs and what the tools scorer says of them, as the embedded default writes them."""
    scorer = ToolsScorer()
    scores: list[ScoreRecord] = [
        score.to_record(pair) for pair in pairs for score in asyncio.run(scorer.score(pair))
    ]
    (data_dir / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (data_dir / "scores.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scores))


def run(candidate_answers: list[str], primary_answers: list[str] | None = None) -> list[PairRecord]:
    primary_answers = primary_answers or [VALID] * len(candidate_answers)
    return [
        booking(n, primary, candidate)
        for n, (primary, candidate) in enumerate(zip(primary_answers, candidate_answers, strict=True))
    ]


def test_a_candidate_breaking_the_tool_schema_is_named_with_rate_interval_kinds_and_an_example(
    tmp_path: Path,
) -> None:
    write_run(tmp_path, run([WRONG_ENUM] * 10 + [NOT_JSON] * 2 + [VALID] * 28))

    report = build_report(tmp_path)

    assert report.verdicts[("bookings", "tools")] == "worse"
    (finding,) = [f for f in report.findings if f.kind == "tools"]
    low, high = Rate(12, 40).interval or (0.0, 0.0)
    assert finding.regression and finding.segment == "bookings"
    assert finding.sentence.startswith(
        "Tool calls: 30% of the candidate's tool-calling answers on bookings were invalid for the offered "
        f"tools (12 of 40, 95% interval {low * 100:.0f}–{high * 100:.0f}%: 10 schema violations, 2 bad JSON; "
        "primary 0%); e.g. book_visit: slot: 'am' is not one of ['morning', 'afternoon', 'evening']"
    )
    view = build_view(report)
    (table,) = [t for t in view.tables if t.key == "tools"]
    (row,) = [r for r in table.rows if r.cells[0].text == "bookings"]
    assert [c.text for c in row.cells] == [
        "bookings",
        Rate(40, 40).text(),
        Rate(28, 40).text(),
        "10 schema violations, 2 bad JSON",
        "12/40: 12 different arguments",
        "REGRESSION",
    ]
    assert "Valid tool-call rate" in [chart.title for chart in view.rate_charts]


def test_the_tool_call_finding_is_in_the_printed_and_the_html_report(tmp_path: Path) -> None:
    write_run(tmp_path, run([WRONG_ENUM] * 12 + [VALID] * 28))
    console = Console(width=400, record=True)

    report = build_report(tmp_path)
    print_report(report, console)
    page = write_html(report, tmp_path / "report.html").read_text()

    printed = console.export_text()
    assert "• Tool calls: 30% of the candidate's tool-calling answers on bookings were invalid" in printed
    assert "Tool calls: answers whose calls fit the offered tools" in printed
    assert "Tool calls: 30% of the candidate&#x27;s tool-calling answers on bookings" in page
    assert "Valid tool-call rate" in page


def test_tool_calls_as_invalid_on_both_sides_are_not_a_regression(tmp_path: Path) -> None:
    answers = [WRONG_ENUM] * 10 + [VALID] * 30
    write_run(tmp_path, run(answers, primary_answers=answers))

    report = build_report(tmp_path)

    assert ("bookings", "tools") not in report.verdicts
    assert not [f for f in report.findings if f.kind == "tools" or "Tool calls" in f.sentence]
    assert "bookings" in report.clean_segments


def test_a_few_invalid_calls_are_a_note_until_the_intervals_part(tmp_path: Path) -> None:
    write_run(tmp_path, run([WRONG_ENUM] * 4 + [VALID] * 36))

    report = build_report(tmp_path)

    assert ("bookings", "tools") not in report.verdicts
    (note,) = [f for f in report.findings if f.kind == "watch"]
    assert not note.regression
    assert note.sentence.startswith("Tool calls, not yet clear: 10% of the candidate's tool-calling answers")
    assert note.sentence.endswith("the 95% intervals still overlap, so more traffic is needed to tell.")


def test_a_run_without_tool_calls_shows_no_tool_call_table(tmp_path: Path) -> None:
    pairs = [make_pair(tags={"segment": "billing"}, pair_id=f"plain-{n}") for n in range(5)]
    write_run(tmp_path, pairs)

    view = build_view(build_report(tmp_path))

    assert "tools" not in [t.key for t in view.tables]
    assert "Valid tool-call rate" not in [chart.title for chart in view.rate_charts]


def test_noise_floor_pairs_are_shown_beside_the_candidate_and_never_counted_as_the_candidates(
    tmp_path: Path,
) -> None:
    pairs = run([WRONG_ENUM] * 10 + [VALID] * 30)
    # The primary against its own second answer: 1 of 20 second answers breaks the schema too.
    noise = [booking(100 + n, VALID, WRONG_ENUM if n == 0 else VALID) for n in range(20)]
    for pair in noise:
        pair["tags"]["comparison"] = "noise_floor"
    write_run(tmp_path, pairs + noise)

    report = build_report(tmp_path)

    assert report.overall.pairs == 40  # the candidate's figures hold the candidate's pairs only
    assert report.overall.tools_rate("candidate") == Rate(30, 40)
    assert report.noise_floor is not None and report.noise_floor.pairs == 20
    assert report.noise_floor.tools_rate("candidate") == Rate(19, 20)
    [line] = [s.sentence for s in build_view(report).summary if s.sentence.startswith("Noise floor")]
    assert "on 20 pairs" in line
    assert "invalid tool calls +5.0 (candidate +25.0)" in line
