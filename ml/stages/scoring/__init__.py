"""Batch scoring at corpus scale: plan (read + shard) -> score shards (mapped) -> finalize.

- Inputs: Sentiment140 six-column CSV, ``polarity,text`` CSV, one-column text/CSV, Parquet
  (a ``text`` column). Read in bounded chunks; malformed rows are recorded with their line
  number in ``batch_rejects`` and never abort the batch.
- A batch is named by the input's content hash: re-running it never duplicates rows.
- Every shard uses the champion version fixed when the batch was planned.
- Each shard's predictions are written with COPY, replacing that shard's rows in one
  transaction, so a retried shard leaves exactly one row per input row.

The modules: ``files`` (reading inputs through the one tweet reader, their content hash, a batch's
folder), ``sizing`` (automatic shard size from the CPUs and the estimated row count), ``plan``
(read + shard, fix the champion version), ``shard`` (score one shard), ``finalize`` (merge the
scored parts, store the summary), ``run`` (the whole batch without Airflow), ``queries`` (batches
read back), ``inbox`` (pending inbox files and the inbox DAG's trigger arguments). Errors are
``ml.data.DataError`` (unusable input) and ``RuntimeError``.
"""
