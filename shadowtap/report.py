"""The report on a recorded run: what the candidate does differently from the primary, per failure mode
and segment, with 95% intervals, and which differences are regressions.

Reads a data directory (`pairs.jsonl`, `scores.jsonl`, `review.jsonl`), as written by the embedded
default or by `shadowtap score --input/--output`. Prints rich tables (`print_report`) or writes one
self-contained HTML page with inline plots (`write_html`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shadowtap.records import score_key
from shadowtap.sentinel.stats import wilson

RECORD_FILES = ("pairs.jsonl", "scores.jsonl", "review.jsonl")
DEMO_MARKER = "demo.json"
SIDES = ("primary", "candidate")

# A judge regression needs the primary preferred this much more often than the candidate, on top of
# non-overlapping intervals.
JUDGE_MARGIN = 0.10
# A difference too small to call a regression is still mentioned from this gap and this many failures.
WATCH_GAP = 0.05
WATCH_MIN_COUNT = 3
# Overall latency and length changes worth a line in "What changed" (ratios of medians).
SLOWER_RATIO = 1.25
LONGER_RATIO = 1.25
MIN_SAMPLES = 10

FORMAT_REASONS = {
    "not_json": "not JSON",
    "schema_violation": "schema violation",
    "too_long": "too long",
    "pattern_missing": "missing a required pattern",
    "pattern_forbidden": "with a forbidden pattern",
}


# --------------------------------------------------------------------------------------------------
# Numbers


@dataclass(frozen=True, slots=True)
class Rate:
    """k of n, with its 95% Wilson interval."""

    k: int
    n: int

    @property
    def value(self) -> float | None:
        return self.k / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson(self.k, self.n)

    def text(self) -> str:
        """`27/90  30% [22–40]`: count, rate and its 95% interval in percent."""
        if not self.n:
            return "–"
        low, high = self.interval or (0.0, 0.0)
        return f"{self.k}/{self.n}  {self.k / self.n:.0%} [{low * 100:.0f}–{high * 100:.0f}]"


def clearly_above(a: Rate, b: Rate) -> bool:
    """`a`'s rate is above `b`'s with non-overlapping 95% intervals."""
    ia, ib = a.interval, b.interval
    return ia is not None and ib is not None and ia[0] > ib[1]


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100) of `values`, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _ms(value: float | None, unit: str = " ms") -> str:
    return "–" if value is None else f"{value:,.0f}{unit}"


# --------------------------------------------------------------------------------------------------
# Building the report


@dataclass(slots=True)
class SegmentStats:
    """Every number the report shows for one segment (or for all pairs)."""

    segment: str
    pairs: int = 0
    streamed: int = 0
    long_inputs: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    format_checked: Counter[str] = field(default_factory=Counter)
    format_passed: Counter[str] = field(default_factory=Counter)
    format_reasons: dict[str, Counter[str]] = field(default_factory=lambda: {s: Counter() for s in SIDES})
    refusal_scored: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    pairwise_refusal: Counter[str] = field(default_factory=Counter)
    judge: Counter[str] = field(default_factory=Counter)
    judge_inconsistent: int = 0
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})
    ttft_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})
    length_ratios: list[float] = field(default_factory=list)

    def format_rate(self, side: str) -> Rate:
        return Rate(self.format_passed[side], self.format_checked[side])

    def refusal_rate(self, side: str) -> Rate:
        return Rate(self.refused[side], self.refusal_scored[side])

    def candidate_only_refusals(self) -> Rate:
        """Candidate refusals among the requests the primary answered."""
        p = self.pairwise_refusal
        return Rate(p["candidate_only_refused"], p["candidate_only_refused"] + p["neither"])

    @property
    def judged(self) -> int:
        return sum(self.judge.values())

    def judge_rate(self, outcome: str) -> Rate:
        return Rate(self.judge[outcome], self.judged)


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing that changed. `regression` findings are what a reviewer must look at."""

    kind: str
    segment: str | None
    sentence: str
    regression: bool = True


