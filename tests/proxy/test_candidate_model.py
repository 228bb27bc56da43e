"""The candidate's model: named in config, or discovered from the candidate's `/models` at start-up."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from shadowtap.testing.upstreams import Reply, SimulatedLLM, default_policy, openai_error, serve_in_thread
from tests.helpers import free_port, start_serve, wait_for

CHAT = [{"role": "user", "content": "Where is my invoice?"}]
SKIPPED = "shadowtap_shadow_skipped_total"
ROUTE = "/v1/chat/completions"


def client_for(proxy: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key="sk-user-secret", max_retries=0)


def serves_only(name: str) -> Any:
    """A policy like vLLM's: a request for any model but its own is a 404 `model_not_found`."""

    def policy(route: str, body: dict[str, Any]) -> Reply:
        if body.get("model") != name:
            message = f"The model `{body.get('model')}` does not exist."
            return Reply(status=404, error_body=openai_error(message, "NotFoundError", "model_not_found"))
        return default_policy(route, body)

    return policy


def models_server(answer: Response) -> Any:
    """A candidate whose `/v1/models` gives `answer` (several models, none, an error)."""

    async def models(request: Request) -> Response:
        return answer

    return serve_in_thread(Starlette(routes=[Route("/v1/models", models)]))


def listing(*ids: str) -> JSONResponse:
    return JSONResponse(
        {"object": "list", "data": [{"id": i, "object": "model", "owned_by": "vllm"} for i in ids]}
    )


def model_requests(sim: SimulatedLLM) -> list[Any]:
    return [r for r in sim.received if r.method == "GET" and r.path == "/v1/models"]


def mirrored_models(sim: SimulatedLLM) -> list[str]:
    return [r.json["model"] for r in sim.received if r.method == "POST" and r.path == ROUTE]


def test_the_candidates_one_model_is_discovered_and_every_shadow_asks_for_it(
    proxy_factory, primary, upstream_factory, caplog
):
    caplog.set_level(logging.INFO, logger="shadowtap.shadow")
    candidate = upstream_factory("Qwen/Qwen2.5-7B-Instruct", serves_only("Qwen/Qwen2.5-7B-Instruct"))
    proxy = proxy_factory(
        primary.base_url,
        candidate.base_url,
        candidate={"api_key": "sk-candidate", "headers": {"X-Team": "evals"}},
    )

    for _ in range(3):
        assert client_for(proxy).chat.completions.create(model="gpt-4o", messages=CHAT).choices

    pairs = proxy.pairs(expected=3)
    assert {p["candidate"]["status"] for p in pairs} == {200}
    assert {p["candidate"]["model"] for p in pairs} == {"Qwen/Qwen2.5-7B-Instruct"}
    assert mirrored_models(candidate.sim) == ["Qwen/Qwen2.5-7B-Instruct"] * 3
    [asked] = model_requests(candidate.sim)  # once, at start-up
    assert asked.headers["authorization"] == "Bearer sk-candidate"
    assert asked.headers["x-team"] == "evals"
    assert f"candidate model: Qwen/Qwen2.5-7B-Instruct (discovered from {candidate.base_url}/models)" in (
        caplog.text
    )


@pytest.mark.parametrize(
    ("answer", "listed"),
    [
        (
            listing("llama-3-8b", "llama-3-8b-support-lora"),
            "lists 2 models (llama-3-8b, llama-3-8b-support-lora)",
        ),
        (listing(), "lists no models"),
    ],
)
def test_a_candidate_that_lists_several_models_or_none_stops_start_up(
    proxy_factory, primary, caplog, answer, listed
):
    with models_server(answer) as candidate:
        with pytest.raises(RuntimeError, match="did not start"):
            proxy_factory(primary.base_url, candidate.base_url)

    assert (
        f"candidate.model: not set, and the candidate's {candidate.base_url}/models {listed}" in caplog.text
    )
    assert "--candidate-model NAME or candidate.model" in caplog.text
    assert primary.sim.received == []


