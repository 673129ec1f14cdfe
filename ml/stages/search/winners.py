"""Step 3 of the comparison: every family's winner (and the champion, once) scored on the same
held-out split; one row per family for the comparison table."""

from __future__ import annotations

from typing import Any

from ml.platform.config import Settings, get_settings
from ml.stages import train
from ml.stages.search.plan import ComparisonPlan


def evaluate_winners(
    plan: ComparisonPlan, winners: list[dict[str, Any]], settings: Settings | None = None
) -> list[dict[str, Any]]:
    """Score every family's winner (and the champion, once) on the same held-out split; returns one
    row per family for the comparison table."""
    s = settings or get_settings()
    cache: dict[str, Any] = {}
    rows = []
    for w in sorted(winners, key=lambda w: plan["families"].index(w["family"])):
        m = train.evaluate(w["run_id"], s, champion_cache=cache)
        rows.append(
            {
                **{k: v for k, v in w.items() if k not in ("val",)},
                "accuracy": m["accuracy"],
                "precision": m["precision"],
                "recall": m["recall"],
                "f1": m["f1"],
                "roc_auc": m["roc_auc"],
                "inference_ms_per_tweet": m["inference_ms_per_tweet"],
                "n_test": m["n"],
                **{f"val_{k}": v for k, v in w["val"].items()},
            }
        )
    if cache.get("metrics"):
        rows_champion = cache["metrics"]
        for r in rows:
            r["champion_version"] = rows_champion.get("version")
            r["champion_accuracy"] = rows_champion.get("accuracy")
    return rows
