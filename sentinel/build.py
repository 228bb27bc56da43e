"""Building a sentinel set from recorded pairs: stratified, near-duplicates removed, references kept.

Every stratum (a cell of the configured tag axes, e.g. segment × length bucket) gets at least
`min_per_cell` examples so that its score means something; the rest of the set is shared out in
proportion to traffic. A cell that cannot reach the minimum is named in a warning. Each stratum's share
of real traffic goes into the manifest: it weights the aggregate, so over-sampling a small stratum does
not over-weight it. Sampling is seeded per cell and starts from pairs sorted by id, so the same records
always give the same set, whatever order they arrive in.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

import jsonschema

from shadowtap.proxy.record import length_bucket
from shadowtap.records import PairRecord, utc_now_rfc3339, validate_pair
from shadowtap.request_text import input_chars, request_text
from shadowtap.sentinel.decision import required_size
from shadowtap.sentinel.dedup import NearDuplicates
from shadowtap.sentinel.reference import MATCH_METHODS
from shadowtap.sentinel.sets import Cell, ManifestBody, SentinelSet, SetRow, read_set, write_set
from shadowtap.sentinel.settings import SentinelSettings
from shadowtap.sentinel.sources import Read
from shadowtap.stats import design_effect

log = logging.getLogger("shadowtap.sentinel")

REPLAYABLE_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})
STRATUM_SEPARATOR = "|"
MISSING = "none"


class Label(TypedDict):
    """A human's label for one example: its expected answer and, optionally, how to match it."""

    id: str
    expected: Any
    match: NotRequired[str | None]
    tolerance: NotRequired[float | None]


@dataclass
class ShortCell:
    stratum: str
    values: dict[str, str]
    available: int
    minimum: int

    def describe(self) -> str:
        where = ", ".join(f"{k}={v}" for k, v in self.values.items())
        return (
            f"stratum {where}: only {self.available} distinct example(s), "
            f"below the minimum of {self.minimum} per cell"
        )


@dataclass
class BuildResult:
    set: SentinelSet
    created: bool
    short_cells: list[ShortCell] = field(default_factory=list)
    read: int = 0
    invalid: int = 0
    not_eligible: int = 0
    duplicates: int = 0

    @property
    def masked_inputs(self) -> int:
        """Examples whose request had values masked: flagged, and left out of the gate by default."""
        return sum(1 for row in self.set.rows if row.get("masked_input"))


def required_set_size(built: SentinelSet, config: SentinelSettings) -> int:
    """Examples the set needs for a production decision at `threshold_points` (sentinel/decision.py),
    with this set's strata: traffic weights against how many examples each holds."""
    sampled = Counter(row["stratum"] for row in built.rows)
    return required_size(
        config.threshold_points,
        alpha=config.alpha,
        power=config.power,
        discordance=config.expected_discordance,
        cells_gate=len(sampled) > 1 and min(sampled.values(), default=0) >= config.min_gating_cell,
        design_effect=design_effect(built.traffic_shares, dict(sampled)),
    )


# --------------------------------------------------------------------------------------------------
# Strata


def stratum_values(pair: PairRecord, axes: list[str], length_bounds: list[int]) -> dict[str, str]:
    """The pair's value on each axis: a tag; `route` and `length_bucket` are derived when not tagged."""
    tags = pair.get("tags") or {}
    values = {}
    for axis in axes:
        value: str | None = tags.get(axis)
        if value is None and axis == "route":
            value = pair.get("route")
        if value is None and axis == "length_bucket":
            value = length_bucket(input_chars(pair.get("request") or {}), length_bounds)
        values[axis] = str(value) if value not in (None, "") else MISSING
    return values


def stratum_key(values: dict[str, str]) -> str:
    return STRATUM_SEPARATOR.join(values.values())


# --------------------------------------------------------------------------------------------------
# Allocation


