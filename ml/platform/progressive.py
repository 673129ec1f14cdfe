"""The progressive champion: ``make up`` serves the fast family within minutes, then, in the background,
runs the comparison that includes the transformer and lets its winner through the same gate and shadow
window as any challenger.

- :func:`start` (``ml.platform.startup.up`` after the first champion serves; ``ml services up
  --no-progressive`` / ``make up PROGRESSIVE=0`` / ``progressive_champion: false`` turn it off): triggers the
  ``sentiment_training`` DAG on the champion's own data snapshot with ``progressive_families`` /
  ``progressive_profile`` (default ``["tfidf_lr", "transformer"]``, ``full``) and ``progressive_id``. One
  comparison per (registered model, snapshot): the ``progressive_challengers`` row is the idempotency key,
  so a second ``make up`` starts nothing while one runs or after one finished (a failed one is retried).
- Low priority: every task of such a run lowers its own CPU priority (:func:`lower_priority`, ``nice``
  ``progressive_nice``, the DAG's ``on_execute_callback``); the DAG runs one task at a time (a linear chain,
  one mapped search at a time, one run at a time), so the background work holds at most the cores the API
  leaves idle.
- Progress (``ml.stages.progressive.search``, the DAG's search task): a heartbeat thread writes the fit seconds used against
  the families' ``budget_seconds`` (the wall-clock budget that stops each family's training) every
  ``progressive_heartbeat_seconds``; :func:`describe` turns it into a percentage and an ETA from the measured
  rate (capped at one budget second per wall second, so a family that early-stops makes the ETA pessimistic,
  never optimistic), for ``make status`` (:func:`status_line`) and the API (``GET /model``, the web page).
- Promotion (``ml.stages.promotion.promote_progressive``, recorded by ``ml.stages.progressive.record_promotion``): the winner goes
  through :func:`ml.stages.promotion.promote` (the gate) with ``hold`` when a shadow window is configured; a
  held winner goes into shadow (``ml.stages.shadow.start``) and the DAG's ``shadow`` group decides it, as for
  a retraining's challenger. A loser stays a challenger: the alias does not move.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from typing import Any

import psycopg

from ml.platform import db, registry, tracking
from ml.platform.airflow_client import TRAINING_DAG, airflow_api, airflow_token, trigger_dag
from ml.platform.config import Settings, get_settings
from ml.store import progressive as store
from ml.store import training_runs as training_runs_store

log = logging.getLogger(__name__)

#: weight (seconds) of a family that has no ``budget_seconds`` in its profile
UNBUDGETED_SECONDS = 60.0
RUNNING = ("queued", "training", "evaluating")


def lower_priority(settings: Settings | None = None) -> int:
    """Raise this process's niceness to ``progressive_nice`` (never lowers it). Returns the niceness."""
    s = settings or get_settings()
    now = os.nice(0)
    return os.nice(max(0, int(s.progressive_nice) - now))


def _airflow_run_state(settings: Settings, run_id: str) -> str | None:
    """The state of the training DAG's run ``run_id`` (None when Airflow cannot say)."""
    try:
        r = airflow_api(settings, "GET", f"/dags/{TRAINING_DAG}/dagRuns/{run_id}", airflow_token(settings))
    except Exception:  # noqa: BLE001 - unknown: the row is left as it is
        return None
    return r.json().get("state") if r.status_code == 200 else None


def start(settings: Settings | None = None, enabled: bool | None = None) -> dict[str, Any]:
    """Start the background comparison on the champion's training snapshot, unless it is off, there is
    no champion, or one was started for this (model, snapshot) already (running or finished; a failed
    one is started again). Returns ``{"started": bool, "reason": ..., "id": ..., "dag_run_id": ...}``."""
    s = settings or get_settings()
    if not (s.progressive_champion if enabled is None else enabled):
        return {"started": False, "reason": "progressive champion off (progressive_champion / --no-progressive)"}
    tracking.configure(s)
    champ = registry.champion(s)
    if champ is None:
        return {"started": False, "reason": "no champion yet"}
    with db.connect(s) as conn:
        src = store.snapshot_source(conn, champ.run_id) if champ.run_id else None
    if src is None:
        return {"started": False, "reason": f"the champion's run {champ.run_id} has no recorded snapshot"}
    snapshot_hash, data_path = src
    families = list(s.progressive_families)
    with db.connect(s) as conn:
        row, claimed = store.claim(
            conn, s.model_name, snapshot_hash, data_path, families, s.progressive_profile, int(champ.version)
        )
    if not claimed and row["state"] in RUNNING and row["dag_run_id"]:
        if _airflow_run_state(s, row["dag_run_id"]) == "failed":  # its run died: record it, start again
            with db.connect(s) as conn:
                store.finish(conn, int(row["id"]), "failed", f"Airflow run {row['dag_run_id']} failed")
                row, claimed = store.claim(
                    conn, s.model_name, snapshot_hash, data_path, families, s.progressive_profile, int(champ.version)
                )
    if not claimed:
        return {
            "started": False,
            "id": row["id"],
            "dag_run_id": row["dag_run_id"],
            "state": row["state"],
            "reason": f"comparison #{row['id']} for snapshot {snapshot_hash[:12]} already {row['state']}",
        }
    conf = {
        "data_path": data_path,
        "families": families,
        "profile": s.progressive_profile,
        "search_space": dict(s.progressive_search_space),
        "progressive_id": int(row["id"]),
    }
    try:
        trig = trigger_dag(TRAINING_DAG, conf, s, note="progressive champion (background, low priority)")
    except Exception as e:
        with db.connect(s) as conn:
            store.finish(conn, int(row["id"]), "failed", f"trigger failed: {type(e).__name__}: {e}"[:500])
        raise
    with db.connect(s) as conn:
        store.set_run(conn, int(row["id"]), trig["run_id"])
    log.info("progressive comparison #%s started: %s (%s)", row["id"], trig["run_id"], ", ".join(families))
    return {"started": True, "id": row["id"], "dag_run_id": trig["run_id"], "url": trig["url"], "families": families}


