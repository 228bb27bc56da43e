"""The sentinel gate's error rates, by simulation through the real gate (`compare_runs`).

Synthetic run records (a set of four traffic cells with shares 0.55 / 0.25 / 0.15 / 0.05, at least 30
examples a cell, the rest by traffic) are gated with the default settings on the default modes:
no_error (99% pass), format_pass (the instruction-following mode: 90%), not_refused (97%),
reference_match (75%, on a quarter of the examples) and judge_vs_baseline (head to head). For each kind
of outcome it prints

  - A/A: the family-wise false-block rate (any mode, any stratum blocked) when the candidate is the
    baseline model again (target <= 0.05);
  - power: how often a true 5-point drop of format_pass, in every cell, is blocked (target >= 0.8 at
    the size `sentinel build` recommends);

at the old default size (150) and at the recommended size. Outcomes are
  - fresh: each run's outcome drawn anew (answers that change completely between runs); the judge calls
    12% of differently worded answers better and 12% worse, 5% of its verdicts flip with the order;
  - correlated: 70% of examples keep the baseline's outcome, the rest are drawn anew; judge 5% / 5%;
  - deterministic: each example's outcome is fixed (temperature 0 that holds); a drop turns passes into
    fails; the answers are identical, so the judge calls them ties.

    python bench/gate_sim.py [--iterations 300] [--seed 7] [--sizes 150,recommended]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from shadowtap.config import SentinelSettings
from shadowtap.sentinel.build import allocate
from shadowtap.sentinel.decision import required_size
from shadowtap.sentinel.gate import compare_runs
from shadowtap.sentinel.run import RunRecord
from shadowtap.stats import design_effect

SHARES = {"a": 0.55, "b": 0.25, "c": 0.15, "d": 0.05}
# mode: (pass rate, share of examples it applies to)
MODES = {
    "no_error": (0.99, 1.0),
    "format_pass": (0.90, 1.0),
    "not_refused": (0.97, 1.0),
    "reference_match": (0.75, 0.25),
}
DROP_MODE = "format_pass"
DROP = 0.05
# kind: (share of examples whose outcome is redrawn, judge's win = loss rate, judge flip rate)
KINDS = {"fresh": (1.0, 0.12, 0.05), "correlated": (0.3, 0.05, 0.02), "deterministic": (0.0, 0.0, 0.0)}


@dataclass(frozen=True)
class Design:
    strata: list[str]  # one per example

    @property
    def size(self) -> int:
        return len(self.strata)


def design(size: int, minimum: int = 30) -> Design:
    quota = allocate(size, minimum, {k: 10**6 for k in SHARES}, SHARES)
    return Design([k for k in SHARES for _ in range(quota[k])])


def recommended(settings: SentinelSettings) -> int:
    """The size `sentinel build` states for this set's strata (found by fixed point: the design effect
    depends on the allocation, which depends on the size)."""
    size = 150
    for _ in range(20):
        counts = {
            k: float(n) for k, n in zip(*np.unique(design(size).strata, return_counts=True), strict=True)
        }
        needed = required_size(
            settings.threshold_points,
            alpha=settings.alpha,
            power=settings.power,
            discordance=settings.expected_discordance,
            design_effect=design_effect(SHARES, counts),
        )
        if needed == size:
            break
        size = needed
    return size


def _outcomes(rng: np.random.Generator, kind: str, n: int, drop: float) -> dict[str, tuple[Any, Any]]:
    """Per mode, (baseline, candidate) outcome arrays (nan where the mode does not apply)."""
    redraw = KINDS[kind][0]
    out = {}
    for mode, (rate, applies) in MODES.items():
        base = (rng.random(n) < rate).astype(float)
        true_drop = drop if mode == DROP_MODE else 0.0
        if kind == "deterministic" or redraw == 0:
            cand = base.copy()
            turned = (base == 1) & (rng.random(n) < true_drop / rate)
            cand[turned] = 0.0
        else:
            fresh = (rng.random(n) < rate - true_drop).astype(float)
            keep = rng.random(n) >= redraw
            # Kept outcomes carry the drop too: a kept pass fails with the same chance.
            kept = base.copy()
            kept[(kept == 1) & (rng.random(n) < true_drop / rate)] = 0.0
            cand = np.where(keep, kept, fresh)
        missing = rng.random(n) >= applies
        base[missing] = np.nan
        cand[missing] = np.nan
        out[mode] = (base, cand)
    return out


def _judge(rng: np.random.Generator, kind: str, n: int) -> tuple[Any, int]:
    _redraw, rate, flips = KINDS[kind]
    u = rng.random(n)
    values = np.where(u < rate, 1.0, np.where(u < 2 * rate, -1.0, 0.0))
    flipped = rng.random(n) < flips
    values[flipped] = np.nan
    return values, int(flipped.sum())


def _run(run_id: str, strata: list[str], outcomes: dict[str, Any], judge: dict[str, Any] | None) -> RunRecord:
    examples = []
    for i, stratum in enumerate(strata):
        values = {m: (None if np.isnan(v[i]) else float(v[i])) for m, v in outcomes.items()}
        examples.append(
            {"id": f"e{i}", "stratum": stratum, "outcomes": values, "answer": "", "segment": stratum}
        )
    record = {
        "run_id": run_id,
        "model": run_id,
        "set_version": "sim",
        "scorer_config_hash": "sim",
        "replay": {"temperature": 0, "seed": 1234, "max_tokens": None},
        "weights": SHARES,
        "examples": examples,
        "results": [],
        "head_to_head": judge,
    }
    return cast(RunRecord, record)  # the keys the gate reads


def one_trial(
    rng: np.random.Generator, kind: str, plan: Design, drop: float, settings: SentinelSettings
) -> set[str]:
    """The modes the gate blocked on in one simulated baseline/candidate pair."""
    n = plan.size
    outcomes = _outcomes(rng, kind, n, drop)
    judged, flips = _judge(rng, kind, n)
    baseline = _run("base", plan.strata, {m: b for m, (b, _c) in outcomes.items()}, None)
    cand_values = {m: c for m, (_b, c) in outcomes.items()} | {"judge_vs_baseline": judged}
    summary = {"baseline_run": "base", "flagged": flips / n > settings.judge_max_flip_share, "judged": n}
    candidate = _run("cand", plan.strata, cand_values, summary)
    decision = compare_runs(baseline, candidate, settings)
    return {r["failure_mode"] for r in decision["regressions"]}


def blocked_share(trials: int, hit: Callable[[], bool]) -> float:
    return sum(hit() for _ in range(trials)) / trials


def row(
    rng: np.random.Generator, kind: str, plan: Design, settings: SentinelSettings, trials: int
) -> tuple[float, float]:
    """(A/A family-wise false-block rate, power for the 5-point drop) for one kind of outcome and size."""
    aa = blocked_share(trials, lambda: bool(one_trial(rng, kind, plan, 0.0, settings)))
    power = blocked_share(trials, lambda: DROP_MODE in one_trial(rng, kind, plan, DROP, settings))
    return aa, power


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300, help="simulated gates per cell of the table")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sizes", default="150,recommended", help="set sizes, comma-separated")
    parser.add_argument("--kinds", default=",".join(KINDS), help="outcome kinds, comma-separated")
    args = parser.parse_args(argv)
    settings = SentinelSettings()
    rec = recommended(settings)
    sizes = [rec if s == "recommended" else int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    print(
        f"sentinel gate simulation: {args.iterations} gates per row, alpha {settings.alpha}, "
        f"power target {settings.power}, recommended size {rec} "
        f"(threshold {settings.threshold_points:g} points, discordance {settings.expected_discordance})"
    )
    print(
        f"{'outcomes':<14}{'size':>6}  {'A/A false-block (<= 0.05)':>26}  {'power, 5-pt drop (>= 0.8)':>26}"
    )
    ok = True
    for kind in args.kinds.split(","):
        for size in sizes:
            plan = design(size)
            aa, power = row(rng, kind, plan, settings, args.iterations)
            se_aa = (aa * (1 - aa) / args.iterations) ** 0.5
            se_power = (power * (1 - power) / args.iterations) ** 0.5
            print(f"{kind:<14}{plan.size:>6}  {aa:>18.3f} ± {se_aa:.3f}  {power:>18.3f} ± {se_power:.3f}")
            if size == rec:
                ok = ok and aa <= 0.05 + 2 * se_aa and power >= 0.8 - 2 * se_power
    print(f"({time.perf_counter() - started:.1f}s; ± one standard error of the simulation)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
