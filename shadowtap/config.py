"""Configuration: one YAML file, every key overridable by a `SHADOWTAP_...` environment variable.

Precedence, lowest first: built-in defaults, the YAML file, the environment, command-line flags.
Everything is validated once at start-up into frozen objects that are passed down; a bad value fails
with an error that names the key (`shadow.sample_rate: Input should be less than or equal to 1 (got 1.5)`).
The environment layer is pydantic-settings' (`EnvironmentSource`); the sections are frozen pydantic
models, the scorers' own settings excepted: each scorer validates those with its own config model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, overload
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from shadowtap.config_env import ENV_PREFIX, SCORER_ENTRY_POINT_GROUP, EnvironmentSource
from shadowtap.errors import ConfigError

__all__ = [
    "ConfigError",
    "DEFAULT_SECRET_HEADERS",
    "FEEDBACK_SIGNALS",
    "FeedbackSettings",
    "ENV_PREFIX",
    "KafkaSettings",
    "PiiSettings",
    "RedactionSettings",
    "RetrySettings",
    "ReviewSettings",
    "SCORER_ENTRY_POINT_GROUP",
    "ScorerEntry",
    "ScoringSettings",
    "SentinelSettings",
    "ServerSettings",
    "Settings",
    "ShadowSettings",
    "SinkSettings",
    "TagSettings",
    "UpstreamSettings",
    "check_headers",
    "check_secret",
    "check_url",
    "env_overrides",
    "load_settings",
    "section_error",
]

# Scorer plug-ins register under this entry point group (the built-ins too).


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@overload
def check_url(value: str) -> str: ...
@overload
def check_url(value: None) -> None: ...
def check_url(value: str | None) -> str | None:
    """An http(s) base URL (as the OpenAI SDK takes it), without its trailing slash; else ValueError."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http(s) URL like http://host:8000/v1, got {value!r}")
    return value.rstrip("/")


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def check_secret(value: str | None) -> str | None:
    """An API key as it goes into an `Authorization` header: a trailing newline (a key read from a file
    or a mounted secret) is dropped; any other control character would split the request, so it is
    refused. The message never repeats the value."""
    if value is None:
        return None
    value = value.rstrip("\r\n")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters (CR, LF, NUL, ...); the value is not shown")
    return value


def check_headers(headers: dict[str, str]) -> dict[str, str]:
    """Configured request headers: names are HTTP tokens, values hold no control characters (tab aside)."""
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid header name")
        if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
            raise ValueError(f"the value of {name} must not contain control characters (CR, LF, NUL, ...)")
    return headers


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
    # A response head (status line and headers) larger than this, or with more headers, is a protocol
    # error: the request gets a 502 (the candidate's: a failed side) and the connection is dropped.
    max_head_bytes: int = Field(default=64 * 1024, ge=1024)
    max_headers: int = Field(default=100, ge=1)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return check_url(value)

    @field_validator("api_key")
    @classmethod
    def _safe_key(cls, value: str | None) -> str | None:
        return check_secret(value)

    @field_validator("headers")
    @classmethod
    def _safe_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        return check_headers(headers)

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
    # Limits on what a client may send (docs/guarantees.md says what a client over them gets).
    # A request head (request line and headers) over this many bytes, or with more headers: 431.
    max_head_bytes: int = Field(default=64 * 1024, ge=1024)
    max_headers: int = Field(default=100, ge=1)
    # A request body over this many bytes: 413. Bodies over shadow.max_body_bytes are streamed to the
    # primary as they arrive, not held.
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=0)
    # Seconds a client has to send a whole request head, from the connection's start (or the end of its
    # previous response), and then its whole body; past either the connection is closed (a 408 first
    # when nothing has been answered on it yet).
    head_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=60.0, gt=0)
    # An idle keep-alive connection is closed after this many seconds (uvicorn's timeout_keep_alive).
    idle_timeout_s: float = Field(default=5.0, gt=0)
    # A client that reads none of its response for this many seconds, while the proxy has bytes
    # waiting for it, is disconnected, and the primary's connection freed.
    send_timeout_s: float = Field(default=30.0, gt=0)
    # Open client connections at most; past it a new request gets a 503 (uvicorn's limit_concurrency).
    limit_concurrency: int = Field(default=1000, ge=1)
    # Methods forwarded to the primary; any other gets a 405. The OpenAI API uses GET, POST and DELETE.
    methods: list[str] = Field(default_factory=lambda: ["GET", "POST", "DELETE", "HEAD", "OPTIONS"])
    # The client's address in X-Forwarded-For to the primary: appended to what the client sent
    # ("append"), forwarded as sent ("pass"), or not sent at all ("drop").
    forwarded_for: Literal["append", "pass", "drop"] = "append"
    # How often the event loop's lag is sampled (shadowtap_event_loop_lag_seconds); 0 turns it off.
    loop_lag_interval_s: float = Field(default=0.1, ge=0, le=10)

    @field_validator("methods")
    @classmethod
    def _method_tokens(cls, methods: list[str]) -> list[str]:
        upper = [m.upper() for m in methods]
        for method in upper:
            if not _HEADER_NAME.fullmatch(method):
                raise ValueError(f"{method!r} is not an HTTP method")
        return upper


