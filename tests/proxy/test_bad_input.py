"""Bad input: whatever a client sends gets exactly what the primary would answer, and is not mirrored.

The proxy forwards what it cannot parse to the primary untouched and simply skips the shadow (counted by
reason); it never answers 5xx of its own for the client's input. A property test and a short fuzz run
cover what the hand-picked cases miss.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shadowtap.config import load_settings
from shadowtap.metrics import Metrics, route_label
from shadowtap.proxy.record import SideAssembler, SideResult
from shadowtap.proxy.shadow import MIRRORED_ROUTES, ShadowDispatcher
from shadowtap.proxy.upstream import Upstream, forward_headers
from shadowtap.records import validate_pair
from shadowtap.testing.upstreams import Reply, SimulatedLLM, serve_in_thread
from tests.helpers import wait_for

CHAT_ROUTE = "/v1/chat/completions"
CHAT = [{"role": "user", "content": "What is the weather like in Lisbon?"}]
JSON = {"content-type": "application/json"}
MAX_BODY = 300_000


def chat_body(**extra: Any) -> bytes:
    return json.dumps({"model": "m", "messages": CHAT, **extra}).encode()


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


PER_CALL = frozenset({"id", "item_id", "call_id", "created", "created_at", "completed_at"})


def _without_call_ids(doc: Any) -> Any:
    """`doc` without what differs from one call to the next (ids, timestamps), at any depth."""
    if isinstance(doc, dict):
        return {k: _without_call_ids(v) for k, v in doc.items() if k not in PER_CALL}
    if isinstance(doc, list):
        return [_without_call_ids(v) for v in doc]
    return doc


def comparable(content: bytes) -> Any:
    """An answer with its per-call parts (ids, timestamps) left out, so two calls to one upstream
    compare; a stream (chat's `data:` lines, the Responses API's `event:`/`data:` pairs) compares event
    by event."""
    if content.startswith((b"data: ", b"event: ")):
        return [
            _without_call_ids(json.loads(line[6:])) if line.startswith(b"data: {") else line
            for line in content.split(b"\n")
        ]
    try:
        return _without_call_ids(json.loads(content))
    except ValueError:
        return content


class BodyLog:
    """Wraps an upstream app and keeps every request body exactly as it arrived, parseable or not."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False) and message["type"] == "http.request"
        self.bodies.append(b"".join(chunks))
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": self.bodies[-1], "more_body": False}

        await self.app(scope, replay, send)


def pending_shadows(proxy: Any) -> set[Any]:
    return proxy.handle.server.config.app.state.proxy.shadow.pending


@pytest.fixture
def logged_primary() -> Iterator[tuple[str, BodyLog]]:
    app = BodyLog(SimulatedLLM("primary-model").app)
    with serve_in_thread(app) as handle:
        yield handle.base_url, app


@pytest.fixture(params=["parsed on the loop", "parsed by the offload worker"])
def guarded(request, proxy_factory, logged_primary, candidate):
    # The offload worker parses bodies over shadow.offload_bytes; at 0 it parses every one.
    offload = {} if request.param == "parsed on the loop" else {"offload_bytes": 0}
    return proxy_factory(
        logged_primary[0],
        candidate.base_url,
        shadow={"max_body_bytes": MAX_BODY, **offload},
        candidate={"model": "candidate-model"},
    )


