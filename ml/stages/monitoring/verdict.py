"""The verdict block: what the platform concluded from a drift report, at the top of its saved HTML.

Period, the champion version compared (and the predictions of other versions left out), rows, drift
share and drifted features, the label-free (CBPE) accuracy estimate with its 95% interval, the bound
from predictions reported wrong, and what the platform did (nothing / alert / retraining). Plain
server-made HTML: every value goes through ``html.escape``, styles are inline (Evidently's page is
served with ``style-src 'unsafe-inline'``), no script. The block sits between two comments
(:data:`START`, :data:`END`) so that :func:`replace_block` can rewrite it once the DAG's later tasks
have decided on the alert and the retraining (:func:`ml.stages.monitoring.archive.record_action`).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from ml.stages.monitoring.wording import SIGNAL_NAMES, accuracy_statement

START = "<!-- sentiment-verdict:start -->"
END = "<!-- sentiment-verdict:end -->"

_COLOURS = {"drift": ("#b00020", "#fdecee"), "ok": ("#2b7a3d", "#eaf6ec"), "empty": ("#5b6475", "#f3f5f8")}
_HEADS = {"drift": "DRIFT", "ok": "NO DRIFT", "empty": "EMPTY"}
_TD = "padding:.3rem .7rem;border-top:1px solid #dde1e8;vertical-align:top;text-align:left"


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x * 100:.{digits}f}%"


def compared_columns(summary: dict[str, Any]) -> list[str]:
    """The monitored columns whose drift test fired."""
    m = summary.get("metrics") or {}
    out = []
    for key, col in (("prediction_label", "label"), ("probability", "p_positive")):
        if (m.get(key) or {}).get("detected"):
            out.append(col)
    for name, c in ((m.get("text_descriptors") or {}).get("columns") or {}).items():
        if c.get("detected"):
            out.append(name)
    if (m.get("raw_text") or {}).get("detected"):
        out.append("text")
    return out


def action_text(summary: dict[str, Any]) -> str:
    """What the platform did about the report, in words."""
    action = summary.get("action")
    if action and action.get("text"):
        return str(action["text"])
    if summary.get("airflow_run_id"):
        return (
            "pending: the monitoring DAG's next tasks raise the drift alert (on a drift verdict) and check the "
            "retraining threshold; this line is rewritten when they have run"
        )
    return "nothing: built outside the monitoring DAG (ml monitor), which neither alerts nor retrains"


def rows_text(summary: dict[str, Any]) -> str:
    cur = summary.get("current") or {}
    version = summary.get("compared_version", summary.get("reference_version"))
    total = int(cur.get("rows_in_period") or 0)
    if not total:
        return "no predictions in this period"
    of_version = int(cur.get("rows_of_version", total) or 0)
    text = f"{int(cur.get('rows') or 0):,} of v{version}'s {of_version:,} predictions compared"
    if cur.get("sampled"):
        text += f" (a fixed random sample, at most {int(cur.get('max_rows') or 0):,})"
    others = cur.get("not_compared") or {}
    if others:
        left = ", ".join(f"v{v}: {int(n):,}" for v, n in sorted(others.items(), key=lambda kv: int(kv[0])))
        text += (
            f"; {total:,} predictions in the period, not compared: {left} "
            f"(served by another version than v{version}, which served at the period's end)"
        )
    return text


def estimate_text(summary: dict[str, Any]) -> str:
    est = summary.get("estimate") or {}
    acc = est.get("estimated_accuracy")
    if acc is None:
        return "not available: " + str(est.get("status") or "not computed")
    half = 1.96 * float(est.get("standard_error") or 0.0)
    text = (
        f"{_pct(acc)} (95% interval {_pct(max(0.0, acc - half))} to {_pct(min(1.0, acc + half))}) "
        f"over {int(est.get('rows') or 0):,} predictions"
    )
    fb = summary.get("feedback") or {}
    if fb.get("training_accuracy") is not None:
        text += f"; held-out accuracy at training {_pct(fb['training_accuracy'])}"
    return text


def drift_text(summary: dict[str, Any]) -> str:
    dc = summary.get("drifted_columns")
    if not dc:
        return "nothing compared"
    cols = compared_columns(summary)
    signals = [SIGNAL_NAMES.get(k, k) for k, v in (summary.get("metrics") or {}).items() if v.get("detected")]
    text = f"{_pct(dc.get('share'), 0)} of {int(dc.get('of') or 0)} columns drifted"
    text += f": {', '.join(cols)}" if cols else " (none)"
    if signals:
        text += f"; drifted signals: {', '.join(signals)}"
    if summary.get("tests"):
        text += f"; tests: {summary['tests']}"
    return text


def block(summary: dict[str, Any]) -> str:
    """The verdict block of a stored summary (escaped HTML between :data:`START` and :data:`END`)."""
    status = str(summary.get("status") or "")
    fg, bg = _COLOURS.get(status, ("#1d2330", "#f3f5f8"))
    fb = summary.get("feedback") or {}
    p = summary.get("period") or {}
    version = summary.get("compared_version", summary.get("reference_version"))
    ref = summary.get("reference") or {}
    champion = f"v{version}" if version is not None else "none"
    if version is not None and ref.get("rows"):
        champion += f" (reference: its own predictions on {int(ref['rows']):,} held-out tweets)"
    wrong = (
        fb.get("accuracy_statement")
        or accuracy_statement(fb.get("predictions"), fb.get("reported_wrong"), fb.get("live_accuracy_upper_bound"))
        or ""
    )
    if fb.get("concept_drift"):
        wrong += " - CONCEPT DRIFT: the bound is below the held-out accuracy at training"
    rows = [
        ("period", f"{str(p.get('start', ''))[:16]} → {str(p.get('end', ''))[:16]} UTC", "period"),
        ("champion version", champion, "version"),
        ("rows", rows_text(summary), "rows"),
        ("drift", drift_text(summary), "drift"),
        ("estimated accuracy (CBPE, label-free)", estimate_text(summary), "estimate"),
        ("reported wrong", wrong, "reported-wrong"),
        ("what the platform did", action_text(summary), "action"),
    ]
    body = "".join(
        f"<tr id='verdict-{key}'><th style='{_TD};width:15rem;font-weight:600;color:#5b6475'>{_e(label)}</th>"
        f"<td style='{_TD}'>{_e(value)}</td></tr>"
        for label, value, key in rows
    )
    return (
        f"{START}<section id='sentiment-verdict' data-status='{_e(status)}' data-version='{_e(version)}' "
        "style='font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#1d2330;background:#fff;"
        f"margin:1rem;padding:1rem 1.2rem;border:1px solid #dde1e8;border-left:.5rem solid {fg};border-radius:4px;"
        "font-size:14px;line-height:1.4;position:relative;z-index:2'>"
        f"<h1 style='font-size:1.3rem;margin:0 0 .4rem;font-weight:600'>Drift report {_e(summary.get('id'))} "
        f"<span style='font-weight:400;color:#5b6475'>{_e(summary.get('model_name'))}</span></h1>"
        f"<p id='verdict-head' style='margin:.2rem 0 .6rem'><span style='display:inline-block;padding:.1rem .6rem;"
        f"border-radius:3px;font-weight:700;color:{fg};background:{bg}'>{_e(_HEADS.get(status, status.upper()))}"
        f"</span> <span id='verdict-line'>{_e(summary.get('verdict'))}</span></p>"
        f"<table style='border-collapse:collapse;width:100%'>{body}</table>"
        "<p style='margin:.5rem 0 0'><a id='history-link' href='../history/html' style='color:#1f5fbf'>"
        "Drift history</a> <span style='color:#5b6475'>(drift share, estimated accuracy and report rate across "
        "the nightly reports)</span></p>"
        "</section>"
        f"{END}"
    )


def with_block(page: str, summary: dict[str, Any]) -> str:
    """``page`` (Evidently's HTML, whose template has one ``<body>``) with the block first in its body."""
    if page.count("<body>") != 1:  # pragma: no cover - a changed Evidently template
        raise RuntimeError("Evidently's HTML template changed: cannot place the verdict block")
    return page.replace("<body>", "<body>\n" + block(summary), 1)


def empty_page(summary: dict[str, Any]) -> str:
    """The page of a report whose period holds no predictions: the verdict block and one plain sentence."""
    p = summary.get("period") or {}
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Drift report "
        f"{_e(summary.get('id'))}: no predictions</title></head><body style='margin:0;background:#fff'>"
        + block(summary)
        + "<p id='no-predictions' style='font-family:system-ui,sans-serif;margin:1rem 1.2rem;color:#1d2330'>"
        f"No predictions in this period ({_e(str(p.get('start', ''))[:16])} → {_e(str(p.get('end', ''))[:16])} "
        f"UTC) for {_e(summary.get('model_name'))}: there is nothing to compare with the champion's reference.</p>"
        "</body></html>"
    )


def replace_block(path: str | Path, summary: dict[str, Any]) -> bool:
    """Rewrite the verdict block of a saved report (the first START..END; the embedded data cannot hold
    them: its ``<`` are escaped). False when the file has no block (a report saved before it existed)."""
    path = Path(path)
    page = path.read_text(encoding="utf-8")
    a = page.find(START)
    b = page.find(END, a)
    if a < 0 or b < 0:
        return False
    new = page[:a] + block(summary) + page[b + len(END) :]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(path)
    return True
