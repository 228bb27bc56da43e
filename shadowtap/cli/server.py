"""Running the proxy: choose the sink, wire pair handlers, start uvicorn (and the metrics port)."""

from __future__ import annotations

import contextlib
import logging
import resource
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from prometheus_client import start_http_server

from shadowtap.config import Settings
from shadowtap.errors import ConfigError
from shadowtap.metrics import Metrics
from shadowtap.proxy.app import create_app
from shadowtap.proxy.looplag import LoopLagSampler
from shadowtap.proxy.sinks import JsonlSink, Sink
from shadowtap.records import PairRecord

if TYPE_CHECKING:
    from shadowtap.scorers.embedded import EmbeddedScoring

log = logging.getLogger("shadowtap")


def make_sink(settings: Settings, metrics: Metrics) -> Sink:
    """The embedded default writes `DATA_DIR/pairs.jsonl`; with Kafka configured, the pairs topic."""
    data_dir = Path(settings.sink.data_dir)
    if settings.sink.resolved_kind == "kafka":
        from shadowtap.proxy.kafka import KafkaSink

        return KafkaSink(
            settings.sink.kafka,
            metrics,
            spill_path=data_dir / "spill" / "pairs.jsonl",
            queue_size=settings.sink.queue_size,
        )
    return JsonlSink(data_dir / "pairs.jsonl", metrics, settings.sink.queue_size)


def build(settings: Settings, metrics: Metrics | None = None) -> tuple[Any, Metrics, Sink]:
    """The ASGI app with its sink (and, in the embedded default, its scoring process) wired in."""
    metrics = metrics or Metrics()
    # Scorers first: a bad scorer setting fails here, before the sink has opened anything.
    scoring = _embedded_scoring(settings, metrics)
    sink = make_sink(settings, metrics)
    handlers: list[Callable[[PairRecord], None]] = [sink.submit]
    on_startup: list[Callable[[], Any]] = [sink.start]
    on_shutdown: list[Callable[[], Any]] = [lambda: sink.close(settings.server.shutdown_grace_s)]
    if scoring is not None:
        # The scoring process follows pairs.jsonl: it starts at the file's end before the sink writes, and
        # stops once the sink has written its last pair (and reads it to the end first).
        on_startup.insert(0, scoring.start_soon)
        on_shutdown.append(lambda: scoring.close(settings.server.shutdown_grace_s))
        scoring.metrics.initialise_scorers(
            scoring.scorers, settings.tags.segments, noise_floor=settings.shadow.noise_floor_rate > 0
        )
    for name in (sink.name, *(("scores", "review") if scoring is not None else ())):
        metrics.initialise_sink(name)
    metrics.initialise_segments(settings.tags.segments, settings.feedback.accepted_signals)
    sampler = None
    if settings.server.loop_lag_interval_s > 0:
        sampler = LoopLagSampler(metrics, settings.server.loop_lag_interval_s)
        on_startup.insert(0, sampler.start)
        on_shutdown.append(sampler.close)
    app = create_app(settings, metrics, handlers, on_startup=on_startup, on_shutdown=on_shutdown)
    app.state.loop_lag = sampler
    app.state.scoring = scoring
    return app, metrics, sink


def _embedded_scoring(settings: Settings, metrics: Metrics) -> EmbeddedScoring | None:
    if settings.sink.resolved_kind != "jsonl" or not settings.scoring.enabled:
        return None
    try:
        from shadowtap.scorers.embedded import EmbeddedScoring
    except ImportError:
        return None
    return EmbeddedScoring(settings, metrics)


def file_limit_for(settings: Settings) -> int:
    """Open files the proxy may need at once: client connections, both upstream pools, and a margin
    for the sink, the spill file, the metrics port and the event loop."""
    pools = settings.primary.max_connections + (
        settings.candidate.max_connections if settings.candidate.url else 0
    )
    return settings.server.limit_concurrency + pools + 64


def raise_file_limit(needed: int) -> int:
    """Raise this process's soft open-file limit towards `needed` (never past the hard limit); the limit
    now. A proxy out of file descriptors refuses every user, so a limit too low is said at start-up."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "the open-file limit is %d but server.limit_concurrency and the upstream pools may need %d; "
            "raise it (ulimit -n) or lower server.limit_concurrency",
            soft,
            needed,
        )
    return soft


class StartupErrors:
    """The app as uvicorn runs it for `shadowtap serve`: a configuration error found as the app starts (a
    candidate listing several models and no `candidate.model`) is kept in `error`, for the command to
    report as it reports any config error, instead of uvicorn logging its traceback. Requests pass
    straight through."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.error: ConfigError | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, partial(self._send, send))

    async def _send(self, send: Any, message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.failed":
            error = sys.exc_info()[1]  # the app sends this while it handles the start-up's exception
            if isinstance(error, ConfigError):
                self.error = error
                message = {**message, "message": ""}
        await send(message)


def serve(settings: Settings) -> None:
    """Run the proxy until SIGINT/SIGTERM; uvicorn drains in-flight requests, then the shadows and sink.

    A configuration problem found as the app starts (the candidate's model cannot be chosen) is raised as
    the `ConfigError` it is, not as uvicorn's exit."""
    app, metrics, _ = build(settings)
    raise_file_limit(file_limit_for(settings))
    if settings.server.metrics_port is not None:
        host = settings.server.metrics_host or settings.server.host
        start_http_server(settings.server.metrics_port, addr=host, registry=metrics.registry)
        log.info("metrics on http://%s:%d/metrics", host, settings.server.metrics_port)
    guarded = StartupErrors(app)
    config = uvicorn.Config(
        guarded,
        host=settings.server.host,
        port=settings.server.port,
        log_level="info",
        access_log=False,
        server_header=False,
        date_header=False,
        # uvicorn hands this to asyncio.wait_for, which takes a float; only its annotation says int.
        timeout_graceful_shutdown=settings.server.shutdown_grace_s,  # type: ignore[arg-type]  # a float works
        lifespan="on",
        **app.server_options,  # the proxy's protocol and the uvicorn settings its limits need
    )
    try:
        uvicorn.Server(config).run()
    except SystemExit:  # uvicorn's own exit when start-up failed
        if guarded.error is not None:
            raise guarded.error from None
        raise
