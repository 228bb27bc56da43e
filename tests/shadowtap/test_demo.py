"""`shadowtap demo` and `shadowtap report` as a newcomer meets them: one command, a report that names what
was planted in the simulated candidate, and an HTML page that renders in a real browser."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families

from shadowtap.cli.demo import demo_command, report_command
from shadowtap.records import validate_pair, validate_score
from shadowtap.report.model import build_report

CHROMIUM = Path("/usr/bin/chromium")
PLANTED = {
    ("billing", "refusal"),
    ("extraction", "format"),
    ("bookings", "tools"),
    ("billing", "judge"),
    ("extraction", "judge"),
    ("bookings", "judge"),
}
UNTOUCHED_SEGMENTS = ("troubleshooting", "out_of_scope")
WIDE = {"COLUMNS": "200"}


@dataclass
class DemoRun:
    result: Result
    data_dir: Path
    wall_s: float


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    data_dir = tmp_path_factory.mktemp("demo") / "shadowtap-demo"
    started = time.perf_counter()
    result = CliRunner().invoke(demo_command, ["--requests", "200", "--data-dir", str(data_dir)], env=WIDE)
    return DemoRun(result, data_dir, time.perf_counter() - started)


def what_changed(output: str) -> list[str]:
    """The bullets of the report's "What changed" section (up to its blank line), each with the lines it
    wraps onto, whitespace-normalised."""
    section = output.split("What changed\n", 1)[1].split("\n\n", 1)[0]
    bullets: list[list[str]] = []
    for line in section.splitlines():
        if line.startswith("• "):
            bullets.append(line.split()[1:])
        elif bullets:
            bullets[-1].extend(line.split())
    return [" ".join(words) for words in bullets]


def test_the_demo_finishes_within_a_minute_and_its_report_names_the_planted_regressions(demo_run: DemoRun):
    assert demo_run.result.exit_code == 0, demo_run.result.output
    assert demo_run.wall_s < 60
    output = demo_run.result.output
    assert "SIMULATED" in output
    changes = what_changed(output)
    refusal = next(line for line in changes if line.startswith("Refusals:"))
    assert "of billing requests the primary answered" in refusal
    assert "primary 0%" in refusal
    rate = int(re.search(r"refused (\d+)%", refusal).group(1))
    assert 20 <= rate <= 40  # 30% planted
    schema = next(line for line in changes if line.startswith("Format:"))
    assert "extraction answers broke the required format" in schema
    assert "schema violation" in schema
    tools = next(line for line in changes if line.startswith("Tool calls:"))
    assert "tool-calling answers on bookings were invalid for the offered tools" in tools
    rate = int(re.search(r"Tool calls: (\d+)%", tools).group(1))
    assert 20 <= rate <= 40  # 30% planted
    assert re.search(r"\(\d+ of 40, 95% interval \d+–\d+%: \d+ schema violations, ", tools), tools
    assert "bad JSON" in tools and "unknown tool" in tools and "primary 0%" in tools
    assert "e.g. book_engineer_visit: " in tools
    assert any(line.startswith("Latency: the candidate is slower to first token") for line in changes)
    assert any(line.startswith("Length: the candidate's answers are") for line in changes)
    assert "review queue:" in output and str(demo_run.data_dir / "review.jsonl") in output


def test_the_report_flags_nothing_where_nothing_was_planted(demo_run: DemoRun):
    report = build_report(demo_run.data_dir)

    flagged = {key for key, verdict in report.verdicts.items() if verdict == "worse"}
    assert {("billing", "refusal"), ("extraction", "format")} <= flagged
    assert flagged <= PLANTED
    assert set(UNTOUCHED_SEGMENTS) <= set(report.clean_segments)
    for line in what_changed(demo_run.result.output):
        if not line.startswith("No regression found in"):
            assert not any(segment in line for segment in UNTOUCHED_SEGMENTS), line
    assert report.lines["pairs"] == 200


def test_the_demo_writes_valid_records_and_a_review_queue(demo_run: DemoRun):
    pairs = [json.loads(line) for line in (demo_run.data_dir / "pairs.jsonl").read_text().splitlines()]
    scores = [json.loads(line) for line in (demo_run.data_dir / "scores.jsonl").read_text().splitlines()]
    review = [json.loads(line) for line in (demo_run.data_dir / "review.jsonl").read_text().splitlines()]
    for record in pairs[:50]:
        validate_pair(record)
    for record in scores[:200]:
        validate_score(record)
    assert {p["tags"]["segment"] for p in pairs} == {
        "billing",
        "troubleshooting",
        "bookings",
        "extraction",
        "out_of_scope",
    }
    assert any(p["stream"] for p in pairs) and not all(p["stream"] for p in pairs)
    assert {s["scorer"] for s in scores} == {"format", "tools", "refusal", "latency", "judge"}
    assert {r["reason"] for r in review} == {
        "candidate_refused",
        "format_regression",
        "tool_call_invalid",
        "different_tool",
        "refusal_uncertain",
    }


def noise_floor_pair_ids(data_dir: Path) -> set[str]:
    """The pairs of the primary against its own second answer (shadow.noise_floor_rate)."""
    pairs = (json.loads(line) for line in (data_dir / "pairs.jsonl").read_text().splitlines())
    return {p["id"] for p in pairs if p["tags"].get("comparison") == "noise_floor"}


def test_the_primary_books_every_visit_with_a_valid_call_and_the_candidate_breaks_some(demo_run: DemoRun):
    scores = [json.loads(line) for line in (demo_run.data_dir / "scores.jsonl").read_text().splitlines()]
    noise_floor = noise_floor_pair_ids(demo_run.data_dir)
    assert noise_floor, "the demo asks the primary again on some requests"
    tools = [s for s in scores if s["scorer"] == "tools" and s["pair_id"] not in noise_floor]
    outcomes = {
        side: Counter(s["outcome"] for s in tools if s["side"] == side)
        for side in ("primary", "candidate", "pair")
    }

    assert {s["tags"]["segment"] for s in tools} == {"bookings"}
    assert outcomes["primary"] == {"pass": 40}
    assert set(outcomes["candidate"]) == {"pass", "schema_violation", "bad_json", "unknown_tool"}
    assert (
        sum(outcomes["pair"].values()) == 40
        and outcomes["pair"]["same_calls"] == outcomes["candidate"]["pass"]
    )
    broken = [s for s in tools if s["side"] == "candidate" and s["outcome"] == "schema_violation"]
    errors = " ".join(s["detail"]["error"] for s in broken)
    assert "is not one of ['morning', 'afternoon', 'evening']" in errors  # an enum value outside the list
    assert "is not of type 'boolean'" in errors  # a wrong type


def test_report_on_the_demo_data_dir_gives_the_same_findings(demo_run: DemoRun):
    result = CliRunner().invoke(report_command, ["--data-dir", str(demo_run.data_dir)], env=WIDE)

    assert result.exit_code == 0, result.output
    assert what_changed(result.output) == what_changed(demo_run.result.output)
    assert "REGRESSION" in result.output


def test_the_demo_never_overwrites_records_it_did_not_write(tmp_path: Path):
    (tmp_path / "pairs.jsonl").write_text('{"id": "from-production"}\n')

    result = CliRunner().invoke(demo_command, ["--data-dir", str(tmp_path)])

    assert result.exit_code == 1
    assert "already holds shadowtap records" in result.output
    assert (tmp_path / "pairs.jsonl").read_text() == '{"id": "from-production"}\n'


def test_report_on_a_directory_without_records_says_so(tmp_path: Path):
    result = CliRunner().invoke(report_command, ["--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "no pairs.jsonl" in result.output


def _chromium(page: Path, screenshot: Path, profile: Path, size: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            f"--screenshot={screenshot}",
            f"--window-size={size}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"
)
def test_the_html_report_renders_in_headless_chromium_without_console_errors(
    demo_run: DemoRun, tmp_path: Path
):
    page = tmp_path / "report.html"
    result = CliRunner().invoke(report_command, ["--data-dir", str(demo_run.data_dir), "--html", str(page)])
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert "What changed" in text and "REGRESSION" in text and "SIMULATED" in text
    assert text.count("data:image/png;base64,") >= 3
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", text), "page loads something external"

    # The scan below must catch a broken page, or its silence on the report would prove nothing.
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><script>missingFunction();</script></body></html>")
    control = _chromium(broken, tmp_path / "broken.png", tmp_path / "profile-control", "400,300")
    assert any("Uncaught" in line for line in console_messages(control.stderr)), control.stderr

    screenshot = tmp_path / "report.png"
    shown = _chromium(page, screenshot, tmp_path / "profile", "1280,2000")
    assert shown.returncode == 0, shown.stderr
    assert console_messages(shown.stderr) == []
    assert screenshot.exists() and screenshot.stat().st_size > 50_000


def test_keep_running_leaves_metrics_up_until_ctrl_c(tmp_path: Path):
    command = "from shadowtap.cli.demo import demo_command; demo_command()"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            command,
            "--requests",
            "40",
            "--keep-running",
            "--data-dir",
            str(tmp_path / "d"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        deadline = time.monotonic() + 60
        url = None
        lines = []
        assert process.stdout is not None
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"http://127\.0\.0\.1:\d+/metrics", line)
            url = found.group(0) if found else None
        assert url is not None, "".join(lines)

        exposition = httpx.get(url, timeout=10).text
        samples = {
            (s.name, tuple(sorted(s.labels.items())))
            for family in text_string_to_metric_families(exposition)
            for s in family.samples
        }
        refused = {
            "scorer": "refusal",
            "side": "pair",
            "outcome": "candidate_only_refused",
            "segment": "billing",
        }
        assert ("shadowtap_scores_total", tuple(sorted(refused.items()))) in samples

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


def test_the_report_and_demo_packages_export_their_public_api():
    import shadowtap.demo
    import shadowtap.report

    assert set(shadowtap.report.__all__) == {"build_report", "print_report", "write_html", "Report"}
    assert set(shadowtap.demo.__all__) == {"run_demo", "DemoOptions"}
    for package in (shadowtap.report, shadowtap.demo):
        assert all(hasattr(package, name) for name in package.__all__)
