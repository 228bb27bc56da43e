"""The review page: one pair at a time, blind, labelled with the keyboard, appended to `labels.jsonl`.

Server-rendered HTML and one served script (a strict Content-Security-Policy: nothing inline, nothing from
elsewhere). The sides are shown as A and B in an order drawn per pair and kept here; the browser is told
which was which only after the label is in. No pair ids or user text go into URLs, and nothing of a pair is
logged. A token, when configured, is checked in constant time, from `Authorization: Bearer` or the cookie
the login form sets.
"""

from __future__ import annotations

import hmac
import json
import random
from dataclasses import dataclass, field
from html import escape
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from shadowtap.labels import LABEL_SCHEMA, Label, PerSide, append_label, read_labels
from shadowtap.records import SideName, side_of, utc_now_rfc3339
from shadowtap.review.queue import QueueItem, ReviewQueue
from shadowtap.review.render import render_answer, render_request
from shadowtap.review.summary import agreement, progress

__all__ = ["COOKIE", "ReviewApp", "create_review_app"]

COOKIE = "shadowtap_review"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}
BETTER_CHOICES = ("A", "B", "tie", "both_bad")
NOTE_MAX_CHARS = 4000
STATIC_TYPES = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8"}


def _package_text(*path: str) -> str:
    return resources.files("shadowtap.review").joinpath(*path).read_text(encoding="utf-8")


def _other(side: SideName) -> SideName:
    return "candidate" if side == "primary" else "primary"


@dataclass
class ReviewApp:
    """One reviewer's session over one data directory."""

    data_dir: Path
    queue: ReviewQueue
    reviewer: str
    rng: random.Random
    token: str | None = None
    shown: dict[str, SideName] = field(default_factory=dict)  # pair id -> the side shown as A
    skipped: list[str] = field(default_factory=list)

    @property
    def labels_path(self) -> Path:
        return self.data_dir / "labels.jsonl"

    def labels(self) -> list[Label]:
        return read_labels(self.labels_path) if self.labels_path.exists() else []

    def current(self, labels: list[Label]) -> QueueItem | None:
        """The next pair for this reviewer: the first unlabelled one not skipped, else the first skipped."""
        done = {label["pair_id"] for label in labels if label["reviewer"] == self.reviewer}
        waiting = [item for item in self.queue.items if item.pair_id not in done]
        fresh = [item for item in waiting if item.pair_id not in self.skipped]
        if fresh:
            return fresh[0]
        for pair_id in self.skipped:
            for item in waiting:
                if item.pair_id == pair_id:
                    return item
        return None

    def side_as_a(self, pair_id: str) -> SideName:
        if pair_id not in self.shown:
            self.shown[pair_id] = "primary" if self.rng.random() < 0.5 else "candidate"
        return self.shown[pair_id]

    def authorized(self, request: Request) -> bool:
        if self.token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            given = request.cookies.get(COOKIE, "")
        return hmac.compare_digest(given.strip().encode(), self.token.encode())


# ---------------------------------------------------------------------------------------------- pages


def _summary_html(app: ReviewApp, labels: list[Label]) -> str:
    done = progress(app.queue, labels, app.reviewer)
    rows = "".join(
        f"<tr><td>{escape(reason)}</td><td>{d}</td><td>{n}</td></tr>"
        for reason, (d, n) in done.by_reason.items()
    )
    agreed = agreement(labels)
    if agreed.pairs:
        kappa = "undefined" if agreed.kappa is None else f"{agreed.kappa:.2f}"
        said = (
            f"Reviewers agree on the better answer {agreed.observed:.0%} of the time on {agreed.pairs} "
            f"pairs labelled by two or more reviewers (Fleiss' kappa {kappa})."
        )
    else:
        said = "No pair has labels from two reviewers yet: no agreement figure."
    return (
        f'<section id="progress"><p><span id="done">{done.done}</span> done, '
        f'<span id="left">{done.left}</span> left (reviewer {escape(app.reviewer)}).</p>'
        f'<table class="reasons"><tr><th>queued because</th><th>done</th><th>left</th></tr>{rows}</table>'
        f'<p id="agreement">{escape(said)}</p></section>'
    )


def _choice_html(item: QueueItem, app: ReviewApp) -> str:
    pair = app.queue.pairs[item.pair_id]
    a_side = app.side_as_a(item.pair_id)
    a, b = side_of(pair, a_side), side_of(pair, _other(a_side))
    template = Template(_package_text("templates", "pair.html"))
    return template.substitute(
        pair_id=escape(item.pair_id, quote=True),
        request=render_request(pair),
        answer_a=render_answer(a),
        answer_b=render_answer(b),
    )


def _page(title: str, body: str) -> HTMLResponse:
    html = Template(_package_text("templates", "page.html")).substitute(title=escape(title), body=body)
    return HTMLResponse(html, headers=SECURITY_HEADERS)


def _login_page(failed: bool = False) -> HTMLResponse:
    said = '<p class="failed">That token is not right.</p>' if failed else ""
    body = Template(_package_text("templates", "login.html")).substitute(failed=said)
    response = _page("shadowtap review: sign in", body)
    if failed:
        response.status_code = 401
    return response


# ---------------------------------------------------------------------------------------------- the label


class _BadLabel(ValueError):
    pass


