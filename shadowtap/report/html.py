"""The report as one self-contained HTML page: inline CSS, plots as inline PNG, no scripts."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from rich.text import Text

from shadowtap.report.model import SIDES, Report, SegmentStats, format_ms, percentile
from shadowtap.report.text import (
    ROWS,
    TABLES,
    models_text,
    span_text,
    summary_lines,
    table_title,
    where_lines,
)

# --------------------------------------------------------------------------------------------------
# HTML

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


def _cell(value: Any) -> str:
    if isinstance(value, Text):
        css = "regression" if value.plain == "REGRESSION" else "better" if value.plain == "better" else ""
        return f'<td class="{css}">{html.escape(value.plain)}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def _html_table(title: str, columns: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)

    def css(row: list[Any]) -> str:
        if any(isinstance(v, Text) and v.plain == "REGRESSION" for v in row):
            return "flagged"
        return "all" if row[0] == "all" else ""

    body = "".join(f'<tr class="{css(row)}">{"".join(_cell(v) for v in row)}</tr>' for row in rows)
    return f"<h2>{html.escape(title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plots(report: Report) -> list[tuple[str, str]]:
    """(caption, base64 PNG) for each plot the data allows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"primary": "#4c72b0", "candidate": "#dd8452"}
    plots: list[tuple[str, str]] = []
    judged = [s for s in report.segments if s.judged]
    if judged:
        fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.55 * len(judged)))
        left = [0.0] * len(judged)
        names = [s.segment for s in judged]
        for outcome, label, colour in (
            ("candidate_win", "candidate wins", "#55a868"),
            ("tie", "tie", "#c8ccd4"),
            ("primary_win", "primary wins", "#c44e52"),
        ):
            shares = [s.judge[outcome] / s.judged for s in judged]
            ax.barh(names, shares, left=left, color=colour, label=label)
            left = [a + b for a, b in zip(left, shares, strict=True)]
        ax.set_xlim(0, 1)
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.invert_yaxis()
        ax.legend(ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
        ax.set_title("Judge verdicts by segment")
        plots.append(("Judge verdicts by segment (share of judged pairs)", _png(fig)))
        plt.close(fig)
    for title, rate in (
        ("Refusal rate", SegmentStats.refusal_rate),
        ("Format pass rate", SegmentStats.format_rate),
    ):
        shown = [s for s in report.segments if rate(s, "primary").n or rate(s, "candidate").n]
        if not shown:
            continue
        fig, ax = plt.subplots(figsize=(min(6.4, 1.4 + 1.3 * len(shown)), 3.4))
        width = 0.38
        for offset, side in ((-width / 2, "primary"), (width / 2, "candidate")):
            rates = [rate(s, side) for s in shown]
            values = [r.value or 0.0 for r in rates]
            errors = [
                [max(0.0, v - (r.interval or (v, v))[0]) for v, r in zip(values, rates, strict=True)],
                [max(0.0, (r.interval or (v, v))[1] - v) for v, r in zip(values, rates, strict=True)],
            ]
            xs = [i + offset for i in range(len(shown))]
            ax.bar(xs, values, width, yerr=errors, capsize=3, color=colours[side], label=side)
        ax.set_xticks(range(len(shown)), [s.segment for s in shown])
        ax.set_xlim(-0.7, len(shown) - 0.3)
        ax.set_ylim(0, 1.05)
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.legend(frameon=False, fontsize=8)
        ax.set_title(title)
        plots.append((f"{title} by side and segment; the whiskers are 95% Wilson intervals", _png(fig)))
        plt.close(fig)
    panels = [
        (label, values)
        for label, values in (
            ("latency", report.overall.latency_ms),
            ("TTFT (streamed)", report.overall.ttft_ms),
        )
        if values["primary"] or values["candidate"]
    ]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels) / 1.4, 3.4), squeeze=False)
        for ax, (label, values) in zip(axes[0], panels, strict=True):
            top = max(percentile(values["primary"] + values["candidate"], 99) or 1.0, 1.0)
            bins = [top * i / 30 for i in range(31)]
            for side in SIDES:
                if values[side]:
                    ax.hist(
                        [min(v, top) for v in values[side]],
                        bins=bins,
                        alpha=0.6,
                        color=colours[side],
                        label=f"{side} (p50 {format_ms(percentile(values[side], 50))})",
                    )
            ax.set_xlabel(f"{label}, ms")
            ax.set_ylabel("requests")
            ax.legend(frameon=False, fontsize=8)
            ax.set_title(f"{label} distribution")
        plots.append(("Latency distributions, primary vs candidate (all segments)", _png(fig)))
        plt.close(fig)
    return plots


def render_html(report: Report) -> str:
    """One self-contained page: inline CSS, plots as inline PNG, no scripts, nothing fetched."""
    items = []
    for sentence, style in summary_lines(report):
        css = (
            "regression"
            if style == "bold red"
            else "overall"
            if style in ("red", "yellow")
            else "good"
            if "green" in style
            else ""
        )
        items.append(f'<li class="{css}">{html.escape(sentence)}</li>')
    sections = []
    for key, (_, columns) in TABLES.items():
        rows = ROWS[key](report)
        if rows:
            sections.append(_html_table(table_title(report, key), columns, rows))
    plots = "".join(
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for caption, data in _plots(report)
    )
    simulated = (
        '<p><span class="sim">SIMULATED</span> run recorded by <code>shadowtap demo</code>: the primary, the '
        "candidate and the judge were scripted stand-ins, not real models.</p>"
        if report.simulated
        else ""
    )
    span = span_text(report)
    meta = (
        f"{report.lines['pairs']} pairs · primary {models_text(report.models['primary'])} · candidate "
        f"{models_text(report.models['candidate'])} · judge {models_text(report.models['judge'])}{span}"
    )
    where = "".join(f"<li><code>{html.escape(line)}</code></li>" for line in where_lines(report))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>shadowtap report: {html.escape(str(report.data_dir))}</title><style>{_CSS}</style></head>"
        f'<body><h1>shadowtap report</h1><p class="meta">{html.escape(str(report.data_dir))} · '
        f'{html.escape(meta)}</p>{simulated}<h2>What changed</h2><ul class="changes">{"".join(items)}</ul>'
        f'<div class="plots">{plots}</div>{"".join(sections)}<h2>Where the data is</h2><ul>{where}</ul>'
        "</body></html>\n"
    )


def write_html(report: Report, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report), encoding="utf-8")
    return path
