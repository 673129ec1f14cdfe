"""The progressive champion's steps inside the training DAG (``ml.platform.progressive`` starts it and
reports on it): :func:`search`, the search task at low priority with a heartbeat of its progress, and
:func:`record_promotion`, the gate's outcome on the progressive row."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from ml.platform import db
from ml.platform.config import Settings, get_settings
from ml.platform.progressive import UNBUDGETED_SECONDS, lower_priority
from ml.stages.search.family import search_family
from ml.stages.search.plan import ComparisonPlan
from ml.stages.search.space import family_spec, load_search_space
from ml.store import progressive as store

log = logging.getLogger(__name__)


def _budgets(plan: ComparisonPlan, settings: Settings) -> dict[str, float]:
    space = load_search_space(settings)
    out = {}
    for f in plan["families"]:
        b = family_spec(f, plan["profile"], plan.get("search_space"), space).get("budget_seconds")
        out[f] = float(b) if b else UNBUDGETED_SECONDS
    return out


def search(
    plan: ComparisonPlan, family: str, progressive_id: int | None = None, settings: Settings | None = None
) -> dict[str, Any]:
    """The DAG's search task: :func:`ml.stages.search.family.search_family`, and for a progressive
    comparison (``progressive_id``) at low priority with a heartbeat of its progress."""
    s = settings or get_settings()
    if progressive_id in (None, "", "None"):
        return search_family(plan, family, s)
    pid = int(progressive_id)
    lower_priority(s)
    budgets = _budgets(plan, s)
    total = sum(budgets.values())
    with db.connect(s) as conn:
        row = store.get(conn, pid)
    base = float(row["done"]) if row else 0.0  # families searched before this one (one search at a time)
    t0 = time.monotonic()
    stop = threading.Event()

    def beat() -> None:
        while True:
            done = base + min(time.monotonic() - t0, 0.99 * budgets[family])
            try:
                with db.connect(s) as conn:
                    store.heartbeat(conn, pid, "training", family, done, total)
            except Exception:
                log.warning("progressive #%s: heartbeat failed", pid, exc_info=True)
            if stop.wait(float(s.progressive_heartbeat_seconds)):
                return

    th = threading.Thread(target=beat, name=f"progress-{family}", daemon=True)
    th.start()
    try:
        out = search_family(plan, family, s)
    finally:
        stop.set()
        th.join(timeout=30)
    done = base + budgets[family]
    with db.connect(s) as conn:  # a finished family counts its whole budget
        store.heartbeat(conn, pid, "evaluating" if done >= total - 1e-6 else "training", family, done, total)
    return out


def record_promotion(progressive_id: Any, result: Mapping[str, Any], settings: Settings | None = None) -> None:
    """The gate's outcome on the progressive row: in shadow, promoted or rejected (the loser stays challenger)."""
    if progressive_id in (None, "", "None"):
        return
    s = settings or get_settings()
    if result.get("shadow_id") is not None:
        state = "shadow"
    else:
        state = "promoted" if result.get("promoted") else "rejected"
    with db.connect(s) as conn:
        store.finish(
            conn,
            int(progressive_id),
            state,
            str(result.get("reason", ""))[:1000],
            result.get("version"),
            result.get("shadow_id"),
        )
