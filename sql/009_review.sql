-- Labels the loop can trust (ml/review.py): reviewers' decisions on reported / uncertain predictions,
-- one row per decision, by text (the latest decision on a text wins). `accept` and `relabel` make the
-- text's label (`label`) a training label; `reject` excludes the text from every retraining whatever
-- its reports say. The reviewer is the API key's identity (never a typed name).
CREATE TABLE reviews (
    id             bigserial PRIMARY KEY,
    created_at     timestamptz NOT NULL DEFAULT now(),
    model_name     text NOT NULL,
    text           text NOT NULL,                    -- the prediction's text, stripped
    text_sha256    text NOT NULL,                    -- sha256 of `text` (the queue's deduplication key)
    prediction_id  uuid REFERENCES predictions(id),  -- the queue item the reviewer saw
    decision       text NOT NULL CHECK (decision IN ('accept', 'reject', 'relabel')),
    label          smallint CHECK (label IN (0, 1)), -- the label decided (NULL for reject)
    proposed_label smallint CHECK (proposed_label IN (0, 1)),  -- what the item proposed
    reviewer       text NOT NULL,                    -- key:<name>#<key id>
    CHECK ((decision = 'reject') = (label IS NULL))
);
CREATE INDEX reviews_text ON reviews (model_name, text_sha256, created_at DESC, id DESC);

-- A reviewer's accept / relabel is also stored as a report by the reviewer on the item's prediction
-- (so it is consumed by a retraining and shows in lineage like any report); `review_id` marks those
-- rows: the burst guard does not count them.
ALTER TABLE feedback ADD COLUMN review_id bigint REFERENCES reviews(id);
