"""Which requests are mirrored: the same key always gets the same answer, at each route's own rate."""

from __future__ import annotations

import random
from typing import Any

import pytest

from shadowtap.config import Settings, load_settings
from shadowtap.proxy.shadow import Sampler

pytestmark = pytest.mark.unit

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def settings(**shadow: Any) -> Settings:
    return load_settings(
        overrides={"primary": {"url": "http://127.0.0.1:9/v1"}, "shadow": shadow},
        environ={},
    )


def chat(user: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    if user is not None:
        body["user"] = user
    return body


USERS = [f"user-{n}" for n in range(400)]


def test_the_same_user_is_always_or_never_mirrored_and_replicas_agree():
    config = settings(sample_rate=0.5, sample_key="body:user")
    first, second = Sampler(config), Sampler(config)  # two proxy replicas
    decisions = {user: first.chosen(CHAT, [], chat(user)) for user in USERS}
    for _ in range(3):
        assert {user: first.chosen(CHAT, [], chat(user)) for user in USERS} == decisions
    assert {user: second.chosen(CHAT, [], chat(user)) for user in USERS} == decisions
    # Half of the users, give or take: the key spreads them, it does not pick all or none.
    assert 0.4 < sum(decisions.values()) / len(USERS) < 0.6


def test_a_header_key_is_matched_whatever_its_case_and_the_body_does_not_matter():
    sampler = Sampler(settings(sample_rate=0.5, sample_key="header:X-Session"))
    for session in (f"s{n}" for n in range(100)):
        verdicts = {
            sampler.chosen(CHAT, [(b"x-session", session.encode())], chat("alice")),
            sampler.chosen(CHAT, [(b"X-Session", session.encode())], chat("bob")),
            sampler.chosen(
                CHAT, [(b"content-type", b"application/json"), (b"X-SESSION", session.encode())], {}
            ),
        }
        assert len(verdicts) == 1, session


def test_a_larger_rate_keeps_everyone_a_smaller_rate_kept():
    low = Sampler(settings(sample_rate=0.2))
    high = Sampler(settings(sample_rate=0.6))
    kept_low = {user for user in USERS if low.chosen(CHAT, [], chat(user))}
    kept_high = {user for user in USERS if high.chosen(CHAT, [], chat(user))}
    assert kept_low < kept_high  # raising the rate adds users; nobody mirrored before is dropped


def test_each_route_has_its_own_rate_and_other_routes_the_default():
    sampler = Sampler(settings(sample_rate=0.5, routes={CHAT: 1.0, COMPLETIONS: 0.0}))
    assert all(sampler.chosen(CHAT, [], chat(user)) for user in USERS)
    assert not any(sampler.chosen(COMPLETIONS, [], {"prompt": "hi", "user": user}) for user in USERS)
    other = sum(sampler.chosen("/v1/embeddings", [], chat(user)) for user in USERS) / len(USERS)
    assert 0.4 < other < 0.6


@pytest.mark.parametrize("key", ["body:user", "header:X-Session", "random"])
def test_rate_one_mirrors_every_request_and_rate_zero_none(key: str):
    always, never = Sampler(settings(sample_rate=1.0, sample_key=key)), Sampler(settings(sample_rate=0.0))
    for user in [*USERS[:50], None]:
        headers = [] if user is None else [(b"x-session", user.encode())]
        assert always.chosen(CHAT, headers, chat(user))
        assert not never.chosen(CHAT, headers, chat(user))


def test_random_sampling_mirrors_about_the_rate_and_ignores_the_user():
    random.seed(20260101)
    sampler = Sampler(settings(sample_rate=0.3, sample_key="random"))
    verdicts = [sampler.chosen(CHAT, [], chat("the-same-user")) for _ in range(2000)]
    assert 0.25 < sum(verdicts) / len(verdicts) < 0.35


def test_a_request_without_the_key_is_sampled_at_random():
    random.seed(7)
    sampler = Sampler(settings(sample_rate=0.5, sample_key="body:user"))
    verdicts = [sampler.chosen(CHAT, [], chat()) for _ in range(1000)]
    assert 0.4 < sum(verdicts) / len(verdicts) < 0.6
