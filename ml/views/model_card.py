"""The champion's model card: version, metrics (held-out and on the external set, in a reading order with
readable names), the confusion matrix and ROC that training logs to MLflow (fetched from the run's
artifacts at render time, embedded as data URIs), links to the MLflow run and registered version,
intended use and limitations (the data, the language, the labels, the gate's slices where it is weak), what changed
against the champion it replaced (the promotion gate's flip report), its shadow results (``ml.stages.shadow``:
agreement, estimated and reviewed live accuracy beside the champion it replaced) and the latest shadow,
training snapshot (and its lineage), behavioural
checks, feedback against the retraining threshold, the latest retrainings and alerts. JSON for
machines, a small HTML page for the Airflow UI plugin (``plugins/sentiment_platform_plugin.py``)."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ml.platform.config import Settings, get_settings
from ml.store import lineage as lineage_store
from ml.store import training_runs as training_runs_store

if TYPE_CHECKING:
    from mlflow.entities import Run

#: the held-out metrics in reading order, with their names on the card (quality first, cost last)
METRIC_NAMES = {
    "accuracy": "Accuracy",
    "f1": "F1",
    "precision": "Precision",
    "recall": "Recall",
    "roc_auc": "ROC AUC",
    "inference_ms_per_tweet": "Inference (ms per tweet)",
    "training_seconds": "Training time (s)",
    "model_size_mb": "Model size (MB)",
}
METRIC_KEYS = tuple(METRIC_NAMES)

#: the evaluation plots ``ml.stages.train.evaluate`` logs with ``mlflow.log_figure`` (artifact path, caption)
PLOTS = (
    ("confusion_matrix.png", "Confusion matrix (held-out split)"),
    ("roc_curve.png", "ROC curve (held-out split)"),
    (
        "reliability_diagram.png",
        "Reliability diagram: observed share of positives against P(positive), raw (dotted) and served "
        "(calibrated, solid), held-out split and external file",
    ),
)

#: what the slices of the promotion gate (ml.evaluation.gate.SLICES) mean, for the limitations section
SLICE_NAMES = {
    "short": "short tweets (fewer words than the gate's threshold)",
    "long": "long tweets",
    "mention": "tweets with an @mention",
    "no_mention": "tweets without an @mention",
    "url": "tweets with a URL",
    "no_url": "tweets without a URL",
    "negation": "tweets with a negation (not, no, never, n't …)",
    "no_negation": "tweets without a negation",
}

INTENDED_USE = (
    "Classifying the sentiment of short English social-media posts (tweets) as positive or negative, to "
    "follow opinion in aggregate (shares over a day, a topic, a batch) and to triage posts for a person to "
    "read. Each prediction carries P(positive); low-confidence predictions (near 0.5) are the ones to review."
)
NOT_INTENDED = (
    "Not for decisions about individual people (moderation, hiring, credit) without a person in the loop; "
    "not for other languages, long documents, or for neutral/mixed sentiment, sarcasm or intensity."
)
LIMITATIONS = (
    "Trained on Sentiment140: English tweets from 2009 whose labels were derived from emoticons (:) positive, "
    ":( negative, the emoticons then removed), not annotated by people: the labels are noisy and the "
    "vocabulary, slang and topics are those of 2009.",
    "English only: other languages are scored as if they were English (mostly out-of-vocabulary words, the "
    "drift report's oov_share shows them).",
    "Binary: positive or negative only. A neutral, mixed or factual text still gets one of the two labels; "
    "its P(positive) is then usually near 0.5.",
    "Accuracy is measured on a held-out split of the same data; live accuracy is estimated nightly by the "
    "drift report (CBPE, label-free) and bounded by the predictions users report wrong.",
)


def _ordered_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Held-out metrics in :data:`METRIC_NAMES` order, then the others (``reported_*``) by name."""
    known = {k: metrics[k] for k in METRIC_KEYS if k in metrics}
    return {**known, **{k: metrics[k] for k in sorted(metrics) if k not in known}}


