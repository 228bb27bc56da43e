"""The demo's simulated models on the sentinel's reasoning probes: the primary works each one out; the
candidate makes the planted mistakes, and only those."""

from __future__ import annotations

from collections import Counter

from shadowtap.demo.scripted import CANDIDATE_REASONING_SLIP_RATES, candidate_policy, primary_policy
from shadowtap.sentinel.probes import probe_rows

ROUTE = "/v1/chat/completions"


def final_answers(policy, rows) -> list[tuple[str, str, str]]:
    """(kind, the answer's last line, the expected answer) per probe."""
    out = []
    for row in rows:
        reply = policy(ROUTE, {"model": "m", "messages": row["request"]["messages"]})
        out.append((row["stratum"], reply.text.strip().splitlines()[-1], row["expected"]))
    return out


def test_the_primary_answers_every_probe_right_on_the_last_line():
    rows = probe_rows(200, 1234)
    answers = final_answers(primary_policy([], seed=1234), rows)
    assert [a for a in answers if a[1] != a[2]] == []
    assert {kind for kind, _, _ in answers} == {"if_then", "syllogism", "arithmetic", "ordering"}


def test_the_candidate_affirms_the_consequent_and_drops_a_step_on_a_planted_share():
    rows = probe_rows(400, 1234)
    answers = final_answers(candidate_policy([], seed=1234), rows)
    wrong = Counter(kind for kind, got, expected in answers if got != expected)
    unknowns = sum(1 for row in rows if row["stratum"] == "if_then" and row["expected"] == "unknown")
    assert set(wrong) == {"if_then", "arithmetic"}  # syllogisms and orderings stay right
    # Only the chains whose answer is "unknown" can be fallen for, and the slip says "yes" to them.
    assert all(got == "yes" for kind, got, expected in answers if kind == "if_then" and got != expected)
    assert abs(wrong["if_then"] / unknowns - CANDIDATE_REASONING_SLIP_RATES["if_then"]) < 0.15
    assert abs(wrong["arithmetic"] / 100 - CANDIDATE_REASONING_SLIP_RATES["arithmetic"]) < 0.1


def test_a_question_from_outside_the_workload_still_gets_the_default_answer():
    reply = primary_policy([], seed=1234)(
        ROUTE, {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    )
    assert reply.text  # the simulated model's generic answer, not a crash