def _per_side(value: Any, name: str, a_side: SideName) -> PerSide:
    given = value if isinstance(value, dict) else {}
    verdicts: dict[str, bool | None] = {}
    for shown, side in (("A", a_side), ("B", _other(a_side))):
        verdict = given.get(shown)
        if verdict is not None and not isinstance(verdict, bool):
            raise _BadLabel(f"{name}.{shown}: must be true, false or null")
        verdicts[side] = verdict
    return {"primary": verdicts["primary"], "candidate": verdicts["candidate"]}


def _label_from(body: dict[str, Any], app: ReviewApp, item: QueueItem) -> Label:
    """The reviewer's A/B verdicts, unblinded to primary/candidate."""
    a_side = app.shown[item.pair_id]
    better = body.get("better")
    if better not in BETTER_CHOICES:
        raise _BadLabel(f"better: must be one of {', '.join(BETTER_CHOICES)}")
    note = body.get("note") or None
    if note is not None and (not isinstance(note, str) or len(note) > NOTE_MAX_CHARS):
        raise _BadLabel(f"note: must be text of {NOTE_MAX_CHARS} characters at most")
    unblinded = {"A": a_side, "B": _other(a_side)}.get(str(better), better)
    return {
        "schema": LABEL_SCHEMA,
        "pair_id": item.pair_id,
        "reviewer": app.reviewer,
        "ts": utc_now_rfc3339(),
        "shown": a_side,
        "better": unblinded,
        "refused": _per_side(body.get("refused"), "refused", a_side),
        "format_ok": _per_side(body.get("format_ok"), "format_ok", a_side),
        "note": note,
        "reason": item.reason,
    }


async def _json_body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise _BadLabel("send JSON (content-type: application/json)")
    raw = await request.body()
    if len(raw) > 64 * 1024:
        raise _BadLabel("the body is too large")
    try:
        body = json.loads(raw)
    except ValueError:
        raise _BadLabel("the body is not JSON") from None
    if not isinstance(body, dict):
        raise _BadLabel("the body must be a JSON object")
    return body


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status, headers=SECURITY_HEADERS)


# ---------------------------------------------------------------------------------------------- the app


def _review(request: Request) -> ReviewApp:
    review: ReviewApp = request.app.state.review
    return review


async def _guard(request: Request, call_next: Any) -> Response:
    """Every route but the sign-in needs the token (when there is one); a POST must come from the page."""
    review = _review(request)
    public = request.url.path in ("/login", "/static/review.css", "/favicon.ico")
    if not public and not review.authorized(request):
        if request.method == "GET" and request.url.path == "/":
            return _login_page()
        return _error(401, "sign in with the review token first")
    if request.method == "POST" and request.headers.get("origin") not in (None, _origin(request)):
        return _error(403, "cross-origin requests are refused")
    response: Response = await call_next(request)
    return response


async def _index(request: Request) -> HTMLResponse:
    review = _review(request)
    labels = review.labels()
    item = review.current(labels)
    summary = _summary_html(review, labels)
    if item is None:
        done = '<section id="finished"><h2>Nothing left to review.</h2></section>'
        return _page("shadowtap review: done", done + summary)
    return _page("shadowtap review", _choice_html(item, review) + summary)


async def _label(request: Request) -> JSONResponse:
    review = _review(request)
    try:
        body = await _json_body(request)
        item = _item_shown(review, body)
        record = _label_from(body, review, item)
    except _BadLabel as exc:
        return _error(400, str(exc))
    append_label(review.labels_path, record)
    a_side = record["shown"]
    return JSONResponse(
        {"revealed": {"A": a_side, "B": _other(a_side)}, "reason": item.reason, "better": record["better"]},
        headers=SECURITY_HEADERS,
    )


async def _skip(request: Request) -> JSONResponse:
    review = _review(request)
    try:
        item = _item_shown(review, await _json_body(request))
    except _BadLabel as exc:
        return _error(400, str(exc))
    if item.pair_id in review.skipped:
        review.skipped.remove(item.pair_id)
    review.skipped.append(item.pair_id)
    return JSONResponse({"skipped": True}, headers=SECURITY_HEADERS)


async def _login(request: Request) -> Response:
    review = _review(request)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    given = (form.get("token") or [""])[0]
    if review.token is None or not hmac.compare_digest(given.strip().encode(), review.token.encode()):
        return _login_page(failed=review.token is not None)
    response = RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(COOKIE, review.token, httponly=True, samesite="strict", path="/")
    return response


async def _static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC_TYPES:
        return _error(404, "no such file")
    return Response(_package_text("static", name), media_type=STATIC_TYPES[name], headers=SECURITY_HEADERS)


async def _no_icon(request: Request) -> Response:
    return Response(status_code=204, headers=SECURITY_HEADERS)


def create_review_app(review: ReviewApp) -> FastAPI:
    """The review page's ASGI app over one reviewer's session."""
    app = FastAPI(title="shadowtap review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.review = review
    app.middleware("http")(_guard)
    app.add_route("/", _index, methods=["GET"])
    app.add_route("/api/label", _label, methods=["POST"])
    app.add_route("/api/skip", _skip, methods=["POST"])
    app.add_route("/login", _login, methods=["POST"])
    app.add_route("/static/{name}", _static, methods=["GET"])
    app.add_route("/favicon.ico", _no_icon, methods=["GET"])
    return app


def _origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', '')}"


def _item_shown(review: ReviewApp, body: dict[str, Any]) -> QueueItem:
    """The queue item a label or skip is for: one this session has shown (and so drawn A and B for)."""
    pair_id = body.get("pair_id")
    for item in review.queue.items:
        if item.pair_id == pair_id and pair_id in review.shown:
            return item
    raise _BadLabel("pair_id: not a pair this page has shown")
