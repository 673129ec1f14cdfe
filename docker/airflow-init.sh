#!/bin/sh
# One-shot start-up job (compose service `init`): the platform's SQL migrations, Airflow's
# metadata migration, and the Airflow admin password.
set -eu
echo "init: platform tables (sql/)"
ml db migrate
echo "init: airflow db migrate"
airflow db migrate
python - <<'PY'
import json, os, secrets
path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
user = os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin").split(",")[0].split(":")[0]
wanted = os.environ.get("AIRFLOW_ADMIN_PASSWORD") or None
try:
    passwords = json.load(open(path))
except (OSError, ValueError):
    passwords = {}
if wanted or user not in passwords:
    passwords[user] = wanted or "".join(secrets.choice("abcdefghkmnpqrstuvwxyzABCDEFGHKMNPQRSTUVWXYZ23456789") for _ in range(16))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(passwords) + "\n")
print(f"init: Airflow login: {user} / {passwords[user]}  (docker compose logs init)")
PY
