-- Identities, quotas and the control plane (issue 8): API keys (hashed), who reported what,
-- rate-limit counters shared by every API process, and the artifact digest of every model version
-- the platform registered / promoted / rolled back (the API serves nothing else).

-- API keys: only the sha256 of the key is stored; `key_id` (the public prefix of the key) finds the
-- row, the hash is compared in constant time. Scopes: predict | feedback | review | admin.
CREATE TABLE api_keys (
    id            bigserial PRIMARY KEY,
    key_id        text NOT NULL UNIQUE,
    name          text NOT NULL,
    key_sha256    text NOT NULL,
    scopes        text[] NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text,
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    CHECK (scopes <@ ARRAY['predict', 'feedback', 'review', 'admin']::text[] AND cardinality(scopes) > 0)
);
CREATE INDEX api_keys_name ON api_keys (name);

-- Who reported: `key:<name>#<key_id>` for a key, `anon:<client address>` for an anonymous caller.
ALTER TABLE feedback ADD COLUMN reporter text;
CREATE INDEX feedback_reporter ON feedback (reporter, created_at);

-- Fixed-window counters of the `limits` library (ml/quotas.py PostgresStorage): one row per
-- (limit, identity, window); atomic INSERT .. ON CONFLICT, so every API process shares them.
CREATE UNLOGGED TABLE rate_limit_counters (
    key           text PRIMARY KEY,
    count         bigint NOT NULL,
    expires_at    timestamptz NOT NULL
);
CREATE INDEX rate_limit_counters_expires ON rate_limit_counters (expires_at);

-- sha256 of the registered model's artifacts (ml.registry.artifact_digest), recorded at registration
-- and on every promotion / rollback event; the API verifies it before it loads a new champion.
ALTER TABLE training_runs ADD COLUMN artifact_sha256 text;
ALTER TABLE model_events ADD COLUMN artifact_sha256 text;
