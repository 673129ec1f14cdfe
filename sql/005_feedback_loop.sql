-- The closed loop: misclassification alerts, feedback-triggered retraining, review of feedback.
-- ml/alerts.py (alerts), ml/retraining.py (retrainings, retraining_feedback), DAG sentiment_retraining.

-- Feedback review: with `feedback_review_required` on, only reviewed reports enter a retraining set.
ALTER TABLE feedback ADD COLUMN reviewed boolean NOT NULL DEFAULT false;
ALTER TABLE feedback ADD COLUMN reviewed_at timestamptz;
ALTER TABLE feedback ADD COLUMN reviewed_by text;
CREATE INDEX feedback_prediction ON feedback (prediction_id);

-- One row per alert. Rule `misclassification_burst`: `threshold` misclassification reports (distinct
-- predictions of `model_name` reported with another label) within `window_seconds`. One alert per
-- burst: while it is open (resolved_at IS NULL) later reports of the same burst are appended to
-- `later_feedback_ids`; the partial unique index makes a second open alert of the same rule and
-- model impossible, whatever the number of API workers. Event alerts (DAG failures) are stored
-- already resolved.
CREATE TABLE alerts (
    id              bigserial PRIMARY KEY,
    created_at      timestamptz NOT NULL DEFAULT now(),
    rule            text NOT NULL,                       -- misclassification_burst | dag_failure
    model_name      text NOT NULL,
    severity        text NOT NULL DEFAULT 'warning',
    window_seconds  integer,
    threshold       integer,
    n_reports       integer NOT NULL DEFAULT 0,          -- reports in the window when raised
    feedback_ids    bigint[] NOT NULL DEFAULT '{}',      -- the reports that raised it
    later_feedback_ids bigint[] NOT NULL DEFAULT '{}',   -- reports of the same burst after it was raised
    first_report_at timestamptz,
    last_report_at  timestamptz,
    message         text NOT NULL,
    details         jsonb NOT NULL DEFAULT '{}',
    channels        jsonb NOT NULL DEFAULT '[]',         -- [{channel, target, status: sent|failed|skipped, error, at}]
    resolved_at     timestamptz                          -- the burst ended (a report found fewer than threshold)
);
CREATE UNIQUE INDEX alerts_one_open_per_rule ON alerts (rule, model_name) WHERE resolved_at IS NULL;
CREATE INDEX alerts_created_at ON alerts (created_at DESC);

-- One row per retraining: why it was triggered, on which reports, and what came of it.
CREATE TABLE retrainings (
    id              bigserial PRIMARY KEY,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    model_name      text NOT NULL,
    trigger_key     text NOT NULL UNIQUE,                -- feedback:<sha256 of the ids> | drift:<report id> | manual:<...>
    reason          text NOT NULL,                       -- feedback_threshold | drift | manual
    detail          text NOT NULL,                       -- one line for a person
    feedback_ids    bigint[] NOT NULL DEFAULT '{}',      -- the reports that triggered it (consumed)
    n_feedback      integer NOT NULL DEFAULT 0,
    threshold       integer,                             -- reports needed (ceil(fraction * corpus_rows))
    threshold_fraction real,
    corpus_rows     integer,                             -- n_rows of the champion's snapshot
    drift_report_id text,
    status          text NOT NULL DEFAULT 'triggered',   -- triggered | training | evaluated | promoted | rejected | failed
    champion_before integer,
    champion_after  integer,
    base_snapshot   text REFERENCES dataset_snapshots(hash),   -- the champion's snapshot
    snapshot_hash   text REFERENCES dataset_snapshots(hash),   -- the new training set (kind 'retraining')
    training_feedback_ids bigint[] NOT NULL DEFAULT '{}',-- every report whose tweet entered the new snapshot
    dataset_report  jsonb,                               -- how the set was built (dedup, conflicts, held-out)
    mode            text,                                -- champion | compare
    run_id          text,                                -- the challenger's MLflow run
    candidate_version integer,
    metrics         jsonb,                               -- challenger vs champion: held-out and reported tweets
    decision        text,
    error           text,
    trigger_airflow_run_id text,                         -- the monitoring run that triggered it
    airflow_run_id  text                                 -- the sentiment_retraining run
);
CREATE INDEX retrainings_model ON retrainings (model_name, created_at DESC);
CREATE INDEX retrainings_snapshot ON retrainings (snapshot_hash);

-- A report triggers at most one retraining (the primary key), whoever checks concurrently.
CREATE TABLE retraining_feedback (
    feedback_id     bigint PRIMARY KEY REFERENCES feedback(id),
    retraining_id   bigint NOT NULL REFERENCES retrainings(id) ON DELETE CASCADE
);