@dataclass(slots=True)
class Report:
    data_dir: Path
    paths: dict[str, Path]
    lines: dict[str, int]
    invalid_lines: int
    review_reasons: Counter[str]
    models: dict[str, Counter[str]]
    simulated: bool
    # Characters of input up to which a request counts as short (the first length bucket's bound).
    short_input_chars: int | None
    first_ts: str | None
    last_ts: str | None
    segments: list[SegmentStats]
    overall: SegmentStats
    findings: list[Finding]
    # (segment, failure mode) -> "worse" or "better", only where the difference is clear.
    verdicts: dict[tuple[str, str], str]
    clean_segments: list[str]


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    if not path.exists():
        return [], 0
    rows, invalid = [], 0
    with path.open("rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                invalid += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                invalid += 1
    return rows, invalid


def _segment_of(record: dict[str, Any]) -> str:
    return str((record.get("tags") or {}).get("segment") or "none")


def _add_pair(stats: SegmentStats, pair: dict[str, Any]) -> None:
    stats.pairs += 1
    stats.streamed += bool(pair.get("stream"))
    bucket = str((pair.get("tags") or {}).get("length_bucket") or "")
    stats.long_inputs += bool(bucket) and not bucket.startswith("0-")
    texts = {}
    for side in SIDES:
        part = pair.get(side) or {}
        if part.get("error") is not None:
            stats.errors[side] += 1
            continue
        if isinstance(part.get("latency_ms"), (int, float)):
            stats.latency_ms[side].append(float(part["latency_ms"]))
        if isinstance(part.get("ttft_ms"), (int, float)):
            stats.ttft_ms[side].append(float(part["ttft_ms"]))
        texts[side] = part.get("text") or ""
    if len(texts) == 2 and texts["primary"]:
        stats.length_ratios.append(len(texts["candidate"]) / len(texts["primary"]))


def _add_score(stats: SegmentStats, score: dict[str, Any]) -> None:
    scorer, side, outcome = score.get("scorer"), score.get("side"), score.get("outcome")
    detail = score.get("detail") or {}
    if scorer == "format" and side in SIDES:
        stats.format_checked[side] += 1
        if outcome == "pass":
            stats.format_passed[side] += 1
        else:
            stats.format_reasons[side][str(detail.get("reason", "other"))] += 1
    elif scorer == "refusal" and side in SIDES:
        stats.refusal_scored[side] += 1
        stats.refused[side] += outcome in ("refused", "partial")
    elif scorer == "refusal" and side == "pair":
        stats.pairwise_refusal[str(outcome)] += 1
    elif scorer == "judge" and side == "pair":
        stats.judge[str(outcome)] += 1
        stats.judge_inconsistent += bool(detail.get("position_inconsistent"))


def _short_input_chars(pairs: list[dict[str, Any]]) -> int | None:
    for pair in pairs:
        bucket = str((pair.get("tags") or {}).get("length_bucket") or "")
        low, _, high = bucket.partition("-")
        if low == "0" and high.isdigit():
            return int(high)
    return None


def _ordered_segments(counts: Counter[str]) -> list[str]:
    return sorted(counts, key=lambda s: (-counts[s], s))


def build_report(data_dir: str | Path) -> Report:
    """Read a data directory and compute every table and finding of the report."""
    data_dir = Path(data_dir)
    paths = {name.removesuffix(".jsonl"): data_dir / name for name in RECORD_FILES}
    pairs, bad_pairs = _read_jsonl(paths["pairs"])
    raw_scores, bad_scores = _read_jsonl(paths["scores"])
    review, bad_review = _read_jsonl(paths["review"])
    scores = {score_key(s): s for s in raw_scores if {"pair_id", "scorer", "side"} <= s.keys()}
    segment_by_pair = {str(p.get("id")): _segment_of(p) for p in pairs}
    counts = Counter(segment_by_pair.values())
    for s in scores.values():
        counts.setdefault(segment_by_pair.get(str(s["pair_id"]), _segment_of(s)), 0)
    by_segment = {name: SegmentStats(name) for name in _ordered_segments(counts)}
    overall = SegmentStats("all")
    models: dict[str, Counter[str]] = {"primary": Counter(), "candidate": Counter(), "judge": Counter()}
    for pair in pairs:
        for target in (by_segment[_segment_of(pair)], overall):
            _add_pair(target, pair)
        for side in SIDES:
            model = (pair.get(side) or {}).get("model")
            if model:
                models[side][str(model)] += 1
    for score in scores.values():
        segment = segment_by_pair.get(str(score["pair_id"]), _segment_of(score))
        for target in (by_segment[segment], overall):
            _add_score(target, score)
        judge_model = (score.get("detail") or {}).get("judge_model") if score["scorer"] == "judge" else None
        if judge_model:
            models["judge"][str(judge_model)] += 1
    stamps = sorted(str(p["ts"]) for p in pairs if p.get("ts"))
    segments = list(by_segment.values())
    findings, verdicts = _findings(segments, overall)
    flagged = {segment for (segment, _), v in verdicts.items() if v == "worse"}
    return Report(
        data_dir=data_dir,
        paths=paths,
        lines={"pairs": len(pairs), "scores": len(raw_scores), "review": len(review)},
        invalid_lines=bad_pairs + bad_scores + bad_review,
        review_reasons=Counter(str(r.get("reason", "other")) for r in review),
        models=models,
        simulated=(data_dir / DEMO_MARKER).exists(),
        short_input_chars=_short_input_chars(pairs),
        first_ts=stamps[0] if stamps else None,
        last_ts=stamps[-1] if stamps else None,
        segments=segments,
        overall=overall,
        findings=findings,
        verdicts=verdicts,
        clean_segments=[s.segment for s in segments if s.segment not in flagged],
    )


def _reasons_text(reasons: Counter[str]) -> str:
    """`15 schema violations, 4 not JSON`."""
    words = []
    for reason, n in reasons.most_common():
        text = FORMAT_REASONS.get(reason, reason)
        words.append(f"{n} {text}s" if reason == "schema_violation" and n != 1 else f"{n} {text}")
    return ", ".join(words)


def _failure_rates(s: SegmentStats, mode: str) -> tuple[Rate, Rate]:
    """(candidate, primary) rates of the bad outcome of a failure mode; for the judge, the share of
    pairs each side lost."""
    if mode == "refusal":
        return s.refusal_rate("candidate"), s.refusal_rate("primary")
    if mode == "format":
        c, p = s.format_rate("candidate"), s.format_rate("primary")
        return Rate(c.n - c.k, c.n), Rate(p.n - p.k, p.n)
    return s.judge_rate("primary_win"), s.judge_rate("candidate_win")


def _describe(s: SegmentStats, mode: str) -> str:
    """What the candidate did, in words, for a finding on one segment and failure mode."""
    name = s.segment
    if mode == "refusal":
        only, primary = s.candidate_only_refusals(), s.refusal_rate("primary")
        return (
            f"the candidate refused {only.value or 0:.0%} of {name} requests the primary answered "
            f"({only.k} of {only.n}; primary {primary.value or 0:.0%})"
        )
    if mode == "format":
        failed, primary_failed = _failure_rates(s, "format")
        return (
            f"{failed.value or 0:.0%} of the candidate's {name} answers broke the required format "
            f"({failed.k} of {failed.n}: {_reasons_text(s.format_reasons['candidate'])}; primary "
            f"{primary_failed.value or 0:.0%})"
        )
    loss, win = _failure_rates(s, "judge")
    return (
        f"on {name} the judge preferred the primary's answer {loss.value or 0:.0%} of the time and the "
        f"candidate's {win.value or 0:.0%} ({s.judged} pairs judged in both orders)"
    )


MODES = {"refusal": "Refusals", "format": "Format", "judge": "Judge"}


def _findings(
    segments: list[SegmentStats], overall: SegmentStats
) -> tuple[list[Finding], dict[tuple[str, str], str]]:
    """Per segment and failure mode: a regression where the candidate fails clearly more often (95%
    intervals apart; for the judge also by JUDGE_MARGIN), a note where it may but the intervals still
    overlap; then the overall latency and length changes."""
    findings: list[Finding] = []
    verdicts: dict[tuple[str, str], str] = {}
    for s in segments:
        for mode, label in MODES.items():
            candidate, primary = _failure_rates(s, mode)
            margin = JUDGE_MARGIN if mode == "judge" else 0.0
            gap = (candidate.value or 0.0) - (primary.value or 0.0)
            if clearly_above(candidate, primary) and gap >= margin:
                verdicts[(s.segment, mode)] = "worse"
                findings.append(Finding(mode, s.segment, f"{label}: {_describe(s, mode)}."))
            elif clearly_above(primary, candidate) and -gap >= margin:
                verdicts[(s.segment, mode)] = "better"
            elif gap >= WATCH_GAP and candidate.k >= WATCH_MIN_COUNT:
                findings.append(
                    Finding(
                        "watch",
                        s.segment,
                        f"{label}, not yet clear: {_describe(s, mode)}; the 95% intervals still overlap, "
                        "so more traffic is needed to tell.",
                        regression=False,
                    )
                )
    for s in segments:
        better = [mode for (seg, mode), v in verdicts.items() if seg == s.segment and v == "better"]
        if better:
            findings.append(
                Finding(
                    "improvement",
                    s.segment,
                    f"Better: on {s.segment} the candidate beats the primary on {', '.join(better)}.",
                    regression=False,
                )
            )
    findings.extend(_overall_changes(overall))
    return findings, verdicts


def _overall_changes(overall: SegmentStats) -> list[Finding]:
    changes: list[Finding] = []
    for label, values in (("to first token", overall.ttft_ms), ("end to end", overall.latency_ms)):
        p, c = values["primary"], values["candidate"]
        if len(p) < MIN_SAMPLES or len(c) < MIN_SAMPLES:
            continue
        p50, c50 = percentile(p, 50) or 0.0, percentile(c, 50) or 0.0
        if p50 <= 0:
            continue
        ratio = c50 / p50
        p95, c95 = percentile(p, 95), percentile(c, 95)
        numbers = f"p50 {_ms(c50)} vs {_ms(p50)} ({ratio:.1f}x), p95 {_ms(c95)} vs {_ms(p95)}"
        if ratio >= SLOWER_RATIO:
            changes.append(Finding("latency", None, f"Latency: the candidate is slower {label}: {numbers}."))
        elif ratio <= 1 / SLOWER_RATIO:
            changes.append(
                Finding("latency", None, f"Latency: the candidate is faster {label}: {numbers}.", False)
            )
    if len(overall.length_ratios) >= MIN_SAMPLES:
        ratio = percentile(overall.length_ratios, 50) or 1.0
        if ratio >= LONGER_RATIO or ratio <= 1 / LONGER_RATIO:
            changes.append(
                Finding(
                    "length",
                    None,
                    f"Length: the candidate's answers are {ratio:.2f}x as long as the primary's (median per "
                    "pair).",
                    regression=False,
                )
            )
    if overall.judged >= MIN_SAMPLES and overall.judge_inconsistent / overall.judged > 0.1:
        changes.append(
            Finding(
                "judge",
                None,
                f"Judge: {overall.judge_inconsistent / overall.judged:.0%} of verdicts flipped when the "
                "answers were swapped (counted as ties); read the judge's results with care.",
                regression=False,
            )
        )
    return changes


# --------------------------------------------------------------------------------------------------
# Terminal


def _verdict_text(report: Report, segment: str, mode: str) -> Text:
    verdict = report.verdicts.get((segment, mode))
    if verdict == "worse":
        return Text("REGRESSION", style="bold red")
    return Text("better", style="green") if verdict == "better" else Text("–", style="dim")


def _span(report: Report) -> str:
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


def _models_text(models: Counter[str]) -> str:
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
            _reasons_text(s.format_reasons["candidate"]) or "–",
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
        return f"{_ms(primary, '')} → {_ms(candidate, '')}"

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
        f"{report.lines['pairs']} pairs · primary {_models_text(report.models['primary'])} · candidate "
        f"{_models_text(report.models['candidate'])} · judge {_models_text(report.models['judge'])}"
        + _span(report)
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


# --------------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;max-width:1180px;
color:#1d2330;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde2ea;
padding-bottom:.3rem}
.meta{color:#5a6478;font-size:.9rem}.sim{background:#ffe27a;color:#1d2330;font-weight:700;padding:.1rem .4rem;
border-radius:3px}
ul.changes{list-style:none;padding:0}ul.changes li{padding:.45rem .7rem;margin:.3rem 0;border-radius:4px;
border-left:4px solid #9aa3b2;background:#f4f6f9}
ul.changes li.regression{border-left-color:#c62828;background:#fdecea;font-weight:600}
ul.changes li.overall{border-left-color:#e0a800;background:#fff7e0}
ul.changes li.good{border-left-color:#2e7d32;background:#edf7ee}
table{border-collapse:collapse;margin:.6rem 0 1rem;font-size:.88rem;width:100%}
th,td{border:1px solid #dde2ea;padding:.35rem .55rem;text-align:right;white-space:nowrap}
th{background:#f0f2f6}td:first-child,th:first-child{text-align:left}
tr.all td{font-weight:700;background:#fafbfc}tr.flagged td{background:#fdecea}td.regression{color:#c62828;font-weight:700}
td.better{color:#2e7d32}.plots{display:flex;flex-wrap:wrap;gap:1rem}
.plots figure{margin:0;flex:1 1 540px}.plots img{max-width:100%;height:auto;border:1px solid #eef0f4}
figcaption{font-size:.85rem;color:#5a6478}code{background:#f0f2f6;padding:.05rem .3rem;border-radius:3px}
"""


def _cell(value: Any) -> str:
    if isinstance(value, Text):
        css = "regression" if value.plain == "REGRESSION" else "better" if value.plain == "better" else ""
        return f'<td class="{css}">{html.escape(value.plain)}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def _html_table(title: str, columns: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)

    def css(row: list[Any]) -> str:
        if any(isinstance(v, Text) and v.plain == "REGRESSION" for v in row):
            return "flagged"
        return "all" if row[0] == "all" else ""

    body = "".join(f'<tr class="{css(row)}">{"".join(_cell(v) for v in row)}</tr>' for row in rows)
    return f"<h2>{html.escape(title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plots(report: Report) -> list[tuple[str, str]]:
    """(caption, base64 PNG) for each plot the data allows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"primary": "#4c72b0", "candidate": "#dd8452"}
    plots: list[tuple[str, str]] = []
    judged = [s for s in report.segments if s.judged]
    if judged:
        fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.55 * len(judged)))
        left = [0.0] * len(judged)
        names = [s.segment for s in judged]
        for outcome, label, colour in (
            ("candidate_win", "candidate wins", "#55a868"),
            ("tie", "tie", "#c8ccd4"),
            ("primary_win", "primary wins", "#c44e52"),
        ):
            shares = [s.judge[outcome] / s.judged for s in judged]
            ax.barh(names, shares, left=left, color=colour, label=label)
            left = [a + b for a, b in zip(left, shares, strict=True)]
        ax.set_xlim(0, 1)
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.invert_yaxis()
        ax.legend(ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
        ax.set_title("Judge verdicts by segment")
        plots.append(("Judge verdicts by segment (share of judged pairs)", _png(fig)))
        plt.close(fig)
    for title, rate in (
        ("Refusal rate", SegmentStats.refusal_rate),
        ("Format pass rate", SegmentStats.format_rate),
    ):
        shown = [s for s in report.segments if rate(s, "primary").n or rate(s, "candidate").n]
        if not shown:
            continue
        fig, ax = plt.subplots(figsize=(min(6.4, 1.4 + 1.3 * len(shown)), 3.4))
        width = 0.38
        for offset, side in ((-width / 2, "primary"), (width / 2, "candidate")):
            rates = [rate(s, side) for s in shown]
            values = [r.value or 0.0 for r in rates]
            errors = [
                [max(0.0, v - (r.interval or (v, v))[0]) for v, r in zip(values, rates, strict=True)],
                [max(0.0, (r.interval or (v, v))[1] - v) for v, r in zip(values, rates, strict=True)],
            ]
            xs = [i + offset for i in range(len(shown))]
            ax.bar(xs, values, width, yerr=errors, capsize=3, color=colours[side], label=side)
        ax.set_xticks(range(len(shown)), [s.segment for s in shown])
        ax.set_xlim(-0.7, len(shown) - 0.3)
        ax.set_ylim(0, 1.05)
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.legend(frameon=False, fontsize=8)
        ax.set_title(title)
        plots.append((f"{title} by side and segment; the whiskers are 95% Wilson intervals", _png(fig)))
        plt.close(fig)
    panels = [
        (label, values)
        for label, values in (
            ("latency", report.overall.latency_ms),
            ("TTFT (streamed)", report.overall.ttft_ms),
        )
        if values["primary"] or values["candidate"]
    ]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels) / 1.4, 3.4), squeeze=False)
        for ax, (label, values) in zip(axes[0], panels, strict=True):
            top = max(percentile(values["primary"] + values["candidate"], 99) or 1.0, 1.0)
            bins = [top * i / 30 for i in range(31)]
            for side in SIDES:
                if values[side]:
                    ax.hist(
                        [min(v, top) for v in values[side]],
                        bins=bins,
                        alpha=0.6,
                        color=colours[side],
                        label=f"{side} (p50 {_ms(percentile(values[side], 50))})",
                    )
            ax.set_xlabel(f"{label}, ms")
            ax.set_ylabel("requests")
            ax.legend(frameon=False, fontsize=8)
            ax.set_title(f"{label} distribution")
        plots.append(("Latency distributions, primary vs candidate (all segments)", _png(fig)))
        plt.close(fig)
    return plots


def render_html(report: Report) -> str:
    """One self-contained page: inline CSS, plots as inline PNG, no scripts, nothing fetched."""
    items = []
    for sentence, style in summary_lines(report):
        css = (
            "regression"
            if style == "bold red"
            else "overall"
            if style in ("red", "yellow")
            else "good"
            if "green" in style
            else ""
        )
        items.append(f'<li class="{css}">{html.escape(sentence)}</li>')
    sections = []
    for key, (_, columns) in TABLES.items():
        rows = ROWS[key](report)
        if rows:
            sections.append(_html_table(table_title(report, key), columns, rows))
    plots = "".join(
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for caption, data in _plots(report)
    )
    simulated = (
        '<p><span class="sim">SIMULATED</span> run recorded by <code>shadowtap demo</code>: the primary, the '
        "candidate and the judge were scripted stand-ins, not real models.</p>"
        if report.simulated
        else ""
    )
    span = _span(report)
    meta = (
        f"{report.lines['pairs']} pairs · primary {_models_text(report.models['primary'])} · candidate "
        f"{_models_text(report.models['candidate'])} · judge {_models_text(report.models['judge'])}{span}"
    )
    where = "".join(f"<li><code>{html.escape(line)}</code></li>" for line in where_lines(report))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>shadowtap report: {html.escape(str(report.data_dir))}</title><style>{_CSS}</style></head>"
        f'<body><h1>shadowtap report</h1><p class="meta">{html.escape(str(report.data_dir))} · '
        f'{html.escape(meta)}</p>{simulated}<h2>What changed</h2><ul class="changes">{"".join(items)}</ul>'
        f'<div class="plots">{plots}</div>{"".join(sections)}<h2>Where the data is</h2><ul>{where}</ul>'
        "</body></html>\n"
    )


def write_html(report: Report, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report), encoding="utf-8")
    return path