class ShadowSettings(_Section):
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    # Per-route rates override sample_rate; only these three routes are ever mirrored.
    routes: dict[Literal["/v1/chat/completions", "/v1/completions", "/v1/responses"], float] = Field(
        default_factory=dict
    )
    # What makes sampling deterministic: "header:<Name>", "body:<field>", or "random".
    sample_key: str = "body:user"
    concurrency: int = Field(default=32, ge=1)
    queue_size: int = Field(default=256, ge=1)
    # A request body over this many bytes is not mirrored (`too_large`), and streams to the primary.
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=0)
    # Each side's streamed answer is kept for the record up to this many bytes, a plain one up to a quarter
    # of it (decoded: a gzip body is inflated no further); past it the side is recorded `truncated` and
    # the rest is not kept.
    max_record_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # A request body, or an answer, over this many bytes is parsed, masked and encoded in the offload
    # worker process instead of on the proxy's event loop (0: every pair is).
    offload_bytes: int = Field(default=64 * 1024, ge=0)
    # The noise floor (A/A): this share of mirrored requests is also sent a second time to the primary,
    # and that primary-against-primary pair is recorded (tags.comparison: noise_floor) and scored like
    # any other: what each scorer reports when nothing changed. It adds this share of the mirrored
    # requests to the primary's load, so it is off unless asked for (0.02 is a good start).
    noise_floor_rate: float = Field(default=0.0, ge=0.0, le=1.0)
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
        for mirrored, rate in self.routes.items():
            if mirrored == route:
                return rate
        return self.sample_rate


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
    feedback_topic: str = "shadowtap.feedback"
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


def _scorer_entry(value: Any) -> Any:
    """An entry of `scoring.scorers`: its settings, empty (YAML null) or true for the defaults, false to
    disable it. The settings themselves are checked by the scorer's own config model."""
    if value is None or value is True:
        return {}
    if value is False or isinstance(value, dict):
        return value
    raise ValueError(f"must be the scorer's settings (a mapping), or false to disable it, got {value!r}")


ScorerEntry = Annotated[dict[str, Any] | Literal[False], BeforeValidator(_scorer_entry)]


class ScoringSettings(_Section):
    """How pairs are scored: by the proxy's scoring process (embedded mode) or by `shadowtap score`
    workers on Kafka."""

    # Scoring in the embedded (JSONL) mode, by a process that follows pairs.jsonl; Kafka workers score
    # regardless.
    enabled: bool = True
    # Pairs scored at once; unset: 8 in the embedded scoring process, 16 per Kafka worker.
    concurrency: int | None = Field(default=None, ge=1)
    # Pairs the embedded scoring process holds read and unscored; beyond this a new pair is dropped from
    # scoring (it stays in pairs.jsonl) and counted.
    queue_size: int = Field(default=1000, ge=1)
    # Records a Kafka worker polls and commits as one transaction.
    batch_size: int = Field(default=100, ge=1)
    # Scorer name -> its settings (or false); unset: the scorers that need no outside service.
    scorers: dict[str, ScorerEntry] | None = None
    # A Kafka worker touches this file on every turn of its consume loop (a liveness probe checks its
    # age; deploy/k8s/worker.yaml); unset: no file.
    heartbeat_file: str | None = Field(default=None, min_length=1)


class SentinelSettings(_Section):
    """The `sentinel` section: every key has a default, so a sentinel runs with no config at all."""

    # Building a set
    strata: list[str] = Field(default_factory=lambda: ["segment", "length_bucket"], min_length=1)
    size: int = Field(default=150, ge=1)
    min_per_cell: int = Field(default=30, ge=0)
    near_duplicate_threshold: float = Field(default=0.9, gt=0, le=1)
    shingle_words: int = Field(default=3, ge=1)
    seed: int = 1234
    sets_dir: str | None = None

    # Running
    api_key: Annotated[str | None, AfterValidator(check_secret)] = None
    concurrency: int = Field(default=8, ge=1)
    retries: int = Field(default=3, ge=0)
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    timeout_s: float = Field(default=120.0, gt=0)
    max_tokens: int | None = Field(default=None, gt=0)
    scorers: dict[str, Any] | None = None
    judge: dict[str, Any] | None = None
    bootstrap_samples: int = Field(default=2000, ge=100)

    # History, gate, metrics
    history: str | None = None
    review_queue: str | None = None
    threshold_points: float = Field(default=5.0, ge=0)
    thresholds: dict[str, float] = Field(default_factory=dict)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    min_gating_cell: int = Field(default=30, ge=1)
    min_drop_points: float = Field(default=1.0, ge=0)
    power: float = Field(default=0.8, gt=0, lt=1)
    expected_discordance: float = Field(default=0.25, gt=0, le=1)
    gate_masked_inputs: bool = False
    judge_max_flip_share: float = Field(default=0.2, ge=0, le=1)
    judge_agreement_floor: float = Field(default=0.7, ge=0, le=1)
    judge_calibration: str | None = None
    pushgateway: str | None = None
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    @field_validator("thresholds")
    @classmethod
    def _points(cls, thresholds: dict[str, float]) -> dict[str, float]:
        for mode, points in thresholds.items():
            if points < 0:
                raise ValueError(f"threshold for {mode} must be >= 0 points, got {points}")
        return thresholds

    def threshold_for(self, failure_mode: str) -> float:
        """The regression threshold of one failure mode, in points (5 = 0.05 on a 0..1 rate)."""
        return self.thresholds.get(failure_mode, self.threshold_points)


