"""A sentinel set on disk: `data.jsonl` (the examples) and `manifest.json`, versioned by a content hash.

A set is never modified. Its version is the hash of what decides its scores, the examples and the
traffic shares that weight its strata, so the same content always has the same version and any change
(a new example, a filled-in `expected` label, a different traffic share) gives a new one. Creation time
and source are recorded but not hashed. Loading a set checks the hash, so an edited set is refused
rather than silently compared with runs of the original.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

from shadowtap.errors import SetError, SetExistsError

SET_SCHEMA = "shadowtap.sentinel_set/v1"
DATA_FILE = "data.jsonl"
MANIFEST_FILE = "manifest.json"
VERSION_CHARS = 16

Expected = str | int | float


class SetRow(TypedDict):
    """One example of a set (a line of `data.jsonl`). A set needs only the first four keys; the builder
    writes all but `tolerance`, which a label may add."""

    id: str
    stratum: str
    request: dict[str, Any]
    reference: str
    strata: NotRequired[dict[str, str]]
    tags: NotRequired[dict[str, str]]
    ts: NotRequired[str | None]
    route: NotRequired[str]
    reference_model: NotRequired[str | None]
    expected: NotRequired[Expected | None]
    match: NotRequired[str | None]
    tolerance: NotRequired[float]
    masked_input: NotRequired[bool]  # written only when true: masking changed the request replayed
    probe: NotRequired[str]  # a generated reasoning probe: its kind (sentinel/probes.py)


class Cell(TypedDict):
    """One stratum in the manifest: its tag values, its traffic and how much of it was sampled."""

    values: dict[str, str]
    traffic: int
    traffic_share: float
    available: int
    sampled: int


class Strata(TypedDict):
    axes: list[str]
    cells: dict[str, Cell]
    traffic_total: int


class ManifestBody(TypedDict):
    """What the builder writes into `manifest.json`; `write_set` adds the version keys."""

    created_at: str
    source: dict[str, Any]
    parent: str | None
    strata: Strata
    size: int
    labelled: int
    short_cells: NotRequired[list[str]]
    sampling: NotRequired[dict[str, Any]]


class Manifest(ManifestBody):
    """`manifest.json`: the builder's keys and the version computed from the content."""

    schema: str
    version: str
    content_sha256: str


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def encode_rows(rows: list[SetRow]) -> bytes:
    """The bytes of `data.jsonl`: one canonical JSON object a line, in stratum then id order."""
    ordered = sorted(rows, key=lambda r: (r["stratum"], r["id"]))
    return b"".join(canonical_json(r) + b"\n" for r in ordered)


def content_hash(data: bytes, axes: list[str], shares: dict[str, float]) -> str:
    digest = hashlib.sha256()
    digest.update(SET_SCHEMA.encode() + b"\n")
    digest.update(canonical_json({"axes": axes, "traffic_share": shares}) + b"\n")
    digest.update(data)
    return digest.hexdigest()


def traffic_shares(manifest: ManifestBody) -> dict[str, float]:
    """Each stratum's share of production traffic: the weights of the aggregate."""
    return {key: cell["traffic_share"] for key, cell in manifest["strata"]["cells"].items()}


@dataclass(frozen=True)
class SentinelSet:
    path: Path
    manifest: Manifest
    rows: list[SetRow]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def axes(self) -> list[str]:
        return list(self.manifest["strata"]["axes"])

    @property
    def traffic_shares(self) -> dict[str, float]:
        """Each stratum's share of production traffic: the weights of the aggregate."""
        return traffic_shares(self.manifest)


def _read_rows(data: bytes, where: Path) -> list[SetRow]:
    rows: list[SetRow] = []
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise SetError(f"{where} line {number}: not JSON: {exc}") from None
        if not isinstance(row, dict) or not {"id", "stratum", "request", "reference"} <= row.keys():
            raise SetError(f"{where} line {number}: an example needs id, stratum, request and reference")
        rows.append(cast(SetRow, row))  # the keys a set needs are checked just above
    return rows


def read_set(path: str | os.PathLike[str], *, verify: bool = True) -> SentinelSet:
    """Load a set. With `verify`, refuse one whose content no longer matches its version."""
    root = Path(path)
    try:
        manifest = json.loads((root / MANIFEST_FILE).read_text())
        data = (root / DATA_FILE).read_bytes()
    except FileNotFoundError as exc:
        raise SetError(f"{root} is not a sentinel set: {Path(exc.filename).name} is missing") from None
    except ValueError as exc:
        raise SetError(f"{root / MANIFEST_FILE}: not JSON: {exc}") from None
    if manifest.get("schema") != SET_SCHEMA:
        raise SetError(f"{root / MANIFEST_FILE}: not a {SET_SCHEMA} manifest")
    rows = _read_rows(data, root / DATA_FILE)
    loaded = SentinelSet(root, cast(Manifest, manifest), rows)
    if verify:
        digest = content_hash(data, loaded.axes, loaded.traffic_shares)
        if digest != manifest.get("content_sha256"):
            raise SetError(
                f"{root} was changed after it was built (content no longer matches version "
                f"{manifest.get('version')}); make a new version with "
                f"`shadowtap sentinel build --from-set {root} --out NEW_DIR`"
            )
    return loaded


def write_set(
    rows: list[SetRow],
    body: ManifestBody,
    *,
    out: Path | None,
    sets_dir: Path,
) -> tuple[SentinelSet, bool]:
    """Write a new set; returns (the set, whether it was created).

    `body` holds everything but the version fields, which are computed here. Without `out` the set
    goes to `sets_dir/<version>`. A directory that already holds the same version is returned as it
    is; one that holds anything else is never touched.
    """
    data = encode_rows(rows)
    digest = content_hash(data, list(body["strata"]["axes"]), traffic_shares(body))
    version = digest[:VERSION_CHARS]
    manifest: Manifest = {"schema": SET_SCHEMA, "version": version, "content_sha256": digest, **body}
    target = out if out is not None else sets_dir / version
    if target.exists() and any(target.iterdir()):
        try:
            existing = read_set(target)
        except SetError:
            raise SetExistsError(
                f"{target} already exists and is not this set; sets are never overwritten"
            ) from None
        if existing.version != version:
            raise SetExistsError(
                f"{target} already holds set version {existing.version} (this content is {version}); "
                "sets are never overwritten: choose another --out"
            )
        return existing, False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    try:
        (staging / DATA_FILE).write_bytes(data)
        (staging / MANIFEST_FILE).write_text(
            json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        )
        read_only = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
        for name in (DATA_FILE, MANIFEST_FILE):
            (staging / name).chmod(read_only)
        if target.exists():
            target.rmdir()  # empty (checked above)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return SentinelSet(target, manifest, _read_rows(data, target / DATA_FILE)), True
