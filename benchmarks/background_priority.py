"""What ``nice`` buys the API while the progressive champion's background comparison trains
(README "Training": the progressive champion; ml/platform/progressive.py ``lower_priority``).

One process serves like an API worker: a TF-IDF + LR model (the bundled 20k real tweets) scores one tweet per
call; its latency (p50, p99) is measured three times in the same run: alone (the baseline), beside a
background trainer at the same priority (nice 0), and beside it at ``progressive_nice`` (19). The background
trainer stands in for the transformer's fine-tuning: torch matrix products on 2 threads, as many as the
machine has cores here. Prints a table with ratios to the baseline; kills the trainer on exit.

    .venv/bin/python benchmarks/background_priority.py [--calls 3000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ml.data.read import read_labelled  # noqa: E402
from ml.models import create  # noqa: E402

TRAINER = "import torch\ntorch.set_num_threads(2)\na = torch.randn(768, 768)\nwhile True:\n    a = torch.tanh(a @ a)\n"


def latencies(model, texts: list[str], calls: int) -> np.ndarray:
    out = np.empty(calls)
    for i in range(calls):
        t = time.perf_counter()
        model.predict_proba([texts[i % len(texts)]])
        out[i] = time.perf_counter() - t
    return out * 1000.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--nice", type=int, default=19)
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    data = read_labelled(REPO / "tests" / "data" / "sentiment140_20k.csv")
    model = create("tfidf_lr")
    model.fit(data.texts, np.asarray(data.labels))
    texts = data.texts[:1000]
    latencies(model, texts, 300)  # warm-up
    rows = []
    for label, nice in (
        ("alone (baseline)", None),
        ("beside a trainer at nice 0", 0),
        (f"beside it at nice {args.nice}", args.nice),
    ):
        proc = None
        if nice is not None:
            proc = subprocess.Popen(
                [sys.executable, "-c", TRAINER],
                preexec_fn=(lambda n=nice: os.nice(n)),
            )
            time.sleep(8)  # torch imported, the products running
        try:
            ms = latencies(model, texts, args.calls)
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
        rows.append({"condition": label, "p50 ms": np.percentile(ms, 50), "p99 ms": np.percentile(ms, 99)})
    t = pd.DataFrame(rows)
    base = t.iloc[0]
    t["p50 × baseline"] = t["p50 ms"] / base["p50 ms"]
    t["p99 × baseline"] = t["p99 ms"] / base["p99 ms"]
    print(
        f"load average before: {load_before:.1f}, after: {os.getloadavg()[0]:.1f}; {args.calls} single-tweet calls per condition"
    )
    print(t.to_markdown(index=False, floatfmt=".2f"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
