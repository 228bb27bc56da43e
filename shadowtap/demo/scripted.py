"""The demo's scripted models, all SIMULATED: the primary gives each request the answer a good model
gives; the candidate gives it with the planted differences the scorers should find; the judge compares
two answers by their content.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from typing import Any

import jsonschema

from shadowtap.demo.content import visit_day
from shadowtap.demo.reasoner import Slip, solve
from shadowtap.demo.workload import WorkItem
from shadowtap.request_text import last_user_text
from shadowtap.testing import Policy, Reply, default_policy

__all__ = [
    "CANDIDATE_BILLING_REFUSAL_RATE",
    "CANDIDATE_REASONING_SLIP_RATES",
    "CANDIDATE_SCHEMA_BREAK_RATE",
    "CANDIDATE_TOOL_BREAK_RATE",
    "candidate_policy",
    "judge_policy",
    "judge_verdict",
    "primary_policy",
]

# What the candidate gets wrong, and on what share of the segment's requests (chosen by a hash of the
# request text, so that every run with the same seed plants the same faults).
CANDIDATE_BILLING_REFUSAL_RATE = 0.30
CANDIDATE_SCHEMA_BREAK_RATE = 0.25
CANDIDATE_TOOL_BREAK_RATE = 0.30
# On the sentinel's reasoning probes: the share of if-then chains where it affirms the consequent (only
# the chains whose answer is "unknown" can go wrong), and of word problems where it drops a step.
CANDIDATE_REASONING_SLIP_RATES = {"if_then": 0.6, "arithmetic": 0.2}
# Asked a free-text question again, the primary opens this share of its answers differently.
PRIMARY_REWORDED_SHARE = 0.30
_PRIMARY_OPENERS = ("Sure. ", "Happy to help. ", "Thanks for asking. ")
_PRIMARY_REWORDED_SEGMENTS = frozenset({"billing", "troubleshooting"})  # answers, not declines or JSON


def _fraction(seed: int, text: str, purpose: str) -> float:
    """A stable number in [0, 1) for this text: the same request always gets the same treatment."""
    digest = hashlib.sha256(f"{seed}|{purpose}|{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _index(items: list[WorkItem]) -> dict[str, WorkItem]:
    return {item.question: item for item in items}


def _planted(items: list[WorkItem], segment: str, share: float, seed: int, purpose: str) -> frozenset[str]:
    """The questions of `segment` that get a planted fault: `share` of its requests, chosen by hash."""
    counts = Counter(item.question for item in items if item.segment == segment)
    wanted = round(sum(counts.values()) * share)
    chosen: set[str] = set()
    taken = 0
    for question in sorted(counts, key=lambda q: _fraction(seed, q, purpose)):
        if taken >= wanted:
            break
        chosen.add(question)
        taken += counts[question]
    return frozenset(chosen)


_OPENERS = (
    "Thanks for reaching out! I'd be happy to help with that. ",
    "Great question, and thanks for getting in touch. Let me walk you through it. ",
    "Thank you for contacting Northwind support! Here's what's going on. ",
)
_CLOSERS = (
    " I hope this helps! If you have any other questions about your account, don't hesitate to ask.",
    " Please let me know if there's anything else I can help you with today; I'm always happy to help.",
    " I hope that clears things up. Have a wonderful day, and thank you for being a Northwind customer!",
)
_BILLING_REFUSALS = (
    "I'm sorry, but I can't help with questions about charges or payments. Please contact the billing "
    "department through the Northwind website, where a specialist will be able to look into this for you.",
    "I'm sorry, but I'm not able to discuss billing matters or make changes to payments. For anything "
    "related to invoices, refunds or charges, please reach out to our billing team directly.",
)


def _broken_extraction(facts: dict[str, Any], pick: float) -> str:
    """The candidate's planted schema breaks: the kinds a weaker model makes on structured output."""
    doc = json.loads(json.dumps(facts))
    if pick < 0.3:
        for item in doc["items"]:
            item["quantity"] = str(item["quantity"])
    elif pick < 0.5:
        doc["action"] = {"refund": "return", "exchange": "swap", "cancel": "cancellation"}.get(
            doc["action"], "other"
        )
    elif pick < 0.7:
        del doc["urgent"]
    elif pick < 0.85:
        doc["notes"] = "Customer seems frustrated; consider a goodwill gesture."
    else:
        return "Here is the extracted information from the email:\n\n" + json.dumps(doc, indent=2)
    return json.dumps(doc, indent=2)


