"""Training, evaluation, registration and the behavioural checks of one candidate: stages of the
``sentiment_training`` DAG (whose search and comparison live in ``ml.stages.search`` / ``ml.stages.compare``,
and whose promotion, the gate and the champion's moves, in ``ml.stages.promotion``), each also an ``ml`` CLI
command.

Tasks pass only small values (snapshot hash, MLflow run id, version) between them;
models travel through MLflow.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ml import models
from ml.data.snapshots import Snapshot, content_hash
from ml.data.splits import calibration_split, split_for, stratified_sample
from ml.evaluation import behaviour, external, gate
from ml.evaluation.evaluate import (
    METRICS,
    compute_metrics,
    dir_size_mb,
    inference_ms_per_tweet,
    plot_confusion,
    plot_roc,
)
from ml.evaluation.stats import paired_comparison
from ml.models import calibration as calib
from ml.models.base import Scorer, SentimentModel
from ml.platform import db, registry, tracking
from ml.platform.config import Settings, get_settings
from ml.store import training_runs as store

if TYPE_CHECKING:
    from mlflow.entities import Dataset, Run

log = logging.getLogger(__name__)

#: digests shown in MLflow's Dataset column: the first characters of the platform's sha256 content hash
#: (MLflow stores at most 36)
DIGEST_CHARS = 16


def _dataset(name: str, digest: str, path: Path, n_rows: int, sample: pd.DataFrame) -> Dataset:
    """An MLflow dataset (``mlflow.entities.Dataset``) of a labelled file of the platform: its name, digest and
    source (the file), the schema MLflow infers from a few rows (``mlflow.data.from_pandas``) and the profile
    of all ``n_rows``. Only this metadata is stored, never the rows: cheap for 1.6M tweets."""
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.entities import Dataset

    with warnings.catch_warnings():  # a file: URI is local to two of MLflow's source types (the same one)
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        d = from_pandas(
            sample[["text", "label"]].head(100), source=Path(path).resolve().as_uri(), name=name, digest=digest
        ).to_dict()
    profile = {"num_rows": int(n_rows), "num_elements": int(n_rows) * 2}
    return Dataset(d["name"], d["digest"], d["source_type"], d["source"], d["schema"], json.dumps(profile))


def _log_datasets(run_id: str, inputs: list[tuple[Any, str, dict[str, str]]]) -> None:
    """``mlflow.log_input`` for several datasets at once: (dataset, context, input tags)."""
    import mlflow
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    mlflow.MlflowClient().log_inputs(
        run_id,
        datasets=[
            DatasetInput(ds, [InputTag(MLFLOW_DATASET_CONTEXT, context), *(InputTag(k, v) for k, v in tags.items())])
            for ds, context, tags in inputs
        ],
    )


def log_training_datasets(
    run_id: str,
    snap: Snapshot,
    train_df: pd.DataFrame,
    validation_df: pd.DataFrame,
    sample_size: int | None,
    split: str,
    validation_name: str = "held-out",
) -> None:
    """The run's inputs in MLflow (its runs list's Dataset column): the snapshot it was trained on
    (context ``training``, digest = its content hash, input tags: the rows trained on) and the split it was
    validated on (context ``validation``, digest = the split's content hash, input tag ``split``: how it was
    drawn), both with the snapshot's parquet file as source. Training (``train``) validates on the
    snapshot's held-out split, a comparison's winner (``ml.stages.search.family``) on its search split."""
    h = snap.hash[:8]
    _log_datasets(
        run_id,
        [
            (
                _dataset(f"snapshot-{h}", snap.hash[:DIGEST_CHARS], snap.path, snap.n_rows, train_df),
                "training",
                {
                    "snapshot_hash": snap.hash,
                    "trained_on_rows": str(len(train_df)),
                    "sample_size": str(sample_size or "all"),
                },
            ),
            (
                _dataset(
                    f"snapshot-{h}-{validation_name}",
                    content_hash(validation_df)[:DIGEST_CHARS],
                    snap.path,
                    len(validation_df),
                    validation_df,
                ),
                "validation",
                {"snapshot_hash": snap.hash, "split": split},
            ),
        ],
    )


def log_external_dataset(run_id: str, ext: external.ExternalSet) -> None:
    """The external evaluation file (``external_eval_path``) as an input of the run (context ``evaluation``)."""
    sample = pd.DataFrame({"text": ext.texts[:100], "label": ext.labels[:100]})
    _log_datasets(
        run_id,
        [
            (
                _dataset(f"external-{Path(ext.path).stem}", ext.content_hash[:DIGEST_CHARS], ext.path, ext.n, sample),
                "evaluation",
                {"content_hash": ext.content_hash},
            )
        ],
    )


def train(
    snapshot_hash: str,
    family: str | None = None,
    params: dict[str, Any] | None = None,
    sample_size: int | None = None,
    airflow_run_id: str | None = None,
    settings: Settings | None = None,
) -> str:
    """Fit one model on the snapshot's training split (optionally a stratified sample of it),
    log it to MLflow with params, dataset hash and git commit. Returns the MLflow run id."""
    import mlflow

    s = settings or get_settings()
    family = family or s.default_family
    params = dict(params or {})
    model = models.create(family, **params)  # fails fast on unknown family/params
    snap, train_df, test_df = split_for(snapshot_hash, s)
    train_df = stratified_sample(train_df, sample_size, s.seed)
    # the calibration rows come out of the training split, never out of the held-out split the gate scores on
    train_df, cal_df = calibration_split(train_df, s.calibration, s.seed)
    tracking.configure(s)
    commit = tracking.git_commit()
    log.info("training %s on %s tweets (snapshot %s)", family, f"{len(train_df):,}", snap.hash[:16])
    with mlflow.start_run(run_name=f"{family}-{snap.hash[:8]}") as run:
        mlflow.set_tags(
            {
                "dataset_hash": snap.hash,
                "git_commit": commit,
                "family": family,
                "stage": "candidate",
                **({"airflow_run_id": airflow_run_id} if airflow_run_id else {}),
            }
        )
        mlflow.log_params(
            {
                "family": family,
                "sample_size": sample_size or "all",
                "n_train": len(train_df),
                "n_test": len(test_df),
                "seed": s.seed,
                "test_size": s.test_size,
                **{f"model.{k}": v for k, v in model.get_params().items()},
            }
        )
        log_training_datasets(
            run.info.run_id, snap, train_df, test_df, sample_size, f"held-out (test_size {s.test_size}, seed {s.seed})"
        )
        t0 = time.perf_counter()
        model.fit(train_df["text"].tolist(), train_df["label"].to_numpy())
        seconds = time.perf_counter() - t0
        mlflow.log_metric("training_seconds", seconds)
        fit_calibration(model, cal_df, s.calibration, "calibration rows carved from the training split")
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_metric("model_size_mb", dir_size_mb(model.save(Path(tmp) / "m")))
        info = registry.log_model(model)
        mlflow.set_tag("model_uri", info.model_uri)
        run_id = run.info.run_id
    with db.connect(s) as conn:
        store.insert_run(conn, run_id, snap.hash, family, model.get_params(), commit, airflow_run_id)
    log.info("trained %s in %.1fs -> MLflow run %s", family, seconds, run_id)
    return run_id


def fit_calibration(
    model: SentimentModel, cal_df: pd.DataFrame | None, method: str, source: str
) -> calib.Calibrator | None:
    """Calibrate ``model``'s probabilities on ``cal_df`` (rows it was not trained on; :meth:`ml.models.base.
    SentimentModel.calibrate`) inside the active MLflow run: params ``calibration`` (method or ``none``),
    ``calibration_rows``, ``calibration_split``; metrics ``calibration_a``/``_b`` and the fit split's ECE
    before/after. No rows: the model stays uncalibrated (param ``calibration=none``). Returns the calibrator."""
    import mlflow

    if method == "none" or cal_df is None or len(cal_df) == 0:
        model.calibration_ = None
        mlflow.log_params({"calibration": "none", "calibration_rows": 0})
        return None
    cal = model.calibrate(cal_df["text"].tolist(), cal_df["label"].to_numpy(), method)
    mlflow.log_params({"calibration": method, "calibration_rows": len(cal_df), "calibration_split": source[:500]})
    mlflow.log_metrics(
        {
            "calibration_a": cal.a,
            "calibration_b": cal.b,
            **{
                f"calibration_{k}": float(v) for k, v in cal.to_dict().items() if k.startswith("fit_") and v is not None
            },
        }
    )
    log.info(
        "calibrated (%s on %s rows): a=%.3f b=%.3f, ECE %.4f -> %.4f on the calibration rows",
        method,
        f"{len(cal_df):,}",
        cal.a,
        cal.b,
        cal.fit_ece_raw,
        cal.fit_ece,
    )
    return cal


def served_and_raw(model: Scorer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(served, raw) probabilities of ``model`` on ``texts`` in ONE pass of the family: the served ones are the
    calibration applied to the raw ones (what ``predict_proba`` does); the same array twice when uncalibrated."""
    cal = getattr(model, "calibration_", None)
    raw_fn = getattr(model, "raw_predict_proba", None)
    if cal is None or raw_fn is None:
        p = np.asarray(model.predict_proba(texts))
        return p, p
    raw = np.asarray(raw_fn(texts))
    return cal.apply_proba(raw), raw


def log_calibration(model: Scorer, sets: dict[str, tuple[Any, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """ECE raw and calibrated (:func:`ml.models.calibration.summary`) per labelled set ``{name: (labels,
    served proba, raw proba)}``: metrics ``ece``, ``ece_raw`` (held-out) and ``external_ece``,
    ``external_ece_raw``, ``calibration.json`` and ``reliability_diagram.png`` in the active MLflow run.
    Returns the ECE/log-loss figures without the per-bin tables."""
    import matplotlib.pyplot as plt
    import mlflow

    curves = {name: calib.summary(np.asarray(y), raw[:, 1], served[:, 1]) for name, (y, served, raw) in sets.items()}
    for name, c in curves.items():
        prefix = "" if name == "held-out" else "external_"
        mlflow.log_metrics({f"{prefix}ece": c["ece"], f"{prefix}ece_raw": c["ece_raw"]})
    cal = getattr(model, "calibration_", None)
    mlflow.log_dict({"calibrator": cal.to_dict() if cal else None, **curves}, "calibration.json")
    fig = calib.plot_reliability(
        curves, f"reliability ({cal.method if cal else 'uncalibrated'}, {calib.ECE_BINS} bins)"
    )
    mlflow.log_figure(fig, "reliability_diagram.png")
    plt.close(fig)
    return {name: {k: v for k, v in c.items() if not k.startswith("reliability")} for name, c in curves.items()}


def load_run_model(run_id: str) -> SentimentModel:
    import mlflow

    uri = mlflow.MlflowClient().get_run(run_id).data.tags["model_uri"]
    return mlflow.pyfunc.load_model(uri).unwrap_python_model().model


def evaluate(run_id: str, settings: Settings | None = None, champion_cache: dict | None = None) -> dict[str, Any]:
    """Score the run's model and the current champion on the same held-out split (and, when
    ``external_eval_path`` is set, on that file: ``metrics["external"]`` with the paired comparison
    against the champion in ``["vs_champion"]``); log metrics, confusion matrix and ROC curve to
    the run; store both in PostgreSQL.

    ``champion_cache`` (a dict shared across calls on the same snapshot) scores the champion once
    when several candidates are evaluated in a row (the comparison's family winners)."""
    import mlflow

    s = settings or get_settings()
    tracking.configure(s)
    run = mlflow.MlflowClient().get_run(run_id)
    snap, _, test_df = split_for(run.data.tags["dataset_hash"], s)
    texts, y = test_df["text"].tolist(), test_df["label"].to_numpy()
    model = load_run_model(run_id)
    proba, raw = served_and_raw(model, texts)
    metrics = compute_metrics(y, proba)
    metrics["inference_ms_per_tweet"] = inference_ms_per_tweet(model, texts)

    golden = gate.golden_set(s)
    golden_texts = [t for t, _ in golden]
    ext = external.load(s)
    ext_pred = None
    calibration_sets = {"held-out": (y, proba, raw)}
    if ext is not None:
        ext_proba, ext_raw = served_and_raw(model, ext.texts)
        metrics["external"], ext_pred = external.score(model, ext, proba=ext_proba)
        calibration_sets["external"] = (ext.labels, ext_proba, ext_raw)

    champ = registry.champion(s)
    cs = _score_champion(champ, run_id, snap.hash, texts, y, golden, golden_texts, ext, champion_cache, s)
    # the promotion gate's evidence (ml.evaluation.gate): paired predictions on the held-out set (slices, flips)
    # and on the golden regression set
    evidence = gate.compare(
        y,
        texts,
        np.asarray(proba),
        cs.proba,
        golden,
        np.asarray(model.predict_proba(golden_texts)),
        cs.golden_proba,
        confidence=s.promotion_confidence,
        golden_min_confidence=s.gate_golden_min_confidence,
        champion_version=(champ.version if cs.proba is not None and champ is not None else None),
    )
    if ext is not None and ext_pred is not None and cs.ext_pred is not None and champ is not None:
        metrics["external"]["vs_champion"] = {
            **paired_comparison(ext.labels, ext_pred, cs.ext_pred, s.promotion_confidence),
            "champion_version": champ.version,
        }

    _log_evaluation(run_id, model, y, proba, metrics, cs.metrics, ext, calibration_sets, evidence)
    with db.connect(s) as conn:
        store.set_evaluated(conn, run_id, metrics, cs.metrics or None)
        store.set_gate(conn, run_id, evidence)
    _log_evaluated(run_id, len(y), metrics, cs.metrics, ext)
    return metrics


@dataclass
class _ChampionScores:
    """The champion's scores on the candidate's sets: all None without a champion (or when it is the candidate)."""

    metrics: dict[str, Any] | None = None
    ext_pred: np.ndarray | None = None
    proba: np.ndarray | None = None
    golden_proba: np.ndarray | None = None


def _score_champion(
    champ: registry.ChampionInfo | None,
    run_id: str,
    snapshot_hash: str,
    texts: list[str],
    y: np.ndarray,
    golden: tuple[tuple[str, int], ...],
    golden_texts: list[str],
    ext: external.ExternalSet | None,
    champion_cache: dict | None,
    settings: Settings,
) -> _ChampionScores:
    """Score the champion on the held-out, golden and external sets (once per snapshot via ``champion_cache``)."""
    if champ is None or champ.run_id == run_id:
        return _ChampionScores()
    key = f"{snapshot_hash}:{champ.version}:{ext.content_hash if ext else '-'}:{hash(tuple(golden))}"
    if champion_cache is not None and champion_cache.get("key") == key:
        return _ChampionScores(
            champion_cache["metrics"],
            champion_cache.get("external_pred"),
            champion_cache["proba"],
            champion_cache["golden_proba"],
        )
    cmodel = registry.load_version(champ.version, settings)
    champion_proba = np.asarray(cmodel.predict_proba(texts))
    champion_golden_proba = np.asarray(cmodel.predict_proba(golden_texts))
    champion_metrics = compute_metrics(y, champion_proba)
    champion_metrics["version"] = champ.version
    champion_ext_pred = None
    if ext is not None:  # the champion on the same external texts
        champion_metrics["external"], champion_ext_pred = external.score(cmodel, ext)
    if champion_cache is not None:
        champion_cache.update(
            key=key,
            metrics=champion_metrics,
            external_pred=champion_ext_pred,
            proba=champion_proba,
            golden_proba=champion_golden_proba,
        )
    return _ChampionScores(champion_metrics, champion_ext_pred, champion_proba, champion_golden_proba)


def _log_evaluation(
    run_id: str,
    model: Scorer,
    y: Any,
    proba: np.ndarray,
    metrics: dict[str, Any],
    champion_metrics: dict[str, Any] | None,
    ext: external.ExternalSet | None,
    calibration_sets: dict[str, tuple[Any, np.ndarray, np.ndarray]],
    evidence: dict[str, Any],
) -> None:
    """Log the metrics (the champion's, external ones), plots, calibration and the gate's evidence to the run."""
    import mlflow

    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({k: metrics[k] for k in (*METRICS, "inference_ms_per_tweet")})
        mlflow.set_tag("held_out_rows", str(len(y)))  # what the version's `evaluated_on` names
        if champion_metrics:
            mlflow.log_metrics({f"champion_{k}": champion_metrics[k] for k in METRICS})
        if ext is not None:
            mlflow.log_metrics(external.mlflow_metrics(metrics["external"]))
            mlflow.set_tags({"external_eval_hash": ext.content_hash, "external_eval_path": str(ext.path)})
            log_external_dataset(run_id, ext)
            if champion_metrics and champion_metrics.get("external"):
                mlflow.log_metrics(external.mlflow_metrics(champion_metrics["external"], "champion_external_"))
            vs = metrics["external"].get("vs_champion")
            if vs:
                mlflow.log_metrics(
                    {"external_vs_champion_difference": vs["difference"], "external_vs_champion_p_value": vs["p_value"]}
                )
                mlflow.set_tag("external_vs_champion", vs["verdict"])
        import matplotlib.pyplot as plt

        for fig, name in (
            (plot_confusion(metrics["confusion_matrix"], "held-out confusion matrix"), "confusion_matrix"),
            (plot_roc(y, proba, "held-out ROC"), "roc_curve"),
        ):
            mlflow.log_figure(fig, f"{name}.png")
            plt.close(fig)
        metrics["calibration"] = log_calibration(model, calibration_sets)
        mlflow.log_dict(metrics, "metrics.json")
        gm = {"golden_accuracy": evidence["golden"]["challenger_accuracy"]}
        if "held_out" in evidence:
            gm.update(
                gate_vs_champion_difference=evidence["held_out"]["difference"],
                gate_vs_champion_p_value=evidence["held_out"]["p_value"],
                gate_held_out_changed_labels=evidence["held_out"]["flips"]["changed_label"],
                gate_golden_right_to_wrong=evidence["golden"]["right_to_wrong"],
            )
        mlflow.log_metrics(gm)
        mlflow.log_dict(evidence, "gate.json")


def _log_evaluated(
    run_id: str,
    n_held_out: int,
    metrics: dict[str, Any],
    champion_metrics: dict[str, Any] | None,
    ext: external.ExternalSet | None,
) -> None:
    """Log the evaluation's figures: held-out (with the champion's F1), then the external set's."""
    log.info(
        "evaluated run %s on %s held-out tweets: acc %.4f f1 %.4f auc %.4f (%.3f ms/tweet)%s",
        run_id,
        f"{n_held_out:,}",
        metrics["accuracy"],
        metrics["f1"],
        metrics["roc_auc"],
        metrics["inference_ms_per_tweet"],
        f"; champion v{champion_metrics['version']} f1 {champion_metrics['f1']:.4f}" if champion_metrics else "",
    )
    if ext is not None:
        vs = metrics["external"].get("vs_champion")
        log.info(
            "external set %s (n=%s): acc %.4f f1 %.4f auc %.4f%s",
            ext.path.name,
            f"{ext.n:,}",
            metrics["external"]["accuracy"],
            metrics["external"]["f1"],
            metrics["external"]["roc_auc"],
            f"; vs champion v{vs['champion_version']}: {vs['difference']:+.4f}, p={vs['p_value']:.3g} ({vs['verdict']})"
            if vs
            else "",
        )


def register(run_id: str, settings: Settings | None = None) -> int:
    """Register the run's model as a new version of the registered model (idempotent per run)."""
    import mlflow

    s = settings or get_settings()
    tracking.configure(s)
    client = mlflow.MlflowClient()
    existing = client.search_model_versions(f"name = '{s.model_name}' and run_id = '{run_id}'")
    if existing:
        version = int(existing[0].version)
    else:
        version = registry.register(client.get_run(run_id).data.tags["model_uri"], run_id, s)
    with db.connect(s) as conn:
        store.set_registered(conn, run_id, version)
        comparisons = store.record_winner_version(conn, run_id, version)
    for parent in comparisons:  # the comparison's parent run names the version its winner became
        client.set_tag(parent, "winner_version", str(version))
    describe_version(version, run_id, s)
    digest = registry.version_artifact_digest(version, s)  # what the API will verify before serving it
    with db.connect(s) as conn:
        store.set_artifact_digest(conn, run_id, digest)
    log.info("registered run %s as %s version %s", run_id, s.model_name, version)
    return version


MODEL_DESCRIPTION = (
    "Tweet sentiment: 0 negative, 1 positive (Sentiment140-style English tweets). Input: a DataFrame with "
    "one string column `text`; output: `label`, `p_negative`, `p_positive` (see each version's signature "
    "and input example). Each version is one trained candidate: its tags name the family, the training "
    "snapshot, what it was evaluated on and the promotion gate's verdict. The alias `champion` is the "
    "version that serves; it is moved only by the platform's promotion gate (or `ml promote --rollback`)."
)

#: the promotion gate's verdict on a version, as version tags
GATE_TAGS = ("gate_verdict", "gate_reason", "mcnemar_p_value")


def _evaluated_on(run: Run) -> str:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    n = tags.get("held_out_rows") or params.get("n_test", "?")
    held = f"held-out split of snapshot {tags.get('dataset_hash', '?')[:16]} ({n} tweets)"
    if tags.get("external_eval_path"):
        n_ext = metrics.get("external_n")
        held += (
            f"; external file {Path(tags['external_eval_path']).name}"
            f" ({f'{int(n_ext)} tweets, ' if n_ext is not None else ''}"
            f"sha256 {tags.get('external_eval_hash', '?')[:16]})"
        )
    return held


def _version_description(run: Run, gate: dict[str, str] | None = None) -> str:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    lines = [
        f"{tags.get('family', '?')} trained on snapshot {tags.get('dataset_hash', '?')[:16]} "
        f"({params.get('n_train', '?')} tweets, sample {params.get('sample_size', 'all')}), "
        f"commit {tags.get('git_commit', '?')[:12]}, MLflow run {run.info.run_id}.",
    ]
    if "accuracy" in metrics:
        line = (
            f"Held-out: accuracy {metrics['accuracy']:.4f}, F1 {metrics.get('f1', float('nan')):.4f}, "
            f"ROC AUC {metrics.get('roc_auc', float('nan')):.4f}"
        )
        if "external_accuracy" in metrics:
            line += f"; external: accuracy {metrics['external_accuracy']:.4f}"
        lines.append(line + f" (evaluated on the {_evaluated_on(run)}).")
    if gate:
        lines.append(
            f"Gate: {gate.get('gate_verdict')} (McNemar mid-p vs champion: {gate.get('mcnemar_p_value', 'n/a')}): "
            f"{gate.get('gate_reason', '')}"
        )
    return "\n\n".join(lines)


def describe_version(version: int, run_id: str, settings: Settings, gate: dict[str, str] | None = None) -> None:
    """The registered model's description (set once, while it has none) and the version's description and
    tags: ``family``, ``dataset_hash``, ``evaluated_on``, ``git_commit``, and after the gate ``gate_verdict``,
    ``gate_reason``, ``mcnemar_p_value`` (the paired test against the champion on the held-out split)."""
    import mlflow

    client = mlflow.MlflowClient()
    if not client.get_registered_model(settings.model_name).description:
        client.update_registered_model(settings.model_name, description=MODEL_DESCRIPTION)
    run = client.get_run(run_id)
    if gate is None:  # registered again (a retried task): keep the verdict a gate already recorded
        old = client.get_model_version(settings.model_name, str(version)).tags or {}
        if "gate_verdict" in old:
            gate = {k: old[k] for k in GATE_TAGS if k in old}
    tags = {
        "family": run.data.tags.get("family", ""),
        "dataset_hash": run.data.tags.get("dataset_hash", ""),
        "git_commit": run.data.tags.get("git_commit", ""),
        "evaluated_on": _evaluated_on(run),
        # a distilled candidate (ml.stages.distill) names the model it learned from
        **{k: run.data.tags[k] for k in ("teacher", "teacher_run_id") if run.data.tags.get(k)},
        **(gate or {}),
    }
    for k, v in tags.items():
        client.set_model_version_tag(settings.model_name, str(version), k, v[:4000])
    client.update_model_version(settings.model_name, str(version), description=_version_description(run, gate))


def check_behaviour(run_id: str, settings: Settings | None = None) -> dict[str, Any]:
    """The gate's behavioural checks (ml.evaluation.behaviour) on the run's model: logged to the MLflow run
    (pass rate per type, behaviour.json, tag behaviour_passed) and stored in training_runs.behaviour."""
    import mlflow

    s = settings or get_settings()
    tracking.configure(s)
    result = behaviour.run_checks(load_run_model(run_id), s)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"behaviour_{k}_pass_rate": v["pass_rate"] for k, v in result["types"].items()})
        mlflow.set_tag("behaviour_passed", str(result["passed"]).lower())
        mlflow.log_dict(result, "behaviour.json")
    with db.connect(s) as conn:
        store.set_behaviour(conn, run_id, result)
    log.info("behavioural checks of run %s: %s", run_id, result["reason"])
    return result
