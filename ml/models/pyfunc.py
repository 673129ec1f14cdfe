"""The MLflow pyfunc of every family: what a registered version is, to MLflow and to ``mlflow models serve``.

A version carries:

- a **signature**: input one string column ``text``; output ``label`` (0 negative, 1 positive, the
  platform's decision rule), ``p_negative`` and ``p_positive`` (what :meth:`SentimentPyfunc.predict` returns);
- an **input example** (a few short tweets), which MLflow also saves as ``serving_input_example.json``, the
  payload of ``POST /invocations``: ``{"dataframe_split": {"columns": ["text"], "data": [["..."], ...]}}``;
- **pinned requirements** from the running environment (``scikit-learn==...``, ``numpy==...``, ``pandas==...``,
  ``joblib==...``, ``cloudpickle==...`` and the family's own, e.g. ``torch==...``): a fresh environment built
  from them unpickles the model;
- the **code** it needs (``code/ml``: ``ml/__init__.py``, ``ml/features.py`` and ``ml/models/``), so the pickled
  wrapper and the family's loader import in an environment without this project installed.

This module imports only pandas and the families' base: it is what a serving environment unpickles.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ml import models
from ml.models.base import SentimentModel, decide, pinned

if TYPE_CHECKING:
    from mlflow.models import ModelSignature
    from mlflow.models.model import ModelInfo

MODEL_ARTIFACT = "model"
INPUT_COLUMN = "text"
OUTPUT_COLUMNS = ("label", "p_negative", "p_positive")
#: the platform's base inference requirements, pinned to the running environment at logging time
BASE_REQUIREMENTS = ("scikit-learn", "numpy", "pandas", "joblib", "cloudpickle")
#: the input example logged with every version (and the payload the README documents for /invocations)
EXAMPLE_TEXTS = (
    "I love this new phone, best purchase ever",
    "worst customer service, never flying with them again",
    "just landed in Paris",
)

try:  # the pyfunc base class; MLflow is a hard dependency of the platform
    from mlflow.pyfunc import PythonModel as _PythonModel
except ImportError:  # pragma: no cover
    _PythonModel = object  # type: ignore[assignment,misc]


class SentimentPyfunc(_PythonModel):
    """MLflow pyfunc wrapper: any family, saved with its own ``save``; ``predict`` takes a DataFrame with a
    ``text`` column (or a list / Series of texts) and returns a DataFrame with label, p_negative, p_positive."""

    def load_context(self, context: Any) -> None:
        self.model = models.load(context.artifacts["model_dir"])

    # a type hint keeps MLflow 3 from warning "Add type hints to the `predict` method"; with a
    # DataFrame hint MLflow neither infers a schema from it nor converts the input
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if isinstance(model_input, pd.DataFrame):
            model_input = model_input[INPUT_COLUMN] if INPUT_COLUMN in model_input else model_input.iloc[:, 0]
        texts = [str(t) for t in list(model_input)]
        proba = self.model.predict_proba(texts)
        return pd.DataFrame(
            {"label": decide(proba[:, 1]).astype("int64"), "p_negative": proba[:, 0], "p_positive": proba[:, 1]}
        )


def signature() -> ModelSignature:
    """The signature of every version: ``text`` (string) in; ``label`` (long), ``p_negative``, ``p_positive``
    (double) out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", INPUT_COLUMN)]),
        outputs=Schema([ColSpec("long", "label"), ColSpec("double", "p_negative"), ColSpec("double", "p_positive")]),
    )


def input_example() -> pd.DataFrame:
    return pd.DataFrame({INPUT_COLUMN: list(EXAMPLE_TEXTS)})


def base_requirements() -> list[str]:
    """The base inference requirements pinned to the installed versions (``scikit-learn==1.9.1``, ...)."""
    return [pinned(d) for d in BASE_REQUIREMENTS]


def requirements(model: SentimentModel) -> list[str]:
    """The whole pinned environment of ``model``: the base requirements plus the family's own."""
    return base_requirements() + model.pip_requirements()


def _code_package(dest: Path) -> Path:
    """A copy of the part of ``ml`` the pyfunc imports (``__init__``, ``features``, ``models/``), without
    caches: logged as the model's ``code/ml``."""
    src = Path(__file__).resolve().parents[1]  # the ml package
    pkg = dest / "ml"
    (pkg / "models").mkdir(parents=True)
    for name in ("__init__.py", "features.py"):
        shutil.copy2(src / name, pkg / name)
    for f in (src / "models").glob("*.py"):
        shutil.copy2(f, pkg / "models" / f.name)
    return pkg


def log_model(model: SentimentModel, extra_requirements: list[str] | None = None, **kwargs: Any) -> ModelInfo:
    """Log ``model`` into the active MLflow run as a pyfunc with its signature, input example, pinned
    requirements (base + ``extra_requirements``, by default the family's own) and code; returns MLflow's
    ModelInfo. Passing the requirements also spares MLflow's slow inference of them."""
    import mlflow

    if extra_requirements is None:
        extra_requirements = model.pip_requirements()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = model.save(Path(tmp) / "model_dir")
        code = _code_package(Path(tmp) / "code")
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=SentimentPyfunc(),
            artifacts={"model_dir": str(model_dir)},
            code_paths=[str(code)],
            pip_requirements=base_requirements() + list(extra_requirements),
            signature=signature(),
            input_example=input_example(),
            **kwargs,
        )
