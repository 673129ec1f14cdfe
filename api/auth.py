"""Who is calling, and may they: ``Authorization: Bearer <key>`` -> an :class:`ml.platform.security.Identity`
(scopes from ``api_keys``), anonymous callers by client address; per-identity quotas.

- 401 (``WWW-Authenticate: Bearer``): no key where one is needed, or a key that is unknown,
  malformed or revoked;
- 403: a valid key without the scope the endpoint needs;
- 429 (``Retry-After``): the identity's quota for the endpoint is spent.

Verified keys are cached per process for ``api_key_cache_seconds`` (a revoked key is refused within
that time), unknown keys for ``api_key_negative_cache_seconds`` (a key created after a miss works
within that time); keys are checked on the worker's pooled connections (``api_db_pool_size``). Every
error has the one shape of :mod:`api.errors`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Annotated

from anyio import to_thread
from fastapi import Depends, HTTPException, Request, status
from psycopg_pool import ConnectionPool

from api.deps import SettingsDep
from api.errors import database_unavailable
from ml.platform import db, security
from ml.platform.config import Settings
from ml.platform.quotas import Quotas, Refusal
from ml.platform.security import Identity

_CACHE_MAX = 10_000  # live keys cached per process
_NEGATIVE_MAX = 10_000  # unknown keys remembered per process (oldest dropped first)


class KeyCache:
    """Verified keys: key sha256 -> (identity, expiry) for ``seconds``; unknown (or revoked) keys for
    ``negative_seconds`` in a bounded map of their own, so that a flood of random keys neither reaches
    PostgreSQL again within that time nor evicts the live keys. Checks run on the worker's pool (the
    feedback pool, ``api_db_pool_size`` connections: :meth:`use_pool`), never on a connection of
    their own: a flood waits for a pooled connection (503 after the pool's timeout) and cannot open more."""

    def __init__(self, seconds: float, negative_seconds: float = 2.0) -> None:
        self.seconds = seconds
        self.negative_seconds = negative_seconds
        self._items: dict[str, tuple[Identity, float]] = {}
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._pool: Callable[[], ConnectionPool] | None = None
        self.checks = 0  # keys looked up in PostgreSQL (tests, diagnostics)

    def use_pool(self, pool: Callable[[], ConnectionPool]) -> None:
        """Check keys on connections of this pool (a callable: the pool may be opened on first use)."""
        self._pool = pool

    def cached(self, key: str) -> tuple[bool, Identity | None]:
        """(found, identity) from this process's cache only: no I/O (the event loop may call it)."""
        h, now = security.hash_key(key), time.monotonic()
        hit = self._items.get(h)
        if hit is not None and hit[1] > now:
            return True, hit[0]
        miss = self._unknown.get(h)
        if miss is not None and miss > now:
            return True, None
        return False, None

    def _verify(self, key: str, settings: Settings) -> Identity | None:
        if security.parse_key_id(key) is None:  # malformed: no database round trip
            return None
        self.checks += 1
        if self._pool is None:  # an app without a pool (not the API's lifespan): one short connection
            with db.connect(
                settings, start_embedded=False, connect_timeout=3, application_name="sentiment-api"
            ) as conn:
                return security.verify_key(conn, key)
        with self._pool().connection() as conn:
            return security.verify_key(conn, key)

    def get(self, key: str, settings: Settings) -> Identity | None:
        found, ident = self.cached(key)
        if found:
            return ident
        h = security.hash_key(key)
        try:
            ident = self._verify(key, settings)
        except Exception as exc:  # the key cannot be checked: nothing is allowed on it
            raise database_unavailable(f"the API key cannot be checked: {type(exc).__name__}") from exc
        now = time.monotonic()
        with self._lock:
            if ident is None:
                self._unknown[h] = now + self.negative_seconds
                self._unknown.move_to_end(h)
                while len(self._unknown) > _NEGATIVE_MAX:
                    self._unknown.popitem(last=False)
            else:
                self._unknown.pop(h, None)
                if len(self._items) >= _CACHE_MAX:
                    self._items = {k: v for k, v in self._items.items() if v[1] > now}
                    if len(self._items) >= _CACHE_MAX:
                        self._items.clear()
                self._items[h] = (ident, now + self.seconds)
        return ident


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=message, headers={"WWW-Authenticate": "Bearer"})


