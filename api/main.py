"""The app factory. ``uvicorn api.main:app --port 8000`` serves :data:`app`.

Importing this module does no I/O: settings are read, the champion loaded and the
prediction writer started in the lifespan, and stopped there (the writer flushes
everything it holds before the process exits).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from anyio import to_thread
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

import ml
from api import contract, docs, errors, metrics
from api.admission import Admission
from api.auth import KeyCache
from api.headers import SecurityHeaders
from api.metrics import MetricsMiddleware
from api.proxies import TrustedProxies
from api.routes import api_router
from api.runtime import inference
from api.runtime.model_manager import ModelManager
from api.runtime.recording import AlertQueue, FeedbackRecorder
from api.runtime.serving import PredictionIds
from api.runtime.writer import PredictionWriter
from ml.platform import security
from ml.platform.config import Settings, get_settings
from ml.platform.quotas import Quotas

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"


def _configure_logging() -> None:
    """Model swaps and writer errors must be visible under a bare ``uvicorn`` too."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("api", "ml"):
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.INFO)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app; ``settings`` default to :func:`ml.platform.config.get_settings` (read at startup)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _configure_logging()
        s = settings or get_settings()
        app.state.settings = s
        # API keys (api/auth.py): checked on the feedback pool's connections, unknown keys cached briefly
        app.state.keys = keys = KeyCache(s.api_key_cache_seconds, s.api_key_negative_cache_seconds)
        app.state.quotas = quotas = Quotas(s)  # per-identity rate limits, counters shared by every process
        app.state.token_key = await to_thread.run_sync(security.signing_key, s)  # feedback tokens
        # serving path (api/runtime/: inference.py, recording.py): signed ids, durable log, batcher, pool, alert thread
        app.state.prediction_ids = ids = await to_thread.run_sync(PredictionIds.for_settings, s)
        app.state.alerts = alert_queue = AlertQueue(s)
        app.state.writer = writer = PredictionWriter(s, on_feedback=alert_queue.put_many)
        app.state.feedback = feedback = FeedbackRecorder(s, ids, alert_queue)
        keys.use_pool(feedback.pool)
        app.state.batcher = inference.make_batcher(s, ids)
        app.state.models = models = ModelManager(s)
        alert_queue.start()
        await to_thread.run_sync(feedback.open)
        await to_thread.run_sync(writer.start)
        await to_thread.run_sync(models.start)  # first champion load; errors are logged, polling retries
        loaded = models.current
        log.info("sentiment API ready: model %s, version %s", s.model_name, loaded.version if loaded else "none yet")
        try:
            yield
        finally:
            await to_thread.run_sync(models.stop)
            await to_thread.run_sync(writer.close)  # drain the prediction log into PostgreSQL
            await to_thread.run_sync(feedback.close)
            await to_thread.run_sync(alert_queue.stop)
            await to_thread.run_sync(quotas.close)
            metrics.process_exit()  # this worker's live gauges leave /metrics' sums
            log.info("sentiment API stopped (%d predictions written)", writer.written)

    app = FastAPI(
        title="Tweet sentiment API",
        version=ml.__version__,
        description="Sentiment of tweets from the registry's champion model; predictions and feedback "
        "are recorded in PostgreSQL.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc are served offline by api/docs.py
        redoc_url=None,
    )
    errors.install(app)  # every error response: {"status", "message", "detail": [...]}
    app.add_middleware(Admission)  # api_max_inflight (503 at once), api_max_body_bytes (413)
    # X-Forwarded-For only from `trusted_proxies` (none by default); launchers pass --no-proxy-headers
    app.add_middleware(TrustedProxies)
    app.add_middleware(SecurityHeaders)  # CSP, X-Frame-Options, nosniff, Referrer-Policy on every answer
    app.add_middleware(MetricsMiddleware)  # outermost: counts every answer, admission's refusals too (api/metrics.py)
    contract.install(app)  # the OpenAPI document states the limits the app enforces (api/contract.py)
    app.include_router(api_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    docs.install(app)  # Swagger UI and ReDoc with packaged assets (no CDN)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    return app


app = create_app()
