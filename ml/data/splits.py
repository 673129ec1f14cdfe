"""Train/held-out split of a snapshot (its stored split where it has one; :func:`split_for` by hash) and
stratified samples."""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import train_test_split

from ml.data.snapshots import Snapshot, get_snapshot
from ml.platform.config import Settings


def split(frame: pd.DataFrame, test_size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified, deterministic train/held-out split of a snapshot.

    A snapshot that stores its own split (``split.parquet``, written by
    :func:`ml.data.snapshots.store_split`; the retraining snapshots do: their held-out set is their
    parent's, see ``ml/stages/retraining/``) is split by it instead: rows whose text is listed as
    ``test`` are held out, rows listed as ``excluded`` are in neither part, all others train.
    :meth:`ml.data.snapshots.Snapshot.load` marks the frame for this."""
    spec = frame.attrs.get("split_path")
    if spec:
        parts = pd.read_parquet(spec)
        test_texts = set(parts.loc[parts["part"] == "test", "text"])
        excluded = set(parts.loc[parts["part"] == "excluded", "text"])
        is_test = frame["text"].isin(test_texts)
        is_train = ~is_test & ~frame["text"].isin(excluded)
        train_df, test_df = frame[is_train].reset_index(drop=True), frame[is_test].reset_index(drop=True)
        train_df.attrs, test_df.attrs = {}, {}
        return train_df, test_df

    train, test = train_test_split(frame, test_size=test_size, random_state=seed, stratify=frame["label"])
    return train.reset_index(drop=True), test.reset_index(drop=True)


def split_for(snapshot_hash: str, settings: Settings) -> tuple[Snapshot, pd.DataFrame, pd.DataFrame]:
    """The stored snapshot ``snapshot_hash`` and its train / held-out split (:func:`split` with the settings'
    ``test_size`` and ``seed``): what training, evaluation and the shadow's calibration all score on."""
    snap = get_snapshot(snapshot_hash, settings)
    frame = snap.load()
    train_df, test_df = split(frame, settings.test_size, settings.seed)
    return snap, train_df, test_df


def stratified_sample(frame: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    if not n or n >= len(frame):
        return frame

    sample, _ = train_test_split(frame, train_size=n, random_state=seed, stratify=frame["label"])
    return sample.reset_index(drop=True)


def calibration_split(
    frame: pd.DataFrame, method: str, seed: int, fraction: float = 0.1, min_rows: int = 200, max_rows: int = 5000
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows to fit on, calibration rows): a stratified share (``fraction``, at most ``max_rows``) of a
    *training* split, held back from the fit so that the served probabilities can be calibrated on rows the
    model never saw (``ml.models.calibration``); never the held-out split the gate scores on. No calibration
    rows (an empty frame) when ``method`` is ``none`` or the split is too small to spare ``min_rows`` and
    keep ten times as many to train on."""
    n_cal = min(int(round(len(frame) * fraction)), int(max_rows))
    if method == "none" or n_cal < min_rows or len(frame) - n_cal < 10 * min_rows or frame["label"].nunique() < 2:
        return frame, frame.iloc[0:0]
    fit_df, cal_df = train_test_split(frame, test_size=n_cal, random_state=seed + 1, stratify=frame["label"])
    return fit_df.reset_index(drop=True), cal_df.reset_index(drop=True)
