"""Starting the review page: the session from settings, the loopback rule, uvicorn."""

from __future__ import annotations

import getpass
import ipaddress
import random
from pathlib import Path

import uvicorn

from shadowtap.config import ReviewSettings
from shadowtap.errors import ConfigError
from shadowtap.review.app import ReviewApp, create_review_app
from shadowtap.review.queue import build_queue

__all__ = ["is_loopback", "review_session", "serve_review"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def review_session(data_dir: Path, settings: ReviewSettings, reviewer: str | None = None) -> ReviewApp:
    """One reviewer's session over a data directory; `ConfigError` when the page may not start so."""
    if not (data_dir / "pairs.jsonl").exists():
        raise ConfigError(f"{data_dir} has no pairs.jsonl: not a shadowtap data directory")
    if not is_loopback(settings.host) and not settings.token:
        raise ConfigError(
            f"review.host: {settings.host!r} is not a loopback address, so review.token (or "
            "SHADOWTAP_REVIEW_TOKEN) is required"
        )
    rng = random.Random(settings.seed) if settings.seed is not None else random.Random()
    queue = build_queue(data_dir, settings.calibration_share, rng)
    name = reviewer or settings.reviewer or getpass.getuser()
    return ReviewApp(data_dir=data_dir, queue=queue, reviewer=name, rng=rng, token=settings.token)


def serve_review(session: ReviewApp, settings: ReviewSettings) -> None:
    """Serve until Ctrl-C. No access log: nothing a reviewer does is written to a log."""
    config = uvicorn.Config(
        create_review_app(session),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        server_header=False,
    )
    uvicorn.Server(config).run()