def allocate(size: int, minimum: int, available: dict[str, int], shares: dict[str, float]) -> dict[str, int]:
    """How many examples each cell gets: its minimum (or all it has), then the rest by traffic share.

    Largest-remainder rounding; a cell never gets more than it has, and what it cannot take goes to the
    others. When the minimums alone exceed `size`, the set is as large as the minimums.
    """
    quota = {cell: min(minimum, n) for cell, n in available.items()}
    remaining = size - sum(quota.values())
    while remaining > 0:
        open_cells = [c for c in available if quota[c] < available[c]]
        weight = sum(shares[c] for c in open_cells)
        if not open_cells or weight <= 0:
            break
        exact = {c: remaining * shares[c] / weight for c in open_cells}
        grant = {c: min(int(exact[c]), available[c] - quota[c]) for c in open_cells}
        leftover = remaining - sum(grant.values())
        for c in sorted(open_cells, key=lambda c: (-(exact[c] - int(exact[c])), c)):
            if leftover <= 0:
                break
            if quota[c] + grant[c] < available[c]:
                grant[c] += 1
                leftover -= 1
        given = sum(grant.values())
        if given == 0:
            break
        for c, n in grant.items():
            quota[c] += n
        remaining -= given
    return quota


# --------------------------------------------------------------------------------------------------
# Building

# Records from a source (sentinel/sources.py): JSON objects not yet known to be pair records.
Records = Iterable[Read]


def _masked_input(pair: PairRecord) -> bool:
    """Whether masking changed any value of the request (what a replay sends is then not what the user sent)."""
    masked = pair.get("masked")
    return bool(masked and masked.get("request"))


def _example(pair: PairRecord, stratum: str, values: dict[str, str]) -> SetRow:
    row = _row(pair, stratum, values)
    if _masked_input(pair):
        row["masked_input"] = True
    return row


def _row(pair: PairRecord, stratum: str, values: dict[str, str]) -> SetRow:
    return {
        "id": pair["id"],
        "stratum": stratum,
        "strata": values,
        "tags": dict(pair.get("tags") or {}),
        "ts": pair.get("ts"),
        "route": pair["route"],
        "request": pair["request"],
        "reference": pair["primary"]["text"] or "",
        "reference_model": pair["primary"].get("model"),
        "expected": None,
        "match": None,
    }


def _in_window(ts: str | None, since: datetime | None, until: datetime | None) -> bool:
    if since is None and until is None:
        return True
    try:
        when = datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    except ValueError:
        return False
    return (since is None or when >= since) and (until is None or when < until)


@dataclass
class _Traffic:
    """What the source held, per cell: all replayable traffic, and the pairs that can be references."""

    counts: Counter[str] = field(default_factory=Counter)  # read, invalid, not_eligible, duplicates
    traffic: Counter[str] = field(default_factory=Counter)
    cell_values: dict[str, dict[str, str]] = field(default_factory=dict)
    eligible: dict[str, list[PairRecord]] = field(default_factory=lambda: defaultdict(list))

    def shares(self) -> dict[str, float]:
        total = sum(self.traffic.values())
        return {key: round(n / total, 6) for key, n in sorted(self.traffic.items())}


def _valid_pair(record: dict[str, Any] | None) -> PairRecord | None:
    if record is None:
        return None
    try:
        validate_pair(record)
    except jsonschema.ValidationError:
        return None
    return cast(PairRecord, record)  # it is valid against the pair record's schema


def _read_traffic(
    records: Records,
    axes: list[str],
    length_bounds: list[int],
    since: datetime | None,
    until: datetime | None,
) -> _Traffic:
    seen = _Traffic()
    seen_ids: set[str] = set()
    for _where, record in records:
        seen.counts["read"] += 1
        pair = _valid_pair(record)
        if pair is None:
            seen.counts["invalid"] += 1
            continue
        if pair["id"] in seen_ids:  # delivered twice (Kafka is at-least-once): one request, counted once
            seen.counts["duplicates"] += 1
            continue
        seen_ids.add(pair["id"])
        if pair["route"] not in REPLAYABLE_ROUTES or not _in_window(pair.get("ts"), since, until):
            seen.counts["not_eligible"] += 1
            continue
        values = stratum_values(pair, axes, length_bounds)
        key = stratum_key(values)
        seen.cell_values[key] = values
        seen.traffic[key] += 1
        primary = pair["primary"]
        if primary.get("error") is not None or not primary.get("text"):
            seen.counts["not_eligible"] += 1
            continue
        seen.eligible[key].append(pair)
    return seen


