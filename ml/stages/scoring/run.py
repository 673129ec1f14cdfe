"""The whole batch without Airflow (CLI, benchmarks): plan, every shard, finalize."""

from __future__ import annotations

from pathlib import Path

from ml.data import DataError
from ml.platform.config import Settings
from ml.stages.scoring.finalize import finalize
from ml.stages.scoring.plan import plan
from ml.stages.scoring.shard import score_shard
from ml.stages.scoring.sizing import auto_shard_rows


def score_file(
    input_path: str | Path, shard_rows: int = 0, force: bool = False, workers: int = 1, settings: Settings | None = None
) -> dict:
    """The whole batch without Airflow (CLI / benchmarks): plan, every shard (in ``workers``
    processes, as an executor would run the mapped tasks), finalize. ``shard_rows=0``: one
    shard per worker."""
    if workers < 1:
        raise DataError(f"workers must be at least 1, got {workers}")
    if shard_rows == 0 and input_path and Path(input_path).is_file():
        shard_rows = auto_shard_rows(Path(input_path), workers=workers)
    p = plan(input_path, shard_rows=shard_rows, force=force, settings=settings)
    if workers > 1 and len(p.shards) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            list(pool.map(score_shard, [p.batch_id] * len(p.shards), p.shards))
    else:
        for sh in p.shards:
            score_shard(p.batch_id, sh, settings=settings)
    return finalize(p.batch_id, settings=settings)
