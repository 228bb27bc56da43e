"""Configuration: one YAML file, every key overridable by a `SHADOWTAP_...` environment variable.

Precedence, lowest first: built-in defaults, the YAML file, the environment, command-line flags.
Everything is validated once at start-up into frozen objects that are passed down; a bad value fails
with an error that names the key (`shadow.sample_rate: must be between 0 and 1, got 1.5`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shadowtap.errors import ConfigError

ENV_PREFIX = "SHADOWTAP_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http(s) URL like http://host:8000/v1, got {value!r}")
    return value.rstrip("/")


class UpstreamSettings(_Section):
    """One OpenAI-compatible endpoint. `url` is what the OpenAI SDK would take as `base_url`."""

    url: str | None = None
    api_key: str | None = None
    model: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=300.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=512, ge=1)
    max_keepalive: int = Field(default=128, ge=0)
    # Idle pooled connections are not reused past this age. Below the 5 s idle timeout of uvicorn (and so
    # vLLM), so the proxy never sends a request on a connection the server is just closing.
    keepalive_expiry_s: float = Field(default=4.0, gt=0)
    # A PEM bundle of CA certificates to trust for an https URL (a private CA); default: certifi's.
    ca_file: str | None = None

    _url = field_validator("url")(classmethod(lambda cls, v: _check_url(v)))

    @field_validator("ca_file")
    @classmethod
    def _ca_file_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"no such file: {value!r}")
        return value


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # Serve /metrics (and admin endpoints) on their own port/interface instead of the user-traffic port.
    metrics_host: str | None = None
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    shutdown_grace_s: float = Field(default=10.0, ge=0)


class ShadowSettings(_Section):
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    # Per-route rates override sample_rate; only these two routes are ever mirrored.
    routes: dict[Literal["/v1/chat/completions", "/v1/completions"], float] = Field(default_factory=dict)
    # What makes sampling deterministic: "header:<Name>", "body:<field>", or "random".
    sample_key: str = "body:user"
    concurrency: int = Field(default=32, ge=1)
    queue_size: int = Field(default=256, ge=1)
    max_body_bytes: int = Field(default=1_000_000, ge=0)
    # "concurrent": the candidate starts with the primary (fair latency comparison);
    # "after_primary": it starts once the primary has answered (never competes with it).
    start: Literal["concurrent", "after_primary"] = "concurrent"
    # What to do with the shadow when the primary fails: keep the pair (with the error) or skip it.
    on_primary_error: Literal["record", "skip"] = "record"

    @field_validator("routes")
    @classmethod
    def _rates_in_range(cls, routes: dict[str, float]) -> dict[str, float]:
        for route, rate in routes.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"rate for {route} must be between 0 and 1, got {rate}")
        return routes

    @field_validator("sample_key")
    @classmethod
    def _key_form(cls, key: str) -> str:
        kind, _, name = key.partition(":")
        if key == "random" or (kind in ("header", "body") and name):
            return key
        raise ValueError(f"must be 'random', 'header:<Header-Name>' or 'body:<field>', got {key!r}")

    def rate_for(self, route: str) -> float:
        return self.routes.get(route, self.sample_rate)  # type: ignore[call-overload]


class TagSettings(_Section):
    segment_header: str = "X-Shadow-Segment"
    # Segment values that become metric labels; anything else is recorded but labelled `other`.
    segments: list[str] = Field(default_factory=list)
    # Upper bounds (in characters of message content) of the input-length buckets.
    length_buckets: list[int] = Field(default_factory=lambda: [500, 2000, 8000])

    @field_validator("length_buckets")
    @classmethod
    def _ascending(cls, bounds: list[int]) -> list[int]:
        if bounds != sorted(set(bounds)) or any(b <= 0 for b in bounds):
            raise ValueError(f"must be strictly ascending positive numbers, got {bounds}")
        return bounds


DEFAULT_SECRET_HEADERS = [
    "authorization",
    "cookie",
    "set-cookie",
    "api-key",
    "x-api-key",
    "openai-organization",
    "openai-project",
    "proxy-authorization",
]


class PiiSettings(_Section):
    enabled: bool = True
    emails: bool = True
    phones: bool = True
    cards: bool = True
    # Extra regexes to mask, e.g. account numbers: {"account": "ACC-\\d{8}"}.
    patterns: dict[str, str] = Field(default_factory=dict)


class RedactionSettings(_Section):
    # Never sent to the candidate or judge, never written to records, logs or metrics.
    headers: list[str] = Field(default_factory=lambda: list(DEFAULT_SECRET_HEADERS))
    pii: PiiSettings = Field(default_factory=PiiSettings)


class KafkaSettings(_Section):
    bootstrap_servers: str | None = None
    topic: str = "shadowtap.pairs"
    scores_topic: str = "shadowtap.scores"
    review_topic: str = "shadowtap.review"
    group_id: str = "shadowtap-scorers"
    compression: Literal["gzip", "none", "lz4", "snappy", "zstd"] = "gzip"
    linger_ms: int = Field(default=20, ge=0)
    batch_size: int = Field(default=65536, ge=1)
    request_timeout_ms: int = Field(default=10_000, ge=100)
    delivery_timeout_s: float = Field(default=30.0, gt=0)
    spill_max_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    retry_interval_s: float = Field(default=2.0, gt=0)


class SinkSettings(_Section):
    # "auto": Kafka when kafka.bootstrap_servers is set, otherwise the local JSONL file.
    kind: Literal["auto", "jsonl", "kafka"] = "auto"
    data_dir: str = "shadowtap-data"
    queue_size: int = Field(default=10_000, ge=1)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)

    @property
    def resolved_kind(self) -> str:
        if self.kind != "auto":
            return self.kind
        return "kafka" if self.kafka.bootstrap_servers else "jsonl"


class Settings(_Section):
    primary: UpstreamSettings = Field(default_factory=UpstreamSettings)
    candidate: UpstreamSettings = Field(default_factory=lambda: UpstreamSettings(timeout_s=60.0))
    server: ServerSettings = Field(default_factory=ServerSettings)
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)
    tags: TagSettings = Field(default_factory=TagSettings)
    redaction: RedactionSettings = Field(default_factory=RedactionSettings)
    sink: SinkSettings = Field(default_factory=SinkSettings)
    # Scorer and sentinel sections are validated by their own modules; kept as plain mappings here.
    scoring: dict[str, Any] = Field(default_factory=dict)
    sentinel: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _kafka_needs_servers(self) -> Settings:
        if self.sink.kind == "kafka" and not self.sink.kafka.bootstrap_servers:
            raise ValueError("sink.kind is 'kafka' but sink.kafka.bootstrap_servers is not set")
        return self

    @property
    def data_dir(self) -> Path:
        return Path(self.sink.data_dir)


# --------------------------------------------------------------------------------------------------
# Loading


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(path)}: cannot set below a non-mapping value")
    node[path[-1]] = value


def _resolve_env_name(model: type[BaseModel], words: list[str]) -> list[str] | None:
    """Map the words of `SHADOWTAP_SINK_KAFKA_BOOTSTRAP_SERVERS` onto a key path, e.g.
    ["sink", "kafka", "bootstrap_servers"]; field names may themselves contain underscores."""
    for n in range(len(words), 0, -1):
        name = "_".join(words[:n])
        field = model.model_fields.get(name)
        if field is None:
            continue
        rest = words[n:]
        if not rest:
            return [name]
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            tail = _resolve_env_name(sub, rest)
            if tail is not None:
                return [name, *tail]
        elif sub is not None and getattr(sub, "__origin__", None) is dict:
            return [name, "_".join(rest)]
    return None


# Variables that carry secrets or pointers rather than config keys.
ENV_NOT_KEYS = frozenset({"SHADOWTAP_CONFIG", "SHADOWTAP_JUDGE_API_KEY", "SHADOWTAP_CACHE"})


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Collect `SHADOWTAP_*` variables into a nested mapping; values are parsed as YAML scalars/lists."""
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_NOT_KEYS:
            continue
        words = name[len(ENV_PREFIX) :].lower().split("_")
        path = _resolve_env_name(Settings, words)
        if path is None:
            raise ConfigError(f"{name}: no such configuration key")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{name}: cannot parse value: {exc}") from None
        if isinstance(value, (int, float)) and path[-1] in ("api_key", "model", "url", "bootstrap_servers"):
            value = raw
        _set_path(tree, path, value)
    return tree


