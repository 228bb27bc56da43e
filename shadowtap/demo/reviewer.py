"""The demo's SIMULATED people: scripted users who send feedback on the answers they got, and a scripted
reviewer who labels the review queue, so that the report's production signals and `shadowtap judge
calibrate` have something to show on a first run. Neither is a person; their labels say so.

The scripted reviewer reads each queued pair as a careful human would (a failed or malformed answer loses,
a refusal of an answerable request loses, a much wordier answer saying the same loses, otherwise a tie),
with a little seeded disagreement, as two humans never agree on everything.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import httpx
import jsonschema

from shadowtap.labels import LABEL_SCHEMA, Better, Label, PerSide, append_label
from shadowtap.proxy.feedback import FEEDBACK_PATH
from shadowtap.records import SIDES, PairRecord, SideName, side_of, side_outputs, utc_now_rfc3339
from shadowtap.review.queue import build_queue, read_pairs

__all__ = ["SCRIPTED_REVIEWER", "scripted_feedback", "scripted_review"]

SCRIPTED_REVIEWER = "scripted-reviewer (SIMULATED)"
# Shares of the primary's answers that scripted users rate, by signal.
USER_SIGNALS = (("thumbs_down", 0.05), ("thumbs_up", 0.15), ("escalated", 0.02))
CALIBRATION_SHARE = 0.2
WORDY_RATIO = 1.8  # an answer this many times longer, saying the same, is the worse one
DISAGREE_SHARE = 0.08  # labels where the scripted reviewer sees it the other way
REFUSAL_OPENINGS = ("i'm sorry", "i am sorry", "sorry,", "i can't", "i cannot", "i'm not able", "i am unable")


def _fraction(seed: int, text: str, purpose: str) -> float:
    digest = hashlib.sha256(f"{seed}|{purpose}|{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _question(pair: PairRecord) -> str:
    messages = pair["request"].get("messages") or []
    return json.dumps(messages[-1:], sort_keys=True)


def scripted_feedback(proxy_url: str, data_dir: Path, seed: int) -> dict[str, int]:
    """Post SIMULATED users' feedback on the primary's answers to the proxy's real endpoint, by the
    response id each client got; how many of each signal were posted."""
    posted: dict[str, int] = {}
    with httpx.Client(base_url=proxy_url, timeout=10) as client:
        for pair in read_pairs(data_dir / "pairs.jsonl").values():
            response_id = pair["primary"].get("response_id")
            if not response_id:
                continue
            pick = _fraction(seed, _question(pair), "feedback")
            for signal, share in USER_SIGNALS:
                if pick < share:
                    answer = client.post(FEEDBACK_PATH, json={"response_id": response_id, "signal": signal})
                    answer.raise_for_status()
                    posted[signal] = posted.get(signal, 0) + 1
                    break
                pick -= share
    return posted


def _text(side: Any) -> str:
    return "\n".join(o.get("text") or "" for o in side_outputs(side))


def _refused(side: Any) -> bool | None:
    outputs = side_outputs(side)
    if not outputs:
        return None
    if any(o.get("refusal") for o in outputs):
        return True
    return _text(side).lstrip().lower().startswith(REFUSAL_OPENINGS)


def _schema(request: dict[str, Any]) -> dict[str, Any] | None:
    fmt = request.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else {}
    return {} if fmt.get("type") == "json_object" else None


def _format_ok(request: dict[str, Any], side: Any) -> bool | None:
    schema = _schema(request)
    if schema is None or not side_outputs(side):
        return None
    try:
        document = json.loads(_text(side))
    except ValueError:
        return False
    return jsonschema.Draft202012Validator(schema).is_valid(document)


def _tools_ok(request: dict[str, Any], side: Any) -> bool:
    offered = {
        t["function"]["name"]: t["function"].get("parameters") or {}
        for t in request.get("tools") or []
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    }
    for output in side_outputs(side):
        for call in output["tool_calls"]:
            if call["name"] not in offered:
                return False
            try:
                arguments = json.loads(call["arguments"])
            except ValueError:
                return False
            if not jsonschema.Draft202012Validator(offered[call["name"]]).is_valid(arguments):
                return False
    return True


def _better(
    pair: PairRecord, refused: dict[SideName, bool | None], format_ok: dict[SideName, bool | None]
) -> Better:
    request = pair["request"]
    broken = {
        side: not side_outputs(side_of(pair, side))
        or format_ok[side] is False
        or not _tools_ok(request, side_of(pair, side))
        for side in SIDES
    }
    if broken["primary"] != broken["candidate"]:
        return "candidate" if broken["primary"] else "primary"
    if broken["primary"]:
        return "both_bad"
    if refused["primary"] != refused["candidate"]:
        return "candidate" if refused["primary"] else "primary"
    lengths = {side: max(1, len(_text(side_of(pair, side)))) for side in SIDES}
    if lengths["candidate"] >= WORDY_RATIO * lengths["primary"]:
        return "primary"
    if lengths["primary"] >= WORDY_RATIO * lengths["candidate"]:
        return "candidate"
    return "tie"


def _per_side(verdicts: dict[SideName, bool | None]) -> PerSide:
    return {"primary": verdicts["primary"], "candidate": verdicts["candidate"]}


def _label(pair: PairRecord, reason: str, rng: random.Random) -> Label:
    request = pair["request"]
    refused = {side: _refused(side_of(pair, side)) for side in SIDES}
    format_ok = {side: _format_ok(request, side_of(pair, side)) for side in SIDES}
    better = _better(pair, refused, format_ok)
    if rng.random() < DISAGREE_SHARE:
        better = rng.choice([b for b in ("primary", "candidate", "tie") if b != better])
    shown: SideName = rng.choice(SIDES)
    return {
        "schema": LABEL_SCHEMA,
        "pair_id": pair["id"],
        "reviewer": SCRIPTED_REVIEWER,
        "ts": utc_now_rfc3339(),
        "shown": shown,
        "better": better,
        "refused": _per_side(refused),
        "format_ok": _per_side(format_ok),
        "note": "SIMULATED label written by shadowtap/demo/reviewer.py, not by a person",
        "reason": reason,
    }


def scripted_review(data_dir: Path, seed: int) -> int:
    """Label the data directory's review queue (built as `shadowtap review` builds it) as the SIMULATED
    reviewer; the number of labels appended to `labels.jsonl`."""
    rng = random.Random(seed)
    queue = build_queue(data_dir, CALIBRATION_SHARE, rng)
    for item in queue.items:
        append_label(data_dir / "labels.jsonl", _label(queue.pairs[item.pair_id], item.reason, rng))
    return len(queue.items)
