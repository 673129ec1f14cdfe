"""The entry point of monitoring (the nightly DAG task, ``ml monitor``): ``build_report`` builds,
saves and stores one drift report of a period (Evidently's HTML and JSON, our ``summary.json``, a
row in ``drift_reports``); an empty period gets a plain HTML page.

**One version per report.** Only the predictions of the version that served at the period's end
(the model version of its last prediction: the champion then) are compared, with that version's own
reference; the period's predictions of other versions (a promotion during the night) are counted in
``current.not_compared`` and named in the verdict, never mixed in. Another version's predictions
say nothing about the serving model's inputs drifting (its ``p_positive`` and label share differ by
construction), the verdict's action (alert, retraining) concerns the serving version alone, and the
CBPE calibration and the training-accuracy bound are per version. Both versions' drift in sections
of one page was the alternative: it would score each past version's held-out split (a reference per
version) every night for a model that no longer serves.

The saved HTML opens with the verdict block (:mod:`ml.stages.monitoring.verdict`)."""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from ml.platform.config import Settings, get_settings
from ml.platform.progress import ProgressFn, report
from ml.platform.storage import cache_dir, reports_store
from ml.stages.monitoring import report_html, verdict
from ml.stages.monitoring.archive import store_summary
from ml.stages.monitoring.descriptors import add_descriptors
from ml.stages.monitoring.drift import run_report, summarise
from ml.stages.monitoring.period import (
    feedback_stats,
    load_current,
    period_counts,
    resolve_period,
    serving_version,
)
from ml.stages.monitoring.reference import load_reference
from ml.stages.monitoring.wording import accuracy_statement, verdict_line

log = logging.getLogger(__package__)  # the stage's logger, as before the split into modules

#: the steps :func:`build_report` reports to its ``progress`` callback
STEPS = 5


