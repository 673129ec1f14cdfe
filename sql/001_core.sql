-- Core records of the platform: datasets, training runs, promotions, predictions, feedback.
-- Applied once by `ml db migrate` (tracked in schema_migrations).

CREATE TABLE dataset_snapshots (
    hash          text PRIMARY KEY,                 -- sha256 of the validated (text, label) rows
    source        text NOT NULL,                    -- path or description of the input
    kind          text NOT NULL DEFAULT 'validated',-- validated | retraining | demo
    parent_hash   text REFERENCES dataset_snapshots(hash),
    n_rows        integer NOT NULL,
    n_positive    integer NOT NULL,
    path          text NOT NULL,                    -- parquet file of the snapshot
    report        jsonb NOT NULL,                   -- the validation report
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE training_runs (
    run_id        text PRIMARY KEY,                 -- MLflow run id
    snapshot_hash text NOT NULL REFERENCES dataset_snapshots(hash),
    family        text NOT NULL,
    params        jsonb NOT NULL DEFAULT '{}',
    metrics       jsonb,                            -- held-out metrics of this run
    champion_metrics jsonb,                         -- the champion's on the same held-out split
    git_commit    text,
    model_version integer,                          -- registry version, once registered
    status        text NOT NULL DEFAULT 'trained',  -- trained | evaluated | registered | promoted | rejected
    decision      text,                             -- why it was (not) promoted
    airflow_run_id text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE model_events (
    id            bigserial PRIMARY KEY,
    model_name    text NOT NULL,
    version       integer NOT NULL,
    previous_version integer,
    event         text NOT NULL,                    -- promoted | rejected | rollback
    reason        text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE predictions (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    text          text NOT NULL,
    label         smallint NOT NULL CHECK (label IN (0, 1)),
    p_negative    real NOT NULL,
    p_positive    real NOT NULL,
    model_name    text NOT NULL,
    model_version integer NOT NULL,
    source        text NOT NULL DEFAULT 'api',      -- api | batch
    batch_id      text,
    source_row    bigint
);
CREATE INDEX predictions_created_at ON predictions (created_at);
CREATE UNIQUE INDEX predictions_batch_row ON predictions (batch_id, source_row) WHERE batch_id IS NOT NULL;

CREATE TABLE feedback (
    id            bigserial PRIMARY KEY,
    prediction_id uuid NOT NULL REFERENCES predictions(id),
    correct_label smallint NOT NULL CHECK (correct_label IN (0, 1)),
    comment       text,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX feedback_created_at ON feedback (created_at);