def metric_name(key: str) -> str:
    if key in METRIC_NAMES:
        return METRIC_NAMES[key]
    if key.startswith("reported_"):
        return "Reported set: " + key[len("reported_") :].replace("_", " ")
    return key.replace("_", " ")


def mlflow_links(run: Run, version: int, settings: Settings) -> dict[str, str]:
    """The MLflow UI pages of the run and of the registered version (``ml.platform.tracking.ui_url``:
    they open in the model-training view)."""
    from urllib.parse import quote

    from ml.platform import tracking
    from ml.stages.search.curves import tracking_uri_for_ui

    base = tracking_uri_for_ui(settings)
    return {
        "ui": base,
        "run": tracking.ui_url(base, f"experiments/{run.info.experiment_id}/runs/{run.info.run_id}"),
        "version": tracking.ui_url(base, f"models/{quote(settings.model_name, safe='')}/versions/{version}"),
    }


def plot_images(run_id: str) -> list[dict[str, Any]]:
    """The run's evaluation plots (:data:`PLOTS`) read through MLflow, as ``data:image/png;base64`` URIs;
    a plot that cannot be read is listed with the error instead."""
    import base64
    import tempfile

    import mlflow

    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="model-card-") as tmp:
        for path, caption in PLOTS:
            item: dict[str, Any] = {"artifact": path, "caption": caption}
            try:
                local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp)
                with open(local, "rb") as f:
                    data = f.read()
                if not data.startswith(b"\x89PNG\r\n\x1a\n"):
                    raise ValueError("not a PNG")
                item["data_uri"] = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
            except Exception as e:  # noqa: BLE001 - the card shows the rest
                item["error"] = f"{type(e).__name__}: {e}"[:300]
            out.append(item)
    return out


def calibration(run: Run) -> dict[str, Any] | None:
    """How the served probabilities are calibrated (``ml.models.calibration``, fitted at training) and the
    expected calibration error, raw and calibrated, on the held-out split and the external file (logged by
    ``ml.stages.train.evaluate``); None for a run evaluated before calibration existed."""
    params, m = run.data.params, run.data.metrics
    if "ece" not in m and "calibration" not in params:
        return None

    def pair(prefix: str) -> dict[str, float | None] | None:
        if f"{prefix}ece" not in m:
            return None
        return {"ece_raw": m.get(f"{prefix}ece_raw"), "ece": m[f"{prefix}ece"]}

    return {
        "method": params.get("calibration", "none"),
        "rows": int(params["calibration_rows"]) if params.get("calibration_rows", "").isdigit() else None,
        "split": params.get("calibration_split"),
        "a": m.get("calibration_a"),
        "b": m.get("calibration_b"),
        "bins": 15,
        "held_out": pair(""),
        "external": pair("external_"),
    }


