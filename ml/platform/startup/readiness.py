"""Readiness checks: wait until a started service answers, or fail with the log of what exited."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from ml.client import ApiError, SentimentClient
from ml.platform import airflow_client, tracking
from ml.platform.config import Settings
from ml.platform.startup.services import AIRFLOW_SERVICES, services
from ml.platform.startup.supervision import supervised
from ml.platform.supervisor import Service, ServiceError, say, tail


def http_get(url: str, timeout: float = 3.0, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(url, timeout=timeout, headers=headers)


def _check_started(names: Iterable[str], baseline: dict[str, int], settings: Settings) -> None:
    """Raise if one of ``names`` exited since ``up`` asked for it (the supervisor restarts it
    meanwhile; a start-up failure is still a failure of ``up``)."""
    st = supervised(settings)
    for name in names:
        x = st.get(name) or {}
        if x.get("restarts", 0) > baseline.get(name, 0) or x.get("state") in ("backoff", "crash-loop"):
            log = services(settings)[name].log_file(settings)
            raise ServiceError(
                f"{name} exited during start-up ({x.get('last_exit')}; the supervisor "
                f"{'gave up: crash loop' if x.get('crash_loop') else 'restarts it'}); "
                f"last lines of {log}:\n{tail(log)}"
            )


def wait_http(
    svc: Service,
    settings: Settings,
    timeout: float,
    baseline: dict[str, int],
    ready: Callable[[Any], bool] | None = None,
    describe: Callable[[Any], str] | None = None,
    companions: Iterable[str] = (),
) -> None:
    """Wait until ``svc.health`` answers 200 (and ``ready(response)``), or fail with the log
    of whichever of ``svc`` and its ``companions`` exited meanwhile."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    next_note = time.monotonic() + 15
    while time.monotonic() < deadline:
        _check_started([svc.name, *companions], baseline, settings)
        try:
            if svc.health is None:
                raise ServiceError(f"{svc.name} has no health URL")
            r = http_get(svc.health, timeout=3)
            if r.status_code == 200 and (ready is None or ready(r)):
                return
            last = f"HTTP {r.status_code}" + (f": {describe(r)}" if describe and r.status_code == 200 else "")
        except Exception as e:  # noqa: BLE001 - not up yet
            last = type(e).__name__
        if time.monotonic() > next_note:
            say(f"      ... still waiting for {svc.name} ({last})")
            next_note = time.monotonic() + 15
        time.sleep(1)
    raise ServiceError(
        f"{svc.name} did not become ready within {timeout:.0f}s ({last}); "
        f"last lines of {svc.log_file(settings)}:\n{tail(svc.log_file(settings))}"
    )


def wait_mlflow(settings: Settings, baseline: dict[str, int], timeout: float = 120) -> str:
    svc = services(settings)["mlflow"]
    wait_http(svc, settings, timeout, baseline)
    url = svc.url
    if url is None:
        raise ServiceError(f"{svc.name} has no URL")
    # /health is exempt from MLflow's host validation: check a real API call as well
    r = http_get(
        f"{url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10, headers=_mlflow_auth_header(settings)
    )
    if r.status_code != 200:
        raise ServiceError(f"MLflow answers /health but its API refused a request: HTTP {r.status_code} {r.text[:200]}")
    (settings.run_dir / "mlflow.url").write_text(url + "\n")
    return url


def _mlflow_auth_header(settings: Settings) -> dict[str, str]:
    """HTTP basic auth of the platform's MLflow login (``var/mlflow/credentials.json``), if any."""
    creds = tracking.mlflow_credentials(settings) if settings.mlflow_auth else None
    if not creds:
        return {}
    token = base64.b64encode(f"{creds['username']}:{creds['password']}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _airflow_health_ready(r: httpx.Response) -> bool:
    body = r.json()
    return all(
        (body.get(k) or {}).get("status") == "healthy"
        for k in ("metadatabase", "scheduler", "triggerer", "dag_processor")
    )


def _airflow_health_describe(r: httpx.Response) -> str:
    try:
        return ", ".join(f"{k}={(v or {}).get('status')}" for k, v in r.json().items())
    except Exception:  # noqa: BLE001
        return r.text[:100]


def wait_airflow(settings: Settings, baseline: dict[str, int], timeout: float = 180) -> None:
    svc = services(settings)["airflow-api-server"]
    wait_http(
        svc,
        settings,
        timeout,
        baseline,
        ready=_airflow_health_ready,
        describe=_airflow_health_describe,
        companions=[n for n in AIRFLOW_SERVICES if n != svc.name],
    )
    airflow_client.airflow_token(settings)  # the login works


def wait_serving(
    settings: Settings, version: int, baseline: dict[str, int], timeout: float = 180, streak: int = 5
) -> None:
    """Wait until the API serves champion ``version``: ``streak`` answers of ``GET /model`` in a
    row name it (each uvicorn worker loads the champion on its own; consecutive answers come from
    whichever worker the kernel picks). A champion the API refuses (no promotion event, a digest
    that does not match, an artifact that does not load) fails with the API's own reason."""
    svc = services(settings)["api"]
    if svc.url is None:
        raise ServiceError("api has no URL")
    deadline = time.monotonic() + timeout
    in_a_row, last = 0, "no answer"
    with SentimentClient(svc.url, timeout=5) as api:  # the same typed client users have (ml/client.py)
        while time.monotonic() < deadline:
            _check_started([svc.name], baseline, settings)
            try:
                served = api.model().get("version")
                last = f"version {served}"
            except ApiError as e:
                served, last = None, f"HTTP {e.status}"
            except Exception as e:  # noqa: BLE001 - not answering yet
                served, last = None, type(e).__name__
            in_a_row = in_a_row + 1 if served == version else 0
            if in_a_row >= streak:
                return
            time.sleep(0.2 if in_a_row else 1)
        reason = ""
        try:
            reason = api.health()["model"].get("last_error") or ""
        except Exception:  # noqa: BLE001 - the log below says more
            pass
    raise ServiceError(
        f"the API did not serve champion version {version} within {timeout:.0f}s (it answers {last}"
        f"{'; its last model error: ' + reason if reason else ''}); last lines of {svc.log_file(settings)}:\n"
        f"{tail(svc.log_file(settings))}"
    )
