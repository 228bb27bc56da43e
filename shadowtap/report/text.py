"""The report in the terminal: the view's sentences and tables as rich text."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shadowtap.report.model import Report
from shadowtap.report.view import Cell, ReportView, Tone, VerdictCell, build_view
from shadowtap.report.view import Table as TableView

__all__ = ["print_report", "print_view"]

TONE_STYLES: dict[Tone, str] = {
    "regression": "bold red",
    "overall_regression": "red",
    "caution": "yellow",
    "good": "green",
    "all_clear": "bold green",
}
VERDICT_STYLES = {"worse": "bold red", "better": "green", None: "dim"}


def _cell(cell: Cell) -> str | Text:
    if isinstance(cell, VerdictCell):
        return Text(cell.text, style=VERDICT_STYLES[cell.verdict])
    return cell.text


def _table(view: TableView) -> Table:
    table = Table(
        title=view.title, title_justify="left", title_style="bold", header_style="bold", box=box.SIMPLE_HEAD
    )
    for i, column in enumerate(view.columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in view.rows:
        table.add_row(*(_cell(c) for c in row.cells), style="bold" if row.total else None)
    return table


def print_view(view: ReportView, console: Console) -> None:
    console.rule(f"[bold]shadowtap report[/]: {view.data_dir}")
    if view.simulated:
        console.print(
            "[black on yellow] SIMULATED [/] run recorded by [bold]shadowtap demo[/]: the primary, the "
            "candidate and the judge were scripted stand-ins, not real models."
        )
    console.print(view.headline)
    console.print("\n[bold underline]What changed[/]")
    for line in view.summary:
        style = TONE_STYLES[line.tone]
        console.print(Text("• ", style=style) + Text(line.sentence, style=style))
    console.print()
    for table in view.tables:
        console.print(_table(table))
    console.print("[bold]Where the data is[/]")
    for place in view.where:
        console.print(f"  {place}")


def print_report(report: Report, console: Console) -> None:
    """Print the report as rich tables: what changed, the tables, and where the data is."""
    print_view(build_view(report), console)
