"""Reads for lineage and the model card: a prediction, the snapshot chain, the retraining that
built a snapshot and the reports it consumed. Rows come back as dicts keyed by column."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from ml.store._rows import many, one


def prediction(conn: psycopg.Connection, prediction_id: uuid.UUID) -> dict[str, Any] | None:
    return one(
        conn,
        "SELECT id, created_at, text, label, p_positive, model_name, model_version, source, batch_id"
        " FROM predictions WHERE id = %s",
        (prediction_id,),
    )


def training_run(conn: psycopg.Connection, run_id: str) -> dict[str, Any] | None:
    return one(
        conn,
        "SELECT run_id, snapshot_hash, family, params, status, decision, git_commit, airflow_run_id,"
        " behaviour, created_at FROM training_runs WHERE run_id = %s",
        (run_id,),
    )


def events_of_version(conn: psycopg.Connection, model_name: str, version: int) -> list[dict[str, Any]]:
    """Every event that made this version champion or replaced it, oldest first."""
    return many(
        conn,
        "SELECT id, event, version, previous_version, reason, created_at FROM model_events"
        " WHERE model_name = %s AND (version = %s OR previous_version = %s) ORDER BY id",
        (model_name, version, version),
    )


def snapshot(conn: psycopg.Connection, snapshot_hash: str) -> dict[str, Any] | None:
    return one(
        conn,
        "SELECT hash, kind, source, parent_hash, n_rows, n_positive, path, created_at"
        " FROM dataset_snapshots WHERE hash = %s",
        (snapshot_hash,),
    )


def retraining_of_snapshot(conn: psycopg.Connection, snapshot_hash: str) -> dict[str, Any] | None:
    """The (first) retraining that built this snapshot."""
    return one(
        conn,
        "SELECT id, created_at, reason, detail, trigger_key, status, n_feedback, threshold,"
        " feedback_ids, training_feedback_ids, champion_before, champion_after, run_id,"
        " candidate_version, decision, drift_report_id, airflow_run_id, trigger_airflow_run_id"
        " FROM retrainings WHERE snapshot_hash = %s ORDER BY id LIMIT 1",
        (snapshot_hash,),
    )


def reports(conn: psycopg.Connection, feedback_ids: list[int], limit: int) -> list[dict[str, Any]]:
    """The feedback reports with the texts and predictions they were about."""
    if not feedback_ids:
        return []
    return many(
        conn,
        "SELECT f.id AS feedback_id, f.prediction_id, f.correct_label, f.comment, f.reviewed,"
        " f.created_at, p.text, p.label AS predicted_label, p.model_version AS predicted_by_version"
        " FROM feedback f JOIN predictions p ON p.id = f.prediction_id WHERE f.id = ANY(%s)"
        " ORDER BY f.id LIMIT %s",
        (list(feedback_ids), limit),
    )


def feedback_on(conn: psycopg.Connection, prediction_id: uuid.UUID) -> list[dict[str, Any]]:
    return many(
        conn,
        "SELECT id AS feedback_id, correct_label, created_at FROM feedback WHERE prediction_id = %s ORDER BY id",
        (prediction_id,),
    )
