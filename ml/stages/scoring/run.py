"""The whole batch without Airflow (CLI, benchmarks): plan, every shard, finalize."""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from ml.data import DataError
from ml.platform.config import Settings
from ml.platform.progress import ProgressFn, report
from ml.stages.scoring.files import confined_input
from ml.stages.scoring.finalize import copy_output, finalize, output_destination
from ml.stages.scoring.plan import plan
from ml.stages.scoring.shard import score_shard
from ml.stages.scoring.sizing import auto_shard_rows


def score_file(
    input_path: str | Path,
    shard_rows: int = 0,
    force: bool = False,
    workers: int = 1,
    settings: Settings | None = None,
    text_column: str | None = None,
    output: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> dict:
    """The whole batch without Airflow (CLI / benchmarks): plan, every shard (in ``workers``
    processes, as an executor would run the mapped tasks), finalize. ``shard_rows=0``: one
    shard per worker. ``output``: also copy the scored file there (the operator's own command:
    anywhere this account may write; ``summary["copied_to"]``). ``progress(done, total, message)``
    is told after the plan and after each shard (steps: the shards, then finalize)."""
    if workers < 1:
        raise DataError(f"workers must be at least 1, got {workers}")
    if output is not None:  # a bad destination fails before anything is scored
        output_destination(output, "batch", confine=False, settings=settings)
    if shard_rows == 0 and input_path and str(input_path).strip():
        path = confined_input(input_path, settings)  # sizing reads the file: only once it is allowed
        shard_rows = auto_shard_rows(path, workers=workers)
    p = plan(input_path, shard_rows=shard_rows, force=force, settings=settings, text_column=text_column)
    total = len(p.shards) + 1  # every shard, then finalize
    report(progress, 0, total, f"planned {len(p.shards)} shard(s)")
    if workers > 1 and len(p.shards) > 1:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(score_shard, p.batch_id, sh): sh for sh in p.shards}
            for i, fut in enumerate(as_completed(futures), 1):
                fut.result()
                report(progress, i, total, f"shard {futures[fut]} scored")
    else:
        for i, sh in enumerate(p.shards, 1):
            score_shard(p.batch_id, sh, settings=settings)
            report(progress, i, total, f"shard {sh} scored")
    summary = finalize(p.batch_id, settings=settings)
    report(progress, total, total, "finalized")
    if output is not None:
        summary = {**summary, "copied_to": str(copy_output(summary, output, confine=False, settings=settings))}
    return summary
