"""The Airflow UI plugin (plugins/sentiment_platform_plugin.py): Airflow's plugins manager loads it
without import errors, Airflow's own API server mounts its FastAPI app, and the app answers the
champion's model card (JSON and HTML) and the drift-report list from the test database."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from ml.platform import db
from ml.platform.orchestration import airflow_env
from ml.stages.monitoring.build import build_report

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"

PROBE = """
import json
from airflow import plugins_manager as pm
from airflow.api_fastapi.app import create_app
from fastapi.testclient import TestClient
pm.ensure_plugins_loaded()
info = {p["name"]: p for p in pm.get_plugin_info(["fastapi_apps", "external_views"])}
from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
client = TestClient(create_app(apps="core"))  # Airflow's API server app, plugins mounted by Airflow
anonymous = client.get("/sentiment-platform/model-card.json")
token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
card = client.get("/sentiment-platform/model-card.json", headers={"Authorization": f"Bearer {token}"})
print(json.dumps({"errors": pm.get_import_errors(), "plugin": info.get("sentiment_platform"),
                  "anonymous_status": anonymous.status_code,
                  "card_status": card.status_code, "card": card.json() if card.status_code == 200 else card.text},
                 default=str))
"""


@pytest.fixture(scope="module")
def champion(own_champion, tweets_csv):
    with own_champion("tweet-sentiment-plugin", tweets_csv, sample_size=300, SENTIMENT_BEHAVIOUR_CHECKS="false") as c:
        day = datetime(2024, 1, 1, tzinfo=UTC)  # an empty period: a stored report without Evidently
        report = build_report(start=day, end=day.replace(day=2))
        yield {"name": c.name, "version": c.version, "snapshot": c.snapshot, "report": report, "run_id": c.run_id}


@pytest.fixture(scope="module")
def plugin_module():
    spec = importlib.util.spec_from_file_location("sentiment_platform_plugin", PLUGINS / "sentiment_platform_plugin.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # the login itself is tested against a real Airflow api-server in tests/system/test_plugin_auth.py;
    # here the app's content is tested in process, as a logged-in viewer would get it
    mod.app.dependency_overrides[mod.require_airflow_login] = lambda: None
    return mod


def test_airflow_loads_and_mounts_the_plugin(platform_env, airflow_cli, champion):
    """``airflow_cli``: the session's Airflow metadata DB migrated, whatever ran before (the login
    check reads Airflow's ``revoked_token`` table; run first, the test failed on a missing table)."""
    env = {
        **airflow_env(platform_env),
        "SENTIMENT_MODEL_NAME": champion["name"],
        "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False",
    }
    res = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert not {k: v for k, v in out["errors"].items() if "sentiment" in k}, out["errors"]
    plugin = out["plugin"]
    assert plugin is not None, out
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == ["/sentiment-platform"]
    views = {v["url_route"]: v for v in plugin["external_views"]}
    assert views["sentiment-model-card"]["href"] == "sentiment-platform/model-card"  # relative to the UI's <base>
    assert views["sentiment-drift-reports"]["destination"] == "nav"
    assert out["anonymous_status"] == 401, out  # the plugin's views need an Airflow login
    assert out["card_status"] == 200, out["card"]
    assert out["card"]["champion"]["version"] == champion["version"]


def test_model_card_and_reports(champion, plugin_module, conn):
    client = TestClient(plugin_module.app)
    card = client.get("/model-card.json").json()
    c = card["champion"]
    assert (c["version"], c["run_id"], c["family"]) == (champion["version"], champion["run_id"], "tfidf_lr")
    assert 0.5 < c["metrics"]["accuracy"] <= 1 and c["git_commit"] and c["dataset_hash"] == champion["snapshot"].hash
    assert card["snapshot_chain"][0]["n_rows"] == champion["snapshot"].n_rows
    fb = card["feedback"]
    assert fb["reports"] == 0 and fb["threshold"] == -(-champion["snapshot"].n_rows * 5 // 1000)  # ceil(0.5%)
    page = client.get("/model-card")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert f"version {champion['version']}</b>" in page.text and "retraining threshold" in page.text

    reports = client.get("/reports")
    assert reports.status_code == 200 and champion["report"]["id"] in reports.text
    assert f"reports/{champion['report']['id']}/html" in reports.text
    html = client.get(f"/reports/{champion['report']['id']}/html")
    assert html.status_code == 200 and "No predictions in this period" in html.text
    assert "id='sentiment-verdict' data-status='empty'" in html.text
    assert "href='history'" in reports.text  # the report list links the drift history
    assert client.get("/reports/nope/html").status_code == 404
    assert any(r["id"] == champion["report"]["id"] for r in client.get("/reports.json").json())
    assert client.get("/", follow_redirects=False).headers["location"] == "model-card"


@pytest.mark.slow
def test_notifier_records_an_alert(champion, conn, airflow_cli, tmp_path, platform_env):
    """The DAGs' failure callback (airflow.sdk.BaseNotifier) fired by Airflow for a task that really
    fails: sentiment_training on a file with no usable rows, run with ``airflow dags test``."""
    sys.path.insert(0, str(PLUGINS))
    try:
        from sentiment_notifiers import PlatformAlertNotifier  # noqa: PLC0415 - plugins/ is on sys.path only for this import
    finally:
        sys.path.remove(str(PLUGINS))
    from airflow.sdk import BaseNotifier

    assert issubclass(PlatformAlertNotifier, BaseNotifier)

    def runs() -> set[str]:
        with psycopg.connect(db.libpq_url(db.airflow_db_url(platform_env))) as aconn:
            return {r[0] for r in aconn.execute("SELECT run_id FROM dag_run WHERE dag_id = 'sentiment_training'")}

    bad = tmp_path / "bad.csv"
    bad.write_text("not,a,valid\nfile,at,all\n")
    before = runs()
    res = airflow_cli(
        "dags",
        "test",
        "sentiment_training",
        "-c",
        json.dumps({"data_path": str(bad)}),
        extra_env={"SENTIMENT_MODEL_NAME": champion["name"]},
    )
    assert res.returncode != 0
    [run_id] = runs() - before
    [(msg, sev, details)] = conn.execute(
        "SELECT message, severity, details FROM alerts WHERE rule = 'dag_failure' AND model_name = %s",
        (champion["name"],),
    ).fetchall()
    assert msg.startswith(f"sentiment_training: task validate failed in run {run_id} (DataError: ") and sev == "error"
    assert "no usable rows" in msg
    assert (details["dag_id"], details["task_id"], details["run_id"], details["map_index"], details["try_number"]) == (
        "sentiment_training",
        "validate",
        run_id,
        -1,
        1,
    )
    assert details["params"]["data_path"] == str(bad)
