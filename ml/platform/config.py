"""One source of configuration: ``config/platform.yaml`` overridden by the environment.

Precedence (highest first): constructor arguments, environment (``SENTIMENT_<KEY>``,
plus ``DATABASE_URL`` / ``MLFLOW_TRACKING_URI`` under their usual names), the YAML file
named by ``SENTIMENT_CONFIG`` (default ``config/platform.yaml`` in the repository).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from limits import parse_many
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from ml.models import onnx_runtime

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "config" / "platform.yaml"


def _config_path() -> Path:
    return Path(os.environ.get("SENTIMENT_CONFIG", DEFAULT_CONFIG))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SENTIMENT_", extra="ignore", populate_by_name=True)

    # storage
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "SENTIMENT_DATABASE_URL")
    )
    mlflow_tracking_uri: str | None = Field(
        default=None, validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "SENTIMENT_MLFLOW_TRACKING_URI")
    )
    # databases of MLflow and Airflow on the same server (default: <app db>_mlflow, <app db>_airflow)
    mlflow_database: str | None = None
    airflow_database: str | None = None
    var_dir: Path = Path("var")
    # every file one process writes and another reads (ml/platform/storage.py): shards, scored files, drift
    # reports, the monitoring reference. Any fsspec URL (s3://bucket/prefix, file:///srv/shared) or a path;
    # unset: this process's var/ (one host: files stay where they always were)
    shared_storage_url: str | None = None
    # Airflow's executor under `make up` (EXECUTOR=celery): celery runs celery_workers workers, each with its
    # own var/ (var/workers/<n>), on the broker below; the result backend is the platform's PostgreSQL
    airflow_executor: Literal["local", "celery"] = "local"
    celery_broker_url: str = "redis://127.0.0.1:6379/0"
    # Airflow's own metrics (scheduler heartbeats, task durations and outcomes, pool slots, DAG-run
    # durations) sent as StatsD to host:port, e.g. a Prometheus statsd_exporter (compose profile
    # `monitoring`); unset: off. README "Pages and metrics"
    airflow_statsd: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.\-]+:[0-9]{1,5}$")
    celery_workers: int = Field(default=2, ge=1)
    # the queues a worker of this host consumes (a GPU host: "gpu" only); the DAGs route shards to "scoring"
    # and transformer training to "gpu"
    celery_queues: str = "default,scoring,gpu"
    embedded_pg_port: int = 54329

    # ports
    host: str = "127.0.0.1"
    api_port: int = 8000
    airflow_port: int = 8080
    mlflow_port: int = 5000

    # registry
    model_name: str = "tweet-sentiment"
    champion_alias: str = "champion"
    experiment_name: str = "tweet-sentiment"
    promotion_metric: str = "accuracy"
    promotion_margin: float = 0.0
    # external evaluation (ml/evaluation/external.py): a labelled file scored for every evaluated candidate and
    # the champion; a candidate significantly worse on it (paired test, ml/evaluation/stats.py) is not promoted
    external_eval_path: Path | None = None
    promotion_confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    # the promotion gate (ml/evaluation/gate.py): strict = margin + significant paired win + slices + golden set;
    # margin = the plain metric-margin rule (evidence recorded, not enforced)
    promotion_gate: str = "strict"
    gate_slice_tolerance: float = Field(default=0.02, ge=0.0)  # max accuracy drop of a slice (if significant)
    gate_max_golden_flips: int = Field(default=0, ge=0)  # golden texts right -> wrong allowed
    gate_golden_min_confidence: float = Field(default=0.7, ge=0.5, le=1.0)  # champion "right" = p(right) >= this
    golden_path: Path = Path("config/golden.yaml")  # the golden regression set

    # training
    seed: int = 42
    test_size: float = 0.2
    default_family: str = "tfidf_lr"
    # calibration of served probabilities (ml/models/calibration.py), fitted on a split carved from the
    # training split (never the gate's held-out split): temperature keeps every label, platt may move a few
    calibration: Literal["temperature", "platt", "none"] = "temperature"

    # model comparison (ml.stages.search / ml.stages.compare); the search spaces live in their own file
    search_space_path: Path = Path("config/search_space.yaml")
    # the progressive champion (ml/stages/progressive.py): after `make up`'s first champion serves, run this
    # comparison in the background (Airflow, nice'd, one task at a time); its winner goes through the gate
    # and the shadow window. Off: `make up PROGRESSIVE=0`, `ml services up --no-progressive`, or false here
    progressive_champion: bool = True
    progressive_families: list[str] = Field(default_factory=lambda: ["tfidf_lr", "transformer"])
    progressive_profile: Literal["quick", "full"] = "full"
    progressive_search_space: dict[str, Any] = Field(default_factory=dict)  # merged over the profile (DAG param)
    progressive_nice: int = Field(default=19, ge=0, le=19)  # niceness of the background run's tasks
    progressive_heartbeat_seconds: float = Field(default=10.0, gt=0)  # progress written this often
    # a shadow window needs live traffic to observe: while the champion has answered no live request since it
    # began serving (a platform nobody uses yet), the progressive winner is decided by the gate alone instead of
    # waiting in a window that would end empty and reject it (README "The progressive champion"). False: always
    # the window, as for a retraining's challenger
    progressive_shadow_needs_traffic: bool = True
    comparison_profile: str = "quick"

    # behavioural checks (ml.evaluation.behaviour): minimum pass rate per check type before promotion
    behaviour_checks: bool = True
    behaviour_min_functionality: float = 0.8
    behaviour_negation: float = 0.5
    behaviour_invariance: float = 0.85

    # serving
    max_text_chars: int = 1000
    max_batch_size: int = 1000
    model_poll_seconds: float = 5.0
    prediction_flush_seconds: float = 0.5
    prediction_flush_rows: int = 500
    # the API's prediction log (api/runtime/predlog.py): an acknowledged prediction is on local disk first
    prediction_log_max_bytes: int = Field(default=256 * 1024 * 1024, ge=4096)  # past it: 503 + Retry-After
    prediction_log_fsync: bool = True
    prediction_id_secret: str | None = None  # HMAC key of prediction ids; unset: var/secrets/prediction-ids.key
    # micro-batching of concurrent /predict requests (api/runtime/batcher.py)
    predict_batch_max_size: int = Field(default=64, ge=1)
    predict_batch_wait_ms: float = Field(default=1.0, ge=0.0)
    # a transformer champion's runtime at load (ml/models/onnx_runtime.py): unset = the one its export chose
    # (int8 ONNX when within 0.5 point of torch on validation, else fp32 ONNX); torch / onnx / onnx-int8 force one
    transformer_runtime: Literal["torch", "onnx", "onnx-int8"] | None = None
    # processes and admission (make up: uvicorn --workers)
    api_workers: int = Field(default=0, ge=0)  # 0: one per CPU core
    # admission (api/admission.py): a queue with a deadline in front of an adaptive concurrency limit per worker.
    # The limit is what the worker completes within api_latency_target_ms at its measured rate (Little's law),
    # within [api_min_inflight, api_max_inflight]; a request that cannot start within api_queue_deadline_ms is
    # answered 503 + Retry-After: 1 (at once when the queue ahead needs twice that). /health/live, /metrics: never shed
    api_min_inflight: int = Field(default=32, ge=1)  # per worker: the adaptive limit's floor (and start)
    api_max_inflight: int = Field(default=256, ge=1)  # per worker: the adaptive limit's ceiling
    api_latency_target_ms: float = Field(default=20.0, gt=0)  # time an admitted request should spend in the app
    api_queue_deadline_ms: float = Field(default=30.0, gt=0)  # longest wait for a slot before 503
    api_max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)  # larger request bodies: 413
    api_db_pool_size: int = Field(default=4, ge=1)  # pooled connections per worker (/feedback, key checks)
    # a request's body must arrive within this many seconds of its headers, else 408 and the connection closed;
    # a request asks for an admission slot only once its body is read (api/admission.py)
    api_body_timeout_seconds: float = Field(default=5.0, gt=0)
    # API replicas (`make up API_REPLICAS=N`, ml/platform/startup/proxy.py): N >= 2 runs N uvicorn instances on
    # 127.0.0.1:<api_port + i> behind HAProxy on api_port; 1 = one uvicorn on api_port (no proxy)
    api_replicas: int = Field(default=1, ge=1, le=16)
    # an API instance's private state (its prediction log in <this>/spool): unset = var/. Replicas get var/api/<i>
    api_state_dir: Path | None = None

    # monitoring (ml/stages/monitoring/, DAG sentiment_monitoring)
    monitoring_hours: float = 24.0
    monitoring_max_rows: int = 10_000
    monitoring_reference_max_rows: int = 10_000
    monitoring_small_sample_rows: int = 1000
    monitoring_p_value: float = 0.05
    monitoring_num_threshold: float = 0.1
    monitoring_cat_threshold: float = 0.1
    monitoring_text_threshold: float = 0.55
    monitoring_drift_share: float = 0.5
    monitoring_embedding_drift: bool = False
    monitoring_accuracy_tolerance: float = 0.05
    monitoring_min_rows: int = 100

    # alerts (ml/stages/alerts/burst.py): `alert_misclassification_count` reports within `alert_window_seconds`
    # raise one alert per burst; a log line always, a webhook / e-mail when configured
    alert_misclassification_count: int = Field(default=3, ge=1)
    alert_window_seconds: float = Field(default=300.0, gt=0)
    alert_webhook_url: str | None = None
    alert_webhook_timeout_seconds: float = 5.0
    alert_smtp_host: str | None = None
    alert_smtp_port: int = 25
    alert_smtp_user: str | None = None
    alert_smtp_password: str | None = None
    alert_smtp_starttls: bool = False
    alert_email_from: str = "sentiment-platform@localhost"
    alert_email_to: str | None = None  # comma-separated addresses

    # drift-report delivery (ml/stages/alerts/drift_reports.py deliver_report, last task of DAG sentiment_monitoring)
    public_api_url: str | None = None  # base of the links in messages; unset: http://<host>:<api_port>
    report_recipients: str | None = None  # comma-separated addresses that receive every drift report
    report_webhook: bool = True  # alert_webhook_url also receives every report (kind "drift_report")

    # feedback-triggered retraining (ml/stages/retraining/, DAG sentiment_retraining)
    retraining_feedback_fraction: float = 0.005  # reports needed = this x the champion's corpus rows
    retraining_on_drift: bool = False  # a drift report alone also triggers a retraining
    retraining_mode: str = "champion"  # champion (its family + params) | compare
    retraining_promotion_margin: float | None = None  # None: promotion_margin
    retraining_report_eval_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    feedback_review_required: bool = False  # only reviewed reports enter a retraining set
    # labels the loop can trust (ml/stages/review.py): agreement of identities or a reviewer; per-identity cap
    feedback_min_identities: int = Field(default=3, ge=1)  # distinct identities giving one label
    feedback_max_identity_share: float = Field(default=0.1, gt=0.0, le=1.0)  # of the threshold, per identity
    # burst guard (ml/stages/alerts/burst.py rule feedback_burst): pauses the retraining trigger, raises an alert
    feedback_burst_identity_count: int = Field(default=20, ge=1)  # wrong-reports from ONE identity ...
    feedback_burst_window_seconds: float = Field(default=300.0, gt=0)  # ... within this window
    feedback_burst_rate_factor: float = Field(default=10.0, ge=1.0)  # all reports in a window >= this x normal
    feedback_burst_rate_min: int = Field(default=100, ge=1)  # ... and at least this many
    feedback_burst_baseline_hours: float = Field(default=24.0, gt=0)  # "normal": the rate over these hours
    feedback_burst_quiet_seconds: float = Field(default=3600.0, ge=0)  # the burst ends after this quiet time
    # review queue (api/routes/review.py): reported texts + least-confident live predictions
    review_queue_hours: float = Field(default=168.0, gt=0)  # predictions / reports this recent
    # shadow before promotion (ml/stages/shadow.py): a retraining's challenger that passed the gate first serves in
    # shadow until shadow_requests live requests were scored beside the champion or shadow_hours passed
    # (whichever comes first; 0 = no such bound); both 0: no shadow, promotion at once (config/platform.yaml
    # sets the production window)
    shadow_requests: int = Field(default=0, ge=0)
    shadow_hours: float = Field(default=0.0, ge=0.0)
    shadow_min_agreement: float = Field(default=0.8, ge=0.0, le=1.0)  # same label as the champion, share
    shadow_max_accuracy_drop: float = Field(default=0.02, ge=0.0, le=1.0)  # estimated / reviewed, vs champion
    shadow_min_reviewed: int = Field(default=20, ge=1)  # reviewed shadowed texts before they are a criterion
    shadow_queue_max: int = Field(default=10000, ge=1)  # API: shadow items waiting; beyond it dropped (counted)

    # security (ml/platform/security.py, ml/platform/quotas.py, api/auth.py; README "Security"): who may do what
    anonymous_predict: bool = True  # /predict (and /feedback on one's own predictions) without a key
    feedback_token_secret: SecretStr | None = None  # unset: generated once in var/secrets/feedback_token.key (0600)
    feedback_token_max_age_seconds: float = Field(default=7 * 86400, gt=0)
    api_key_cache_seconds: float = Field(default=5.0, ge=0)  # a revoked key is refused within this
    api_key_negative_cache_seconds: float = Field(default=2.0, ge=0)  # an unknown key is refused from cache this long
    # proxies whose X-Forwarded-For / X-Forwarded-Proto the API honours (addresses or CIDRs, e.g. ["10.0.0.5"]);
    # empty (default): no header is trusted, the caller is the socket's peer address
    trusted_proxies: list[str] = Field(default_factory=list)
    # batch scoring reads only files that resolve (after symlinks) under one of these folders; empty: the inbox
    # (var/inbox); relative paths are taken from the repository root
    batch_input_roots: list[Path] = Field(default_factory=list)
    # scored files are written under <this>/<batch id>/ (unset: var/batches)
    batch_output_root: Path | None = None
    # a batch fails (nothing stored in predictions) when more than this share of its rows is rejected
    batch_max_reject_share: float = Field(default=0.05, ge=0.0, le=1.0)
    rate_limits_enabled: bool = True
    rate_limit_predict: str = "1200/minute"  # per identity; a batch counts each text
    rate_limit_feedback: str = "30/minute"  # per identity
    rate_limit_storage_url: str | None = None  # unset: the platform's PostgreSQL; or redis://host:6379/0
    # each API process admits up to this share of a limit on its own before adding it to the shared counter
    # (one round trip per share, not per request); a caller may exceed a limit by this share per process
    rate_limit_local_share: float = Field(default=0.02, ge=0.0, le=0.5)
    rate_limit_sync_seconds: float = Field(default=1.0, gt=0)  # ... and syncs at least this often
    champion_verify_grace_seconds: float = Field(default=30.0, ge=0)  # alias ahead of its event: wait this long
    mlflow_auth: bool = True  # `make up` runs MLflow with --app-name basic-auth
    # MLflow's basic-auth app verifies a login with PBKDF2 (1M rounds, ~0.2 s of CPU, twice per request); a success
    # is cached this long per server worker, keyed by (user, HMAC of the password with a per-process random key):
    # a password change or deleted user takes effect within this many seconds. 0: verify every request
    mlflow_auth_cache_seconds: int = Field(default=60, ge=0, le=600)

    @field_validator("retraining_feedback_fraction")
    @classmethod
    def _check_feedback_fraction(cls, v: float) -> float:
        if not 0.001 <= v <= 0.01:
            raise ValueError(
                f"retraining_feedback_fraction must lie between 0.001 (0.1%) and 0.01 (1%) of the champion's "
                f"training corpus, got {v!r} ({v:.4%}); set it in config/platform.yaml or "
                f"SENTIMENT_RETRAINING_FEEDBACK_FRACTION"
            )
        return v

    @field_validator("rate_limit_predict", "rate_limit_feedback")
    @classmethod
    def _check_rate_limit(cls, v: str) -> str:
        try:
            parse_many(v)
        except ValueError as e:
            raise ValueError(f"a rate limit reads like '300/minute' or '10/second;1000/day', got {v!r} ({e})") from None
        return v

    @field_validator("promotion_gate")
    @classmethod
    def _check_promotion_gate(cls, v: str) -> str:
        if v not in ("strict", "margin"):
            raise ValueError(f"promotion_gate must be 'strict' or 'margin', got {v!r}")
        return v

    @field_validator("retraining_mode")
    @classmethod
    def _check_retraining_mode(cls, v: str) -> str:
        if v not in ("champion", "compare"):
            raise ValueError(f"retraining_mode must be 'champion' or 'compare', got {v!r}")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_path()
        if path.exists():
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    # ---- derived paths -------------------------------------------------------
    @property
    def var(self) -> Path:
        p = self.var_dir if self.var_dir.is_absolute() else REPO_ROOT / self.var_dir
        return p

    @property
    def snapshots_dir(self) -> Path:
        """Training snapshots (written by one task, read by the next, maybe on another Celery worker): under the
        shared store when it is a folder (a path or ``file://``), else ``var/snapshots`` (README "Scaling out")."""
        url = self.shared_storage_url
        if url and (url.startswith("file://") or "://" not in url):
            p = Path(url.removeprefix("file://")).expanduser()
            return (p if p.is_absolute() else REPO_ROOT / p) / "snapshots"
        return self.var / "snapshots"

    @property
    def artifacts_dir(self) -> Path:
        return self.var / "mlartifacts"

    @property
    def run_dir(self) -> Path:
        return self.var / "run"

    @property
    def logs_dir(self) -> Path:
        return self.var / "logs"

    @property
    def reports_dir(self) -> Path:
        return self.var / "reports"

    @property
    def reference_dir(self) -> Path:
        return self.var / "reference"

    @property
    def api_url(self) -> str:
        """The API's public base URL (no trailing slash) for links sent to people: ``public_api_url``,
        else ``http://<host>:<api_port>`` (a wildcard host becomes 127.0.0.1)."""
        if self.public_api_url:
            return self.public_api_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.api_port}"

    @property
    def external_eval_file(self) -> Path | None:
        """``external_eval_path`` resolved against the repository root (None: unset)."""
        p = self.external_eval_path
        if p is None or str(p) in ("", "."):
            return None
        return p if p.is_absolute() else REPO_ROOT / p

    def reference_version_dir(self, version: int) -> Path:
        """The monitoring reference of one champion version (and its calibrator, ``ml.evaluation.estimate``)."""
        return self.reference_dir / self.model_name / f"v{version}"

    @property
    def search_space_file(self) -> Path:
        p = self.search_space_path
        return p if p.is_absolute() else REPO_ROOT / p

    def as_public_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


@lru_cache
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests and the CLI change the environment)."""
    get_settings.cache_clear()


def _transformer_runtime() -> str | None:
    return get_settings().transformer_runtime


# the models read no settings: a transformer's serving runtime at load asks this (ml/models/onnx_runtime.py)
onnx_runtime.runtime_setting = _transformer_runtime
