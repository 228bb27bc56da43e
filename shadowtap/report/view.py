"""The report as a reader sees it, neutral of how it is shown: the headline, the "What changed" lines
with their tone, the tables (`tables`: rows of cells, verdicts as values), where the data is, and the numbers
behind the plots. `text` prints it with rich, `html` writes it as a page; neither decides anything.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from shadowtap.records import SIDES, SideName
from shadowtap.report.model import Report
from shadowtap.report.numbers import Rate
from shadowtap.report.segments import Mode, SegmentStats
from shadowtap.report.tables import Cell, RateCell, Row, Table, TextCell, VerdictCell, tables

__all__ = [
    "Cell",
    "Distribution",
    "JudgeShares",
    "RateCell",
    "RateChart",
    "ReportView",
    "Row",
    "SummaryLine",
    "Table",
    "TextCell",
    "Tone",
    "VerdictCell",
    "build_view",
]

# How a "What changed" line reads: a regression on a segment, a regression overall (latency), something
# to be careful about (not yet clear, a note, no data), good news, and the all-clear.
Tone = Literal["regression", "overall_regression", "caution", "good", "all_clear"]

JUDGE_OUTCOMES = ("candidate_win", "tie", "primary_win")


@dataclass(frozen=True, slots=True)
class SummaryLine:
    sentence: str
    tone: Tone


@dataclass(frozen=True, slots=True)
class JudgeShares:
    """The share of one segment's judged pairs with each outcome (candidate_win, tie, primary_win)."""

    segment: str
    shares: dict[str, float]


@dataclass(frozen=True, slots=True)
class RateChart:
    """One rate per side and segment, for a bar chart with interval whiskers."""

    title: str
    segments: tuple[str, ...]
    rates: dict[SideName, tuple[Rate, ...]]


@dataclass(frozen=True, slots=True)
class Distribution:
    """The values of one latency measure per side, over all segments."""

    label: str
    values: dict[SideName, list[float]]


@dataclass(frozen=True, slots=True)
class ReportView:
    data_dir: str
    simulated: bool
    # `200 pairs · primary m · candidate n · judge j · 2025-03-10 19:24:57 → 19:25:06 UTC`
    headline: str
    summary: tuple[SummaryLine, ...]
    # Only the tables that have rows, in the order they are shown.
    tables: tuple[Table, ...]
    where: tuple[str, ...]
    judge_shares: tuple[JudgeShares, ...]
    rate_charts: tuple[RateChart, ...]
    distributions: tuple[Distribution, ...]


# --------------------------------------------------------------------------------------------------
# Text pieces


def span_text(report: Report) -> str:
    """` · 2025-03-10 19:24:57 → 19:25:06 UTC`, or nothing without timestamps."""
    if not report.first_ts or not report.last_ts:
        return ""
    first, last = (
        t.replace("T", " ").removesuffix("Z").split(".")[0] for t in (report.first_ts, report.last_ts)
    )
    if first[:10] == last[:10]:
        last = last[11:]
    zone = " UTC" if report.last_ts.endswith("Z") else ""
    return f" · {first} → {last}{zone}"


def models_text(models: Counter[str]) -> str:
    return ", ".join(models) if models else "?"


def judge_calibration_text(report: Report) -> str:
    """Beside the judge's name: its calibration against human labels (`shadowtap judge calibrate` writes
    DATA_DIR/judge-calibration.json), or "uncalibrated"; nothing when nothing was judged."""
    from shadowtap.scorers.calibration import calibration_status, load_calibration

    if not report.models["judge"]:
        return ""
    judge = report.models["judge"].most_common(1)[0][0]
    status = calibration_status(load_calibration(report.data_dir / "judge-calibration.json"), judge, None)
    return f" ({status})"


def headline(report: Report) -> str:
    return (
        f"{report.lines['pairs']} pairs · primary {models_text(report.models['primary'])} · candidate "
        f"{models_text(report.models['candidate'])} · judge {models_text(report.models['judge'])}"
        + judge_calibration_text(report)
        + span_text(report)
    )


def summary_lines(report: Report) -> list[SummaryLine]:
    """The "What changed" lines, most important first."""
    if not report.lines["pairs"]:
        return [SummaryLine("No pair records yet: nothing to compare.", "caution")]
    if not report.lines["scores"]:
        return [
            SummaryLine(
                f"No score records yet: score the pairs with `shadowtap score --input "
                f"{report.paths['pairs']} --output {report.paths['scores']}`.",
                "caution",
            )
        ]
    findings = report.findings
    lines = [SummaryLine(f.sentence, "regression") for f in findings if f.regression and f.segment]
    lines += [SummaryLine(f.sentence, "caution") for f in findings if f.kind == "watch"]
    lines += [
        SummaryLine(f.sentence, "overall_regression") for f in findings if f.regression and not f.segment
    ]
    lines += [SummaryLine(f.sentence, "good") for f in findings if f.kind == "improvement"]
    lines += [
        SummaryLine(f.sentence, "caution")
        for f in findings
        if not f.regression and f.kind not in ("watch", "improvement")
    ]
    if not any(f.regression and f.segment for f in findings):
        lines.insert(
            0,
            SummaryLine(
                "No clear regression: on every segment and failure mode the candidate is within the "
                "primary's 95% interval.",
                "all_clear",
            ),
        )
    elif report.clean_segments:
        lines.append(SummaryLine(f"No regression found in: {', '.join(report.clean_segments)}.", "good"))
    return lines