CASES = {
    "malformed JSON": (b'{"model": "m", "messages": [', JSON, "unparseable"),
    "empty body": (b"", JSON, "unparseable"),
    "non-UTF-8 body": (
        b'{"model": "m", "messages": [{"role": "user", "content": "caf\xe9 \xff"}]}',
        JSON,
        "unparseable",
    ),
    "a JSON array": (b'[{"role": "user", "content": "hi"}]', JSON, "unparseable"),
    "wrong content type": (chat_body(), {"content-type": "text/plain"}, "content_type"),
    "form content type": (chat_body(), {"content-type": "application/x-www-form-urlencoded"}, "content_type"),
    "missing messages": (b'{"model": "m", "prompt": "hi"}', JSON, "invalid_request"),
    "messages not a list": (b'{"model": "m", "messages": "hi"}', JSON, "invalid_request"),
    "100k levels of nesting": (nested(100_000), JSON, "unparseable"),
    "deep nesting inside a chat request": (
        chat_body()[:-1] + b', "extra": ' + nested(100_000) + b"}",
        JSON,
        "unparseable",
    ),
    "body over shadow.max_body_bytes": (
        chat_body(messages=[{"role": "user", "content": "x" * MAX_BODY}]),
        JSON,
        "too_large",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_the_primarys_own_answer_and_is_not_mirrored(guarded, logged_primary, candidate, case):
    raw, headers, reason = CASES[case]
    primary_url, primary_log = logged_primary

    direct = httpx.post(primary_url + "/chat/completions", content=raw, headers=headers, timeout=30)
    via = httpx.post(guarded.base_url + "/chat/completions", content=raw, headers=headers, timeout=30)

    assert via.status_code == direct.status_code
    assert comparable(via.content) == comparable(direct.content)
    assert via.headers["content-type"] == direct.headers["content-type"]
    assert primary_log.bodies == [raw, raw]  # the proxy forwarded it untouched
    wait_for(
        lambda: guarded.metric("shadowtap_shadow_skipped_total", route=CHAT_ROUTE, reason=reason) == 1,
        what=f"the shadow skipped as {reason}",
    )
    assert guarded.metric("shadowtap_shadow_sampled_total", route=CHAT_ROUTE) == 0
    assert len(candidate.sim.received) == 0


def test_unknown_fields_reach_both_upstreams_untouched(proxy, primary, candidate):
    raw = chat_body(frobnicate={"level": 3}, reasoning_effort="high")

    direct = httpx.post(primary.base_url + "/chat/completions", content=raw, headers=JSON)
    via = httpx.post(proxy.base_url + "/chat/completions", content=raw, headers=JSON)

    assert via.status_code == direct.status_code == 200
    assert comparable(via.content) == comparable(direct.content)
    assert primary.sim.received[-1].body == raw
    [pair] = proxy.pairs(expected=1)
    [mirrored] = candidate.sim.received
    assert mirrored.json["frobnicate"] == {"level": 3} and mirrored.json["reasoning_effort"] == "high"
    assert pair["request"]["frobnicate"] == {"level": 3}


def test_a_lone_surrogate_escape_is_served_mirrored_and_recorded(proxy, primary, candidate):
    # Valid JSON whose string has no UTF-8 form once decoded: the record must still be written.
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "broken \\ud800 emoji"}]}'

    via = httpx.post(proxy.base_url + "/chat/completions", content=raw, headers=JSON)

    assert via.status_code == 200
    [pair] = proxy.pairs(expected=1)
    validate_pair(pair)
    assert pair["request"]["messages"][0]["content"] == "broken \ud800 emoji"
    assert proxy.metric("shadowtap_sink_records_total", sink="jsonl", outcome="failed") == 0


def test_nan_in_a_request_reaches_the_primary_as_sent_and_is_null_in_the_record(proxy, primary, candidate):
    # Python's json reads NaN (JSON has no such value); the record and the candidate's copy stay JSON.
    raw = b'{"model": "m", "temperature": NaN, "messages": [{"role": "user", "content": "hi"}]}'

    via = httpx.post(proxy.base_url + "/chat/completions", content=raw, headers=JSON)

    assert via.status_code == 200
    assert primary.sim.received[-1].body == raw
    [pair] = proxy.pairs(expected=1)
    validate_pair(pair)
    assert "temperature" in pair["request"] and pair["request"]["temperature"] is None
    [mirrored] = candidate.sim.received
    assert json.loads(mirrored.body, parse_constant=lambda name: pytest.fail(f"{name} sent")) is not None
    assert mirrored.json["temperature"] is None


