"""Shared benchmark setup: an isolated database + var/ and a TF-IDF champion on the shared tweets."""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from pathlib import Path

from ml.data.snapshots import validate_and_snapshot
from ml.platform import db, registry
from ml.platform.config import reset_settings
from ml.stages import promotion, train

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data" / "sentiment140_100k.csv"


def isolated_platform(name: str) -> Path:
    """Point the platform at database ``smops_<name>`` (on DATABASE_URL's server, or the
    embedded one) and a fresh var/ folder; returns that folder."""
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    os.environ["SENTIMENT_VAR_DIR"] = str(work)
    os.environ["SENTIMENT_MODEL_NAME"] = f"bench-{name}-{uuid.uuid4().hex[:6]}"

    base = os.environ.get("DATABASE_URL") or db.start_embedded_postgres()
    os.environ["DATABASE_URL"] = db.with_database(base, f"smops_{name}")
    os.environ["SENTIMENT_MLFLOW_DATABASE"] = f"smops_{name}_mlflow"
    reset_settings()
    db.migrate()
    return work


def train_champion(
    path: Path = SHARED, family: str = "tfidf_lr", params: dict | None = None, sample_size: int | None = None
) -> int:
    """validate -> train -> evaluate -> register -> promote a model; returns its version.
    Other families than TF-IDF train on a small sample for timing only, so the behavioural
    gate is switched off for them."""
    if family != "tfidf_lr":
        os.environ["SENTIMENT_BEHAVIOUR_CHECKS"] = "false"
        reset_settings()
    print(f"training a {family} champion on {path.name} (sample {sample_size or 'all'}) ...", flush=True)
    snap = validate_and_snapshot(path)
    run_id = train.train(snap.hash, family, params or {}, sample_size)
    train.evaluate(run_id)
    train.register(run_id)
    promotion.promote(run_id)
    return registry.champion().version


def api_command(port: int, workers: int | str) -> list[str]:
    """The API under uvicorn on 127.0.0.1:``port`` with ``workers`` processes (the benchmarks' server)."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "api.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-proxy-headers",  # as make up (ml/platform/startup/commands.py api_proxy_args)
    ]


def comparison_platform(db_name: str, var_dir: str) -> None:
    """Point the platform at the comparison benchmark's own databases (``<db_name>``,
    ``<db_name>_mlflow`` on DATABASE_URL's server, or the embedded one) and ``var_dir``: kept
    between runs, so later scripts (benchmarks/stacking_probe.py) read what compare_families wrote."""
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    base = db.libpq_url(os.environ["DATABASE_URL"]) if os.environ.get("DATABASE_URL") else db.database_url()
    os.environ["DATABASE_URL"] = db.with_database(base, db_name)
    os.environ["SENTIMENT_MLFLOW_DATABASE"] = f"{db_name}_mlflow"
    os.environ["SENTIMENT_VAR_DIR"] = var_dir
    os.environ["SENTIMENT_MODEL_NAME"] = "tweet-sentiment-bench"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    reset_settings()