# How a customer says a slot, where the booking tool wants its enum.
_SLOT_WORDS = {"morning": "am", "afternoon": "pm", "evening": "after 6pm"}


def _broken_booking(name: str, facts: dict[str, Any], pick: float) -> tuple[str, str]:
    """The candidate's planted tool-call breaks, (function, arguments): what a model whose server does
    not hold it to the tool's strict schema sends."""
    doc = dict(facts)
    if pick < 0.35:
        doc["slot"] = _SLOT_WORDS[doc["slot"]]
    elif pick < 0.6:
        doc["notify_by_sms"] = "yes" if doc["notify_by_sms"] else "no"
    elif pick < 0.75:
        doc["date"] = visit_day(doc["date"])
    elif pick < 0.85:
        doc["notes"] = "Customer would like a call half an hour before the visit."
    elif pick < 0.93:
        return name, str(doc)  # a Python dict, not JSON
    else:
        return name.removesuffix("_visit"), json.dumps(doc)  # a function that was not offered
    return name, json.dumps(doc)


def _tool_name(item: WorkItem) -> str:
    return str(item.tools[0]["function"]["name"])


def _not_in_workload(
    route: str, body: dict[str, Any], worked: str | None, *, ttft_s: float, token_delay_s: float
) -> Reply:
    """A request from outside the demo's workload: a reasoning probe of the sentinel's is worked out
    (`worked`), anything else gets the simulated model's default answer."""
    if worked is None:
        return default_policy(route, body)
    return Reply(text=worked, ttft_s=ttft_s, token_delay_s=token_delay_s)


def _candidate_slip(seed: int) -> Slip:
    """Where the candidate makes its planted reasoning mistakes: a fixed share of each kind's probes."""

    def slip(kind: str, question: str) -> bool:
        rate = CANDIDATE_REASONING_SLIP_RATES.get(kind, 0.0)
        return _fraction(seed, question, f"reasoning-slip-{kind}") < rate

    return slip


def primary_policy(items: list[WorkItem], seed: int) -> Policy:
    """The production model: answers every request well, quickly; calls the tool a request offers.

    It samples, as a served model does: asked the same thing again (a noise-floor twin, a sentinel
    replay, a repeated question), it words some free-text answers differently and answers a little
    sooner or later, never differently in substance."""
    index = _index(items)
    asked: Counter[str] = Counter()

    def policy(route: str, body: dict[str, Any]) -> Reply:
        question = last_user_text(body)
        item = index.get(question)
        if item is None:
            return _not_in_workload(route, body, solve(question), ttft_s=0.10, token_delay_s=0.004)
        again = asked[item.question]
        asked[item.question] += 1
        draw = _fraction(seed, f"{item.question}|{again}", "primary-sample")
        r = _fraction(seed, item.question, "primary-speed")
        ttft_s = (0.08 + 0.12 * r) * (1.0 if again == 0 else 0.8 + 0.4 * draw)
        if item.tools:
            call = (_tool_name(item), item.answer)
            return Reply(text="", tool_calls=[call], ttft_s=ttft_s, token_delay_s=0.004)
        text = item.answer
        if again and item.segment in _PRIMARY_REWORDED_SEGMENTS and draw < PRIMARY_REWORDED_SHARE:
            text = _PRIMARY_OPENERS[int(draw * 1000) % len(_PRIMARY_OPENERS)] + text
        return Reply(text=text, ttft_s=ttft_s, token_delay_s=0.004)

    return policy


