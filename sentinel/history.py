"""Run history in a local SQLite file: every run record, its scores as rows, and every gate decision.

One file, no server, readable with the `sqlite3` shell: `runs` (one row per run, the whole record as
JSON), `scores` (one row per run × failure mode × stratum), `gates`, and `pins` (each model's pinned
baseline run, `sentinel pin`). The plot is drawn with
matplotlib's Agg canvas (no display, no global pyplot state).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

if TYPE_CHECKING:
    from shadowtap.sentinel.gate import GateDecision
    from shadowtap.sentinel.run import RunRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    set_version TEXT NOT NULL,
    model TEXT NOT NULL,
    target TEXT NOT NULL,
    scorer_config_hash TEXT NOT NULL,
    judge_model TEXT,
    prompt_template_hash TEXT,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_model ON runs (model, set_version, ts);
CREATE TABLE IF NOT EXISTS scores (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    failure_mode TEXT NOT NULL,
    stratum TEXT NOT NULL,
    kind TEXT NOT NULL,
    score REAL NOT NULL,
    count INTEGER NOT NULL,
    lower REAL,
    upper REAL,
    PRIMARY KEY (run_id, failure_mode, stratum)
);
CREATE TABLE IF NOT EXISTS gates (
    gate_id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    set_version TEXT NOT NULL,
    baseline_run TEXT NOT NULL,
    candidate_run TEXT NOT NULL,
    regressed INTEGER NOT NULL,
    result TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pins (
    model TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    ts REAL NOT NULL
);
"""


class ScoreRow(TypedDict):
    """A row of `scores` joined with its run: one failure mode on one stratum at one run."""

    run_id: str
    ts: float
    model: str
    set_version: str
    failure_mode: str
    stratum: str
    kind: str
    score: float
    count: int
    lower: float | None
    upper: float | None


def read_run(text: str) -> RunRecord:
    """A run record from its JSON (as `add_run` stores it, or `sentinel run --output` writes it)."""
    return cast("RunRecord", json.loads(text))


def _gate(text: str) -> GateDecision:
    return cast("GateDecision", json.loads(text))  # written by `add_gate` from a GateDecision


