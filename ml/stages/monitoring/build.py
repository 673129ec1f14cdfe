"""The entry point of monitoring (the nightly DAG task, ``ml monitor``): ``build_report`` builds,
saves and stores one drift report of a period (Evidently's HTML and JSON, our ``summary.json``, a
row in ``drift_reports``); an empty period gets a plain HTML page."""

from __future__ import annotations

import html
import json
import logging
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from ml.platform.config import Settings, get_settings
from ml.stages.monitoring.archive import store_summary
from ml.stages.monitoring.descriptors import add_descriptors
from ml.stages.monitoring.drift import run_report, summarise
from ml.stages.monitoring.period import feedback_stats, load_current, period_counts, resolve_period
from ml.stages.monitoring.reference import load_reference
from ml.stages.monitoring.wording import accuracy_statement, verdict_line

log = logging.getLogger(__package__)  # the stage's logger, as before the split into modules


def _empty_html(summary: dict[str, Any]) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Drift report "
        f"{html.escape(summary['id'])}</title></head><body style='font-family:sans-serif'>"
        f"<h1>Drift report {html.escape(summary['id'])}: empty period</h1>"
        f"<p>{html.escape(summary['verdict'])}</p>"
        f"<pre>{html.escape(json.dumps(summary, indent=2, default=str))}</pre></body></html>"
    )


def build_report(
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    hours: float | None = None,
    airflow_run_id: str | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Build, save and store one drift report of the period; returns its summary (the DAG's XCom)."""
    s = settings or get_settings()
    t0 = time.perf_counter()
    a, b = resolve_period(start, end, hours, s)
    created = datetime.now(UTC)
    report_id = f"{created:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    out_dir = s.reports_dir / report_id
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _build(report_id, created, a, b, out_dir, airflow_run_id, s, t0)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)  # nothing stored: leave no half-written report behind
        raise


def _build(
    report_id: str,
    created: datetime,
    a: datetime,
    b: datetime,
    out_dir: Path,
    airflow_run_id: str | None,
    s: Settings,
    t0: float,
) -> dict[str, Any]:
    from ml.platform import db

    log.info("monitoring %s: report %s for %s -> %s", s.model_name, report_id, a.isoformat(), b.isoformat())
    with db.connect(s) as conn:
        counts = period_counts(conn, s.model_name, a, b)
        current = (
            load_current(conn, s.model_name, a, b, s.monitoring_max_rows, s.seed) if counts["total"] else pd.DataFrame()
        )
    summary: dict[str, Any] = {
        "id": report_id,
        "created_at": created.isoformat(),
        "period": {"start": a.isoformat(), "end": b.isoformat()},
        "model_name": s.model_name,
        "airflow_run_id": airflow_run_id,
        "current": {
            "rows": len(current),
            "rows_in_period": counts["total"],
            "sampled": counts["total"] > len(current),
            "max_rows": s.monitoring_max_rows,
            "by_source": counts["by_source"],
            "by_model_version": counts["by_model_version"],
        },
        "files": {
            "html": str(out_dir / "report.html"),
            "json": str(out_dir / "report.json"),
            "summary": str(out_dir / "summary.json"),
        },
    }
    log.info(
        "monitoring: %s predictions in the period%s",
        f"{counts['total']:,}",
        f", sampled to {len(current):,}" if summary["current"]["sampled"] else "",
    )
    if current.empty:
        champ = None
        try:
            from ml.platform import registry, tracking

            tracking.configure(s)
            champ = registry.champion(s)
        except Exception as e:  # noqa: BLE001 - the empty report does not need the registry
            log.warning("champion lookup failed (%s); the empty report names no version", e)
        summary.update(
            status="empty",
            drift_detected=False,
            reference_version=champ.version if champ else None,
            reference={"rows": 0},
            metrics={},
            drifted_columns=None,
            feedback={
                "predictions": 0,
                "with_feedback": 0,
                "reported_wrong": 0,
                "live_accuracy_upper_bound": None,
                "training_accuracy": None,
                "concept_drift": None,
                "accuracy_statement": accuracy_statement(0, 0, None),
            },
            estimate={"estimated_accuracy": None, "status": "no predictions in the period"},
        )
        summary["verdict"] = verdict_line(summary)
        Path(summary["files"]["html"]).write_text(_empty_html(summary), encoding="utf-8")
        Path(summary["files"]["json"]).write_text(
            json.dumps({"status": "empty", "summary": summary}, indent=2, default=str)
        )
    else:
        reference, meta, vocab = load_reference(s)
        current = add_descriptors(current, vocab, meta.get("preprocess", "basic"))
        t1 = time.perf_counter()
        snapshot, results, small = run_report(current, reference, s)
        log.info(
            "monitoring: Evidently report over %s current vs %s reference rows in %.1fs (%s tests)",
            f"{len(current):,}",
            f"{len(reference):,}",
            time.perf_counter() - t1,
            "p-value" if small else "distance",
        )
        snapshot.save_html(summary["files"]["html"])
        snapshot.save_json(summary["files"]["json"])
        with db.connect(s) as conn:
            fb = feedback_stats(conn, s.model_name, a, b, counts["total"], meta.get("training_accuracy"), s)
        metrics = summarise(results, current, reference, s)
        try:
            from ml.evaluation import estimate

            est = estimate.period_estimate(current, reference, meta, s)
        except Exception as e:  # the estimate is one figure of the report: it never costs the report
            log.exception("label-free accuracy estimate failed")
            est = {"estimated_accuracy": None, "status": f"failed: {type(e).__name__}: {e}"[:300]}
        drift = any(v["detected"] for v in metrics.values())
        summary.update(
            status="drift" if drift or fb["concept_drift"] else "ok",
            drift_detected=drift,
            reference_version=meta["version"],
            reference={
                k: meta.get(k)
                for k in (
                    "rows",
                    "held_out_rows",
                    "dataset_hash",
                    "run_id",
                    "family",
                    "vocabulary_source",
                    "vocabulary_size",
                    "reference_accuracy",
                )
            },
            tests="p-value (small sample)" if small else "distance (effect size)",
            drifted_columns={**(results["dataset"] or {}), "of": len(results["columns"])},
            metrics=metrics,
            feedback=fb,
            estimate=est,
        )
        summary["verdict"] = verdict_line(summary)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    Path(summary["files"]["summary"]).write_text(json.dumps(summary, indent=2, default=str))
    store_summary(summary, s)
    log.info(
        "monitoring report %s (%s, %.1fs): %s", report_id, summary["status"], summary["seconds"], summary["verdict"]
    )
    return summary
