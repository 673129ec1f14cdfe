"""API replicas behind HAProxy: the proxy's configuration, rendered from ``deploy/haproxy/haproxy.cfg.tmpl``.

One function renders it for every launcher: ``make up API_REPLICAS=N`` (N uvicorn instances on
``127.0.0.1:<api_port + i>``, HAProxy on ``api_port``), docker-compose's ``proxy`` service
(``deploy/haproxy/compose.cfg``: Docker's DNS finds every container of the scaled ``api`` service) and
tests/system/test_replicas.py. Each instance keeps its prediction log in its own folder (``api_state_dir``:
``var/api/<i>``) and honours ``X-Forwarded-For`` only from the proxy (``trusted_proxies``); the proxy
drops any value a client sent and sets the client's address.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from string import Template

from ml.platform.config import REPO_ROOT, Settings
from ml.platform.supervisor import ServiceError

TEMPLATE = REPO_ROOT / "deploy" / "haproxy" / "haproxy.cfg.tmpl"
COMPOSE_CONFIG = REPO_ROOT / "deploy" / "haproxy" / "compose.cfg"
PROXY_ADDRESS = "127.0.0.1"  # where the proxy's connections to the instances come from under `make up`
COMPOSE_MAX_INSTANCES = 10  # server-template slots: `docker compose up --scale api=N` with N up to this
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def render_haproxy(
    bind: str,
    upstreams: Sequence[tuple[str, int]] = (),
    *,
    dns_service: tuple[str, int] | None = None,
    dns_slots: int = COMPOSE_MAX_INSTANCES,
    resolver: str = "127.0.0.11:53",
) -> str:
    """The HAProxy configuration: listen on ``bind`` (``host:port``), forward to ``upstreams``
    ((host, port) of each instance), or with ``dns_service`` = (name, port) to up to ``dns_slots``
    addresses that ``resolver`` (Docker's embedded DNS) gives for ``name``."""
    if bool(upstreams) == bool(dns_service):
        raise ValueError("render_haproxy: give either upstreams or dns_service")
    for host, port in [*upstreams, *([dns_service] if dns_service else [])]:
        if not _NAME.match(host) and ":" not in host:
            raise ValueError(f"render_haproxy: bad upstream host {host!r}")
        if not 0 < int(port) < 65536:
            raise ValueError(f"render_haproxy: bad upstream port {port!r}")
    if upstreams:
        servers = "\n".join(
            f"    server api{i} {_addr(host)}:{port} check" for i, (host, port) in enumerate(upstreams, 1)
        )
        resolvers = ""
    else:
        assert dns_service is not None
        name, port = dns_service
        servers = (
            f"    # one slot per container of the `{name}` service (docker compose up --scale {name}=N, N <= {dns_slots})\n"
            f"    server-template api {dns_slots} {name}:{port} check resolvers docker init-addr none"
        )
        resolvers = (
            "resolvers docker\n"
            f"    nameserver docker {resolver}\n"
            "    resolve_retries 3\n"
            "    timeout resolve 1s\n"
            "    timeout retry 1s\n"
            "    hold valid 5s\n"
            "    hold obsolete 5s\n"
        )
    return Template(TEMPLATE.read_text()).substitute(bind=bind, servers=servers, resolvers=resolvers)


def _addr(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def render_compose() -> str:
    """The configuration docker-compose.yaml mounts into its ``proxy`` service (``deploy/haproxy/compose.cfg``)."""
    return render_haproxy("*:8000", dns_service=("api", 8000))


def instance_port(settings: Settings, i: int) -> int:
    """Instance ``i`` (1-based) of ``make up API_REPLICAS=N`` listens on 127.0.0.1:<api_port + i>."""
    return settings.api_port + i


def instance_state_dir(settings: Settings, i: int) -> Path:
    """Instance ``i``'s private state (its prediction log): ``var/api/<i>``."""
    return settings.var / "api" / str(i)


def config_path(settings: Settings) -> Path:
    return settings.run_dir / "haproxy.cfg"


def write_config(settings: Settings) -> Path:
    """Render ``make up``'s proxy configuration into ``var/run/haproxy.cfg`` and return its path."""
    text = render_haproxy(
        f"{_addr(settings.host)}:{settings.api_port}",
        [("127.0.0.1", instance_port(settings, i)) for i in range(1, settings.api_replicas + 1)],
    )
    path = config_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).exists()), None
    )
    if not found:
        raise ServiceError(
            "API_REPLICAS >= 2 needs HAProxy: `apt-get install haproxy` (Debian) or your system's package"
        )
    return found


def haproxy_argv(config: Path) -> list[str]:
    """HAProxy in the foreground (``-db``: no daemon; the supervisor watches it), logging to stdout."""
    return [haproxy_binary(), "-db", "-f", str(config)]
