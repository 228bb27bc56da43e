"""The embedded default's scoring process: it follows pairs.jsonl beside the proxy, its figures are on
the proxy's /metrics, and when it dies the proxy starts it again without losing a pair or a count; a
SIGTERM to the proxy's process group leaves it scoring until the proxy's last pair is written."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shadowtap.scorers.embedded import PairsFile
from shadowtap.testing.upstreams import Reply
from tests.helpers import free_port, healthy, start_serve, wait_for

ASK = [{"role": "user", "content": "The order as JSON, please."}]
JSON_FORMAT = {"type": "json_object"}
FORMAT_FAIL = {"scorer": "format", "side": "candidate", "outcome": "fail", "segment": "none"}


@pytest.fixture
def proxy(proxy_factory, primary, candidate):
    primary.sim.policy = lambda route, body: Reply(text='{"order": 1}')
    candidate.sim.policy = lambda route, body: Reply(text="order one, not JSON")
    return proxy_factory(primary.base_url, candidate.base_url, candidate={"model": "candidate-model"})


@pytest.fixture
def client(proxy) -> Any:
    sdk = openai.OpenAI(base_url=proxy.base_url, api_key="sk-user", max_retries=0)
    yield sdk
    sdk.close()


def scoring_of(proxy: Any) -> Any:
    return proxy.handle.server.config.app.state.scoring


def scored_pairs(proxy: Any) -> set[str]:
    path = proxy.data_dir / "scores.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return {json.loads(line)["pair_id"] for line in lines}


def ask(client: Any, n: int) -> None:
    for _ in range(n):
        answer = client.chat.completions.create(model="gpt-prod", messages=ASK, response_format=JSON_FORMAT)
        assert answer.choices[0].message.content == '{"order": 1}'


def test_pairs_are_scored_in_a_process_of_their_own_and_counted_on_the_proxys_metrics(proxy, client):
    ask(client, 3)
    pairs = proxy.pairs(3)

    wait_for(lambda: scored_pairs(proxy) == {p["id"] for p in pairs}, what="the three pairs scored")
    pid = scoring_of(proxy).pid
    assert pid is not None and pid != os.getpid()
    # A score in scores.jsonl is on /metrics already: the snapshot is written before the records.
    assert proxy.metric("shadowtap_scores_total", **FORMAT_FAIL) == 3
    assert proxy.metric("shadowtap_pairs_scored_total", source="embedded") == 3

    def exposition() -> dict[tuple[str, str], float] | None:
        text = httpx.get(f"{proxy.base_url.removesuffix('/v1')}/metrics").text
        families = [f.name for f in text_string_to_metric_families(text)]
        assert len(families) == len(set(families)), "a family exported twice"
        sinks = {
            (s.labels["sink"], s.labels["outcome"]): s.value
            for f in text_string_to_metric_families(text)
            if f.name == "shadowtap_sink_records"
            for s in f.samples
            if s.name == "shadowtap_sink_records_total"
        }
        return sinks if sinks.get(("scores", "written"), 0) >= 3 else None

    # One family holds the proxy's own sink (pairs.jsonl) and the scoring process's two files.
    sinks = wait_for(exposition, what="the score file's writes on /metrics")
    assert sinks[("jsonl", "written")] == 3
    assert ("review", "written") in sinks


def test_a_scoring_process_that_dies_is_started_again_and_no_pair_or_count_is_lost(proxy, client):
    ask(client, 2)
    wait_for(lambda: len(scored_pairs(proxy)) == 2, what="the first two pairs scored")
    scoring = scoring_of(proxy)
    first = scoring.pid

    os.kill(first, signal.SIGKILL)
    ask(client, 3)  # the user is not affected while it is down

    wait_for(lambda: proxy.metric("shadowtap_scoring_process_restarts_total") == 1, what="the restart")
    wait_for(lambda: len(scored_pairs(proxy)) == 5, timeout=20, what="the pairs recorded meanwhile scored")
    assert scoring.pid not in (None, first)
    assert scored_pairs(proxy) == {p["id"] for p in proxy.pairs(5)}
    # The dead process's counts are kept: the totals go on from where they were, never back.
    wait_for(lambda: proxy.metric("shadowtap_pairs_scored_total", source="embedded") == 5, what="the count")
    assert proxy.metric("shadowtap_scores_total", **FORMAT_FAIL) == 5


def test_a_sigterm_to_the_proxys_process_group_still_scores_every_pair_it_records(
    tmp_path: Path, upstream_factory
):
    # systemd (KillMode=control-group), `timeout` and a shell's job control signal every process of the
    # group: the proxy, its fork server, the offload worker and the scoring process.
    primary = upstream_factory("primary-model", lambda route, body: Reply(text='{"order": 1}'))
    # The candidate answers a second after the signal: the pairs are written while the proxy drains.
    candidate = upstream_factory("candidate-model", lambda route, body: Reply(text="order one", ttft_s=1.0))
    port = free_port()
    data = tmp_path / "data"
    config = {
        "primary": {"url": primary.base_url},
        "candidate": {"url": candidate.base_url, "model": "candidate-model"},
        "server": {"port": port, "shutdown_grace_s": 5},
        "sink": {"data_dir": str(data)},
    }
    proc = start_serve(tmp_path, config, new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: healthy(base), 30, interval=0.05, what="shadowtap serve to accept connections")
        with openai.OpenAI(base_url=base + "/v1", api_key="sk-user", max_retries=0) as sdk:
            ask(sdk, 3)
            # Over `shadow.offload_bytes`: parsed, masked and recorded by the offload worker.
            large = [{"role": "user", "content": "The order as JSON, please. " + "Line item. " * 30_000}]
            answer = sdk.chat.completions.create(
                model="gpt-prod", messages=large, response_format=JSON_FORMAT
            )
            assert answer.choices[0].message.content == '{"order": 1}'
        wait_for(lambda: len(candidate.sim.received) == 4, what="the four shadows at the candidate")
        os.killpg(proc.pid, signal.SIGTERM)
        output = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()

    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "ended unasked" not in output
    pairs = [json.loads(line) for line in (data / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 4, output  # the large one too: the offload worker outlived the signal
    scores = [json.loads(line) for line in (data / "scores.jsonl").read_text().splitlines()]
    failed = {s["pair_id"] for s in scores if s["scorer"] == "format" and s["side"] == "candidate"}
    assert failed == {p["id"] for p in pairs}, output


def test_a_sigterm_to_the_scoring_process_alone_stops_it_after_a_while_and_it_is_started_again(
    proxy_factory, primary, candidate
):
    candidate.sim.policy = lambda route, body: Reply(text="not JSON")
    proxy = proxy_factory(
        primary.base_url, candidate.base_url, candidate={"model": "m"}, server={"shutdown_grace_s": 0.5}
    )
    with openai.OpenAI(base_url=proxy.base_url, api_key="k", max_retries=0) as sdk:
        ask_once = lambda: sdk.chat.completions.create(model="m", messages=ASK, response_format=JSON_FORMAT)  # noqa: E731
        ask_once()
        wait_for(lambda: len(scored_pairs(proxy)) == 1, what="the first pair scored")
        scoring = scoring_of(proxy)
        first = scoring.pid
        os.kill(first, signal.SIGTERM)
        ask_once()  # scored by the process that got the signal: it waits for the proxy to stop it
        wait_for(lambda: len(scored_pairs(proxy)) == 2, what="the pair sent after the signal scored")
        assert scoring.pid == first
        # Nobody stops it: it stops by itself 2 x 0.5 + 15 s after the signal, and is started again.
        wait_for(
            lambda: proxy.metric("shadowtap_scoring_process_restarts_total") == 1,
            timeout=40,
            what="the restart",
        )
        ask_once()
        wait_for(
            lambda: len(scored_pairs(proxy)) == 3, timeout=20, what="the pair sent after the restart scored"
        )
    assert scoring.pid not in (None, first)


def test_pairs_recorded_before_the_proxy_started_are_not_scored_again(proxy_factory, primary, candidate):
    candidate.sim.policy = lambda route, body: Reply(text="not JSON")
    first = proxy_factory(primary.base_url, candidate.base_url, candidate={"model": "m"})
    with openai.OpenAI(base_url=first.base_url, api_key="k", max_retries=0) as sdk:
        sdk.chat.completions.create(model="m", messages=ASK, response_format=JSON_FORMAT)
    wait_for(lambda: len(scored_pairs(first)) == 1, what="the first run's pair scored")
    first.handle.stop()

    again = proxy_factory(
        primary.base_url, candidate.base_url, candidate={"model": "m"}, sink={"data_dir": str(first.data_dir)}
    )
    with openai.OpenAI(base_url=again.base_url, api_key="k", max_retries=0) as sdk:
        sdk.chat.completions.create(model="m", messages=ASK, response_format=JSON_FORMAT)
    wait_for(lambda: len(scored_pairs(first)) == 2, what="the second run's pair scored")  # the same files
    lines = (first.data_dir / "scores.jsonl").read_text().splitlines()
    format_scores = [json.loads(line) for line in lines if json.loads(line)["scorer"] == "format"]
    assert len(format_scores) == 4  # two pairs, two sides each: none scored twice


def test_a_line_is_read_once_it_is_whole_and_a_replaced_file_from_its_start(tmp_path: Path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b'{"id": "old"}\n')
    stat = path.stat()
    follower = PairsFile(path, stat.st_ino, stat.st_size)  # from where the file ended at start

    assert follower.read() == ([], False)
    with path.open("ab") as handle:
        handle.write(b'{"id": "a"}\n{"id": "b", "text": "still be')
        handle.flush()
        lines, _ = follower.read()
        assert [line for _, line in lines] == [b'{"id": "a"}']
        handle.write(b'ing written"}\n')
        handle.flush()
        lines, _ = follower.read()
        assert [line for _, line in lines] == [b'{"id": "b", "text": "still being written"}']
        assert lines[0][0] == stat.st_size + len(b'{"id": "a"}\n')  # where it starts in the file

    path.rename(tmp_path / "pairs.1.jsonl")  # rotated away, a new file in its place
    path.write_bytes(b'{"id": "c"}\n')
    lines, _ = follower.read()
    assert lines == [(0, b'{"id": "c"}')]
    follower.close()
