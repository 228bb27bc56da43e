"""Each side's answer as the pair record shows it: assembled from a plain body or a stream, beside the user's copy."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from typing import Any

import pytest

from shadowtap.config import ShadowSettings
from shadowtap.proxy.record import SideAssembler, SideResult, build_pair
from shadowtap.records import validate_pair

pytestmark = pytest.mark.unit

ROUTE = "/v1/chat/completions"
STARTED = 100.0


def sse(*events: dict[str, Any] | str) -> list[bytes]:
    """One network chunk per event, as an OpenAI-compatible server streams them."""
    return [
        f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n".encode() for event in events
    ]


def delta(
    content: str | None = None, *, role: str | None = None, finish: str | None = None
) -> dict[str, Any]:
    piece: dict[str, Any] = {}
    if role is not None:
        piece["role"] = role
    if content is not None:
        piece["content"] = content
    return {
        "id": "chatcmpl-1",
        "model": "served-model",
        "choices": [{"index": 0, "delta": piece, "finish_reason": finish}],
    }


def completion(text: str = "Refunds take five days.") -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "model": "served-model",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
        }
    ).encode()


def assemble(
    chunks: list[bytes], *, streaming: bool, status: int = 200, encoding: str | None = None
) -> SideResult:
    """Feed the chunks 0.1 s apart after the request went out; the answer ends 0.1 s after the last."""
    assembler = SideAssembler(streaming=streaming, started=STARTED, content_encoding=encoding)
    now = STARTED
    for chunk in chunks:
        now += 0.1
        assembler.feed(chunk, now)
    return assembler.finish(SideResult(status=status), now + 0.1, ROUTE)


def test_a_plain_answer_records_its_text_model_usage_and_latency():
    side = assemble([completion()[:30], completion()[30:]], streaming=False)
    assert side.error is None
    assert side.text == "Refunds take five days."
    assert side.model == "served-model"
    assert side.finish_reason == "stop"
    assert side.usage == {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}
    assert side.latency_ms == pytest.approx(300.0)
    assert side.ttft_ms is None  # no tokens arrive separately in a plain answer


def test_a_stream_is_joined_and_its_first_token_is_the_first_content_not_the_role_chunk():
    chunks = sse(
        delta(role="assistant"),  # at 0.1 s: no text yet
        delta("Refunds "),  # at 0.2 s: the first token
        delta("take five days."),
        delta(finish="stop"),
        {"id": "chatcmpl-1", "choices": [], "usage": {"completion_tokens": 4}},
        "[DONE]",
    )
    side = assemble(chunks, streaming=True)
    assert side.error is None
    assert side.text == "Refunds take five days."
    assert side.finish_reason == "stop"
    assert side.model == "served-model"
    assert side.usage == {"completion_tokens": 4}
    assert side.ttft_ms == pytest.approx(200.0)
    assert side.latency_ms == pytest.approx(700.0)


def test_an_event_split_across_network_chunks_still_counts_for_the_first_token():
    whole = b"".join(sse(delta(role="assistant"), delta("Hello"), delta(finish="stop"), "[DONE]"))
    cut = whole.index(b"Hello") - 3  # the content event arrives in two pieces
    side = assemble([whole[:cut], whole[cut:]], streaming=True)
    assert side.text == "Hello"
    assert side.ttft_ms == pytest.approx(200.0)  # when the rest of the event arrived


def test_a_gzipped_answer_is_recorded_as_text():
    body = gzip.compress(completion("Compressed, but readable."))
    side = assemble([body[:10], body[10:]], streaming=False, encoding="gzip")
    assert side.error is None
    assert side.text == "Compressed, but readable."


def test_a_gzipped_stream_is_recorded_with_its_first_token():
    body = gzip.compress(
        b"".join(sse(delta(role="assistant"), delta("Zipped"), delta(finish="stop"), "[DONE]"))
    )
    assembler = SideAssembler(streaming=True, started=STARTED)
    assembler.set_content_encoding("gzip")  # as the candidate's response head says, once it is in
    assembler.feed(body, STARTED + 0.25)
    side = assembler.finish(SideResult(status=200), STARTED + 0.5, ROUTE)
    assert (side.text, side.finish_reason, side.error) == ("Zipped", "stop", None)
    assert side.ttft_ms == pytest.approx(250.0)


def test_a_content_coding_the_record_cannot_read_is_refused_up_front():
    with pytest.raises(ValueError, match="br"):
        SideAssembler(streaming=False, started=STARTED, content_encoding="br")


def test_a_stream_cut_off_before_its_end_is_recorded_as_truncated_with_what_arrived():
    side = assemble(sse(delta(role="assistant"), delta("Refunds take")), streaming=True)
    assert side.text == "Refunds take"
    assert side.error is not None
    assert side.error["kind"] == "truncated_stream"


def test_a_stream_that_reports_an_error_event_is_recorded_as_failed():
    side = assemble(sse(delta("Par"), {"error": {"message": "engine overloaded"}}, "[DONE]"), streaming=True)
    assert side.error == {"kind": "stream_error", "message": "engine overloaded"}


def test_a_stream_of_garbage_is_an_invalid_response():
    side = assemble([b"data: {not json\n\n", b"data: [1, 2]\n\n"], streaming=True)
    assert side.error is not None and side.error["kind"] == "invalid_response"


@pytest.mark.parametrize(
    ("status", "kind"), [(400, "http_4xx"), (429, "http_429"), (500, "http_5xx"), (503, "http_5xx")]
)
def test_an_error_status_is_recorded_with_the_upstreams_message_and_no_text(status: int, kind: str):
    body = json.dumps({"error": {"message": "Rate limit reached for requests", "type": "rate_limit"}})
    side = assemble([body.encode()], streaming=False, status=status)
    assert side.text is None
    assert side.status == status
    assert side.error == {"kind": kind, "message": f"HTTP {status}: Rate limit reached for requests"}


def test_a_plain_answer_that_is_not_a_completion_is_an_invalid_response():
    side = assemble([b"<html>Bad gateway</html>"], streaming=False)
    assert side.error is not None and side.error["kind"] == "invalid_response"
    assert "Bad gateway" in side.error["message"]


def test_the_assembled_sides_make_a_valid_pair_record():
    primary = assemble([completion()], streaming=False)
    candidate = assemble(sse(delta(role="assistant"), delta("Five days.")), streaming=True)
    record = build_pair(
        pair_id="p1",
        ts="2026-01-01T00:00:00.000Z",
        route=ROUTE,
        stream=False,
        request={"messages": [{"role": "user", "content": "How long do refunds take?"}]},
        tags={"route": ROUTE, "segment": "none", "length_bucket": "0-500"},
        primary=primary,
        candidate=candidate,
    )
    validate_pair(record)
    assert record["primary"]["text"] == "Refunds take five days."
    assert record["candidate"]["error"] == {
        "kind": "truncated_stream",
        "message": "stream ended without a finish_reason or [DONE]",
    }
    json.dumps(record)  # the wire format is JSON


# ------------------------------------------------------------------------------ the record's cap

CAP = 4096


def capped(chunks: list[bytes], *, streaming: bool, encoding: str | None = None) -> SideResult:
    assembler = SideAssembler(streaming=streaming, started=STARTED, content_encoding=encoding, max_bytes=CAP)
    for chunk in chunks:
        assembler.feed(chunk, STARTED + 0.1)
    assert sum(len(c) for c in assembler.chunks) <= CAP
    return assembler.finish(SideResult(status=200), STARTED + 0.2, ROUTE)


def test_the_record_keeps_a_side_up_to_the_default_cap_of_the_config():
    assembler = SideAssembler(streaming=False, started=STARTED)
    assert assembler.max_bytes == ShadowSettings().max_record_bytes


def test_an_answer_under_the_cap_is_not_truncated():
    side = capped([completion()], streaming=False)
    assert side.truncated is False
    assert side.to_dict()["truncated"] is False


def test_a_plain_answer_past_its_cap_keeps_its_first_bytes_as_text_and_is_marked_truncated():
    body = completion("x" * (3 * CAP))
    side = capped([body[:1000], body[1000:]], streaming=False)
    assert side.truncated is True
    assert side.to_dict()["truncated"] is True
    # A plain body is capped at a quarter of a stream's cap: JSON has no per-token framing.
    assert side.text == body[: CAP // 4].decode()
    assert side.error is None  # the answer was fine; only the record's copy is short


def test_a_stream_past_the_cap_keeps_the_events_that_fit():
    events = sse(delta(role="assistant"), *(delta(f"word{i} ") for i in range(200)), delta(finish="stop"))
    side = capped(events, streaming=True)
    assert side.truncated is True
    assert side.text is not None and side.text.startswith("word0 word1 ")
    assert len(side.text) < 200 * len("wordNNN ")
    assert side.error is None


def test_a_gzip_bomb_never_inflates_past_the_cap():
    bomb = gzip.compress(b"\0" * (512 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 1024 * 1024
    tracemalloc.start()
    try:
        side = capped(
            [bomb[i : i + 65536] for i in range(0, len(bomb), 65536)], streaming=False, encoding="gzip"
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert side.truncated is True
    assert peak < 8 * 1024 * 1024