class History:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=30)) as db:
            db.row_factory = sqlite3.Row
            with db:
                yield db

    # -- writing ------------------------------------------------------------------------------------

    def add_run(self, record: RunRecord) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record["run_id"],
                    record["ts"],
                    record["set_version"],
                    record["model"],
                    record["target"],
                    record["scorer_config_hash"],
                    record.get("judge_model"),
                    record.get("prompt_template_hash"),
                    json.dumps(record, ensure_ascii=False),
                ),
            )
            db.executemany(
                "INSERT INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        record["run_id"],
                        r["failure_mode"],
                        r["stratum"],
                        r["kind"],
                        r["score"],
                        r["count"],
                        r["lower"],
                        r["upper"],
                    )
                    for r in record["results"]
                ],
            )

    def add_gate(self, decision: GateDecision) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO gates (ts, set_version, baseline_run, candidate_run, regressed, result) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    decision["ts"],
                    decision["set_version"],
                    decision["baseline_run"],
                    decision["candidate_run"],
                    int(bool(decision["regressions"])),
                    json.dumps(decision, ensure_ascii=False),
                ),
            )

    def pin(self, model: str, run_id: str) -> None:
        """Name `run_id` as `model`'s baseline (replacing an earlier pin)."""
        with self._connect() as db:
            db.execute(
                "INSERT INTO pins VALUES (?, ?, ?) ON CONFLICT (model) DO UPDATE SET run_id = excluded.run_id, "
                "ts = excluded.ts",
                (model, run_id, time.time()),
            )

    # -- reading ------------------------------------------------------------------------------------

    def pinned(self, model: str) -> RunRecord | None:
        """`model`'s pinned baseline run, or None."""
        with self._connect() as db:
            row = db.execute(
                "SELECT r.record FROM pins p JOIN runs r USING (run_id) WHERE p.model = ?", (model,)
            ).fetchone()
        return read_run(row["record"]) if row else None

    def latest_run_before(self, model: str, set_version: str, ts: float) -> RunRecord | None:
        """The latest run of `model` on `set_version` that started before `ts`."""
        with self._connect() as db:
            row = db.execute(
                "SELECT record FROM runs WHERE model = ? AND set_version = ? AND ts < ? ORDER BY ts DESC LIMIT 1",
                (model, set_version, ts),
            ).fetchone()
        return read_run(row["record"]) if row else None

    def run(self, run_id: str) -> RunRecord | None:
        with self._connect() as db:
            row = db.execute("SELECT record FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return read_run(row["record"]) if row else None

    def latest_run(self, model: str, set_version: str | None = None) -> RunRecord | None:
        query = "SELECT record FROM runs WHERE model = ?"
        args: list[Any] = [model]
        if set_version is not None:
            query += " AND set_version = ?"
            args.append(set_version)
        with self._connect() as db:
            row = db.execute(query + " ORDER BY ts DESC LIMIT 1", args).fetchone()
        return read_run(row["record"]) if row else None

    def latest_runs(self) -> list[RunRecord]:
        """The newest run of each (set version, model)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT record FROM runs r WHERE ts = (SELECT MAX(ts) FROM runs s "
                "WHERE s.model = r.model AND s.set_version = r.set_version) ORDER BY ts"
            ).fetchall()
        return [read_run(row["record"]) for row in rows]

    def latest_gates(self) -> list[GateDecision]:
        """The newest gate decision of each set version."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT result FROM gates g WHERE gate_id = (SELECT MAX(gate_id) FROM gates h "
                "WHERE h.set_version = g.set_version) ORDER BY gate_id"
            ).fetchall()
        return [_gate(row["result"]) for row in rows]

    def scores(
        self,
        *,
        stratum: str | None = "all",
        model: str | None = None,
        set_version: str | None = None,
        failure_mode: str | None = None,
    ) -> list[ScoreRow]:
        """Score rows joined with their run, oldest first."""
        query = (
            "SELECT r.run_id, r.ts, r.model, r.set_version, s.failure_mode, s.stratum, s.kind, s.score, "
            "s.count, s.lower, s.upper FROM scores s JOIN runs r USING (run_id) WHERE 1=1"
        )
        args: list[Any] = []
        for column, value in (
            ("s.stratum", stratum),
            ("r.model", model),
            ("r.set_version", set_version),
            ("s.failure_mode", failure_mode),
        ):
            if value is not None:
                query += f" AND {column} = ?"
                args.append(value)
        with self._connect() as db:
            found = db.execute(query + " ORDER BY r.ts, s.failure_mode, s.stratum", args)
            return [cast(ScoreRow, dict(row)) for row in found]  # the columns selected above

    def count_runs(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])


def plot_history(rows: list[ScoreRow], path: str | Path, *, title: str = "shadowtap sentinel") -> Path:
    """One panel per failure mode: score over time, a line per (model, set version), 95% band shaded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("no runs to plot")
    modes = sorted({r["failure_mode"] for r in rows})
    figure = Figure(figsize=(10, 2.6 * len(modes) + 0.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(modes), 1, sharex=True, squeeze=False)[:, 0]
    for ax, mode in zip(axes, modes, strict=True):
        series: dict[tuple[str, str], list[ScoreRow]] = defaultdict(list)
        for r in rows:
            if r["failure_mode"] == mode:
                series[(r["model"], r["set_version"])].append(r)
        for (model, version), points in sorted(series.items()):
            when = [datetime.fromtimestamp(p["ts"], UTC) for p in points]
            score = [p["score"] for p in points]
            line = ax.plot(when, score, marker="o", label=f"{model} (set {version[:8]})")[0]
            low = [p["lower"] if p["lower"] is not None else p["score"] for p in points]
            high = [p["upper"] if p["upper"] is not None else p["score"] for p in points]
            ax.fill_between(when, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
        kind = next(r["kind"] for r in rows if r["failure_mode"] == mode)
        ax.set_ylabel(mode)
        ax.set_ylim(-0.02 if kind == "rate" else -1.05, 1.02 if kind == "rate" else 1.05)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower left", fontsize="small")
    # matplotlib leaves these two constructors unannotated (its other calls here are typed).
    locator = AutoDateLocator()  # type: ignore[no-untyped-call]
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    strata = sorted({r["stratum"] for r in rows})
    figure.suptitle(f"{title} (stratum: {', '.join(strata)})")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png", dpi=100)
    return target
