"""Stored drift reports: the ``drift_reports`` row written for each report, and reading reports
back (list, one summary, the HTML file) for the API, the Airflow plugin and the CLI."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import psycopg

from ml.platform.config import Settings, get_settings
from ml.platform.storage import SharedStore, cache_dir, open_url
from ml.stages.monitoring.wording import accuracy_statement
from ml.store import drift_reports as store

REPORT_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")

SUMMARY_COLUMNS = store.SUMMARY_COLUMNS


def store_summary(summary: dict[str, Any], settings: Settings) -> None:
    """The report's row in ``drift_reports`` (its summary columns and the full summary)."""
    from ml.platform import db

    fb = summary.get("feedback") or {}
    with db.connect(settings) as conn:
        store.insert(
            conn,
            {
                "id": summary["id"],
                "created_at": summary["created_at"],
                "period_start": summary["period"]["start"],
                "period_end": summary["period"]["end"],
                "status": summary["status"],
                "drift_detected": summary["drift_detected"],
                "concept_drift": fb.get("concept_drift"),
                "verdict": summary["verdict"],
                "model_name": summary["model_name"],
                "reference_version": summary["reference_version"],
                "n_current": summary["current"]["rows"],
                "n_current_total": summary["current"]["rows_in_period"],
                "n_reference": summary["reference"]["rows"],
                "drifted_share": (summary.get("drifted_columns") or {}).get("share"),
                "n_feedback": fb.get("with_feedback", 0),
                "n_reported_wrong": fb.get("reported_wrong", 0),
                "live_accuracy_upper_bound": fb.get("live_accuracy_upper_bound"),
                "training_accuracy": fb.get("training_accuracy"),
                "seconds": summary["seconds"],
                "airflow_run_id": summary.get("airflow_run_id"),
                "html_path": summary["files"]["html"],
                "json_path": summary["files"]["json"],
                "summary": summary,
            },
        )


def _reading(conn: psycopg.Connection | None, settings: Settings | None) -> AbstractContextManager[psycopg.Connection]:
    """The caller's connection, or one of the settings' own (a context manager either way)."""
    from ml.platform import db

    return nullcontext(conn) if conn is not None else db.connect(settings or get_settings())


def list_reports(
    limit: int = 50,
    conn: psycopg.Connection | None = None,
    settings: Settings | None = None,
    model_name: str | None = None,
) -> list[dict[str, Any]]:
    """The newest reports first (of ``model_name`` if given): the summary columns (not the full
    per-column detail) and ``accuracy_statement``."""
    with _reading(conn, settings) as c:
        out = store.latest(c, limit, model_name)
    for r in out:
        r["accuracy_statement"] = accuracy_statement(
            r["n_version_predictions"], r["n_reported_wrong"], r["live_accuracy_upper_bound"]
        )
    return out


def get_report(
    report_id: str, conn: psycopg.Connection | None = None, settings: Settings | None = None
) -> dict[str, Any] | None:
    """The full stored summary of one report, or None."""
    if not REPORT_ID_RE.match(report_id):
        return None
    with _reading(conn, settings) as c:
        return store.summary(c, report_id)


def report_html_path(
    report_id: str, conn: psycopg.Connection | None = None, settings: Settings | None = None
) -> Path | None:
    """The report's HTML file (Evidently's, or a plain page for an empty period), or None."""
    if not REPORT_ID_RE.match(report_id):
        return None
    with _reading(conn, settings) as c:
        found = store.html_path(c, report_id)
    if not found:
        return None
    if "://" in found and not found.startswith("file://"):  # the shared store: a fresh private copy to serve
        try:
            return _fresh_copy(found, settings)
        except FileNotFoundError:
            return None
    path = Path(found.removeprefix("file://"))
    return path if path.exists() else None


def _fresh_copy(url: str, settings: Settings | None = None) -> Path:
    """This process's private copy of a stored report file (fetched anew: an action rewrites it)."""
    name = url.rsplit("/", 1)[1]
    dest = cache_dir(settings or get_settings()) / "reports" / hashlib.sha256(url.encode()).hexdigest()[:16]
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    out = dest / name
    tmp = dest / f".{name}.{os.getpid()}.tmp"
    with open_url(url) as r, tmp.open("wb") as w:
        shutil.copyfileobj(r, w, 1 << 20)
    tmp.replace(out)
    return out


