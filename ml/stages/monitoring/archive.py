"""Stored drift reports: the ``drift_reports`` row written for each report, and reading reports
back (list, one summary, the HTML file) for the API, the Airflow plugin and the CLI."""

from __future__ import annotations

import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from ml.platform.config import Settings, get_settings
from ml.stages.monitoring.wording import accuracy_statement
from ml.store import reports as store

REPORT_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")

SUMMARY_COLUMNS = store.SUMMARY_COLUMNS


def store_summary(summary: dict[str, Any], s: Settings) -> None:
    """The report's row in ``drift_reports`` (its summary columns and the full summary)."""
    from ml.platform import db

    fb = summary.get("feedback") or {}
    with db.connect(s) as conn:
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


def _reading(conn, settings: Settings | None):
    """The caller's connection, or one of the settings' own (a context manager either way)."""
    from ml.platform import db

    return nullcontext(conn) if conn is not None else db.connect(settings or get_settings())


def list_reports(
    limit: int = 50, conn=None, settings: Settings | None = None, model_name: str | None = None
) -> list[dict[str, Any]]:
    """The newest reports first (of ``model_name`` if given): the summary columns (not the full
    per-column detail) and ``accuracy_statement``."""
    with _reading(conn, settings) as c:
        out = store.latest(c, limit, model_name)
    for r in out:
        r["accuracy_statement"] = accuracy_statement(
            r["n_current_total"], r["n_reported_wrong"], r["live_accuracy_upper_bound"]
        )
    return out


def get_report(report_id: str, conn=None, settings: Settings | None = None) -> dict[str, Any] | None:
    """The full stored summary of one report, or None."""
    if not REPORT_ID_RE.match(report_id):
        return None
    with _reading(conn, settings) as c:
        return store.summary(c, report_id)


def report_html_path(report_id: str, conn=None, settings: Settings | None = None) -> Path | None:
    """The report's HTML file (Evidently's, or a plain page for an empty period), or None."""
    if not REPORT_ID_RE.match(report_id):
        return None
    with _reading(conn, settings) as c:
        found = store.html_path(c, report_id)
    if not found:
        return None
    path = Path(found)
    return path if path.exists() else None
