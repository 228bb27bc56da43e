"""The report as one self-contained HTML page: inline CSS, plots as inline PNG, no scripts.

Renders a `view.ReportView`; the plots are drawn with matplotlib, imported only when a page is written.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING

from shadowtap.records import SIDES
from shadowtap.report.model import Report
from shadowtap.report.numbers import format_ms, percentile
from shadowtap.report.view import (
    Cell,
    Distribution,
    JudgeShares,
    RateChart,
    ReportView,
    Row,
    Table,
    Tone,
    VerdictCell,
    build_view,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["render_html", "write_html"]

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;max-width:1180px;
color:#1d2330;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde2ea;
padding-bottom:.3rem}
.meta{color:#5a6478;font-size:.9rem}.sim{background:#ffe27a;color:#1d2330;font-weight:700;padding:.1rem .4rem;
border-radius:3px}
ul.changes{list-style:none;padding:0}ul.changes li{padding:.45rem .7rem;margin:.3rem 0;border-radius:4px;
border-left:4px solid #9aa3b2;background:#f4f6f9}
ul.changes li.regression{border-left-color:#c62828;background:#fdecea;font-weight:600}
ul.changes li.overall{border-left-color:#e0a800;background:#fff7e0}
ul.changes li.good{border-left-color:#2e7d32;background:#edf7ee}
table{border-collapse:collapse;margin:.6rem 0 1rem;font-size:.88rem;width:100%}
th,td{border:1px solid #dde2ea;padding:.35rem .55rem;text-align:right;white-space:nowrap}
th{background:#f0f2f6}td:first-child,th:first-child{text-align:left}
tr.all td{font-weight:700;background:#fafbfc}tr.flagged td{background:#fdecea}td.regression{color:#c62828;font-weight:700}
td.better{color:#2e7d32}.plots{display:flex;flex-wrap:wrap;gap:1rem}
.plots figure{margin:0;flex:1 1 540px}.plots img{max-width:100%;height:auto;border:1px solid #eef0f4}
figcaption{font-size:.85rem;color:#5a6478}code{background:#f0f2f6;padding:.05rem .3rem;border-radius:3px}
"""

TONE_CLASSES: dict[Tone, str] = {
    "regression": "regression",
    "overall_regression": "overall",
    "caution": "overall",
    "good": "good",
    "all_clear": "good",
}
VERDICT_CLASSES = {"worse": "regression", "better": "better", None: ""}
COLOURS = {"primary": "#4c72b0", "candidate": "#dd8452"}
JUDGE_BARS = (
    ("candidate_win", "candidate wins", "#55a868"),
    ("tie", "tie", "#c8ccd4"),
    ("primary_win", "primary wins", "#c44e52"),
)


def _cell(cell: Cell) -> str:
    if isinstance(cell, VerdictCell):
        return f'<td class="{VERDICT_CLASSES[cell.verdict]}">{html.escape(cell.text)}</td>'
    return f"<td>{html.escape(cell.text)}</td>"


def _row_class(row: Row) -> str:
    if row.flagged:
        return "flagged"
    return "all" if row.total else ""


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join(
        f'<tr class="{_row_class(row)}">{"".join(_cell(c) for c in row.cells)}</tr>' for row in table.rows
    )
    return f"<h2>{html.escape(table.title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --------------------------------------------------------------------------------------------------
