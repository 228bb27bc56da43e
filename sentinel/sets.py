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
from typing import Any

from shadowtap.errors import SetError, SetExistsError

SET_SCHEMA = "shadowtap.sentinel_set/v1"
DATA_FILE = "data.jsonl"
MANIFEST_FILE = "manifest.json"
VERSION_CHARS = 16


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def encode_rows(rows: list[dict[str, Any]]) -> bytes:
    """The bytes of `data.jsonl`: one canonical JSON object a line, in stratum then id order."""
    ordered = sorted(rows, key=lambda r: (r["stratum"], r["id"]))
    return b"".join(canonical_json(r) + b"\n" for r in ordered)


def content_hash(data: bytes, axes: list[str], shares: dict[str, float]) -> str:
    digest = hashlib.sha256()
    digest.update(SET_SCHEMA.encode() + b"\n")
    digest.update(canonical_json({"axes": axes, "traffic_share": shares}) + b"\n")
    digest.update(data)
    return digest.hexdigest()


@dataclass(frozen=True)
class SentinelSet:
    path: Path
    manifest: dict[str, Any]
    rows: list[dict[str, Any]]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def axes(self) -> list[str]:
        return list(self.manifest["strata"]["axes"])

    @property
    def traffic_shares(self) -> dict[str, float]:
        """Each stratum's share of production traffic: the weights of the aggregate."""
        return {key: cell["traffic_share"] for key, cell in self.manifest["strata"]["cells"].items()}


def _read_rows(data: bytes, where: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise SetError(f"{where} line {number}: not JSON: {exc}") from None
        if not isinstance(row, dict) or not {"id", "stratum", "request", "reference"} <= row.keys():
            raise SetError(f"{where} line {number}: an example needs id, stratum, request and reference")
        rows.append(row)
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
    loaded = SentinelSet(root, manifest, rows)
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
    rows: list[dict[str, Any]],
    manifest: dict[str, Any],
    *,
    out: Path | None,
    sets_dir: Path,
) -> tuple[SentinelSet, bool]:
    """Write a new set; returns (the set, whether it was created).

    `manifest` holds everything but the version fields, which are computed here. Without `out` the set
    goes to `sets_dir/<version>`. A directory that already holds the same version is returned as it
    is; one that holds anything else is never touched.
    """
    data = encode_rows(rows)
    shares = {key: cell["traffic_share"] for key, cell in manifest["strata"]["cells"].items()}
    digest = content_hash(data, list(manifest["strata"]["axes"]), shares)
    version = digest[:VERSION_CHARS]
    manifest = {"schema": SET_SCHEMA, "version": version, "content_sha256": digest, **manifest}
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
