"""The sentinel's tables on the terminal: a built set, a run, a gate decision and the score history."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypedDict

from rich.console import Console
from rich.table import Table

from shadowtap.sentinel.modes import FAILURE_MODES
from shadowtap.sentinel.summary import ALL_STRATA

if TYPE_CHECKING:
    from shadowtap.sentinel.build import BuildResult
    from shadowtap.sentinel.decision import Comparison
    from shadowtap.sentinel.gate import GateDecision
    from shadowtap.sentinel.history import ScoreRow
    from shadowtap.sentinel.run import RunRecord

__all__ = ["build_table", "console", "fmt", "gate_table", "history_table", "run_table"]

GATE_COLUMNS = (
    "failure mode",
    "stratum",
    "baseline",
    "candidate",
    "drop (points) [95% CI]",
    "p (Holm)",
    "n",
    "A/A drop",
    "verdict",
)


def console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 160, soft_wrap=False)


def fmt(score: float | None, low: float | None = None, high: float | None = None) -> str:
    """A score with its interval, `0.933 [0.881, 0.964]`, or `-` for none."""
    if score is None:
        return "-"
    if low is None or high is None:
        return f"{score:.3f}"
    return f"{score:.3f} [{low:.3f}, {high:.3f}]"


def build_table(result: BuildResult) -> Table:
    """Each stratum of a built set: its share of traffic and how many examples it got (short: yellow)."""
    built = result.set
    table = Table(title=f"sentinel set {built.version} ({len(built.rows)} examples) -> {built.path}")
    for column in ("stratum", "traffic share", "in traffic", "sampled"):
        table.add_column(column, justify="left" if column == "stratum" else "right")
    short = built.manifest.get("short_cells", [])
    for key, cell in built.manifest["strata"]["cells"].items():
        sampled = str(cell["sampled"])
        if key in short:
            sampled = f"[yellow]{sampled}[/]"
        table.add_row(key, f"{cell['traffic_share']:.1%}", str(cell["traffic"]), sampled)
    return table


def run_table(record: RunRecord) -> Table:
    table = Table(
        title=f"sentinel run {record['run_id']}: model {record['model']} on set {record['set_version']}"
    )
    for column in ("failure mode", "stratum", "score [95% CI]", "n"):
        table.add_column(column, justify="right" if column == "n" else "left")
    for row in record["results"]:
        stratum = "all (traffic-weighted)" if row["stratum"] == ALL_STRATA else row["stratum"]
        table.add_row(
            row["failure_mode"], stratum, fmt(row["score"], row["lower"], row["upper"]), str(row["count"])
        )
    return table


def _verdict(c: Comparison) -> str:
    if c["role"] == "diagnostic":
        return "[dim]diagnostic (n < min cell)[/]"
    if c["role"] == "review":
        return "[yellow]to human review[/]"
    if c["regressed"]:
        return "[bold red]REGRESSED[/]"
    return "ok"


def gate_table(decision: GateDecision, baseline: RunRecord, candidate: RunRecord) -> Table:
    """Every comparison of the decision: drop with its interval, Holm-adjusted p, role, verdict."""
    table = Table(
        title=f"sentinel gate: {baseline['model']} ({baseline['run_id']}) -> "
        f"{candidate['model']} ({candidate['run_id']}), set {decision['set_version']}"
    )
    for column in GATE_COLUMNS:
        table.add_column(
            column, justify="left" if column in ("failure mode", "stratum", "verdict") else "right"
        )
    noise = decision.get("noise_floor") or {}
    for c in decision["comparisons"]:
        low, high = c["interval_points"]
        adjusted = "-" if c["p_adjusted"] is None else f"{c['p_adjusted']:.3g}"
        aa = noise.get(f"{c['failure_mode']}|{c['stratum']}")
        table.add_row(
            c["failure_mode"],
            c["stratum"],
            f"{c['baseline_score']:.3f}",
            f"{c['candidate_score']:.3f}",
            f"{c['drop_points']:+.1f} [{low:+.1f}, {high:+.1f}]",
            f"{c['p_value']:.3g} ({adjusted})",
            str(c["paired"]),
            "-" if aa is None else f"{aa:+.1f}",
            _verdict(c),
        )
    table.caption = (
        "drop = baseline - candidate (positive: worse); blocks when the one-sided paired test rejects at "
        f"family-wise alpha {decision['alpha']:g} (Holm) and the drop is at least "
        f"{decision['rule']['min_drop_points']:g} point(s); cells gate from {decision['rule']['min_cell']} examples; "
        + (
            "A/A drop = the baseline model against its own previous run: the noise floor"
            if noise
            else "A/A drop: the baseline model has no earlier comparable run, so no noise floor"
        )
    )
    return table


class _HistoryEntry(TypedDict):
    ts: float
    model: str
    set: str
    scores: dict[str, ScoreRow]


def history_table(rows: list[ScoreRow], stratum: str) -> Table:
    """One line per run, one column per failure mode that any run scored."""
    by_run: dict[str, _HistoryEntry] = {}
    for row in rows:
        entry = by_run.setdefault(
            row["run_id"], {"ts": row["ts"], "model": row["model"], "set": row["set_version"], "scores": {}}
        )
        entry["scores"][row["failure_mode"]] = row
    modes = [m.name for m in FAILURE_MODES if any(m.name in e["scores"] for e in by_run.values())]
    table = Table(title=f"sentinel history ({len(by_run)} runs, stratum {stratum})")
    for column in ("time (UTC)", "model", "set", *modes):
        table.add_column(column)
    for entry in by_run.values():
        cells = []
        for mode in modes:
            scored = entry["scores"].get(mode)
            cells.append(fmt(scored["score"], scored["lower"], scored["upper"]) if scored else "-")
        when = datetime.fromtimestamp(entry["ts"], UTC).strftime("%Y-%m-%d %H:%M")
        table.add_row(when, entry["model"], entry["set"], *cells)
    return table
