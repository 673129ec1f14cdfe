#!/bin/sh
# Entrypoint of the app image: exports the secrets a service names in PLATFORM_SECRETS_ENV
# (space-separated `export KEY='value'` files written by docker/secrets-init.py into the
# `secrets` volume), then runs the command. A named file that is missing is an error: a
# service never starts with a fallback secret.
#   docker compose exec airflow-scheduler /opt/app/docker/entrypoint.sh airflow dags list
set -eu
for f in ${PLATFORM_SECRETS_ENV:-}; do
    if [ ! -r "$f" ]; then
        echo "entrypoint: secrets file $f is missing or unreadable (secrets-init writes it)" >&2
        exit 78
    fi
    set -a
    . "$f"
    set +a
done
exec "$@"
