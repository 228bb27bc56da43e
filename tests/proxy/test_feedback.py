"""Users' feedback through the proxy's real HTTP endpoint: tied to the answer they got, counted per segment,
recorded whole, and every bad request refused with an error that says what is wrong."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from shadowtap.feedback import read_feedback, validate_feedback
from tests.helpers import wait_for

CHAT = [{"role": "user", "content": "My invoice is wrong, can you fix it?"}]
FEEDBACK = "/shadowtap/v1/feedback"
TOKEN = "fb-token-7c1d"


def ask(proxy: Any, segment: str = "billing", stream: bool = False) -> str:
    """One chat request through the proxy with the OpenAI SDK; the response id the client received."""
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-user", max_retries=0)
    headers = {"X-Shadow-Segment": segment}
    if stream:
        chunks = list(
            client.chat.completions.create(model="m", messages=CHAT, stream=True, extra_headers=headers)
        )
        return chunks[0].id
    return client.chat.completions.create(model="m", messages=CHAT, extra_headers=headers).id


def post(proxy: Any, body: Any, token: str | None = TOKEN, raw: bytes | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    if raw is not None:
        return httpx.post(proxy.url + FEEDBACK, content=raw, headers=headers, timeout=5)
    return httpx.post(proxy.url + FEEDBACK, json=body, headers=headers, timeout=5)


def feedback_lines(data_dir: Path, expected: int) -> list[dict[str, Any]]:
    path = data_dir / "feedback.jsonl"

    def read() -> list[dict[str, Any]] | None:
        if not path.exists():
            return None
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return rows if len(rows) >= expected else None

    rows: list[dict[str, Any]] = wait_for(read, what=f"{expected} feedback records")
    return rows


@pytest.fixture
def feedback_proxy(proxy_factory: Any, primary: Any, candidate: Any) -> Any:
    return proxy_factory(
        primary.base_url,
        candidate.base_url,
        candidate={"model": "candidate-model"},
        tags={"segments": ["billing", "support"]},
        feedback={"token": TOKEN, "max_comment_chars": 50, "signals": ["copied"]},
    )


def test_thumbs_down_on_a_mirrored_answer_is_tied_to_its_pair_and_counted_for_its_segment(feedback_proxy):
    response_id = ask(feedback_proxy)
    [pair] = feedback_proxy.pairs(expected=1)
    assert pair["primary"]["response_id"] == response_id

    answer = post(
        feedback_proxy, {"response_id": response_id, "signal": "thumbs_down", "comment": "wrong total"}
    )

    assert answer.status_code == 202, answer.text
    assert answer.json()["matched"] is True
    [record] = feedback_lines(feedback_proxy.data_dir, 1)
    validate_feedback(record)
    assert (record["response_id"], record["pair_id"], record["segment"]) == (
        response_id,
        pair["id"],
        "billing",
    )
    assert (record["signal"], record["comment"], record["source"]) == ("thumbs_down", "wrong total", "client")
    assert feedback_proxy.metric("shadowtap_feedback_total", signal="thumbs_down", segment="billing") == 1


def test_feedback_by_pair_id_finds_the_answer(feedback_proxy):
    response_id = ask(feedback_proxy, segment="support", stream=True)
    [pair] = feedback_proxy.pairs(expected=1)

    answer = post(feedback_proxy, {"pair_id": pair["id"], "signal": "escalated", "value": 1})

    assert answer.status_code == 202, answer.text
    [record] = feedback_lines(feedback_proxy.data_dir, 1)
    assert (record["response_id"], record["pair_id"], record["value"]) == (response_id, pair["id"], 1.0)
    assert feedback_proxy.metric("shadowtap_feedback_total", signal="escalated", segment="support") == 1


def test_feedback_on_an_answer_that_was_not_mirrored_still_counts_for_the_primary(
    proxy_factory, primary, candidate
):
    proxy = proxy_factory(
        primary.base_url,
        candidate.base_url,
        candidate={"model": "candidate-model"},
        shadow={"sample_rate": 0.0},
        tags={"segments": ["billing"]},
    )
    response_id = ask(proxy, stream=True)

    answer = post(proxy, {"response_id": response_id, "signal": "thumbs_up"}, token=None)

    assert answer.status_code == 202, answer.text
    [record] = feedback_lines(proxy.data_dir, 1)
    assert (record["response_id"], record["pair_id"], record["segment"]) == (response_id, None, "billing")
    assert proxy.metric("shadowtap_feedback_total", signal="thumbs_up", segment="billing") == 1
    assert proxy.pairs() == []


BAD_REQUESTS = [
    ({"response_id": "chatcmpl 1; drop", "signal": "thumbs_down"}, 400, "invalid_id", "response_id"),
    ({"response_id": "x" * 300, "signal": "thumbs_down"}, 400, "invalid_id", "256 characters"),
    ({"signal": "thumbs_down"}, 400, "missing_id", "response_id: required"),
    ({"response_id": "chatcmpl-1", "signal": "meh"}, 400, "invalid_signal", "thumbs_up, thumbs_down"),
    ({"response_id": "chatcmpl-1"}, 400, "invalid_signal", "signal: must be one of"),
    ({"response_id": "chatcmpl-1", "signal": "retry"}, 400, "invalid_signal", "copied"),
    (
        {"response_id": "chatcmpl-1", "signal": "thumbs_down", "comment": "y" * 51},
        400,
        "comment_too_long",
        "50",
    ),
    ({"response_id": "chatcmpl-1", "signal": "thumbs_down", "comment": 5}, 400, "invalid_comment", "string"),
    ({"response_id": "chatcmpl-1", "signal": "thumbs_down", "value": "high"}, 400, "invalid_value", "number"),
    ({"response_id": "chatcmpl-1", "signal": "thumbs_down", "user": "bob"}, 400, "unknown_field", "user"),
    ([1, 2], 400, "invalid_json", "JSON object"),
]


@pytest.mark.parametrize(("body", "status", "code", "says"), BAD_REQUESTS)
def test_bad_feedback_gets_an_openai_shaped_error_that_names_the_problem(
    feedback_proxy, body, status, code, says
):
    answer = post(feedback_proxy, body)

    assert answer.status_code == status
    error = answer.json()["error"]
    assert error["code"] == code
    assert says in error["message"]
    assert feedback_proxy.metric("shadowtap_feedback_rejected_total", reason="invalid") == 1


def test_an_oversized_body_a_missing_or_wrong_token_and_broken_json_are_refused(feedback_proxy):
    good = {"response_id": "chatcmpl-1", "signal": "thumbs_down"}

    missing = post(feedback_proxy, good, token=None)
    wrong = post(feedback_proxy, good, token="fb-token-7c1e")
    huge = post(feedback_proxy, None, raw=json.dumps({**good, "comment": "z" * 20_000}).encode())
    broken = post(feedback_proxy, None, raw=b'{"response_id": ')

    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert missing.json()["error"]["code"] == "invalid_token"
    assert "Authorization: Bearer" in missing.json()["error"]["message"]
    assert TOKEN not in missing.text
    assert huge.status_code == 413 and "feedback.max_body_bytes" in huge.json()["error"]["message"]
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    assert feedback_proxy.metric("shadowtap_feedback_rejected_total", reason="unauthorized") == 2
    assert not (feedback_proxy.data_dir / "feedback.jsonl").exists()


def test_nothing_is_lost_under_a_burst_of_good_and_bad_feedback(feedback_proxy):
    ids = [ask(feedback_proxy) for _ in range(3)]
    bodies = [
        {
            "response_id": ids[i % 3],
            "signal": ("thumbs_down", "thumbs_up", "copied")[i % 3],
            "comment": f"n{i}",
        }
        for i in range(120)
    ]
    bad = [{"response_id": "bad id", "signal": "thumbs_down"}] * 30

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda body: post(feedback_proxy, body), bodies + bad))

    assert [a.status_code for a in answers] == [202] * 120 + [400] * 30
    rows = feedback_lines(feedback_proxy.data_dir, 120)
    assert sorted(r["comment"] for r in rows) == sorted(f"n{i}" for i in range(120))
    assert len(read_feedback(feedback_proxy.data_dir / "feedback.jsonl")) == 120
    assert feedback_proxy.metric("shadowtap_feedback_total", signal="copied", segment="billing") == 40
