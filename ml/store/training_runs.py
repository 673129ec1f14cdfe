"""``training_runs``, ``model_events`` and ``comparisons``: what trained, what was decided."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from ml.store._rows import returned


def _json(v: Any) -> str | None:
    return None if v is None else json.dumps(v, default=str)


# ---------------------------------------------------------------- training_runs
def insert_run(
    conn: psycopg.Connection,
    run_id: str,
    snapshot_hash: str,
    family: str,
    params: dict[str, Any],
    git_commit: str | None,
    airflow_run_id: str | None,
    parent_run_id: str | None = None,
) -> None:
    """Record a trained candidate (idempotent per run id: a retried task records it once)."""
    conn.execute(
        "INSERT INTO training_runs (run_id, snapshot_hash, family, params, git_commit, airflow_run_id, parent_run_id)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run_id) DO NOTHING",
        (run_id, snapshot_hash, family, _json(params), git_commit, airflow_run_id, parent_run_id),
    )


def set_evaluated(
    conn: psycopg.Connection, run_id: str, metrics: dict[str, Any], champion_metrics: dict[str, Any] | None
) -> None:
    conn.execute(
        "UPDATE training_runs SET metrics = %s, champion_metrics = %s, status = 'evaluated', updated_at = now()"
        " WHERE run_id = %s",
        (_json(metrics), _json(champion_metrics), run_id),
    )


def set_registered(conn: psycopg.Connection, run_id: str, version: int) -> None:
    conn.execute(
        "UPDATE training_runs SET model_version = %s, status = 'registered', updated_at = now() WHERE run_id = %s",
        (version, run_id),
    )


def set_behaviour(conn: psycopg.Connection, run_id: str, result: dict[str, Any]) -> None:
    conn.execute(
        "UPDATE training_runs SET behaviour = %s, updated_at = now() WHERE run_id = %s", (_json(result), run_id)
    )


def set_decision(conn: psycopg.Connection, run_id: str, promoted: bool, reason: str) -> None:
    conn.execute(
        "UPDATE training_runs SET status = %s, decision = %s, updated_at = now() WHERE run_id = %s",
        ("promoted" if promoted else "rejected", reason, run_id),
    )


def set_gate(conn: psycopg.Connection, run_id: str, gate: Mapping[str, Any] | None) -> None:
    """The promotion gate's evidence (``ml.evaluation.gate.compare``; at promotion with its decision added)."""
    conn.execute("UPDATE training_runs SET gate = %s, updated_at = now() WHERE run_id = %s", (_json(gate), run_id))


