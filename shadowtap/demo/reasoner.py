"""How the demo's SIMULATED models answer the sentinel's reasoning probes (`sentinel build --probes
reasoning`): by working each templated question out from its own text, as a model that reasons would.
The primary gets them right; the candidate falls for one classic fallacy (affirming the consequent:
from "if A then B" and "B" it concludes "A") on some if-then chains and stops a step short on some word
problems, the planted reasoning regression the sentinel's `reasoning_correct` mode should find.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["Slip", "solve"]

# slip(kind, question) -> whether the model makes its planted mistake on this probe
Slip = Callable[[str, str], bool]

_RULE = re.compile(r"If (?P<cause>[^,]+), then (?P<effect>[^.]+)\.")
_IF_THEN = re.compile(r"We know that (?P<fact>[^.]+)\. Does it follow that (?P<asked>[^?]+)\?")
_PREMISE = re.compile(r"(?P<q>All|Some|No) (?P<a>\w+) are (?P<b>\w+)\.")
_CONCLUSION = re.compile(r"Must it be true that (?P<q>all|some|no) (?P<a>\w+) are (?P<b>\w+)\?")
_MARBLES = re.compile(
    r"has (?P<start>\d+) marbles, buys (?P<boxes>\d+) boxes of (?P<per_box>\d+) marbles each, then gives "
    r"(?P<given>\d+) marbles away\..* among (?P<friends>\d+) friends"
)
_TALLER = re.compile(r"(?P<tall>\w+) is taller than (?P<short>\w+)\.")
_WHO = re.compile(r"Who is the (?P<asked>tallest|shortest)\?")


def _never(kind: str, question: str) -> bool:
    return False


def solve(question: str, slip: Slip = _never) -> str | None:
    """The answer (working, then the final answer alone on the last line), or None when the question
    is not one of the probes' forms."""
    for solver in (_if_then, _syllogism, _arithmetic, _ordering):
        answer = solver(question, slip)
        if answer is not None:
            return answer
    return None


def _if_then(question: str, slip: Slip) -> str | None:
    found = _IF_THEN.search(question)
    if found is None:
        return None
    leads_to = {rule["cause"]: rule["effect"] for rule in _RULE.finditer(question)}
    fact, asked = found["fact"], found["asked"]
    reached, event = {fact}, fact
    while event in leads_to and leads_to[event] not in reached:
        event = leads_to[event]
        reached.add(event)
    if asked in reached:
        return f"Following the rules from {fact}, we reach {asked}.\nyes"
    if slip("if_then", question):  # affirming the consequent
        return f"The rules connect {asked} with {fact}, and {fact} holds.\nyes"
    return f"The rules lead from {asked} to {fact}, not back: {fact} could have another cause.\nunknown"


def _syllogism(question: str, slip: Slip) -> str | None:
    conclusion = _CONCLUSION.search(question)
    premises = [(p["q"].lower(), p["a"], p["b"]) for p in _PREMISE.finditer(question)]
    if conclusion is None or len(premises) != 2:
        return None
    (q1, a1, b1), (q2, a2, b2) = premises
    claim = (conclusion["q"], conclusion["a"], conclusion["b"])
    follows = (
        (q1, q2) == ("all", "all") and b1 == a2 and claim == ("all", a1, b2)  # Barbara
    ) or (
        (q1, q2) == ("no", "all") and b1 == b2 and claim == ("no", a2, a1)  # Camestres
    )
    return f"From the two premises, {' '.join(claim)} {'must' if follows else 'need not'} hold.\n" + (
        "yes" if follows else "no"
    )


def _arithmetic(question: str, slip: Slip) -> str | None:
    found = _MARBLES.search(question)
    if found is None:
        return None
    start, boxes, per_box, given, friends = (
        int(found[k]) for k in ("start", "boxes", "per_box", "given", "friends")
    )
    left = start + boxes * per_box - given
    if slip("arithmetic", question):  # stops before the last step: the marbles left, not each share
        return f"{start} + {boxes} x {per_box} - {given} = {left}.\n{left}"
    return f"{start} + {boxes} x {per_box} - {given} = {left}; shared by {friends}: {left // friends}.\n{left // friends}"


def _ordering(question: str, slip: Slip) -> str | None:
    asked = _WHO.search(question)
    pairs = [(p["tall"], p["short"]) for p in _TALLER.finditer(question)]
    if asked is None or not pairs:
        return None
    taller = {tall for tall, _ in pairs}
    shorter = {short for _, short in pairs}
    names = (taller - shorter) if asked["asked"] == "tallest" else (shorter - taller)
    if len(names) != 1:
        return None
    (name,) = names
    return f"Chaining the comparisons, {name} is the {asked['asked']}.\n{name}"