def weak_slices(gate: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The model's held-out accuracy per slice of the promotion gate, lowest first: the gate record's own
    ``slice_accuracy`` (every version evaluated since it exists), else the challenger side of its paired
    comparison with the champion it replaced (``held_out.slices``)."""
    if not gate:
        return []
    own = gate.get("slice_accuracy") or {}
    rows = [
        {"slice": name, "n": v.get("n"), "accuracy": v.get("accuracy")}
        for name, v in own.items()
        if v.get("n") and v.get("accuracy") is not None
    ]
    if not rows:
        rows = [
            {"slice": name, "n": v.get("n"), "accuracy": v.get("challenger_accuracy")}
            for name, v in ((gate.get("held_out") or {}).get("slices") or {}).items()
            if v.get("n") and v.get("challenger_accuracy") is not None
        ]
    for r in rows:
        r["description"] = SLICE_NAMES.get(r["slice"], r["slice"])
    return sorted(rows, key=lambda r: r["accuracy"])


def model_card(settings: Settings | None = None, images: bool = True) -> dict[str, Any]:
    """The card as a dict; ``images``: with the evaluation plots as data URIs (the HTML page), else
    only their artifact paths (the JSON)."""
    import mlflow

    from ml.platform import db, registry, tracking
    from ml.stages.alerts.events import list_alerts
    from ml.stages.retraining.records import list_retrainings
    from ml.stages.retraining.trigger import champion_context, pending_count
    from ml.views import lineage

    s = settings or get_settings()
    tracking.configure(s)
    card: dict[str, Any] = {
        "model_name": s.model_name,
        "alias": s.champion_alias,
        "generated_at": datetime.now(UTC).isoformat(),
        "champion": None,
    }
    champ = registry.champion(s)
    if champ is None:
        card["note"] = f"no champion yet: {s.model_name!r} has no {s.champion_alias!r} alias"
        return card
    run_id = champ.run_id
    if run_id is None:
        raise ValueError(f"champion v{champ.version} of {s.model_name} has no MLflow run")
    run = mlflow.MlflowClient().get_run(run_id)
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
    metrics = _ordered_metrics(
        {k: v for k, v in run.data.metrics.items() if k in METRIC_KEYS or k.startswith("reported_")}
    )
    external = {
        k[len("external_") :]: v
        for k, v in run.data.metrics.items()
        if k.startswith("external_") and not k.startswith("external_vs_")
    }
    card["champion"] = {
        "version": champ.version,
        "run_id": champ.run_id,
        "family": tags.get("family"),
        "trained_at": datetime.fromtimestamp(run.info.start_time / 1000, tz=UTC).isoformat(),
        "git_commit": tags.get("git_commit"),
        "dataset_hash": tags.get("dataset_hash"),
        "metrics": metrics,
        "metric_names": {k: metric_name(k) for k in metrics},
        "links": mlflow_links(run, champ.version, s),
        "plots": plot_images(run_id) if images else [{"artifact": p, "caption": c} for p, c in PLOTS],
        "intended_use": {"use": INTENDED_USE, "not_for": NOT_INTENDED, "limitations": list(LIMITATIONS)},
        "retraining_id": tags.get("retraining_id"),
        "calibration": calibration(run),
        # a distilled model (ml.stages.distill): the model whose soft labels it learned from
        "teacher": tags.get("teacher"),
        # accuracy etc. on external_eval_path at evaluation (ml.evaluation.external); None: evaluated without one
        "external": (
            {**external, "content_hash": tags.get("external_eval_hash"), "path": tags.get("external_eval_path")}
            if external
            else None
        ),
    }
    with db.connect(s) as conn:
        tr = lineage_store.training_run(conn, run_id)
        if tr:
            card["champion"].update(
                params=tr["params"],
                decision=tr["decision"],
                airflow_run_id=tr["airflow_run_id"],
                behaviour={k: v.get("pass_rate") for k, v in (tr["behaviour"] or {}).get("types", {}).items()}
                if tr["behaviour"]
                else None,
            )
        gate_record = training_runs_store.run_gate(conn, run_id)
        card["champion"]["what_changed"] = what_changed(gate_record)
        card["champion"]["weak_slices"] = weak_slices(gate_record)
        card["snapshot_chain"] = lineage.snapshot_chain(conn, tags.get("dataset_hash"))
        for c in card["snapshot_chain"]:  # the card lists counts, not every report
            if c.get("retraining"):
                c["retraining"].pop("reports", None)
                c["retraining"].pop("training_feedback_ids", None)
                c["retraining"].pop("feedback_ids", None)
        events = training_runs_store.recent_events(conn, s.model_name, 10)
        from ml.stages import shadow as shadow_mod
        from ml.store import shadow as shadow_store

        card["champion"]["shadow"] = shadow_mod.summary(shadow_store.of_version(conn, s.model_name, champ.version))
        latest = shadow_store.latest(conn, s.model_name, 1)
        card["latest_shadow"] = shadow_mod.summary(latest[0]) if latest else None
    card["events"] = [
        {
            "event": e["event"],
            "version": e["version"],
            "previous_version": e["previous_version"],
            "reason": e["reason"],
            "at": e["created_at"].isoformat(),
        }
        for e in events
    ]
    ctx = champion_context(s)
    card["feedback"] = pending_count(ctx, s) if ctx and ctx.corpus_rows else None
    card["retrainings"] = list_retrainings(5, s)
    card["alerts"] = list_alerts(5, model_name=s.model_name, settings=s)
    return card


def what_changed(gate: dict[str, Any] | None, examples: int = 5) -> dict[str, Any] | None:
    """A short "what changed" of the promotion gate's flip report (``training_runs.gate``): against the
    champion it replaced, on the held-out set (paired difference, p-value, labels changed, slices) and
    on the golden set (texts right -> wrong / wrong -> right); a few texts of each list."""
    if not gate:
        return None
    held, golden, dec = gate.get("held_out"), gate.get("golden") or {}, gate.get("decision") or {}
    out: dict[str, Any] = {
        "against_version": gate.get("champion_version"),
        "decision": dec.get("reason"),
        "golden_accuracy": golden.get("challenger_accuracy"),
        "golden_n": golden.get("n"),
    }
    if held:
        fl = held["flips"]
        out["held_out"] = {k: held[k] for k in ("n", "difference", "interval", "p_value", "verdict")}
        out["held_out"].update(
            changed_label=fl["changed_label"],
            right_to_wrong=fl["right_to_wrong"],
            wrong_to_right=fl["wrong_to_right"],
            right_to_wrong_examples=[r["text"] for r in fl["right_to_wrong_texts"][:examples]],
            wrong_to_right_examples=[r["text"] for r in fl["wrong_to_right_texts"][:examples]],
        )
        out["slices"] = {
            name: {
                k: v.get(k)
                for k in ("n", "champion_accuracy", "challenger_accuracy", "difference", "p_value", "verdict")
            }
            for name, v in held.get("slices", {}).items()
        }
        out["golden"] = {
            k: golden.get(k)
            for k in (
                "champion_accuracy",
                "challenger_accuracy",
                "right_to_wrong",
                "right_to_wrong_uncertain",
                "wrong_to_right",
            )
        }
        out["golden"]["right_to_wrong_examples"] = [r["text"] for r in golden.get("right_to_wrong_texts", [])]
        out["golden"]["wrong_to_right_examples"] = [r["text"] for r in golden.get("wrong_to_right_texts", [])]
    if gate.get("reported_eval"):
        out["reported_eval"] = gate["reported_eval"]
    return out


def _esc(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _text(t: Any) -> str:
    """A tweet as a person reads it, escaped for HTML: Sentiment140 stores HTML entities literally
    (``&quot;``, ``&amp;``), which ml.features.clean decodes once for the models; the card decodes them
    the same way and escapes the result, so ``&quot;`` shows as ``"`` and ``&lt;script&gt;`` as text."""
    return html.escape(html.unescape("" if t is None else str(t)), quote=True)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return _esc(v)


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d2330;background:#fff}
h1{font-size:1.4rem;margin:0 0 .3rem} h2{font-size:1.05rem;margin:1.4rem 0 .4rem}
table{border-collapse:collapse;margin:.3rem 0} td,th{border:1px solid #dde1e8;padding:.25rem .6rem;text-align:left;
font-size:.9rem} th{background:#f3f5f8} .muted{color:#5b6475} .bar{height:.8rem;background:#eceff3;width:18rem;
border-radius:3px;overflow:hidden;display:inline-block;vertical-align:middle} .fill{height:100%;background:#d98e04}
.ok{color:#2b7a3d} .bad{color:#b00020} code{font-size:.85rem}
"""


def _head_html(card: dict[str, Any]) -> str:
    """The page's head and title."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Model card {_esc(card['model_name'])}</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>Model card: {_esc(card['model_name'])} <span class='muted'>@{_esc(card['alias'])}</span></h1>"
    )


def _champion_html(c: dict[str, Any]) -> str:
    """The card's section: the version line and its MLflow links."""
    out: list[str] = []
    out.append(
        f"<p id='champion-version'>Champion <b>version {c['version']}</b> ({_esc(c.get('family'))}), "
        f"trained {_esc(c['trained_at'][:19])} UTC, run <code>{_esc(c['run_id'])}</code>, "
        f"code <code>{_esc(c.get('git_commit'))}</code></p>"
    )
    links = c.get("links") or {}
    if links:
        out.append(
            f"<p id='mlflow-links'>MLflow: <a id='mlflow-run' href='{_esc(links['run'])}' target='_blank' "
            f"rel='noopener noreferrer'>training run</a> · <a id='mlflow-version' href='{_esc(links['version'])}' "
            f"target='_blank' rel='noopener noreferrer'>registered version {_esc(c['version'])}</a></p>"
        )
    return "".join(out)


def _metrics_html(c: dict[str, Any]) -> str:
    """The card's section: the held-out metrics."""
    out: list[str] = []
    names = c.get("metric_names") or {}
    out.append(
        "<h2>Held-out metrics</h2><table id='metrics'><tr>"
        + "".join(f"<th data-metric='{_esc(k)}'>{_esc(names.get(k, k))}</th>" for k in c["metrics"])
        + "</tr><tr>"
        + "".join(f"<td>{_fmt(v)}</td>" for v in c["metrics"].values())
        + "</tr></table>"
    )
    return "".join(out)


def _plots_html(c: dict[str, Any]) -> str:
    """The card's section: the evaluation plots (embedded, or why not)."""
    out: list[str] = []
    plots = c.get("plots") or []
    if plots:
        out.append("<div id='plots' style='display:flex;flex-wrap:wrap;gap:1rem'>")
        for p in plots:
            if p.get("data_uri"):
                out.append(
                    f"<figure style='margin:0'><img class='plot' data-artifact='{_esc(p['artifact'])}' "
                    f"src='{_esc(p['data_uri'])}' alt='{_esc(p['caption'])}' width='400'>"
                    f"<figcaption class='muted'>{_esc(p['caption'])}</figcaption></figure>"
                )
            else:
                out.append(
                    f"<p class='muted'>{_esc(p['caption'])}: not available"
                    f"{' (' + _esc(p['error']) + ')' if p.get('error') else ''}</p>"
                )
        out.append("</div>")
    return "".join(out)


def _intended_use_html(c: dict[str, Any]) -> str:
    """The card's section: intended use and limitations, with the gate's weakest slices."""
    out: list[str] = []
    iu = c.get("intended_use") or {}
    if iu:
        out.append(
            f"<h2 id='intended-use'>Intended use</h2><p>{_esc(iu['use'])}</p><p>{_esc(iu['not_for'])}</p>"
            "<h2 id='limitations'>Limitations</h2><ul>" + "".join(f"<li>{_esc(x)}</li>" for x in iu["limitations"])
        )
        weak = c.get("weak_slices") or []
        if weak:
            acc = c["metrics"].get("accuracy")
            out.append(
                "<li>Slices of the held-out split measured by the promotion gate (ml/evaluation/gate.py), "
                "weakest first"
                + (f"; overall accuracy {acc:.4f}" if isinstance(acc, float) else "")
                + ":<table id='weak-slices'><tr><th>slice</th><th>tweets</th><th>accuracy</th></tr>"
                + "".join(
                    f"<tr><td>{_esc(w['description'])}</td><td>{int(w['n']):,}</td>"
                    f"<td class='{'bad' if isinstance(acc, float) and w['accuracy'] < acc - 0.01 else ''}'>"
                    f"{_fmt(w['accuracy'])}</td></tr>"
                    for w in weak
                )
                + "</table></li>"
            )
        else:
            out.append(
                "<li>No slice measurement is stored for this version (evaluated before the gate recorded it).</li>"
            )
        out.append("</ul>")
    return "".join(out)


def _calibration_html(c: dict[str, Any]) -> str:
    """The card's section: how the served probabilities are calibrated, and the calibration error."""
    out: list[str] = []
    cal = c.get("calibration")
    if cal:
        out.append(
            "<h2 id='calibration'>Calibration</h2><p class='muted'>"
            + (
                f"Served probabilities are calibrated ({_esc(cal['method'])} scaling"
                + (f", a={cal['a']:.3f}, b={cal['b']:.3f}" if isinstance(cal.get("a"), float) else "")
                + f", fitted on {_esc(cal.get('rows'))} rows: {_esc(cal.get('split'))})"
                if cal["method"] != "none"
                else "Served probabilities are the family's own (not calibrated: too few training rows to spare)"
            )
            + f". Expected calibration error over {cal['bins']} equal-width bins of P(positive) (0 is perfect)."
            "</p><table id='calibration-ece'><tr><th>set</th><th>ECE raw</th><th>ECE served</th></tr>"
            + "".join(
                f"<tr><td>{name}</td><td>{_fmt(v.get('ece_raw'))}</td><td>{_fmt(v.get('ece'))}</td></tr>"
                for name, v in (("held-out split", cal.get("held_out")), ("external file", cal.get("external")))
                if v
            )
            + "</table>"
        )
    return "".join(out)


def _teacher_html(c: dict[str, Any]) -> str:
    """The card's section: the teacher of a distilled model."""
    out: list[str] = []
    if c.get("teacher"):
        out.append(f"<p id='teacher'>Distilled from teacher <code>{_esc(c['teacher'])}</code>.</p>")
    return "".join(out)


def _external_html(c: dict[str, Any]) -> str:
    """The card's section: the metrics on the external evaluation file."""
    out: list[str] = []
    ext = c.get("external")
    if ext:
        keys = [k for k in ("accuracy", "f1", "roc_auc", "n") if k in ext]
        out.append(
            "<h2 id='external-eval'>External evaluation</h2><p class='muted'>"
            f"{_esc(ext.get('path'))}, content hash <code>{_esc(str(ext.get('content_hash'))[:16])}</code>: "
            "a file outside the training snapshot, beside the held-out split of the training file</p><table><tr>"
            + "".join(f"<th>{_esc(k)}</th>" for k in keys)
            + "</tr><tr>"
            + "".join(f"<td>{int(ext[k]):,}</td>" if k == "n" else f"<td>{_fmt(ext[k])}</td>" for k in keys)
            + "</tr></table>"
        )
    return "".join(out)


def _what_changed_html(c: dict[str, Any]) -> str:
    """The card's section: what changed against the replaced champion (the gate's flip report)."""
    out: list[str] = []
    wc = c.get("what_changed")
    if wc and wc.get("held_out"):
        h, g = wc["held_out"], wc["golden"]
        out.append(
            f"<h2 id='what-changed'>What changed (against v{_esc(wc['against_version'])})</h2>"
            f"<p>Held-out (n={h['n']:,}): accuracy {h['difference']:+.4f} (CI [{h['interval'][0]:+.4f}, "
            f"{h['interval'][1]:+.4f}], McNemar mid-p {h['p_value']:.3g}: {_esc(h['verdict'])}); "
            f"<b>{h['changed_label']:,}</b> tweets changed label: {h['right_to_wrong']:,} right → wrong, "
            f"{h['wrong_to_right']:,} wrong → right. Golden set: {g['champion_accuracy']:.3f} → "
            f"{g['challenger_accuracy']:.3f}, <b>{g['right_to_wrong']}</b> right → wrong "
            f"(+{g['right_to_wrong_uncertain']} the old champion was unsure of), {g['wrong_to_right']} "
            f"wrong → right.</p><table><tr><th>slice</th><th>n</th><th>before</th><th>after</th>"
            "<th>difference</th><th>p</th></tr>"
        )
        for name, v in wc["slices"].items():
            if v.get("n"):
                cls = "bad" if v["verdict"] == "worse" else ("ok" if v["verdict"] == "better" else "")
                out.append(
                    f"<tr><td>{_esc(name)}</td><td>{v['n']:,}</td><td>{_fmt(v['champion_accuracy'])}</td>"
                    f"<td>{_fmt(v['challenger_accuracy'])}</td><td class='{cls}'>{v['difference']:+.4f}</td>"
                    f"<td>{v['p_value']:.3g}</td></tr>"
                )
        out.append("</table>")
        for label, texts in (
            ("golden right → wrong", g["right_to_wrong_examples"]),
            ("golden wrong → right", g["wrong_to_right_examples"]),
            ("held-out right → wrong (first)", h["right_to_wrong_examples"]),
        ):
            if texts:
                out.append(f"<p class='muted'>{_esc(label)}: " + "; ".join(f"“{_text(t)}”" for t in texts) + "</p>")
    return "".join(out)


def _shadows_html(card: dict[str, Any], c: dict[str, Any]) -> str:
    """The card's section: the shadow before promotion and the latest shadow."""
    out: list[str] = []
    for title, sh in (
        ("Shadow before promotion", c.get("shadow")),
        (
            "Latest shadow",
            card.get("latest_shadow")
            if (card.get("latest_shadow") or {}).get("shadow_id") != (c.get("shadow") or {}).get("shadow_id")
            else None,
        ),
    ):
        if not sh:
            continue
        est, rev = sh.get("estimated_accuracy") or {}, sh.get("reviewed") or {}
        cls = "ok" if sh["status"] == "promoted" else ("bad" if sh["status"] == "rejected" else "")
        out.append(
            f"<h2 id='shadow-{sh['shadow_id']}'>{_esc(title)} (#{sh['shadow_id']}: v{sh['challenger_version']} "
            f"beside v{sh['champion_version']})</h2><p>Window {sh['window_requests']} requests / "
            f"{sh['window_hours']:g} h, status <b class='{cls}'>{_esc(sh['status'])}</b>.</p>"
            "<table><tr><th>shadowed requests</th><th>agreement</th><th>estimated accuracy (challenger / "
            "champion)</th><th>reviewed n</th><th>reviewed accuracy (challenger / champion)</th></tr>"
            f"<tr><td>{_esc(sh.get('n'))}</td><td>{_fmt(sh.get('agreement'))}</td>"
            f"<td>{_fmt(est.get('challenger'))} / {_fmt(est.get('champion'))}</td><td>{_esc(rev.get('n', 0))}</td>"
            f"<td>{_fmt(rev.get('challenger_accuracy'))} / {_fmt(rev.get('champion_accuracy'))}</td></tr></table>"
            f"<p class='muted'>{_esc(sh.get('decision'))}</p>"
        )
    return "".join(out)


def _behaviour_html(c: dict[str, Any]) -> str:
    """The card's section: the behavioural checks' pass rates."""
    out: list[str] = []
    if c.get("behaviour"):
        out.append(
            "<h2>Behavioural checks (pass rate)</h2><table><tr>"
            + "".join(f"<th>{_esc(k)}</th>" for k in c["behaviour"])
            + "</tr><tr>"
            + "".join(f"<td>{_fmt(v)}</td>" for v in c["behaviour"].values())
            + "</tr></table>"
        )
    return "".join(out)


def _feedback_html(card: dict[str, Any]) -> str:
    """The card's section: the misclassification reports against the retraining threshold."""
    out: list[str] = []
    fb = card.get("feedback")
    if fb:
        share = min(1.0, fb["share_of_threshold"] or 0.0)
        out.append(
            f"<h2>Feedback against the retraining threshold</h2><p id='feedback-count'>"
            f"<b>{fb['reports']}</b> misclassification reports since this champion was trained, threshold "
            f"<b>{fb['threshold']}</b> ({fb['fraction']:.2%} of {fb['corpus_rows']:,} training rows)"
            f"{' - reviewed reports only' if fb['review_required'] else ''} "
            f"<span class='bar'><span class='fill' style='width:{share * 100:.0f}%;display:block'></span></span>"
            f" {share:.0%}</p>"
        )
    return "".join(out)


def _lineage_html(card: dict[str, Any]) -> str:
    """The card's section: the training snapshot and its lineage."""
    out: list[str] = []
    out.append(
        "<h2>Training data (snapshot lineage)</h2><table><tr><th>snapshot</th><th>kind</th><th>rows</th>"
        "<th>created</th><th>built by</th></tr>"
    )
    for snap in card.get("snapshot_chain") or []:
        r = snap.get("retraining")
        by = (
            f"retraining #{r['id']} ({_esc(r['reason'])}, {r['n_training_reports']} reports, {_esc(r['status'])})"
            if r
            else _esc(snap.get("source"))
        )
        out.append(
            f"<tr><td><code>{_esc(snap['hash'][:16])}</code></td><td>{_esc(snap.get('kind'))}</td>"
            f"<td>{_esc(snap.get('n_rows'))}</td><td>{_esc(str(snap.get('created_at', ''))[:19])}</td>"
            f"<td>{by}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def _retrainings_html(card: dict[str, Any]) -> str:
    """The card's section: the latest retrainings."""
    out: list[str] = []
    if card.get("retrainings"):
        out.append(
            "<h2>Latest retrainings</h2><table><tr><th>#</th><th>when</th><th>reason</th><th>reports</th>"
            "<th>status</th><th>champion before → after</th><th>decision</th></tr>"
        )
        for r in card["retrainings"]:
            cls = "ok" if r["status"] == "promoted" else ("bad" if r["status"] == "failed" else "")
            out.append(
                f"<tr><td>{r['id']}</td><td>{_esc(r['created_at'][:19])}</td><td>{_esc(r['reason'])}</td>"
                f"<td>{r['n_feedback']}/{_esc(r['threshold'])}</td><td class='{cls}'>{_esc(r['status'])}</td>"
                f"<td>v{_esc(r['champion_before'])} → v{_esc(r['champion_after'])}</td>"
                f"<td>{_esc(r['decision'] or r['error'])}</td></tr>"
            )
        out.append("</table>")
    return "".join(out)


def _events_html(card: dict[str, Any]) -> str:
    """The card's section: the champion's history (model events)."""
    out: list[str] = []
    if card.get("events"):
        out.append(
            "<h2>Champion history</h2><table><tr><th>when</th><th>event</th><th>version</th><th>previous</th>"
            "<th>reason</th></tr>"
        )
        for e in card["events"]:
            out.append(
                f"<tr><td>{_esc(e['at'][:19])}</td><td>{_esc(e['event'])}</td><td>{e['version']}</td>"
                f"<td>{_esc(e['previous_version'])}</td><td>{_esc(e['reason'])}</td></tr>"
            )
        out.append("</table>")
    return "".join(out)


def _alerts_html(card: dict[str, Any]) -> str:
    """The card's section: the latest alerts."""
    out: list[str] = []
    if card.get("alerts"):
        out.append("<h2>Latest alerts</h2><table><tr><th>when</th><th>rule</th><th>message</th><th>channels</th></tr>")
        for a in card["alerts"]:
            ch = ", ".join(f"{x['channel']}: {x['status']}" for x in a.get("channels") or [])
            out.append(
                f"<tr><td>{_esc(a['created_at'][:19])}</td><td>{_esc(a['rule'])}</td>"
                f"<td>{_esc(a['message'])}</td><td>{_esc(ch)}</td></tr>"
            )
        out.append("</table>")
    return "".join(out)


def _footer_html(card: dict[str, Any]) -> str:
    """The card's section: the JSON link and when the card was generated."""
    out: list[str] = []
    out.append(
        f"<p class='muted'>JSON: <a href='model-card.json'>model-card.json</a> · generated "
        f"{_esc(card['generated_at'][:19])} UTC</p>"
    )
    return "".join(out)


def card_html(card: dict[str, Any]) -> str:
    """The card as a small HTML page (the Airflow UI plugin's): one helper per section, in reading order."""
    c = card.get("champion")
    if c is None:
        return _head_html(card) + f"<p>{_esc(card.get('note'))}</p></body></html>"
    return (
        _head_html(card)
        + "".join(
            (
                _champion_html(c),
                _metrics_html(c),
                _plots_html(c),
                _intended_use_html(c),
                _calibration_html(c),
                _teacher_html(c),
                _external_html(c),
                _what_changed_html(c),
                _shadows_html(card, c),
                _behaviour_html(c),
                _feedback_html(card),
                _lineage_html(card),
                _retrainings_html(card),
                _events_html(card),
                _alerts_html(card),
                _footer_html(card),
            )
        )
        + "</body></html>"
    )
