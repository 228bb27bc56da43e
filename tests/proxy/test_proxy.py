"""The proxy as a user sees it: the primary's answers unchanged, the candidate mirrored off the request path."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import zlib

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from shadowtap.records import validate_pair
from shadowtap.testing.upstreams import Reply, serve_in_thread
from tests.helpers import wait_for

CHAT = [{"role": "user", "content": "How do I reset my router?"}]


def client_for(proxy, key: str = "sk-user-secret") -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key=key, max_retries=0)


def test_non_streamed_answer_reaches_the_client_unchanged_and_the_pair_is_recorded(proxy, primary, candidate):
    primary.sim.policy = lambda route, body: Reply(text="Unplug it for ten seconds, then plug it back in.")
    candidate.sim.policy = lambda route, body: Reply(text="Hold the reset button for 30 seconds.")

    answer = client_for(proxy).chat.completions.create(model="prod-model", messages=CHAT)

    assert answer.choices[0].message.content == "Unplug it for ten seconds, then plug it back in."
    [pair] = proxy.pairs(expected=1)
    validate_pair(pair)
    assert pair["primary"]["text"] == "Unplug it for ten seconds, then plug it back in."
    assert pair["candidate"]["text"] == "Hold the reset button for 30 seconds."
    assert pair["candidate"]["model"] == "candidate-model"
    assert pair["primary"]["status"] == pair["candidate"]["status"] == 200
    assert pair["primary"]["finish_reason"] == "stop"
    assert pair["primary"]["usage"]["total_tokens"] > 0
    assert pair["request"]["messages"] == CHAT
    assert pair["tags"] == {"route": "/v1/chat/completions", "segment": "none", "length_bucket": "0-500"}


def test_streamed_answer_assembles_for_the_client_and_both_sides_record_ttft(proxy, primary, candidate):
    text = "First unplug the router, wait ten seconds, then plug it in again and wait for the lights."
    primary.sim.policy = lambda route, body: Reply(text=text, token_delay_s=0.002)
    candidate.sim.policy = lambda route, body: Reply(text="Candidate says reboot it.", ttft_s=0.05)

    stream = client_for(proxy).chat.completions.create(
        model="prod-model", messages=CHAT, stream=True, stream_options={"include_usage": True}
    )
    received = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    assert received == text
    [pair] = proxy.pairs(expected=1)
    validate_pair(pair)
    assert pair["stream"] is True
    assert pair["primary"]["text"] == text
    assert pair["candidate"]["text"] == "Candidate says reboot it."
    assert pair["primary"]["ttft_ms"] is not None and pair["candidate"]["ttft_ms"] >= 50
    assert pair["primary"]["usage"]["completion_tokens"] > 0
    assert proxy.metric("shadowtap_ttft_seconds_count", route="/v1/chat/completions", side="candidate") == 1


@pytest.fixture
def exact_upstream():
    """An upstream with odd, exact bytes and headers, and a stream the test releases chunk by chunk."""
    release = threading.Event()
    body = b'{"id":"cmpl-1",  "object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}\n'

    async def chat(request):
        payload = json.loads(await request.body())
        if payload.get("stream"):

            async def chunks():
                yield b'data: {"choices":[{"index":0,"delta":{"content":"first"}}]}\n\n'
                # Only continues once the client has seen the first chunk; behind a proxy that buffers, the
                # client never does, and the stream ends here without the rest.
                if not await asyncio.get_running_loop().run_in_executor(None, release.wait, 5):
                    return
                yield b'data: {"choices":[{"index":0,"delta":{"content":" second"},"finish_reason":"stop"}]}\n\n'
                yield b"data: [DONE]\n\n"

            return StreamingResponse(chunks(), media_type="text/event-stream", headers={"x-trace": "s-1"})
        response = Response(body, media_type="application/json", headers={"x-upstream-trace": "abc 123"})
        response.raw_headers.append((b"set-cookie", b"a=1"))
        response.raw_headers.append((b"set-cookie", b"b=2"))
        return response

    handle = serve_in_thread(Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]))
    yield handle, body, release
    release.set()
    handle.stop()


def test_body_and_headers_are_byte_identical(proxy_factory, exact_upstream, candidate):
    handle, body, _ = exact_upstream
    proxy = proxy_factory(handle.base_url, candidate.base_url)
    request = {"model": "m", "messages": CHAT}

    direct = httpx.post(handle.base_url + "/chat/completions", json=request)
    via = httpx.post(proxy.base_url + "/chat/completions", json=request)

    assert via.content == direct.content == body
    assert via.status_code == direct.status_code
    assert via.headers["x-upstream-trace"] == "abc 123"
    assert via.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert via.headers["content-type"] == direct.headers["content-type"]


def test_stream_chunks_pass_through_as_they_arrive(proxy_factory, exact_upstream, candidate):
    handle, _, release = exact_upstream
    proxy = proxy_factory(handle.base_url, candidate.base_url)
    request = {"model": "m", "messages": CHAT, "stream": True}

    with httpx.stream("POST", proxy.base_url + "/chat/completions", json=request, timeout=15) as response:
        chunks = response.iter_raw()
        first = next(chunks)
        assert b"first" in first  # arrived while the upstream is still holding back the rest
        release.set()
        rest = b"".join(chunks)
    assert response.headers["x-trace"] == "s-1"
    assert b" second" in rest and rest.endswith(b"data: [DONE]\n\n")
    [pair] = proxy.pairs(expected=1)
    assert pair["primary"]["text"] == "first second"


@pytest.fixture
def unsized_upstream():
    """An upstream whose bodies carry no length: a file download it holds back part-way, and a plain
    chat answer sent with chunked transfer coding (as some gateways send every answer)."""
    release = threading.Event()
    head, tail = b"\x00\x01" * (512 * 1024), bytes(range(256)) * 28_000

    async def download(request):
        async def pieces():
            yield head
            # Only continues once the client has the first MiB; behind a proxy that buffers, it ends here.
            if await asyncio.get_running_loop().run_in_executor(None, release.wait, 5):
                yield tail

        return StreamingResponse(pieces(), media_type="application/octet-stream")

    async def chat(request):
        doc = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "gw",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Sent in chunks."},
                    "finish_reason": "stop",
                }
            ],
        }

        async def pieces():
            encoded = json.dumps(doc).encode()
            yield encoded[:20]
            yield encoded[20:]

        return StreamingResponse(pieces(), media_type="application/json")

    app = Starlette(
        routes=[
            Route("/v1/files/file-1/content", download, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ]
    )
    handle = serve_in_thread(app)
    yield handle, head + tail, release
    release.set()
    handle.stop()


def test_a_large_download_of_unknown_length_passes_through_as_it_arrives(proxy_factory, unsized_upstream):
    handle, whole, release = unsized_upstream
    proxy = proxy_factory(handle.base_url, None)

    with httpx.stream("GET", proxy.base_url + "/files/file-1/content", timeout=15) as response:
        received = bytearray()
        chunks = response.iter_raw()
        while len(received) < 1024 * 1024:  # the first MiB, while the upstream still holds back the rest
            received += next(chunks)
        release.set()
        for chunk in chunks:
            received += chunk

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert bytes(received) == whole


def test_a_plain_answer_sent_in_chunks_is_served_and_recorded(proxy_factory, unsized_upstream, candidate):
    handle, _, _ = unsized_upstream
    proxy = proxy_factory(handle.base_url, candidate.base_url)

    answer = client_for(proxy).chat.completions.create(model="gw", messages=CHAT)

    assert answer.choices[0].message.content == "Sent in chunks."
    [pair] = proxy.pairs(expected=1)
    validate_pair(pair)
    assert pair["primary"]["text"] == "Sent in chunks."
    assert pair["primary"]["finish_reason"] == "stop"
    assert pair["primary"]["ttft_ms"] is None


def test_a_streams_headers_reach_the_client_before_its_first_token(proxy_factory, candidate):
    # A model server sends its headers at once and the first token after prefill, which on a long prompt
    # takes seconds; clients (the OpenAI SDK among them) return from `create` when the headers are in.
    release = threading.Event()

    async def chat(request):
        async def events():
            if await asyncio.get_running_loop().run_in_executor(None, release.wait, 5):
                yield b'data: {"choices":[{"index":0,"delta":{"content":"late"},"finish_reason":"stop"}]}\n\n'
                yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    handle = serve_in_thread(Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]))
    try:
        proxy = proxy_factory(handle.base_url, candidate.base_url)
        request = {"model": "m", "messages": CHAT, "stream": True}
        with httpx.stream("POST", proxy.base_url + "/chat/completions", json=request, timeout=15) as response:
            # Here only if the head came through while the upstream still holds its first event.
            assert response.status_code == 200
            release.set()
            body = response.read()
        assert b'"late"' in body and body.endswith(b"data: [DONE]\n\n")
    finally:
        release.set()
        handle.stop()


def test_a_gzip_answer_reaches_the_client_as_sent_and_is_recorded_decoded(proxy_factory, candidate):
    # Gateways compress for clients that accept it (the OpenAI SDK does); the proxy passes the
    # compressed bytes through untouched and decodes its own copy for the record.
    answer = {
        "choices": [{"index": 0, "message": {"content": "Compressed answer."}, "finish_reason": "stop"}]
    }
    plain = json.dumps(answer).encode()
    compressed = gzip.compress(plain, mtime=0)
    stream_events = [
        b'data: {"choices":[{"index":0,"delta":{"content":"Compressed"}}]}\n\n',
        b'data: {"choices":[{"index":0,"delta":{"content":" stream."},"finish_reason":"stop"}]}\n\n',
        b"data: [DONE]\n\n",
    ]

    async def chat(request):
        assert "gzip" in request.headers.get("accept-encoding", "")
        if json.loads(await request.body()).get("stream"):

            async def events():
                packer = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
                for event in stream_events:
                    yield packer.compress(event) + packer.flush(zlib.Z_SYNC_FLUSH)
                yield packer.flush()

            return StreamingResponse(
                events(), media_type="text/event-stream", headers={"content-encoding": "gzip"}
            )
        return Response(compressed, media_type="application/json", headers={"content-encoding": "gzip"})

    handle = serve_in_thread(Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]))
    try:
        proxy = proxy_factory(handle.base_url, candidate.base_url)
        with httpx.stream(
            "POST", proxy.base_url + "/chat/completions", json={"model": "m", "messages": CHAT}
        ) as via:
            raw = b"".join(via.iter_raw())
        assert via.headers["content-encoding"] == "gzip"
        assert raw == compressed

        streamed = client_for(proxy).chat.completions.create(model="m", messages=CHAT, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == "Compressed stream."

        pairs = sorted(proxy.pairs(expected=2), key=lambda pair: pair["stream"])
        assert [p["primary"]["text"] for p in pairs] == ["Compressed answer.", "Compressed stream."]
        assert all(p["primary"]["error"] is None for p in pairs)
        assert pairs[1]["primary"]["ttft_ms"] is not None
    finally:
        handle.stop()


def test_the_path_reaches_the_primary_escaped_as_the_client_sent_it(proxy_factory):
    # Model ids carry slashes (`meta-llama/Llama-3-8B`), escaped as %2F in a path segment; decoding them
    # on the way would send the primary another path.
    async def echo(request):
        return JSONResponse({"raw_path": request.scope["raw_path"].decode(), "query": request.url.query})

    handle = serve_in_thread(Starlette(routes=[Route("/v1/{rest:path}", echo, methods=["GET"])]))
    try:
        proxy = proxy_factory(handle.base_url, None)
        for path in ("/models/meta-llama%2FLlama-3-8B", "/files/report%20v2%25.pdf/content?purpose=a%2Fb"):
            direct = httpx.get(handle.base_url + path).json()
            via = httpx.get(proxy.base_url + path).json()
            assert via == direct
        assert via == {"raw_path": "/v1/files/report%20v2%25.pdf/content", "query": "purpose=a%2Fb"}
        assert httpx.get(proxy.base_url + "/models/meta-llama%2FLlama-3-8B").json()["raw_path"] == (
            "/v1/models/meta-llama%2FLlama-3-8B"
        )
    finally:
        handle.stop()


def test_slow_candidate_does_not_hold_up_the_user(proxy, primary, candidate):
    candidate.sim.policy = lambda route, body: Reply(text="slow", ttft_s=3.0)

    answer = client_for(proxy).chat.completions.create(model="m", messages=CHAT)

    # The user has the answer while the candidate is still working on its copy.
    assert answer.choices[0].message.content
    assert proxy.metric("shadowtap_shadow_in_flight") == 1
    assert proxy.pairs() == []
    [pair] = proxy.pairs(expected=1, timeout=10)
    assert pair["candidate"]["latency_ms"] >= 3000


def test_dead_candidate_is_counted_and_recorded_but_the_user_is_served(proxy_factory, primary):
    # Nothing listens on port 9; the model is named, so shadows are sent (and fail), not skipped.
    proxy = proxy_factory(primary.base_url, "http://127.0.0.1:9/v1", candidate={"model": "candidate-model"})

    answer = client_for(proxy).chat.completions.create(model="m", messages=CHAT)

    assert answer.choices[0].message.content
    [pair] = proxy.pairs(expected=1)
    assert pair["candidate"]["error"]["kind"] == "connect"
    assert pair["candidate"]["status"] is None
    assert proxy.metric("shadowtap_candidate_errors_total", route="/v1/chat/completions", kind="connect") == 1


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (Reply(status=500), "http_5xx"),
        (Reply(status=429), "http_429"),
        (Reply(fault="garbage"), "invalid_response"),
    ],
)
def test_candidate_failures_are_counted_by_kind(proxy, candidate, reply, kind):
    candidate.sim.policy = lambda route, body: reply

    answer = client_for(proxy).chat.completions.create(model="m", messages=CHAT)

    assert answer.choices[0].message.content
    [pair] = proxy.pairs(expected=1)
    assert pair["candidate"]["error"]["kind"] == kind
    assert proxy.metric("shadowtap_candidate_errors_total", route="/v1/chat/completions", kind=kind) == 1


def test_truncated_candidate_stream_is_recorded_as_such(proxy, candidate):
    candidate.sim.policy = lambda route, body: Reply(text="one two three four five six", fault="truncate")

    stream = client_for(proxy).chat.completions.create(model="m", messages=CHAT, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    [pair] = proxy.pairs(expected=1)
    assert pair["candidate"]["error"]["kind"] == "truncated_stream"
    assert pair["candidate"]["text"]


def test_candidate_timeout_is_enforced(proxy_factory, primary, candidate):
    candidate.sim.policy = lambda route, body: Reply(fault="hang")
    proxy = proxy_factory(primary.base_url, candidate.base_url, candidate={"timeout_s": 0.5})

    client_for(proxy).chat.completions.create(model="m", messages=CHAT)

    [pair] = proxy.pairs(expected=1)
    assert pair["candidate"]["error"]["kind"] == "timeout"
    assert proxy.metric("shadowtap_candidate_errors_total", route="/v1/chat/completions", kind="timeout") == 1


def test_full_shadow_queue_drops_and_counts_without_waiting(proxy_factory, primary, candidate):
    candidate.sim.policy = lambda route, body: Reply(text="late", ttft_s=2.0)
    proxy = proxy_factory(primary.base_url, candidate.base_url, shadow={"concurrency": 1, "queue_size": 1})
    client = client_for(proxy)

    answers = [client.chat.completions.create(model="m", messages=CHAT) for _ in range(5)]

    assert all(a.choices[0].message.content for a in answers)
    # One in flight, one queued, three dropped: all five users were served meanwhile.
    assert (
        proxy.metric("shadowtap_shadow_dropped_total", route="/v1/chat/completions", reason="queue_full") == 3
    )
    assert proxy.metric("shadowtap_shadow_sampled_total", route="/v1/chat/completions") == 5
    assert len(proxy.pairs(expected=2, timeout=10)) == 2


def test_client_credentials_never_reach_the_candidate_or_the_records(proxy_factory, primary, candidate):
    proxy = proxy_factory(
        primary.base_url, candidate.base_url, candidate={"api_key": "sk-candidate-key", "model": "cand-7b"}
    )
    client = openai.OpenAI(
        base_url=proxy.base_url,
        api_key="sk-user-secret",
        default_headers={
            "Cookie": "session=topsecret",
            "api-key": "azure-secret",
            "X-Shadow-Segment": "billing",
        },
        max_retries=0,
    )

    client.chat.completions.create(model="prod-model", messages=CHAT)
    proxy.pairs(expected=1)

    [to_primary] = primary.sim.received
    [to_candidate] = candidate.sim.received
    assert to_primary.headers["authorization"] == "Bearer sk-user-secret"
    assert to_primary.headers["cookie"] == "session=topsecret"
    assert to_candidate.headers["authorization"] == "Bearer sk-candidate-key"
    for secret in ("cookie", "api-key", "x-shadow-segment"):
        assert secret not in to_candidate.headers
    assert json.loads(to_candidate.body)["model"] == "cand-7b"
    assert json.loads(to_primary.body)["model"] == "prod-model"
    recorded = (proxy.data_dir / "pairs.jsonl").read_text()
    exported = httpx.get(proxy.url + "/metrics").text
    for secret in ("sk-user-secret", "topsecret", "azure-secret", "sk-candidate-key"):
        assert secret not in recorded
        assert secret not in exported


def test_upstream_http_errors_pass_through_with_status_and_body(proxy, primary):
    primary.sim.policy = lambda route, body: Reply(
        status=429,
        error_body={"error": {"message": "Slow down, tier 1", "type": "rate_limit", "code": "rate"}},
    )

    with pytest.raises(openai.RateLimitError) as excinfo:
        client_for(proxy).chat.completions.create(model="m", messages=CHAT)

    assert excinfo.value.status_code == 429
    assert "Slow down, tier 1" in str(excinfo.value)


def test_unreachable_primary_gives_502_and_a_hung_one_504(proxy_factory, primary, candidate):
    down = proxy_factory("http://127.0.0.1:9/v1", candidate.base_url)
    response = httpx.post(down.base_url + "/chat/completions", json={"model": "m", "messages": CHAT})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"

    primary.sim.policy = lambda route, body: Reply(fault="hang")
    slow = proxy_factory(primary.base_url, candidate.base_url, primary={"timeout_s": 0.5})
    response = httpx.post(
        slow.base_url + "/chat/completions", json={"model": "m", "messages": CHAT}, timeout=10
    )
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    [pair] = slow.pairs(expected=1)
    assert pair["primary"]["error"]["kind"] == "timeout"
    assert slow.metric("shadowtap_primary_errors_total", route="/v1/chat/completions", kind="timeout") == 1


def test_other_routes_go_to_the_primary_only(proxy, primary, candidate):
    client = client_for(proxy)

    models = client.models.list()
    embedding = client.embeddings.create(model="m", input="hello")

    assert [m.id for m in models.data] == ["primary-model"]
    assert embedding.data[0].embedding
    assert [r.path for r in primary.sim.received] == ["/v1/models", "/v1/embeddings"]
    assert len(candidate.sim.received) == 0


def test_text_completions_are_mirrored_too(proxy, primary, candidate):
    completion = client_for(proxy).completions.create(model="m", prompt="Say hello")

    assert completion.choices[0].text
    [pair] = proxy.pairs(expected=1)
    assert pair["route"] == "/v1/completions"
    assert pair["primary"]["text"] == completion.choices[0].text
    assert pair["candidate"]["text"]


def test_sampling_by_user_is_deterministic(proxy_factory, primary, candidate):
    proxy = proxy_factory(
        primary.base_url,
        candidate.base_url,
        shadow={"sample_rate": 0.5, "sample_key": "body:user"},
        candidate={"model": "candidate-model"},
    )
    client = client_for(proxy)
    users = [f"user-{i}" for i in range(30)]

    for _ in range(2):
        for user in users:
            client.chat.completions.create(model="m", messages=CHAT, user=user)

    wait_for(
        lambda: (
            proxy.metric("shadowtap_pairs_total", route="/v1/chat/completions") == len(candidate.sim.received)
        )
    )
    mirrored = [json.loads(r.body)["user"] for r in candidate.sim.received]
    counts = {u: mirrored.count(u) for u in users}
    assert set(counts.values()) <= {0, 2}, "a user's conversation must be always or never mirrored"
    assert 0 < len(mirrored) < 60


def test_segment_length_bucket_and_pii_masking_in_the_record(proxy_factory, primary, candidate):
    proxy = proxy_factory(primary.base_url, candidate.base_url, tags={"segments": ["billing"]})
    client = openai.OpenAI(
        base_url=proxy.base_url, api_key="k", default_headers={"X-Shadow-Segment": "billing"}
    )
    long_text = (
        "My card 4111 1111 1111 1111 was charged twice, write to jane.doe@example.com or +1 415 555 0132. "
        * 10
    )

    client.chat.completions.create(model="m", messages=[{"role": "user", "content": long_text}])

    [pair] = proxy.pairs(expected=1)
    assert pair["tags"]["segment"] == "billing"
    assert pair["tags"]["length_bucket"] == "500-2000"
    content = pair["request"]["messages"][0]["content"]
    assert "4111" not in content and "jane.doe" not in content and "555" not in content
    assert "[CARD]" in content and "[EMAIL]" in content and "[PHONE]" in content
    # The primary itself got the original text: masking is for what is written, not what is served.
    assert "jane.doe@example.com" in json.loads(primary.sim.received[0].body)["messages"][0]["content"]


def test_unparseable_and_oversized_bodies_are_served_but_not_mirrored(proxy_factory, primary, candidate):
    proxy = proxy_factory(
        primary.base_url,
        candidate.base_url,
        shadow={"max_body_bytes": 2000},
        candidate={"model": "candidate-model"},
    )

    bad = httpx.post(
        proxy.base_url + "/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    big = httpx.post(
        proxy.base_url + "/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "x" * 5000}]},
    )

    assert bad.status_code == 400  # the primary's own answer to a malformed body
    assert big.status_code == 200
    assert len(candidate.sim.received) == 0
    assert (
        proxy.metric("shadowtap_shadow_skipped_total", route="/v1/chat/completions", reason="unparseable")
        == 1
    )
    assert (
        proxy.metric("shadowtap_shadow_skipped_total", route="/v1/chat/completions", reason="too_large") == 1
    )


def test_metrics_are_exported_with_bounded_labels(proxy):
    client = client_for(proxy)
    client.chat.completions.create(model="m", messages=CHAT)
    proxy.pairs(expected=1)
    httpx.get(proxy.url + "/v1/some/random/path/123")

    text = httpx.get(proxy.url + "/metrics").text
    assert 'shadowtap_requests_total{route="/v1/chat/completions",side="primary",status="200"} 1.0' in text
    assert 'shadowtap_requests_total{route="/v1/chat/completions",side="candidate",status="200"} 1.0' in text
    assert "shadowtap_proxy_overhead_seconds_bucket" in text
    assert 'shadowtap_sink_records_total{outcome="written",sink="jsonl"} 1.0' in text
    assert 'route="other"' in text and "random" not in text
