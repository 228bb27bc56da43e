"""What a mirrored request is: which bodies can be mirrored (or why not), and what the candidate is sent.

Pure functions of the request's bytes, used on the proxy's loop for small bodies and in the offload
worker (`proxy/offload.py`) for large ones, so both decide alike.
"""

from __future__ import annotations

import json
from typing import Any

from shadowtap import fastjson

MIRRORED_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})


def candidate_body(route: str, body: dict[str, Any], model: str | None) -> bytes:
    """The request as the candidate gets it: under the candidate's model name (None: the client's, for the
    primary's second answer of a noise-floor pair) and, for the Responses API, with `store` off (the
    second answer is for the record, never for later requests)."""
    out = dict(body)
    if model is not None:
        out["model"] = model
    if route == "/v1/responses":
        out["store"] = False
    return fastjson.dumps(out)


def is_json(content_type: str | None) -> bool:
    """What the upstream frameworks parse as JSON: no content type, `application/json` or `+json`."""
    if content_type is None:
        return True
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def request_body(route: str, raw_body: bytes) -> dict[str, Any] | str:
    """The request body to mirror, or why there is none (`unparseable`, `invalid_request`)."""
    try:
        body = json.loads(raw_body)
    except (ValueError, RecursionError):
        return "unparseable"
    if not isinstance(body, dict):
        return "unparseable"
    if route == "/v1/chat/completions" and not isinstance(body.get("messages"), list):
        return "invalid_request"
    if route == "/v1/completions" and "prompt" not in body:
        return "invalid_request"
    if route == "/v1/responses":
        return responses_skip_reason(body) or body
    return body


def responses_skip_reason(body: dict[str, Any]) -> str | None:
    """Why a Responses API request cannot be mirrored, if it cannot: it needs `input`, and it must not
    depend on state only the primary holds (an earlier response, a conversation) or run in the
    background (its answer is fetched later, from the primary)."""
    if "input" not in body:
        return "invalid_request"
    if body.get("previous_response_id"):
        return "previous_response"
    if body.get("conversation"):
        return "conversation"
    if body.get("background") is True:
        return "background"
    return None