def section_error(section: str, exc: ValidationError) -> str:
    """The first problem of a config section's validation, as `section.key: problem`."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    msg = {"extra_forbidden": "unknown key", "missing": "required"}.get(err["type"], err["msg"])
    return f"{section}.{key}: {msg.removeprefix('Value error, ')}"


def _format_validation_error(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        msg = msg.removeprefix("Value error, ")
        got = err.get("input")
        suffix = (
            ""
            if err["type"] in ("extra_forbidden", "value_error") or isinstance(got, dict)
            else f" (got {got!r})"
        )
        lines.append(f"  {key}: {msg}{suffix}")
    return f"invalid configuration ({origin}):\n" + "\n".join(lines)


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Defaults < YAML file < SHADOWTAP_* environment < `overrides` (command-line flags)."""
    environ = os.environ if environ is None else environ
    tree: dict[str, Any] = {}
    origin = "defaults"
    if path is None and environ.get("SHADOWTAP_CONFIG"):
        path = environ["SHADOWTAP_CONFIG"]
    if path is not None:
        file = Path(path)
        origin = str(file)
        try:
            loaded = yaml.safe_load(file.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {file}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: the top level must be a mapping of sections")
        tree = loaded
    env = env_overrides(environ)
    if env:
        tree = _deep_merge(tree, env)
        origin += " + environment"
    if overrides:
        tree = _deep_merge(tree, overrides)
        origin += " + command line"
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, origin)) from None
