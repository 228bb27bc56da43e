"""The demo's story for review: it ends by saying how to open the review page on its data; its SIMULATED
users' feedback reaches the proxy's endpoint, /metrics and the report; its scripted reviewer's labels are
valid; and a person can then label the same queue with the keyboard in a real browser."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from shadowtap.cli.demo import demo_command
from shadowtap.config import ReviewSettings
from shadowtap.demo.reviewer import SCRIPTED_REVIEWER
from shadowtap.feedback import read_feedback
from shadowtap.labels import read_labels
from shadowtap.review.app import create_review_app
from shadowtap.review.serve import review_session
from shadowtap.testing.serving import serve_in_thread


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    data_dir = tmp_path_factory.mktemp("demo") / "shadowtap-demo"
    result = CliRunner().invoke(
        demo_command, ["--requests", "120", "--data-dir", str(data_dir)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    return data_dir, result.output


def test_the_demo_ends_telling_the_user_how_to_open_the_review_page(demo_dir):
    data_dir, output = demo_dir
    last = output.strip().splitlines()[-1]
    assert f"shadowtap review --data-dir {data_dir}" in last and "http://127.0.0.1:8090/" in last
    assert "SIMULATED users posted feedback on the primary's answers" in output
    assert "on the pairs users disliked, the judge preferred the candidate in" in " ".join(output.split())


def test_the_scripted_users_and_reviewer_write_valid_records(demo_dir):
    data_dir, _ = demo_dir
    feedback = read_feedback(data_dir / "feedback.jsonl")
    assert feedback and {f["source"] for f in feedback} == {"client"}
    assert all(f["pair_id"] and f["segment"] for f in feedback)  # every answer was mirrored: tied to its pair
    labels = read_labels(data_dir / "labels.jsonl")
    assert len(labels) > 20 and {label["reviewer"] for label in labels} == {SCRIPTED_REVIEWER}
    assert {"candidate_refused", "calibration"} <= {label["reason"] for label in labels}
    refused = [label for label in labels if label["reason"] == "candidate_refused"]
    assert sum(label["refused"]["candidate"] is True for label in refused) >= len(refused) * 0.8


def test_a_person_labels_the_demo_queue_in_the_browser_beside_the_scripted_labels(demo_dir, browser):
    data_dir, _ = demo_dir
    before = len(read_labels(data_dir / "labels.jsonl"))
    session = review_session(data_dir, ReviewSettings(seed=5), reviewer="dana")
    with serve_in_thread(create_review_app(session)) as server:
        page = browser.new_page()
        page.goto(server.url + "/")
        assert "No pair has labels from two reviewers yet" in page.inner_text("#agreement")
        for key in ("2", "1"):
            page.keyboard.press(key)
            page.keyboard.press("Enter")
            page.wait_for_selector("#reveal:not([hidden])")
            with page.expect_navigation():  # Enter after the reveal loads the next pair
                page.keyboard.press("Enter")
        assert page.inner_text("#done") == "2"
        said = page.inner_text("#agreement")
    labels = read_labels(data_dir / "labels.jsonl")
    assert len(labels) == before + 2 and [x["reviewer"] for x in labels[-2:]] == ["dana", "dana"]
    shared = {x["pair_id"] for x in labels if x["reviewer"] == SCRIPTED_REVIEWER} & {
        x["pair_id"] for x in labels[-2:]
    }
    if shared:  # the two reviewers' queues overlap on the flagged pairs: an agreement figure
        assert f"on {len(shared)} pairs labelled by two or more reviewers" in said
