"""A reviewer works through the queue in real headless Chromium, with the keyboard only.

What they see is blind (no side or model named until the label is saved); what lands in labels.jsonl is
unblinded correctly; the A/B order is random over many pairs; progress and agreement are on the page.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from shadowtap.config import ReviewSettings
from shadowtap.errors import ConfigError
from shadowtap.labels import read_labels
from shadowtap.review.serve import review_session
from tests.review.conftest import CANDIDATE_MODEL, PRIMARY_MODEL

REASONS = {"pair-rich": "candidate_refused", "pair-001": "format_regression", "pair-002": "format_regression"}
BLIND_WORDS = re.compile(rf"primary|candidate|{PRIMARY_MODEL}|{CANDIDATE_MODEL}|chatcmpl-", re.IGNORECASE)


def side_shown_as_a(page: Any) -> str:
    a = page.inner_text("#answer-a")
    b = page.inner_text("#answer-b")
    assert ("alpha" in a) != ("alpha" in b), "each answer is on one side only"
    return "primary" if "alpha" in a else "candidate"


def open_page(browser: Any, url: str) -> tuple[Any, list[str]]:
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(url)
    return page, problems


def test_a_keyboard_session_labels_blind_and_the_labels_are_unblinded(browser, make_data_dir, review_server):
    data_dir = make_data_dir(10, review=REASONS, thumbs_down=["chatcmpl-003"])
    server = review_server(data_dir, calibration_share=0.5, seed=11)
    queued = len(server.session.queue.items)
    assert queued == 3 + 1 + 3  # flagged, thumbs-down, half of the other six
    page, problems = open_page(browser, server.url + "/")

    expected: list[dict[str, Any]] = []
    for n in range(queued):
        assert page.inner_text("#done") == str(n)
        assert not BLIND_WORDS.search(page.inner_html("#pair")), "the pair names a side before the label"
        assert page.is_hidden("#reveal")
        pair_id = page.get_attribute("#pair", "data-pair")
        a_side = side_shown_as_a(page)
        b_side = "candidate" if a_side == "primary" else "primary"
        choice = n % 4
        page.keyboard.press(str(choice + 1))
        page.keyboard.press("q")  # A refused: yes
        page.keyboard.press("w")
        page.keyboard.press("w")  # B refused: no
        if n % 2:
            page.keyboard.press("s")  # B met the format
        if n == 0:
            page.keyboard.press("n")
            page.keyboard.type("A hedges, B is wrong about the router")
            page.keyboard.press("Escape")
        page.keyboard.press("Enter")
        page.wait_for_selector("#reveal:not([hidden])")
        assert f"A was the {a_side}, B the {b_side}" in page.inner_text("#reveal")
        expected.append(
            {
                "pair_id": pair_id,
                "shown": a_side,
                "better": [a_side, b_side, "tie", "both_bad"][choice],
                "refused": {a_side: True, b_side: False},
                "format_ok": {a_side: None, b_side: True if n % 2 else None},
            }
        )
        with page.expect_navigation():  # Enter after the reveal loads the next pair
            page.keyboard.press("Enter")

    assert page.inner_text("#finished") == "Nothing left to review."
    assert (page.inner_text("#done"), page.inner_text("#left")) == (str(queued), "0")
    reasons = page.inner_text("table.reasons")
    assert "format_regression\t2\t0" in reasons and "thumbs_down\t1\t0" in reasons
    assert "calibration\t3\t0" in reasons and "candidate_refused\t1\t0" in reasons
    labels = read_labels(data_dir / "labels.jsonl")
    got = [
        {k: label[k] for k in ("pair_id", "shown", "better")}  # type: ignore[literal-required]
        | {"refused": dict(label["refused"]), "format_ok": dict(label["format_ok"])}
        for label in labels
    ]
    assert got == expected
    assert labels[0]["note"] == "A hedges, B is wrong about the router"
    assert {label["reviewer"] for label in labels} == {"ana"}
    assert {label["reason"] for label in labels} == {
        "candidate_refused",
        "format_regression",
        "thumbs_down",
        "calibration",
    }
    assert problems == []


def test_the_request_and_every_part_of_both_answers_are_shown(browser, make_data_dir, review_server):
    data_dir = make_data_dir(2, review={"pair-rich": "candidate_refused"})
    server = review_server(data_dir, calibration_share=0.0)
    page, problems = open_page(browser, server.url + "/")

    request = page.inner_text("#request")
    assert "You are the helpdesk of Acme Broadband." in request
    assert "hack my neighbour's wifi" in request
    assert "get_weather" in request and "Required format" in request
    answers = page.inner_text("#answer-a") + page.inner_text("#answer-b")
    assert "choice 0" in answers and "choice 1" in answers
    assert "calls get_weather" in answers and '"city": "Lyon"' in answers
    assert "refusal field" in answers and "bravo cannot help with breaking into networks." in answers
    reasoning = page.locator("details.reasoning")
    assert reasoning.count() == 1 and reasoning.get_attribute("open") is None  # collapsed
    assert not page.locator("text=alpha thinks about the weather first").is_visible()
    reasoning.locator("summary").click()
    assert page.locator("text=alpha thinks about the weather first").is_visible()
    assert problems == []


def test_skip_moves_a_pair_to_the_end_and_enter_without_a_choice_saves_nothing(
    browser, make_data_dir, review_server
):
    data_dir = make_data_dir(4)
    server = review_server(data_dir, calibration_share=1.0, seed=3)
    page, _ = open_page(browser, server.url + "/")
    first = page.get_attribute("#pair", "data-pair")

    page.keyboard.press("Enter")
    assert "Choose the better answer first" in page.inner_text("#status")
    with page.expect_navigation():  # skipping loads the next pair
        page.keyboard.press("k")
    assert page.get_attribute("#pair", "data-pair") != first
    seen = [page.get_attribute("#pair", "data-pair")]
    for _ in range(3):
        page.keyboard.press("3")
        page.keyboard.press("Enter")
        page.wait_for_selector("#reveal:not([hidden])")
        with page.expect_navigation():  # Enter after the reveal loads the next pair
            page.keyboard.press("Enter")
        seen.append(page.get_attribute("#pair", "data-pair"))
    assert seen[-1] == first and len(set(seen)) == 4
    assert not (data_dir / "labels.jsonl").exists() or len(read_labels(data_dir / "labels.jsonl")) == 3


def label_all(url: str, choose: Any) -> list[tuple[str, str]]:
    """Label every queued pair over plain HTTP as the page's script does; (pair id, side shown as A)."""
    shown = []
    with httpx.Client(base_url=url, timeout=10) as client:
        while True:
            page = client.get("/").text
            found = re.search(r'data-pair="([^"]+)"', page)
            if not found:
                return shown
            a_text = page.split('id="answer-a"')[1].split('id="answer-b"')[0]
            a_side = "primary" if "alpha" in a_text else "candidate"
            shown.append((found.group(1), a_side))
            answer = client.post(
                "/api/label", json={"pair_id": found.group(1), "better": choose(found.group(1))}
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["revealed"]["A"] == a_side


def test_the_order_shown_is_random_over_many_pairs_and_recorded_with_each_label(make_data_dir, review_server):
    data_dir = make_data_dir(80)
    server = review_server(data_dir, calibration_share=1.0)

    shown = label_all(server.url, lambda pair_id: "A")

    assert len(shown) == 80
    primary_first = sum(1 for _, side in shown if side == "primary")
    assert 20 <= primary_first <= 60  # binomial(80, 1/2): outside this once in ~10^5 runs
    labels = read_labels(data_dir / "labels.jsonl")
    assert [(x["pair_id"], x["shown"]) for x in labels] == shown
    assert all(x["better"] == x["shown"] for x in labels)  # "A is better" is whichever side A was


def test_two_reviewers_on_the_same_pairs_give_an_agreement_figure(browser, make_data_dir, review_server):
    data_dir = make_data_dir(6)
    ana = review_server(data_dir, reviewer="ana", calibration_share=1.0)
    ben = review_server(data_dir, reviewer="ben", calibration_share=1.0)
    label_all(ana.url, lambda pair_id: "tie")
    label_all(
        ben.url, lambda pair_id: "tie" if pair_id in ("pair-001", "pair-002", "pair-003") else "both_bad"
    )

    page, _ = open_page(browser, ben.url + "/")

    said = page.inner_text("#agreement")
    assert "agree on the better answer 50% of the time on 6 pairs" in said
    assert "Fleiss' kappa" in said


def test_the_page_keeps_a_strict_policy_and_needs_its_token_off_loopback(make_data_dir, review_server):
    data_dir = make_data_dir(3)
    with pytest.raises(ConfigError, match="review.token"):
        review_session(data_dir, ReviewSettings(host="0.0.0.0"))
    server = review_server(data_dir, calibration_share=1.0, token="s3cret-review")

    with httpx.Client(base_url=server.url) as client:
        login = client.get("/")
        assert "Sign in" in login.text and "alpha" not in login.text
        assert "script-src 'self'" in login.headers["content-security-policy"]
        assert "unsafe-inline" not in login.headers["content-security-policy"]
        assert client.post("/api/label", json={"pair_id": "pair-001", "better": "A"}).status_code == 401
        assert client.post("/login", data={"token": "wrong"}).status_code == 401
        assert client.post("/login", data={"token": "s3cret-review"}).status_code == 303
        page = client.get("/")
        assert "alpha" in page.text and "s3cret" not in page.text
        crossed = client.post("/api/label", json={"pair_id": "x"}, headers={"origin": "http://evil.example"})
        assert crossed.status_code == 403
    assert "<script>" not in page.text and "onclick" not in page.text
