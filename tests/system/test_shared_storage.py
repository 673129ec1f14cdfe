"""The shared store (ml/platform/storage.py): every file one process writes and another reads goes
through ``shared_storage_url``, never through an assumed common disk.

- The local store: atomic, private (0600 files in 0700 folders), keys confined to the root.
- ``memory://`` (fsspec's in-memory filesystem: real, but not this host's disk) as the store of a whole
  batch (plan -> shards -> finalize in one process, ``score_file(workers=1)``) and of the monitoring
  reference and a drift report (published, served to the API from a private copy, its verdict block
  rewritten through the store): any ``Path``-only operation on a shared file would miss the file.
- ``file://`` pointing at a folder outside ``var/``: ``ml score`` in another process writes its shards and
  scored file there, nothing in ``var/batches``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import fsspec
import pandas as pd
import pytest

from ml.data import DataError
from ml.platform.config import get_settings, reset_settings
from ml.platform.storage import SharedStore, reference_store, reports_store, shared_store
from ml.stages.monitoring.archive import record_action, report_html_path
from ml.stages.monitoring.build import build_report
from ml.stages.monitoring.reference import load_reference
from ml.stages.scoring.files import batch_dir
from ml.stages.scoring.finalize import copy_output
from ml.stages.scoring.run import score_file


@pytest.fixture(scope="module")
def champion(own_champion, tweets_csv, tmp_path_factory):
    roots = json.dumps([str(tmp_path_factory.getbasetemp())])
    with own_champion("tweet-sentiment-store", tweets_csv, SENTIMENT_BATCH_INPUT_ROOTS=roots) as c:
        yield c


@pytest.fixture
def memory_store(champion, monkeypatch):
    """``shared_storage_url`` = a memory:// folder of this test's own (this process only)."""
    url = f"memory://shared-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SENTIMENT_SHARED_STORAGE_URL", url)
    reset_settings()
    yield url
    monkeypatch.undo()
    reset_settings()
    fsspec.filesystem("memory").rm(url.removeprefix("memory://"), recursive=True)


def _input(tmp_path: Path, tweets_csv: Path, n: int) -> Path:
    lines = tweets_csv.read_text(encoding="utf-8").splitlines()[:n]
    p = tmp_path / f"in_{uuid.uuid4().hex[:6]}.csv"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_a_plain_path_and_the_default_are_local_folders(tmp_path, platform_env):
    assert SharedStore(tmp_path).where("a") == f"{tmp_path}/a"
    assert shared_store().real_path() == get_settings().var  # unset: this process's var/, nothing moves


def test_a_batch_goes_through_a_store_that_is_not_this_disk(memory_store, champion, tweets_csv, tmp_path):

    summary = score_file(_input(tmp_path, tweets_csv, 600), shard_rows=200, settings=get_settings())
    bid = summary["batch_id"]
    assert summary["shards"] == 3 and summary["rows_scored"] == 600
    batches = shared_store().child("batches")
    assert summary["output"] == batches.where(bid, "scored.parquet") and summary["output"].startswith("memory://")
    with batches.open(bid, "scored.parquet") as f:
        table = pd.read_parquet(f)
    assert len(table) == 600 and table["prediction_id"].nunique() == 600
    assert batches.list(bid, "shards") == [f"0000{i}.{k}parquet" for i in range(3) for k in ("", "scored.")]
    assert not batch_dir(bid).exists()  # nothing of the batch on this host's disk ...
    # ... but the model copy, which is this process's own (var/cache), removed once the batch is done
    assert not (get_settings().var / "cache" / "batches" / bid / "model").exists()
    # the DAG's output_path on an object store: a key under the batch root, nothing outside it

    assert copy_output(summary, "exports/a.parquet", confine=True) == batches.where("exports", "a.parquet")
    assert batches.read_bytes("exports", "a.parquet") == batches.read_bytes(bid, "scored.parquet")
    for bad in ("../a.parquet", "/etc/a.parquet", "exports/a.sh"):
        with pytest.raises(DataError, match="relative to the batch output root"):
            copy_output(summary, bad, confine=True)


def test_the_reference_and_a_report_go_through_the_store(memory_store, champion):

    frame, meta, vocab = load_reference()
    rs = reference_store(champion.version)
    assert rs.exists("meta.json") and rs.exists("reference.parquet") and rs.exists("vocabulary.txt")
    assert not (get_settings().var / "reference" / champion.name).exists()
    again, meta2, vocab2 = load_reference()  # from the store, not recomputed
    assert meta2 == meta and len(again) == len(frame) and vocab2 == vocab

    # a period with no predictions: an empty report (no Evidently run), still published
    r = build_report(start="2001-01-01T00:00:00+00:00", end="2001-01-02T00:00:00+00:00")
    assert r["status"] == "empty"
    st = reports_store()
    assert r["files"]["html"] == st.where(r["id"], "report.html") and st.exists(r["id"], "summary.json")
    assert not (get_settings().var / "reports" / r["id"]).exists()
    served = report_html_path(r["id"])  # what the API / the Airflow plugin serve: a fresh private copy
    assert served is not None and served.is_relative_to(get_settings().var / "cache")
    record_action(r["id"], {"raised": False}, {"trigger": False})
    page = st.read_bytes(r["id"], "report.html").decode()
    assert "nothing: no predictions" in page  # the verdict block rewritten in the store itself
    assert "nothing: no predictions" in report_html_path(r["id"]).read_text(encoding="utf-8")


def test_another_process_scores_into_a_file_url_outside_var(champion, tweets_csv, tmp_path):
    shared = tmp_path / "object-store"
    env = {**os.environ, **champion.env, "SENTIMENT_SHARED_STORAGE_URL": f"file://{shared}"}
    res = subprocess.run(
        [sys.executable, "-m", "ml.cli", "score", str(_input(tmp_path, tweets_csv, 300)), "--shard-rows", "100"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads(res.stdout[res.stdout.index("{") :])
    out = Path(s["output"])
    assert out == shared / "batches" / s["batch_id"] / "scored.parquet" and len(pd.read_parquet(out)) == 300
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and stat.S_IMODE(out.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in (out.parent / "shards").iterdir())[:2] == ["00000.parquet", "00000.scored.parquet"]
    assert not (get_settings().var / "batches" / s["batch_id"]).exists()
