"""Security: no credential or personal data leaks, only configured upstreams are called, labels stay bounded,
and /metrics can live on its own port and interface.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shadowtap.config import DEFAULT_SECRET_HEADERS, load_settings
from shadowtap.errors import ConfigError
from shadowtap.proxy.redact import Redactor, luhn_ok
from shadowtap.testing.upstreams import Reply
from tests.helpers import free_port, healthy, start_serve, wait_for

REPO = Path(__file__).resolve().parents[2]
CHAT_ROUTE = "/v1/chat/completions"
CHAT = [{"role": "user", "content": "Can I change my delivery address?"}]

USER_KEY = "sk-user-0c7f1e9d"
COOKIE = "session=cookie-5b2e8a"
AZURE_KEY = "azure-key-9d41c3"
TENANT_TOKEN = "tenant-token-77aa01"
CANDIDATE_KEY = "sk-candidate-3f8e2b"
JUDGE_KEY = "sk-judge-a61d4c"
CLIENT_SECRETS = (USER_KEY, COOKIE.split("=")[1], AZURE_KEY, TENANT_TOKEN)


def raw_post(port: int, target: str, host: str) -> bytes:
    """POST a chat request with `target` verbatim in the request line; the raw response."""
    body = json.dumps({"model": "m", "messages": CHAT}).encode()
    head = (
        f"POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head.encode() + body)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return reply


def scores_total(proxy: Any) -> float:
    """Score records produced so far: the sum of `shadowtap_scores_total` over its label sets."""
    return sum(
        s.value
        for family in proxy.metrics.registry.collect()
        if family.name == "shadowtap_scores"
        for s in family.samples
        if s.name == "shadowtap_scores_total"
    )


def verdict_policy(route: str, body: dict[str, Any]) -> Reply:
    return Reply(text=json.dumps({"winner": "tie", "reason": "both fine"}))


def test_client_credentials_reach_only_the_primary_and_upstream_keys_only_their_upstream(
    proxy_factory, primary, candidate, upstream_factory, caplog
):
    judge = upstream_factory("judge-model", verdict_policy)
    candidate.sim.policy = lambda route, body: Reply(text="Yes, from your account page.")
    proxy = proxy_factory(
        primary.base_url,
        candidate.base_url,
        candidate={"api_key": CANDIDATE_KEY, "model": "cand-7b"},
        redaction={"headers": [*DEFAULT_SECRET_HEADERS, "x-tenant-token"]},
        scoring={
            "scorers": {
                "format": {},
                "refusal": {},
                "latency": {},
                "judge": {"base_url": judge.base_url, "model": "judge-model", "api_key": JUDGE_KEY},
            }
        },
    )
    caplog.set_level(logging.DEBUG)
    client = openai.OpenAI(
        base_url=proxy.base_url,
        api_key=USER_KEY,
        default_headers={"Cookie": COOKIE, "api-key": AZURE_KEY, "X-Tenant-Token": TENANT_TOKEN},
        max_retries=0,
    )

    client.chat.completions.create(model="prod", messages=CHAT)
    for _ in client.chat.completions.create(model="prod", messages=CHAT, stream=True):
        pass
    wait_for(lambda: proxy.metric("shadowtap_pairs_scored_total", source="embedded") == 2, what="scoring")
    wait_for(
        lambda: (
            proxy.metric("shadowtap_sink_records_total", sink="scores", outcome="written")
            == scores_total(proxy)
        ),
        what="every score record written",
    )

    def seen(requests: list[Any]) -> str:
        return "\n".join(f"{r.headers}\n{r.body.decode('utf-8', 'replace')}" for r in requests)

    assert len(primary.sim.received) == len(candidate.sim.received) == 2
    assert len(judge.sim.received) == 4  # two pairs, each judged in both orders
    # The primary is the user's own endpoint: it gets the user's credentials and nothing of ours.
    assert all(r.headers["authorization"] == f"Bearer {USER_KEY}" for r in primary.sim.received)
    assert all(r.headers["x-tenant-token"] == TENANT_TOKEN for r in primary.sim.received)
    for secret in (CANDIDATE_KEY, JUDGE_KEY):
        assert secret not in seen(primary.sim.received)
    assert all(r.headers["authorization"] == f"Bearer {CANDIDATE_KEY}" for r in candidate.sim.received)
    assert all(r.headers["authorization"] == f"Bearer {JUDGE_KEY}" for r in judge.sim.received)
    for secret in (*CLIENT_SECRETS, JUDGE_KEY):
        assert secret not in seen(candidate.sim.received)
    for secret in (*CLIENT_SECRETS, CANDIDATE_KEY):
        assert secret not in seen(judge.sim.received)

    records = "".join(p.read_text() for p in sorted(proxy.data_dir.glob("*.jsonl")))
    assert "pairs.jsonl" in {p.name for p in proxy.data_dir.glob("*.jsonl")}
    logs = caplog.text + "\n".join(str(r.__dict__) for r in caplog.records)
    exported = httpx.get(proxy.url + "/metrics").text
    for secret in (*CLIENT_SECRETS, CANDIDATE_KEY, JUDGE_KEY):
        assert secret not in records
        assert secret not in logs
        assert secret not in exported


def test_only_configured_upstreams_are_ever_called(proxy, primary, candidate, upstream_factory, request):
    attacker = upstream_factory("attacker-model")
    other = f"127.0.0.1:{attacker.handle.port}"
    client = httpx.Client(base_url=proxy.base_url)
    request.addfinalizer(client.close)
    sent = 0

    for name, value in {
        "Host": other,
        "X-Forwarded-Host": other,
        "X-Forwarded-Server": other,
        "Forwarded": f"host={other};proto=http",
        "X-Upstream": attacker.base_url,
        "X-Original-URL": attacker.base_url + "/chat/completions",
    }.items():
        response = client.post(
            "/chat/completions", json={"model": "m", "messages": CHAT}, headers={name: value}
        )
        assert response.status_code == 200, name
        sent += 1
    body = {
        "model": "m",
        "messages": CHAT,
        "base_url": attacker.base_url,
        "url": attacker.base_url + "/chat/completions",
        "api_base": attacker.base_url,
    }
    assert client.post("/chat/completions", json=body).status_code == 200
    sent += 1
    # Request targets that name the attacker's host: in absolute form (only its path is used), and paths
    # that would change the authority if pasted into a URL carelessly.
    targets = {
        f"{attacker.base_url}/chat/completions": 200,
        f"/v1//{other}/chat/completions": 404,
        f"/v1/@{other}/chat/completions": 404,
        # Refused by the proxy itself (400): it would climb out of /v1/ behind a decoding upstream.
        f"/v1/..%2f..%2f{other}/chat/completions": 400,
    }
    for target, status in targets.items():
        assert raw_post(proxy.handle.port, target, other).startswith(f"HTTP/1.1 {status}".encode()), target
        sent += status != 400

    wait_for(lambda: len(candidate.sim.received) == 8, what="the mirrored requests")
    assert attacker.sim.received == []
    assert len(primary.sim.received) == sent
    assert {r.path for r in candidate.sim.received} == {CHAT_ROUTE}


def test_pii_is_masked_in_records_but_served_unmasked(proxy_factory, primary, candidate):
    answer = "We will email ana.silva@example.org and call +351 912 345 678 about ACC-20240117."
    primary.sim.policy = lambda route, body: Reply(text=answer)
    candidate.sim.policy = lambda route, body: Reply(text="Card 5555 5555 5555 4444 is on file.")
    proxy = proxy_factory(
        primary.base_url, candidate.base_url, redaction={"pii": {"patterns": {"account": r"ACC-\d{8}"}}}
    )
    question = "I am ana.silva@example.org, card 4111-1111-1111-1111, order 4111 1111 1111 1112, ACC-12345678"

    served = openai.OpenAI(base_url=proxy.base_url, api_key="k").chat.completions.create(
        model="m", messages=[{"role": "user", "content": question}]
    )

    assert served.choices[0].message.content == answer
    [pair] = proxy.pairs(expected=1)
    assert pair["request"]["messages"][0]["content"] == (
        "I am [EMAIL], card [CARD], order 4111 1111 1111 1112, [ACCOUNT]"
    )
    assert pair["primary"]["text"] == "We will email [EMAIL] and call [PHONE] about [ACCOUNT]."
    assert pair["candidate"]["text"] == "Card [CARD] is on file."


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("write to jane.doe+billing@mail.example.co.uk today", "write to [EMAIL] today"),
        ("call (415) 555-0132 or +44 20 7946 0958", "call [PHONE] or [PHONE]"),
        ("card 4111111111111111 expires", "card [CARD] expires"),
        ("amex 3782 822463 10005", "amex [CARD]"),
        ("order 4111111111111112 shipped", "order 4111111111111112 shipped"),  # fails Luhn: not a card
        ("on 2024-01-15 at 10:30, version 1.2.3", "on 2024-01-15 at 10:30, version 1.2.3"),
        ("account ACC-00001234 closed", "account [ACCOUNT] closed"),
    ],
)
def test_the_default_template_masks_pii(text, masked):
    settings = load_settings(REPO / "deploy" / "shadowtap.example.yaml", environ={})
    pii = settings.redaction.pii
    assert pii.enabled and pii.emails and pii.phones and pii.cards
    assert {"authorization", "cookie", "api-key"} <= set(settings.redaction.headers)
    redactor = Redactor(pii.model_copy(update={"patterns": {"account": r"ACC-\d{8}"}}))

    assert redactor.text(text) == masked


def test_luhn_check_tells_cards_from_other_numbers():
    assert luhn_ok("4111111111111111") and luhn_ok("378282246310005")
    assert not luhn_ok("4111111111111112") and not luhn_ok("1234567812345678")


def series_per_metric(text: str) -> Counter[str]:
    return Counter(family.name for family in text_string_to_metric_families(text) for _ in family.samples)


def test_a_flood_of_segment_values_does_not_grow_any_metrics_series(proxy_factory, primary, candidate):
    candidate.sim.policy = lambda route, body: Reply(text='{"answer": "From the candidate."}')
    proxy = proxy_factory(
        primary.base_url,
        candidate.base_url,
        tags={"segments": ["billing", "support"]},
        # Scorers whose outcomes depend only on the answers (the latency scorer's depend on load).
        scoring={"scorers": {"format": {}, "refusal": {}}},
        shadow={"queue_size": 1000},
    )

    async def send(segments: list[str]) -> None:
        limit = asyncio.Semaphore(16)
        async with httpx.AsyncClient(base_url=proxy.base_url, timeout=30) as client:

            async def one(segment: str) -> None:
                async with limit:
                    response = await client.post(
                        "/chat/completions",
                        json={"model": "m", "messages": CHAT, "response_format": {"type": "json_object"}},
                        headers={"X-Shadow-Segment": segment},
                    )
                    assert response.status_code == 200

            await asyncio.gather(*(one(s) for s in segments))

    def scored(n: int) -> bool:
        return proxy.metric("shadowtap_pairs_scored_total", source="embedded") == n

    asyncio.run(send(["billing", "first-unknown"]))
    wait_for(lambda: scored(2), what="the warm-up pairs to be scored")
    before = httpx.get(proxy.url + "/metrics").text

    flood = [f"tenant-{i}-{os.urandom(4).hex()}" for i in range(500)]
    asyncio.run(send(flood))
    wait_for(lambda: scored(502), 30, what="the flood to be scored")
    after = httpx.get(proxy.url + "/metrics").text

    assert series_per_metric(after) == series_per_metric(before)
    assert not any(segment in after for segment in flood)
    for side in ("primary", "candidate"):
        labels = {"scorer": "format", "side": side, "outcome": "pass"}
        assert proxy.metric("shadowtap_scores_total", **labels, segment="other") == 501
        assert proxy.metric("shadowtap_scores_total", **labels, segment="billing") == 1
    # The record keeps the raw value for slicing offline; only metric labels are bounded.
    assert {p["tags"]["segment"] for p in proxy.pairs()} >= set(flood)


def test_metrics_can_be_served_on_their_own_port_and_interface(tmp_path: Path, primary, candidate):
    user_port, metrics_port = free_port(), free_port("127.0.0.2")
    proc = start_serve(
        tmp_path,
        {
            "primary": {"url": primary.base_url},
            "candidate": {"url": candidate.base_url},
            "server": {
                "host": "127.0.0.1",
                "port": user_port,
                "metrics_host": "127.0.0.2",
                "metrics_port": metrics_port,
                "shutdown_grace_s": 1,
            },
            "sink": {"data_dir": str(tmp_path / "data")},
        },
    )
    user = f"http://127.0.0.1:{user_port}"
    try:
        wait_for(lambda: healthy(user), 30, interval=0.05, what="shadowtap serve to accept connections")
        answer = httpx.post(user + "/v1/chat/completions", json={"model": "m", "messages": CHAT})
        assert answer.status_code == 200

        on_user_port = httpx.get(user + "/metrics")
        exported = httpx.get(f"http://127.0.0.2:{metrics_port}/metrics").text
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)

    assert on_user_port.status_code == 404
    assert on_user_port.json()["error"]["code"] == "not_found"
    assert (
        'shadowtap_requests_total{route="/v1/chat/completions",side="primary",status="200"} 1.0' in exported
    )


ESCAPING_PATHS = [
    "/v1/../../tenant-b/v1/chat/completions",
    "/v1/../../admin/reset",
    "/v1/%2e%2e/%2e%2e/admin/reset",
    "/v1/models/..%2f..%2f..%2fadmin/x",
    "/v%31/..%2F..%2Fadmin/x",
    "/v%31/models%3Fapi-version=evil",
    "/v1/chat/completions%23frag",
    "/v1/a%5C..%5Cadmin",
    "/v1/./chat/completions",
]


@pytest.mark.parametrize("target", ESCAPING_PATHS)
def test_a_path_that_would_leave_the_base_path_is_refused_and_never_forwarded(proxy, primary, target):
    """With the primary behind a prefix (`http://host/tenant-a/v1`), a gateway or server that decodes
    escapes and resolves dot segments would run these outside the tenant: the proxy refuses them."""
    reply = raw_post(proxy.handle.port, target, "127.0.0.1")

    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), target
    assert json.loads(body)["error"]["code"] == "invalid_path"
    assert primary.sim.received == []
    assert proxy.metric("shadowtap_requests_rejected_total", reason="path") == 1


def test_escapes_that_stay_inside_v1_reach_the_primary_in_one_canonical_form(proxy, primary):
    reply = raw_post(proxy.handle.port, "/v%31/chat/completions", "127.0.0.1")

    assert reply.startswith(b"HTTP/1.1 200")
    assert [r.path for r in primary.sim.received] == ["/v1/chat/completions"]
    assert proxy.metric("shadowtap_requests_rejected_total", reason="path") == 0


SPLITTING_SECRET = "sk-live\r\nX-Injected: 1"


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"SHADOWTAP_CANDIDATE_API_KEY": SPLITTING_SECRET}, "candidate.api_key"),
        ({"SHADOWTAP_PRIMARY_API_KEY": "sk\x00nul"}, "primary.api_key"),
        ({"SHADOWTAP_SENTINEL_API_KEY": SPLITTING_SECRET}, "sentinel.api_key"),
    ],
)
def test_a_key_with_control_characters_is_refused_at_start_up_without_echoing_it(environ, key):
    """A CR/LF in a key would split the request sent upstream; the error names the key, not its value."""
    with pytest.raises(ConfigError) as raised:
        load_settings(environ=environ)

    assert f"{key}: must not contain control characters" in str(raised.value)
    assert "sk-live" not in str(raised.value) and "nul" not in str(raised.value)


def test_a_configured_header_that_would_split_the_request_is_refused_at_start_up():
    with pytest.raises(ConfigError, match=r"candidate\.headers: the value of X-Team must not contain"):
        load_settings(overrides={"candidate": {"headers": {"X-Team": "a\r\nX-Injected: 1"}}}, environ={})
    with pytest.raises(ConfigError, match=r"candidate\.headers: 'X Team' is not a valid header name"):
        load_settings(overrides={"candidate": {"headers": {"X Team": "a"}}}, environ={})


def test_a_key_read_from_a_file_with_a_trailing_newline_is_sent_without_it(proxy_factory, primary, candidate):
    """`SHADOWTAP_CANDIDATE_API_KEY="$(cat key)"` strips the newline; a mounted secret often keeps it."""
    proxy = proxy_factory(primary.base_url, candidate.base_url, candidate={"api_key": "sk-cand\n"})

    openai.OpenAI(base_url=proxy.base_url, api_key="k", max_retries=0).chat.completions.create(
        model="m", messages=CHAT
    )

    wait_for(lambda: candidate.sim.received, what="the mirrored request")
    assert candidate.sim.received[0].headers["authorization"] == "Bearer sk-cand"


def test_a_judge_key_with_control_characters_in_its_variable_is_refused_naming_the_variable():
    from shadowtap.scorers.judge import JudgeScorer

    with pytest.raises(ConfigError, match=r"^SHADOWTAP_JUDGE_API_KEY: must not contain control characters"):
        JudgeScorer(
            {"base_url": "http://127.0.0.1:9/v1", "model": "judge"},
            environ={"SHADOWTAP_JUDGE_API_KEY": SPLITTING_SECRET},
        )


def test_a_body_on_a_get_is_not_forwarded_so_it_cannot_become_another_request(proxy, primary):
    """A primary that ignores GET bodies would run the smuggled POST and hand its answer to the next user."""
    smuggled = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    head = (
        f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(smuggled)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", proxy.handle.port)) as s:
        s.sendall(head + smuggled)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk

    assert reply.startswith(b"HTTP/1.1 200")
    assert [(r.method, r.path, r.body) for r in primary.sim.received] == [("GET", "/v1/models", b"")]
    assert proxy.metric("shadowtap_request_bodies_dropped_total", method="GET") == 1
