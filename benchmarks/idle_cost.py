"""What the idle platform costs, per process, and what an authenticated MLflow call costs (README "Security").

Starts the whole platform as `make up` does (``ml services up --no-train``: embedded PostgreSQL, the
supervisor, MLflow with basic auth, Airflow's four components, the API) on free ports with a var/ of its own,
once per MLflow login-cache setting (``SENTIMENT_MLFLOW_AUTH_CACHE_SECONDS``; 0 = a PBKDF2 check on every
request, as before), lets it settle, then measures each service's CPU (its process tree, % of one core)
over ``--seconds`` and its RSS, and the median of 20 authenticated MLflow calls against 20 calls of
``/health`` on the same server. Everything it starts is stopped at the end (benchmarks/_setup.py).

    python benchmarks/idle_cost.py --seconds 60 --cache 0,60
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _setup import REPO, free_port, on_exit, remove_at_exit

from ml.platform import tracking
from ml.platform.config import get_settings, reset_settings
from ml.platform.startup.status import status
from ml.platform.startup.usage import platform_roots, usage

ML = str(Path(sys.executable).parent / "ml")
ORDER = ["postgres", "supervisor", "mlflow", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor"]
ORDER += ["airflow-triggerer", "api"]


def _median_ms(call, n: int = 20) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def measure(cache: int, seconds: float, settle: float, extra_env: dict[str, str]) -> dict:
    var = remove_at_exit(Path(tempfile.mkdtemp(prefix=f"bench-idle-{cache}-")))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SENTIMENT_") and k not in ("DATABASE_URL", "MLFLOW_TRACKING_URI", "PGPASSFILE")
    }
    env.update(
        {
            "SENTIMENT_VAR_DIR": str(var),
            "SENTIMENT_API_PORT": str(free_port()),
            "SENTIMENT_MLFLOW_PORT": str(free_port()),
            "SENTIMENT_AIRFLOW_PORT": str(free_port()),
            "SENTIMENT_EMBEDDED_PG_PORT": str(free_port()),
            "SENTIMENT_MLFLOW_AUTH_CACHE_SECONDS": str(cache),
            **extra_env,
        }
    )
    on_exit(
        f"ml services down ({var})", lambda: subprocess.run([ML, "services", "down"], env=env, cwd=REPO, check=False)
    )
    log = var.parent / f"{var.name}-up.log"
    remove_at_exit(log)
    print(f"cache {cache}s: ml services up --no-train (log {log}) ...", flush=True)
    t0 = time.monotonic()
    with log.open("w") as f:
        rc = subprocess.run([ML, "services", "up", "--no-train"], env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if rc.returncode != 0:
        raise SystemExit(f"ml services up failed ({rc.returncode}): {log.read_text()[-3000:]}")
    print(f"  up in {time.monotonic() - t0:.0f}s; settling {settle:.0f}s, then {seconds:.0f}s of idle", flush=True)
    time.sleep(settle)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    reset_settings()
    try:
        s = get_settings()
        used = usage(platform_roots(s, status(s, quiet=True)), seconds)
        creds = tracking.mlflow_credentials(s)
        assert creds is not None
        url = f"http://127.0.0.1:{s.mlflow_port}"
        auth = (creds["username"], creds["password"])
        with httpx.Client(timeout=30) as c:
            alias = f"{url}/api/2.0/mlflow/registered-models/alias"
            params = {"name": s.model_name, "alias": "champion"}
            c.get(alias, params=params, auth=auth)  # the first call verifies (and fills the cache, if on)
            health = _median_ms(lambda: c.get(f"{url}/health").raise_for_status())
            authed = _median_ms(lambda: c.get(alias, params=params, auth=auth))
    finally:
        os.environ.clear()
        os.environ.update(saved)
        reset_settings()
    subprocess.run([ML, "services", "down"], env=env, cwd=REPO, check=False, capture_output=True)
    return {"used": used, "health_ms": health, "auth_ms": authed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60, help="idle interval measured")
    ap.add_argument("--settle", type=float, default=30, help="wait after `up` before measuring")
    ap.add_argument("--cache", default="0,60", help="MLflow login-cache seconds to compare (0: none)")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for every run (e.g. a poll interval)")
    args = ap.parse_args()
    extra = dict(kv.split("=", 1) for kv in args.env)
    caches = [int(c) for c in args.cache.split(",")]
    results = {c: measure(c, args.seconds, args.settle, extra) for c in caches}

    head = " | ".join(f"cache {c}s: proc | CPU % | RSS MiB" for c in caches)
    print(f"\n| process tree | {head} |")
    print("|---|" + "---:|---:|---:|" * len(caches))
    names = [n for n in ORDER if any(n in r["used"] for r in results.values())]
    for n in [*names, "all"]:
        cells = []
        for c in caches:
            u = results[c]["used"]
            if n == "all":
                x = {k: sum(v[k] for v in u.values()) for k in ("processes", "cpu_percent", "rss_mib")}
            else:
                x = u.get(n, {"processes": 0, "cpu_percent": 0.0, "rss_mib": 0})
            cells.append(f"{x['processes']} | {x['cpu_percent']:.1f} | {x['rss_mib']:,}")
        print(f"| {'**all**' if n == 'all' else n} | " + " | ".join(cells) + " |")
    print("\n| MLflow login cache | /health median | authenticated alias GET median | ratio to /health |")
    print("|---|---:|---:|---:|")
    for c in caches:
        r = results[c]
        print(f"| {c} s | {r['health_ms']:.1f} ms | {r['auth_ms']:.1f} ms | {r['auth_ms'] / r['health_ms']:.1f}x |")
    print(
        f"\nCPU: each service's process tree over {args.seconds:.0f}s of idle, % of one core; RSS summed per process."
    )


if __name__ == "__main__":
    main()
