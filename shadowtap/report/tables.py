"""The report's tables, neutral of how they are shown: a row per segment (and one for all pairs) of
cells that are text, a rate with its interval, or a verdict."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from shadowtap.report.findings import Verdict
from shadowtap.report.model import Report
from shadowtap.report.numbers import Rate, format_ms, percentile
from shadowtap.report.segments import TOOL_OUTCOMES, TOOL_PAIR_OUTCOMES, Mode, SegmentStats, reasons_text

__all__ = ["TABLES", "Cell", "RateCell", "Row", "Table", "TextCell", "VerdictCell", "table_title", "tables"]

VERDICT_LABELS: dict[Verdict | None, str] = {"worse": "REGRESSION", "better": "better", None: "–"}


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


def _tools(report: Report, s: SegmentStats) -> tuple[Cell, ...] | None:
    if not (s.tools_checked["primary"] or s.tools_checked["candidate"]):
        return None
    differ = s.tool_disagreements()
    kinds = reasons_text(
        Counter({k: n for k, n in s.tool_pairs.items() if k != "same_calls"}), TOOL_PAIR_OUTCOMES
    )
    differ_text = f"{differ.k}/{differ.n}" + (f": {kinds}" if kinds else "")
    return (
        RateCell(s.tools_rate("primary")),
        RateCell(s.tools_rate("candidate")),
        TextCell(reasons_text(s.tool_failures["candidate"], TOOL_OUTCOMES) or "–"),
        TextCell(differ_text if differ.n else "–"),
        _verdict(report, s.segment, "tools"),
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


def _signals(report: Report, s: SegmentStats) -> tuple[Cell, ...] | None:
    stats = report.feedback.get(s.segment)
    if stats is None:
        return None
    counts = ", ".join(f"{signal} {n}" for signal, n in stats.signals.most_common()) or "–"
    if stats.unmirrored:
        counts += f" ({stats.unmirrored} on answers not mirrored)"
    return (
        RateCell(stats.retry_rate),
        RateCell(stats.thumbs_down_rate),
        RateCell(stats.candidate_wins_when_disliked),
        TextCell(counts),
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
    "tools": (
        "Tool calls: answers whose calls fit the offered tools (function, JSON arguments, parameters schema)",
        (
            "segment",
            "primary valid",
            "candidate valid",
            "candidate failures",
            "pairs calling differently",
            "verdict",
        ),
        _tools,
    ),
    "judge": (
        "Judge: which answer is better (each pair judged in both orders; a verdict that flips is a tie)",
        ("segment", "candidate wins", "ties", "primary wins", "order flips", "verdict"),
        _judge,
    ),
    "signals": (
        "Production signals on the primary: retried and thumbs-down answers per mirrored request; on the "
        "pairs users disliked, the judge's candidate win rate",
        ("segment", "retried", "thumbs-down", "candidate wins where disliked", "feedback records"),
        _signals,
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
