"""`shadowtap review`: the blind review page over a data directory's review queue."""

from __future__ import annotations

from pathlib import Path

import click

from shadowtap.cli.common import load, nested
from shadowtap.errors import ConfigError


@click.command("review")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="A data directory (pairs.jsonl, review.jsonl, feedback.jsonl); labels go to its labels.jsonl.",
)
@click.option("--port", type=click.IntRange(0, 65535), help="Port of the page (default 8090).")
@click.option("--host", help="Interface to bind (default 127.0.0.1; any other needs review.token).")
@click.option("--reviewer", help="Your name on the labels (default: review.reviewer, else your login name).")
@click.option(
    "--config", "config_file", metavar="FILE", help="YAML config; SHADOWTAP_* variables override it."
)
def review_command(
    data_dir: Path, port: int | None, host: str | None, reviewer: str | None, config_file: str | None
) -> None:
    """Label pairs blind, A against B, with the keyboard; labels feed `shadowtap judge calibrate`."""
    from shadowtap.review.serve import review_session, serve_review

    settings = load(config_file, nested({"review.port": port, "review.host": host})).review
    try:
        session = review_session(data_dir, settings, reviewer)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(session.queue.reasons().items())) or "none"
    click.echo(f"{len(session.queue.items)} pairs queued ({reasons}); reviewer {session.reviewer}")
    click.echo(f"Review page: http://{settings.host}:{settings.port}/  (Ctrl-C to stop)")
    serve_review(session, settings)
