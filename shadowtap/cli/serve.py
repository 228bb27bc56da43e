"""`shadowtap serve`: the proxy in front of the primary, mirroring to the candidate."""

from __future__ import annotations

import click

from shadowtap.cli.common import load, nested
from shadowtap.config import Settings
from shadowtap.errors import ConfigError


@click.command()
@click.option(
    "--primary",
    metavar="URL",
    help="Base URL of the production endpoint, as the OpenAI SDK's base_url (http://host:8000/v1).",
)
@click.option(
    "--candidate", metavar="URL", help="Base URL of the candidate endpoint (e.g. vLLM's http://vllm:8000/v1)."
)
@click.option(
    "--candidate-model",
    metavar="NAME",
    help="Model name sent to the candidate (default: the one model the candidate's /models lists).",
)
@click.option("--port", type=int, help="Port for client traffic (default 8080).")
@click.option("--host", help="Interface to bind (default 127.0.0.1).")
@click.option(
    "--data-dir",
    metavar="DIR",
    help="Where pairs.jsonl, scores and the spill file go (default ./shadowtap-data).",
)
@click.option(
    "--config", "config_file", metavar="FILE", help="YAML config; SHADOWTAP_* variables override it."
)
def serve(
    primary: str | None,
    candidate: str | None,
    candidate_model: str | None,
    port: int | None,
    host: str | None,
    data_dir: str | None,
    config_file: str | None,
) -> None:
    """Run the proxy in front of PRIMARY, mirroring sampled requests to CANDIDATE.

    Without --candidate-model, the candidate's model is the one its /models lists, asked at start-up;
    a candidate listing several (or none) is an error. One not answering yet does not stop the proxy:
    sampled requests are not mirrored until it answers."""
    settings = load(
        config_file,
        nested(
            {
                "primary.url": primary,
                "candidate.url": candidate,
                "candidate.model": candidate_model,
                "server.port": port,
                "server.host": host,
                "sink.data_dir": data_dir,
            }
        ),
    )
    if settings.primary.url is None:
        raise click.UsageError("no primary endpoint: pass --primary URL or set primary.url in the config")
    if settings.candidate.url is None:
        click.echo(
            "note: no candidate configured (--candidate URL); requests pass through without mirroring",
            err=True,
        )
    from shadowtap.cli.server import serve as run

    sink = settings.sink.resolved_kind
    where = (
        f"{settings.sink.data_dir}/pairs.jsonl"
        if sink == "jsonl"
        else f"Kafka topic {settings.sink.kafka.topic}"
    )
    click.echo(
        f"shadowtap proxy on http://{settings.server.host}:{settings.server.port}/v1 -> primary {settings.primary.url}; "
        f"mirroring to {_mirroring(settings)}; pairs -> {where}",
        err=True,
    )
    try:
        run(settings)
    except ConfigError as exc:  # a scorer's settings, or a candidate model that cannot be chosen
        raise click.ClickException(str(exc)) from None


def _mirroring(settings: Settings) -> str:
    candidate = settings.candidate
    if candidate.url is None:
        return "(none)"
    if candidate.model:
        return f"{candidate.url} as model {candidate.model}"
    return f"{candidate.url} (model: the one its /models lists)"
