"""Probe: would a stacked family beat the transformer alone? Reads the TF-IDF and transformer winners
of the latest comparison recorded by ``benchmarks/compare_families.py`` (its databases and ``var/``),
scores them on that comparison's validation and held-out splits and on an external file, fits a
logistic regression on the two winners' logits on the validation split, and prints a table.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python benchmarks/stacking_probe.py \\
        --db-name sentiment_full --var-dir var/full

It writes nothing (the README's "Stacking was measured and not adopted" comes from this probe).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _setup import comparison_platform
from sklearn.linear_model import LogisticRegression

from ml.data.read import read_labelled
from ml.platform import tracking
from ml.platform.config import get_settings
from ml.stages import compare
from ml.stages.search.space import load_search_space
from ml.stages.search.splits import comparison_splits
from ml.stages.train import load_run_model

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
UNIFORM = REPO.parent / "shared" / "data" / "sentiment140_uniform_eval.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db-name", default="sentiment_bench", help="the comparison benchmark's database")
    ap.add_argument("--var-dir", default=str(REPO / "var" / "bench"))
    ap.add_argument("--external", default=str(UNIFORM), help="labelled file outside the training data")
    args = ap.parse_args()

    comparison_platform(args.db_name, args.var_dir)

    s = get_settings()
    tracking.configure(s)
    latest = compare.latest_comparison()
    if latest is None:
        sys.exit("no comparison recorded in that database: run benchmarks/compare_families.py first")
    runs = {r["family"]: r["run_id"] for r in latest["table"]}
    missing = {"tfidf_lr", "transformer"} - set(runs)
    if missing:
        sys.exit(f"the latest comparison has no {sorted(missing)} winner")
    _, _, val, test = comparison_splits(latest["snapshot_hash"], load_search_space(s), s)
    ext = read_labelled(args.external)
    sets = {
        "validation": (list(val.text), np.asarray(val.label)),
        "held-out": (list(test.text), np.asarray(test.label)),
        "external": (ext.texts, np.asarray(ext.labels)),
    }
    proba: dict[tuple[str, str], np.ndarray] = {}
    for fam in ("tfidf_lr", "transformer"):
        model = load_run_model(runs[fam])
        for name, (texts, _) in sets.items():
            t0 = time.perf_counter()
            proba[(fam, name)] = model.predict_proba(texts)[:, 1]
            print(f"{fam} on {name}: {len(texts):,} tweets in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    def logit(p: np.ndarray) -> np.ndarray:
        p = np.clip(p, 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    feats = {k: np.column_stack([logit(proba[("tfidf_lr", k)]), logit(proba[("transformer", k)])]) for k in sets}
    stack = LogisticRegression().fit(feats["validation"], sets["validation"][1])

    def acc(p: np.ndarray, k: str) -> float:
        return float(((p >= 0.5) == sets[k][1]).mean())

    rows = [(fam, {k: acc(proba[(fam, k)], k) for k in sets}) for fam in ("tfidf_lr", "transformer")]
    rows.append(("stacked (LR on logits)", {k: acc(stack.predict_proba(feats[k])[:, 1], k) for k in sets}))
    for w in (0.2, 0.3, 0.4):
        rows.append(
            (
                f"average, TF-IDF weight {w}",
                {k: acc(w * proba[("tfidf_lr", k)] + (1 - w) * proba[("transformer", k)], k) for k in sets},
            )
        )
    print(f"\n# Stacking probe: comparison {latest['id']} ({latest['profile']}), external {Path(args.external).name}\n")
    print("| model | validation | held-out | external |")
    print("|---|---:|---:|---:|")
    for name, a in rows:
        print(f"| {name} | {a['validation']:.4f} | {a['held-out']:.4f} | {a['external']:.4f} |")
    print(f"\nstacker coefficients (tfidf, transformer): {stack.coef_[0].round(3).tolist()}")


if __name__ == "__main__":
    main()
