"""First-run seeding: train a first model through Airflow when no champion is registered.

``make up`` (:func:`first_model`) triggers the training DAG through Airflow's REST API; the compose
deployment's one-shot ``seed`` service (:func:`seed`, ``python -m ml.platform.startup.seeding``) triggers
the same DAG with Airflow's CLI."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ml.platform import registry, tracking
from ml.platform.airflow_client import TRAINING_DAG as TRAINING_DAG_ID
from ml.platform.airflow_client import trigger_training
from ml.platform.config import Settings, get_settings
from ml.platform.errors import DataError
from ml.platform.progress import reporter
from ml.platform.startup.sources import BUNDLED_SAMPLE, default_source
from ml.platform.supervisor import ServiceError, say


def champion(settings: Settings) -> registry.ChampionInfo | None:
    """The registered champion (``None`` when there is none)."""
    tracking.configure(settings)
    return registry.champion(settings)


def first_model(
    settings: Settings, data: str | None = None, wait: bool = True, force_train: bool = False
) -> dict[str, Any]:
    """Trigger the training DAG on ``data`` (default: the default source) unless a champion is
    registered (``force_train``: train anyway); ``wait``: follow the run to its end. Returns the
    run's summary, or ``{"skipped": True, "champion_version": ...}``."""
    champ = champion(settings)
    if champ is not None and not force_train:
        say(
            f"      champion already registered (version {champ.version}); skipping training (--force-train to retrain)"
        )
        return {"skipped": True, "champion_version": champ.version}
    try:
        path = default_source(data, settings)
    except Exception as e:
        raise ServiceError(f"no training data: {e}") from e
    say(f"      training data: {path}")
    if wait:
        with reporter("      training (tasks)") as progress:
            training = trigger_training(path, settings, wait=wait, progress=progress)
    else:
        training = trigger_training(path, settings, wait=wait)
    if wait:
        champ = champion(settings)
        say(
            f"      training {training['state']} in {training['seconds']}s; champion: "
            f"{'version %s' % champ.version if champ else 'none (the candidate was not promoted)'}"
        )
    return training


# ------------------------------------------------------------------ compose: the one-shot `seed` service
SEED_RUN_PREFIX = "seed__"


def seed_data_path(data: str | None = None) -> Path:
    """The seed's training file: ``data`` (a file mounted into the container, e.g. ``/data/tweets.csv``),
    else the bundled real 20k sample (``tests/data/sentiment140_20k.csv``, in the image); never a download."""
    p = Path(data).expanduser().resolve() if data else BUNDLED_SAMPLE
    if not p.is_file():
        raise DataError(
            f"seed data {p}: file not found" + (" (mount it under ./data, seen as /data/...)" if data else "")
        )
    return p


def _airflow(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """An ``airflow`` CLI command (the one installed beside this interpreter, else the PATH's)."""
    beside = Path(sys.executable).parent / "airflow"
    return subprocess.run(
        [str(beside) if beside.exists() else "airflow", *args], capture_output=True, text=True, timeout=timeout
    )


def seed(
    data: str | None = None,
    settings: Settings | None = None,
    poll: float = 10.0,
    dag_timeout: float = 600,
    run_timeout: float = 6 * 3600,
) -> dict[str, Any]:
    """The compose ``seed`` service (profile ``seed``): unless a champion is registered, trigger the
    ``sentiment_training`` DAG (the DAG ``make up`` triggers for its first model) on
    :func:`seed_data_path` and follow the run to its end; the running scheduler executes it. Uses
    Airflow's own CLI (``airflow dags trigger`` / ``dags state``, on the metadata database), so the seed
    needs no login to the API server. Idempotent: the run id is ``seed__<file hash>``, a second start
    follows the same run. Raises ServiceError when the run fails or no champion results."""
    settings = settings or get_settings()
    champ = champion(settings)
    if champ is not None:
        say(f"champion already registered ({settings.model_name} version {champ.version}): nothing to seed")
        return {"skipped": True, "champion_version": champ.version}
    path = seed_data_path(data)
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    run_id = f"{SEED_RUN_PREFIX}{h.hexdigest()[:16]}"
    say(f"training data: {path}")
    deadline = time.monotonic() + dag_timeout
    while True:  # the dag-processor must have parsed the DAG first
        r = _airflow("dags", "unpause", TRAINING_DAG_ID)
        if r.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise ServiceError(f"DAG {TRAINING_DAG_ID} unknown to Airflow after {dag_timeout:.0f}s: {r.stderr[-500:]}")
        time.sleep(poll)
    state = _airflow("dags", "state", TRAINING_DAG_ID, run_id).stdout.strip().splitlines()
    if not state or state[-1] == "None":
        r = _airflow(
            "dags", "trigger", TRAINING_DAG_ID, "--run-id", run_id, "--conf", json.dumps({"data_path": str(path)})
        )
        if r.returncode != 0:
            raise ServiceError(f"triggering {TRAINING_DAG_ID} failed: {(r.stderr or r.stdout)[-800:]}")
        say(f"triggered {TRAINING_DAG_ID} run {run_id}")
    else:
        say(f"following the seed run {run_id} started before ({state[-1]})")
    started = time.monotonic()
    last = ""
    while True:
        out = _airflow("dags", "state", TRAINING_DAG_ID, run_id).stdout.strip().splitlines()
        current = out[-1].split(",")[0] if out else "unknown"
        if current != last:
            say(f"  {run_id}: {current} ({time.monotonic() - started:.0f}s)")
            last = current
        if current in ("success", "failed"):
            break
        if time.monotonic() - started > run_timeout:
            raise ServiceError(f"{TRAINING_DAG_ID} run {run_id} still {current} after {run_timeout:.0f}s")
        time.sleep(poll)
    champ = champion(settings)
    if current != "success" or champ is None:
        raise ServiceError(
            f"{TRAINING_DAG_ID} run {run_id} ended {current}; champion: "
            f"{'version %s' % champ.version if champ else 'none (the candidate was not promoted)'} "
            "(its task logs are in the Airflow UI)"
        )
    say(f"seeded: {settings.model_name} champion version {champ.version} (run {run_id})")
    return {"skipped": False, "run_id": run_id, "state": current, "champion_version": champ.version}


def main(argv: list[str] | None = None) -> int:
    """``python -m ml.platform.startup.seeding [--data FILE]`` (``SEED_DATA`` by default): :func:`seed`."""
    ap = argparse.ArgumentParser(description="Train the first champion unless one is registered (compose `seed`).")
    ap.add_argument(
        "--data", default=os.environ.get("SEED_DATA") or None, help="training CSV (default: the bundled sample)"
    )
    args = ap.parse_args(argv)
    try:
        seed(args.data)
    except Exception as e:  # noqa: BLE001 - a one-shot service: the reason, and a non-zero exit
        say(f"seed failed: {type(e).__name__}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