def _minutes(seconds: float) -> str:
    m = max(1, round(seconds / 60))
    return f"{m} min" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def describe(settings: Settings | None = None, conn: psycopg.Connection | None = None) -> dict[str, Any] | None:
    """The newest progressive comparison of the configured model, JSON-ready: state, family, percent,
    ETA (seconds, from the measured rate), version, shadow window, and the one-line ``text``; None when
    none was started."""
    s = settings or get_settings()
    if conn is None:
        with db.connect(s) as c:
            return describe(s, c)
    row = store.latest(conn, s.model_name)
    if row is None:
        return None
    state, fams = row["state"], list(row["families"])
    out: dict[str, Any] = {
        "id": row["id"],
        "state": state,
        "families": fams,
        "profile": row["profile"],
        "family": row["family"],
        "dag_run_id": row["dag_run_id"],
        "version": row["version"],
        "percent": None,
        "eta_seconds": None,
        "reason": row["reason"],
    }
    who = "transformer" if "transformer" in fams else "+".join(fams)
    if state in RUNNING:
        total, done = float(row["total"]), float(row["done"])
        if total > 0:
            out["percent"] = int(100 * done / total)
        started: datetime | None = row["training_started_at"]
        if started is not None and total > 0 and done > 0:
            elapsed = max((row["now"] - started).total_seconds(), 1.0)
            rate = min(1.0, done / elapsed)  # budget seconds per wall second (a budget is wall time)
            out["eta_seconds"] = round((total - done) / rate)
        pct = f", {out['percent']}%" if out["percent"] is not None else ""
        eta = f" (ETA {_minutes(out['eta_seconds'])})" if out["eta_seconds"] else ""
        if state == "queued":
            text = f"{who} queued"
        elif state == "evaluating":
            text = f"{who} evaluating on the held-out split"
        elif row["family"] in (None, who):
            text = f"{who} training{pct}{eta}"
        else:
            text = f"{who} comparison, {row['family']} searching{pct}{eta}"
    elif state == "shadow":
        sh = store.shadow_outcome(conn, int(row["shadow_id"])) if row["shadow_id"] else None
        out["shadow"] = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in (sh or {}).items()}
        if sh is None or sh["status"] == "running":
            n, req = (sh or {}).get("n", 0), (sh or {}).get("window_requests", 0)
            text = f"{who} v{row['version']} passed the gate, in shadow ({n}/{req} requests)"
        else:
            out["state"] = sh["status"]
            text = f"{who} v{row['version']} {sh['status']} after its shadow window"
    elif state == "promoted":
        text = f"{who} v{row['version']} promoted"
    elif state == "rejected":
        text = f"{who} v{row['version']} not promoted by the gate" if row["version"] else f"{who} not promoted"
    else:
        text = f"{who} failed: {row['reason'] or ''}"[:200]
    out["text"] = text
    return out


def status_line(settings: Settings | None = None) -> str | None:
    """``champion: tfidf_lr v2; challenger: transformer training, 35% (ETA 40 min)`` (None: no champion)."""
    s = settings or get_settings()
    tracking.configure(s)
    champ = registry.champion(s)
    if champ is None:
        return None
    with db.connect(s) as conn:
        fam = champion_family(conn, champ.run_id) if champ.run_id else None
        ch = describe(s, conn)
    line = f"champion: {fam or '?'} v{champ.version}"
    if ch is not None:
        line += f"; challenger: {ch['text']}"
    return line


def champion_family(conn: psycopg.Connection, run_id: str) -> str | None:
    rec = training_runs_store.run_record(conn, run_id)
    return rec["family"] if rec else None
