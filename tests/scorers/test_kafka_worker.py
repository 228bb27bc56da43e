"""Proxy → Kafka → scoring worker, with a real broker: nothing lost, nothing counted twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from shadowtap.records import PairRecord, validate_pair, validate_score
from shadowtap.testing.pairs import make_pair, make_side
from shadowtap.testing.upstreams import Reply
from tests.helpers import free_port, wait_for

pytestmark = [pytest.mark.kafka]

CHAT = [{"role": "user", "content": "Where is my invoice for March?"}]


def consume(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list[tuple[bytes, dict]]:
    """Everything committed on `topic` (read_committed), waiting until `expected` records or the deadline."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        consumer_timeout_ms=1000,
    )
    rows: list[tuple[bytes, dict]] = []
    deadline = time.monotonic() + timeout
    try:
        # Subscribe only once the topic exists: a consumer does not notice a topic created later
        # until its next metadata refresh, minutes away.
        wait_for(lambda: topic in consumer.topics(), timeout, interval=0.2, what=f"topic {topic}")
        consumer.subscribe([topic])
        while len(rows) < expected and time.monotonic() < deadline:
            for message in consumer:
                rows.append((message.key, json.loads(message.value)))
        # Give a late duplicate the chance to show up before declaring there is none.
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            batch = consumer.poll(timeout_ms=300)
            for messages in batch.values():
                rows.extend((m.key, json.loads(m.value)) for m in messages)
    finally:
        consumer.close()
    return rows


def unique_topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_pairs_through_the_proxy_land_on_the_topic_keyed_by_pair_id(kafka, proxy_factory, primary, candidate):
    topic = unique_topic("pairs")
    proxy = proxy_factory(
        primary.base_url,
        candidate.base_url,
        sink={"kafka": {"bootstrap_servers": kafka.bootstrap, "topic": topic}},
    )
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-user", max_retries=0)

    for _ in range(25):
        client.chat.completions.create(model="m", messages=CHAT)

    rows = consume(kafka.bootstrap, topic, expected=25)
    assert len(rows) == 25
    for key, pair in rows:
        validate_pair(pair)
        assert key.decode() == pair["id"]
    assert proxy.metric("shadowtap_sink_records_total", sink="kafka", outcome="written") == 25


def test_broker_down_mid_traffic_loses_no_record(kafka, proxy_factory, primary, candidate):
    topic = unique_topic("pairs")
    proxy = proxy_factory(
        primary.base_url,
        candidate.base_url,
        sink={
            "kafka": {
                "bootstrap_servers": kafka.bootstrap,
                "topic": topic,
                "retry_interval_s": 0.5,
                "request_timeout_ms": 2000,
                "delivery_timeout_s": 3,
            }
        },
    )
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-user", max_retries=0)
    for _ in range(10):
        client.chat.completions.create(model="m", messages=CHAT)
    wait_for(
        lambda: proxy.metric("shadowtap_sink_records_total", sink="kafka", outcome="written") == 10,
        30,
        what="10 written",
    )

    kafka.stop()
    try:
        answers = [client.chat.completions.create(model="m", messages=CHAT) for _ in range(15)]
        assert all(a.choices[0].message.content for a in answers)  # users never notice the broker
        wait_for(
            lambda: proxy.metric("shadowtap_sink_records_total", sink="kafka", outcome="spilled") >= 1,
            30,
            what="spill",
        )
    finally:
        kafka.start()

    rows = consume(kafka.bootstrap, topic, expected=25, timeout=90)
    ids = [pair["id"] for _, pair in rows]
    assert len(set(ids)) == 25
    wait_for(lambda: proxy.metric("shadowtap_sink_spill_bytes", sink="kafka") == 0, 30, what="spill drained")
    assert proxy.metric("shadowtap_sink_records_total", sink="kafka", outcome="dropped") == 0


# ---------------------------------------------------------------------------------------- worker


def billing_pair(i: int, refused: bool) -> PairRecord:
    """Pair `i` of a billing conversation; the candidate refuses it when `refused`."""
    candidate_text = "I'm sorry, but I can't help with that." if refused else f"Bill {i} is attached."
    return make_pair(
        pair_id=f"pair-{i:05d}-{uuid.uuid4().hex[:6]}",
        ts="2026-11-22T10:00:00.000Z",
        prompt=f"Question {i} about my bill",
        tags={"segment": "billing"},
        primary=make_side(f"Your bill number {i} is attached.", latency_ms=100.0),
        candidate=make_side(candidate_text, latency_ms=150.0),
    )


