"""The Kubernetes deployment (deploy/k8s, deploy/helm; issue 24): the kustomize manifests render with
`kubectl kustomize`, every rendered object validates against the Kubernetes JSON schemas OFFLINE
(kubernetes-validate, strict: an unknown field is an error), and the properties that matter hold: probes on
the API's real health routes, the prediction log on each pod's own volume, PDB/HPA on the StatefulSet, no
root, no `latest`, secrets only referenced, the API started like docker-compose.yaml's, the Ingress on the
API Service. The Airflow chart values are checked key by key against the chart's documented schema
(deploy/helm/airflow-chart-values-keys.txt: the chart cannot be fetched offline).

No cluster is needed. Without kubectl the rendering tests skip, saying why, except under CI=true, where a
missing kubectl is a failure."""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import ValidationError
from ports import in_ci

from api.routes.health import router as health_router
from ml.platform.config import Settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
HELM = REPO / "deploy" / "helm"
COMPOSE = REPO / "docker-compose.yaml"
K8S_VERSION = "1.32.0"  # kubectl v1.32 here; kubernetes-validate ships this version's schemas
CHART_VERSION = "1.22.0"

SECRET_NAME = re.compile(r"(PASSWORD|SECRET|FERNET|TOKEN|_KEY$|PASSWD|CREDENTIAL|DATABASE_URL|STORE_URI)", re.I)
URL_WITH_PASSWORD = re.compile(r"://[^/\s@:]+:[^@\s/]+@")
POD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    """`kubectl kustomize deploy/k8s`, parsed: what `| kubectl apply -f -` would send."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if in_ci():
            pytest.fail("CI=true and kubectl is not installed: the Kubernetes manifests cannot be rendered")
        pytest.skip("kubectl is not installed: `kubectl kustomize deploy/k8s` cannot run")
    res = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    docs = [d for d in yaml.safe_load_all(res.stdout) if d]
    assert docs, "kubectl kustomize rendered nothing"
    return docs


def _one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def _api(docs: list[dict]) -> dict:
    return _one(docs, "StatefulSet", "sentiment-api")


def _container(workload: dict, name: str | None = None) -> dict:
    containers = workload["spec"]["template"]["spec"]["containers"]
    return containers[0] if name is None else next(c for c in containers if c["name"] == name)


def _strings(node, path=""):
    """Every (path, string) of a parsed object, keys included."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}", str(k)
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{path}[{i}]")
    elif node is not None:
        yield path, str(node)


def _configmap(docs: list[dict]) -> dict[str, str]:
    return _one(docs, "ConfigMap", "sentiment-platform")["data"]


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


# ------------------------------------------------------------------ offline schema validation
def test_every_rendered_object_validates_offline(rendered):
    """Every object `kubectl kustomize deploy/k8s` renders is valid for Kubernetes 1.32, strictly (no
    unknown fields), from the schemas kubernetes-validate ships: no cluster, no network."""
    kinds = sorted(d["kind"] for d in rendered)
    for doc in rendered:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    for kind in (
        "Namespace",
        "ConfigMap",
        "StatefulSet",
        "Service",
        "Ingress",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Deployment",
        "NetworkPolicy",
    ):
        assert kind in kinds, f"no {kind} rendered: {kinds}"
    # every namespaced object lands in the platform's namespace
    assert {d["metadata"].get("namespace") for d in rendered if d["kind"] != "Namespace"} == {"sentiment"}