def build_report(
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    hours: float | None = None,
    airflow_run_id: str | None = None,
    settings: Settings | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Build, save and store one drift report of the period; returns its summary (the DAG's XCom).
    ``progress(done, total, message)`` is told before each step (the CLI's bar; the DAG passes none)."""
    s = settings or get_settings()
    t0 = time.perf_counter()
    a, b = resolve_period(start, end, hours, s)
    created = datetime.now(UTC)
    report_id = f"{created:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    # written here, then published to the shared store (ml/platform/storage.py) where the API and the Airflow
    # plugin read them; a local store (the default: var/reports) is written in place
    local = reports_store(s).real_path(report_id)
    out_dir = local if local is not None else cache_dir(s) / "reports-staging" / report_id
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _build(report_id, created, a, b, out_dir, airflow_run_id, s, t0, progress)
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
    settings: Settings,
    t0: float,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Build the report in ``out_dir``: load the period, compare it (or an empty page), publish, store."""
    log.info("monitoring %s: report %s for %s -> %s", settings.model_name, report_id, a.isoformat(), b.isoformat())
    report(progress, 0, STEPS, "loading the period's predictions")
    period = _load_period(a, b, settings)
    counts, version, current = period
    of_version = counts["by_model_version"].get(str(version), 0) if version is not None else 0
    summary = _new_summary(report_id, created, a, b, out_dir, airflow_run_id, settings, period, of_version)
    log.info(
        "monitoring: %s predictions in the period%s%s",
        f"{counts['total']:,}",
        f", {of_version:,} of v{version} (served at the period's end) compared" if version is not None else "",
        f", sampled to {len(current):,}" if summary["current"]["sampled"] else "",
    )
    if current.empty:
        _empty_report(summary, settings)
    else:
        _drift_report(summary, current, version, of_version, a, b, settings, progress)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    _publish(summary, report_id, out_dir, settings)
    store_summary(summary, settings)
    report(progress, STEPS, STEPS, summary["status"])
    log.info(
        "monitoring report %s (%s, %.1fs): %s", report_id, summary["status"], summary["seconds"], summary["verdict"]
    )
    return summary


class _Period(NamedTuple):
    """The period's prediction counts, the version that served at its end, and that version's rows."""

    counts: dict[str, Any]
    version: int | None
    current: pd.DataFrame


def _load_period(a: datetime, b: datetime, settings: Settings) -> _Period:
    """Count the period's predictions and load (a sample of) those of the version serving at its end."""
    from ml.platform import db

    with db.connect(settings) as conn:
        counts = period_counts(conn, settings.model_name, a, b)
        version = serving_version(conn, settings.model_name, a, b) if counts["total"] else None
        current = (
            load_current(conn, settings.model_name, a, b, settings.monitoring_max_rows, settings.seed, version)
            if version is not None
            else pd.DataFrame()
        )
    return _Period(counts, version, current)


def _new_summary(
    report_id: str,
    created: datetime,
    a: datetime,
    b: datetime,
    out_dir: Path,
    airflow_run_id: str | None,
    settings: Settings,
    period: _Period,
    of_version: int,
) -> dict[str, Any]:
    """The summary's first fields: the report, the period, what was compared, the files."""
    counts, version, current = period
    return {
        "id": report_id,
        "created_at": created.isoformat(),
        "period": {"start": a.isoformat(), "end": b.isoformat()},
        "model_name": settings.model_name,
        "airflow_run_id": airflow_run_id,
        "compared_version": version,
        "current": {
            "rows": len(current),
            "rows_in_period": counts["total"],
            "rows_of_version": of_version,
            "sampled": of_version > len(current),
            "max_rows": settings.monitoring_max_rows,
            "by_source": counts["by_source"],
            "by_model_version": counts["by_model_version"],
            "not_compared": {v: n for v, n in counts["by_model_version"].items() if v != str(version)},
        },
        "files": {
            "html": str(out_dir / "report.html"),
            "json": str(out_dir / "report.json"),
            "summary": str(out_dir / "summary.json"),
        },
    }


def _empty_report(summary: dict[str, Any], settings: Settings) -> None:
    """No predictions in the period: an empty summary naming the champion, and a plain HTML page."""
    champ = None
    try:
        from ml.platform import registry, tracking

        tracking.configure(settings)
        champ = registry.champion(settings)
    except Exception as e:  # noqa: BLE001 - the empty report does not need the registry
        log.warning("champion lookup failed (%s); the empty report names no version", e)
    summary.update(
        status="empty",
        drift_detected=False,
        reference_version=champ.version if champ else None,
        compared_version=champ.version if champ else None,
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
    Path(summary["files"]["html"]).write_text(verdict.empty_page(summary), encoding="utf-8")
    Path(summary["files"]["json"]).write_text(
        json.dumps({"status": "empty", "summary": summary}, indent=2, default=str)
    )


def _drift_report(
    summary: dict[str, Any],
    current: pd.DataFrame,
    version: int | None,
    of_version: int,
    a: datetime,
    b: datetime,
    settings: Settings,
    progress: ProgressFn | None,
) -> None:
    """Compare the period with the version's reference (Evidently), add feedback and the estimate, save it."""
    from ml.platform import db

    report(progress, 1, STEPS, "loading the reference, text descriptors")
    reference, meta, vocab = load_reference(settings, version)
    current = add_descriptors(current, vocab, meta.get("preprocess", "basic"))
    t1 = time.perf_counter()
    report(progress, 2, STEPS, f"Evidently report over {len(current):,} rows")
    snapshot, results, small = run_report(current, reference, settings)
    log.info(
        "monitoring: Evidently report over %s current vs %s reference rows in %.1fs (%s tests)",
        f"{len(current):,}",
        f"{len(reference):,}",
        time.perf_counter() - t1,
        "p-value" if small else "distance",
    )
    report(progress, 3, STEPS, "feedback, label-free accuracy estimate")
    snapshot.save_json(summary["files"]["json"])
    with db.connect(settings) as conn:
        fb = feedback_stats(
            conn, settings.model_name, a, b, of_version, meta.get("training_accuracy"), settings, version
        )
    metrics = summarise(results, current, reference, settings)
    try:
        from ml.evaluation import estimate

        est = estimate.period_estimate(current, reference, meta, settings)
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
    report(progress, 4, STEPS, "writing the HTML report")
    # the verdict block first, then Evidently's page (texts escaped inside its script data)
    report_html.save(snapshot, summary["files"]["html"], summary)


def _publish(summary: dict[str, Any], report_id: str, out_dir: Path, settings: Settings) -> None:
    """Write the summary beside the report files, or upload them all to a remote reports store."""
    rstore = reports_store(settings)
    if rstore.is_local:
        Path(summary["files"]["summary"]).write_text(json.dumps(summary, indent=2, default=str))
    else:  # each file uploaded whole; the stored summary names them in the store
        for name in ("report.html", "report.json"):
            rstore.put_file(out_dir / name, report_id, name)
        summary["files"] = {k: rstore.where(report_id, Path(v).name) for k, v in summary["files"].items()}
        rstore.write_bytes(json.dumps(summary, indent=2, default=str).encode(), report_id, "summary.json")
        shutil.rmtree(out_dir, ignore_errors=True)