def _out_of_scope_decline(facts: dict[str, Any]) -> str:
    """The candidate's longer way of declining an off-topic request."""
    topic, elsewhere = facts["topic"], facts["elsewhere"]
    return (
        f"I'm sorry, but I'm not able to help with {topic}. As Northwind's support assistant, my "
        "scope is limited to questions about your account, billing, devices and service. I'd "
        f"recommend {elsewhere} for that. If there's anything related to your Northwind service "
        "that I can assist with, please let me know!"
    )


def _spread(questions: frozenset[str], seed: int, purpose: str) -> dict[str, float]:
    """A number in (0, 1) for each question, evenly spaced in an order chosen by hash: picking a kind
    of fault by it plants every kind in its share, however few the questions."""
    ordered = sorted(questions, key=lambda q: _fraction(seed, q, purpose))
    return {q: (rank + 0.5) / len(ordered) for rank, q in enumerate(ordered)}


def _candidate_call(item: WorkItem, pick: float | None) -> tuple[str, str]:
    """The candidate's call on a request that offers a tool: the primary's, or a planted break."""
    if pick is not None and item.facts is not None:
        return _broken_booking(_tool_name(item), item.facts, pick)
    return _tool_name(item), item.answer


def candidate_policy(items: list[WorkItem], seed: int) -> Policy:
    """The candidate: slower to first token, wordier, and with the planted regressions."""
    index = _index(items)
    refused = _planted(items, "billing", CANDIDATE_BILLING_REFUSAL_RATE, seed, "refuse")
    broken = _planted(items, "extraction", CANDIDATE_SCHEMA_BREAK_RATE, seed, "schema")
    broken_calls = _spread(
        _planted(items, "bookings", CANDIDATE_TOOL_BREAK_RATE, seed, "tool"), seed, "tool-kind"
    )

    def text_for(item: WorkItem) -> str:
        q = item.question
        if item.segment == "extraction":
            assert item.facts is not None
            if q in broken:
                return _broken_extraction(item.facts, _fraction(seed, q, "schema-kind"))
            return json.dumps(item.facts, indent=2)
        if item.segment == "out_of_scope":
            assert item.facts is not None
            return _out_of_scope_decline(item.facts)
        if item.segment == "billing" and q in refused:
            pick = int(_fraction(seed, q, "refusal-text") * len(_BILLING_REFUSALS))
            return _BILLING_REFUSALS[pick]
        pick = int(_fraction(seed, q, "padding") * len(_OPENERS))
        return _OPENERS[pick] + item.answer + _CLOSERS[pick]

    slip = _candidate_slip(seed)

    def policy(route: str, body: dict[str, Any]) -> Reply:
        question = last_user_text(body)
        item = index.get(question)
        if item is None:
            return _not_in_workload(route, body, solve(question, slip), ttft_s=0.30, token_delay_s=0.008)
        ttft_s = 0.30 + 0.30 * _fraction(seed, item.question, "candidate-speed")
        if item.tools:
            call = _candidate_call(item, broken_calls.get(item.question))
            return Reply(text="", tool_calls=[call], ttft_s=ttft_s, token_delay_s=0.008)
        return Reply(text=text_for(item), ttft_s=ttft_s, token_delay_s=0.008)

    return policy


_SECTION = r"\[The Start of {name}\]\n(?P<body>.*?)\n\[The End of {name}\]"
_REFUSAL_OPENING = re.compile(
    r"\A\W*(?:I'?m sorry,? but|I am sorry,? but|sorry,? (?:but )?I|I (?:can(?:no|')t|am unable|'m unable|"
    r"'m not able|am not able))",
    re.IGNORECASE,
)
_REQUIRED_FORMAT = re.compile(r"\[required response format: (?P<format>.*)\]\s*\Z", re.DOTALL)
# The judge's prompt lists the tools on offer one a line, and shows each call an answer makes.
_OFFERED_TOOL = re.compile(r"^- (?P<name>\w+): .*? parameters (?P<schema>\{.*\})$", re.MULTILINE)
_TOOL_CALL = re.compile(r"^\[tool call: (?P<name>[^(]*)\((?P<arguments>.*)\)\]$", re.MULTILINE)
# An answer this many times longer than the other, saying no more, loses on conciseness.
VERBOSE_RATIO = 2.0


