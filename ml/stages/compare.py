"""The model comparison: one row per family (best params, held-out accuracy, F1, ROC AUC,
accuracy on the external set when ``external_eval_path`` is set,
inference ms/tweet, size, training time, the training budget used, epochs, steps, examples seen,
sample size and a link to the learning curve) as Markdown and HTML, plus a PNG chart of
accuracy vs inference time; logged to the parent MLflow run and stored in PostgreSQL
(``comparisons``). :func:`latest_comparison` reads the newest one back (API, ``ml compare --show``).

The winner is the family whose best trial scored highest on the *validation* split (the
selection metric, ``accuracy`` unless configured), so the held-out split only reports; it is
then registered and goes through the champion/challenger gate (``ml.stages.promotion.promote``).
"""

from __future__ import annotations

import html
import logging
import math
from pathlib import Path
from typing import Any, TypedDict

from ml.data import DataError
from ml.data.snapshots import validate_and_snapshot
from ml.platform import db, tracking
from ml.platform.config import Settings, get_settings
from ml.platform.progress import ProgressFn, report
from ml.stages import promotion, train
from ml.stages.promotion import GateResult
from ml.stages.search.family import search_family
from ml.stages.search.plan import ComparisonPlan, plan_comparison
from ml.stages.search.space import load_search_space, selection_metric
from ml.stages.search.winners import evaluate_winners
from ml.store import models as store
from ml.store import snapshots as snapshots_store

log = logging.getLogger(__name__)


class ComparisonResult(TypedDict):
    """What :func:`write_comparison` returns (the training DAG's ``compare`` task, one XCom per key)."""

    id: int
    parent_run_id: str
    winner_family: str
    winner_run_id: str


