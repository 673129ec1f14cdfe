#!/bin/bash
# Runs once, when the postgres volume is first initialised (docker-entrypoint-initdb.d):
# one server, three databases - the platform's records, MLflow's store, Airflow's metadata.
set -euo pipefail
for db in ${SENTIMENT_DATABASES:-sentiment mlflow airflow}; do
    exists=$(psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")
    if [ "$exists" != 1 ]; then
        echo "init: creating database $db"
        psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\""
    fi
done
