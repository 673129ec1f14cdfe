-- Shadow before promotion (ml/shadow.py): a retraining's challenger that passed the promotion gate
-- serves in shadow for a window of live requests / hours before the alias moves. The API answers with
-- the champion and, off the request path, scores the same texts with the challenger: one
-- shadow_predictions row per shadowed request. At most one running shadow per registered model.
CREATE TABLE shadows (
    id                 bigserial PRIMARY KEY,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz,
    model_name         text NOT NULL,
    retraining_id      bigint REFERENCES retrainings(id),
    run_id             text NOT NULL,              -- the challenger's MLflow run (training_runs)
    challenger_version integer NOT NULL,
    champion_version   integer NOT NULL,           -- the champion it shadows (the alias must not move meanwhile)
    artifact_sha256    text NOT NULL,              -- recorded at registration; the API verifies it before loading
    window_requests    integer NOT NULL,           -- 0: no request count (time only)
    window_hours       double precision NOT NULL,  -- 0: no time cap (requests only)
    ends_at            timestamptz,                -- created_at + window_hours (NULL: no time cap)
    status             text NOT NULL DEFAULT 'running'
                       CHECK (status IN ('running', 'promoted', 'rejected', 'superseded')),
    calibration        jsonb,                      -- each model's isotonic calibrator on its held-out predictions
    results            jsonb,                      -- agreement, CBPE estimates, reviewed-label accuracy, criteria
    decision           text
);
CREATE UNIQUE INDEX shadows_one_running ON shadows (model_name) WHERE status = 'running';
CREATE INDEX shadows_model ON shadows (model_name, challenger_version);

CREATE TABLE shadow_predictions (
    shadow_id             bigint NOT NULL REFERENCES shadows(id) ON DELETE CASCADE,
    prediction_id         uuid NOT NULL,           -- the champion's answer (predictions row, written by the API's writer)
    created_at            timestamptz NOT NULL DEFAULT now(),
    text_sha256           text NOT NULL,           -- ml.review.text_key: joins reviewed labels (reviews)
    champion_label        smallint NOT NULL CHECK (champion_label IN (0, 1)),
    champion_p_positive   double precision NOT NULL,
    challenger_label      smallint NOT NULL CHECK (challenger_label IN (0, 1)),
    challenger_p_positive double precision NOT NULL,
    PRIMARY KEY (shadow_id, prediction_id)
);