def _bearer(request: Request) -> str | None:
    """The key sent (None: anonymous), or 401 for a malformed Authorization header."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise _unauthorized("send the API key as `Authorization: Bearer <key>`")
    return key.strip()


def _known(ident: Identity | None) -> Identity:
    if ident is None:
        raise _unauthorized("invalid or revoked API key")
    return ident


def identify(request: Request, settings: Settings) -> Identity:
    """The caller: the key's identity, or the anonymous client address when no key is sent
    (a key not in this process's cache is checked in PostgreSQL: call it off the event loop)."""
    key = _bearer(request)
    if key is None:
        return security.anonymous(request.client.host if request.client else None)
    return _known(request.app.state.keys.get(key, settings))


async def identify_async(request: Request, settings: Settings) -> Identity:
    """:func:`identify` for the event loop: anonymous callers and cached keys without a thread hop."""
    key = _bearer(request)
    if key is None:
        return security.anonymous(request.client.host if request.client else None)
    cache: KeyCache = request.app.state.keys
    found, ident = cache.cached(key)
    if not found:
        ident = await to_thread.run_sync(cache.get, key, settings)
    return _known(ident)


def require(
    *scopes: str, anonymous_if: Callable[[Settings], bool] | None = None, quota: str | None = None
) -> Callable[[Request, Settings], Awaitable[Identity]]:
    """A dependency: the caller, who must hold one of ``scopes`` (``admin`` holds all). Anonymous callers
    pass only where ``anonymous_if(settings)`` is true. With ``quota``, one unit of that quota is charged."""
    need = " or ".join(f"`{s}`" for s in scopes)

    # async: on the event loop, with a thread hop only for I/O (a key not cached, a quota sync)
    async def dependency(request: Request, settings: SettingsDep) -> Identity:
        ident = await identify_async(request, settings)
        if ident.anonymous:
            if anonymous_if is None or not anonymous_if(settings):
                raise _unauthorized(f"this endpoint needs an API key with scope {need}")
        elif not ident.has(*scopes):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"API key {ident.name!r} lacks scope {need} (it has: {', '.join(sorted(ident.scopes))})",
            )
        if quota:
            quotas: Quotas = request.app.state.quotas
            refusal = quotas.hit_nowait(quota, ident.id, 1)
            if refusal is ...:
                refusal = await to_thread.run_sync(quotas.hit, quota, ident.id, 1)
            _refuse(refusal)
        return ident

    return dependency


def _refuse(refusal: Refusal | None) -> None:
    if refusal is not None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, detail=refusal.message, headers={"Retry-After": str(refusal.retry_after)}
        )


def charge(request: Request, ident: Identity, name: str, cost: int) -> None:
    """Spend ``cost`` units of the identity's ``name`` quota, or 429 with Retry-After (may do I/O:
    call it off the event loop)."""
    _refuse(request.app.state.quotas.hit(name, ident.id, cost))


def _anonymous_predict(settings: Settings) -> bool:
    return settings.anonymous_predict


# /predict and /predict/batch: `predict` (or anonymous when open); the batch charges its texts itself
predict_caller = require("predict", anonymous_if=_anonymous_predict, quota="predict")
batch_caller = require("predict", anonymous_if=_anonymous_predict)
# /feedback: anonymous callers where /predict is open (their own predictions only: the token)
feedback_caller = require("feedback", "review", anonymous_if=_anonymous_predict, quota="feedback")
admin_caller = require("admin")
review_caller = require("review")

PredictCaller = Annotated[Identity, Depends(predict_caller)]
BatchCaller = Annotated[Identity, Depends(batch_caller)]
FeedbackCaller = Annotated[Identity, Depends(feedback_caller)]
AdminCaller = Annotated[Identity, Depends(admin_caller)]
ReviewCaller = Annotated[Identity, Depends(review_caller)]


def optional_caller(request: Request, settings: SettingsDep) -> Identity:
    """The caller where anyone may ask (a bad key is still a 401)."""
    return identify(request, settings)


OptionalCaller = Annotated[Identity, Depends(optional_caller)]
