-- The progressive champion (ml/stages/progressive.py): after `make up`'s first champion serves, one
-- background comparison that includes the transformer per (registered model, data snapshot). The row is
-- the idempotency key (a second `make up` finds it) and the progress the API and `make status` read:
-- the search task's heartbeat writes done/total (seconds of fit budget used / the families' budgets),
-- the promote step the gate's outcome (shadow, promoted, rejected).
CREATE TABLE progressive_challengers (
    id              bigserial PRIMARY KEY,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    model_name      text NOT NULL,
    snapshot_hash   text NOT NULL,
    data_path       text NOT NULL,
    families        jsonb NOT NULL,
    profile         text NOT NULL,
    champion_version integer,                   -- the champion when it started
    dag_run_id      text,                       -- the sentiment_training run (Airflow)
    state           text NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'training', 'evaluating', 'shadow', 'promoted', 'rejected', 'failed')),
    family          text,                       -- the family being searched now
    done            double precision NOT NULL DEFAULT 0,  -- fit seconds used (finished families: their budget)
    total           double precision NOT NULL DEFAULT 0,  -- the families' budgets, seconds
    training_started_at timestamptz,            -- the first heartbeat (ETA: measured rate since then)
    version         integer,                    -- the comparison winner's registry version
    shadow_id       bigint,
    reason          text,
    UNIQUE (model_name, snapshot_hash)
);
