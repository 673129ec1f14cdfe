-- Model comparisons (ml/compare.py): one row per comparison run of the families, with the
-- table as JSON, Markdown and HTML, the accuracy-vs-latency chart and the winner.
-- Also: behavioural-check results and the comparison a training run belongs to.

CREATE TABLE comparisons (
    id             bigserial PRIMARY KEY,
    created_at     timestamptz NOT NULL DEFAULT now(),
    parent_run_id  text NOT NULL UNIQUE,             -- MLflow parent run; trials are nested under it
    snapshot_hash  text NOT NULL REFERENCES dataset_snapshots(hash),
    profile        text NOT NULL,                    -- quick | full
    families       text[] NOT NULL,
    selection_metric text NOT NULL,                  -- how the winner was chosen (on the validation split)
    table_json     jsonb NOT NULL,                   -- one object per family (held-out metrics, best params, ...)
    markdown       text NOT NULL,
    html           text NOT NULL,
    chart_path     text,                             -- PNG: accuracy vs inference ms/tweet (log x)
    winner_family  text,
    winner_run_id  text,
    winner_version integer,                          -- registry version, once registered
    airflow_run_id text
);
CREATE INDEX comparisons_created_at ON comparisons (created_at);

ALTER TABLE training_runs ADD COLUMN behaviour jsonb;          -- ml.behaviour results of the gate
ALTER TABLE training_runs ADD COLUMN parent_run_id text;       -- the comparison's MLflow run, if any
