"""Airflow's REST API as the platform uses it: the generated login (the simple auth
manager's password file), a JWT, and triggering + following the training DAG.

The simple auth manager reads passwords from
``var/airflow/simple_auth_manager_passwords.json.generated``; ``ml services up`` writes a
random password for the configured user there (mode 0600) before the first start, so it can
print it; afterwards the file is the source of truth (edit it and restart to change it).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from ml.platform.config import Settings, get_settings
from ml.platform.orchestration import SIMPLE_AUTH_MANAGER_PASSWORDS_FILE, SIMPLE_AUTH_MANAGER_USERS, airflow_home
from ml.platform.supervisor import ServiceError, say

TRAINING_DAG = "sentiment_training"
#: task-instance states after which a task runs no more (progress: tasks done / total)
FINISHED_TASK_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})


def airflow_user(settings: Settings | None = None) -> str:
    """The (first) user of Airflow's simple auth manager, as ``airflow_env`` configures it."""
    return SIMPLE_AUTH_MANAGER_USERS.split(",")[0].split(":")[0].strip()


def airflow_password_file(settings: Settings | None = None) -> Path:
    return airflow_home(settings or get_settings()) / SIMPLE_AUTH_MANAGER_PASSWORDS_FILE


def airflow_credentials(settings: Settings | None = None, create: bool = True) -> tuple[str, str | None]:
    """(username, password) for the Airflow UI/API. With ``create``, a random password is
    generated for the user and stored (0600) when the passwords file has none, exactly where
    Airflow's simple auth manager reads it; Airflow then uses it instead of generating one."""
    settings = settings or get_settings()
    user = airflow_user(settings)
    path = airflow_password_file(settings)
    passwords: dict[str, str] = {}
    if path.exists():
        path.chmod(0o600)  # Airflow itself writes this file world-readable when it generates it
        try:
            passwords = json.loads(path.read_text() or "{}")
        except json.JSONDecodeError:
            passwords = {}
    if user in passwords:
        return user, passwords[user]
    if not create:
        return user, None
    alphabet = "abcdefghkmnpqrstuvwxyzABCDEFGHKMNPQRSTUVWXYZ23456789"
    passwords[user] = "".join(secrets.choice(alphabet) for _ in range(16))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(passwords) + "\n")
    return user, passwords[user]


def airflow_token(settings: Settings | None = None) -> str:
    """A JWT for Airflow's REST API (``POST /auth/token``)."""
    settings = settings or get_settings()
    user, password = airflow_credentials(settings, create=False)
    if password is None:
        raise ServiceError(f"no Airflow password for {user!r} in {airflow_password_file(settings)}")
    r = httpx.post(
        f"http://{settings.host}:{settings.airflow_port}/auth/token",
        json={"username": user, "password": password},
        timeout=10,
    )
    if r.status_code not in (200, 201):
        raise ServiceError(f"Airflow login as {user!r} failed: HTTP {r.status_code} {r.text[:200]}")
    return r.json()["access_token"]


def airflow_api(settings: Settings, method: str, path: str, token: str, **kw: Any) -> httpx.Response:
    r = httpx.request(
        method,
        f"http://{settings.host}:{settings.airflow_port}/api/v2{path}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        **kw,
    )
    return r


def trigger_dag(
    dag_id: str, conf: dict[str, Any], settings: Settings | None = None, note: str | None = None
) -> dict[str, Any]:
    """Trigger one run of ``dag_id`` with ``conf`` (the API's manual retraining); no waiting. Raises
    ServiceError when Airflow refuses, httpx errors when it cannot be reached."""
    settings = settings or get_settings()
    token = airflow_token(settings)
    r = airflow_api(
        settings, "POST", f"/dags/{dag_id}/dagRuns", token, json={"logical_date": None, "conf": conf, "note": note}
    )
    if r.status_code not in (200, 201):
        raise ServiceError(f"triggering {dag_id} failed: HTTP {r.status_code} {r.text[:300]}")
    run_id = r.json()["dag_run_id"]
    return {
        "dag_id": dag_id,
        "run_id": run_id,
        "url": f"http://{settings.host}:{settings.airflow_port}/dags/{dag_id}/runs/{run_id}",
    }


