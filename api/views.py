"""HTML views of the read routes (serving model, batches, drift reports, lineage), for a person in a browser.

Each view is the same URL as its JSON route: the route answers HTML only when the request's ``Accept``
prefers ``text/html`` over ``application/json`` (browsers send ``text/html,...,*/*;q=0.8``); ``curl``,
httpx, requests and Schemathesis send ``*/*`` or ``application/json`` and get the JSON, unchanged. Both
answers carry ``Vary: Accept``. The HTML is rendered from the very dict the JSON route returns (after
the same redactions), every value through :func:`html.escape`; no script, an inline stylesheet (the
"other HTML" CSP of api/headers.py allows inline styles only).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import HTMLResponse

# documents the second representation in OpenAPI (merged into each route's 200 response)
HTML_200: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "JSON, or HTML for a browser"}
}

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:60rem;margin:2rem auto;padding:0 1rem}
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:1.6rem}
table{border-collapse:collapse;background:#fff;width:100%;font-size:.92rem}
th,td{border:1px solid #dde1e8;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#eceff3} td.num{text-align:right;font-variant-numeric:tabular-nums}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;background:#fff;padding:.8rem;
border:1px solid #dde1e8} dt{font-weight:600} dd{margin:0;overflow-wrap:anywhere}
.chain{list-style:none;padding:0} .chain>li{background:#fff;border:1px solid #dde1e8;border-left:4px solid #2d5fa8;
margin:.2rem 0;padding:.6rem 1rem} .chain>li+li::before{content:"\\2193";display:block;color:#5b6475}
.meta{color:#5b6475;font-size:.9rem} .drift{color:#b00020;font-weight:600} .ok{color:#3c9d5d;font-weight:600}
pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:0} a{color:#2d5fa8}
"""


def wants_html(request: Request) -> bool:
    """``Accept`` ranks ``text/html`` above ``application/json`` (a tie, ``*/*`` or no header: JSON)."""
    accept = request.headers.get("accept", "")
    if "text/html" not in accept:
        return False
    q_html = q_json = 0.0
    for part in accept.split(","):
        media, _, params = part.strip().partition(";")
        q = 1.0
        for p in params.split(";"):
            k, _, v = p.strip().partition("=")
            if k == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        media = media.strip().lower()
        if media == "text/html":
            q_html = max(q_html, q)
        elif media in ("application/json", "application/*", "*/*"):
            q_json = max(q_json, q * (1.0 if media == "application/json" else 0.999))
    return q_html > q_json


def vary(response: Response) -> None:
    response.headers["Vary"] = "Accept"


def e(value: Any) -> str:
    """One value as escaped text (None: an em dash; floats to 4 significant digits; dicts/lists as JSON)."""
    if value is None:
        return "\u2014"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return html.escape(f"{value:.4g}")
    if isinstance(value, (dict, list)):
        return "<pre>" + html.escape(json.dumps(value, indent=1, default=str, ensure_ascii=False)) + "</pre>"
    return html.escape(str(value))


def link(href: str, text: Any) -> str:
    return f'<a href="{html.escape(href, quote=True)}">{e(text)}</a>'


def fields(pairs: Iterable[tuple[str, Any]], raw: bool = False) -> str:
    """A definition list; values escaped unless ``raw`` (already-escaped HTML)."""
    return "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{v if raw else e(v)}</dd>" for k, v in pairs) + "</dl>"


