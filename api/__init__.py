"""The FastAPI serving app: predictions from the registry's champion, recorded in PostgreSQL."""
