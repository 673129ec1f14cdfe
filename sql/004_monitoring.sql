-- Monitoring: one row per drift report (ml/monitoring.py, DAG sentiment_monitoring).
-- The files (Evidently HTML + JSON, summary.json) live under var/reports/<id>/.

CREATE TABLE drift_reports (
    id            text PRIMARY KEY,                 -- '<created UTC yyyymmddThhmmssZ>-<6 hex>'
    created_at    timestamptz NOT NULL DEFAULT now(),
    period_start  timestamptz NOT NULL,             -- predictions with created_at in [start, end)
    period_end    timestamptz NOT NULL,
    status        text NOT NULL CHECK (status IN ('ok', 'drift', 'empty')),
    drift_detected boolean NOT NULL DEFAULT false,  -- any of prediction/probability/descriptors/raw-text drift
    concept_drift boolean,                          -- NULL: not judged (no champion accuracy, too few rows)
    verdict       text NOT NULL,                    -- one line for a person
    model_name    text NOT NULL,
    reference_version integer,                      -- champion version whose held-out predictions are the reference
    n_current     integer NOT NULL DEFAULT 0,       -- rows compared (after the max-rows sample)
    n_current_total integer NOT NULL DEFAULT 0,     -- rows in the period
    n_reference   integer NOT NULL DEFAULT 0,
    drifted_share real,                             -- Evidently's share of drifted columns
    n_feedback    integer NOT NULL DEFAULT 0,
    n_reported_wrong integer NOT NULL DEFAULT 0,
    live_accuracy_upper_bound real,                 -- 1 - reported_wrong / n_current_total
    training_accuracy real,                         -- champion run's MLflow `accuracy`
    seconds       real,
    airflow_run_id text,
    html_path     text,
    json_path     text,
    summary       jsonb NOT NULL                    -- the full summary (per metric, per column, feedback)
);
CREATE INDEX drift_reports_created_at ON drift_reports (created_at DESC);
CREATE INDEX drift_reports_period ON drift_reports (model_name, period_end);
