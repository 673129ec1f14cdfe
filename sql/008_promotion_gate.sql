-- The promotion gate (ml/gate.py): the paired evidence against the champion (held-out set with its
-- slices and flips, golden set) and the gate's per-criterion decision, on the candidate's training
-- run and on the retraining that produced it (which adds the reported tweets held out of training).
ALTER TABLE training_runs ADD COLUMN gate jsonb;
ALTER TABLE retrainings ADD COLUMN gate jsonb;
