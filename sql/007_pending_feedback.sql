-- Feedback on a prediction that is acknowledged (durable in an API worker's local prediction log,
-- api/predlog.py) but not yet copied into `predictions`: /feedback stores it here at once (no
-- foreign key to wait for) with an id taken from feedback's own sequence; the prediction writer
-- moves it into `feedback`, same id and time, in the transaction after the prediction's COPY.
CREATE TABLE pending_feedback (
    id            bigint PRIMARY KEY,              -- nextval of feedback's id sequence: kept when moved
    prediction_id uuid NOT NULL,
    correct_label smallint NOT NULL CHECK (correct_label IN (0, 1)),
    comment       text,
    reporter      text,                            -- as feedback.reporter (006_security.sql)
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pending_feedback_prediction ON pending_feedback (prediction_id);
