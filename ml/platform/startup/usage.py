"""What the platform's processes cost: CPU (% of one core over an interval) and resident memory per service
(``make status``; ``benchmarks/idle_cost.py`` over a minute)."""

from __future__ import annotations

import time
from typing import Any

import psutil

from ml.platform.config import Settings


def postmaster_pid(settings: Settings) -> int | None:
    """The embedded PostgreSQL's postmaster (``var/pg/postmaster.pid``) while it runs, else None."""
    try:
        pid = int((settings.var / "pg" / "postmaster.pid").read_text().split()[0])
        return pid if psutil.Process(pid).name() == "postgres" else None
    except (OSError, ValueError, IndexError, psutil.Error):
        return None


def tree(pid: int) -> list[psutil.Process]:
    """``pid`` and its descendants (empty when it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _cpu_seconds(p: psutil.Process) -> float | None:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


def _key(p: psutil.Process) -> tuple[int, float]:
    try:
        return p.pid, p.create_time()
    except psutil.Error:
        return p.pid, 0.0


def _assign(roots: dict[str, int]) -> dict[str, list[psutil.Process]]:
    """Each root's processes, every process under its nearest root only."""
    trees = {name: tree(pid) for name, pid in roots.items()}
    owner: dict[int, str] = {}
    for name in sorted(trees, key=lambda n: len(trees[n])):  # smaller trees are the nearer roots
        for p in trees[name]:
            owner.setdefault(p.pid, name)
    return {name: [p for p in procs if owner[p.pid] == name] for name, procs in trees.items()}


def usage(roots: dict[str, int], interval: float = 1.0) -> dict[str, dict[str, Any]]:
    """Per service (``name -> root pid``): its processes (the root and its descendants), their CPU over the
    next ``interval`` seconds as % of one core, and the sum of their resident memory (RSS, MiB; pages that
    forked workers share count once per process). A process that starts during the interval counts with
    the CPU it used since it started; one that ends during it is not counted. A root inside another's tree
    (the services under the supervisor) counts for itself only: each process counts once, for its nearest root."""
    before = {_key(p): _cpu_seconds(p) for procs in _assign(roots).values() for p in procs}
    t0 = time.monotonic()
    time.sleep(interval)
    elapsed = time.monotonic() - t0
    out: dict[str, dict[str, Any]] = {}
    for name, procs in _assign(roots).items():
        cpu = rss = 0.0
        for p in procs:
            now = _cpu_seconds(p)
            if now is None:
                continue
            cpu += now - (before.get(_key(p)) or 0.0)
            try:
                rss += p.memory_info().rss
            except psutil.Error:
                pass
        out[name] = {
            "processes": len(procs),
            "cpu_percent": round(100 * cpu / elapsed, 1),
            "rss_mib": round(rss / 2**20),
        }
    return out


def platform_roots(settings: Settings, st: dict[str, Any]) -> dict[str, int]:
    """``name -> root pid`` of what runs, from ``status``'s dict: the services, the supervisor, the
    embedded PostgreSQL."""
    roots = {name: x["pid"] for name, x in st["services"].items() if x["pid"]}
    if st["supervisor"]["pid"]:
        roots["supervisor"] = st["supervisor"]["pid"]
    if st["postgres"].get("embedded") and (pg := postmaster_pid(settings)):
        roots["postgres"] = pg
    return roots


def usage_text(x: dict[str, Any]) -> str:
    """``12 proc  CPU   3.4%  RSS   512 MiB`` (empty when not sampled)."""
    if "cpu_percent" not in x:
        return ""
    return f"{x['processes']:>2} proc  CPU {x['cpu_percent']:5.1f}%  RSS {x['rss_mib']:>5,} MiB"
