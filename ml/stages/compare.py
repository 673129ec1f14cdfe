"""The model comparison: one row per family (best params, held-out accuracy, F1, ROC AUC,
accuracy on the external set when ``external_eval_path`` is set,
inference ms/tweet, size, training time, the training budget used, epochs, steps, examples seen,
sample size and a link to the learning curve), rendered as Markdown, HTML and a PNG chart of
accuracy vs inference time by ``ml.views.comparison`` (handed in as ``render``: views sit above
stages); logged to the parent MLflow run and stored in PostgreSQL
(``comparisons``). :func:`latest_comparison` reads the newest one back (API, ``ml compare --show``).

The winner is the family whose best trial scored highest on the *validation* split (the
selection metric, ``accuracy`` unless configured), so the held-out split only reports; it is
then registered and goes through the champion/challenger gate (``ml.stages.promotion.promote``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

from ml.data import DataError
from ml.data.snapshots import validate_and_snapshot
from ml.platform import db, tracking
from ml.platform.config import Settings, get_settings
from ml.platform.progress import ProgressFn, report
from ml.stages import promotion, train
from ml.stages.promotion import GateResult
from ml.stages.search.family import search_family
from ml.stages.search.plan import ComparisonPlan, plan_comparison
from ml.stages.search.space import load_search_space, selection_metric
from ml.stages.search.winners import evaluate_winners
from ml.store import snapshots as snapshots_store
from ml.store import training_runs as store

log = logging.getLogger(__name__)


class ComparisonResult(TypedDict):
    """What :func:`write_comparison` returns (the training DAG's ``compare`` task, one XCom per key)."""

    id: int
    parent_run_id: str
    winner_family: str
    winner_run_id: str


class RenderedComparison(NamedTuple):
    """The comparison as a person reads it (``ml.views.comparison.render``): what :func:`write_comparison` logs
    and stores."""

    markdown: str
    html: str
    chart: Path


#: renders the rows (winner family, selection metric, where the chart goes): ``ml.views.comparison.render``
Render = Callable[[list[dict[str, Any]], str, str, Path], RenderedComparison]


class ComparisonRun(ComparisonResult, total=False):
    """:func:`run_comparison`'s result: the comparison, its rows and, with ``promote``, the gate's outcome."""

    rows: list[dict[str, Any]]
    promotion: GateResult


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None (PostgreSQL's jsonb refuses them), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def choose_winner(rows: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Best validation ``metric``; ties go to the faster model."""
    return max(rows, key=lambda r: (r.get(f"val_{metric}", float("-inf")), -r.get("inference_ms_per_tweet", 0.0)))


def _add_external(rows: list[dict[str, Any]], settings: Settings) -> None:
    """The external-set figures ``ml.stages.train.evaluate`` stored for each row's run (and the champion's)."""
    with db.connect(settings) as conn:
        for r in rows:
            if r.get("external") or not r.get("run_id"):
                continue
            g = store.gate_inputs(conn, r["run_id"])
            if g is None or g.metrics is None or not g.metrics.get("external"):
                continue
            r["external"] = {k: v for k, v in g.metrics["external"].items()}
            ch = (g.champion_metrics or {}).get("external")
            if ch:
                r["champion_external_accuracy"] = ch.get("accuracy")


def write_comparison(
    plan: ComparisonPlan, rows: list[dict[str, Any]], settings: Settings | None = None, *, render: Render
) -> ComparisonResult:
    """Build the table, have ``render`` make its Markdown, HTML and chart; log them to the parent MLflow run
    (which ends here) and store them in ``comparisons``. Returns id, winner family and run."""
    import mlflow

    s = settings or get_settings()
    if not rows:
        raise ValueError("no family results to compare")
    metric = selection_metric(load_search_space(s), s)
    win = choose_winner(rows, metric)
    for r in rows:
        r["selection_metric"] = metric
        r["winner"] = r["family"] == win["family"]
    _add_external(rows, s)
    parent = plan["parent_run_id"]
    markdown, html_table, chart = render(
        rows, win["family"], metric, s.reports_dir / "comparisons" / f"comparison-{parent}.png"
    )

    tracking.configure(s)
    client = mlflow.MlflowClient()
    client.log_artifact(parent, str(chart), "comparison")
    client.log_text(parent, markdown, "comparison/comparison.md")
    client.log_text(parent, html_table, "comparison/comparison.html")
    client.log_dict(parent, _json_safe(rows), "comparison/comparison.json")
    for r in rows:
        for k in (
            "accuracy",
            "f1",
            "roc_auc",
            "inference_ms_per_tweet",
            "model_size_mb",
            "training_seconds",
            "budget_seconds",
            "budget_used_seconds",
            "epochs",
            "steps",
            "examples_seen",
        ):
            if r.get(k) is not None:
                client.log_metric(parent, f"{r['family']}.{k}", float(r[k]))
        if (r.get("external") or {}).get("accuracy") is not None:
            client.log_metric(parent, f"{r['family']}.external_accuracy", float(r["external"]["accuracy"]))
    client.set_tag(parent, "winner_family", win["family"])
    client.set_tag(parent, "winner_run_id", win["run_id"])
    client.set_terminated(parent, "FINISHED")

    with db.connect(s) as conn:
        cid = store.upsert_comparison(
            conn,
            parent_run_id=parent,
            snapshot_hash=plan["snapshot_hash"],
            profile=plan["profile"],
            families=[r["family"] for r in rows],
            selection_metric=metric,
            table=_json_safe(rows),
            markdown=markdown,
            html=html_table,
            chart_path=str(chart),
            winner_family=win["family"],
            winner_run_id=win["run_id"],
            airflow_run_id=plan.get("airflow_run_id"),
        )
    log.info("comparison %d (parent run %s): winner %s\n%s", cid, parent, win["family"], markdown)
    return {"id": cid, "parent_run_id": parent, "winner_family": win["family"], "winner_run_id": win["run_id"]}


def register_best(comparison: ComparisonResult | int, settings: Settings | None = None) -> str:
    """Register the comparison's winner (a new registry version) and record the version on the
    comparison. Returns the winner's run id (for the gate)."""
    s = settings or get_settings()
    cid = comparison["id"] if isinstance(comparison, dict) else int(comparison)
    with db.connect(s) as conn:
        row = store.comparison_winner(conn, cid)
    if row is None or row[0] is None:
        raise ValueError(f"comparison {cid} not found or has no winner")
    run_id = row[0]
    train.register(run_id, s)  # records the version on the comparison (and its parent run's tags)
    return run_id


def latest_comparison(settings: Settings | None = None) -> dict[str, Any] | None:
    """The newest comparison (JSON-ready), with the winner's registry version and gate decision;
    None before the first one."""
    s = settings or get_settings()
    with db.connect(s) as conn:
        c = store.latest_comparison(conn)
    if c is None:
        return None
    winner = {
        "family": c.pop("winner_family"),
        "run_id": c.pop("winner_run_id"),
        "version": c.pop("winner_version"),
        "status": c.pop("status"),
        "decision": c.pop("decision"),
    }
    return {**c, "created_at": c["created_at"].isoformat(), "families": list(c["families"]), "winner": winner}


def latest_snapshot(settings: Settings | None = None) -> str:
    """The most recently stored dataset snapshot (what ``ml compare`` uses when given no data)."""
    with db.connect(settings or get_settings()) as conn:
        h = snapshots_store.latest_hash(conn)
    if h is None:
        raise DataError("no dataset snapshot yet: give --data FILE (or run `ml data validate FILE` first)")
    return h


def run_comparison(
    data_path: str | Path | None = None,
    snapshot_hash: str | None = None,
    families: list[str] | str | None = None,
    profile: str | None = None,
    sample_size: int | None = None,
    sample_sizes: dict[str, int | None] | None = None,
    search_space: dict[str, Any] | None = None,
    promote: bool = False,
    settings: Settings | None = None,
    progress: ProgressFn | None = None,
    *,
    render: Render,
) -> ComparisonRun:
    """The whole comparison in this process (``ml compare``, benchmarks): validate -> search each
    family -> evaluate the winners on the held-out split -> write the comparison; with
    ``promote``, also register the winner and run the gate, as the DAG does. ``progress(done, total,
    message)`` is told before each step (validate, each family's search, evaluation, table, gate). ``render``:
    ``ml.views.comparison.render`` (the caller's: a stage never imports views)."""
    s = settings or get_settings()
    report(progress, 0, 0, "validating the data" if data_path is not None else "planning")
    if snapshot_hash is None and data_path is not None:
        snapshot_hash = validate_and_snapshot(data_path, s).hash
    if snapshot_hash is None:
        snapshot_hash = latest_snapshot(s)
    plan = plan_comparison(snapshot_hash, families, profile, sample_sizes, sample_size, search_space, settings=s)
    fams = list(plan["families"])
    total = len(fams) + 2 + (1 if promote else 0)  # each family's search, evaluation, table[, gate]
    winners = []
    for i, f in enumerate(fams):
        report(progress, i, total, f"searching {f}")
        winners.append(search_family(plan, f, s))
    report(progress, len(fams), total, "evaluating the winners on the held-out split")
    rows = evaluate_winners(plan, winners, s)
    report(progress, len(fams) + 1, total, "writing the comparison")
    result: ComparisonRun = {**write_comparison(plan, rows, s, render=render), "rows": rows}
    if promote:
        report(progress, len(fams) + 2, total, "registering the winner, champion/challenger gate")
        run_id = register_best(result, s)
        train.check_behaviour(run_id, s)
        result["promotion"] = promotion.promote(run_id, s)
    report(progress, total, total, "done")
    return result
