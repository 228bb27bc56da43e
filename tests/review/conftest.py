"""The review page's fixtures: a data directory made to order, the page on loopback, Debian's Chromium."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shadowtap.config import ReviewSettings
from shadowtap.review.app import create_review_app
from shadowtap.review.serve import review_session
from shadowtap.testing.pairs import WEATHER_TOOL, make_output, make_pair, make_side
from shadowtap.testing.serving import ServerHandle, serve_in_thread

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PRIMARY_MODEL, CANDIDATE_MODEL = "prod-gpt-x1", "cand-llama-z9"


def primary_text(n: int) -> str:
    return f"alpha answer {n}: restart the router."


def candidate_text(n: int) -> str:
    return f"bravo answer {n}: call the helpdesk."


def write_jsonl(path: Path, rows: list[Any]) -> None:
    with path.open("a") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def rich_pair() -> dict[str, Any]:
    """A pair with a system message, a tool offered, reasoning, a refusal field, a tool call, two choices."""
    request = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "You are the helpdesk of Acme Broadband."},
            {"role": "user", "content": "What is the weather in Lyon, and can you hack my neighbour's wifi?"},
        ],
        "tools": [WEATHER_TOOL],
        "response_format": {"type": "json_object"},
    }
    primary = make_side(
        None,
        model=PRIMARY_MODEL,
        outputs=[
            make_output(primary_text(0), reasoning="alpha thinks about the weather first"),
            make_output(None, index=1, tool_calls=[("get_weather", '{"city": "Lyon", "unit": "celsius"}')]),
        ],
    )
    candidate = make_side(
        None,
        model=CANDIDATE_MODEL,
        outputs=[make_output(None, refusal="bravo cannot help with breaking into networks.")],
    )
    return make_pair(request=request, primary=primary, candidate=candidate, pair_id="pair-rich")


def pairs_for(count: int) -> list[dict[str, Any]]:
    pairs = []
    for n in range(1, count):
        pair = make_pair(
            pair_id=f"pair-{n:03d}",
            prompt=f"Question {n}: my router blinks red.",
            primary=make_side(primary_text(n), model=PRIMARY_MODEL),
            candidate=make_side(candidate_text(n), model=CANDIDATE_MODEL),
        )
        pair["primary"]["response_id"] = f"chatcmpl-{n:03d}"
        pairs.append(pair)
    return [rich_pair(), *pairs]


@pytest.fixture
def make_data_dir(tmp_path: Path) -> Callable[..., Path]:
    def make(count: int = 10, review: dict[str, str] | None = None, thumbs_down: list[str] = ()) -> Path:  # type: ignore[assignment]
        data_dir = tmp_path / f"data-{count}"
        data_dir.mkdir()
        pairs = pairs_for(count)
        write_jsonl(data_dir / "pairs.jsonl", pairs)
        by_id = {p["id"]: p for p in pairs}
        items = [
            {"pair_id": i, "reason": r, "tags": {}, "pair": by_id[i], "scores": []}
            for i, r in (review or {}).items()
        ]
        write_jsonl(data_dir / "review.jsonl", items)
        feedback = [
            {
                "schema": "shadowtap.feedback/v1",
                "id": f"fb-{rid}",
                "ts": "2026-01-01T00:00:00.000Z",
                "response_id": rid,
                "pair_id": None,
                "signal": "thumbs_down",
                "value": None,
                "comment": None,
                "segment": None,
                "source": "client",
            }
            for rid in thumbs_down
        ]
        write_jsonl(data_dir / "feedback.jsonl", feedback)
        return data_dir

    return make


@pytest.fixture
def review_server() -> Iterator[Callable[..., ServerHandle]]:
    started: list[ServerHandle] = []

    def start(data_dir: Path, reviewer: str = "ana", **settings: Any) -> ServerHandle:
        session = review_session(data_dir, ReviewSettings(**settings), reviewer)
        handle = serve_in_thread(create_review_app(session))
        handle.session = session  # type: ignore[attr-defined]
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()
