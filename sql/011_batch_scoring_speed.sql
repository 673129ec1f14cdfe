-- Batch scoring, faster and verified (benchmarks/batch_scoring.py).
--
-- predictions_batch (batch_id) WHERE batch_id IS NOT NULL duplicated the leading column of the unique
-- predictions_batch_row (batch_id, source_row) WHERE batch_id IS NOT NULL, which serves every
-- "WHERE batch_id = ..." lookup as well. Each index is paid on every row a batch COPYs in (1.6M rows
-- a large batch): dropping the duplicate made the COPY ~11% faster.
DROP INDEX IF EXISTS predictions_batch;

-- The artifact digest of the batch's model version, from the promotion/rollback event that put it
-- behind the alias: the plan fetches and verifies the version once into the batch folder, and every
-- shard re-checks that copy against this digest before unpickling it (as the API does).
ALTER TABLE batches ADD COLUMN model_sha256 text;