def action_of(
    summary: dict[str, Any], alert: dict[str, Any] | None, retraining: dict[str, Any] | None
) -> dict[str, Any]:
    """What the platform did after a report (the monitoring DAG's drift alert and retraining check), in a
    dict with its words (``text``): ``kind`` is ``nothing``, ``alert``, ``retraining`` or ``alert+retraining``."""
    alert = alert or {}
    retraining = retraining or {}
    parts: list[str] = []
    alerted = bool(alert.get("raised") or alert.get("continued"))
    if alert.get("raised"):
        parts.append(f"alert: drift alert #{alert.get('alert_id')} raised and sent")
    elif alert.get("continued"):
        parts.append(f"alert: the open drift alert #{alert.get('alert_id')} counts this report too")
    triggered = bool(retraining.get("trigger"))
    reports = retraining.get("reports", retraining.get("pending_reports"))
    threshold = retraining.get("threshold")
    if triggered:
        rid = retraining.get("retraining_id")
        parts.append(
            "retraining: triggered"
            + (f" (#{rid})" if rid is not None else "")
            + (
                f", {reports:,} misclassification reports >= threshold {threshold:,}"
                if reports is not None and threshold
                else ""
            )
        )
    kind = "+".join(k for k, on in (("alert", alerted), ("retraining", triggered)) if on) or "nothing"
    if kind == "nothing":
        why = {"ok": "no drift", "empty": "no predictions"}.get(summary.get("status", ""), "no alert raised")
        if alert.get("resolved"):
            why += f", drift alert #{alert.get('alert_id')} resolved"
        if reports is not None and threshold:
            why += f"; {reports:,} of {threshold:,} misclassification reports needed for a retraining"
        parts.append(f"nothing: {why}")
    return {
        "kind": kind,
        "alert_id": alert.get("alert_id") if alerted or alert.get("resolved") else None,
        "alert": "raised"
        if alert.get("raised")
        else "continued"
        if alert.get("continued")
        else ("resolved" if alert.get("resolved") else None),
        "retraining_triggered": triggered,
        "retraining_id": retraining.get("retraining_id"),
        "text": "; ".join(parts),
    }


def record_action(
    report_id: str, alert: dict[str, Any] | None, retraining: dict[str, Any] | None, settings: Settings | None = None
) -> dict[str, Any] | None:
    """Store what the platform did after the report (summary ``action``) and rewrite the saved HTML's
    verdict block to say it. None when the report is not stored."""
    from ml.platform import db
    from ml.stages.monitoring import verdict

    s = settings or get_settings()
    with db.connect(s) as conn:
        summary = store.summary(conn, report_id)
        if summary is None:
            return None
        action = action_of(summary, alert, retraining)
        store.set_action(conn, report_id, action)
        path = store.html_path(conn, report_id)
    summary["action"] = action
    if path and "://" in path and not path.startswith("file://"):  # the shared store: rewrite, upload whole
        try:
            copy = _fresh_copy(path, s)
        except FileNotFoundError:
            return action
        if verdict.replace_block(copy, summary):
            folder, name = path.rsplit("/", 1)
            SharedStore(folder).put_file(copy, name)
    elif path and Path(path.removeprefix("file://")).exists():
        verdict.replace_block(path.removeprefix("file://"), summary)
    return action


def history(
    model_name: str, limit: int = 365, conn: psycopg.Connection | None = None, settings: Settings | None = None
) -> list[dict[str, Any]]:
    """The ``limit`` newest reports of ``model_name``, oldest first, as the drift history draws them
    (``ml.store.drift_reports.history``) with ``report_rate``: reported wrong per compared prediction."""
    with _reading(conn, settings) as c:
        rows = store.history(c, model_name, limit)
    for r in rows:
        n = r["predictions"] or 0
        r["report_rate"] = (r["reported_wrong"] or 0) / n if n else None
        for k in ("created_at", "period_end"):
            r[k] = r[k].isoformat() if hasattr(r[k], "isoformat") else r[k]
    return rows
