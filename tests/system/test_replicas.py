"""API replicas behind the shipped HAProxy configuration (issue 24, item 3), for real: two uvicorn instances, each
with its own prediction log folder (``api_state_dir``), behind HAProxy rendered by the function ``make up
API_REPLICAS=N`` uses (:func:`ml.platform.startup.proxy.render_haproxy`), over the session's PostgreSQL and
MLflow store, under wrk load.

- one instance is killed with SIGKILL under load: the proxy routes around it (the requests sent while it is down
  all succeed), and once it restarts with the same folder it replays its log: every prediction id a client got
  (2xx with an id) is stored exactly once, none lost, none doubled (rows counted by id);
- a champion alias swap reaches both instances within the poll interval (plus the model's load);
- an ``X-Forwarded-For`` sent by the client is replaced by the proxy: the reporter the API records is the
  client's real address; an instance reached directly by a caller that is not the proxy ignores the header.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest
import yaml
from ports import free_port, in_ci, listens, stop_group

from ml.platform import db, registry, supervisor
from ml.platform.config import get_settings, reset_settings
from ml.platform.startup import commands, proxy
from ml.platform.startup.down import down
from ml.platform.startup.services import services
from ml.platform.startup.status import status
from ml.platform.startup.up import up
from ml.platform.supervisor import ServiceError
from ml.stages import train
from ml.store import training_runs as training_runs_store

API_TESTS = str(Path(__file__).resolve().parent / "api")
if API_TESTS not in sys.path:
    sys.path.insert(0, API_TESTS)
from live import LiveServer  # noqa: E402 - tests/system/api is on the path only from here

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
POLL = 1.0  # the instances' model_poll_seconds
# every answer of wrk's threads, one line each: "<status> <prediction id or ->"
WRK_LUA = """
local n = 0
function setup(thread)
  n = n + 1
  thread:set("tid", n)
end
function init(args)
  out = io.open("%(out)s-" .. tid .. ".txt", "w")
  out:setvbuf("line")
  i = 0
end
function request()
  i = i + 1
  local body = '{"text": "%(text)s ' .. tid .. '-' .. i .. '"}'
  return wrk.format("POST", "/predict", {["Content-Type"] = "application/json"}, body)
end
function response(status, headers, body)
  local id = body and body:match('"id"%%s*:%%s*"([0-9a-f%%-]+)"') or "-"
  out:write(status, " ", id, "\\n")
end
"""


def _tools() -> None:
    missing = [t for t in ("haproxy", "wrk") if not shutil.which(t) and not Path(f"/usr/sbin/{t}").exists()]
    if missing:
        msg = f"{', '.join(missing)} not installed (apt-get install -y haproxy wrk)"
        if in_ci():
            pytest.fail(msg)  # CI installs both (.ci/run): a missing tool must not hide the test
        pytest.skip(msg)


@pytest.fixture(scope="module")
def champion(own_champion, tweets_csv):
    """A TF-IDF champion of the module's own name, and a second registered version for the swap."""
    with own_champion("tweet-sentiment-replicas", tweets_csv, sample_size=300, SENTIMENT_BEHAVIOUR_CHECKS="false") as c:
        run2 = train.train(c.snapshot.hash, "tfidf_lr", sample_size=400)
        train.evaluate(run2)
        c.v2 = train.register(run2)
        yield c


