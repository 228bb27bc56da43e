"""`shadowtap judge calibrate`: the configured judge's agreement with human labels."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import click

from shadowtap.cli.common import load
from shadowtap.scorers.calibration import Calibration, Estimate


@click.group("judge", context_settings={"help_option_names": ["-h", "--help"]})
def judge_group() -> None:
    """The LLM judge: how far its verdicts can be trusted."""


def _fmt(estimate: Estimate, digits: int = 2) -> str:
    if estimate["value"] is None:
        return f"- (n={estimate['n']})"
    return (
        f"{estimate['value']:.{digits}f} [{estimate['lower']:.{digits}f}, {estimate['upper']:.{digits}f}] "
        f"(n={estimate['n']})"
    )


def _show(record: Calibration, out: Path) -> None:
    click.echo(
        f"judge {record['judge_model']} (prompt {record['prompt_template_hash']}) on {record['judged']} "
        f"labelled pairs from {record['labels_file']}"
    )
    click.echo(f"  agreement      {_fmt(record['agreement'])}   (verdicts that did not flip)")
    click.echo(f"  Cohen's kappa  {_fmt(record['kappa'])}")
    click.echo(f"  flip rate      {_fmt(record['flip_rate'])}   (verdict changed with the order shown)")
    click.echo(
        f"  length bias    {_fmt(record['length_bias'])}   (judge's lean to the longer answer beyond the "
        "human's, -2..2)"
    )
    click.echo("  confusion (rows: human, columns: judge)")
    click.echo("    " + "".join(f"{v:>11}" for v in ("primary", "candidate", "tie")))
    for human, row in record["confusion"].items():
        click.echo(f"    {human:<10}" + "".join(f"{row[v]:>11}" for v in ("primary", "candidate", "tie")))
    click.echo(f"  agreement per segment (floor {record['agreement_floor']:.2f}):")
    for segment, estimate in record["segments"].items():
        below = (
            "  BELOW FLOOR: its judge-decided regressions go to human review"
            if segment in record["below_floor"]
            else ""
        )
        click.echo(f"    {segment:<16}{_fmt(estimate)}{below}")
    for reason, count in record["skipped"].items():
        click.echo(f"  skipped {count} label(s): {reason}", err=True)
    click.echo(f"calibration record: {out}")


@judge_group.command()
@click.option(
    "--labels",
    "labels_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True),
    help="shadowtap.label/v1 records (the review page's labels.jsonl).",
)
@click.option(
    "--pairs",
    "pairs_path",
    type=click.Path(dir_okay=False, exists=True),
    help="The labelled pairs' records (default DATA_DIR/pairs.jsonl).",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    help="Calibration record to write (default sentinel.judge_calibration, DATA_DIR/judge-calibration.json).",
)
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    help="YAML config (the judge: sentinel.judge or scoring.scorers.judge).",
)
def calibrate(
    labels_path: str, pairs_path: str | None, out_path: str | None, config_file: str | None
) -> None:
    """Run the configured judge in both orders on human-labelled pairs; report and record its agreement."""
    from shadowtap.labels import LabelError, read_labels
    from shadowtap.scorers.calibration import calibrate as run_calibration
    from shadowtap.scorers.calibration import family_warnings, pair_index
    from shadowtap.scorers.judge import JudgeScorer
    from shadowtap.sentinel.settings import SentinelConfig
    from shadowtap.sentinel.sources import iter_jsonl

    config = SentinelConfig(load(config_file, {}))
    judge_config = config.judge_config()
    if judge_config is None:
        raise click.ClickException("no judge configured: set sentinel.judge or scoring.scorers.judge")
    try:
        labels = read_labels(labels_path)
    except LabelError as exc:
        raise click.ClickException(str(exc)) from None
    source = Path(pairs_path) if pairs_path else config.data_dir / "pairs.jsonl"
    if not source.exists():
        raise click.ClickException(f"no pair records at {source} (give --pairs FILE)")
    pairs = pair_index([record for _where, record in iter_jsonl(source) if record is not None])
    try:
        judge = JudgeScorer(judge_config, segments=config.segments)
    except ValueError as exc:
        raise click.ClickException(f"judge: {exc}") from None
    labelled = [pairs[label["pair_id"]] for label in labels if label["pair_id"] in pairs]
    sides = Counter(
        (str(p["primary"].get("model")), str(p["candidate"].get("model"))) for p in labelled
    ).most_common(1)
    for warning in family_warnings(
        judge.config.model,
        {"primary": sides[0][0][0], "candidate": sides[0][0][1]} if sides else {},
        judge.config.model_families,
    ):
        click.echo(f"warning: {warning}", err=True)

    async def go() -> Calibration:
        try:
            return await run_calibration(
                judge,
                labels,
                pairs,
                labels_file=str(labels_path),
                prompt_template_hash=judge.template_hash,
                floor=config.sentinel.judge_agreement_floor,
            )
        finally:
            await judge.aclose()

    record = asyncio.run(go())
    out = Path(out_path) if out_path else config.calibration_path
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    _show(record, out)