# The production signals every deployment knows; `feedback.signals` adds a deployment's own names.
FEEDBACK_SIGNALS = ("thumbs_up", "thumbs_down", "escalated", "abandoned")
_SIGNAL_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


class FeedbackSettings(_Section):
    """`POST /shadowtap/v1/feedback` on the proxy: users' thumbs, escalations and the like, per response."""

    enabled: bool = True
    # When set, a feedback request must carry `Authorization: Bearer <token>`.
    token: Annotated[str | None, AfterValidator(check_secret)] = None
    # Signal names accepted besides thumbs_up, thumbs_down, escalated and abandoned.
    signals: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(default=16 * 1024, ge=256, le=1024 * 1024)
    max_comment_chars: int = Field(default=2000, ge=0, le=100_000)
    # Recent primary response ids (and pair ids) remembered, to tie feedback to a segment and a pair.
    recent_responses: int = Field(default=50_000, ge=1, le=10_000_000)

    @field_validator("signals")
    @classmethod
    def _signal_names(cls, signals: list[str]) -> list[str]:
        for name in signals:
            if not _SIGNAL_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a signal name (lower case letters, digits, _; 40 at most)")
            if name in FEEDBACK_SIGNALS or name == "retry":
                raise ValueError(f"{name!r} is built in; list only your own signals")
        return signals

    @property
    def accepted_signals(self) -> tuple[str, ...]:
        return (*FEEDBACK_SIGNALS, *self.signals)


class RetrySettings(_Section):
    """Retry detection: the same conversation key sending the same last user message again, soon."""

    enabled: bool = True
    window_s: float = Field(default=120.0, gt=0, le=86_400)
    # Conversations remembered at once (the oldest is forgotten first): bounded memory.
    max_conversations: int = Field(default=100_000, ge=1, le=10_000_000)
    # Request bodies larger than this are not looked at for retries.
    max_body_bytes: int = Field(default=1_000_000, ge=0)


class ReviewSettings(_Section):
    """`shadowtap review`: the blind review page."""

    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535)
    # Required when host is anything but a loopback address; sent as `Authorization: Bearer` or a cookie.
    token: Annotated[str | None, AfterValidator(check_secret)] = None
    # Share of the pairs no scorer or user flagged that is drawn at random into the queue (calibration).
    calibration_share: float = Field(default=0.2, ge=0.0, le=1.0)
    # The calibration sample and the A/B order are drawn with this seed (null: a fresh one each start).
    seed: int | None = None
    reviewer: str | None = Field(default=None, min_length=1, max_length=200)


class Settings(BaseSettings):
    """The whole configuration. `load_settings` builds it from the file, the environment and the flags;
    `Settings(**keys)` alone reads the process environment beneath `keys`."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, env_prefix=ENV_PREFIX)

    primary: UpstreamSettings = Field(default_factory=UpstreamSettings)
    candidate: UpstreamSettings = Field(default_factory=lambda: UpstreamSettings(timeout_s=60.0))
    server: ServerSettings = Field(default_factory=ServerSettings)
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)
    tags: TagSettings = Field(default_factory=TagSettings)
    redaction: RedactionSettings = Field(default_factory=RedactionSettings)
    sink: SinkSettings = Field(default_factory=SinkSettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    sentinel: SentinelSettings = Field(default_factory=SentinelSettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, EnvironmentSource(settings_cls, os.environ)

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


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """The `SHADOWTAP_*` variables of `environ` as a nested mapping of config keys."""
    return EnvironmentSource(Settings, environ)()


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


def _read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    file = Path(path)
    try:
        loaded = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {file}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{file}: the top level must be a mapping of sections")
    return loaded


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Defaults < YAML file < SHADOWTAP_* environment < `overrides` (command-line flags)."""
    environ = os.environ if environ is None else environ
    if path is None and environ.get("SHADOWTAP_CONFIG"):
        path = environ["SHADOWTAP_CONFIG"]
    tree: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        tree, origin = _read_file(path), str(Path(path))
    env = EnvironmentSource(Settings, environ)()
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