def run_gate(conn: psycopg.Connection, run_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT gate FROM training_runs WHERE run_id = %s", (run_id,)).fetchone()
    return None if row is None else row[0]


@dataclass(frozen=True)
class GateInputs:
    """What the promotion gate reads of a candidate."""

    metrics: dict[str, Any] | None
    champion_metrics: dict[str, Any] | None
    version: int | None
    behaviour: dict[str, Any] | None
    gate: dict[str, Any] | None = None


def gate_inputs(conn: psycopg.Connection, run_id: str) -> GateInputs | None:
    row = conn.execute(
        "SELECT metrics, champion_metrics, model_version, behaviour, gate FROM training_runs WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    return None if row is None else GateInputs(*row)


def run_record(conn: psycopg.Connection, run_id: str) -> dict[str, Any] | None:
    """The stored record of one training run (model card, lineage)."""
    row = conn.execute(
        "SELECT run_id, snapshot_hash, family, params, status, decision, git_commit, airflow_run_id, metrics,"
        " behaviour, model_version, created_at FROM training_runs WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    if row is None:
        return None
    keys = (
        "run_id",
        "snapshot_hash",
        "family",
        "params",
        "status",
        "decision",
        "git_commit",
        "airflow_run_id",
        "metrics",
        "behaviour",
        "model_version",
        "created_at",
    )
    return dict(zip(keys, row, strict=True))


# ---------------------------------------------------------------- promotion lock + model_events
def lock_promotions(conn: psycopg.Connection, model_name: str) -> None:
    """One promoter per registered model until this transaction ends (training, retraining, rollback)."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('promote:' || %s))", (model_name,))


def insert_event(
    conn: psycopg.Connection, model_name: str, version: int, previous_version: int | None, event: str, reason: str
) -> None:
    conn.execute(
        "INSERT INTO model_events (model_name, version, previous_version, event, reason) VALUES (%s,%s,%s,%s,%s)",
        (model_name, version, previous_version, event, reason),
    )


def champion_history(conn: psycopg.Connection, model_name: str) -> list[tuple[int, int | None, str]]:
    """(version, previous_version, event) of every promotion and rollback, oldest first."""
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT version, previous_version, event FROM model_events"
            " WHERE model_name = %s AND event IN ('promoted', 'rollback') ORDER BY id",
            (model_name,),
        ).fetchall()
    ]


def recent_events(
    conn: psycopg.Connection, model_name: str, limit: int = 10, version: int | None = None
) -> list[dict[str, Any]]:
    """The newest events of the model (of one version when given), newest first."""
    rows = conn.execute(
        "SELECT id, event, version, previous_version, reason, created_at FROM model_events"
        " WHERE model_name = %s AND (%s::int IS NULL OR version = %s::int) ORDER BY id DESC LIMIT %s",
        (model_name, version, version, limit),
    ).fetchall()
    return [
        {"id": r[0], "event": r[1], "version": r[2], "previous_version": r[3], "reason": r[4], "created_at": r[5]}
        for r in rows
    ]


# ---------------------------------------------------------------- artifact digests (what the API may serve)
def set_artifact_digest(conn: psycopg.Connection, run_id: str, digest: str) -> None:
    """The sha256 of the registered version's artifacts, recorded at registration."""
    conn.execute("UPDATE training_runs SET artifact_sha256 = %s WHERE run_id = %s", (digest, run_id))


def run_artifact_digest(conn: psycopg.Connection, run_id: str) -> str | None:
    row = conn.execute("SELECT artifact_sha256 FROM training_runs WHERE run_id = %s", (run_id,)).fetchone()
    return None if row is None else row[0]


def version_digest(conn: psycopg.Connection, model_name: str, version: int) -> str | None:
    """The digest recorded when this version last became champion (promotion or rollback)."""
    row = conn.execute(
        "SELECT artifact_sha256 FROM model_events WHERE model_name = %s AND version = %s"
        " AND event IN ('promoted', 'rollback') AND artifact_sha256 IS NOT NULL ORDER BY id DESC LIMIT 1",
        (model_name, version),
    ).fetchone()
    return None if row is None else row[0]


def set_event_digest(conn: psycopg.Connection, model_name: str, version: int, digest: str) -> None:
    """Stamp the digest on the promotion / rollback event just inserted for this version."""
    conn.execute(
        "UPDATE model_events SET artifact_sha256 = %s WHERE id = (SELECT max(id) FROM model_events"
        " WHERE model_name = %s AND version = %s AND event IN ('promoted', 'rollback'))",
        (digest, model_name, version),
    )


def serving_event(conn: psycopg.Connection, model_name: str) -> tuple[int, str | None] | None:
    """(version, artifact digest) of the model's latest promotion or rollback: the one version the
    platform put behind the alias; None when there is none."""
    row = conn.execute(
        "SELECT version, artifact_sha256 FROM model_events WHERE model_name = %s"
        " AND event IN ('promoted', 'rollback') ORDER BY id DESC LIMIT 1",
        (model_name,),
    ).fetchone()
    return None if row is None else (int(row[0]), row[1])


# ---------------------------------------------------------------- comparisons
def upsert_comparison(
    conn: psycopg.Connection,
    *,
    parent_run_id: str,
    snapshot_hash: str,
    profile: str,
    families: list[str],
    selection_metric: str,
    table: list[dict[str, Any]],
    markdown: str,
    html: str,
    chart_path: str,
    winner_family: str,
    winner_run_id: str,
    airflow_run_id: str | None,
) -> int:
    return int(
        returned(
            conn.execute(
                "INSERT INTO comparisons (parent_run_id, snapshot_hash, profile, families, selection_metric, table_json,"
                " markdown, html, chart_path, winner_family, winner_run_id, airflow_run_id)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
                " ON CONFLICT (parent_run_id) DO UPDATE SET table_json = EXCLUDED.table_json,"
                " markdown = EXCLUDED.markdown, html = EXCLUDED.html, chart_path = EXCLUDED.chart_path,"
                " winner_family = EXCLUDED.winner_family, winner_run_id = EXCLUDED.winner_run_id RETURNING id",
                (
                    parent_run_id,
                    snapshot_hash,
                    profile,
                    families,
                    selection_metric,
                    _json(table),
                    markdown,
                    html,
                    chart_path,
                    winner_family,
                    winner_run_id,
                    airflow_run_id,
                ),
            ).fetchone(),
            "comparisons upsert",
        )[0]
    )


def comparison_winner(conn: psycopg.Connection, comparison_id: int) -> tuple[str | None, str] | None:
    """(winner run id, parent run id) of a comparison; None when it does not exist."""
    row = conn.execute(
        "SELECT winner_run_id, parent_run_id FROM comparisons WHERE id = %s", (comparison_id,)
    ).fetchone()
    return None if row is None else (row[0], row[1])


def record_winner_version(conn: psycopg.Connection, run_id: str, version: int) -> list[str]:
    """The registry version of a comparison's winner, on every comparison that chose this run.
    Returns those comparisons' parent run ids."""
    rows = conn.execute(
        "UPDATE comparisons SET winner_version = %s WHERE winner_run_id = %s RETURNING parent_run_id", (version, run_id)
    ).fetchall()
    return [r[0] for r in rows]


def latest_comparison(conn: psycopg.Connection) -> dict[str, Any] | None:
    """The newest comparison with its winner's gate status and decision."""
    row = conn.execute(
        "SELECT c.id, c.created_at, c.parent_run_id, c.snapshot_hash, c.profile, c.families, c.selection_metric,"
        " c.table_json, c.markdown, c.html, c.chart_path, c.winner_family, c.winner_run_id, c.winner_version,"
        " c.airflow_run_id, r.status, r.decision"
        " FROM comparisons c LEFT JOIN training_runs r ON r.run_id = c.winner_run_id"
        " ORDER BY c.id DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    keys = (
        "id",
        "created_at",
        "parent_run_id",
        "snapshot_hash",
        "profile",
        "families",
        "selection_metric",
        "table",
        "markdown",
        "html",
        "chart_path",
        "winner_family",
        "winner_run_id",
        "winner_version",
        "airflow_run_id",
        "status",
        "decision",
    )
    return dict(zip(keys, row, strict=True))
