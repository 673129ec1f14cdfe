-- Batch scoring: one row per input file (content-addressed), its shards, and its rejected rows.
-- Predictions themselves go to `predictions` with batch_id + source_row (unique).

CREATE TABLE batches (
    id            text PRIMARY KEY,                 -- 'b-' + first 16 hex of the input's sha256
    input_path    text NOT NULL,
    input_format  text NOT NULL,
    input_sha256  text NOT NULL,
    output_path   text,
    status        text NOT NULL DEFAULT 'planned',  -- planned | scoring | done | failed
    model_name    text NOT NULL,
    model_version integer NOT NULL,                 -- fixed for every shard of the batch
    n_shards      integer NOT NULL DEFAULT 0,
    rows_read     bigint NOT NULL DEFAULT 0,
    rows_scored   bigint NOT NULL DEFAULT 0,
    rows_rejected bigint NOT NULL DEFAULT 0,
    label_counts  jsonb,
    rows_per_second real,
    summary       jsonb,
    airflow_run_id text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);

CREATE TABLE batch_shards (
    batch_id      text NOT NULL REFERENCES batches(id) ON DELETE CASCADE,
    shard         integer NOT NULL,
    path          text NOT NULL,                    -- parquet of (source_row, text)
    first_row     bigint NOT NULL,
    last_row      bigint NOT NULL,
    n_rows        integer NOT NULL,
    status        text NOT NULL DEFAULT 'pending',  -- pending | done
    rows_scored   integer,
    seconds       real,
    attempts      integer NOT NULL DEFAULT 0,
    finished_at   timestamptz,
    PRIMARY KEY (batch_id, shard)
);

CREATE TABLE batch_rejects (
    batch_id      text NOT NULL REFERENCES batches(id) ON DELETE CASCADE,
    line          bigint NOT NULL,
    reason        text NOT NULL,
    PRIMARY KEY (batch_id, line)
);

CREATE INDEX predictions_batch ON predictions (batch_id) WHERE batch_id IS NOT NULL;
