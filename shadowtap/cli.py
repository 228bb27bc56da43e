"""The `shadowtap` command line (DESIGN.md: serve, score, sentinel, demo, report)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from shadowtap.config import ConfigError, Settings, load_settings


def _load(config: str | None, overrides: dict[str, Any]) -> Settings:
    try:
        return load_settings(config, overrides=overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _nested(pairs: dict[str, Any]) -> dict[str, Any]:
    """{"primary.url": x} -> {"primary": {"url": x}}, skipping flags that were not given."""
    tree: dict[str, Any] = {}
    for dotted, value in pairs.items():
        if value is None:
            continue
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """shadowtap: measure a candidate model on real traffic, with no user impact."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.WARNING)


@main.command()
@click.option(
    "--primary",
    metavar="URL",
    help="Base URL of the production endpoint, as the OpenAI SDK's base_url (http://host:8000/v1).",
)
@click.option(
    "--candidate", metavar="URL", help="Base URL of the candidate endpoint (e.g. vLLM's http://vllm:8000/v1)."
)
@click.option(
    "--candidate-model", metavar="NAME", help="Model name sent to the candidate (default: the client's)."
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
    """Run the proxy in front of PRIMARY, mirroring sampled requests to CANDIDATE."""
    settings = _load(
        config_file,
        _nested(
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
    from shadowtap.server import serve as run

    sink = settings.sink.resolved_kind
    where = (
        f"{settings.sink.data_dir}/pairs.jsonl"
        if sink == "jsonl"
        else f"Kafka topic {settings.sink.kafka.topic}"
    )
    click.echo(
        f"shadowtap proxy on http://{settings.server.host}:{settings.server.port}/v1 -> primary {settings.primary.url}; "
        f"mirroring to {settings.candidate.url or '(none)'}; pairs -> {where}",
        err=True,
    )
    run(settings)


if __name__ == "__main__":
    main()
