"""Helpers every test module shares: polling with a deadline, free ports, a real `shadowtap serve` process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

__all__ = ["free_port", "healthy", "start_serve", "wait_for"]


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = "condition"
) -> Any:
    """Poll until `predicate()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def start_serve(
    tmp_path: Path, config: dict[str, Any], log: Path | None = None, new_session: bool = False
) -> subprocess.Popen[bytes]:
    """`shadowtap serve --config FILE` as a real process, in an environment without SHADOWTAP_* variables.

    Its output is piped to the caller, or, with `log`, written to that file (a long run that nobody reads
    would otherwise fill the pipe and stall the proxy on its next log line). With `new_session` it and the
    processes it starts are a process group of their own, as under systemd or `timeout`."""
    path = tmp_path / "shadowtap.yaml"
    path.write_text(yaml.safe_dump(config))
    output: Any = subprocess.PIPE if log is None else log.open("wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "shadowtap.cli", "serve", "--config", str(path)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("SHADOWTAP_")},
            start_new_session=new_session,
        )
    finally:
        if log is not None:
            output.close()  # the child has its own copy


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS's pick)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def healthy(base_url: str) -> bool:
    """Whether a shadowtap proxy at `base_url` (scheme, host and port) answers its health check."""
    try:
        return httpx.get(base_url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