def test_a_client_that_gives_up_on_a_plain_answer_hangs_up_on_the_primary(proxy, primary):
    # Called directly, an LLM server stops generating for a client that left; through the proxy too.
    primary.sim.policy = lambda route, body: Reply(text="Too late.", ttft_s=60)
    upstream_pool = proxy.handle.server.config.app.state.proxy.primary.transport
    primary_connections = primary.handle.server.server_state.connections

    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            proxy.base_url + "/chat/completions",
            json={"model": "m", "messages": CHAT},
            timeout=httpx.Timeout(10.0, read=0.3),
        )
    assert primary.sim.received, "the request never reached the primary"

    wait_for(lambda: not primary_connections, what="the primary to see its connection closed")
    assert upstream_pool.open_connections == 0
    [pair] = proxy.pairs(expected=1)
    assert pair["primary"]["error"]["kind"] == "client_disconnected"
    assert pair["candidate"]["text"]
    assert not pending_shadows(proxy)
    status = {"route": CHAT_ROUTE, "side": "primary", "status": "client_closed"}
    assert proxy.metric("shadowtap_requests_total", **status) == 1
    # The proxy serves the next client as usual.
    primary.sim.policy = lambda route, body: Reply(text="On time.")
    answer = httpx.post(proxy.base_url + "/chat/completions", json={"model": "m", "messages": CHAT})
    assert answer.json()["choices"][0]["message"]["content"] == "On time."


def test_a_client_that_leaves_mid_stream_closes_the_primarys_stream(proxy, primary):
    primary.sim.policy = lambda route, body: Reply(text=" ".join(["word"] * 300), token_delay_s=0.05)
    upstream_pool = proxy.handle.server.config.app.state.proxy.primary.transport
    primary_connections = primary.handle.server.server_state.connections
    body = {"model": "m", "messages": CHAT, "stream": True}

    with httpx.Client() as client:
        with client.stream("POST", proxy.base_url + "/chat/completions", json=body) as response:
            chunks = response.iter_raw()  # held: a dropped iterator would close the connection right here
            seen = next(chunks)
            while b"word" not in seen:  # past the role-only first event: some of the answer has come
                seen += next(chunks)
            assert b"data:" in seen
            assert len(primary_connections) == 1
    # The client's connection is gone; the proxy must hang up on the primary too, not read on.

    wait_for(lambda: not primary_connections, what="the primary to see its connection closed")
    assert upstream_pool.open_connections == 0
    wait_for(lambda: not pending_shadows(proxy), what="no pending shadow job")
    [pair] = proxy.pairs(expected=1)
    assert pair["primary"]["error"]["kind"] == "client_disconnected"
    assert pair["primary"]["text"].startswith("word")
    assert len(pair["primary"]["text"]) < len(" ".join(["word"] * 300))


# ------------------------------------------------------------------------------------ property and fuzz

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=25,
)
messages = st.lists(
    st.dictionaries(
        st.sampled_from(["role", "content", "name", "tool_calls"]),
        json_values | st.lists(st.dictionaries(st.sampled_from(["type", "text"]), json_values), max_size=3),
        max_size=3,
    )
    | json_values,
    max_size=3,
)
chat_shaped = st.fixed_dictionaries(
    {"model": st.text(max_size=10) | json_values, "messages": messages},
    optional={
        "stream": st.booleans() | json_values,
        "user": json_values,
        "prompt": json_values,
        "response_format": json_values,
        "max_tokens": json_values,
    },
)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    chat_shaped.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
)
content_types = st.sampled_from([None, "application/json", "application/json; charset=utf-8", "text/plain"])


@pytest.fixture
def property_proxy(proxy_factory, upstream_factory) -> Iterator[Any]:
    primary = upstream_factory("primary-model")
    candidate = upstream_factory("candidate-model")
    proxy = proxy_factory(primary.base_url, candidate.base_url, shadow={"queue_size": 10_000})
    with httpx.Client(timeout=30) as client:
        yield proxy, primary, client