class ComparisonRun(ComparisonResult, total=False):
    """:func:`run_comparison`'s result: the comparison, its rows and, with ``promote``, the gate's outcome."""

    rows: list[dict[str, Any]]
    promotion: GateResult


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


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None (PostgreSQL's jsonb refuses them), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def choose_winner(rows: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Best validation ``metric``; ties go to the faster model."""
    return max(rows, key=lambda r: (r.get(f"val_{metric}", float("-inf")), -r.get("inference_ms_per_tweet", 0.0)))


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


def _add_external(rows: list[dict[str, Any]], s: Settings) -> None:
    """The external-set figures ``ml.stages.train.evaluate`` stored for each row's run (and the champion's)."""
    with db.connect(s) as conn:
        for r in rows:
            if r.get("external") or not r.get("run_id"):
                continue
            g = store.gate_inputs(conn, r["run_id"])
            if g is None or g.metrics is None or not g.metrics.get("external"):
                continue
            r["external"] = {k: v for k, v in g.metrics["external"].items()}
            ch = (g.champion_metrics or {}).get("external")
            if ch:
                r["champion_external_accuracy"] = ch.get("accuracy")


def write_comparison(
    plan: ComparisonPlan, rows: list[dict[str, Any]], settings: Settings | None = None
) -> ComparisonResult:
    """Build the table, Markdown, HTML and chart; log them to the parent MLflow run (which ends
    here) and store them in ``comparisons``. Returns id, winner family and run."""
    import mlflow

    s = settings or get_settings()
    if not rows:
        raise ValueError("no family results to compare")
    metric = selection_metric(load_search_space(s), s)
    win = choose_winner(rows, metric)
    for r in rows:
        r["selection_metric"] = metric
        r["winner"] = r["family"] == win["family"]
    _add_external(rows, s)
    markdown = to_markdown(rows, win["family"], metric)
    html_table = to_html(rows, win["family"], metric)
    parent = plan["parent_run_id"]
    chart = plot_accuracy_vs_latency(rows, s.reports_dir / "comparisons" / f"comparison-{parent}.png", win["family"])

    tracking.configure(s)
    client = mlflow.MlflowClient()
    client.log_artifact(parent, str(chart), "comparison")
    client.log_text(parent, markdown, "comparison/comparison.md")
    client.log_text(parent, html_table, "comparison/comparison.html")
    client.log_dict(parent, _json_safe(rows), "comparison/comparison.json")
    for r in rows:
        for k in (
            "accuracy",
            "f1",
            "roc_auc",
            "inference_ms_per_tweet",
            "model_size_mb",
            "training_seconds",
            "budget_seconds",
            "budget_used_seconds",
            "epochs",
            "steps",
            "examples_seen",
        ):
            if r.get(k) is not None:
                client.log_metric(parent, f"{r['family']}.{k}", float(r[k]))
        if (r.get("external") or {}).get("accuracy") is not None:
            client.log_metric(parent, f"{r['family']}.external_accuracy", float(r["external"]["accuracy"]))
    client.set_tag(parent, "winner_family", win["family"])
    client.set_tag(parent, "winner_run_id", win["run_id"])
    client.set_terminated(parent, "FINISHED")

    with db.connect(s) as conn:
        cid = store.upsert_comparison(
            conn,
            parent_run_id=parent,
            snapshot_hash=plan["snapshot_hash"],
            profile=plan["profile"],
            families=[r["family"] for r in rows],
            selection_metric=metric,
            table=_json_safe(rows),
            markdown=markdown,
            html=html_table,
            chart_path=str(chart),
            winner_family=win["family"],
            winner_run_id=win["run_id"],
            airflow_run_id=plan.get("airflow_run_id"),
        )
    log.info("comparison %d (parent run %s): winner %s\n%s", cid, parent, win["family"], markdown)
    return {"id": cid, "parent_run_id": parent, "winner_family": win["family"], "winner_run_id": win["run_id"]}


def register_best(comparison: ComparisonResult | int, settings: Settings | None = None) -> str:
    """Register the comparison's winner (a new registry version) and record the version on the
    comparison. Returns the winner's run id (for the gate)."""
    s = settings or get_settings()
    cid = comparison["id"] if isinstance(comparison, dict) else int(comparison)
    with db.connect(s) as conn:
        row = store.comparison_winner(conn, cid)
    if row is None or row[0] is None:
        raise ValueError(f"comparison {cid} not found or has no winner")
    run_id = row[0]
    train.register(run_id, s)  # records the version on the comparison (and its parent run's tags)
    return run_id


def latest_comparison(settings: Settings | None = None) -> dict[str, Any] | None:
    """The newest comparison (JSON-ready), with the winner's registry version and gate decision;
    None before the first one."""
    s = settings or get_settings()
    with db.connect(s) as conn:
        c = store.latest_comparison(conn)
    if c is None:
        return None
    winner = {
        "family": c.pop("winner_family"),
        "run_id": c.pop("winner_run_id"),
        "version": c.pop("winner_version"),
        "status": c.pop("status"),
        "decision": c.pop("decision"),
    }
    return {**c, "created_at": c["created_at"].isoformat(), "families": list(c["families"]), "winner": winner}


def latest_snapshot(settings: Settings | None = None) -> str:
    """The most recently stored dataset snapshot (what ``ml compare`` uses when given no data)."""
    with db.connect(settings or get_settings()) as conn:
        h = snapshots_store.latest_hash(conn)
    if h is None:
        raise DataError("no dataset snapshot yet: give --data FILE (or run `ml data validate FILE` first)")
    return h


def run_comparison(
    data_path: str | Path | None = None,
    snapshot_hash: str | None = None,
    families: list[str] | str | None = None,
    profile: str | None = None,
    sample_size: int | None = None,
    sample_sizes: dict[str, int | None] | None = None,
    search_space: dict[str, Any] | None = None,
    promote: bool = False,
    settings: Settings | None = None,
    progress: ProgressFn | None = None,
) -> ComparisonRun:
    """The whole comparison in this process (``ml compare``, benchmarks): validate -> search each
    family -> evaluate the winners on the held-out split -> write the comparison; with
    ``promote``, also register the winner and run the gate, as the DAG does. ``progress(done, total,
    message)`` is told before each step (validate, each family's search, evaluation, table, gate)."""
    s = settings or get_settings()
    report(progress, 0, 0, "validating the data" if data_path is not None else "planning")
    if snapshot_hash is None and data_path is not None:
        snapshot_hash = validate_and_snapshot(data_path, s).hash
    if snapshot_hash is None:
        snapshot_hash = latest_snapshot(s)
    plan = plan_comparison(snapshot_hash, families, profile, sample_sizes, sample_size, search_space, settings=s)
    fams = list(plan["families"])
    total = len(fams) + 2 + (1 if promote else 0)  # each family's search, evaluation, table[, gate]
    winners = []
    for i, f in enumerate(fams):
        report(progress, i, total, f"searching {f}")
        winners.append(search_family(plan, f, s))
    report(progress, len(fams), total, "evaluating the winners on the held-out split")
    rows = evaluate_winners(plan, winners, s)
    report(progress, len(fams) + 1, total, "writing the comparison")
    result: ComparisonRun = {**write_comparison(plan, rows, s), "rows": rows}
    if promote:
        report(progress, len(fams) + 2, total, "registering the winner, champion/challenger gate")
        run_id = register_best(result, s)
        train.check_behaviour(run_id, s)
        result["promotion"] = promotion.promote(run_id, s)
    report(progress, total, total, "done")
    return result
