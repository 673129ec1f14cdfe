"""No server paths to anonymous callers (issue 21, item 8): ``/models/comparison`` (``chart_path``),
``/batches`` and ``/batches/{id}`` (``input_path``, ``output_path``, the summary's ``input``/``output``)
answer without them unless the key has ``admin``, as the lineage does; the chart stays reachable
through its route. Real app and PostgreSQL (the session's database), real keys. Airflow's log servers
are not started under ``make up`` (they would listen on every interface)."""

from __future__ import annotations

import json
import subprocess
import uuid

import psycopg
import pytest
from api_helpers import bearer, make_key, running_app, settings_with

from ml.data.snapshots import validate_and_snapshot
from ml.platform.startup.commands import command

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32  # enough for a FileResponse


@pytest.fixture(scope="module")
def rows(platform_env, tweets_csv, tmp_path_factory):
    """A batch and a comparison of this module's own, with server paths in every field that holds one."""
    folder = tmp_path_factory.mktemp("private-server-folder")
    chart = folder / "chart.png"
    chart.write_bytes(PNG)
    snap = validate_and_snapshot(tweets_csv, platform_env)  # a comparison names its snapshot
    batch_id = f"b-{uuid.uuid4().hex[:16]}"
    input_path, output_path = str(folder / "inbox" / "input.csv"), str(folder / "batches" / "scored.parquet")
    summary = {"batch_id": batch_id, "input": input_path, "output": output_path, "rows_read": 10, "rows_scored": 10}
    parent = f"paths-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(platform_env.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO batches (id, input_path, input_format, input_sha256, output_path, status, model_name,"
            " model_version, rows_read, rows_scored, summary, finished_at)"
            " VALUES (%s, %s, 'csv', %s, %s, 'done', 'm', 1, 10, 10, %s, now())",
            (batch_id, input_path, uuid.uuid4().hex * 2, output_path, json.dumps(summary)),
        )
        cid = conn.execute(
            "INSERT INTO comparisons (parent_run_id, snapshot_hash, profile, families, selection_metric, table_json,"
            " markdown, html, chart_path, winner_family, winner_run_id)"
            " VALUES (%s, %s, 'quick', %s, 'accuracy', '[]', '', '<table></table>', %s, 'tfidf_lr', %s) RETURNING id",
            (parent, snap.hash, ["tfidf_lr"], str(chart), parent),
        ).fetchone()[0]
        try:
            yield {"batch": batch_id, "comparison": cid, "folder": str(folder)}
        finally:
            conn.execute("DELETE FROM comparisons WHERE id = %s", (cid,))
            conn.execute("DELETE FROM batches WHERE id = %s", (batch_id,))


@pytest.fixture(scope="module")
def client(platform_env):
    with running_app(settings_with(platform_env, model_name=f"paths-{uuid.uuid4().hex[:6]}")) as c:
        yield c


def test_anonymous_and_keyed_callers_without_admin_get_no_paths(client, rows, platform_env):
    folder = rows["folder"]
    for headers in ({}, bearer(make_key(platform_env, "predict", "review"))):
        listed = client.get("/batches", headers=headers)
        assert listed.status_code == 200
        mine = [b for b in listed.json() if b["id"] == rows["batch"]]
        assert mine and mine[0]["input_name"] == "input.csv" and mine[0]["redacted"] is True
        one = client.get(f"/batches/{rows['batch']}", headers=headers)
        assert one.status_code == 200 and one.json()["rows_scored"] == 10
        comp = client.get("/models/comparison", headers=headers)
        assert comp.status_code == 200 and comp.json()["id"] == rows["comparison"]
        assert comp.json()["chart_url"] == "/models/comparison/chart.png"
        for r in (listed, one, comp):
            assert folder not in r.text and "input_path" not in r.text and "chart_path" not in r.text, r.text[:500]
            assert "output_path" not in r.text
        assert client.get("/models/comparison/chart.png", headers=headers).content == PNG  # still served


def test_admin_keys_still_see_the_paths(client, rows, platform_env):
    admin = bearer(make_key(platform_env, "admin"))
    mine = [b for b in client.get("/batches", headers=admin).json() if b["id"] == rows["batch"]]
    assert mine[0]["input_path"].startswith(rows["folder"])
    one = client.get(f"/batches/{rows['batch']}", headers=admin).json()
    assert one["output_path"].startswith(rows["folder"]) and one["summary"]["input"].startswith(rows["folder"])
    comp = client.get("/models/comparison", headers=admin).json()
    assert comp["chart_path"].startswith(rows["folder"])


def test_make_up_starts_no_log_server(platform_env):
    """Airflow 3.3's log servers bind every interface (airflow.utils.serve_logs.core runs uvicorn with
    host "", and there is no [logging] host setting): ``make up`` runs the scheduler and the triggerer
    with ``--skip-serve-logs`` (the api-server reads the task logs from the shared log folder), so
    nothing listens on 8793/8794. The flag is the real CLI's."""
    for name in ("airflow-scheduler", "airflow-triggerer"):
        _, argv, env = command(name, platform_env)
        assert "--skip-serve-logs" in argv, argv
        out = subprocess.run([*argv[:2], "--help"], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "--skip-serve-logs" in out.stdout, out.stderr[-500:]
    for name in ("airflow-api-server",):
        _, argv, _ = command(name, platform_env)
        assert argv[argv.index("--host") + 1] == platform_env.host