def test_any_body_gets_the_primarys_status_and_never_a_proxy_error(property_proxy):
    proxy, primary, client = property_proxy

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(raw=bodies, content_type=content_types, route=st.sampled_from(sorted(MIRRORED_ROUTES)))
    @example(raw=b'{"messages": [{"content": [{"text": 5}]}]}', content_type=None, route=CHAT_ROUTE)
    def same_as_the_primary(raw: bytes, content_type: str | None, route: str) -> None:
        headers = {} if content_type is None else {"content-type": content_type}
        path = route.removeprefix("/v1")

        direct = client.post(primary.base_url + path, content=raw, headers=headers)
        via = client.post(proxy.base_url + path, content=raw, headers=headers)

        assert via.status_code == direct.status_code
        assert comparable(via.content) == comparable(direct.content)
        assert primary.sim.received[-1].body == raw

    same_as_the_primary()

    # Every shadow of the run settles: none pinned, none failed inside the proxy, none lost to the sink.
    wait_for(lambda: not pending_shadows(proxy), what="the shadows to drain")
    for route in MIRRORED_ROUTES:
        for reason in ("internal_error", "queue_full"):
            assert proxy.metric("shadowtap_shadow_dropped_total", route=route, reason=reason) == 0
    pairs = sum(proxy.metric("shadowtap_pairs_total", route=route) for route in MIRRORED_ROUTES)
    assert pairs > 0
    wait_for(
        lambda: proxy.metric("shadowtap_sink_records_total", sink="jsonl", outcome="written") == pairs,
        what="every pair written",
    )


@pytest.fixture(scope="module")
def dispatcher() -> Iterator[tuple[ShadowDispatcher, asyncio.AbstractEventLoop]]:
    settings_ = load_settings(
        overrides={
            "primary": {"url": "http://127.0.0.1:9/v1"},
            "candidate": {"url": "http://127.0.0.1:9/v1"},
            "shadow": {
                "routes": {"/v1/completions": 0.5},
                "sample_key": "header:X-Session",
                "queue_size": 4,
            },
            "tags": {"segments": ["billing"]},
        },
        environ={},
    )
    upstream = Upstream("candidate", settings_.candidate)
    loop = asyncio.new_event_loop()
    yield ShadowDispatcher(settings_, upstream, Metrics(), []), loop
    loop.run_until_complete(upstream.aclose())
    loop.close()


header_names = st.sampled_from(
    [b"content-type", b"x-session", b"x-shadow-segment", b"authorization", b"host", b"Content-Type"]
) | st.binary(min_size=1, max_size=20)
raw_headers = st.lists(st.tuples(header_names, st.binary(max_size=60)), max_size=6)


@settings(max_examples=400, deadline=None)
@example(raw=b'{"messages": [{"content": [{"text": 5}]}]}', headers=[], path=CHAT_ROUTE)
@given(
    raw=bodies | st.binary(max_size=2000),
    headers=raw_headers,
    path=st.sampled_from(sorted(MIRRORED_ROUTES)) | st.text(max_size=40).map(lambda s: "/v1/" + s),
)
def test_fuzz_the_request_parser_never_raises(dispatcher, raw, headers, path):
    shadow, loop = dispatcher
    route = route_label(path)
    forwarded = forward_headers(headers)
    assert all(k.lower() not in (b"host", b"content-length", b"connection") for k, _ in forwarded)

    async def decide() -> None:
        job = shadow.consider(route, headers, raw)
        if job is not None:
            shadow.submit(job)

    loop.run_until_complete(decide())
    while not shadow.queue.empty():
        shadow.queue.get_nowait()
        shadow.queue.task_done()
    shadow.pending.clear()


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=200) | bodies, max_size=5),
    streaming=st.booleans(),
    status=st.sampled_from([200, 400, 429, 500]),
)
def test_fuzz_the_answer_parser_never_raises(chunks, streaming, status):
    started = time.perf_counter()
    assembler = SideAssembler(streaming=streaming, started=started)
    for chunk in chunks:
        assembler.feed(chunk, time.perf_counter())
    result = assembler.finish(SideResult(status=status), time.perf_counter(), CHAT_ROUTE)
    json.dumps(result.to_dict())
