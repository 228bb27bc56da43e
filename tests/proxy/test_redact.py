"""Masking a long text in pieces: the same result as masking it whole, with the event loop free between pieces.

A candidate (or primary) answer can be as long as `shadow.max_record_bytes`; the patterns cost about
0.1 µs a character, so masking 1 MiB in one call would hold the proxy's event loop for ~100 ms. Long texts
are cut where no built-in pattern can match across the cut, and masked a piece at a time.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowtap.config import PiiSettings
from shadowtap.proxy import redact
from shadowtap.proxy.redact import CARD, EMAIL, PHONE, Redactor, _mask_card, _mask_phone, pieces

pytestmark = pytest.mark.unit


def whole(value: str) -> str:
    """The built-in patterns applied to the whole text at once: what masking in pieces must equal."""
    if "@" in value:
        value = EMAIL.sub("[EMAIL]", value)
    value = CARD.sub(_mask_card, value)
    return PHONE.sub(_mask_phone, value)


TOKENS = st.sampled_from(
    [
        "jane.doe@example.com",
        "ops+alerts@mail.example.co.uk",
        "4111 1111 1111 1111",
        "4111-1111-1111-1112",
        "+44 20 7946 0958",
        "(555) 123-4567",
        "2026-05-01T10:30:00",
        "order 12345678901234",
        "v1.2.3",
        # look-alikes the patterns must leave, next to which a cut must not change anything
        "2026-05-01 10:30:00",
        "10:30:00.123",
        "+02:00",
        "1714559400",
        "1714559400123",
        "ORD-2026-000123",
        "123e4567-e89b-12d3-a456-426614174000",
        "978-3-16-148410-0",
        "192.168.100.200",
        "2001:db8::1",
        "01.05.2026",
        "#4829",
        # phone shapes the patterns must find
        "555-123-4567",
        "555.123.4567",
        "5551234567",
        "07700 900123",
        "+49 30 12345678",
        "+1 (555) 123-4567",
        "(0)",
        "+44",
        "12",
        "123",
        "4567",
        "\u00a0",
        ":",
        "#",
        "/",
        "'",
        "word",
        "Zürich",
        "x_y",
        " ",
        "  ",
        "\n",
        "\n\n",
        "\t",
        ".",
        ",",
        "-",
        "+",
        "(",
        ")",
        "@",
        "%",
        "\x00",
        "0",
        "7",
        "99",
        "a",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TOKENS, min_size=1, max_size=400), st.integers(min_value=1, max_value=64))
def test_masking_in_pieces_equals_masking_whole(tokens, size):
    text = "".join(tokens)
    cut = pieces(text, size)

    assert "".join(cut) == text
    assert "".join(whole(p) for p in cut) == whole(text)


@settings(max_examples=500, deadline=None)
@given(
    st.text(
        st.one_of(
            st.characters(codec="ascii"),
            st.sampled_from("٣३߃௫০๔０𝟎éü中 "),  # digits of other scripts, and letters that are not
        ),
        max_size=60,
    )
)
def test_the_quick_digit_check_agrees_with_the_pattern_on_any_text(text):
    """Card and phone patterns run only on a text with a digit: the quick check must never miss one."""
    assert redact.has_digit(text) == (re.search(r"\d", text) is not None)


def test_numbers_written_in_other_scripts_digits_are_masked_too():
    """Texts without one ASCII digit take the pattern's slow path, and are masked as before."""
    masker = Redactor(PiiSettings())
    assert masker.text("call +٤٤ ٢٠ ٧٩٤٦ ٠٩٥٨ today") == "call [PHONE] today"
    assert masker.text("card ٤١١١ ١١١١ ١١١١ ١١١١") == "card [CARD]"


def test_a_long_ordinary_text_is_cut_near_the_piece_size():
    text = "Your refund of 120 EUR was sent to jane@example.com on 2026-05-01. " * 5000  # ~340 KB
    cut = pieces(text, 16 * 1024)

    assert len(cut) > 15
    assert max(len(p) for p in cut) < 16 * 1024 + 64


def test_a_text_with_nowhere_safe_to_cut_stays_whole():
    assert pieces("1" * 100_000, 1024) == ["1" * 100_000]


def test_the_masked_text_is_the_same_by_either_path_and_the_loop_runs_between_pieces(monkeypatch):
    monkeypatch.setattr(redact, "SLICE_CHARS", 4096)
    redactor = Redactor(PiiSettings(patterns={"account": r"ACC-\d{8}"}))
    text = (
        "Call +44 20 7946 0958 or write to jane@example.com about ACC-12345678, card 4111 1111 1111 1111. "
        * 400
    )
    ticks = 0

    async def main() -> str:
        nonlocal ticks

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.ensure_future(tick())
        await asyncio.sleep(0)
        start = ticks
        masked = await redactor.atext(text)
        ticks -= start
        ticker.cancel()
        return masked

    masked = asyncio.run(main())

    assert masked == redactor.text(text)
    assert "jane@example.com" not in masked and "ACC-12345678" not in masked
    assert re.search(r"\d{4} \d{4} \d{4} \d{4}", masked) is None
    assert ticks >= len(pieces(text, 4096)) - 1  # other work ran between the pieces
