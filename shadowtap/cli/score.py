"""`shadowtap score`: a Kafka consumer-group worker, or a pairs file scored offline."""

from __future__ import annotations

from pathlib import Path

import click

from shadowtap.cli.common import load
from shadowtap.config import Settings
from shadowtap.records import jsonl_lines


@click.command()
@click.option("--config", "config_file", metavar="FILE", help="YAML config (scorers, Kafka).")
@click.option(
    "--input",
    "input_path",
    type=click.Path(dir_okay=False, exists=True),
    help="Score this pairs.jsonl offline.",
)
@click.option(
    "--output",
    "output_path",
    type=click.Path(dir_okay=False),
    help="Where the score records go (with --input).",
)
@click.option(
    "--review",
    "review_path",
    type=click.Path(dir_okay=False),
    help="Review queue file (default: review.jsonl beside --output).",
)
@click.option("--metrics-port", type=int, help="Serve the worker's /metrics on this port (Kafka mode).")
@click.option("--worker-id", help="Stable id of this worker slot (Kafka mode; default host-pid).")
def score(
    config_file: str | None,
    input_path: str | None,
    output_path: str | None,
    review_path: str | None,
    metrics_port: int | None,
    worker_id: str | None,
) -> None:
    """Score pairs: from Kafka as a consumer-group worker, or a JSONL file offline with --input/--output."""
    settings = load(config_file, {})
    if input_path is not None:
        if output_path is None:
            raise click.UsageError("--input needs --output FILE for the score records")
        _score_offline(
            settings, Path(input_path), Path(output_path), Path(review_path) if review_path else None
        )
        return
    if config_file is None and not settings.sink.kafka.bootstrap_servers:
        raise click.UsageError(
            "give --input/--output to score a file, or --config with sink.kafka.bootstrap_servers"
        )
    if not settings.sink.kafka.bootstrap_servers:
        raise click.ClickException(
            "sink.kafka.bootstrap_servers: not set; the worker consumes pairs from Kafka"
        )
    from prometheus_client import CollectorRegistry, start_http_server

    from shadowtap.scorers.worker import KafkaWorker

    registry = CollectorRegistry()
    port = metrics_port if metrics_port is not None else settings.server.metrics_port
    if port is not None:
        start_http_server(port, addr=settings.server.metrics_host or settings.server.host, registry=registry)
    try:
        worker = KafkaWorker(settings, registry, worker_id=worker_id)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"scoring {settings.sink.kafka.topic} -> {settings.sink.kafka.scores_topic} as group "
        f"{settings.sink.kafka.group_id} (worker {worker.worker_id})",
        err=True,
    )
    worker.run()


def _score_offline(settings: Settings, input_path: Path, output_path: Path, review_path: Path | None) -> None:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from shadowtap.scorers.worker import score_file

    console = Console(stderr=True)
    review_path = review_path or output_path.with_name("review.jsonl")
    with input_path.open("rb") as lines:
        total = sum(1 for _ in jsonl_lines(lines))
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("scoring pairs", total=total)
            summary = score_file(
                settings, input_path, output_path, review_path, progress=lambda n: progress.advance(task, n)
            )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    for number, why in summary["invalid"][:20]:
        console.print(f"[yellow]line {number} skipped:[/] {why}")
    table = Table(title=f"{summary['pairs']} pairs scored -> {output_path}")
    for col in ("scorer", "side", "outcome", "count"):
        table.add_column(col, justify="right" if col == "count" else "left")
    for (scorer, side, outcome), count in sorted(summary["outcomes"].items()):
        table.add_row(scorer, side, outcome, str(count))
    console.print(table)
    if summary["invalid"]:
        console.print(f"[yellow]{len(summary['invalid'])} lines were not valid pair records[/]")
    if summary["duplicates"]:
        console.print(f"{summary['duplicates']} duplicate pair ids scored once")
    for scorer, n in summary["scorer_errors"].items():
        console.print(f"[red]{scorer} failed on {n} pairs[/] (see the log)")
    console.print(f"review queue: {summary['review']} items -> {review_path}")
