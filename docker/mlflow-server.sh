#!/bin/sh
# The MLflow server of the compose deployment, with basic auth (`--app-name basic-auth`).
# Everything secret comes from mlflow.env (docker/secrets-init.py, via docker/entrypoint.sh):
# MLFLOW_FLASK_SERVER_SECRET_KEY, MLFLOW_AUTH_CONFIG_PATH (the auth store on PostgreSQL) and
# MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD (the admin created on first start); the database password
# from PGPASSFILE.
set -eu
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?mlflow.env not loaded (PLATFORM_SECRETS_ENV)}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?mlflow.env not loaded}"
# the auth store's database (also on volumes initialised before it existed)
python - <<'PY'
import configparser, os
import psycopg
from sqlalchemy.engine import make_url
ini = configparser.ConfigParser()
ini.read(os.environ["MLFLOW_AUTH_CONFIG_PATH"])
url = make_url(ini["mlflow"]["database_uri"])
with psycopg.connect(host=url.host, port=url.port or 5432, user=url.username, password=url.password,
                     dbname="postgres", autocommit=True) as conn:
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,)).fetchone():
        conn.execute(f'CREATE DATABASE "{url.database}"')
        print(f"mlflow: created database {url.database}")
PY
exec mlflow server --app-name basic-auth "$@"
