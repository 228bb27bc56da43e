"""A scorer worker's liveness signal: its consume loop touches scoring.heartbeat_file, and the probe the
Kubernetes manifest ships tells a fresh file from a stale one. A real `shadowtap score` process on a
real Kafka broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import free_port, wait_for

K8S_WORKER = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base" / "worker.yaml"


def probe_command(heartbeat: Path) -> list[str]:
    """The liveness probe of deploy/k8s/base/worker.yaml, pointed at `heartbeat`."""
    (deployment, _budget) = [d for d in yaml.safe_load_all(K8S_WORKER.read_text()) if d]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    shipped = next(e["value"] for e in container["env"] if e["name"] == "SHADOWTAP_SCORING_HEARTBEAT_FILE")
    command: list[str] = container["livenessProbe"]["exec"]["command"]
    return [
        sys.executable if part == "python3" else part.replace(shipped, str(heartbeat)) for part in command
    ]


@pytest.fixture
def worker(kafka: Any, tmp_path: Path) -> Any:
    heartbeat = tmp_path / "run" / "alive"
    heartbeat.parent.mkdir()
    name = uuid.uuid4().hex[:8]
    config = {
        "sink": {
            "kafka": {
                "bootstrap_servers": kafka.bootstrap,
                "topic": f"pairs-{name}",
                "scores_topic": f"scores-{name}",
                "review_topic": f"review-{name}",
                "group_id": f"group-{name}",
            }
        },
        "tags": {"segments": ["billing"]},
        "scoring": {"heartbeat_file": str(heartbeat), "scorers": {"latency": {}}},
    }
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "worker.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shadowtap.cli", "score", "--config", str(path), "--metrics-port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("SHADOWTAP_")},
    )
    yield proc, heartbeat, port
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def test_the_worker_touches_its_heartbeat_while_it_consumes_and_the_probe_tells_stale_from_fresh(
    worker: Any,
) -> None:
    proc, heartbeat, port = worker
    wait_for(heartbeat.exists, timeout=60, interval=0.1, what="the worker's first heartbeat")
    first = heartbeat.stat().st_mtime
    wait_for(lambda: heartbeat.stat().st_mtime > first, timeout=30, interval=0.1, what="a second heartbeat")
    assert subprocess.run(probe_command(heartbeat), timeout=30).returncode == 0
    # A worker stuck for longer than the probe allows leaves the file that old.
    stopped = time.time() - 600
    proc.send_signal(signal.SIGSTOP)
    try:
        os.utime(heartbeat, (stopped, stopped))
        assert subprocess.run(probe_command(heartbeat), timeout=30).returncode != 0
    finally:
        proc.send_signal(signal.SIGCONT)
    wait_for(
        lambda: heartbeat.stat().st_mtime > stopped + 60, timeout=30, interval=0.1, what="the loop again"
    )
    # The worker exports its process, build and pre-created score series too.
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert "process_resident_memory_bytes" in text and 'shadowtap_build_info{python="' in text
    assert 'shadowtap_scores_total{outcome="same",scorer="latency",segment="billing",side="pair"} 0.0' in text
