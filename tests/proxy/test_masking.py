"""What gets masked before a pair is written, and what must survive it.

Records are sent to the judge and replayed by the drift sentinel, so personal data must not reach them,
and nothing else may be changed: a timestamp masked as a phone number corrupts the example it is in.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest

from shadowtap.config import PiiSettings
from shadowtap.proxy import redact
from shadowtap.proxy.redact import Redactor

pytestmark = pytest.mark.unit

LOOK_ALIKES = [
    # ISO 8601, with and without zones and fractions
    "2026-05-01T10:30:00",
    "2026-05-01T10:30:00Z",
    "2026-05-01T10:30:00.123Z",
    "2026-05-01T10:30:00.123456+02:00",
    "2026-05-01T10:30:00-07:00",
    "2026-05-01T10:30:00+0530",
    "20260501T103000Z",
    "2026-W18-5",
    "2026-121",
    # other date-times, dates and times
    "2026-05-01 10:30:00",
    "2026-05-01 10:30:00.123",
    "2026-05-01 10:30",
    "2026/05/01 10:30:00",
    "01.05.2026",
    "01.05.2026 10:30",
    "31-12-2026 23:59:59",
    "05/31/2026 10:30 AM",
    "10:30:00.123",
    "10:30:00",
    "23:59",
    # RFC 2822
    "Fri, 01 May 2026 10:30:00 +0000",
    "Fri, 1 May 2026 10:30:00 -0700 (PDT)",
    "Thu, 30 Apr 2026 23:59:59 GMT",
    # Unix timestamps, seconds and milliseconds
    "1714559400",
    "1714559400123",
    "1714559400.123",
    "ts=1714559400",
    "@1714559400",
    # UUIDs
    "123e4567-e89b-12d3-a456-426614174000",
    "550e8400-e29b-41d4-a716-446655440000",
    "12345678-1234-5678-1234-567812345678",
    # versions
    "1.2.3",
    "v1.2.3",
    "v2.10.0-rc.1+build.123",
    "10.0.19045.3803",
    "Python 3.11.4",
    "2024.10.1",
    "1.22.333.4444",
    # order, tracking and invoice ids
    "ORD-2026-000123",
    "INV-2026-05-000123",
    "order #20260501-0042",
    "#4829103756",
    "1Z999AA10123456784",
    "9400 1000 0000 0000 0000 00",
    "4111111111111112",
    # IP addresses
    "192.168.100.200",
    "203.0.113.195",
    "10.0.0.1",
    "255.255.255.0",
    "2001:db8::1",
    "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
    "fe80::1ff:fe23:4567:890a",
    "::ffff:192.168.1.1",
    # hashes
    "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3",
    "3f2a1b9",
    "0873d391e9",
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    # ISBNs
    "ISBN 978-3-16-148410-0",
    "978-0-306-40615-7",
    "9780306406157",
    "ISBN 0-306-40615-2",
    # prices and figures
    "$1,299.99",
    "€1.299,99",
    "1 299,99 €",
    "USD 12,345,678.90",
    "2019 2020 2021 2022",
    "1500 2300 4500",
    # durations
    "PT1H30M",
    "P3DT4H30M",
    "1h 30m 15s",
    "00:45:30.500",
    "90 minutes",
]

PII = [
    # phones, international
    ("+44 20 7946 0958", "[PHONE]"),
    ("+1-555-123-4567", "[PHONE]"),
    ("+49 30 12345678", "[PHONE]"),
    ("+1 (555) 123-4567", "[PHONE]"),
    ("+44 (0)20 7946 0958", "[PHONE]"),
    ("+447700900123", "[PHONE]"),
    ("+33 1 23 45 67 89", "[PHONE]"),
    ("+351 912 345 678", "[PHONE]"),
    ("+1 415 555 0132", "[PHONE]"),
    ("+91 98765 43210", "[PHONE]"),
    ("+81 3-1234-5678", "[PHONE]"),
    ("+86 138 0013 8000", "[PHONE]"),
    ("+61 2 9876 5432", "[PHONE]"),
    ("0049 30 12345678", "[PHONE]"),
    ("tel:+15551234567", "tel:[PHONE]"),
    # phones, national
    ("(555) 123-4567", "[PHONE]"),
    ("(415) 555-0132", "[PHONE]"),
    ("(11) 91234-5678", "[PHONE]"),
    ("555-123-4567", "[PHONE]"),
    ("555.123.4567", "[PHONE]"),
    ("555 123 4567", "[PHONE]"),
    ("1-555-123-4567", "[PHONE]"),
    ("5551234567", "[PHONE]"),
    ("07700 900123", "[PHONE]"),
    ("07700900123", "[PHONE]"),
    ("020 7946 0958", "[PHONE]"),
    ("030 12345678", "[PHONE]"),
    ("01 23 45 67 89", "[PHONE]"),
    ("01\u00a023\u00a045\u00a067\u00a089", "[PHONE]"),
    ("13800138000", "[PHONE]"),
    ("Phone:555-123-4567", "Phone:[PHONE]"),
    # e-mail addresses
    ("jane.doe@example.com", "[EMAIL]"),
    ("ops+alerts@mail.example.co.uk", "[EMAIL]"),
    ("first.last+tag@sub.dept.example.com", "[EMAIL]"),
    ("user_name@example-mail.io", "[EMAIL]"),
    ("JANE.DOE@EXAMPLE.COM", "[EMAIL]"),
    ("a.b-c%d@x1.example.travel", "[EMAIL]"),
    # Luhn-valid cards, grouped or not
    ("4111 1111 1111 1111", "[CARD]"),
    ("4111-1111-1111-1111", "[CARD]"),
    ("4111111111111111", "[CARD]"),
    ("5555 5555 5555 4444", "[CARD]"),
    ("2223 0031 2200 3222", "[CARD]"),
    ("3782 822463 10005", "[CARD]"),
    ("6011 1111 1111 1117", "[CARD]"),
    ("3530 1113 3330 0000", "[CARD]"),
]

# Where a value sits in a text: alone, in prose, in JSON, in brackets, ending a sentence or a line.
CONTEXTS = ["{}", "see {} today", '{{"value": "{}"}}', "({})", "[{}]", "It was {}.", "{}\nnext", "a, {}, b"]


@pytest.fixture
def redactor() -> Redactor:
    return Redactor(PiiSettings())


@pytest.mark.parametrize("context", CONTEXTS)
def test_look_alikes_of_phone_and_card_numbers_are_left_as_they_were(redactor, context):
    texts = [context.format(value) for value in LOOK_ALIKES]

    changed = {text: redactor.mask_text(text) for text in texts if redactor.mask_text(text)[0] != text}

    assert changed == {}


@pytest.mark.parametrize("context", CONTEXTS)
def test_personal_data_is_masked_wherever_it_sits(redactor, context):
    results = {value: redactor.mask_text(context.format(value)) for value, _ in PII}

    wrong = {
        value: masked
        for (value, label), (masked, count) in zip(PII, results.values(), strict=True)
        if (masked, count) != (context.format(label), 1)
    }
    assert wrong == {}


def test_a_message_mixing_both_keeps_the_look_alikes_and_masks_the_rest(redactor):
    text = (
        "On 2026-05-01 10:30:00 (build 10.0.19045.3803, host 192.168.100.200) order ORD-2026-000123 "
        "was paid with 4111 1111 1111 1111; call +44 20 7946 0958 or 07700 900123, or write to "
        "jane.doe+billing@mail.example.co.uk before 1714559400."
    )

    masked, count = redactor.mask_text(text)

    assert masked == (
        "On 2026-05-01 10:30:00 (build 10.0.19045.3803, host 192.168.100.200) order ORD-2026-000123 "
        "was paid with [CARD]; call [PHONE] or [PHONE], or write to [EMAIL] before 1714559400."
    )
    assert count == 1  # one string, masked once however many values it held


def run(coro: Any) -> Any:
    return asyncio.run(coro)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "send_invoice",
            "description": "Sends the invoice; escalations go to billing@example.com or +1 555 010 9999.",
            "parameters": {
                "type": "object",
                "properties": {"email": {"type": "string", "pattern": "^[^@]+@[^@]+$"}, "phone": {}},
                "required": ["email"],
            },
        },
    }
]


def chat_body() -> dict[str, Any]:
    return {
        "model": "gpt-4o-2024-08-06",
        "temperature": 0.2,
        "stream": True,
        "user": "jane.doe@example.com",
        "metadata": {"customer": "Jane Doe, +44 20 7946 0958", "ticket": "T-2026-05-01", "tier": 3},
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "send_invoice"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "r", "schema": {"type": "object"}},
        },
        "messages": [
            {"role": "system", "content": "Today is 2026-05-01 10:30:00 UTC."},
            {"role": "user", "name": "jane.doe@example.com", "content": "Bill me, card 4111 1111 1111 1111"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "my number is (555) 123-4567"},
                    {"type": "image_url", "image_url": {"url": "https://img.example/u/555-123-4567.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {
                            "name": "send_invoice",
                            "arguments": '{"email":"jane.doe@example.com","phone":"+44 20 7946 0958","n":2}',
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sent to jane.doe@example.com"},
        ],
    }


def test_every_user_string_of_a_chat_request_is_masked_and_the_developers_schemas_are_not(redactor):
    body = chat_body()
    before = copy.deepcopy(body)

    masked, count = run(redactor.mask_request(body))

    assert body == before  # the request itself, still to be served, is untouched
    assert masked["user"] == "[EMAIL]"
    assert masked["metadata"] == {"customer": "Jane Doe, [PHONE]", "ticket": "T-2026-05-01", "tier": 3}
    system, named, parts, call, tool = masked["messages"]
    assert system["content"] == "Today is 2026-05-01 10:30:00 UTC."
    assert named == {"role": "user", "name": "[EMAIL]", "content": "Bill me, card [CARD]"}
    assert parts["content"][0]["text"] == "my number is [PHONE]"
    assert parts["content"][1]["image_url"]["url"] == "https://img.example/u/[PHONE].png"
    arguments = call["tool_calls"][0]["function"]["arguments"]
    assert arguments == '{"email":"[EMAIL]","phone":"[PHONE]","n":2}'
    assert tool["content"] == "sent to [EMAIL]"
    for field in ("model", "temperature", "stream", "tools", "tool_choice", "response_format"):
        assert masked[field] == before[field]
    assert count == 9


def test_every_string_of_a_responses_api_request_is_masked(redactor):
    schema = {"type": "json_schema", "name": "r", "schema": {"properties": {"email": {"format": "email"}}}}
    body = {
        "model": "gpt-4.1",
        "instructions": "Escalate to lead@example.com.",
        "text": {"format": schema, "verbosity": "low"},
        "prompt": {"id": "pmpt_1", "variables": {"customer_phone": "07700 900123"}},
        "input": [
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "I'm jane.doe@example.com"},
                    {"type": "input_file", "filename": "statement-555-123-4567.pdf", "file_id": "file-1"},
                ],
            },
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "lookup",
                "arguments": '{"card": "4111111111111111"}',
            },
            {"type": "function_call_output", "call_id": "c1", "output": '{"owner": "jane.doe@example.com"}'},
            {
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": "User gave +1-555-123-4567."}],
            },
        ],
        "tools": [
            {"type": "function", "name": "lookup", "description": "Call +1 555 010 9999", "parameters": {}}
        ],
    }

    masked, count = run(redactor.mask_request(body))

    assert masked["instructions"] == "Escalate to [EMAIL]."
    assert masked["text"] == {"format": schema, "verbosity": "low"}
    assert masked["prompt"] == {"id": "pmpt_1", "variables": {"customer_phone": "[PHONE]"}}
    message, function_call, output, reasoning = masked["input"]
    assert message["content"][0]["text"] == "I'm [EMAIL]"
    assert message["content"][1]["filename"] == "statement-[PHONE].pdf"
    assert function_call["arguments"] == '{"card": "[CARD]"}'
    assert output["output"] == '{"owner": "[EMAIL]"}'
    assert reasoning["summary"][0]["text"] == "User gave [PHONE]."
    assert masked["tools"] == body["tools"]
    assert count == 7


def test_a_completions_prompt_list_is_masked_item_by_item(redactor):
    masked, count = run(
        redactor.mask_request({"model": "m", "prompt": ["mail jane@example.com", "hi", "555-123-4567"]})
    )

    assert masked == {"model": "m", "prompt": ["mail [EMAIL]", "hi", "[PHONE]"]}
    assert count == 2


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"to": "jane@example.com", "n": 1}', '{"to": "[EMAIL]", "n": 1}'),
        (
            '{\n  "to": "jane@example.com",\n  "cc": ["555-123-4567"]\n}',
            '{\n  "to": "[EMAIL]",\n  "cc": ["[PHONE]"]\n}',
        ),
        ('{"to":"jane\\u0040example.com"}', '{"to":"[EMAIL]"}'),  # an escaped @ is still an e-mail address
        ('{"note": "Zürich, +41 44 668 18 00"}', '{"note": "Zürich, [PHONE]"}'),
        (
            '{"jane@example.com": "key names are the schema\'s"}',
            '{"jane@example.com": "key names are the schema\'s"}',
        ),
        (
            '{"when": "2026-05-01T10:30:00Z", "id": "ORD-2026-000123"}',
            '{"when": "2026-05-01T10:30:00Z", "id": "ORD-2026-000123"}',
        ),
        (
            '{"to": "jane@example.com", "body": "cut off',
            '{"to": "[EMAIL]", "body": "cut off',
        ),  # not JSON: as text
    ],
)
def test_tool_call_arguments_stay_the_json_the_model_sent_with_strings_masked(redactor, arguments, expected):
    masked, _ = run(redactor.mask_value({"tool_calls": [{"id": "c", "name": "f", "arguments": arguments}]}))

    assert masked["tool_calls"][0]["arguments"] == expected


def test_an_answers_outputs_are_masked_and_counted_once_per_string(redactor):
    outputs = [
        {
            "index": 0,
            "text": "Done: jane@example.com, +44 20 7946 0958 and 4111 1111 1111 1111.",
            "tool_calls": [
                {"id": "c", "name": "notify", "arguments": '{"to": "jane@example.com", "cc": "x"}'}
            ],
            "refusal": None,
            "reasoning": "The user (555) 123-4567 asked on 2026-05-01 10:30:00.",
            "finish_reason": "tool_calls",
        },
        {"index": 1, "text": "I can't share 07700 900123.", "tool_calls": [], "refusal": "Not 555-123-4567."},
    ]

    masked, count = run(redactor.mask_value(outputs))

    assert masked[0]["text"] == "Done: [EMAIL], [PHONE] and [CARD]."
    assert masked[0]["tool_calls"][0]["arguments"] == '{"to": "[EMAIL]", "cc": "x"}'
    assert masked[0]["reasoning"] == "The user [PHONE] asked on 2026-05-01 10:30:00."
    assert masked[1]["text"] == "I can't share [PHONE]." and masked[1]["refusal"] == "Not [PHONE]."
    assert masked[0]["finish_reason"] == "tool_calls" and masked[0]["refusal"] is None
    assert count == 5


def test_short_strings_are_masked_at_once_with_a_count(redactor):
    assert redactor.mask_text("HTTP 400: unknown user jane@example.com") == (
        "HTTP 400: unknown user [EMAIL]",
        1,
    )
    assert redactor.mask_text('invalid JSON near: {"phone": "+49 30 12345678"') == (
        'invalid JSON near: {"phone": "[PHONE]"',
        1,
    )
    assert redactor.mask_text("billing") == ("billing", 0)
    assert redactor.mask_text("") == ("", 0)


def test_configured_patterns_reach_nested_values(redactor):
    custom = Redactor(PiiSettings(patterns={"account": r"ACC-\d{8}"}))

    masked, count = run(custom.mask_request({"metadata": {"refs": [{"acct": "ACC-12345678"}]}}))

    assert masked == {"metadata": {"refs": [{"acct": "[ACCOUNT]"}]}}
    assert count == 1


def test_a_body_nested_as_deep_as_the_json_parser_allows_is_masked(redactor):
    depth = 800
    nested = json.loads('{"a": ' * depth + '"jane@example.com"' + "}" * depth)

    masked, count = run(redactor.mask_request({"model": "m", "metadata": nested}))

    leaf = masked["metadata"]
    for _ in range(depth - 1):
        leaf = leaf["a"]
    assert leaf == {"a": "[EMAIL]"} and count == 1


def test_masking_switched_off_leaves_everything_and_counts_nothing():
    off = Redactor(PiiSettings(enabled=False))
    body = chat_body()

    assert run(off.mask_request(body)) == (body, 0)
    assert run(off.mask_value(["jane@example.com"])) == (["jane@example.com"], 0)
    assert off.mask_text("jane@example.com") == ("jane@example.com", 0)


def test_kinds_switched_off_are_left():
    phones_only = Redactor(PiiSettings(emails=False, cards=False))

    assert phones_only.mask_text("jane@example.com 4111 1111 1111 1111 555-123-4567") == (
        "jane@example.com 4111 1111 1111 1111 [PHONE]",
        1,
    )


def test_the_old_entry_point_masks_the_whole_request_too(redactor):
    masked = run(redactor.redact_request(chat_body()))

    assert masked == run(redactor.mask_request(chat_body()))[0]


def loop_turns_while(work: Any) -> tuple[Any, int]:
    """Run `work` beside a task that counts its turns of the event loop: how often other work got to run."""
    turns = 0

    async def main() -> Any:
        nonlocal turns

        async def other_work() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        ticker = asyncio.ensure_future(other_work())
        await asyncio.sleep(0)
        start = turns
        result = await work
        turns -= start
        ticker.cancel()
        return result

    return asyncio.run(main()), turns


def test_a_one_megabyte_prompt_is_masked_in_pieces_with_the_loop_free_between_them(redactor):
    prompt = "Ship to jane@example.com by 2026-05-01 10:30:00, call 555-123-4567 if late. " * 14_000
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}]}

    (masked, count), turns = loop_turns_while(redactor.mask_request(body))

    assert len(prompt) > 1_000_000
    assert masked["messages"][0]["content"] == redactor.text(prompt)
    assert "jane@example.com" not in masked["messages"][0]["content"] and count == 1
    assert turns >= len(redact.pieces(prompt)) - 1


def test_many_short_strings_also_let_the_loop_run(redactor):
    body = {
        "messages": [{"role": "user", "content": f"message {i} from jane@example.com"} for i in range(20_000)]
    }

    (masked, count), turns = loop_turns_while(redactor.mask_request(body))

    assert count == 20_000 and masked["messages"][-1]["content"] == "message 19999 from [EMAIL]"
    chars = sum(len(m["content"]) for m in body["messages"])
    assert turns >= chars // redact.SLICE_CHARS - 1


def test_a_long_arguments_string_is_masked_in_pieces_too(redactor):
    arguments = json.dumps({"notes": "reach jane@example.com or 555-123-4567. " * 30_000})

    (masked, count), turns = loop_turns_while(redactor.mask_value({"arguments": arguments}))

    assert json.loads(masked["arguments"])["notes"] == "reach [EMAIL] or [PHONE]. " * 30_000
    assert count == 1 and turns >= len(arguments) // redact.SLICE_CHARS - 1


def test_a_large_structure_without_strings_also_lets_the_loop_run(redactor):
    body = {"model": "m", "metadata": {"samples": [[i, i * 0.5, None, True] for i in range(50_000)]}}

    (masked, count), turns = loop_turns_while(redactor.mask_request(body))

    assert masked == body and count == 0
    assert turns >= 250_000 // redact.SLICE_CHARS - 1


def test_a_card_number_sent_as_a_json_number_is_masked_and_other_numbers_keep_their_value(redactor):
    keep = {
        "ts": 1714559400,
        "ts_ms": 1714559400123,
        "snowflake_id": 1764672000123456789,
        "order_id": 2026000123,
        "bare_phone_like_id": 4155550134,
        "amount_cents": 123456789012,
        "not_luhn": 4111111111111112,
        "price": 4111111111111111.0,  # a float is an amount, never a card
        "flag": True,
    }
    body = {
        "model": "m",
        "messages": [],
        "metadata": {**keep, "card": 4111111111111111, "neg": -5500005555555559},
    }

    masked, count = asyncio.run(redactor.mask_request(body))

    assert masked["metadata"] == {**keep, "card": "[CARD]", "neg": "[CARD]"}
    assert count == 2
    assert body["metadata"]["card"] == 4111111111111111  # the request the proxy forwarded is untouched
