"""The model families' registry and the lemma preprocessing (ml/models, ml/features), without a fit."""

from __future__ import annotations

import subprocess
import sys

from ml import models
from ml.features import preprocess


def test_lemma_preprocessing_is_offline_and_keeps_meaning():
    out = preprocess(["@bob I LOVED those movies!!! http://x.co went better", "I don't like it"], "lemma")
    assert out == ["user i love those movie!!! url go good", "i don't like it"]
    assert preprocess(["Dogs"], "lemmatise") == ["dog"]


def test_families_registered_lazily():
    """Looking families up by name imports no framework: the DAG and the API stay light."""
    assert {"tfidf_lr", "cnn", "bilstm", "transformer"} <= set(models.FAMILIES)
    probe = (
        "import sys, ml.models as m; [m.family_class(f) for f in ('tfidf_lr',)]; "
        "print(sorted(x for x in ('tensorflow', 'keras', 'torch', 'transformers') if x in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