def trigger_training(
    data_path: Path,
    settings: Settings | None = None,
    wait: bool = True,
    dag_id: str = TRAINING_DAG,
    poll: float = 5.0,
    dag_timeout: float = 180,
    run_timeout: float = 6 * 3600,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Trigger ``dag_id`` with ``{"data_path": ...}`` through Airflow's REST API and, with
    ``wait``, follow it to the end, printing the task states (or, given ``progress``, telling it
    ``(tasks finished, tasks, "running: <task ids>")`` at each poll). Raises ServiceError on failure."""
    settings = settings or get_settings()
    token = airflow_token(settings)
    # the DAG must have been parsed by the dag-processor
    deadline = time.monotonic() + dag_timeout
    while True:
        r = airflow_api(settings, "GET", f"/dags/{dag_id}", token)
        if r.status_code == 200:
            dag = r.json()
            break
        if time.monotonic() > deadline:
            errs = airflow_api(settings, "GET", "/importErrors", token)
            detail = ""
            if errs.status_code == 200:
                for e in errs.json().get("import_errors", []):
                    detail += f"\n    {e.get('filename')}: {str(e.get('stack_trace', ''))[-600:]}"
            raise ServiceError(
                f"DAG {dag_id!r} is not known to Airflow after {dag_timeout:.0f}s (HTTP {r.status_code}). "
                f"Import errors:{detail or ' none reported'}\n  dag-processor log: {settings.logs_dir / 'airflow-dag-processor.log'}"
            )
        time.sleep(2)
    if dag.get("is_paused"):
        airflow_api(settings, "PATCH", f"/dags/{dag_id}", token, json={"is_paused": False}).raise_for_status()
        say(f"      unpaused DAG {dag_id}")
    body = {
        "logical_date": None,
        "conf": {"data_path": str(Path(data_path).resolve())},
        "note": "triggered by `ml services up`",
    }
    r = airflow_api(settings, "POST", f"/dags/{dag_id}/dagRuns", token, json=body)
    if r.status_code not in (200, 201):
        raise ServiceError(f"triggering {dag_id} failed: HTTP {r.status_code} {r.text[:300]}")
    run_id = r.json()["dag_run_id"]
    ui = f"http://{settings.host}:{settings.airflow_port}/dags/{dag_id}/runs/{run_id}"
    say(f"      triggered {dag_id} run {run_id}\n      follow it at {ui}")
    result = {"dag_id": dag_id, "run_id": run_id, "url": ui, "state": "queued"}
    if not wait:
        return result
    started = time.monotonic()
    last_line = ""
    last_print = 0.0
    while True:
        r = airflow_api(settings, "GET", f"/dags/{dag_id}/dagRuns/{run_id}", token)
        if r.status_code == 401:  # token expired on a very long run
            token = airflow_token(settings)
            continue
        r.raise_for_status()
        state = r.json()["state"]
        tis = airflow_api(settings, "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", token)
        tasks = tis.json().get("task_instances", []) if tis.status_code == 200 else []
        line = ", ".join(
            f"{t['task_id']}={t.get('state') or 'none'}"
            for t in sorted(tasks, key=lambda t: t.get("start_date") or "~")
        )
        now = time.monotonic()
        if progress is not None:
            finished = sum(t.get("state") in FINISHED_TASK_STATES for t in tasks)
            running = [t["task_id"] for t in tasks if t.get("state") == "running"]
            progress(finished, len(tasks), f"running: {', '.join(running)}" if running else f"run {state}")
        elif line != last_line or now - last_print > 30:
            say(f"      [{now - started:5.0f}s] run {state}: {line or '(no tasks yet)'}")
            last_line, last_print = line, now
        if state in ("success", "failed"):
            break
        if now - started > run_timeout:
            raise ServiceError(f"{dag_id} run {run_id} still {state} after {run_timeout:.0f}s; see {ui}")
        time.sleep(poll)
    result["state"] = state
    result["seconds"] = round(time.monotonic() - started, 1)
    if state != "success":
        failed = [t for t in tasks if t.get("state") == "failed"]
        others = [t for t in tasks if t.get("state") not in ("success", "failed")]
        logs = settings.logs_dir / "airflow" / f"dag_id={dag_id}" / f"run_id={run_id}"
        lines = []
        for t in failed:
            log = logs / f"task_id={t['task_id']}" / f"attempt={t.get('try_number') or 1}.log"
            lines.append(f"  task {t['task_id']} failed: {_task_error(log)}\n    log: {log}")
        if others:
            lines.append("  not run: " + ", ".join(f"{t['task_id']} ({t.get('state')})" for t in others))
        raise ServiceError(f"training run {run_id} FAILED\n" + "\n".join(lines) + f"\n  UI: {ui}")
    return result


def _task_error(log: Path) -> str:
    """The exception recorded in an Airflow 3 task log (JSON lines), best effort."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(log not found)"
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("level") == "error":
            details = rec.get("error_detail") or []
            if details:
                d = details[-1]
                return f"{d.get('exc_type')}: {str(d.get('exc_value'))[:500]}"
            return str(rec.get("event"))[:500]
    return "(no error recorded in the log)"
