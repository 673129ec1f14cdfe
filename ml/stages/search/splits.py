"""The comparison's splits: the platform's usual held-out split and a validation split carved from
the training split, the same rows for every family."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sklearn.model_selection import train_test_split

from ml.data.snapshots import Snapshot, get_snapshot
from ml.data.splits import split
from ml.platform.config import Settings

if TYPE_CHECKING:
    import pandas as pd


def comparison_splits(
    snapshot_hash: str, space: dict[str, Any], settings: Settings
) -> tuple[Snapshot, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(snapshot, training pool, validation, held-out): the held-out split is the platform's usual
    one (``test_size``, ``seed``); validation is carved from the training split, the same for all."""
    snap = get_snapshot(snapshot_hash, settings)
    train_df, test_df = split(snap.load(), settings.test_size, settings.seed)
    sel = space.get("selection", {})
    n_val = min(
        int(round(len(train_df) * float(sel.get("validation_fraction", 0.1)))),
        int(sel.get("validation_max_rows", 5000)),
    )
    n_val = max(n_val, 2)

    pool, val = train_test_split(train_df, test_size=n_val, random_state=settings.seed, stratify=train_df["label"])
    return snap, pool.reset_index(drop=True), val.reset_index(drop=True), test_df
