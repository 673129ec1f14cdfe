"""Pipeline stages: one module per stage of the lifecycle (train, search, compare, batch scoring,
monitoring, retraining, review, shadow, alerts). Every DAG task calls one function here;
the ``ml`` CLI reaches the same functions. Stages call ``ml.store`` for SQL and ``ml.models`` for
the families, and hold no SQL themselves."""