# Plots


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _judge_plot(judged: tuple[JudgeShares, ...]) -> tuple[str, str]:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.55 * len(judged)))
    left = [0.0] * len(judged)
    names = [s.segment for s in judged]
    for outcome, label, colour in JUDGE_BARS:
        shares = [s.shares[outcome] for s in judged]
        ax.barh(names, shares, left=left, color=colour, label=label)
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.invert_yaxis()
    ax.legend(ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    ax.set_title("Judge verdicts by segment")
    plot = ("Judge verdicts by segment (share of judged pairs)", _png(fig))
    plt.close(fig)
    return plot


def _rate_plot(chart: RateChart) -> tuple[str, str]:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    count = len(chart.segments)
    fig, ax = plt.subplots(figsize=(min(6.4, 1.4 + 1.3 * count), 3.4))
    width = 0.38
    for offset, side in zip((-width / 2, width / 2), SIDES, strict=True):
        rates = chart.rates[side]
        values = [r.value or 0.0 for r in rates]
        errors = [
            [max(0.0, v - (r.interval or (v, v))[0]) for v, r in zip(values, rates, strict=True)],
            [max(0.0, (r.interval or (v, v))[1] - v) for v, r in zip(values, rates, strict=True)],
        ]
        xs = [i + offset for i in range(count)]
        ax.bar(xs, values, width, yerr=errors, capsize=3, color=COLOURS[side], label=side)
    # More names than fit side by side are slanted, so that long ones do not run into each other.
    slanted = count > 4
    ax.set_xticks(
        range(count), list(chart.segments), rotation=20 if slanted else 0, ha="right" if slanted else "center"
    )
    ax.set_xlim(-0.7, count - 0.3)
    ax.set_ylim(0, 1.05)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(chart.title)
    plot = (f"{chart.title} by side and segment; the whiskers are 95% Wilson intervals", _png(fig))
    plt.close(fig)
    return plot


def _latency_plot(panels: tuple[Distribution, ...]) -> tuple[str, str]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels) / 1.4, 3.4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        values = panel.values
        top = max(percentile(values["primary"] + values["candidate"], 99) or 1.0, 1.0)
        bins = [top * i / 30 for i in range(31)]
        for side in SIDES:
            if values[side]:
                ax.hist(
                    [min(v, top) for v in values[side]],
                    bins=bins,
                    alpha=0.6,
                    color=COLOURS[side],
                    label=f"{side} (p50 {format_ms(percentile(values[side], 50))})",
                )
        ax.set_xlabel(f"{panel.label}, ms")
        ax.set_ylabel("requests")
        ax.legend(frameon=False, fontsize=8)
        ax.set_title(f"{panel.label} distribution")
    plot = ("Latency distributions, primary vs candidate (all segments)", _png(fig))
    plt.close(fig)
    return plot


def _plots(view: ReportView) -> list[tuple[str, str]]:
    """(caption, base64 PNG) for each plot the data allows."""
    import matplotlib

    matplotlib.use("Agg")
    plots: list[tuple[str, str]] = []
    if view.judge_shares:
        plots.append(_judge_plot(view.judge_shares))
    plots.extend(_rate_plot(chart) for chart in view.rate_charts)
    if view.distributions:
        plots.append(_latency_plot(view.distributions))
    return plots


# --------------------------------------------------------------------------------------------------
# The page


def render_html(view: ReportView) -> str:
    """One self-contained page: inline CSS, plots as inline PNG, no scripts, nothing fetched."""
    items = "".join(
        f'<li class="{TONE_CLASSES[line.tone]}">{html.escape(line.sentence)}</li>' for line in view.summary
    )
    sections = "".join(_html_table(table) for table in view.tables)
    plots = "".join(
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for caption, data in _plots(view)
    )
    simulated = (
        '<p><span class="sim">SIMULATED</span> run recorded by <code>shadowtap demo</code>: the primary, the '
        "candidate and the judge were scripted stand-ins, not real models.</p>"
        if view.simulated
        else ""
    )
    where = "".join(f"<li><code>{html.escape(line)}</code></li>" for line in view.where)
    data_dir = html.escape(view.data_dir)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>shadowtap report: {data_dir}</title><style>{_CSS}</style></head>"
        f'<body><h1>shadowtap report</h1><p class="meta">{data_dir} · '
        f'{html.escape(view.headline)}</p>{simulated}<h2>What changed</h2><ul class="changes">{items}</ul>'
        f'<div class="plots">{plots}</div>{sections}<h2>Where the data is</h2><ul>{where}</ul>'
        "</body></html>\n"
    )


def write_html(report: Report, path: str | Path) -> Path:
    """Write the report as one self-contained HTML page to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(build_view(report)), encoding="utf-8")
    return path
