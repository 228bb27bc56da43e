"""A real Kafka broker for the test session, installed, started and stopped through deploy/kafka.sh.

Registered as a plugin by the main conftest (`pytest_plugins = ["tests.kafka_fixtures"]`). A machine that
cannot install Kafka (no Java 17 or Maven) fails the Kafka tests with the reason, rather than skipping them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "kafka.sh"


def _free_port_pair() -> int:
    """A free loopback port whose successor is free too (the broker's and the controller's)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        try:
            with socket.socket() as b:
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two adjacent free ports on loopback")


@dataclass
class KafkaBroker:
    """One single-node broker on loopback; `stop()` keeps its data, `start()` brings it back."""

    port: int
    state_dir: Path
    env: dict[str, str]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def run(self, action: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["bash", str(SCRIPT), action], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0 and action != "status":
            raise RuntimeError(
                f"deploy/kafka.sh {action} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}"
            )
        return done

    def start(self) -> None:
        """Start the broker and return once it serves metadata."""
        self.run("start")

    def stop(self) -> None:
        self.run("stop")

    @property
    def running(self) -> bool:
        return self.run("status").returncode == 0


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    port = _free_port_pair()
    state = tmp_path_factory.mktemp("kafka")
    env = dict(os.environ, KAFKA_PORT=str(port), KAFKA_STATE=str(state), PYTHON=sys.executable)
    broker = KafkaBroker(port, state, env)
    try:
        broker.run("install", timeout=600)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        pytest.fail(
            "the Kafka tests need a real broker, and deploy/kafka.sh could not install one "
            f"(Java 17 and Maven with access to Maven Central are required):\n{exc}",
            pytrace=False,
        )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