def produce(bootstrap: str, topic: str, pairs: list[PairRecord]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for pair in pairs:
        producer.send(topic, key=pair["id"].encode(), value=json.dumps(pair).encode())
    producer.flush()
    producer.close()


class Worker:
    def __init__(self, config: Path, worker_id: str, log: Path) -> None:
        self.port = free_port()
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shadowtap.cli",
                "score",
                "--config",
                str(config),
                "--worker-id",
                worker_id,
                "--metrics-port",
                str(self.port),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("SHADOWTAP_")},
        )

    def metric(self, name: str, **labels: str) -> float:
        try:
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return 0.0
        want = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
        for line in text.splitlines():
            if line.startswith(name + want + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def worker_config(tmp_path: Path, kafka, upstream_factory):
    def make(*, judge_delay_s: float = 0.0) -> tuple[Path, dict]:
        names = {
            "topic": unique_topic("pairs"),
            "scores_topic": unique_topic("scores"),
            "review_topic": unique_topic("review"),
            "group_id": unique_topic("group"),
        }
        scorers: dict = {"refusal": {}, "latency": {}}
        if judge_delay_s:
            judge = upstream_factory(
                "judge",
                lambda route, body: Reply(text='{"winner": "tie", "reason": "same"}', ttft_s=judge_delay_s),
            )
            scorers["judge"] = {
                "base_url": judge.base_url,
                "model": "judge",
                "api_key": "j",
                "concurrency": 8,
                "requests_per_second": 1000,
            }
        config = {
            "sink": {"kafka": {"bootstrap_servers": kafka.bootstrap, **names}},
            "tags": {"segments": ["billing"]},
            "scoring": {"batch_size": 50, "concurrency": 16, "scorers": scorers},
        }
        path = tmp_path / f"{names['group_id']}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path, names

    return make


def test_traffic_through_the_proxy_is_scored_by_the_worker_per_side_and_segment(
    kafka, worker_config, tmp_path, proxy_factory, primary, candidate
):
    """The production path end to end: proxy -> pairs topic -> worker -> scores topic and /metrics."""
    config, names = worker_config()
    candidate.sim.policy = lambda route, body: Reply(
        text="I'm sorry, but I can't help with that."
        if "refund" in body["messages"][-1]["content"]
        else "Your invoice is attached."
    )
    proxy = proxy_factory(
        primary.base_url,
        candidate.base_url,
        sink={"kafka": {"bootstrap_servers": kafka.bootstrap, "topic": names["topic"]}},
        tags={"segments": ["billing"]},
    )
    client = openai.OpenAI(
        base_url=proxy.base_url,
        api_key="sk-user",
        max_retries=0,
        default_headers={"X-Shadow-Segment": "billing"},
    )
    for i in range(40):
        topic = "refund" if i % 4 == 0 else "invoice"
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"About my {topic} {i}"}]
        )
    worker = Worker(config, "w1", tmp_path / "w1.log")
    try:
        rows = consume(kafka.bootstrap, names["scores_topic"], expected=40 * 4)
        wait_for(
            lambda: worker.metric("shadowtap_pairs_scored_total", source="kafka") == 40,
            30,
            what="worker metrics",
        )
        refusals = worker.metric(
            "shadowtap_scores_total",
            scorer="refusal",
            side="pair",
            outcome="candidate_only_refused",
            segment="billing",
        )
    finally:
        worker.stop()
    for key, record in rows:
        validate_score(record)
        assert key.decode() == f"{record['pair_id']}/{record['scorer']}/{record['side']}"
    pair_outcomes = {
        r["pair_id"]: r["outcome"] for _, r in rows if r["scorer"] == "refusal" and r["side"] == "pair"
    }
    assert len(pair_outcomes) == 40
    assert list(pair_outcomes.values()).count("candidate_only_refused") == 10 == refusals
    review = consume(kafka.bootstrap, names["review_topic"], expected=10)
    assert {r["reason"] for _, r in review} == {"candidate_refused"} and len(review) == 10


def test_worker_killed_mid_batch_loses_nothing_and_counts_nothing_twice(kafka, worker_config, tmp_path):
    config, names = worker_config(judge_delay_s=0.05)
    pairs = [billing_pair(i, refused=False) for i in range(300)]
    produce(kafka.bootstrap, names["topic"], pairs)
    log = tmp_path / "w.log"
    worker = Worker(config, "slot-0", log)
    try:
        wait_for(
            lambda: worker.metric("shadowtap_pairs_scored_total", source="kafka") >= 50,
            60,
            what="first batches",
        )
        scored_before_kill = worker.metric("shadowtap_pairs_scored_total", source="kafka")
        worker.stop(signal.SIGKILL)  # mid-batch: the next batch of 50 is being judged

        worker = Worker(config, "slot-0", log)
        rows = consume(kafka.bootstrap, names["scores_topic"], expected=300 * 5, timeout=120)
    finally:
        worker.stop()
    assert scored_before_kill < 300, "the worker was meant to die with work left"
    keys = [(r["pair_id"], r["scorer"], r["side"]) for _, r in rows]
    assert len(keys) == len(set(keys)), "a score record was committed twice"
    missing = {p["id"] for p in pairs} - {r["pair_id"] for _, r in rows}
    assert not missing, (
        f"{len(missing)} of 300 pairs never scored within the deadline ({len(rows)} score records);"
        f" the workers' log ends:\n{log.read_text(errors='replace')[-4000:]}"
    )


def test_two_workers_in_one_group_split_the_partitions(kafka, worker_config, tmp_path):
    config, names = worker_config(judge_delay_s=0.02)
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    admin.create_topics([NewTopic(names["topic"], num_partitions=4, replication_factor=1)])
    admin.close()
    workers = [Worker(config, f"split-{i}", tmp_path / f"split-{i}.log") for i in range(2)]
    try:

        def split() -> bool:
            assigned = [
                w.metric("shadowtap_consumer_assigned_partitions", topic=names["topic"]) for w in workers
            ]
            return sum(assigned) == 4 and all(a > 0 for a in assigned)

        wait_for(split, 60, what="both workers to share the 4 partitions")
        produce(kafka.bootstrap, names["topic"], [billing_pair(i, refused=False) for i in range(200)])
        rows = consume(kafka.bootstrap, names["scores_topic"], expected=200 * 5, timeout=120)
        counts = [w.metric("shadowtap_pairs_scored_total", source="kafka") for w in workers]
    finally:
        for w in workers:
            w.stop()
    keys = [(r["pair_id"], r["scorer"], r["side"]) for _, r in rows]
    assert len(keys) == len(set(keys)) == 1000
    assert sum(counts) == 200
    assert all(c > 0 for c in counts), f"one worker did all the work: {counts}"
