"""The demo's traffic: a seeded, realistic mix of what a telecom support assistant sees (billing,
troubleshooting, engineer visits booked with a tool, order emails to extract into JSON, off-topic asks),
each request with the answer a good model gives. The questions and answers themselves are in `content`; the scripted models that answer
them in `scripted`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from shadowtap.demo.content import (
    FAULTS,
    SLOTS,
    billing,
    engineer_visit,
    order_email,
    out_of_scope,
    troubleshooting,
)

__all__ = ["BOOKING_TOOL", "ORDER_SCHEMA", "RESPONSE_FORMAT", "SEGMENTS", "WorkItem", "build_workload"]

SEGMENTS = ("billing", "troubleshooting", "bookings", "extraction", "out_of_scope")
MIX = {"billing": 0.25, "troubleshooting": 0.20, "bookings": 0.20, "extraction": 0.20, "out_of_scope": 0.15}
STREAMED_SHARE = {
    "billing": 0.4,
    "troubleshooting": 0.6,
    "bookings": 0.3,
    "extraction": 0.0,
    "out_of_scope": 0.3,
}
LONG_SHARE = {"billing": 0.2, "troubleshooting": 0.3, "bookings": 0.0, "extraction": 0.4, "out_of_scope": 0.0}

SUPPORT_SYSTEM = (
    "You are Northwind's customer support assistant. Help customers with their Northwind account, bills, "
    "payments, devices, broadband and mobile service. Be accurate and brief. Politely decline anything "
    "unrelated to Northwind."
)
EXTRACTION_SYSTEM = (
    "You read customer emails sent to the Northwind orders desk and extract the request as JSON that "
    "matches the given schema exactly. Use only information in the email."
)

ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "customer_name": {"type": "string", "minLength": 1},
        "order_id": {"type": "string", "pattern": "^NW-[0-9]{6}$"},
        "action": {"type": "string", "enum": ["refund", "exchange", "cancel", "status", "address_change"]},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}},
                "required": ["sku", "quantity"],
                "additionalProperties": False,
            },
        },
        "urgent": {"type": "boolean"},
    },
    "required": ["customer_name", "order_id", "action", "items", "urgent"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "order_request", "schema": ORDER_SCHEMA, "strict": True},
}
# The tool the bookings segment's requests offer, in OpenAI's strict mode: every property required,
# none beyond them.
BOOKING_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "book_engineer_visit",
        "description": "Book an engineer visit for a fault on the customer's line.",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {
                "account_id": {"type": "string", "pattern": "^NW[0-9]{8}$"},
                "fault": {"type": "string", "enum": list(FAULTS)},
                "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
                "slot": {"type": "string", "enum": list(SLOTS)},
                "notify_by_sms": {"type": "boolean"},
            },
            "required": ["account_id", "fault", "date", "slot", "notify_by_sms"],
            "additionalProperties": False,
        },
    },
}


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One request of the workload, and the answer a good model gives to it."""

    segment: str
    messages: tuple[dict[str, str], ...]
    answer: str
    stream: bool
    customer: str
    response_format: dict[str, Any] | None = None
    # The tools the request offers; a good model answers with a call (`answer` holds its arguments).
    tools: tuple[dict[str, Any], ...] = ()
    # What the answer was made from (the order in the email, the off-topic subject, the booking's
    # arguments), for the candidate.
    facts: dict[str, Any] | None = None

    @property
    def question(self) -> str:
        return self.messages[-1]["content"]


def _item(rng: random.Random, segment: str) -> WorkItem:
    """One request of `segment`; the draws from `rng` are in the order the workload has always made them."""
    long = rng.random() < LONG_SHARE[segment]
    stream = rng.random() < STREAMED_SHARE[segment]
    customer = f"cust-{rng.randint(10000, 99999)}"
    if segment == "extraction":
        email, order = order_email(rng, long)
        messages = ({"role": "system", "content": EXTRACTION_SYSTEM}, {"role": "user", "content": email})
        return WorkItem(segment, messages, json.dumps(order), stream, customer, RESPONSE_FORMAT, facts=order)
    facts: dict[str, Any] | None = None
    if segment == "bookings":
        question, facts = engineer_visit(rng)
        messages = ({"role": "system", "content": SUPPORT_SYSTEM}, {"role": "user", "content": question})
        return WorkItem(
            segment, messages, json.dumps(facts), stream, customer, tools=(BOOKING_TOOL,), facts=facts
        )
    if segment == "out_of_scope":
        question, answer, facts = out_of_scope(rng)
    else:
        make = billing if segment == "billing" else troubleshooting
        question, answer = make(rng, long)
    messages = ({"role": "system", "content": SUPPORT_SYSTEM}, {"role": "user", "content": question})
    return WorkItem(segment, messages, answer, stream, customer, facts=facts)


def build_workload(n: int, seed: int) -> list[WorkItem]:
    """`n` requests in the standard mix, shuffled, the same for the same seed."""
    rng = random.Random(seed)
    counts = {s: round(n * share) for s, share in MIX.items()}
    counts["billing"] += n - sum(counts.values())
    items = [_item(rng, segment) for segment, count in counts.items() for _ in range(count)]
    rng.shuffle(items)
    return items
