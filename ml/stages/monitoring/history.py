"""Drift history: drift share, the label-free (CBPE) accuracy estimate and the report rate (predictions
reported wrong per compared prediction) of the stored reports across nights, one line per model
version, drawn server-side with matplotlib as inline SVG (no script: the plugin's pages allow none).

It reads ``drift_reports`` only (``ml.stages.monitoring.archive.history``), so every report ever
stored is in it: no state of its own, nothing to backfill. Each line is an SVG group with the id
``<series>-v<version>`` holding one marker (``<use>``) per report; each chart also has its numbers
as a table (what a screen reader or a test reads).

Evidently's own Workspace UI (``evidently ui``: a project per model, a snapshot per night, dashboard
panels) was the alternative. It is a separate web server with its own (optional, token-only) access
control: it cannot sit behind the Airflow login the plugin's views use without a proxy doing the
login, and its pages run script in the origin they are served from. The plugin page reads the same
numbers straight from ``drift_reports`` and runs no script.
"""

from __future__ import annotations

import html
import io
from datetime import datetime
from typing import Any

#: (key in the history rows, title, y-axis label, as a percentage)
SERIES: tuple[tuple[str, str, str], ...] = (
    ("drifted_share", "Drift share", "share of monitored columns drifted"),
    ("estimated_accuracy", "Estimated accuracy (CBPE, label-free)", "estimated accuracy"),
    ("report_rate", "Report rate", "reported wrong per prediction"),
)


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _when(row: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(row["period_end"]))


def by_version(rows: list[dict[str, Any]], key: str) -> dict[int, list[tuple[datetime, float, str]]]:
    """Per compared version, the (period end, value, report id) points of one series, reports without a
    value (an empty night) left out."""
    out: dict[int, list[tuple[datetime, float, str]]] = {}
    for r in rows:
        v, version = r.get(key), r.get("version")
        if v is None or version is None:
            continue
        out.setdefault(int(version), []).append((_when(r), float(v), str(r["id"])))
    return out


def chart_svg(rows: list[dict[str, Any]], key: str, title: str, ylabel: str) -> str:
    """One series as an inline ``<svg>`` element (text kept as text, ids salted per chart)."""
    import matplotlib
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    series = by_version(rows, key)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": key, "font.size": 9}):
        fig = Figure(figsize=(7.2, 2.6), dpi=100)
        ax = fig.add_subplot()
        for version, points in sorted(series.items()):
            xs = date2num([p[0] for p in points])
            ys = [p[1] for p in points]
            ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.4, label=f"v{version}", gid=f"{key}-v{version}")
        fig.suptitle(title, visible=False)  # the page's heading says it; kept in the SVG's text for readers
        ax.set_ylabel(ylabel)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0 if key == "drifted_share" else 1))
        ax.grid(True, color="#e4e7ec", linewidth=0.6)
        if series:
            locator = AutoDateLocator()
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
            ax.legend(title="version", loc="best", fontsize=8, title_fontsize=8)
        else:
            ax.text(0.5, 0.5, "no report with this figure yet", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def _fmt(key: str, v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.0%}" if key == "drifted_share" else f"{v:.2%}"


def page(
    rows: list[dict[str, Any]],
    model_name: str,
    report_href: str = "reports/{id}/html",
    list_href: str = "reports",
    json_href: str = "history.json",
) -> str:
    """The history page: three charts, each with its numbers, and the reports they come from (links
    relative to where the page is served: the plugin's ``history``, the API's ``/reports/history/html``)."""
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Drift history</title><style>"
        "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d2330;background:#fff}"
        "h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.05rem;margin:1.2rem 0 .3rem}"
        "table{border-collapse:collapse}td,th{border:1px solid #dde1e8;padding:.2rem .5rem;font-size:.85rem;"
        "text-align:left}th{background:#f3f5f8}.muted{color:#5b6475}figure{margin:.2rem 0}"
        "svg{max-width:100%;height:auto}details{margin:.2rem 0 .8rem}</style></head><body>",
        f"<h1>Drift history <small class='muted'>({_e(model_name)})</small></h1>",
        f"<p class='muted'>{len(rows)} stored drift reports, oldest first, one line per model version "
        "compared (the version serving at each period's end). Report rate: predictions reported wrong per "
        "compared prediction. "
        f"<a href='{_e(list_href)}'>Report list</a> · <a href='{_e(json_href)}'>JSON</a></p>",
    ]
    for key, title, ylabel in SERIES:
        series = by_version(rows, key)
        n = sum(len(p) for p in series.values())
        out.append(
            f"<h2>{_e(title)}</h2><figure id='chart-{_e(key)}' data-points='{n}'>"
            + chart_svg(rows, key, title, ylabel)
            + "</figure><details><summary>numbers</summary><table class='points'><tr><th>period end</th>"
            "<th>version</th><th>value</th><th>report</th></tr>"
        )
        for version, points in sorted(series.items()):
            for when, value, rid in points:
                out.append(
                    f"<tr data-series='{_e(key)}' data-version='{version}'><td>{_e(when.isoformat()[:16])}</td>"
                    f"<td>v{version}</td><td>{_e(_fmt(key, value))}</td>"
                    f"<td><a href='{_e(report_href.format(id=rid))}' target='_blank'>{_e(rid)}</a></td></tr>"
                )
        out.append("</table></details>")
    out.append("</body></html>")
    return "".join(out)
