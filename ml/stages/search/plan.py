"""Step 1 of the comparison: check the request (families, search space, sample sizes) and open the
parent MLflow run every trial is nested under; the *plan* is what the DAG passes between tasks."""

from __future__ import annotations

import json
import logging
from typing import Any, TypedDict

from ml import models
from ml.data.snapshots import get_snapshot
from ml.platform import tracking
from ml.platform.config import Settings, get_settings
from ml.stages.search import SearchSpaceError
from ml.stages.search.space import family_spec, load_search_space, selection_metric, trials

log = logging.getLogger(__name__)


class ComparisonPlan(TypedDict):
    """The comparison's plan: what ``plan_comparison`` returns and the training DAG passes between its tasks
    (XCom key ``comparison``), as JSON."""

    parent_run_id: str
    snapshot_hash: str
    families: list[str]
    profile: str
    sample_sizes: dict[str, int | None]
    search_space: dict[str, Any]
    airflow_run_id: str | None


def plan_comparison(
    snapshot_hash: str,
    families: list[str] | str | None = None,
    profile: str | None = None,
    sample_sizes: dict[str, int | None] | None = None,
    sample_size: int | None = None,
    search_space: dict[str, Any] | None = None,
    airflow_run_id: str | None = None,
    settings: Settings | None = None,
) -> ComparisonPlan:
    """Check the request and open the parent MLflow run. Sample size per family: ``sample_sizes``
    > ``sample_size`` > the profile's ``sample_size`` > all of the training pool."""
    import mlflow

    s = settings or get_settings()
    profile = profile or s.comparison_profile
    if isinstance(families, str):
        families = [f.strip() for f in families.split(",") if f.strip()]
    families = list(dict.fromkeys(families or [s.default_family]))
    unknown = [f for f in families if f not in models.FAMILIES]
    if unknown:
        raise SearchSpaceError(
            f"unknown model family {', '.join(unknown)}; known: {', '.join(sorted(models.FAMILIES))}"
        )
    search_space = search_space or {}
    stray = set(search_space) - set(families)
    if stray:
        raise SearchSpaceError(f"search space override names families not compared: {sorted(stray)}")
    stray = set(sample_sizes or {}) - set(families)
    if stray:
        raise SearchSpaceError(f"sample sizes name families not compared: {sorted(stray)}")
    space = load_search_space(s)
    specs: dict[str, Any] = {}
    sizes: dict[str, int | None] = {}
    for fam in families:
        spec = family_spec(fam, profile, search_space, space)
        for params in trials(spec, s.seed):  # fail fast on unknown hyperparameters
            models.create(fam, **params)
        specs[fam] = spec
        n = (sample_sizes or {}).get(fam, sample_size if sample_size is not None else spec.get("sample_size"))
        if n is not None and int(n) < 20:
            raise SearchSpaceError(f"sample size for {fam} must be at least 20, got {n}")
        sizes[fam] = int(n) if n else None
    snap = get_snapshot(snapshot_hash, s)

    tracking.configure(s)
    commit = tracking.git_commit()
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(s.experiment_name)
    if exp is None:  # tracking.configure created it; a concurrent deletion is the only way here
        raise SearchSpaceError(f"MLflow experiment {s.experiment_name!r} does not exist")
    run = client.create_run(
        exp.experiment_id,
        run_name=f"comparison-{profile}-{snap.hash[:8]}",
        tags={
            "kind": "comparison",
            "dataset_hash": snap.hash,
            "git_commit": commit,
            "profile": profile,
            "families": ",".join(families),
            **({"airflow_run_id": airflow_run_id} if airflow_run_id else {}),
        },
    )
    parent = run.info.run_id
    client.log_param(parent, "families", ",".join(families))
    client.log_param(parent, "profile", profile)
    client.log_param(parent, "sample_sizes", json.dumps(sizes))
    client.log_param(parent, "selection_metric", selection_metric(space, s))
    client.log_dict(
        parent,
        {"profile": profile, "families": specs, "selection": space["selection"], "timing": space["timing"]},
        "search_space.json",
    )
    plan: ComparisonPlan = {
        "parent_run_id": parent,
        "snapshot_hash": snap.hash,
        "families": families,
        "profile": profile,
        "sample_sizes": sizes,
        "search_space": search_space,
        "airflow_run_id": airflow_run_id,
    }
    log.info(
        "comparison %s on snapshot %s: %s (profile %s, samples %s)",
        parent,
        snap.hash[:16],
        ", ".join(f"{f} ({len(trials(specs[f], s.seed))} trials)" for f in families),
        profile,
        sizes,
    )
    return plan