class Instance:
    """One API instance on a fixed port (the proxy's configuration names it), with its own state folder."""

    def __init__(self, port: int, state: Path, logs: Path, **env: str) -> None:
        self.port, self.state, self.logs, self.env = port, state, logs, env
        self.server: LiveServer | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> Instance:
        argv = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--log-level", "warning", *commands.api_proxy_args(get_settings())]
        env = {
            **os.environ,
            "SENTIMENT_API_STATE_DIR": str(self.state),
            "SENTIMENT_TRUSTED_PROXIES": f'["{proxy.PROXY_ADDRESS}"]',  # only the proxy
            "SENTIMENT_MODEL_POLL_SECONDS": str(POLL),
            **self.env,
        }
        log = self.logs / f"api-{self.port}-{time.monotonic_ns()}.log"
        with open(log, "wb") as out:
            p = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.server = LiveServer(p, self.url, log)
        return self

    def wait(self) -> None:
        assert self.server is not None
        self.server.wait_ready(120)

    def kill(self) -> None:
        assert self.server is not None
        os.killpg(self.server.proc.pid, signal.SIGKILL)
        self.server.proc.wait(10)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def _start_proxy(tmp_path: Path, instances: list[Instance]) -> tuple[subprocess.Popen, str]:
    for _ in range(3):  # a free port can be taken before HAProxy binds it: try another
        port = free_port()
        cfg = tmp_path / f"haproxy-{port}.cfg"
        cfg.write_text(proxy.render_haproxy(f"127.0.0.1:{port}", [("127.0.0.1", i.port) for i in instances]))
        log = tmp_path / f"haproxy-{port}.log"
        with open(log, "wb") as out:
            p = subprocess.Popen(proxy.haproxy_argv(cfg), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and p.poll() is None and not listens(p.pid, port):
            time.sleep(0.1)
        if p.poll() is None and listens(p.pid, port):
            return p, f"http://127.0.0.1:{port}"
        stop_group(p)
    raise AssertionError(f"HAProxy did not start:\n{log.read_text()[-2000:]}")


def _wrk(url: str, seconds: float, work: Path, tag: str, conns: int = 8) -> list[tuple[int, str]]:
    """Closed-loop POST /predict load for ``seconds``; every answer as (status, id or "-"). wrk counts a
    connection error (no answer) separately: those are added as status 0."""
    out = work / f"wrk-{tag}"
    script = work / f"wrk-{tag}.lua"
    script.write_text(WRK_LUA % {"out": out, "text": f"replica load {tag} {uuid.uuid4().hex[:6]}"})
    r = subprocess.run(
        ["wrk", "-t2", f"-c{conns}", f"-d{int(seconds)}s", "--timeout", "5s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )
    assert "requests in" in r.stdout, r.stdout + r.stderr
    answers = []
    for f in work.glob(f"wrk-{tag}-*.txt"):
        for line in f.read_text().splitlines():
            status, pid = line.split()
            answers.append((int(status), pid))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", r.stdout)
    if m:
        print(f"wrk {tag}: {m.group(0)}")
    answers += [(0, "-")] * (sum(int(x) for x in m.groups()) if m else 0)
    return answers


def _stored(conn: psycopg.Connection, ids: list[str]) -> Counter:
    rows = conn.execute(
        "SELECT id::text, count(*) FROM predictions WHERE id = ANY(%s::uuid[]) GROUP BY id", (ids,)
    ).fetchall()
    return Counter({pid: n for pid, n in rows})


def test_a_killed_replica_loses_and_doubles_nothing_and_swaps_and_headers_hold(champion, tmp_path, conn):
    _tools()
    s = get_settings()
    # instance a writes its log to PostgreSQL only at a graceful stop or a restart (flush every 10 min): what it
    # acknowledged before the SIGKILL is then in its log only, and must come back from the replay
    a = Instance(
        free_port(),
        tmp_path / "a",
        tmp_path,
        SENTIMENT_PREDICTION_FLUSH_SECONDS="600",
        SENTIMENT_PREDICTION_FLUSH_ROWS="1000000",
    )
    b = Instance(free_port(), tmp_path / "b", tmp_path)
    proxy_proc = None
    try:
        for i in (a, b):
            i.start()
        for i in (a, b):
            i.wait()
        proxy_proc, url = _start_proxy(tmp_path, [a, b])
        time.sleep(2.5)  # rise 2 x inter 1s: both instances UP in the proxy

        # 1. SIGKILL one instance under load
        killer_at = 3.0
        answers: list[tuple[int, str]] = []
        t0 = time.monotonic()
        box: dict[str, list] = {}
        th = threading.Thread(target=lambda: box.setdefault("r", _wrk(url, 6, tmp_path, "kill")))
        th.start()
        time.sleep(killer_at)
        a.kill()
        killed_at = time.monotonic() - t0
        th.join(60)
        answers += box["r"]
        during = Counter(st for st, _ in answers)

        # 2. with the instance down, every request succeeds (the proxy marked it down, or retried the
        # connection that failed on the other instance)
        down = _wrk(url, 3, tmp_path, "down")
        down_codes = Counter(st for st, _ in down)
        assert set(down_codes) == {200}, down_codes
        answers += down

        acked = [pid for st, pid in answers if 200 <= st < 300 and pid != "-"]
        assert len(acked) == sum(1 for st, _ in answers if 200 <= st < 300)  # every 2xx carried an id
        assert len(set(acked)) == len(acked)
        before = _stored(conn, acked)
        in_log_only = len(acked) - len(before)
        assert in_log_only > 0, "instance a took no traffic (or wrote it before the kill)"
        assert list((tmp_path / "a" / "spool").glob("wal-*.log")), "a's prediction log is empty"

        # 3. restart a with the same folder: it replays its log
        a.start()
        a.wait()
        deadline = time.monotonic() + 30
        while len(stored := _stored(conn, acked)) < len(acked) and time.monotonic() < deadline:
            time.sleep(0.2)
        lost = set(acked) - set(stored)
        doubled = {k: n for k, n in stored.items() if n != 1}
        assert not lost, f"{len(lost)} acknowledged predictions lost"
        assert not doubled, doubled
        print(
            f"\nreplicas: {len(answers)} answers, {len(acked)} acknowledged, during the kill (at {killed_at:.1f}s): "
            f"{dict(during)}; while down: {dict(down_codes)}; {in_log_only} were in a's log only and came back "
            f"on restart; lost 0, doubled 0"
        )

        # 4. a champion swap reaches both instances within the poll interval (and the model's load)
        with db.connect(s) as c:
            training_runs_store.lock_promotions(c, s.model_name)
            digest = registry.version_artifact_digest(champion.v2, s)
            registry.move_champion(c, champion.v2, champion.version, "promoted", "test: replicas swap", digest, s)
        moved = time.monotonic()
        took = {}
        while len(took) < 2 and time.monotonic() - moved < 30:
            for name, inst in (("a", a), ("b", b)):
                if name not in took and httpx.get(f"{inst.url}/model", timeout=5).json().get("version") == champion.v2:
                    took[name] = time.monotonic() - moved
            time.sleep(0.05)
        assert set(took) == {"a", "b"}, took
        assert max(took.values()) < POLL + 5.0, took  # detected within POLL; a TF-IDF model loads in well under 5 s
        print(f"champion swap seen by a after {took['a']:.2f}s, by b after {took['b']:.2f}s (poll {POLL}s)")

        # 5. X-Forwarded-For: the proxy replaces a forged value with the client's address (127.0.0.2 here,
        # not the proxy's 127.0.0.1); an instance reached directly from a peer that is not the proxy ignores it
        forged = {"X-Forwarded-For": "198.51.100.66"}
        transport = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(transport=transport, timeout=30) as client:
            for base in (url, url, b.url):
                p = client.post(f"{base}/predict", json={"text": "replica xff check"}, headers=forged)
                assert p.status_code == 200, p.text
                body = p.json()
                r = client.post(
                    f"{base}/feedback",
                    json={"prediction_id": body["id"], "correct_label": 0, "feedback_token": body["feedback_token"]},
                    headers=forged,
                )
                assert r.status_code in (200, 201), r.text
                assert r.json()["reporter"] == "anon:127.0.0.2", r.json()
    finally:
        if proxy_proc is not None:
            stop_group(proxy_proc)
        for i in (a, b):
            i.stop()


def test_the_shipped_configurations_hold_the_rules(tmp_path):
    """The proxy's rules, in the configurations every launcher uses: health checks on /health/ready, the client's
    X-Forwarded-For dropped before the proxy sets its own, retries after a sent request only for idempotent
    methods, and compose's file is exactly what the function renders (``haproxy -c`` accepts both)."""
    _tools()
    cfg = proxy.render_haproxy("127.0.0.1:18000", [("127.0.0.1", 18001), ("127.0.0.1", 18002)])
    assert "option httpchk GET /health/ready" in cfg
    assert cfg.index("http-request del-header X-Forwarded-For") < cfg.index("option forwardfor")
    assert "retry-on conn-failure empty-response 503" in cfg
    assert "http-request disable-l7-retry unless idempotent" in cfg
    assert "acl idempotent method GET HEAD OPTIONS" in cfg
    assert cfg.count("server api") == 4 and "127.0.0.1:18002 check" in cfg  # 2 in each backend
    # no instance ready (no champion yet): the live ones answer with the API's own reason, not HAProxy's 503
    assert "use_backend api_live if { nbsrv(api_instances) eq 0 }" in cfg and "GET /health/live" in cfg
    assert proxy.COMPOSE_CONFIG.read_text() == proxy.render_compose()
    assert "server-template api 10 api:8000 check resolvers docker" in proxy.render_compose()

    # compose: the proxy publishes the API port and mounts that file; `api` publishes nothing (it scales) and
    # trusts X-Forwarded-For from the proxy's fixed address only, inside the network's fixed subnet
    compose = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    px, api = compose["services"]["proxy"], compose["services"]["api"]
    assert "ports" not in api and px["ports"] == ["127.0.0.1:${API_PORT:-8000}:8000"]
    assert "./deploy/haproxy/compose.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in px["volumes"]
    address = px["networks"]["default"]["ipv4_address"]
    assert api["environment"]["SENTIMENT_TRUSTED_PROXIES"] == f'["{address}"]'
    subnet = compose["networks"]["default"]["ipam"]["config"][0]["subnet"]
    default = lambda v: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", v)  # noqa: E731
    assert ipaddress.ip_address(default(address)) in ipaddress.ip_network(default(subnet))
    assert re.fullmatch(r"haproxy:\d+\.\d+\.\d+(-alpine)?", px["image"])
    assert "/health/" in " ".join(px["healthcheck"]["test"])
    for text in (cfg, proxy.render_compose()):
        path = tmp_path / "check.cfg"
        path.write_text(text)
        r = subprocess.run([*proxy.haproxy_argv(path)[:1], "-c", "-f", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture
def own_mlflow_database(platform_env, monkeypatch):
    """An MLflow database of this test's own for the MLflow server ``up`` starts (dropped after): a server on the
    session's database would create the session's experiment with a location the in-process tests cannot use."""
    name = f"{db.database_name(platform_env.database_url)}_rep_{uuid.uuid4().hex[:6]}_mlflow"
    monkeypatch.setenv("SENTIMENT_MLFLOW_DATABASE", name)
    yield name
    with psycopg.connect(db.with_database(db.libpq_url(platform_env.database_url), "postgres"), autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_make_up_runs_replicas_behind_the_proxy(platform_env, own_mlflow_database, monkeypatch, tmp_path, capsys):
    """``make up API_REPLICAS=2`` (``ml services up --api-replicas 2``; here ``up(only="mlflow,api")``, no model): two
    supervised instances on loopback, each with its own prediction log folder and trusting only the proxy,
    HAProxy on the API port, ``status`` shows each; ``up`` with another API_REPLICAS refuses; ``down`` stops all."""
    _tools()
    for attempt in range(3):
        monkeypatch.setenv("SENTIMENT_VAR_DIR", str(tmp_path / f"var{attempt}"))
        monkeypatch.setenv("SENTIMENT_API_PORT", str(free_port()))
        monkeypatch.setenv("SENTIMENT_MLFLOW_PORT", str(free_port()))
        monkeypatch.setenv("SENTIMENT_API_REPLICAS", "2")
        # a model name nobody registered: this MLflow server is empty, and `up` must not wait for a champion
        monkeypatch.setenv("SENTIMENT_MODEL_NAME", f"replicas-up-{uuid.uuid4().hex[:6]}")
        reset_settings()
        s = get_settings()
        try:
            summary = up(settings=s, only="mlflow,api", train=False)
            break
        except ServiceError as e:
            down(s)
            if "in use" not in str(e).lower() or attempt == 2:
                raise
    try:
        assert {n: summary["services"][n]["running"] for n in ("api-1", "api-2", "api")} == dict.fromkeys(
            ("api-1", "api-2", "api"), True
        )
        svcs = services(s)
        haproxy = psutil.Process(svcs["api"].pid(s))
        assert haproxy.name() == "haproxy" and listens(haproxy.pid, s.api_port)
        assert proxy.config_path(s).read_text() == proxy.render_haproxy(
            f"127.0.0.1:{s.api_port}", [("127.0.0.1", s.api_port + 1), ("127.0.0.1", s.api_port + 2)]
        )
        for i in (1, 2):
            svc = svcs[f"api-{i}"]
            leader = psutil.Process(svc.pid(s))
            env = leader.environ()
            assert env["SENTIMENT_API_STATE_DIR"] == str(s.var / "api" / str(i))
            assert json.loads(env["SENTIMENT_TRUSTED_PROXIES"]) == ["127.0.0.1"]
            assert (s.var / "api" / str(i) / "spool").is_dir()  # its own prediction log
            tree = [leader, *leader.children(recursive=True)]
            bound = {c.laddr.ip for p in tree for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
            assert bound == {"127.0.0.1"}, bound  # loopback only: nobody but local callers reach it directly
        assert not (s.var / "spool").exists()  # nothing of the instances' in the shared var/
        # no champion here: no instance is ready, and the proxy lets the live ones answer with the API's reason
        assert httpx.get(f"{svcs['api'].url}/health/live", timeout=5).status_code == 200
        r = httpx.get(f"{svcs['api'].url}/health/ready", timeout=5)
        assert r.status_code == 503 and "model" in r.text, r.text
        capsys.readouterr()
        status(s, interval=0)  # `make status`, without its 1 s CPU sample
        out = capsys.readouterr().out
        assert {ln.split()[0] for ln in out.splitlines() if ln.startswith("api")} == {"api", "api-1", "api-2"}, out

        monkeypatch.setenv("SENTIMENT_API_REPLICAS", "1")
        reset_settings()
        with pytest.raises(ServiceError, match="make down"):
            up(settings=get_settings(), only="mlflow,api", train=False)
    finally:
        stopped = down(s)
    assert {"api", "api-1", "api-2"} <= set(stopped)
    assert not any(supervisor.alive(svc.pid(s)) for svc in services(s).values())
