"""sentiment_distillation: a fast model that learns from the slow one, then the same gate as any candidate.

distill (the teacher, by default the champion, labels a corpus with soft probabilities; a TF-IDF student
trains on them plus the snapshot's hard labels: ml/stages/distill.py) -> evaluate (the held-out split of the
snapshot and the external file, beside the champion) -> the ``promotion`` group (register -> gate ->
promote: plugins/sentiment_promotion.py, shared with the other training DAGs) -> ``shadow`` -> ``champion``.
The student becomes champion only if it wins under the paired gate.

Thin on purpose: each task calls one function of ``ml`` (imported inside the task); the same functions back
``ml distill --promote``.
"""

from __future__ import annotations

from typing import Any, cast

from airflow.sdk import Param, dag, get_current_context, task
from sentiment_dag_defaults import platform_dag_kwargs  # plugins/ (on sys.path in every Airflow process)
from sentiment_promotion import promotion, publish_champion, shadow


@dag(
    dag_id="sentiment_distillation",
    description="Distil the champion (e.g. the transformer) into a TF-IDF student, gate and promote it",
    schedule=None,
    tags=["sentiment", "training", "distillation"],
    params={
        "snapshot": Param("", type="string", description="Dataset snapshot hash or prefix (empty: the latest)"),
        "teacher": Param("champion", type="string", description="'champion' or a registered version number"),
        "corpus": Param(
            "training",
            type="string",
            enum=["training", "file", "predictions"],
            description="What the teacher labels: the snapshot's training split, a tweet file, or served texts",
        ),
        "corpus_path": Param("", type="string", description="Tweet file of corpus=file (labels ignored)"),
        "max_corpus_rows": Param(None, type=["null", "integer"], minimum=1, description="At most this many texts"),
        "sample_size": Param(None, type=["null", "integer"], minimum=20, description="Hard-labelled sample"),
        "soft_weight": Param(1.0, type="number", minimum=0, maximum=100, description="Soft vs hard label weight"),
    },
    **platform_dag_kwargs(),
    doc_md=__doc__,
)
def sentiment_distillation():
    @task
    def distill() -> str:
        from ml.stages.distill import run_distillation

        ctx = get_current_context()
        p = ctx["params"]
        return run_distillation(
            p["snapshot"] or None,
            p["teacher"],
            p["corpus"],
            p["corpus_path"] or None,
            p["max_corpus_rows"],
            p["sample_size"],
            float(p["soft_weight"]),
            airflow_run_id=ctx["run_id"],
        )

    @task
    def evaluate(candidate: str) -> str:
        from ml.stages.train import evaluate as evaluate_run

        evaluate_run(candidate)
        return candidate

    # a task group's call returns its function's XComArg (typed DAGNode): what publish_champion receives
    publish_champion(cast("dict[str, Any]", shadow(promotion(evaluate(distill())))))


sentiment_distillation()
