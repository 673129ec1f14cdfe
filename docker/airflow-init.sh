#!/bin/sh
# One-shot start-up job (compose service `init`): the platform's SQL migrations, Airflow's
# metadata migration (with the FAB auth manager's tables), and the Airflow admin user.
# Its secrets come from airflow.env and airflow-admin.env (docker/secrets-init.py, loaded by
# docker/entrypoint.sh): nothing here has a literal password.
set -eu
: "${AIRFLOW_ADMIN_USERNAME:?airflow-admin.env not loaded (PLATFORM_SECRETS_ENV)}"
: "${AIRFLOW_ADMIN_PASSWORD:?airflow-admin.env not loaded (PLATFORM_SECRETS_ENV)}"
echo "init: platform tables (sql/)"
ml db migrate
echo "init: airflow db migrate"
airflow db migrate
echo "init: FAB roles and the admin user"
# Python rather than the `airflow users create` CLI: the password never appears in argv
python - <<'PY'
import os

from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

user = os.environ["AIRFLOW_ADMIN_USERNAME"]
with get_application_builder() as ab:
    ab.sm.sync_roles()  # Viewer, User, Op, Admin (idempotent)
    if ab.sm.find_user(username=user):
        print(f"init: Airflow admin {user!r} exists (password unchanged)")
    else:
        role = ab.sm.find_role("Admin")
        if not ab.sm.add_user(user, "Platform", "Admin", f"{user}@localhost", role, os.environ["AIRFLOW_ADMIN_PASSWORD"]):
            raise SystemExit("init: could not create the Airflow admin user")
        print(f"init: Airflow admin {user!r} created with role Admin")
PY
echo "init: the logins: docker compose run --rm secrets-init python docker/secrets-init.py --show-logins"
