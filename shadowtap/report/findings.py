"""What changed: per segment and failure mode, a regression where the candidate fails clearly more often
than the primary, a note where it may but the evidence is not yet clear, an improvement where it is
clearly better; then the overall latency, length and judge-consistency changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shadowtap.report.numbers import clearly_above, format_ms, percentile
from shadowtap.report.segments import TOOL_OUTCOMES, Mode, SegmentStats, reasons_text

__all__ = ["MODES", "Finding", "Verdict", "find_changes"]

# Whether the candidate is clearly worse or clearly better than the primary on one failure mode.
Verdict = Literal["worse", "better"]

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

MODES: dict[Mode, str] = {"refusal": "Refusals", "format": "Format", "tools": "Tool calls", "judge": "Judge"}


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing that changed. `regression` findings are what a reviewer must look at."""

    kind: str
    segment: str | None
    sentence: str
    regression: bool = True


def _describe(s: SegmentStats, mode: Mode) -> str:
    """What the candidate did, in words, for a finding on one segment and failure mode."""
    name = s.segment
    if mode == "refusal":
        only, primary = s.candidate_only_refusals(), s.refusal_rate("primary")
        return (
            f"the candidate refused {only.value or 0:.0%} of {name} requests the primary answered "
            f"({only.k} of {only.n}; primary {primary.value or 0:.0%})"
        )
    if mode == "format":
        failed, primary_failed = s.failure_rates("format")
        return (
            f"{failed.value or 0:.0%} of the candidate's {name} answers broke the required format "
            f"({failed.k} of {failed.n}: {reasons_text(s.format_reasons['candidate'])}; primary "
            f"{primary_failed.value or 0:.0%})"
        )
    if mode == "tools":
        return _describe_tools(s)
    loss, win = s.failure_rates("judge")
    return (
        f"on {name} the judge preferred the primary's answer {loss.value or 0:.0%} of the time and the "
        f"candidate's {win.value or 0:.0%} ({s.judged} pairs judged in both orders)"
    )


def _describe_tools(s: SegmentStats) -> str:
    """The candidate's invalid tool calls on one segment: rate, interval, kinds, and one of them."""
    failed, primary_failed = s.failure_rates("tools")
    low, high = failed.interval or (0.0, 0.0)
    example = s.tool_example("candidate")
    return (
        f"{failed.value or 0:.0%} of the candidate's tool-calling answers on {s.segment} were invalid for "
        f"the offered tools ({failed.k} of {failed.n}, 95% interval {low * 100:.0f}–{high * 100:.0f}%: "
        f"{reasons_text(s.tool_failures['candidate'], TOOL_OUTCOMES)}; primary {primary_failed.value or 0:.0%})"
        + (f"; e.g. {example}" if example else "")
    )


def _judge_segment(s: SegmentStats, mode: Mode, label: str) -> tuple[Verdict | None, Finding | None]:
    """The verdict on one segment and failure mode: worse where the candidate fails clearly more often
    (95% intervals apart; for the judge also by JUDGE_MARGIN), better where clearly less often, and a
    note where it may fail more but the intervals still overlap."""
    candidate, primary = s.failure_rates(mode)
    margin = JUDGE_MARGIN if mode == "judge" else 0.0
    gap = (candidate.value or 0.0) - (primary.value or 0.0)
    if clearly_above(candidate, primary) and gap >= margin:
        return "worse", Finding(mode, s.segment, f"{label}: {_describe(s, mode)}.")
    if clearly_above(primary, candidate) and -gap >= margin:
        return "better", None
    if gap >= WATCH_GAP and candidate.k >= WATCH_MIN_COUNT:
        sentence = (
            f"{label}, not yet clear: {_describe(s, mode)}; the 95% intervals still overlap, "
            "so more traffic is needed to tell."
        )
        return None, Finding("watch", s.segment, sentence, regression=False)
    return None, None


def find_changes(
    segments: list[SegmentStats], overall: SegmentStats
) -> tuple[list[Finding], dict[tuple[str, Mode], Verdict]]:
    """The findings, in the order the report lists them, and the verdict of every segment and failure
    mode where the difference is clear."""
    findings: list[Finding] = []
    verdicts: dict[tuple[str, Mode], Verdict] = {}
    for s in segments:
        for mode, label in MODES.items():
            verdict, finding = _judge_segment(s, mode, label)
            if verdict is not None:
                verdicts[(s.segment, mode)] = verdict
            if finding is not None:
                findings.append(finding)
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
        numbers = f"p50 {format_ms(c50)} vs {format_ms(p50)} ({ratio:.1f}x), p95 {format_ms(c95)} vs {format_ms(p95)}"
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
