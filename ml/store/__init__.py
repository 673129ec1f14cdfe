"""The store: every SQL statement of the platform, one module per group of tables.

Functions take an open psycopg connection first (the caller owns the transaction: one
``with db.connect(settings) as conn`` around several calls is one transaction) and return plain
values, dicts or small dataclasses. Nothing outside this package writes SQL.

- ``training_runs``: ``training_runs``, ``model_events`` and ``comparisons`` (what trained, what was
  decided, what serves)
"""