def test_the_validator_rejects_broken_objects(rendered):
    """The schema check bites: a misspelt field (which kubectl apply would drop or reject), a wrong type
    and a missing required field each fail validation."""
    sts = _api(rendered)
    typo = copy.deepcopy(sts)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = None
    typo["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {"httpGet": {"path": "/", "port": 8000}}
    wrong_type = copy.deepcopy(sts)
    wrong_type["spec"]["replicas"] = "two"
    missing = copy.deepcopy(sts)
    del missing["spec"]["selector"]
    for broken in (typo, wrong_type, missing):
        with pytest.raises(ValidationError):
            kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


# ------------------------------------------------------------------ the API
def test_api_probes_on_the_real_health_routes(rendered):
    """Readiness on /health/ready, liveness (and startup) on /health/live, on the port the API listens on;
    both paths are routes of the API (api/routes/health.py)."""
    routes = {getattr(r, "path", None) for r in health_router.routes}
    api = _container(_api(rendered), "api")
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    listen = int(api["args"][api["args"].index("--port") + 1])
    for probe, path in (
        ("readinessProbe", "/health/ready"),
        ("livenessProbe", "/health/live"),
        ("startupProbe", "/health/live"),
    ):
        get = api[probe]["httpGet"]
        assert get["path"] == path and path in routes, (probe, get, routes)
        port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
        assert port == listen == 8000, (probe, get)


def test_the_prediction_log_lives_on_each_pods_own_volume(rendered):
    """The API is a StatefulSet whose var/ (where api/runtime/writer.py keeps the prediction log: <var>/spool) is a
    volumeClaimTemplate: one volume per pod, kept when the pod restarts (so it replays its log) and when
    the StatefulSet scales down or is deleted."""
    sts = _api(rendered)
    var_dir = _configmap(rendered)["SENTIMENT_VAR_DIR"]
    assert Settings(var_dir=Path(var_dir)).var == Path(var_dir)  # absolute: not under the repository
    templates = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in _container(sts, "api")["volumeMounts"]}
    assert mounts.get(var_dir) in templates, (mounts, templates)
    pod_volumes = {v["name"] for v in sts["spec"]["template"]["spec"].get("volumes", [])}
    assert mounts[var_dir] not in pod_volumes, "var/ must come from the claim template, not a pod volume"
    template = next(t for t in sts["spec"]["volumeClaimTemplates"] if t["metadata"]["name"] == mounts[var_dir])
    assert template["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    # the governing Service is headless and selects these pods
    headless = _one(rendered, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= labels.items()
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_pdb_and_hpa_target_the_api_statefulset(rendered):
    sts = _api(rendered)
    labels = sts["spec"]["template"]["metadata"]["labels"]
    pdb = _one(rendered, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] >= 1
    hpa = _one(rendered, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "sentiment-api"}
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]  # a drain never blocks at the minimum
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    # the HPA's utilisation needs CPU requests on the pods it scales
    assert _container(sts, "api")["resources"]["requests"]["cpu"]


def test_the_api_starts_with_compose_args(rendered):
    """Same arguments as docker-compose.yaml's `api` service (the image's ENTRYPOINT stays), including
    --no-proxy-headers: X-Forwarded-For is honoured only from trusted_proxies (api/proxies.py)."""
    api = _container(_api(rendered), "api")
    assert "command" not in api, "the image's ENTRYPOINT (tini, docker/entrypoint.sh) must stay"
    assert api["args"] == _compose()["services"]["api"]["command"]
    assert "--no-proxy-headers" in api["args"]
    assert not any(a.startswith("--forwarded-allow-ips") or a == "--proxy-headers" for a in api["args"])


def test_configmap_holds_real_settings_and_trusted_proxies_is_a_cidr_list(rendered):
    """Every SENTIMENT_* key of the ConfigMap is a field of Settings (a typo would be ignored silently:
    extra="ignore"), the values parse, and trusted_proxies is a list of networks that trusts neither
    everyone nor loopback."""
    data = _configmap(rendered)
    fields = set(Settings.model_fields)
    keys = [k for k in data if k.startswith("SENTIMENT_")]
    assert keys
    unknown = [k for k in keys if k.removeprefix("SENTIMENT_").lower() not in fields]
    assert not unknown, f"not settings: {unknown}"
    env = {k: v for k, v in data.items() if k.startswith("SENTIMENT_")}
    saved = {k: os.environ.get(k) for k in env}
    try:
        os.environ.update(env)
        s = Settings()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert s.trusted_proxies, "trusted_proxies must name the ingress controller's CIDR"
    for cidr in s.trusted_proxies:
        net = ipaddress.ip_network(cidr, strict=False)
        assert net.prefixlen >= 8 and not net.is_loopback, cidr
    assert str(s.var) == data["SENTIMENT_VAR_DIR"]


def test_ingress_routes_to_the_api_service_port(rendered):
    ingress = _one(rendered, "Ingress")
    svc = _one(rendered, "Service", "sentiment-api")
    sts = _api(rendered)
    assert ingress["spec"]["ingressClassName"]
    assert ingress["spec"]["tls"], "TLS ends at the ingress controller"
    backends = [p["backend"]["service"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert backends
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    container_ports = {p["name"]: p["containerPort"] for p in _container(sts, "api")["ports"]}
    for b in backends:
        assert b["name"] == svc["metadata"]["name"]
        port = (
            svc_ports[b["port"]["name"]]
            if "name" in b["port"]
            else next(p for p in svc["spec"]["ports"] if p["port"] == b["port"]["number"])
        )
        assert container_ports[port["targetPort"]] == 8000
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    # the body cap of the controller is not below the API's own (the API answers 413 itself)
    body = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(body.removesuffix("m")) * 1024 * 1024 >= int(_configmap(rendered)["SENTIMENT_API_MAX_BODY_BYTES"])
    # only the ingress controller (and this namespace) may connect to the API pods
    policy = _one(rendered, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == [8000]


# ------------------------------------------------------------------ every workload
def _workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in POD_KINDS]


def test_no_container_runs_as_root_and_roots_are_read_only(rendered):
    """Every container: non-root (pod or container runAsNonRoot, a non-zero uid), no privilege escalation,
    no capabilities, a read-only root filesystem (writable paths are volumes), the RuntimeDefault seccomp
    profile, and CPU/memory requests and limits."""
    workloads = _workloads(rendered)
    assert {w["metadata"]["name"] for w in workloads} == {"sentiment-api", "mlflow"}
    for w in workloads:
        pod = w["spec"]["template"]["spec"]
        psc = pod.get("securityContext", {})
        assert pod.get("automountServiceAccountToken") is False, w["metadata"]["name"]
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        for c in pod["containers"] + pod.get("initContainers", []):
            csc = c.get("securityContext", {})
            where = f"{w['metadata']['name']}/{c['name']}"
            assert csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, where
            assert csc.get("runAsUser", psc.get("runAsUser")) not in (None, 0), where
            assert csc.get("allowPrivilegeEscalation") is False, where
            assert csc.get("readOnlyRootFilesystem") is True, where
            assert csc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not csc.get("privileged"), where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (where, kind)
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), f"{where}: no writable /tmp"


def test_images_are_pinned_and_are_the_compose_image(rendered):
    """No `latest` and no untagged image; the image is docker-compose.yaml's (docker/Dockerfile)."""
    compose_image = _compose()["x-app-image"]["image"]  # ${APP_IMAGE:-tweet-sentiment-ops:latest}
    name = re.sub(r"^\$\{[A-Z_]+:-([^}]*)\}$", r"\1", compose_image).rsplit(":", 1)[0]
    images = [c["image"] for w in _workloads(rendered) for c in w["spec"]["template"]["spec"]["containers"]]
    assert images
    for image in images:
        assert "@sha256:" in image or re.fullmatch(r"[^:@]+:[A-Za-z0-9_.-]+", image), image
        tag = image.split("@")[0].rsplit(":", 1)[-1]
        assert tag != "latest" and ":latest" not in image, image
        assert image.split("@")[0].rsplit(":", 1)[0].rsplit("/", 1)[-1] == name, (image, name)


# ------------------------------------------------------------------ secrets
def _secret_refs(docs: list[dict]) -> set[tuple[str, str]]:
    refs: set[tuple[str, str]] = set()
    for w in _workloads(docs):
        pod = w["spec"]["template"]["spec"]
        for c in pod["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
            for src in c.get("envFrom", []):
                assert "secretRef" not in src, "name each secret key (secretKeyRef), not a whole Secret"
        for v in pod.get("volumes", []):
            if "secret" in v:
                for item in v["secret"]["items"]:
                    refs.add((v["secret"]["secretName"], item["key"]))
    return refs


def test_secrets_are_only_referenced(rendered):
    """The rendered manifests hold no Secret object and no secret value: every secret-looking variable
    comes from a secretKeyRef, no string carries a URL with a password; applying them never overwrites
    the Secrets created with `kubectl create secret`."""
    assert not [d for d in rendered if d["kind"] == "Secret"]
    for w in _workloads(rendered):
        for c in w["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env", []):
                if SECRET_NAME.search(e["name"]):
                    assert "value" not in e and "secretKeyRef" in e.get("valueFrom", {}), e
    for key in _configmap(rendered):
        assert not SECRET_NAME.search(key), key
    for path, text in _strings(rendered):
        assert not URL_WITH_PASSWORD.search(text), (path, text)
    assert ("sentiment-postgres", "DATABASE_URL") in _secret_refs(rendered)


def test_the_secrets_template_covers_every_reference_with_placeholders(rendered):
    """deploy/k8s/secrets.example.yaml (documentation, never rendered) names every Secret and key the
    manifests reference, validates, and holds placeholders only."""
    example = K8S / "secrets.example.yaml"
    assert example.name not in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
    defined = set()
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert doc["kind"] == "Secret"
        for key, value in doc["stringData"].items():
            defined.add((doc["metadata"]["name"], key))
            if key.endswith("_USERNAME"):
                continue
            assert "REPLACE-ME" in value, f"{doc['metadata']['name']}.{key} is not a placeholder"
    missing = _secret_refs(rendered) - defined
    assert not missing, f"referenced but not in secrets.example.yaml: {missing}"
    assert "kubectl -n sentiment create secret generic" in example.read_text()


# ------------------------------------------------------------------ MLflow
def test_mlflow_runs_with_basic_auth_behind_its_service(rendered):
    """MLflow runs docker/mlflow-server.sh (`mlflow server --app-name basic-auth`, as compose does), its
    store URL and auth secrets from Secrets, the auth config from a secret volume; the probes send a Host
    the server allows (MLflow 3 refuses unknown Host headers); the Service is what MLFLOW_TRACKING_URI names."""
    mlflow = _one(rendered, "Deployment", "mlflow")
    c = _container(mlflow, "mlflow")
    script = c["args"][0]
    assert script == "/opt/app/docker/mlflow-server.sh" and (REPO / "docker" / "mlflow-server.sh").exists()
    assert "--app-name basic-auth" in (REPO / "docker" / "mlflow-server.sh").read_text()
    assert "--backend-store-uri" not in c["args"], "the store URL (with its password) must not be an argument"
    env = {e["name"]: e for e in c["env"]}
    for name in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        assert "secretKeyRef" in env[name]["valueFrom"], name
    config_path = Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"])
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in mlflow["spec"]["template"]["spec"]["volumes"]}
    assert "secret" in volumes[mounts[str(config_path.parent)]]
    allowed = c["args"][c["args"].index("--allowed-hosts") + 1].split(",")
    for probe in ("readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/health"
        host = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}.get("Host")
        assert host in allowed, (probe, host, allowed)
    uri = _configmap(rendered)["MLFLOW_TRACKING_URI"]
    host, port = re.fullmatch(r"http://([^:/]+):(\d+)", uri).groups()
    svc = _one(rendered, "Service", host)
    assert int(port) in [p["port"] for p in svc["spec"]["ports"]]
    assert host in allowed and f"{host}:{port}" in allowed
    assert svc["spec"]["selector"].items() <= mlflow["spec"]["template"]["metadata"]["labels"].items()


# ------------------------------------------------------------------ Airflow (official Helm chart)
def _chart_keys() -> tuple[str, set[str], set[str]]:
    """(chart version, key paths, open paths) of deploy/helm/airflow-chart-values-keys.txt."""
    text = (HELM / "airflow-chart-values-keys.txt").read_text()
    version = re.search(r"^# chart: apache-airflow/airflow (\S+)$", text, re.M)
    assert version, "the keys file names no chart version"
    keys, open_ = set(), set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        path, *flags = line.split()
        keys.add(path)
        if "open" in flags:
            open_.add(path)
    return version.group(1), keys, open_


def _value_paths(node, prefix: str = ""):
    """Every key path of a values tree; a list of mappings descends as `path[]`."""
    if isinstance(node, dict):
        for k, v in node.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            yield path
            yield from _value_paths(v, path)
    elif isinstance(node, list) and node and all(isinstance(i, dict) for i in node):
        yield f"{prefix}[]"
        for item in node:
            yield from _value_paths(item, f"{prefix}[]")


def unknown_chart_keys(values: dict) -> list[str]:
    """Key paths of ``values`` that the chart's documented schema does not have."""
    _, keys, open_ = _chart_keys()
    bad = []
    for path in _value_paths(values):
        ancestors = [path[: m.start()] for m in re.finditer(r"\.|\[\]", path)]
        if any(a in open_ for a in ancestors):
            continue
        if path not in keys:
            bad.append(path)
    return bad


@pytest.fixture(scope="module")
def airflow_values() -> dict:
    return yaml.safe_load((HELM / "airflow-values.yaml").read_text())


def test_airflow_values_keys_exist_in_the_charts_schema(airflow_values):
    """Every key path of deploy/helm/airflow-values.yaml exists in the pinned chart version's values schema
    (the keys file); the version is the one the values file and its README install."""
    version, _, _ = _chart_keys()
    assert version == CHART_VERSION
    assert unknown_chart_keys(airflow_values) == []
    for doc in (HELM / "airflow-values.yaml", HELM / "README.md"):
        assert f"--version {version}" in doc.read_text(), doc


def test_the_key_check_rejects_misspelt_or_invented_keys(airflow_values):
    """The check bites: a misspelt key (Helm would silently ignore it), a key under a list item, and an
    invented top-level key are each reported; a free-form value (config) accepts anything."""
    bad = copy.deepcopy(airflow_values)
    bad["workers"]["celery"]["queues"] = "default"
    bad["workers"]["celery"]["sets"][0]["queus"] = "scoring"
    bad["postgres"] = {"enabled": False}
    bad["config"]["core"]["anything_goes"] = "1"
    assert sorted(unknown_chart_keys(bad)) == sorted(
        ["workers.celery.queues", "workers.celery.sets[].queus", "postgres", "postgres.enabled"]
    )


def test_airflow_values_run_our_image_with_celery_queues_and_external_database(airflow_values):
    v = airflow_values
    k8s_image = yaml.safe_load((K8S / "kustomization.yaml").read_text())["images"][0]
    assert (v["images"]["airflow"]["repository"], v["images"]["airflow"]["tag"]) == (
        k8s_image["name"],
        k8s_image["newTag"],
    ), "Airflow runs the same image as the API and MLflow"
    assert v["defaultAirflowTag"] != "latest" and v["images"]["airflow"]["tag"] != "latest"
    assert v["airflowVersion"] == "3.3.2"
    assert v["executor"] == "CeleryExecutor"
    celery = v["workers"]["celery"]
    queues = [celery["queue"]] + [s["queue"] for s in celery["sets"]]
    assert sorted(queues) == ["default", "gpu", "scoring"] and celery["enableDefault"] is True
    gpu = next(s for s in celery["sets"] if s["queue"] == "gpu")
    assert "nvidia.com/gpu" in gpu["resources"]["limits"] and gpu["tolerations"]
    # the metadata database is the external one (a Secret), through PgBouncer; no chart PostgreSQL
    assert v["postgresql"]["enabled"] is False
    assert v["pgbouncer"]["enabled"] is True and v["pgbouncer"]["configSecretName"]
    assert v["data"]["metadataSecretName"]
    # secrets only by name, never a value
    for key in ("fernetKey", "apiSecretKey", "jwtSecret", "webserverSecretKey"):
        assert key not in v and v.get(f"{key}SecretName", "x"), key
    assert "metadataConnection" not in v["data"] and "password" not in v["redis"]
    for path, text in _strings(v):
        assert not URL_WITH_PASSWORD.search(text), (path, text)
    env_names = [e["name"] for e in v["env"]]
    assert not [n for n in env_names if SECRET_NAME.search(n)], env_names
    assert {s["envName"] for s in v["secret"]} >= {"DATABASE_URL", "MLFLOW_TRACKING_PASSWORD"}
    # DAGs and plugins are the image's (the folders docker-compose.yaml's Airflow uses), nothing synced
    compose_env = _compose()["x-airflow-env"]
    assert v["config"]["core"]["dags_folder"] == compose_env["AIRFLOW__CORE__DAGS_FOLDER"]
    assert v["config"]["core"]["plugins_folder"] == compose_env["AIRFLOW__CORE__PLUGINS_FOLDER"]
    assert v["dags"]["gitSync"]["enabled"] is False and v["dags"]["persistence"]["enabled"] is False
    # each container its own var/ (an emptyDir per pod), MLflow through its Service in the sentiment namespace
    mount = next(m for m in v["volumeMounts"] if m["mountPath"] == "/opt/app/var")
    assert "emptyDir" in next(vol for vol in v["volumes"] if vol["name"] == mount["name"])
    env = {e["name"]: e.get("value") for e in v["env"]}
    assert env["SENTIMENT_VAR_DIR"] == "/opt/app/var"
    assert env["MLFLOW_TRACKING_URI"].startswith("http://mlflow.sentiment.svc")
    assert v["webserver"]["defaultUser"]["enabled"] is False  # no admin/admin
