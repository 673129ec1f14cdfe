"""The model comparison as a person reads it: one row per family (best params, held-out accuracy, F1,
ROC AUC, accuracy on the external set when ``external_eval_path`` is set, inference ms/tweet, size,
training time, the training budget used, epochs, steps, examples seen, sample size and a link to the
learning curve) as Markdown and HTML, plus a PNG chart of accuracy vs inference time.

The functions here only render (rows in, text or a chart out); the comparison itself (the winner, the
external figures, the MLflow run and the ``comparisons`` row) is ``ml.stages.compare``'s. Views sit above
stages, so a stage never imports this module: it is handed :func:`render` by whoever calls it
(:func:`publish` for the training DAG's ``compare`` task, ``ml compare``, ``ml retrain --mode compare``,
the retraining DAG's ``train`` task).
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from ml.platform.config import Settings
from ml.stages.compare import ComparisonResult, RenderedComparison, write_comparison
from ml.stages.search.plan import ComparisonPlan

COLUMNS = [  # key, header, format
    ("family", "family", "{}"),
    ("params", "best params", None),
    ("accuracy", "accuracy", "{:.4f}"),
    ("f1", "F1", "{:.4f}"),
    ("roc_auc", "ROC AUC", "{:.4f}"),
    ("external_accuracy", "external acc", "{:.4f}"),  # on external_eval_path (ml.evaluation.external), when set
    ("inference_ms_per_tweet", "ms/tweet", "{:.3f}"),
    ("model_size_mb", "size MB", "{:.2f}"),
    ("training_seconds", "train s", "{:.1f}"),
    ("budget", "budget used s", None),  # the family's fits / its budget_seconds (ml.stages.search.family)
    ("epochs", "epochs", "{:.2f}"),  # the best trial's passes over its training pool (fractional)
    ("steps", "steps", "{:,}"),
    ("examples_seen", "seen", "{:,}"),  # examples the best trial trained on (repeats counted)
    ("sample_size", "sample", "{:,}"),  # the training pool it drew from
    ("n_trials", "trials", "{}"),
    ("val_metric", "val", "{:.4f}"),
    ("learning_curve", "curve", None),  # link: the best trial's learning curve in MLflow
]


def _fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"


def _cell(row: dict[str, Any], key: str, fmt: str | None) -> str:
    if key == "params":
        return _fmt_params(row.get("params") or {})
    if key == "budget":
        used, budget = row.get("budget_used_seconds"), row.get("budget_seconds")
        if used is None:
            return "-"
        return f"{used:.0f} / {budget:.0f}" if budget else f"{used:.0f} / -"
    if key == "learning_curve":
        return (row.get("learning_curve") or {}).get("url") or "-"
    if key == "val_metric":
        v = row.get(f"val_{row.get('selection_metric', 'accuracy')}")
    elif key.startswith("external_"):
        v = (row.get("external") or {}).get(key[len("external_") :])
    else:
        v = row.get(key)
    if v is None:
        return "-"
    try:
        return fmt.format(v) if fmt else str(v)
    except (ValueError, TypeError):
        return str(v)


def _link_md(row: dict[str, Any]) -> str:
    url = (row.get("learning_curve") or {}).get("url")
    return f"[curve]({url})" if url else "-"


def _link_html(row: dict[str, Any]) -> str:
    url = (row.get("learning_curve") or {}).get("url")
    if not url or not str(url).lower().startswith(("http://", "https://")):  # never a javascript: or data: link
        return "-"
    return f'<a href="{html.escape(url, quote=True)}">curve</a>'


def to_markdown(rows: list[dict[str, Any]], winner: str | None = None, metric: str = "accuracy") -> str:
    headers = [h if k != "val_metric" else f"val {metric}" for k, h, _ in COLUMNS]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if k in ("family", "params") else "---:" for k, _, _ in COLUMNS) + "|",
    ]
    for r in rows:
        cells = [_cell(r, k, f) if k != "learning_curve" else _link_md(r) for k, _, f in COLUMNS]
        if r["family"] == winner:
            cells[0] = f"**{cells[0]}** (winner)"
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    n_test = rows[0].get("n_test")
    split = f"the same held-out split (n={n_test:,})" if n_test else "the same held-out split"
    notes = [
        f"Metrics on {split}; the winner has the best validation {metric}; training time of the best trial; "
        "ms/tweet: median over repeated scoring of a fixed batch of 1,000 held-out tweets."
    ]
    if any(r.get("budget_used_seconds") is not None for r in rows):
        notes.append(
            "budget used: wall time of the family's fits / its budget (config/search_space.yaml); "
            "epochs, steps, seen: the best trial's passes over its training pool (sample), optimiser "
            "steps and examples trained on; curve: its validation accuracy against steps (MLflow)."
        )
    ext = next((r["external"] for r in rows if r.get("external")), None)
    if ext:
        notes.append(
            f"external acc: on the external set {Path(ext['path']).name} (n={ext['n']:,}, content hash "
            f"{ext['content_hash'][:12]}), never used for training or selection."
        )
    champ = next((r for r in rows if r.get("champion_version")), None)
    if champ:
        ch_ext = champ.get("champion_external_accuracy")
        notes.append(
            f"Current champion v{champ['champion_version']}: held-out accuracy "
            f"{champ['champion_accuracy']:.4f}"
            + (f", external accuracy {ch_ext:.4f}" if ch_ext is not None else "")
            + "."
        )
    return "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"


def to_html(rows: list[dict[str, Any]], winner: str | None = None, metric: str = "accuracy") -> str:
    headers = [h if k != "val_metric" else f"val {metric}" for k, h, _ in COLUMNS]
    out = [
        '<table class="comparison">',
        "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr></thead>",
        "<tbody>",
    ]
    for r in rows:
        cls = ' class="winner"' if r["family"] == winner else ""
        cells = "".join(
            f"<td>{_link_html(r)}</td>" if k == "learning_curve" else f"<td>{html.escape(_cell(r, k, f))}</td>"
            for k, _, f in COLUMNS
        )
        out.append(f"<tr{cls}>{cells}</tr>")
    out.append("</tbody></table>")
    return "\n".join(out) + "\n"


def plot_accuracy_vs_latency(rows: list[dict[str, Any]], path: Path, winner: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        x, y = max(float(r["inference_ms_per_tweet"]), 1e-4), float(r["accuracy"])
        ax.scatter(
            [x],
            [y],
            s=60 + 8 * float(r.get("model_size_mb") or 0) ** 0.5,
            color="tab:red" if r["family"] == winner else "tab:blue",
            zorder=3,
        )
        ax.annotate(r["family"], (x, y), textcoords="offset points", xytext=(6, 4))
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    xs = [max(float(r["inference_ms_per_tweet"]), 1e-4) for r in rows]

    # whole decades, so a log axis always carries labelled ticks (one family included)
    ax.set_xlim(10 ** math.floor(math.log10(min(xs) / 2)), 10 ** math.ceil(math.log10(max(xs) * 3)))
    ax.set_xlabel("inference ms / tweet (log scale)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("Accuracy vs inference time")
    ax.grid(True, which="both", alpha=0.3)
    ys = [float(r["accuracy"]) for r in rows]
    ax.set_ylim(min(ys) - 0.03, max(ys) + 0.03)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(rows: list[dict[str, Any]], winner: str, metric: str, chart_path: Path) -> RenderedComparison:
    """The comparison's Markdown, HTML and chart (written to ``chart_path``): what
    ``ml.stages.compare.write_comparison`` logs to MLflow and stores in ``comparisons``."""
    markdown = to_markdown(rows, winner, metric)
    html_table = to_html(rows, winner, metric)
    chart = plot_accuracy_vs_latency(rows, chart_path, winner)
    return RenderedComparison(markdown, html_table, chart)


def publish(plan: ComparisonPlan, rows: list[dict[str, Any]], settings: Settings | None = None) -> ComparisonResult:
    """Write the comparison rendered by :func:`render` (the training DAG's ``compare`` task): the parent MLflow
    run's artifacts and the ``comparisons`` row. Returns id, winner family and run."""
    return write_comparison(plan, rows, settings, render=render)