def _section(prompt: str, name: str) -> str:
    found = re.search(_SECTION.format(name=re.escape(name)), prompt, re.DOTALL)
    return found.group("body") if found else ""


def _format_problem(answer: str, fmt: dict[str, Any] | None) -> str | None:
    if fmt is None:
        return None
    try:
        document = json.loads(answer)
    except json.JSONDecodeError:
        return "is not the JSON that was asked for"
    schema = (fmt.get("json_schema") or {}).get("schema")
    if schema:
        error = next(jsonschema.Draft202012Validator(schema).iter_errors(document), None)
        if error is not None:
            return f"does not match the required schema ({error.message[:80]})"
    return None


def _offered_tools(request: str) -> dict[str, dict[str, Any]]:
    """The parameters schema of each tool the request offers (a line cut short is left out)."""
    tools = {}
    for found in _OFFERED_TOOL.finditer(request):
        try:
            tools[found.group("name")] = json.loads(found.group("schema"))
        except json.JSONDecodeError:
            continue
    return tools


def _tool_problem(answer: str, tools: dict[str, dict[str, Any]]) -> str | None:
    """What is wrong with the first call in `answer` that the offered tools do not allow."""
    for call in _TOOL_CALL.finditer(answer):
        name = call.group("name")
        if name not in tools:
            return f"calls {name}, which the request does not offer"
        try:
            arguments = json.loads(call.group("arguments"))
        except json.JSONDecodeError:
            return f"calls {name} with arguments that are not JSON"
        error = next(jsonschema.Draft202012Validator(tools[name]).iter_errors(arguments), None)
        if error is not None:
            return f"calls {name} with arguments that break its schema ({error.message[:80]})"
    return None


def _required_format(request: str) -> dict[str, Any] | None:
    found = _REQUIRED_FORMAT.search(request)
    if not found:
        return None
    try:
        fmt = json.loads(found.group("format"))
    except json.JSONDecodeError:
        return None
    return fmt if isinstance(fmt, dict) else None


def judge_verdict(prompt: str) -> dict[str, str]:
    """Which answer serves the request better, decided from the answers' content only."""
    request = _section(prompt, "Request")
    answers = {"A": _section(prompt, "Answer A"), "B": _section(prompt, "Answer B")}
    fmt, tools = _required_format(request), _offered_tools(request)
    problems = {
        label: _format_problem(text, fmt) or _tool_problem(text, tools) for label, text in answers.items()
    }
    if bool(problems["A"]) != bool(problems["B"]):
        loser = "A" if problems["A"] else "B"
        winner = "B" if loser == "A" else "A"
        return {"winner": winner, "reason": f"Answer {loser} {problems[loser]}; answer {winner} is valid."}
    refused = {label: bool(_REFUSAL_OPENING.match(text)) for label, text in answers.items()}
    if refused["A"] != refused["B"]:
        loser = "A" if refused["A"] else "B"
        winner = "B" if loser == "A" else "A"
        return {
            "winner": winner,
            "reason": f"Answer {loser} declines a request that answer {winner} handles correctly.",
        }
    length = {label: max(1, len(text)) for label, text in answers.items()}
    longer, shorter = ("A", "B") if length["A"] > length["B"] else ("B", "A")
    if length[longer] / length[shorter] >= VERBOSE_RATIO:
        return {"winner": shorter, "reason": f"Both are correct; answer {longer} pads it with filler."}
    return {"winner": "tie", "reason": "Both answers are equally correct and helpful."}


def judge_policy() -> Policy:
    """A stand-in for an LLM judge: valid format and tool calls beat invalid ones, answering beats
    refusing, concise wins."""

    def policy(route: str, body: dict[str, Any]) -> Reply:
        messages = body.get("messages") or []
        prompt = next(
            (m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"), ""
        )
        return Reply(text=json.dumps(judge_verdict(prompt or "")), ttft_s=0.005)

    return policy
