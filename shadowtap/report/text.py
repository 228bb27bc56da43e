"""The report in the terminal: rich tables and the summary sentences, which the HTML page shares."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shadowtap.report.model import Report, SegmentStats, format_ms, percentile, reasons_text

# --------------------------------------------------------------------------------------------------
# Terminal


def _verdict_text(report: Report, segment: str, mode: str) -> Text:
    verdict = report.verdicts.get((segment, mode))
    if verdict == "worse":
        return Text("REGRESSION", style="bold red")
    return Text("better", style="green") if verdict == "better" else Text("–", style="dim")


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


def _rows(report: Report) -> Iterator[SegmentStats]:
    yield from report.segments
    if len(report.segments) > 1:
        yield report.overall


def _table(title: str, columns: Iterable[str]) -> Table:
    table = Table(
        title=title, title_justify="left", title_style="bold", header_style="bold", box=box.SIMPLE_HEAD
    )
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    return table


def refusal_rows(report: Report) -> list[list[Any]]:
    return [
        [
            s.segment,
            s.refusal_rate("primary").text(),
            s.refusal_rate("candidate").text(),
            s.candidate_only_refusals().text(),
            _verdict_text(report, s.segment, "refusal"),
        ]
        for s in _rows(report)
        if s.refusal_scored["candidate"] or s.refusal_scored["primary"]
    ]


def format_rows(report: Report) -> list[list[Any]]:
    return [
        [
            s.segment,
            s.format_rate("primary").text(),
            s.format_rate("candidate").text(),
            reasons_text(s.format_reasons["candidate"]) or "–",
            _verdict_text(report, s.segment, "format"),
        ]
        for s in _rows(report)
        if s.format_checked["primary"] or s.format_checked["candidate"]
    ]


def judge_rows(report: Report) -> list[list[Any]]:
    return [
        [
            s.segment,
            s.judge_rate("candidate_win").text(),
            f"{s.judge['tie']}/{s.judged}  {s.judge['tie'] / s.judged:.0%}",
            s.judge_rate("primary_win").text(),
            f"{s.judge_inconsistent}/{s.judged}",
            _verdict_text(report, s.segment, "judge"),
        ]
        for s in _rows(report)
        if s.judged
    ]


def latency_rows(report: Report) -> list[list[str]]:
    def pair(values: dict[str, list[float]], q: float) -> str:
        primary, candidate = percentile(values["primary"], q), percentile(values["candidate"], q)
        if primary is None and candidate is None:
            return "–"
        return f"{format_ms(primary, '')} → {format_ms(candidate, '')}"

    return [
        [
            s.segment,
            pair(s.latency_ms, 50),
            pair(s.latency_ms, 95),
            pair(s.ttft_ms, 50),
            pair(s.ttft_ms, 95),
            "–" if not s.length_ratios else f"{percentile(s.length_ratios, 50):.2f}x",
        ]
        for s in _rows(report)
    ]


def traffic_rows(report: Report) -> list[list[str]]:
    return [
        [
            s.segment,
            str(s.pairs),
            str(s.streamed),
            str(s.long_inputs),
            str(s.errors["primary"]),
            str(s.errors["candidate"]),
        ]
        for s in _rows(report)
    ]


TABLES = {
    "traffic": (
        "Traffic",
        ["segment", "pairs", "streamed", "long inputs", "primary errors", "candidate errors"],
    ),
    "refusal": (
        "Refusals: refused or partly refused (k/n, rate, [95% interval])",
        ["segment", "primary", "candidate", "candidate only, of what the primary answered", "verdict"],
    ),
    "format": (
        "Format: answers that met the requested format (JSON, schema, rules)",
        ["segment", "primary pass", "candidate pass", "candidate failures", "verdict"],
    ),
    "judge": (
        "Judge: which answer is better (each pair judged in both orders; a verdict that flips is a tie)",
        ["segment", "candidate wins", "ties", "primary wins", "order flips", "verdict"],
    ),
    "latency": (
        "Latency (ms, primary → candidate; TTFT of streamed answers) and answer length",
        ["segment", "latency p50", "latency p95", "TTFT p50", "TTFT p95", "length ratio (median)"],
    ),
}
ROWS = {
    "traffic": traffic_rows,
    "refusal": refusal_rows,
    "format": format_rows,
    "judge": judge_rows,
    "latency": latency_rows,
}


def table_title(report: Report, key: str) -> str:
    title = TABLES[key][0]
    if key == "traffic" and report.short_input_chars is not None:
        title += f" (a long input has over {report.short_input_chars:,} characters)"
    return title


def summary_lines(report: Report) -> list[tuple[str, str]]:
    """The "What changed" lines, most important first, each with its style."""
    if not report.lines["pairs"]:
        return [("No pair records yet: nothing to compare.", "yellow")]
    if not report.lines["scores"]:
        return [
            (
                f"No score records yet: score the pairs with `shadowtap score --input "
                f"{report.paths['pairs']} --output {report.paths['scores']}`.",
                "yellow",
            )
        ]
    findings = report.findings
    lines = [(f.sentence, "bold red") for f in findings if f.regression and f.segment]
    lines += [(f.sentence, "yellow") for f in findings if f.kind == "watch"]
    lines += [(f.sentence, "red") for f in findings if f.regression and not f.segment]
    lines += [(f.sentence, "green") for f in findings if f.kind == "improvement"]
    lines += [
        (f.sentence, "yellow")
        for f in findings
        if not f.regression and f.kind not in ("watch", "improvement")
    ]
    if not any(f.regression and f.segment for f in findings):
        lines.insert(
            0,
            (
                "No clear regression: on every segment and failure mode the candidate is within the "
                "primary's 95% interval.",
                "bold green",
            ),
        )
    elif report.clean_segments:
        lines.append((f"No regression found in: {', '.join(report.clean_segments)}.", "green"))
    return lines


def print_report(report: Report, console: Console) -> None:
    console.rule(f"[bold]shadowtap report[/]: {report.data_dir}")
    if report.simulated:
        console.print(
            "[black on yellow] SIMULATED [/] run recorded by [bold]shadowtap demo[/]: the primary, the "
            "candidate and the judge were scripted stand-ins, not real models."
        )
    console.print(
        f"{report.lines['pairs']} pairs · primary {models_text(report.models['primary'])} · candidate "
        f"{models_text(report.models['candidate'])} · judge {models_text(report.models['judge'])}"
        + span_text(report)
    )
    console.print("\n[bold underline]What changed[/]")
    for sentence, style in summary_lines(report):
        console.print(Text("• ", style=style) + Text(sentence, style=style))
    console.print()
    for key, (_, columns) in TABLES.items():
        rows = ROWS[key](report)
        if not rows:
            continue
        table = _table(table_title(report, key), columns)
        for row in rows:
            style = "bold" if row[0] == "all" else None
            table.add_row(*row, style=style)
        console.print(table)
    console.print("[bold]Where the data is[/]")
    for line in where_lines(report):
        console.print(f"  {line}")


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
