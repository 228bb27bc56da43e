"""The report as a reader sees it, neutral of how it is shown: the headline, the "What changed" lines
with their tone, the tables (rows of cells, verdicts as values), where the data is, and the numbers
behind the plots. `text` prints it with rich, `html` writes it as a page; neither decides anything.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from shadowtap.records import SIDES, SideName
from shadowtap.report.findings import Verdict
from shadowtap.report.model import Report
from shadowtap.report.numbers import Rate, format_ms, percentile
from shadowtap.report.segments import Mode, SegmentStats, reasons_text

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

VERDICT_LABELS: dict[Verdict | None, str] = {"worse": "REGRESSION", "better": "better", None: "–"}
JUDGE_OUTCOMES = ("candidate_win", "tie", "primary_win")


@dataclass(frozen=True, slots=True)
class SummaryLine:
    sentence: str
    tone: Tone


@dataclass(frozen=True, slots=True)
class TextCell:
    text: str


@dataclass(frozen=True, slots=True)
class RateCell:
    """A count out of a total with its 95% interval."""

    rate: Rate

    @property
    def text(self) -> str:
        return self.rate.text()


@dataclass(frozen=True, slots=True)
class VerdictCell:
    """The verdict of one segment and failure mode; None where the difference is not clear."""

    verdict: Verdict | None

    @property
    def text(self) -> str:
        return VERDICT_LABELS[self.verdict]


Cell = TextCell | RateCell | VerdictCell


@dataclass(frozen=True, slots=True)
class Row:
    cells: tuple[Cell, ...]
    # The row of all pairs, below the segments.
    total: bool = False

    @property
    def flagged(self) -> bool:
        """The row holds a regression."""
        return any(isinstance(c, VerdictCell) and c.verdict == "worse" for c in self.cells)


@dataclass(frozen=True, slots=True)
class Table:
    key: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]


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


def headline(report: Report) -> str:
    return (
        f"{report.lines['pairs']} pairs · primary {models_text(report.models['primary'])} · candidate "
        f"{models_text(report.models['candidate'])} · judge {models_text(report.models['judge'])}"
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
# Tables


def _segments_and_total(report: Report) -> Iterator[SegmentStats]:
    yield from report.segments
    if len(report.segments) > 1:
        yield report.overall


def _verdict(report: Report, segment: str, mode: Mode) -> VerdictCell:
    return VerdictCell(report.verdicts.get((segment, mode)))


def _traffic(report: Report, s: SegmentStats) -> tuple[Cell, ...] | None:
    counts = (s.pairs, s.streamed, s.long_inputs, s.errors["primary"], s.errors["candidate"])
    return tuple(TextCell(str(n)) for n in counts)


def _refusal(report: Report, s: SegmentStats) -> tuple[Cell, ...] | None:
    if not (s.refusal_scored["candidate"] or s.refusal_scored["primary"]):
        return None
    return (
        RateCell(s.refusal_rate("primary")),
        RateCell(s.refusal_rate("candidate")),
        RateCell(s.candidate_only_refusals()),
        _verdict(report, s.segment, "refusal"),
    )


def _format(report: Report, s: SegmentStats) -> tuple[Cell, ...] | None:
    if not (s.format_checked["primary"] or s.format_checked["candidate"]):
        return None
    return (
        RateCell(s.format_rate("primary")),
        RateCell(s.format_rate("candidate")),
        TextCell(reasons_text(s.format_reasons["candidate"]) or "–"),
        _verdict(report, s.segment, "format"),
    )


def _judge(report: Report, s: SegmentStats) -> tuple[Cell, ...] | None:
    if not s.judged:
        return None
    return (
        RateCell(s.judge_rate("candidate_win")),
        TextCell(f"{s.judge['tie']}/{s.judged}  {s.judge['tie'] / s.judged:.0%}"),
        RateCell(s.judge_rate("primary_win")),
        TextCell(f"{s.judge_inconsistent}/{s.judged}"),
        _verdict(report, s.segment, "judge"),
    )


def _primary_to_candidate(values: dict[str, list[float]], q: float) -> TextCell:
    primary, candidate = percentile(values["primary"], q), percentile(values["candidate"], q)
    if primary is None and candidate is None:
        return TextCell("–")
    return TextCell(f"{format_ms(primary, '')} → {format_ms(candidate, '')}")


def _latency(report: Report, s: SegmentStats) -> tuple[Cell, ...] | None:
    ratio = percentile(s.length_ratios, 50)
    return (
        _primary_to_candidate(s.latency_ms, 50),
        _primary_to_candidate(s.latency_ms, 95),
        _primary_to_candidate(s.ttft_ms, 50),
        _primary_to_candidate(s.ttft_ms, 95),
        TextCell("–" if ratio is None else f"{ratio:.2f}x"),
    )


RowCells = Callable[[Report, SegmentStats], tuple[Cell, ...] | None]

# key: (title, columns, the cells of a segment's row after its name, or None where it has no row)
TABLES: dict[str, tuple[str, tuple[str, ...], RowCells]] = {
    "traffic": (
        "Traffic",
        ("segment", "pairs", "streamed", "long inputs", "primary errors", "candidate errors"),
        _traffic,
    ),
    "refusal": (
        "Refusals: refused or partly refused (k/n, rate, [95% interval])",
        ("segment", "primary", "candidate", "candidate only, of what the primary answered", "verdict"),
        _refusal,
    ),
    "format": (
        "Format: answers that met the requested format (JSON, schema, rules)",
        ("segment", "primary pass", "candidate pass", "candidate failures", "verdict"),
        _format,
    ),
    "judge": (
        "Judge: which answer is better (each pair judged in both orders; a verdict that flips is a tie)",
        ("segment", "candidate wins", "ties", "primary wins", "order flips", "verdict"),
        _judge,
    ),
    "latency": (
        "Latency (ms, primary → candidate; TTFT of streamed answers) and answer length",
        ("segment", "latency p50", "latency p95", "TTFT p50", "TTFT p95", "length ratio (median)"),
        _latency,
    ),
}


def table_title(report: Report, key: str) -> str:
    title = TABLES[key][0]
    if key == "traffic" and report.short_input_chars is not None:
        title += f" (a long input has over {report.short_input_chars:,} characters)"
    return title


def _rows(report: Report, cells_of: RowCells) -> tuple[Row, ...]:
    rows = []
    for s in _segments_and_total(report):
        cells = cells_of(report, s)
        if cells is not None:
            rows.append(Row((TextCell(s.segment), *cells), total=s.segment == "all"))
    return tuple(rows)


def tables(report: Report) -> tuple[Table, ...]:
    built = (
        Table(key, table_title(report, key), columns, _rows(report, cells_of))
        for key, (_, columns, cells_of) in TABLES.items()
    )
    return tuple(table for table in built if table.rows)


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
        summary=tuple(summary_lines(report)),
        tables=tables(report),
        where=tuple(where_lines(report)),
        judge_shares=_judge_shares(report),
        rate_charts=_rate_charts(report),
        distributions=_distributions(report),
    )
