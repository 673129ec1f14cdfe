"""One source of configuration: ``config/platform.yaml`` overridden by the environment.

Precedence (highest first): constructor arguments, environment (``SENTIMENT_<KEY>``,
plus ``DATABASE_URL`` / ``MLFLOW_TRACKING_URI`` under their usual names), the YAML file
named by ``SENTIMENT_CONFIG`` (default ``config/platform.yaml`` in the repository).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "config" / "platform.yaml"


def _config_path() -> Path:
    return Path(os.environ.get("SENTIMENT_CONFIG", DEFAULT_CONFIG))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SENTIMENT_", extra="ignore", populate_by_name=True)

    # storage
    database_url: str | None = Field(default=None, validation_alias=AliasChoices("DATABASE_URL", "SENTIMENT_DATABASE_URL"))
    mlflow_tracking_uri: str | None = Field(
        default=None, validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "SENTIMENT_MLFLOW_TRACKING_URI")
    )
    # databases of MLflow and Airflow on the same server (default: <app db>_mlflow, <app db>_airflow)
    mlflow_database: str | None = None
    airflow_database: str | None = None
    var_dir: Path = Path("var")
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

    # training
    seed: int = 42
    test_size: float = 0.2
    default_family: str = "tfidf_lr"

    # model comparison (ml.search / ml.compare); the search spaces live in their own file
    search_space_path: Path = Path("config/search_space.yaml")
    comparison_profile: str = "quick"

    # behavioural checks (ml.behaviour): minimum pass rate per check type before promotion
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

    # monitoring (ml/monitoring.py, DAG sentiment_monitoring)
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
