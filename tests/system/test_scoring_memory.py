"""Batch scoring streams (issue 24, item 5): the peak memory of ``plan``, a shard and ``finalize``
does not grow with the input. Each step runs in its own process (as the DAG's tasks do) on an input
of N rows and on one of 4N rows, one shard each (so the shard grows 4x too), with small chunks; the
peak RSS of the 4N run (the step's own VmHWM) must stay within a few MB of the
N run's. The code before streaming held a whole shard in Python lists (plan) and read a whole shard
into memory (shard, finalize): it grew by tens of MB here."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from ml.platform.config import reset_settings

ROWS = 20_000  # and 4x that: small, so the test stays short; the chunks keep the ratio meaningful
#: rows a step holds at a time here (the plan's row groups, a shard's and finalize's chunks)
CHUNK = 5_000
#: how much more a step may take on 4x the rows (allocator and import noise, not data)
MARGIN_MB = 15

PRELUDE = (
    "import json, sys\n"
    "import ml.stages.scoring.plan as plan_mod, ml.stages.scoring.finalize as fin_mod\n"
    f"plan_mod.PLAN_GROUP_ROWS = {CHUNK}\nfin_mod.MERGE_CHUNK_ROWS = {CHUNK}\n"
)
#: printed last by a step: its peak RSS in kB. VmHWM is the program's own; ru_maxrss (getrusage, wait4)
#: would also count the memory of the pytest process it was forked from, before the exec
PEAK = "\nprint(max(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM:')))"
STEPS = {
    "plan": "p = plan_mod.plan(sys.argv[1], shard_rows=int(sys.argv[2]))\n"
    "print(json.dumps({'batch_id': p.batch_id, 'shards': p.shards}))",
    "shard": "from ml.stages.scoring.shard import score_shard\n"
    f"print(json.dumps(score_shard(sys.argv[1], int(sys.argv[2]), chunk_rows={CHUNK})))",
    "finalize": "print(json.dumps(fin_mod.finalize(sys.argv[1])))",
}


@pytest.fixture(scope="module", autouse=True)
def input_roots(tmp_path_factory):
    """Batch input is confined: this module's files are under pytest's temporary folders."""
    key = "SENTIMENT_BATCH_INPUT_ROOTS"
    saved = os.environ.get(key)
    os.environ[key] = json.dumps([str(tmp_path_factory.getbasetemp())])
    reset_settings()
    yield
    if saved is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = saved
    reset_settings()


@pytest.fixture(scope="module")
def champion(own_champion, tweets_csv, input_roots):
    with own_champion("tweet-sentiment-memory", tweets_csv) as c:
        yield c.name


def write_sentiment140(path: Path, n: int, tweets_csv: Path, tag: str) -> None:
    """``n`` rows in the real corpus's layout (six quoted columns, Latin-1) from the 2,000 test tweets."""
    with tweets_csv.open(encoding="utf-8", newline="") as f:
        base = list(csv.reader(f))
    with path.open("w", encoding="latin-1", errors="replace", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
        for i in range(n):
            pol, text = base[i % len(base)]
            w.writerow([pol, str(1467810369 + i), "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY", tag, text])


def run_step(step: str, *args: object) -> tuple[dict, float]:
    """Run one step in its own process; (its JSON result, its peak RSS in MB)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run(
            [sys.executable, "-c", PRELUDE + STEPS[step] + PEAK, *map(str, args)],
            stdout=out,
            stderr=err,
            timeout=900,
            # Arrow's buffers from malloc, which gives freed chunks back at once: mimalloc's cached
            # segments would add noise of their own to the peak
            env={**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system"},
        )
        out.seek(0)
        err.seek(0)
        assert proc.returncode == 0, f"{step} failed: {err.read()[-3000:]}"
        *_, result, peak_kb = out.read().strip().splitlines()
        return json.loads(result), int(peak_kb) / 1024


@pytest.mark.slow
def test_plan_shard_finalize_memory_does_not_grow_with_the_input(champion, tweets_csv, tmp_path):
    peaks: dict[int, dict[str, float]] = {}
    for scale in (1, 4):
        n = ROWS * scale
        path = tmp_path / f"tweets_{scale}x.csv"
        write_sentiment140(path, n, tweets_csv, f"mem-{uuid.uuid4().hex[:8]}")
        planned, rss_plan = run_step("plan", path, n)  # one shard of all the rows
        assert len(planned["shards"]) == 1
        _, rss_shard = run_step("shard", planned["batch_id"], planned["shards"][0])
        summary, rss_final = run_step("finalize", planned["batch_id"])
        assert summary["rows_scored"] == n
        peaks[scale] = {"plan": rss_plan, "shard": rss_shard, "finalize": rss_final}
    grown = {step: peaks[4][step] - peaks[1][step] for step in peaks[1]}
    assert all(g <= MARGIN_MB for g in grown.values()), f"peak RSS (MB) at 1x and 4x: {peaks}; grown: {grown}"
