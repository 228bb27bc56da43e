"""Generated reasoning probes: inferences whose answers are known by construction, in a versioned set.

Shadow traffic has no answer key, so reasoning errors cannot be told from it (only the judge has an
opinion). These probes can: each is built from a seed with its answer, and graded by exact match
(`reference_match`, feeding the `reasoning_correct` failure mode). Four kinds, one stratum each, equal
weights: if-then chains (modus ponens, and affirming the consequent, whose answer is "unknown"),
syllogisms with valid and invalid conclusions over made-up words (no world knowledge helps), multi-step
arithmetic word problems, and ordering puzzles. The same (generator version, size, seed) always gives
the same set, so the same version.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from shadowtap.records import utc_now_rfc3339
from shadowtap.sentinel.sets import Cell, ManifestBody, SentinelSet, SetRow, write_set

__all__ = ["GENERATOR", "KINDS", "build_probe_set", "probe_rows"]

GENERATOR = "shadowtap.reasoning_probes/v1"
INSTRUCTION = "Reason it through if you like, then give the final answer alone on the last line."
ROUTE = "/v1/chat/completions"
WORDS = [
    "wug", "dax", "blicket", "fep", "toma", "zorp", "kiki", "bouba", "glorp", "snib", "yarn", "quell",
    "mip", "vosk", "trel", "plim",
]  # fmt: skip
NAMES = ["Ava", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kit", "Lior"]
EVENTS = [
    "the bell rings", "the lamp is on", "the gate opens", "the pump starts", "the flag is raised",
    "the door locks", "the fan spins", "the alarm sounds", "the light turns green", "the valve closes",
]  # fmt: skip

Probe = tuple[str, str, str]  # (question, expected answer, match method)


def _if_then(rng: random.Random) -> Probe:
    steps = rng.randint(2, 5)
    events = rng.sample(EVENTS, steps + 1)
    rules = [f"If {events[i]}, then {events[i + 1]}." for i in range(steps)]
    rng.shuffle(rules)
    if rng.random() < 0.5:
        fact, asked, answer = events[0], events[-1], "yes"
    else:  # affirming the consequent: the last event happened; did the first?
        fact, asked, answer = events[-1], events[0], "unknown"
    question = (
        f"{' '.join(rules)} We know that {fact}. Does it follow that {asked}? Answer yes, no, or unknown."
    )
    return question, answer, "last_line"


def _plural(word: str) -> str:
    return word + "s"


def _syllogism(rng: random.Random) -> Probe:
    a, b, c = (_plural(w) for w in rng.sample(WORDS, 3))
    form = rng.randrange(4)
    if form == 0:
        premises, conclusion, answer = f"All {a} are {b}. All {b} are {c}.", f"all {a} are {c}", "yes"
    elif form == 1:
        premises, conclusion, answer = f"All {a} are {b}. Some {b} are {c}.", f"some {a} are {c}", "no"
    elif form == 2:
        premises, conclusion, answer = f"No {a} are {b}. All {c} are {b}.", f"no {c} are {a}", "yes"
    else:
        premises, conclusion, answer = f"All {a} are {b}. All {c} are {b}.", f"all {a} are {c}", "no"
    question = f"{premises} Must it be true that {conclusion}? Answer yes or no."
    return question, answer, "last_line"


def _arithmetic(rng: random.Random) -> Probe:
    name = rng.choice(NAMES)
    start, boxes, per_box, given, friends = (
        rng.randint(3, 40),
        rng.randint(2, 9),
        rng.randint(3, 12),
        rng.randint(1, 10),
        rng.randint(2, 4),
    )
    total = start + boxes * per_box - given
    total -= total % friends  # so the share is whole
    start = total - boxes * per_box + given
    if start < 0:
        start, total = start + friends * 10, total + friends * 10
    share = total // friends
    question = (
        f"{name} has {start} marbles, buys {boxes} boxes of {per_box} marbles each, then gives {given} "
        f"marbles away. {name} shares the rest equally among {friends} friends. How many marbles does each "
        "friend get? Answer with a number."
    )
    return question, str(share), "numeric"


def _ordering(rng: random.Random) -> Probe:
    people = rng.sample(NAMES, rng.randint(3, 6))  # tallest first
    facts = [f"{people[i]} is taller than {people[i + 1]}." for i in range(len(people) - 1)]
    rng.shuffle(facts)
    if rng.random() < 0.5:
        asked, answer = "shortest", people[-1]
    else:
        asked, answer = "tallest", people[0]
    question = f"{' '.join(facts)} Who is the {asked}? Answer with a name."
    return question, answer, "last_line"


KINDS: dict[str, Callable[[random.Random], Probe]] = {
    "if_then": _if_then,
    "syllogism": _syllogism,
    "arithmetic": _arithmetic,
    "ordering": _ordering,
}


def probe_rows(size: int, seed: int) -> list[SetRow]:
    """`size` probes (shared out evenly over the kinds), each with its known answer."""
    if size < len(KINDS):
        raise ValueError(f"a probe set needs at least {len(KINDS)} examples (one per kind), got {size}")
    rows: list[SetRow] = []
    for k, (kind, make) in enumerate(KINDS.items()):
        rng = random.Random(f"{GENERATOR}:{seed}:{kind}")
        count = size // len(KINDS) + (1 if k < size % len(KINDS) else 0)
        for i in range(count):
            question, answer, method = make(rng)
            rows.append(
                {
                    "id": f"reasoning-{kind}-{seed}-{i:04d}",
                    "stratum": kind,
                    "strata": {"probe": kind},
                    "tags": {"segment": "reasoning", "probe": kind},
                    "ts": None,
                    "route": ROUTE,
                    "request": {
                        "messages": [
                            {"role": "system", "content": INSTRUCTION},
                            {"role": "user", "content": question},
                        ]
                    },
                    "reference": answer,
                    "reference_model": None,
                    "expected": answer,
                    "match": method,
                    "probe": kind,
                }
            )
    return rows


def build_probe_set(
    size: int, seed: int, *, sets_dir: Path, out: Path | None = None
) -> tuple[SentinelSet, bool]:
    """Generate and write a reasoning probe set (equal traffic shares per kind); (the set, created)."""
    rows = probe_rows(size, seed)
    counts = {kind: sum(1 for r in rows if r["stratum"] == kind) for kind in KINDS}
    cells: dict[str, Cell] = {
        kind: {
            "values": {"probe": kind},
            "traffic": n,
            "traffic_share": round(1 / len(KINDS), 6),
            "available": n,
            "sampled": n,
        }
        for kind, n in counts.items()
    }
    body: ManifestBody = {
        "created_at": utc_now_rfc3339(),
        "source": {"kind": "probes", "generator": GENERATOR, "size": size, "seed": seed},
        "parent": None,
        "strata": {"axes": ["probe"], "cells": cells, "traffic_total": len(rows)},
        "size": len(rows),
        "labelled": len(rows),
        "short_cells": [],
        "sampling": {"size": size, "seed": seed, "generator": GENERATOR},
    }
    return write_set(rows, body, out=out, sets_dir=sets_dir)