def signal_lines(report: Report) -> list[SummaryLine]:
    """What users' own signals say: the question a team asks before cutover."""
    stats = report.feedback.get("all")
    if stats is None:
        return []
    disliked = stats.candidate_wins_when_disliked
    retried, down = stats.retry_rate, stats.thumbs_down_rate
    said = f"Users retried {retried.text()} and gave a thumbs-down to {down.text()} of the primary's mirrored answers"
    if disliked.n:
        said += f"; on the pairs users disliked, the judge preferred the candidate in {disliked.text()}."
    elif stats.disliked:
        said += "; none of the pairs users disliked was judged (enable the judge scorer to see the candidate on them)."
    else:
        said += "."
    return [SummaryLine(said, "caution")]


_NOISE_MODES: tuple[tuple[Mode, str], ...] = (
    ("format", "format failures"),
    ("refusal", "refusals"),
    ("tools", "invalid tool calls"),
    ("judge", "judge: share of pairs lost"),
)


def noise_floor_lines(report: Report) -> list[SummaryLine]:
    """Each failure mode's difference on the noise-floor pairs (the primary against its own second answer)
    beside the candidate's: a difference the candidate shows no more than the primary shows against
    itself is what sampling alone does."""
    noise = report.noise_floor
    if noise is None:
        return []
    parts = []
    for mode, name in _NOISE_MODES:
        candidate, primary = report.overall.failure_rates(mode)
        again, first = noise.failure_rates(mode)
        if not again.n:
            continue
        parts.append(f"{name} {_points(again, first)} (candidate {_points(candidate, primary)})")
    if not parts:
        return []
    return [
        SummaryLine(
            f"Noise floor, the primary against its own second answer on {noise.pairs} pairs: "
            + "; ".join(parts)
            + " — differences in points, second answer (or candidate) minus the primary's.",
            "caution",
        )
    ]


def _points(a: Rate, b: Rate) -> str:
    if a.value is None or b.value is None:
        return "–"
    return f"{(a.value - b.value) * 100:+.1f}"


def where_lines(report: Report) -> list[str]:
    reasons = ", ".join(f"{r} {n}" for r, n in report.review_reasons.most_common())
    lines = [
        f"pair records:  {report.paths['pairs']} ({report.lines['pairs']})",
        f"score records: {report.paths['scores']} ({report.lines['scores']})",
        f"review queue:  {report.paths['review']} ({report.lines['review']} items"
        + (f": {reasons})" if reasons else ")"),
    ]
    if report.invalid_lines:
        lines.append(f"lines skipped (not JSON objects): {report.invalid_lines}")
    return lines


# --------------------------------------------------------------------------------------------------
# Plots


def _judge_shares(report: Report) -> tuple[JudgeShares, ...]:
    return tuple(
        JudgeShares(s.segment, {outcome: s.judge[outcome] / s.judged for outcome in JUDGE_OUTCOMES})
        for s in report.segments
        if s.judged
    )


def _rate_chart(report: Report, title: str, rate: Callable[[SegmentStats, str], Rate]) -> RateChart | None:
    shown = [s for s in report.segments if rate(s, "primary").n or rate(s, "candidate").n]
    if not shown:
        return None
    rates = {side: tuple(rate(s, side) for s in shown) for side in SIDES}
    return RateChart(title, tuple(s.segment for s in shown), rates)


def _rate_charts(report: Report) -> tuple[RateChart, ...]:
    charts = (
        _rate_chart(report, "Refusal rate", SegmentStats.refusal_rate),
        _rate_chart(report, "Format pass rate", SegmentStats.format_rate),
        _rate_chart(report, "Valid tool-call rate", SegmentStats.tools_rate),
    )
    return tuple(chart for chart in charts if chart is not None)


def _distributions(report: Report) -> tuple[Distribution, ...]:
    measures = (("latency", report.overall.latency_ms), ("TTFT (streamed)", report.overall.ttft_ms))
    return tuple(
        Distribution(label, {side: values[side] for side in SIDES})
        for label, values in measures
        if values["primary"] or values["candidate"]
    )


def build_view(report: Report) -> ReportView:
    return ReportView(
        data_dir=str(report.data_dir),
        simulated=report.simulated,
        headline=headline(report),
        summary=tuple(summary_lines(report) + signal_lines(report) + noise_floor_lines(report)),
        tables=tables(report),
        where=tuple(where_lines(report)),
        judge_shares=_judge_shares(report),
        rate_charts=_rate_charts(report),
        distributions=_distributions(report),
    )
