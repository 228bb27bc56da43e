"""The `shadowtap demo` and `shadowtap report` commands."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console


@click.command("demo")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("shadowtap-demo"),
    show_default=True,
    help="Where the pairs, scores and review queue go (a previous demo's records there are replaced).",
)
@click.option("--requests", "requests_", type=click.IntRange(1, 100_000), default=300, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the workload and its faults.")
@click.option(
    "--concurrency", type=click.IntRange(1, 256), default=8, show_default=True, help="Concurrent clients."
)
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Proxy port (default: any free).")
@click.option(
    "--keep-running", is_flag=True, help="Leave the proxy and its /metrics up after the report, until Ctrl-C."
)
@click.option(
    "--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write the HTML report."
)
def demo_command(
    data_dir: Path,
    requests_: int,
    seed: int,
    concurrency: int,
    port: int,
    keep_running: bool,
    html_path: Path | None,
) -> None:
    """Run the whole pipeline on this machine with SIMULATED models and print what it finds."""
    started = time.perf_counter()
    from shadowtap.demo import DemoOptions, run_demo
    from shadowtap.errors import DemoError

    options = DemoOptions(
        data_dir=data_dir,
        requests=requests_,
        seed=seed,
        concurrency=concurrency,
        port=port,
        keep_running=keep_running,
        html=html_path,
    )
    try:
        run_demo(options, Console(), started=started)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise click.Abort() from None


@click.command("report")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="A data directory holding pairs.jsonl and scores.jsonl (and review.jsonl).",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a self-contained HTML page (tables and plots) to this file.",
)
def report_command(data_dir: Path, html_path: Path | None) -> None:
    """Report what the candidate does differently from the primary in a recorded run."""
    from shadowtap.report import build_report, print_report, write_html

    if not (data_dir / "pairs.jsonl").exists():
        raise click.ClickException(f"{data_dir} has no pairs.jsonl: not a shadowtap data directory")
    report = build_report(data_dir)
    console = Console()
    print_report(report, console)
    if html_path is not None:
        write_html(report, html_path)
        console.print(f"HTML report written to {html_path}")
