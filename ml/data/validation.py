"""Validation of a labelled file: clean rows (duplicates merged, label conflicts resolved by
majority, ties dropped) and the report of what was read, rejected and resolved."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml.data import DataError
from ml.data.read import read_labelled


@dataclass
class Validated:
    frame: pd.DataFrame  # columns: text, label (0/1), line
    report: dict[str, Any]


def validate(path: str | Path) -> Validated:
    """Read and clean a labelled file; the report says what was read, rejected and resolved."""
    t0 = time.perf_counter()
    res = read_labelled(path)
    df = pd.DataFrame({"line": res.lines, "label": np.asarray(res.labels, dtype=np.int8), "text": res.texts})
    n_valid = len(df)

    # duplicates and label conflicts
    g = df.groupby("text", sort=False)["label"].agg(["size", "sum"])
    dup = g[g["size"] > 1]
    conflict = dup[(dup["sum"] > 0) & (dup["sum"] < dup["size"])]
    tie = conflict[conflict["sum"] * 2 == conflict["size"]]
    majority = (g["sum"] * 2 > g["size"]).astype(np.int8)
    first = df.drop_duplicates("text", keep="first").set_index("text")
    first["label"] = majority.reindex(first.index).to_numpy()
    first = first.drop(index=tie.index)
    clean = first.reset_index()[["text", "label", "line"]]

    if len(clean) == 0:
        raise DataError(f"no usable rows in {path}: {dict(res.rejected_by_reason) or 'file is empty'}")
    n_pos = int(clean["label"].sum())
    if n_pos == 0 or n_pos == len(clean):
        raise DataError(f"{path} holds only one class ({'positive' if n_pos else 'negative'}); need both")

    report = {
        "source": str(Path(path).resolve()),
        "rows_read": res.rows_read,
        "rows_valid": n_valid,
        "rows_rejected": res.rows_read - n_valid,
        "rejected_by_reason": dict(res.rejected_by_reason),
        "rejected_rows": res.rejected,
        "rejected_rows_listed": len(res.rejected),
        "empty_texts": res.rejected_by_reason.get("empty text", 0),
        "formats": dict(res.formats),
        "latin1_lines": res.encoding.get("latin1_lines", 0),
        "duplicate_texts": int(len(dup)),
        "duplicate_rows_removed": int(dup["size"].sum() - len(dup)),
        "conflicting_texts": int(len(conflict)),
        "conflicts_resolved_by_majority": int(len(conflict) - len(tie)),
        "conflicts_tied_dropped": int(len(tie)),
        "rows_out": int(len(clean)),
        "label_counts": {"negative": int(len(clean) - n_pos), "positive": n_pos},
        "positive_share": round(n_pos / len(clean), 4),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return Validated(frame=clean, report=report)


def report_markdown(report: dict[str, Any]) -> str:
    r = report
    lines = [
        f"# Data validation: {Path(r['source']).name}",
        "",
        "| check | value |",
        "|---|---|",
        f"| rows read | {r['rows_read']:,} |",
        f"| rows rejected | {r['rows_rejected']:,} |",
        f"| empty texts | {r['empty_texts']:,} |",
        f"| Latin-1 decoded lines | {r['latin1_lines']:,} |",
        f"| duplicate texts | {r['duplicate_texts']:,} ({r['duplicate_rows_removed']:,} extra rows removed) |",
        f"| texts with conflicting labels | {r['conflicting_texts']:,} "
        f"(majority: {r['conflicts_resolved_by_majority']:,}, ties dropped: {r['conflicts_tied_dropped']:,}) |",
        f"| rows kept | {r['rows_out']:,} |",
        f"| label balance | negative {r['label_counts']['negative']:,} / positive {r['label_counts']['positive']:,} "
        f"({r['positive_share']:.1%} positive) |",
    ]
    if r.get("snapshot"):
        lines.append(f"| snapshot | `{r['snapshot']}` |")
    if r["rejected_by_reason"]:
        lines += ["", "## Rejected rows by reason", ""]
        lines += [f"- {k}: {v:,}" for k, v in sorted(r["rejected_by_reason"].items())]
        lines += ["", "First rejected rows (line: reason):", ""]
        lines += [f"- line {x['line']}: {x['reason']}" for x in r["rejected_rows"][:20]]
    return "\n".join(lines) + "\n"
