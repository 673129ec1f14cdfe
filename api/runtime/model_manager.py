"""The served model, and the poller that follows the registry's champion alias.

The whole serving state is one immutable :class:`LoadedModel` behind one attribute. The
poller loads a new champion completely (artifacts, run metadata) before it assigns that
attribute, which is atomic; a request reads the attribute once and uses that object
throughout, so it always sees one consistent (model, version) pair and nothing fails while
the champion changes.

A challenger in shadow (``ml/stages/shadow.py``) is followed the same way: the poller loads the model's
running shadow (artifacts verified against the sha256 recorded on the shadow, taken at registration)
into :attr:`ModelManager.shadow`; :meth:`ModelManager.offer_shadow` hands answered requests to the
scorer of ``api/runtime/shadow.py``, off the request path.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from api import metrics
from api.runtime import serving
from api.runtime.background import BackgroundLoop
from api.runtime.shadow import LoadedShadow, ShadowScorer
from ml.models import SentimentModel
from ml.platform import db, registry, tracking
from ml.platform.config import Settings
from ml.stages.alerts.events import raise_event
from ml.store import shadow as shadow_store
from ml.store import training_runs as training_runs_store

log = logging.getLogger(__name__)


def settle_heap() -> None:
    """Keep what lives as long as the served model (the libraries, the model itself) out of the
    cyclic collector's full passes: those stalled one worker's requests by ~100 ms under load (p99
    at 8 connections 90 ms -> 6 ms with this, ``benchmarks/api_load.py``). The heap is frozen after
    each swap; the model swapped out is unfrozen and collected first, so a swap leaks nothing."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


@dataclass(frozen=True)
class LoadedModel:
    model: SentimentModel
    name: str
    version: int
    run_id: str
    loaded_at: datetime
    run: dict[str, Any] = field(default_factory=dict)  # metrics, tags, started_at (see serving.run_details)


