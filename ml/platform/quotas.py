"""Per-identity quotas of the API (``rate_limit_predict``, ``rate_limit_feedback``).

The `limits` library (pinned) parses the limits (``"1200/minute"``, ``"10/second;1000/day"``) and
applies fixed windows (the counting of `limits`' FixedWindowRateLimiter, pre-aggregated below); its
counters live where every API process sees them:

- ``rate_limit_storage_url`` unset (the default, and ``make up``): :class:`PostgresStorage`, a
  `limits` storage over the platform's PostgreSQL (table ``rate_limit_counters``, one atomic
  ``INSERT .. ON CONFLICT`` per hit; SQL in :mod:`ml.store.quotas`);
- ``redis://host:6379/0`` (docker compose runs Redis): `limits`' own ``RedisStorage``.

When the counter store cannot be reached the request is let through and the failure is logged
(at most once a minute): ``/predict`` keeps answering through a database outage, as it does
without quotas.

**Local pre-aggregation** (``rate_limit_local_share``, default 0.02). A round trip to the shared
counter on every request halved the throughput of one API worker (``benchmarks/api_load.py
--quotas``). So each process admits up to ``share x limit`` units of a key on its own, counted
locally, and adds them to the shared counter in one statement when that allowance is used up or
``rate_limit_sync_seconds`` have passed since its last sync, whichever is first. A caller can thus
exceed its limit by at most ``share x limit`` per API process (2% each at the default) — never
more, since a process that last saw the shared count near the limit syncs every hit. Limits
below ``1 / share`` units (e.g. the 30/minute feedback limit) have no allowance: every hit is
counted in the shared store at once. A refused key is refused locally until its window resets
(no round trip per refused request).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import EllipsisType
from typing import Any, TypeVar

import psycopg
from limits import RateLimitItem, parse_many
from limits.storage import Storage, storage_from_string

from ml.platform.config import Settings, get_settings
from ml.store import quotas as store

log = logging.getLogger(__name__)
_T = TypeVar("_T")

NAMESPACE = "smops"


class PostgresStorage(Storage):
    """A `limits` storage on the platform's PostgreSQL: one autocommit connection per process
    (serialised by a lock; a statement is one index lookup), reopened after a failure, and not
    retried for ``retry_seconds`` so an outage costs no request a connect timeout each."""

    STORAGE_SCHEME = ["smops+postgresql"]

    def __init__(
        self,
        uri: str | None = None,
        wrap_exceptions: bool = False,
        settings: Settings | None = None,
        retry_seconds: float = 5.0,
        **options: Any,
    ) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.settings = settings or get_settings()
        self.retry_seconds = retry_seconds
        self._lock = threading.Lock()
        self._cm: AbstractContextManager[psycopg.Connection] | None = None
        self._conn: psycopg.Connection | None = None
        self._down_until = 0.0

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return (psycopg.Error, OSError, RuntimeError)

    def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        from ml.platform import db

        with self._lock:
            if self._conn is None:
                if time.monotonic() < self._down_until:
                    raise RuntimeError("rate-limit store unavailable (retrying shortly)")
                try:
                    cm = db.connect(
                        self.settings,
                        start_embedded=False,
                        autocommit=True,
                        connect_timeout=2,
                        application_name="sentiment-quotas",
                    )
                    self._conn, self._cm = cm.__enter__(), cm
                except Exception:
                    self._down_until = time.monotonic() + self.retry_seconds
                    raise
            try:
                return fn(self._conn, *args)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                self._close()
                self._down_until = time.monotonic() + self.retry_seconds
                raise

    def _close(self) -> None:
        cm, self._cm, self._conn = self._cm, None, None
        if cm is not None:
            try:
                cm.__exit__(None, None, None)
            except Exception:  # noqa: BLE001 - a broken connection closes with an error
                pass

    def close(self) -> None:
        with self._lock:
            self._close()

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self._run(store.incr, key, expiry, amount)

    def get(self, key: str) -> int:
        row = self._run(store.get, key)
        return 0 if row is None else row[0]

    def get_expiry(self, key: str) -> float:
        row = self._run(store.get, key)
        return time.time() if row is None else row[1]

    def check(self) -> bool:
        try:
            return bool(self._run(store.ping))
        except Exception:  # noqa: BLE001
            return False

    def reset(self) -> int | None:
        return self._run(store.reset, "")

    def clear(self, key: str) -> None:
        self._run(store.clear, key)


@dataclass(frozen=True)
class Refusal:
    """Over the limit: how long to wait and what the limit is."""

    retry_after: int
    limit: str
    message: str


@dataclass
class _Local:
    """One key's state in this process: the shared count at the last sync, the units admitted here
    since (not yet in the shared store), when that sync was, and until when the key is refused."""

    shared: int = 0
    pending: int = 0
    synced_at: float = float("-inf")
    refused_until: float = 0.0  # unix time


class Quotas:
    """The API's quotas: ``hit(name, identity, cost)`` -> None (allowed) or a :class:`Refusal`."""

    def __init__(self, settings: Settings | None = None) -> None:
        s = settings or get_settings()
        self.enabled = s.rate_limits_enabled
        self.local_share = s.rate_limit_local_share
        self.sync_seconds = s.rate_limit_sync_seconds
        self._local: dict[str, _Local] = {}
        self._local_lock = threading.Lock()
        self.limits: dict[str, list[RateLimitItem]] = {
            "predict": parse_many(s.rate_limit_predict),
            "feedback": parse_many(s.rate_limit_feedback),
        }
        if s.rate_limit_storage_url:
            storage = (
                storage_from_string(s.rate_limit_storage_url, key_prefix=NAMESPACE)
                if s.rate_limit_storage_url.startswith("redis")
                else storage_from_string(s.rate_limit_storage_url)
            )
            if not isinstance(storage, Storage):  # an async+ scheme: the limiter below is synchronous
                raise ValueError(
                    f"rate_limit_storage_url: {type(storage).__name__} is an async storage; "
                    "the API's limiter needs a synchronous one"
                )
            self.storage: Storage = storage
            self.where = s.rate_limit_storage_url.split("@")[-1]
        else:
            self.storage = PostgresStorage(settings=s)
            self.where = "PostgreSQL (rate_limit_counters)"
        self._last_error_log = 0.0

    def hit(self, name: str, identity: str, cost: int = 1) -> Refusal | None:
        if not self.enabled:
            return None
        for item in self.limits[name]:
            if cost > item.amount:
                return Refusal(
                    int(item.get_expiry()),
                    str(item),
                    f"this request alone ({cost} units) exceeds the {name} limit of {item} per caller; "
                    f"send at most {item.amount} per request",
                )
            try:
                refusal = self._hit(item, name, identity, cost)
                if refusal is None:
                    continue
                return refusal
            except Exception as exc:  # noqa: BLE001 - fail open: the store is down, the API is not
                if time.monotonic() - self._last_error_log > 60:
                    self._last_error_log = time.monotonic()
                    log.warning(
                        "rate limits not enforced: counter store %s unavailable (%s: %s)",
                        self.where,
                        type(exc).__name__,
                        exc,
                    )
                return None
        return None

    def hit_nowait(self, name: str, identity: str, cost: int = 1) -> Refusal | None | EllipsisType:
        """:meth:`hit` without I/O, for the event loop: None (admitted within this process's
        allowance), a :class:`Refusal` (the key is refused until its window resets), or ``...`` when
        the shared store must be asked — then call :meth:`hit` (in a thread); nothing was counted."""
        if not self.enabled:
            return None
        now_m, now = time.monotonic(), time.time()
        with self._local_lock:
            admitted = []
            for item in self.limits[name]:
                st = self._local.get(item.key_for(NAMESPACE, name, identity))
                if st is None or cost > item.amount:
                    return ...
                if st.refused_until > now:
                    return self._refusal(item, name, st.refused_until)
                if not self._fits(st, item, cost, int(item.amount * self.local_share), now_m):
                    return ...
                admitted.append(st)
            for st in admitted:
                st.pending += cost
        return None

    def _fits(self, st: _Local, item: RateLimitItem, cost: int, allowance: int, now: float) -> bool:
        """Within this process's allowance of the key, recently synced, and under the limit as last seen."""
        return bool(
            allowance
            and now - st.synced_at < self.sync_seconds
            and st.pending + cost <= allowance
            and st.shared + st.pending + cost <= item.amount
        )

    def _hit(self, item: RateLimitItem, name: str, identity: str, cost: int) -> Refusal | None:
        """One limit: admitted locally while this process's allowance lasts, else counted in the
        shared store (with what was admitted locally since the last sync)."""
        key = item.key_for(NAMESPACE, name, identity)
        allowance = int(item.amount * self.local_share)
        with self._local_lock:
            st = self._local.get(key)
            if st is None:
                if len(self._local) > 100_000:  # identities come and go: forget the idle ones
                    self._local.clear()
                st = self._local[key] = _Local()
            if st.refused_until > time.time():
                return self._refusal(item, name, st.refused_until)
            if self._fits(st, item, cost, allowance, time.monotonic()):
                st.pending += cost  # admitted here; counted in the shared store at the next sync
                return None
            amount, st.pending = st.pending + cost, 0
        try:
            count = self.storage.incr(key, item.get_expiry(), amount=amount)
        except Exception:
            with self._local_lock:
                st.pending += amount - cost  # the units admitted earlier stay owed
            raise
        with self._local_lock:
            st.shared, st.synced_at = count, time.monotonic()
        if count <= item.amount:
            return None
        reset = self.storage.get_expiry(key)
        with self._local_lock:
            st.refused_until = reset
        return self._refusal(item, name, reset)

    @staticmethod
    def _refusal(item: RateLimitItem, name: str, reset: float) -> Refusal:
        retry = max(1, math.ceil(reset - time.time()))
        return Refusal(retry, str(item), f"rate limit exceeded: {item} per caller for {name}; retry in {retry}s")

    def close(self) -> None:
        if isinstance(self.storage, PostgresStorage):
            self.storage.close()