@pytest.mark.parametrize(
    "answer",
    [PlainTextResponse("upstream connect error", status_code=503), PlainTextResponse("<html>models</html>")],
    ids=["503", "not-json"],
)
def test_a_candidate_whose_models_answer_is_no_list_does_not_stop_the_proxy(proxy_factory, primary, answer):
    with models_server(answer) as candidate:
        proxy = proxy_factory(primary.base_url, candidate.base_url)

        assert client_for(proxy).chat.completions.create(model="gpt-4o", messages=CHAT).choices

    assert proxy.metric(SKIPPED, route=ROUTE, reason="candidate_model_unknown") == 1
    assert proxy.metric("shadowtap_shadow_sampled_total", route=ROUTE) == 0


def test_a_candidate_down_at_start_up_is_mirrored_to_once_it_comes_up(proxy_factory, primary, caplog):
    caplog.set_level(logging.INFO, logger="shadowtap.shadow")
    port = free_port()
    candidate_url = f"http://127.0.0.1:{port}/v1"
    proxy = proxy_factory(primary.base_url, candidate_url)

    for _ in range(5):
        assert client_for(proxy).chat.completions.create(model="gpt-4o", messages=CHAT).choices
    assert proxy.metric(SKIPPED, route=ROUTE, reason="candidate_model_unknown") == 5
    assert proxy.pairs() == []

    sim = SimulatedLLM("late-model", serves_only("late-model"))
    with serve_in_thread(sim.app, port=port):
        found = f"candidate model: late-model (discovered from {candidate_url}/models)"
        wait_for(
            lambda: found in caplog.text, 40, interval=0.05, what="the candidate's model to be discovered"
        )
        assert client_for(proxy).chat.completions.create(model="gpt-4o", messages=CHAT).choices
        [pair] = proxy.pairs(expected=1)

    assert pair["candidate"]["status"] == 200
    assert pair["candidate"]["model"] == "late-model"
    assert mirrored_models(sim) == ["late-model"]
    assert proxy.metric(SKIPPED, route=ROUTE, reason="candidate_model_unknown") == 5
    unknown = [
        r for r in caplog.records if r.levelno == logging.WARNING and "model unknown" in r.getMessage()
    ]
    assert len(unknown) == 1  # refused again and again: said once, not at every attempt or request
    assert "could not be reached" in unknown[0].getMessage()


def test_a_configured_candidate_model_is_used_without_asking_the_candidate(
    proxy_factory, primary, candidate, caplog
):
    caplog.set_level(logging.INFO, logger="shadowtap.shadow")
    proxy = proxy_factory(primary.base_url, candidate.base_url, candidate={"model": "candidate-model"})

    assert client_for(proxy).chat.completions.create(model="gpt-4o", messages=CHAT).choices

    [pair] = proxy.pairs(expected=1)
    assert pair["candidate"]["model"] == "candidate-model"
    assert mirrored_models(candidate.sim) == ["candidate-model"]
    assert model_requests(candidate.sim) == []
    assert "candidate model: candidate-model (candidate.model)" in caplog.text


def test_serve_refuses_to_start_when_the_candidate_lists_several_models(tmp_path: Path, primary):
    with models_server(listing("base", "base-lora-a", "base-lora-b")) as candidate:
        proc = start_serve(
            tmp_path,
            {
                "primary": {"url": primary.base_url},
                "candidate": {"url": candidate.base_url},
                "server": {"port": free_port()},
                "sink": {"data_dir": str(tmp_path / "data")},
            },
        )
        output, _ = proc.communicate(timeout=60)

    text = output.decode()
    assert proc.returncode == 1, text
    assert (
        f"Error: candidate.model: not set, and the candidate's {candidate.base_url}/models lists 3 models "
        "(base, base-lora-a, base-lora-b); name the one to mirror to with --candidate-model NAME or candidate.model"
    ) in text
    assert "Traceback" not in text