class ModelManager:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.poll_seconds = max(0.05, float(settings.model_poll_seconds))
        self._current: LoadedModel | None = None
        self._configured = False
        self._poller = BackgroundLoop.every("champion-poller", self.poll_seconds, self._poll)
        self._refresh_lock = threading.Lock()
        self.last_check_at: float | None = None
        self.last_error: str | None = None
        self.champion_seen = False
        self._refused: dict[int, float] = {}  # version -> first seen refused (monotonic)
        self._alerted: set[int] = set()
        self.shadow: LoadedShadow | None = None  # the running shadow challenger, if any
        self.shadow_scorer = ShadowScorer(settings)
        self.shadow_error: str | None = None

    @property
    def current(self) -> LoadedModel | None:
        """The model to serve (one attribute read; ``None`` before the first champion)."""
        return self._current

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Load the champion now (if there is one and it can be reached), then follow it."""
        self.refresh()
        settle_heap()
        self.shadow_scorer.start()
        self._poller.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._poller.stop(timeout)
        self.shadow_scorer.stop(timeout)

    def _poll(self) -> None:
        """One tick of the poller thread (every ``poll_seconds``)."""
        if self.refresh():
            settle_heap()

    # ------------------------------------------------------------ one check
    def refresh(self) -> bool:
        """Check the champion alias once; load and swap in a new version. Returns True on a
        swap. Errors (registry unreachable, broken artifacts) are logged, never raised: the
        current model keeps serving and the next poll tries again."""
        with self._refresh_lock:
            try:
                return self._refresh()
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("champion check failed; still serving %s", self._describe(self._current))
                return False
            finally:
                self.last_check_at = time.time()
                self._follow_shadow()

    # ------------------------------------------------------------ the shadow challenger
    def _follow_shadow(self) -> None:
        """Load the model's running shadow (verified), or drop it when none runs. Never raises."""
        try:
            with db.connect(
                self.settings, start_embedded=False, connect_timeout=2, application_name="sentiment-api"
            ) as conn:
                rec = shadow_store.running(conn, self.settings.model_name)
            if rec is None:
                if self.shadow is not None:
                    log.info("shadow #%s (v%s) ended; no shadow scoring", self.shadow.shadow_id, self.shadow.version)
                self.shadow = None
                self.shadow_error = None
                return
            if self.shadow is not None and self.shadow.shadow_id == rec["id"]:
                return
            model = registry.load_verified(int(rec["challenger_version"]), rec["artifact_sha256"], self.settings)
            self.shadow = LoadedShadow(
                shadow_id=int(rec["id"]),
                model=model,
                version=int(rec["challenger_version"]),
                champion_version=int(rec["champion_version"]),
            )
            self.shadow_error = None
            log.info(
                "shadow #%s: v%s loaded beside champion v%s",
                rec["id"],
                rec["challenger_version"],
                rec["champion_version"],
            )
        except Exception as exc:  # noqa: BLE001 - the champion keeps serving; the next poll tries again
            if self.shadow_error is None:
                log.warning("shadow check failed: %s: %s", type(exc).__name__, exc)
            self.shadow_error = f"{type(exc).__name__}: {exc}"

    def offer_shadow(self, champion_version: int, texts: list[str], predictions: list[Any]) -> None:
        """After the answer is built: the champion's predictions of ``texts`` go to the shadow scorer's
        queue (dropped and counted when it is full); nothing when no shadow shadows this version."""
        sh = self.shadow
        if sh is None or sh.champion_version != champion_version:
            return
        self.shadow_scorer.offer(
            sh,
            champion_version,
            [
                (p.id, t, int(p.label_id), float(p.probabilities.positive))
                for t, p in zip(texts, predictions, strict=True)
            ],
        )

    def _refresh(self) -> bool:
        if not self._configured:
            tracking.configure(self.settings)
            self._configured = True
        info = registry.champion(self.settings)
        if info is None:
            if self._current is not None and self.champion_seen:
                log.warning(
                    "the %r alias of %r is gone; still serving version %s",
                    self.settings.champion_alias,
                    self.settings.model_name,
                    self._current.version,
                )
            self.champion_seen = False
            self.last_error = None
            return False
        self.champion_seen = True
        current = self._current
        if current is not None and current.version == info.version:
            self.last_error = None
            return False
        digest = self._verify(info.version)
        if digest is None:
            return False  # not moved by the platform (yet): the current model keeps serving
        started = time.perf_counter()
        try:
            model = registry.load_verified(info.version, digest, self.settings)  # digest checked before unpickling
        except registry.ArtifactMismatch as exc:
            self._refuse(info.version, str(exc), grace=False)
            return False
        self._refused.pop(info.version, None)
        try:
            run = serving.run_details(info.run_id) if info.run_id else {}
        except Exception:
            log.warning("could not read MLflow run %s of version %s", info.run_id, info.version, exc_info=True)
            run = {}
        loaded = LoadedModel(
            model=model,
            name=self.settings.model_name,
            version=info.version,
            run_id=info.run_id or "",
            loaded_at=datetime.now(UTC),
            run=run,
        )
        self._current = loaded  # the swap: one reference assignment
        self.last_error = None
        metrics.model_loaded(loaded.name, loaded.version, time.perf_counter() - started)
        log.info(
            "model swap: %s %s -> version %s (run %s), loaded in %.2fs",
            self.settings.model_name,
            f"version {current.version}" if current else "(none)",
            info.version,
            info.run_id,
            time.perf_counter() - started,
        )
        return True

    # ------------------------------------------------------------ only what the platform promoted
    def _verify(self, version: int) -> str | None:
        """The recorded artifact digest when the model's latest promotion / rollback event (model_events)
        put exactly this version behind the alias; otherwise None (refused, alerted after the grace)."""
        with db.connect(
            self.settings, start_embedded=False, connect_timeout=5, application_name="sentiment-api"
        ) as conn:
            rec = training_runs_store.serving_event(conn, self.settings.model_name)
        if rec is not None and rec[0] == version and rec[1]:
            return rec[1]
        why = (
            "no promotion or rollback event in model_events"
            if rec is None
            else f"the platform's latest promotion/rollback is of v{rec[0]}"
            if rec[0] != version
            else "its promotion event has no artifact digest"
        )
        self._refuse(
            version,
            f"the {self.settings.champion_alias!r} alias points at v{version}, but {why}: "
            f"the alias was moved outside the platform",
            grace=True,
        )
        return None

    def _refuse(self, version: int, reason: str, grace: bool) -> None:
        first = self._refused.setdefault(version, time.monotonic())
        self.last_error = f"not serving v{version}: {reason}"
        if version in self._alerted:
            return
        if grace and time.monotonic() - first < self.settings.champion_verify_grace_seconds:
            log.info(
                "champion v%s not verified yet (%s); waiting up to %.0fs for its promotion event",
                version,
                reason,
                self.settings.champion_verify_grace_seconds,
            )
            return
        self._alerted.add(version)
        serving = self._describe(self._current)
        log.error("REFUSED champion %s v%s: %s; still serving %s", self.settings.model_name, version, reason, serving)
        raise_event(
            "unverified_champion",
            self.settings.model_name,
            f"{self.settings.model_name} v{version} was not loaded: {reason}; still serving {serving}",
            {"version": version, "reason": reason, "serving": serving},
            settings=self.settings,
        )

    @staticmethod
    def _describe(m: LoadedModel | None) -> str:
        return f"version {m.version}" if m else "no model"
