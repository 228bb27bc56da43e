"""Configuration and the command line as a new user meets them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
from click.testing import CliRunner

from shadowtap.cli import main
from shadowtap.config import load_settings
from shadowtap.errors import ConfigError
from shadowtap.testing.upstreams import Reply
from tests.helpers import free_port, healthy, wait_for


def test_environment_overrides_the_file_and_flags_override_both(tmp_path: Path):
    config = tmp_path / "shadowtap.yaml"
    config.write_text("primary:\n  url: http://file:8000/v1\nshadow:\n  sample_rate: 0.2\n")

    settings = load_settings(
        config,
        environ={
            "SHADOWTAP_SHADOW_SAMPLE_RATE": "0.5",
            "SHADOWTAP_CANDIDATE_API_KEY": "12345",
            "SHADOWTAP_SINK_KAFKA_BOOTSTRAP_SERVERS": "k:9092",
        },
        overrides={"primary": {"url": "http://flag:8000/v1"}},
    )

    assert settings.shadow.sample_rate == 0.5
    assert settings.candidate.api_key == "12345"  # a numeric-looking secret stays a string
    assert settings.sink.kafka.bootstrap_servers == "k:9092"
    assert settings.sink.resolved_kind == "kafka"
    assert settings.primary.url == "http://flag:8000/v1"


@pytest.mark.parametrize(
    ("yaml_text", "environ", "message"),
    [
        ("shadow:\n  sample_rate: 1.5\n", {}, "shadow.sample_rate"),
        ("shadow:\n  sampel_rate: 0.5\n", {}, "shadow.sampel_rate: unknown key"),
        ("primary:\n  url: ftp://x\n", {}, "primary.url: must be an http(s) URL"),
        (
            "",
            {"SHADOWTAP_SHADOW_SAMPEL_RATE": "1"},
            "SHADOWTAP_SHADOW_SAMPEL_RATE: no such configuration key",
        ),
        ("sink:\n  kind: kafka\n", {}, "sink.kafka.bootstrap_servers is not set"),
        ("shadow:\n  sample_key: cookie:x\n", {}, "shadow.sample_key"),
        ("- just\n- a list\n", {}, "top level must be a mapping"),
        ("primary:\n  ca_file: /nonexistent/ca.pem\n", {}, "primary.ca_file: no such file"),
        ("sentinel:\n  sizee: 100\n", {}, "sentinel.sizee: unknown key"),
        ("sentinel:\n  alpha: 2\n", {}, "sentinel.alpha: Input should be less than 1 (got 2)"),
        ("scoring:\n  batch_sise: 10\n", {}, "scoring.batch_sise: unknown key"),
        (
            "scoring:\n  scorers:\n    format: 3\n",
            {},
            "scoring.scorers.format: must be the scorer's settings",
        ),
        (
            "",
            {"SHADOWTAP_SCORING_BATCH_SISE": "10"},
            "SHADOWTAP_SCORING_BATCH_SISE: no such configuration key",
        ),
        ("", {"SHADOWTAP_SENTINEL_SIZEE": "10"}, "SHADOWTAP_SENTINEL_SIZEE: no such configuration key"),
    ],
)
def test_bad_configuration_names_the_key_and_the_problem(tmp_path: Path, yaml_text, environ, message):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ConfigError) as excinfo:
        load_settings(config, environ=environ)
    assert message in str(excinfo.value)


def test_the_scoring_and_sentinel_sections_come_typed_from_file_environment_and_flags(tmp_path: Path):
    config = tmp_path / "shadowtap.yaml"
    config.write_text(
        "scoring:\n  batch_size: 10\n  scorers:\n    format: {}\n    latency: false\n"
        "sentinel:\n  size: 40\n  pushgateway: http://file:9091\n"
    )

    settings = load_settings(
        config,
        environ={
            "SHADOWTAP_SCORING_BATCH_SIZE": "20",
            "SHADOWTAP_SCORING_ENABLED": "false",
            "SHADOWTAP_SENTINEL_PUSHGATEWAY": "http://env:9091",
            "SHADOWTAP_SENTINEL_REVIEW_QUEUE": "/sets/review.jsonl",
            # A plug-in's own variable (the judge's key) is not a configuration key, and is not an error.
            "SHADOWTAP_JUDGE_API_KEY": "sk-judge",
        },
        overrides={"sentinel": {"size": 60}},
    )

    assert settings.scoring.batch_size == 20
    assert settings.scoring.enabled is False
    assert settings.scoring.scorers == {"format": {}, "latency": False}
    assert settings.sentinel.size == 60
    assert settings.sentinel.pushgateway == "http://env:9091"
    assert settings.sentinel.review_queue == "/sets/review.jsonl"


def test_serve_with_a_typo_under_scoring_fails_at_start_up_naming_the_key(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text("scoring:\n  enabeld: false\n")
    result = CliRunner().invoke(
        main, ["serve", "--primary", "http://127.0.0.1:1/v1", "--config", str(config)], env={}
    )
    assert result.exit_code == 1
    assert "scoring.enabeld: unknown key" in result.output


def test_serve_with_a_bad_scorer_setting_fails_at_start_up_naming_the_key(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text(
        f"sink:\n  data_dir: {tmp_path / 'data'}\nscoring:\n  scorers:\n    latency:\n      tolerence: 0.2\n"
    )
    result = CliRunner().invoke(
        main, ["serve", "--primary", "http://127.0.0.1:1/v1", "--config", str(config)], env={}
    )
    assert result.exit_code == 1
    assert "scoring.scorers.latency.tolerence: unknown key" in result.output


def test_serve_without_a_primary_is_a_usage_error():
    result = CliRunner().invoke(main, ["serve"], env={})
    assert result.exit_code == 2
    assert "--primary" in result.output


def test_serve_with_a_bad_config_file_fails_at_start_up(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text("shadow:\n  concurrency: 0\n")
    result = CliRunner().invoke(
        main, ["serve", "--primary", "http://127.0.0.1:1/v1", "--config", str(config)]
    )
    assert result.exit_code == 1
    assert "shadow.concurrency" in result.output


def test_the_readme_run_command_serves_and_records_then_shuts_down_cleanly(
    tmp_path: Path, primary, candidate
):
    """`shadowtap serve --primary URL --candidate URL` with no config file, as a real process."""
    port = free_port()
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shadowtap.cli",
            "serve",
            "--primary",
            primary.base_url,
            "--candidate",
            candidate.base_url,
            "--port",
            str(port),
            "--data-dir",
            str(data),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("SHADOWTAP_")},
    )
    try:
        wait_for(
            lambda: healthy(f"http://127.0.0.1:{port}"),
            30,
            interval=0.1,
            what="shadowtap serve to accept connections",
        )
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-user", max_retries=0)
        answers = [
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"question {i}"}])
            for i in range(5)
        ]
        assert [a.choices[0].message.content for a in answers] == [
            f"Answer to: question {i}" for i in range(5)
        ]
        wait_for(
            lambda: (
                (data / "scores.jsonl").exists()
                and len((data / "scores.jsonl").read_text().splitlines()) >= 5
            ),
            15,
            what="scores",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    # uvicorn re-raises the signal once shutdown is complete, the conventional exit for SIGTERM.
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    pairs = [json.loads(line) for line in (data / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 5
    scores = [json.loads(line) for line in (data / "scores.jsonl").read_text().splitlines()]
    assert {s["scorer"] for s in scores} >= {"refusal", "latency"}
    assert "sk-user" not in (data / "pairs.jsonl").read_text()


def test_offline_scoring_of_a_recorded_file(tmp_path: Path, proxy, candidate):
    candidate.sim.policy = lambda route, body: Reply(text="I'm sorry, but I can't help with that.")
    client = openai.OpenAI(base_url=proxy.base_url, api_key="k", max_retries=0)
    for i in range(6):
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"Where is invoice {i}?"}]
        )
    proxy.pairs(expected=6)
    pairs_file = proxy.data_dir / "pairs.jsonl"
    with pairs_file.open("a") as f:
        f.write("this line is not a pair record\n")
    out = tmp_path / "scores.jsonl"

    result = CliRunner().invoke(main, ["score", "--input", str(pairs_file), "--output", str(out)], env={})

    assert result.exit_code == 0, result.output
    assert "line 7 skipped" in result.output
    scores = [json.loads(line) for line in out.read_text().splitlines()]
    pairwise = [s["outcome"] for s in scores if s["scorer"] == "refusal" and s["side"] == "pair"]
    assert pairwise == ["candidate_only_refused"] * 6
    review = [json.loads(line) for line in (tmp_path / "review.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in review} == {"candidate_refused"}

    # The same outcomes as the proxy's in-process scoring gave.
    def embedded_scores() -> list[dict[str, Any]] | None:
        path = proxy.data_dir / "scores.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines] if len(lines) >= len(scores) else None

    # The proxy's scoring process writes its records a flush (250 ms) after it scores them.
    embedded = wait_for(embedded_scores, what="the proxy's scoring process to write its scores")
    key = lambda s: (s["pair_id"], s["scorer"], s["side"], s["outcome"])  # noqa: E731
    assert sorted(map(key, scores)) == sorted(map(key, embedded))
