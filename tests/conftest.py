"""Shared fixtures: scripted upstreams and the proxy, each a real uvicorn server on loopback."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from shadowtap.cli.server import build
from shadowtap.config import Settings, load_settings
from shadowtap.metrics import Metrics
from shadowtap.records import jsonl_lines
from shadowtap.testing.upstreams import ServerHandle, SimulatedLLM, serve_in_thread
from tests.helpers import wait_for

pytest_plugins = ["tests.kafka_fixtures"]


@pytest.fixture(autouse=True)
def _sdk_clients_are_closed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every OpenAI SDK client a test makes is closed when the test ends. One left to the garbage
    collector in a reference cycle may lose its socket before the client's own finaliser closes it: an
    "unclosed socket" ResourceWarning (an error here) in whichever later test the collector runs."""
    made: list[openai.OpenAI] = []
    init = openai.OpenAI.__init__

    def tracked(self: openai.OpenAI, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(openai.OpenAI, "__init__", tracked)
    yield
    for client in made:
        client.close()


@dataclass
class Upstream:
    sim: SimulatedLLM
    handle: ServerHandle

    @property
    def base_url(self) -> str:
        return self.handle.base_url


@dataclass
class RunningProxy:
    settings: Settings
    metrics: Metrics
    handle: ServerHandle
    data_dir: Path

    @property
    def base_url(self) -> str:
        return self.handle.base_url

    @property
    def url(self) -> str:
        return self.handle.url

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def pairs(self, expected: int | None = None, timeout: float = 10.0) -> list[dict[str, Any]]:
        path = self.data_dir / "pairs.jsonl"

        def read() -> list[dict[str, Any]] | None:
            if not path.exists():
                return None if expected else []
            with path.open("rb") as handle:  # a line the sink is still writing is not read yet
                rows = [json.loads(line) for _, line in jsonl_lines(handle)]
            if expected is None or len(rows) >= expected:
                return rows
            return None

        if expected is None:
            return read() or []
        return wait_for(read, timeout, what=f"{expected} pair records in {path}")


@pytest.fixture
def upstream_factory() -> Iterator[Callable[..., Upstream]]:
    started: list[ServerHandle] = []

    def make(name: str, policy: Any = None) -> Upstream:
        sim = SimulatedLLM(name, policy) if policy is not None else SimulatedLLM(name)
        handle = serve_in_thread(sim.app)
        started.append(handle)
        return Upstream(sim, handle)

    yield make
    for handle in started:
        handle.stop()


@pytest.fixture
def primary(upstream_factory: Callable[..., Upstream]) -> Upstream:
    return upstream_factory("primary-model")


@pytest.fixture
def candidate(upstream_factory: Callable[..., Upstream]) -> Upstream:
    return upstream_factory("candidate-model")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture
def proxy_factory(tmp_path: Path) -> Iterator[Callable[..., RunningProxy]]:
    started: list[ServerHandle] = []

    def make(primary_url: str, candidate_url: str | None, **overrides: Any) -> RunningProxy:
        data_dir = tmp_path / f"data{len(started)}"
        tree = {
            "primary": {"url": primary_url},
            "candidate": {"url": candidate_url},
            "sink": {"data_dir": str(data_dir)},
        }
        settings = load_settings(overrides=_merge(tree, overrides), environ={})
        app, metrics, _ = build(settings)
        handle = serve_in_thread(app)
        started.append(handle)
        return RunningProxy(settings, metrics, handle, data_dir)

    yield make
    for handle in started:
        handle.stop()


@pytest.fixture
def proxy(proxy_factory: Callable[..., RunningProxy], primary: Upstream, candidate: Upstream) -> RunningProxy:
    return proxy_factory(primary.base_url, candidate.base_url, candidate={"model": "candidate-model"})
