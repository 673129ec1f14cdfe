#!/usr/bin/env python3
"""One-shot start-up job (compose service ``secrets-init``): generates the deployment's secrets
on first start and writes, into the ``secrets`` volume, one file per consumer.

Nothing secret is published in the repository or in docker-compose.yaml: every password and key
is drawn from ``secrets`` (CSPRNG) the first time, kept in ``secrets.json`` (root only) and reused
on every later start, so restarts keep their logins and the Fernet-encrypted connections stay
readable. Derived files are rewritten on every start (a changed ``POSTGRES_USER`` propagates).

    postgres_password     the database password (POSTGRES_PASSWORD_FILE of the postgres image)
    pgpass                the same for every client (PGPASSFILE): no URL carries a password
    api.env               MLFLOW_TRACKING_USERNAME/PASSWORD
    airflow.env           the above + Airflow's Fernet key, API secret key, JWT secret
    airflow-admin.env     AIRFLOW_ADMIN_USERNAME/PASSWORD (read by the init job only)
    mlflow.env            the MLflow server: Flask secret key, basic-auth admin, auth config path
    mlflow-auth.ini       MLflow basic-auth configuration (auth store on PostgreSQL)

The ``*.env`` files are ``export KEY='value'`` lines, read by docker/entrypoint.sh for the files a
service names in ``PLATFORM_SECRETS_ENV``. Files are mode 0400 (owned by the app user), the
database password 0440 (postgres user, group 0 = the app's group).

    python docker/secrets-init.py [--dir DIR] [--show-logins]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import pwd
import secrets
import sys
from pathlib import Path

# name -> generator; the only place secrets come from
GENERATED = {
    "postgres_password": lambda: secrets.token_urlsafe(24),
    "airflow_fernet_key": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
    "airflow_api_secret_key": lambda: secrets.token_urlsafe(32),
    "airflow_jwt_secret": lambda: secrets.token_urlsafe(48),
    "airflow_admin_password": lambda: secrets.token_urlsafe(18),
    "mlflow_flask_secret_key": lambda: secrets.token_urlsafe(32),
    "mlflow_admin_password": lambda: secrets.token_urlsafe(18),
}


def _q(value: str) -> str:
    """sh single-quoted."""
    return "'" + value.replace("'", "'\"'\"'") + "'"


def _env_file(values: dict[str, str]) -> str:
    return "".join(f"export {k}={_q(v)}\n" for k, v in values.items())


def _write(path: Path, text: str, mode: int, uid: int | None, gid: int | None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if uid is not None and os.geteuid() == 0:
        os.chown(tmp, uid, gid if gid is not None else 0)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def load_or_generate(store: Path) -> tuple[dict[str, str], list[str]]:
    try:
        values = json.loads(store.read_text())
    except FileNotFoundError:
        values = {}
    created = [k for k in GENERATED if not values.get(k)]
    for k in created:
        values[k] = GENERATED[k]()
    if created:
        _write(store, json.dumps(values, indent=1) + "\n", 0o400, 0, 0)
    return values, created


def derived_files(v: dict[str, str], env: dict[str, str], secrets_dir: str) -> dict[str, str]:
    """The files the services read. The database password is never put in a URL: the URLs in
    docker-compose.yaml carry only the user, and libpq (psycopg, SQLAlchemy, Celery's result
    backend, MLflow) takes the password from ``pgpass`` (PGPASSFILE)."""
    user = env.get("POSTGRES_USER") or "sentiment"
    host = env.get("POSTGRES_HOST") or "postgres"
    mlflow_user = env.get("MLFLOW_ADMIN_USERNAME") or "admin"
    airflow_user = env.get("AIRFLOW_ADMIN_USERNAME") or "admin"
    tracking = {"MLFLOW_TRACKING_USERNAME": mlflow_user, "MLFLOW_TRACKING_PASSWORD": v["mlflow_admin_password"]}
    airflow = {
        **tracking,
        "AIRFLOW__CORE__FERNET_KEY": v["airflow_fernet_key"],
        "AIRFLOW__API__SECRET_KEY": v["airflow_api_secret_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": v["airflow_jwt_secret"],
    }
    mlflow = {
        "MLFLOW_FLASK_SERVER_SECRET_KEY": v["mlflow_flask_secret_key"],
        "MLFLOW_AUTH_CONFIG_PATH": f"{secrets_dir}/mlflow-auth.ini",
        "MLFLOW_AUTH_ADMIN_USERNAME": mlflow_user,
        "MLFLOW_AUTH_ADMIN_PASSWORD": v["mlflow_admin_password"],
    }
    ini = (
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = postgresql+psycopg://{user}@{host}:5432/mlflow_auth\n"
        f"admin_username = {mlflow_user}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
        # a verified login is cached 60 s per worker (HMAC-keyed, failures never): README "Security"
        "auth_cache_ttl_seconds = 60\n"
        "auth_cache_max_size = 64\n"
    )
    esc = v["postgres_password"].replace("\\", "\\\\").replace(":", "\\:")
    return {
        "postgres_password": v["postgres_password"],
        "pgpass": f"{host}:5432:*:{user}:{esc}\n",
        "api.env": _env_file(tracking),
        "airflow.env": _env_file(airflow),
        "airflow-admin.env": _env_file(
            {"AIRFLOW_ADMIN_USERNAME": airflow_user, "AIRFLOW_ADMIN_PASSWORD": v["airflow_admin_password"]}
        ),
        "mlflow.env": _env_file(mlflow),
        "mlflow-auth.ini": ini,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=os.environ.get("PLATFORM_SECRETS_DIR", "/run/platform-secrets"))
    p.add_argument("--show-logins", action="store_true", help="print the Airflow and MLflow logins")
    args = p.parse_args(argv)
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(out, 0, 0)
    os.chmod(out, 0o755)
    try:
        app = pwd.getpwnam(os.environ.get("APP_USER", "app"))
        app_uid = app.pw_uid
    except KeyError:
        app_uid = os.geteuid()
    pg_uid = int(os.environ.get("POSTGRES_UID", "999"))  # the postgres user of the official image

    values, created = load_or_generate(out / "secrets.json")
    for name, text in derived_files(values, dict(os.environ), str(out)).items():
        if name == "postgres_password":
            _write(out / name, text, 0o440, pg_uid, 0)
        else:
            _write(out / name, text, 0o400, app_uid, 0)
    print(f"secrets-init: {len(created)} secret(s) generated, {len(GENERATED) - len(created)} kept, in {out}")
    if args.show_logins:
        derived = derived_files(values, dict(os.environ), str(out))
        for name in ("airflow-admin.env",):
            print(derived[name], end="")
        print(f"export MLFLOW_TRACKING_USERNAME={_q(os.environ.get('MLFLOW_ADMIN_USERNAME') or 'admin')}")
        print(f"export MLFLOW_TRACKING_PASSWORD={_q(values['mlflow_admin_password'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
