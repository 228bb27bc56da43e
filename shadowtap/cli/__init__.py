"""The `shadowtap` command line (DESIGN.md: serve, score, sentinel, judge, review, report, demo).

Each subcommand lives in its own module; this one holds the group and registers them.
"""

from __future__ import annotations

import logging
import sys

import click


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


def _register_subcommands() -> None:
    from shadowtap.cli.demo import demo_command, report_command
    from shadowtap.cli.judge import judge_group
    from shadowtap.cli.review import review_command
    from shadowtap.cli.score import score
    from shadowtap.cli.serve import serve
    from shadowtap.sentinel.cli import sentinel

    for command in (serve, score, sentinel, judge_group, demo_command, report_command, review_command):
        main.add_command(command)


_register_subcommands()

__all__ = ["main"]