def table(headers: list[str], rows: Iterable[list[Any]], raw_cols: tuple[int, ...] = ()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{v if i in raw_cols else e(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def page(title: str, body: str) -> HTMLResponse:
    doc = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body><main>"
        f'<p class="meta"><a href="/">Tweet sentiment</a> · <a href="/model">serving model</a> · '
        f'<a href="/batches">batches</a> · <a href="/reports">drift reports</a> · <a href="/docs">API docs</a></p>'
        f"<h1>{html.escape(title)}</h1>{body}"
        '<p class="meta">The same URL answers JSON to a client that asks for it (<code>Accept: application/json</code>, '
        "or no preference).</p></main></body></html>"
    )
    return HTMLResponse(doc, headers={"Vary": "Accept"})


# ---------------------------------------------------------------- the views
_METRIC_ORDER = ("accuracy", "f1", "precision", "recall", "roc_auc", "log_loss", "brier")


def _metric_key(name: str) -> tuple[int, int, str]:
    """Held-out test figures first (accuracy, f1, ...), then validation, external, the rest alphabetically."""
    prefix_rank = 0 if name.startswith("test_") else 1 if name.startswith("val") else 3 if "external" in name else 2
    base = name.split("_", 1)[1] if prefix_rank in (0, 1) and "_" in name else name
    rank = next((i for i, m in enumerate(_METRIC_ORDER) if base == m or base.startswith(m)), len(_METRIC_ORDER))
    return prefix_rank, rank, name


def model_page(info: Mapping[str, Any], events: list[dict[str, Any]] | None) -> HTMLResponse:
    metrics: dict[str, Any] = info.get("metrics") or {}
    body = fields(
        [
            ("model", info.get("name")),
            ("alias", info.get("alias")),
            ("version", info.get("version")),
            ("run id", info.get("run_id")),
            ("family", info.get("family")),
            ("trained at", info.get("trained_at")),
            ("loaded at", info.get("loaded_at")),
            ("dataset hash", info.get("dataset_hash")),
            ("git commit", info.get("git_commit")),
        ]
    )
    ch = info.get("challenger")
    line = f"champion: {info.get('family') or '?'} v{info.get('version')}" + (
        f"; challenger: {ch['text']}" if ch else ""
    )
    body = f'<p class="models-line" id="models-line">{e(line)}</p>' + body
    body += "<h2>Metrics</h2>" + table(["metric", "value"], ([k, metrics[k]] for k in sorted(metrics, key=_metric_key)))
    if info.get("external"):
        body += "<h2>External evaluation set</h2>" + fields(sorted(info["external"].items()))
    body += "<h2>Champion history</h2>"
    if events is None:
        body += '<p class="meta">The model events could not be read (database unavailable).</p>'
    elif not events:
        body += '<p class="meta">No model events recorded.</p>'
    else:
        body += table(
            ["when", "event", "version", "previous", "reason"],
            (
                [ev.get("created_at"), ev.get("event"), ev.get("version"), ev.get("previous_version"), ev.get("reason")]
                for ev in events
            ),
        )
    return page(f"Serving model {info.get('name')} v{info.get('version')}", body)


def batches_page(rows: list[dict[str, Any]]) -> HTMLResponse:
    if not rows:
        return page("Batches", '<p class="meta">No batches yet.</p>')
    body = table(
        ["batch", "file", "state", "model version", "read", "scored", "rejected", "rows/s", "created", "finished"],
        (
            [
                link(f"/batches/{quote(str(b['id']), safe='')}", b["id"]),
                b.get("input_name") or b.get("input_path"),
                b.get("status"),
                b.get("model_version"),
                b.get("rows_read"),
                b.get("rows_scored"),
                b.get("rows_rejected"),
                b.get("rows_per_second"),
                b.get("created_at"),
                b.get("finished_at"),
            ]
            for b in rows
        ),
        raw_cols=(0,),
    )
    return page("Batches", body)


def batch_page(b: dict[str, Any]) -> HTMLResponse:
    pairs = [
        ("id", b.get("id")),
        ("state", b.get("status")),
        ("file", b.get("input_name") or b.get("input_path")),
        ("format", b.get("input_format")),
        ("model", f"{b.get('model_name') or ''} v{b.get('model_version')}"),
        ("rows read", b.get("rows_read")),
        ("rows scored", b.get("rows_scored")),
        ("rows rejected", b.get("rows_rejected")),
        ("rows per second", b.get("rows_per_second")),
        ("label counts", b.get("label_counts")),
        ("shards", b.get("n_shards")),
        ("created", b.get("created_at")),
        ("finished", b.get("finished_at")),
    ]
    if "output_path" in b:
        pairs.insert(3, ("output", b.get("output_path")))
    body = fields(pairs)
    shards = b.get("shards") or []
    body += "<h2>Shards</h2>" + table(
        ["shard", "state", "rows", "scored", "seconds", "attempts"],
        (
            [
                s.get("shard"),
                s.get("status"),
                s.get("n_rows"),
                s.get("rows_scored"),
                s.get("seconds"),
                s.get("attempts"),
            ]
            for s in shards
        ),
    )
    rejects = b.get("rejects") or []
    body += f"<h2>Rejected rows ({len(rejects)} shown)</h2>"
    if rejects:
        body += table(["line", "reason"], ([r.get("line"), r.get("reason")] for r in rejects))
    if b.get("redacted"):
        body += '<p class="meta">Server paths are shown to <code>admin</code> keys only.</p>'
    return page(f"Batch {b.get('id')}", body)


def reports_page(rows: list[dict[str, Any]]) -> HTMLResponse:
    if not rows:
        return page("Drift reports", '<p class="meta">No drift reports yet.</p>')

    def status(r: dict[str, Any]) -> str:
        s = str(r.get("status"))
        return f'<span class="{"drift" if s == "drift" else "ok" if s == "ok" else ""}">{e(s)}</span>'

    body = '<p><a href="/reports/history/html">Drift history (charts)</a></p>' + table(
        ["report", "period", "status", "verdict", "rows", "feedback", "reported wrong", "live accuracy ≤"],
        (
            [
                link(f"/reports/{quote(str(r['id']), safe='')}/html", r.get("created_at") or r["id"]),
                f"{r.get('period_start')} \u2192 {r.get('period_end')}",
                status(r),
                r.get("verdict"),
                r.get("n_current"),
                r.get("n_feedback"),
                r.get("n_reported_wrong"),
                r.get("live_accuracy_upper_bound"),
            ]
            for r in rows
        ),
        raw_cols=(0, 2),
    )
    return page("Drift reports", body)


def lineage_page(out: dict[str, Any]) -> HTMLResponse:
    pred = out.get("prediction") or {}
    model = out.get("model") or {}
    steps: list[str] = []
    steps.append("<h2>Prediction</h2>" + fields(sorted(pred.items())))
    steps.append(
        "<h2>Model version</h2>"
        + fields(
            [(k, model[k]) for k in ("name", "version", "run_id") if k in model]
            + [(k, v) for k, v in sorted(model.items()) if k not in ("name", "version", "run_id", "metrics", "run")]
        )
    )
    run = model.get("run") if isinstance(model.get("run"), dict) else None
    metrics = model.get("metrics") if isinstance(model.get("metrics"), dict) else (run or {}).get("metrics")
    steps.append(
        "<h2>Training run</h2>"
        + fields([("run id", model.get("run_id")), ("git commit", out.get("git_commit"))])
        + (table(["metric", "value"], ([k, metrics[k]] for k in sorted(metrics, key=_metric_key))) if metrics else "")
    )
    snap = out.get("snapshot")
    chain = out.get("snapshot_chain") or []
    snap_html = "<h2>Dataset snapshot</h2>" + (fields(sorted(snap.items())) if snap else '<p class="meta">none</p>')
    if chain:
        snap_html += "<h3>Ancestors</h3>" + "".join(fields(sorted(c.items())) for c in chain)
    steps.append(snap_html)
    retr = out.get("retraining")
    steps.append("<h2>Retraining</h2>" + (fields(sorted(retr.items())) if retr else '<p class="meta">none</p>'))
    fb = out.get("feedback")
    steps.append("<h2>Feedback reports</h2>" + e(fb))
    body = f"<p>{e(out.get('summary'))}</p>"
    if out.get("redacted"):
        body += '<p class="meta">Redacted: texts, comments, reports, tags and paths only with an <code>admin</code> key.</p>'
    body += '<ol class="chain">' + "".join(f"<li>{s}</li>" for s in steps) + "</ol>"
    if out.get("errors"):
        body += "<h2>Errors</h2>" + e(out["errors"])
    return page(f"Lineage of prediction {pred.get('id', '')}", body)