def _distinct_per_cell(seen: _Traffic, config: SentinelSettings) -> dict[str, list[PairRecord]]:
    """Per cell, a seeded shuffle of the pairs in id order, near-duplicates (within the cell) dropped."""
    unique: dict[str, list[PairRecord]] = {}
    for key in sorted(seen.traffic):
        pairs = sorted(seen.eligible.get(key, []), key=lambda p: p["id"])
        random.Random(f"{config.seed}:{key}").shuffle(pairs)
        texts = NearDuplicates(config.near_duplicate_threshold, config.shingle_words)
        kept: list[PairRecord] = []
        for pair in pairs:
            if len(kept) >= config.size:
                break
            text = request_text(pair["request"])
            if texts.is_duplicate(text):
                seen.counts["duplicates"] += 1
                continue
            texts.add(text)
            kept.append(pair)
        unique[key] = kept
    return unique


def _sample(
    unique: dict[str, list[PairRecord]], quota: dict[str, int], seen: _Traffic, config: SentinelSettings
) -> tuple[list[SetRow], Counter[str]]:
    """Each cell's quota of examples; a near-duplicate across cells stays in the first (in key order)."""
    chosen = NearDuplicates(config.near_duplicate_threshold, config.shingle_words)
    rows: list[SetRow] = []
    sampled: Counter[str] = Counter()
    for key in sorted(unique):
        for pair in unique[key]:
            if sampled[key] >= quota[key]:
                break
            text = request_text(pair["request"])
            if chosen.is_duplicate(text):
                seen.counts["duplicates"] += 1
                continue
            chosen.add(text)
            rows.append(_example(pair, key, seen.cell_values[key]))
            sampled[key] += 1
    return rows, sampled


def _manifest(
    rows: list[SetRow],
    seen: _Traffic,
    sampled: Counter[str],
    short: list[ShortCell],
    config: SentinelSettings,
    *,
    source: dict[str, Any],
    sampling: dict[str, Any],
) -> ManifestBody:
    shares = seen.shares()
    cells: dict[str, Cell] = {
        key: {
            "values": seen.cell_values[key],
            "traffic": seen.traffic[key],
            "traffic_share": shares[key],
            "available": len(seen.eligible.get(key, [])),
            "sampled": sampled[key],
        }
        for key in sorted(seen.traffic)
    }
    return {
        "created_at": utc_now_rfc3339(),
        "source": source,
        "parent": None,
        "strata": {"axes": list(config.strata), "cells": cells, "traffic_total": sum(seen.traffic.values())},
        "size": len(rows),
        "labelled": sum(1 for r in rows if r.get("expected") is not None),
        "short_cells": [c.stratum for c in short],
        "sampling": {
            "size": config.size,
            "min_per_cell": config.min_per_cell,
            "near_duplicate_threshold": config.near_duplicate_threshold,
            "shingle_words": config.shingle_words,
            "seed": config.seed,
            **sampling,
        },
    }


