"""``status``: what runs, with pid, URL, health, restarts and crash loops (``make status``)."""

from __future__ import annotations

from typing import Any

from ml.platform import db, progressive
from ml.platform.config import Settings, get_settings
from ml.platform.startup.readiness import http_get
from ml.platform.startup.services import safe_url, services
from ml.platform.startup.supervision import supervisor_service
from ml.platform.startup.usage import platform_roots, usage, usage_text
from ml.platform.supervisor import read_state, say


def status(settings: Settings | None = None, quiet: bool = False, interval: float | None = None) -> dict[str, Any]:
    """What runs: {supervisor: {...}, services: {name: {running, pid, url, healthy, log,
    restarts, last_exit, crash_loop, state, processes, cpu_percent, rss_mib}}, postgres: {...}}.
    ``cpu_percent``: % of one core used by the service's processes over ``interval`` seconds
    (``ml.platform.startup.usage``; default 1 s when printing, else 0: not sampled)."""
    s = settings or get_settings()
    interval = (0.0 if quiet else 1.0) if interval is None else interval
    state = read_state(s)
    sup = state.get("services", {}) if state else {}
    out: dict[str, Any] = {
        "supervisor": {
            "running": state is not None,
            "pid": state.get("pid") if state else None,
            "log": str(supervisor_service().log_file(s)),
            "policy": state.get("policy") if state else None,
        },
        "services": {},
    }
    for name, svc in services(s).items():
        pid = svc.pid(s)
        healthy = None
        # the API: readiness (database answers, a model is loaded, the prediction log has room); with API_REPLICAS
        # >= 2, "api" is HAProxy (ready when one instance is) and api-1..api-N each instance, probed directly
        probe = f"{svc.url}/health/ready" if name == "api" or name.startswith("api-") else svc.health
        if pid and probe:
            try:
                healthy = http_get(probe, timeout=2).status_code == 200
            except Exception:  # noqa: BLE001
                healthy = False
        x = sup.get(name) or {}
        out["services"][name] = {
            "running": bool(pid),
            "pid": pid,
            "url": svc.url,
            "healthy": healthy,
            "log": str(svc.log_file(s)),
            "supervised": name in (state or {}).get("wanted", []),
            "state": x.get("state"),
            "restarts": x.get("restarts", 0),
            "last_exit": x.get("last_exit"),
            "last_exit_at": x.get("last_exit_at"),
            "crash_loop": bool(x.get("crash_loop")),
            "error": x.get("error"),
        }

    if s.database_url:
        out["postgres"] = {"url": safe_url(db.libpq_url(s.database_url)), "embedded": False}
    else:
        url_file = db.embedded_url_path(s)
        url = url_file.read_text().strip() if url_file.exists() else None
        out["postgres"] = {"url": url, "embedded": True, "running": bool(url and db._is_reachable(url))}
    out["models"] = _models_line(s, out)
    used = usage(platform_roots(s, out), interval) if interval > 0 else {}
    for name, u in used.items():
        (out if name in ("supervisor", "postgres") else out["services"])[name].update(u)
    if not quiet:
        sv = out["supervisor"]
        say(
            f"{'supervisor':22s} {'running' if sv['running'] else 'NOT RUNNING (crashed services are not restarted)':24s} "
            f"{('pid %s' % sv['pid']) if sv['pid'] else '':46s} {usage_text(sv)}"
        )
        for name, x in out["services"].items():
            if x["crash_loop"]:
                state_txt = "CRASH LOOP (gave up)"
            elif x["running"]:
                state_txt = "running (not answering)" if x["healthy"] is False else "running"
            elif x["state"] == "backoff":
                state_txt = "restarting (backoff)"
            else:
                state_txt = "stopped"
            extra = f"restarts {x['restarts']}" + (f", last exit: {x['last_exit']}" if x["last_exit"] else "")
            say(
                f"{name:22s} {state_txt:24s} {('pid %s' % x['pid']) if x['pid'] else '':10s} {x['url'] or '':24s} "
                f"{extra:24s} {usage_text(x)}"
            )
            if x["crash_loop"] and x["error"]:
                say(f"{'':22s} {x['error']}")
        pg = out["postgres"]
        pg_state = "external" if not pg["embedded"] else ("running" if pg.get("running") else "stopped")
        say(f"{'postgres':22s} {pg_state:24s} {'':10s} {pg['url'] or '':49s} {usage_text(pg)}")
        if used:
            n, cpu = sum(u["processes"] for u in used.values()), sum(u["cpu_percent"] for u in used.values())
            rss = sum(u["rss_mib"] for u in used.values())
            say(f"{'all':22s} {n} processes: CPU {cpu:.1f}% of one core over {interval:g} s, RSS {rss:,} MiB")
        if out["models"]:
            say(f"{'models':22s} {out['models']}")
    return out


def _models_line(settings: Settings, out: dict[str, Any]) -> str | None:
    """``champion: tfidf_lr v2; challenger: transformer training, 35% (ETA 40 min)`` when MLflow and the
    database answer (``ml.platform.progressive.status_line``); None otherwise."""
    if not out["services"].get("mlflow", {}).get("running") or out["postgres"].get("running") is False:
        return None
    try:
        return progressive.status_line(settings)
    except Exception as e:  # noqa: BLE001 - status reports what it can
        return f"(champion unknown: {type(e).__name__}: {str(e)[:120]})"
