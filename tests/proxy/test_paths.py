"""The canonical request path, in process: what is forwarded, what is refused."""

from __future__ import annotations

import pytest

from shadowtap.proxy.paths import canonical_path

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("raw", "forwarded"),
    [
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/v1", "/v1"),
        ("/v%31/models", "/v1/models"),
        ("/v1/models/meta-llama%2FLlama-3-8B", "/v1/models/meta-llama%2FLlama-3-8B"),
        ("/v1/files/report%20v2%25.pdf/content", "/v1/files/report%20v2%25.pdf/content"),
        ("/v1/files/%C3%A9t%C3%A9", "/v1/files/%C3%A9t%C3%A9"),
        ("/v1/.well-known", "/v1/.well-known"),
        ("/v1/models/a%7eb", "/v1/models/a~b"),
    ],
)
def test_paths_inside_v1_are_forwarded_in_canonical_form(raw: str, forwarded: str) -> None:
    assert canonical_path(raw.encode(), "") == forwarded


@pytest.mark.parametrize(
    "raw",
    [
        "/v1/..",
        "/v1/../../admin/reset",
        "/v1/%2e%2e/admin",
        "/v1/%2E/chat/completions",
        "/v1/models/..%2f..%2fadmin",
        "/v1/models/x%2F..%2F..%2Fadmin",
        "/v%31/models%3Fapi-version=evil",
        "/v1/a%23b",
        "/v1/a%5Cb",
        "/v2/chat/completions",
        "/admin",
        "v1/chat/completions",
    ],
)
def test_paths_that_leave_v1_or_hide_a_separator_are_refused(raw: str) -> None:
    assert canonical_path(raw.encode(), "") is None


def test_without_a_raw_path_the_decoded_path_is_checked() -> None:
    assert canonical_path(None, "/v1/chat/completions") == "/v1/chat/completions"
    assert canonical_path(None, "/v1/../admin") is None