def build_set(
    records: Records,
    config: SentinelSettings,
    *,
    source: dict[str, Any],
    length_bounds: list[int],
    sets_dir: Path,
    out: Path | None = None,
    labels: dict[str, Label] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> BuildResult:
    """Sample a set from pair records and write it (see the module docstring for how)."""
    seen = _read_traffic(records, list(config.strata), length_bounds, since, until)
    if not seen.traffic:
        raise ValueError(
            "no replayable pair records (chat or completions, with a primary answer) in the source"
        )
    unique = _distinct_per_cell(seen, config)
    quota = allocate(config.size, config.min_per_cell, {k: len(v) for k, v in unique.items()}, seen.shares())
    rows, sampled = _sample(unique, quota, seen, config)
    short = [
        ShortCell(key, seen.cell_values[key], sampled[key], config.min_per_cell)
        for key in sorted(seen.traffic)
        if sampled[key] < config.min_per_cell
    ]
    for cell in short:
        log.warning("%s", cell.describe())
    apply_labels(rows, labels or {})
    window = {
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "length_buckets": length_bounds,
    }
    manifest = _manifest(rows, seen, sampled, short, config, source=source, sampling=window)
    built, created = write_set(rows, manifest, out=out, sets_dir=sets_dir)
    counts = seen.counts
    return BuildResult(
        built,
        created,
        short,
        read=counts["read"],
        invalid=counts["invalid"],
        not_eligible=counts["not_eligible"],
        duplicates=counts["duplicates"],
    )


# Manifest keys a new version of a set does not inherit from its parent.
_RECOMPUTED = frozenset(
    {"schema", "version", "content_sha256", "created_at", "parent", "source", "labelled", "size"}
)


def rebuild_set(
    parent_dir: Path,
    *,
    sets_dir: Path,
    out: Path | None = None,
    labels: dict[str, Label] | None = None,
) -> BuildResult:
    """A new version of an existing set with labels applied: from a labels file, or from `expected`
    fields filled in by hand in a copy of the set (whose content then no longer matches its version)."""
    parent = read_set(parent_dir, verify=False)
    rows = [row.copy() for row in parent.rows]
    for row in rows:
        row.setdefault("expected", None)
        row.setdefault("match", None)
    apply_labels(rows, labels or {})
    # The parent's manifest, less what is computed anew (its other keys, known or not, carry over).
    carried = {key: value for key, value in parent.manifest.items() if key not in _RECOMPUTED}
    manifest = cast(  # `strata` and the builder's other keys come with the parent's manifest
        ManifestBody,
        {
            **carried,
            "created_at": utc_now_rfc3339(),
            "source": {"kind": "set", "path": str(parent_dir), "version": parent.version},
            "parent": parent.version,
            "size": len(rows),
            "labelled": sum(1 for r in rows if r.get("expected") is not None),
        },
    )
    built, created = write_set(rows, manifest, out=out, sets_dir=sets_dir)
    return BuildResult(built, created, read=len(rows))


def read_labels(path: Path) -> dict[str, Label]:
    """Labels by example id from a JSONL (or JSON list) file of {"id", "expected", "match"?, "tolerance"?}."""
    text = path.read_text()
    try:
        items = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(x) for x in text.splitlines() if x.strip()]
        )
    except ValueError as exc:
        raise ValueError(f"{path}: not JSON lines: {exc}") from None
    labels: dict[str, Label] = {}
    for number, item in enumerate(items, 1):
        if not isinstance(item, dict) or "id" not in item or "expected" not in item:
            raise ValueError(f"{path} item {number}: needs an id and an expected answer")
        labels[str(item["id"])] = cast(Label, item)  # the keys a label needs are checked just above
    return labels


def apply_labels(rows: list[SetRow], labels: dict[str, Label]) -> None:
    by_id = {row["id"]: row for row in rows}
    unknown = sorted(set(labels) - set(by_id))
    if unknown:
        raise ValueError(f"labels for ids not in the set: {', '.join(unknown[:5])}")
    for example_id, label in labels.items():
        row = by_id[example_id]
        row["expected"] = label["expected"]
        row["match"] = label.get("match")
        tolerance = label.get("tolerance")
        if tolerance is not None:
            row["tolerance"] = float(tolerance)
    for row in rows:
        expected, match = row.get("expected"), row.get("match")
        if expected is not None and not isinstance(expected, (str, int, float)):
            raise ValueError(f"example {row['id']}: expected must be a string or a number")
        if match is not None and match not in MATCH_METHODS:
            raise ValueError(
                f"example {row['id']}: match must be one of {', '.join(MATCH_METHODS)}, got {match!r}"
            )
