"""Lineage of a prediction: model version -> MLflow run (code commit) -> dataset snapshot -> the
chain of parent snapshots, and for each retraining snapshot the retraining and the feedback reports
that produced it. ``GET /predictions/{id}/lineage`` and ``ml lineage ID``."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg

from ml.platform import db, tracking
from ml.platform.config import Settings, get_settings
from ml.store import lineage as store

log = logging.getLogger(__name__)

MAX_REPORTS_LISTED = 100
MAX_DEPTH = 50


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, datetime):
            v = v.isoformat()
        elif isinstance(v, uuid.UUID):
            v = str(v)
        out[k] = v
    return out


def _model_version(model_name: str, version: int) -> tuple[dict[str, Any], dict[str, str], dict[str, float]]:
    import mlflow

    client = mlflow.MlflowClient()
    mv = client.get_model_version(model_name, str(version))
    info = {
        "name": model_name,
        "version": int(version),
        "run_id": mv.run_id,
        "registered_at": datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC).isoformat()
        if mv.creation_timestamp
        else None,
        "aliases": list(getattr(mv, "aliases", []) or []),
    }
    if mv.run_id is None:
        raise ValueError(f"version {version} of {model_name} has no MLflow run")
    run = client.get_run(mv.run_id)
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
    return info, tags, dict(run.data.metrics)


def snapshot_chain(conn: psycopg.Connection, snapshot_hash: str | None) -> list[dict[str, Any]]:
    """The snapshot and its ancestors (``parent_hash``), each with the retraining that built it."""
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    h = snapshot_hash
    while h and h not in seen and len(chain) < MAX_DEPTH:
        seen.add(h)
        found = store.snapshot(conn, h)
        if found is None:
            chain.append({"hash": h, "missing": True})
            break
        snap = _jsonable(found)
        if snap["kind"] == "retraining":
            found_r = store.retraining_of_snapshot(conn, h)
            r = _jsonable(found_r) if found_r is not None else None
            if r is not None:
                ids = r.pop("training_feedback_ids") or []
                r["training_feedback_ids"] = ids
                r["n_training_reports"] = len(ids)
                r["reports"] = [_jsonable(x) for x in store.reports(conn, ids, MAX_REPORTS_LISTED)]
                r["reports_listed"] = len(r["reports"])
            snap["retraining"] = r
        chain.append(snap)
        h = snap.get("parent_hash")
    return chain


def prediction_lineage(
    prediction_id: str | uuid.UUID, settings: Settings | None = None, conn: psycopg.Connection | None = None
) -> dict[str, Any] | None:
    """Everything that led to one prediction; None for an unknown id."""
    s = settings or get_settings()
    try:
        pid = uuid.UUID(str(prediction_id))
    except ValueError:
        return None
    if conn is None:
        with db.connect(s) as c:
            return prediction_lineage(pid, s, c)
    found = store.prediction(conn, pid)
    if found is None:
        return None
    pred = _jsonable(found)
    out: dict[str, Any] = {"prediction": pred, "errors": []}
    model: dict[str, Any] = {"name": pred["model_name"], "version": pred["model_version"]}
    tags: dict[str, str] = {}
    try:
        tracking.configure(s)
        info, tags, metrics = _model_version(pred["model_name"], pred["model_version"])
        model.update(info, family=tags.get("family"), metrics=metrics, tags=tags)
    except Exception as e:  # noqa: BLE001 - the database side of the lineage is still useful
        out["errors"].append(f"MLflow: {type(e).__name__}: {e}")
    run_id = model.get("run_id")
    found_tr = store.training_run(conn, run_id) if run_id else None
    tr = _jsonable(found_tr) if found_tr else None
    if tr:
        tr.pop("behaviour", None)
    model["training_run"] = tr
    model["events"] = [_jsonable(e) for e in store.events_of_version(conn, pred["model_name"], pred["model_version"])]
    out["model"] = model
    dataset_hash = tags.get("dataset_hash") or (tr or {}).get("snapshot_hash")
    out["git_commit"] = tags.get("git_commit") or (tr or {}).get("git_commit")
    chain = snapshot_chain(conn, dataset_hash)
    out["snapshot"] = chain[0] if chain else None
    out["snapshot_chain"] = chain
    produced = next((c.get("retraining") for c in chain if c.get("retraining")), None)
    out["retraining"] = produced  # the latest retraining in the model's data lineage
    out["feedback"] = [_jsonable(f) for f in store.feedback_on(conn, pid)]
    out["summary"] = _summary(out)
    return out


def _summary(out: dict[str, Any]) -> str:
    p, m = out["prediction"], out["model"]
    parts = [
        f"prediction {p['id']} ({p['source']}, {p['created_at'][:19]}) by {m['name']} v{m['version']}"
        + (f" ({m.get('family')}, run {m.get('run_id')})" if m.get("run_id") else "")
    ]
    if out.get("git_commit"):
        parts.append(f"code {out['git_commit']}")
    snap = out.get("snapshot")
    if snap and not snap.get("missing"):
        parts.append(f"trained on snapshot {snap['hash'][:16]} ({snap['kind']}, {snap['n_rows']:,} rows)")
    r = out.get("retraining")
    if r:
        parts.append(f"built by retraining #{r['id']} ({r['reason']}) from {r['n_training_reports']} feedback reports")
    chain = out.get("snapshot_chain") or []
    if len(chain) > 1:
        parts.append("snapshot chain " + " <- ".join(f"{c['hash'][:10]}:{c.get('kind', '?')}" for c in chain))
    return "; ".join(parts)


_SNAPSHOT_PUBLIC = ("hash", "kind", "parent_hash", "n_rows", "n_positive", "created_at", "missing")
_RETRAINING_PUBLIC = (
    "id",
    "created_at",
    "reason",
    "status",
    "n_feedback",
    "threshold",
    "champion_before",
    "champion_after",
    "candidate_version",
    "n_training_reports",
)


def redacted(out: dict[str, Any]) -> dict[str, Any]:
    """The lineage for callers without ``admin``: what and how many, never texts, comments, file paths,
    tags or other users' reports (a whitelist, so a field added later stays private)."""

    def pick(d: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any] | None:
        return None if d is None else {k: d[k] for k in keys if k in d}

    def snap(c: dict[str, Any]) -> dict[str, Any]:
        x = pick(c, _SNAPSHOT_PUBLIC) or {}
        r = c.get("retraining")
        x["retraining"] = pick(r, _RETRAINING_PUBLIC)
        return x

    p, m = out["prediction"], out["model"]
    return {
        "redacted": True,
        "note": "texts, comments, feedback reports, tags and server paths need an API key with scope `admin`",
        "prediction": pick(p, ("id", "created_at", "label", "p_positive", "model_name", "model_version", "source")),
        "model": {
            **(pick(m, ("name", "version", "family", "run_id", "metrics")) or {}),
            "events": [pick(e, ("event", "version", "previous_version", "created_at")) for e in m.get("events", [])],
        },
        "git_commit": out.get("git_commit"),
        "snapshot": snap(out["snapshot"]) if out.get("snapshot") else None,
        "snapshot_chain": [snap(c) for c in out.get("snapshot_chain") or []],
        "retraining": pick(out.get("retraining"), _RETRAINING_PUBLIC),
        "feedback": {"count": len(out.get("feedback") or [])},
        "summary": out.get("summary"),
    }
