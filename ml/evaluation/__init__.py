"""Judging models: held-out metrics, behavioural checks, paired statistics, the promotion gate,
the external evaluation and the label-free (CBPE) estimate. No I/O to the platform database."""
