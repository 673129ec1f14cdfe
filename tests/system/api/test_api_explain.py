"""Why this label: ``POST /predict?explain=true`` on a real TF-IDF champion (tests/system/api/conftest.py), and
the families' shared explainer (ml/models/base.py: occlusion by default, TF-IDF its own coefficients)."""

from __future__ import annotations

import math
import re
import uuid

import numpy as np
import pytest
from api_helpers import running_app, settings_with

from ml.platform import registry
from ml.stages import promotion, train


def _without(text: str, token: str) -> str:
    """The text without the words the TF-IDF feature ``token`` (a lower-cased word) came from."""
    return " ".join(w for w in text.split() if token not in re.findall(r"\w\w+", w.lower()))


def test_tfidf_explanations_name_words_whose_removal_moves_p_positive_their_way(client, tweets):
    texts = [t for t in tweets[0][:300] if len(t.split()) >= 4][:120]
    r = client.post("/predict/batch?explain=true", json={"texts": texts})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    checked, agree, variants, signs = 0, 0, [], []
    for text, p in zip(texts, preds, strict=True):
        assert p["explanation_method"] == "tfidf_coefficients"
        words = p["explanation"]
        assert words and len(words) <= 10
        w = [abs(x["weight"]) for x in words]
        assert w == sorted(w, reverse=True)  # largest |weight| first
        top = next((x for x in words if " " not in x["token"]), None)  # a single word: removable
        if top is None or abs(top["weight"]) < 1e-6:
            continue
        stripped = _without(text, top["token"])
        if stripped == " ".join(text.split()) or not stripped.strip():
            continue  # a feature the preprocessing made (``url``, ``user``): no raw word to remove
        variants.append(stripped)
        signs.append((p["probabilities"]["positive"], np.sign(top["weight"])))
    r = client.post("/predict/batch", json={"texts": variants})
    for (before, sign), q in zip(signs, r.json()["predictions"], strict=True):
        checked += 1
        # removing a word that pushed toward positive lowers p_positive, and the other way round
        agree += (before - q["probabilities"]["positive"]) * sign > 0
    assert checked >= 60, checked
    assert agree / checked >= 0.9, (agree, checked)


def test_explain_is_opt_in_and_the_plain_answer_is_unchanged(client):
    plain = client.post("/predict", json={"text": "I love this, best day ever"}).json()
    assert "explanation" not in plain and "explanation_method" not in plain
    batch = client.post("/predict/batch", json={"texts": ["awful", "great"]}).json()
    assert all("explanation" not in p for p in batch["predictions"])
    one = client.post("/predict?explain=true", json={"text": "I love this, best day ever"}).json()
    assert one["label"] == plain["label"] and one["probabilities"] == plain["probabilities"]
    assert one["feedback_token"] and one["explanation_method"] == "tfidf_coefficients"
    assert one["explanation"][0]["token"] in {"love", "best", "best day", "love this", "day ever", "ever", "day"}
    assert one["explanation"][0]["weight"] > 0
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert {"explanation", "explanation_method"} <= set(schema["Prediction"]["properties"])
    assert set(schema["TokenWeight"]["properties"]) == {"token", "weight"}


# tiny neural champions (as tests/system/test_families.py): 1 epoch, a small vocabulary and embedding
TINY_NEURAL = {
    "cnn": {
        "epochs": 1,
        "vocab_size": 2000,
        "max_len": 24,
        "embedding_dim": 16,
        "filters": 16,
        "hidden": 8,
        "embeddings": "scratch",
    },
    "bilstm": {
        "epochs": 1,
        "vocab_size": 2000,
        "max_len": 24,
        "embedding_dim": 16,
        "lstm_units": 8,
        "hidden": 8,
        "embeddings": "scratch",
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(TINY_NEURAL))
def test_neural_champion_explanations_are_occlusion_checked_against_the_model(
    family, platform_env, mlflow_tracking, snapshot
):
    """``/predict?explain=true`` on a real Keras champion (trained, registered and promoted by the real path):
    occlusion words come from the text, weights are finite, and the model itself, loaded apart from the
    API, agrees: removing the top word moves p_positive by the weight, in the weight's sign."""
    s = settings_with(
        platform_env,
        model_name=f"explain-{family}-{uuid.uuid4().hex[:8]}",
        promotion_gate="margin",
        promotion_margin=-1.0,
        behaviour_checks=False,
    )
    run_id = train.train(snapshot.hash, family, params=TINY_NEURAL[family], sample_size=600, settings=s)
    train.evaluate(run_id, s)
    version = train.register(run_id, s)
    assert promotion.promote(run_id, s)["promoted"]
    texts = [
        f"I really love this sunny day with my friends {uuid.uuid4().hex[:4]}",
        "worst monday ever, my phone broke and I missed the bus",
    ]
    with running_app(s) as c:
        answers = [c.post("/predict?explain=true", json={"text": t}) for t in texts]
    model = registry.load_version(version, s)  # the model itself, not the API's copy
    for text, r in zip(texts, answers, strict=True):
        assert r.status_code == 200, r.text
        p = r.json()
        assert p["model_version"] == version and p["explanation_method"] == "occlusion"
        words = p["explanation"]
        assert words and all(w["token"] in text.split() for w in words)
        assert all(math.isfinite(w["weight"]) for w in words)
        assert [abs(w["weight"]) for w in words] == sorted((abs(w["weight"]) for w in words), reverse=True)
        top = words[0]
        assert top["weight"] != 0, words  # the model is not constant on this text
        full, without = model.predict_proba([text, " ".join(w for w in text.split() if w != top["token"])])[:, 1]
        assert full == pytest.approx(p["probabilities"]["positive"], abs=1e-4)
        assert np.sign(full - without) == np.sign(top["weight"])  # the move the weight claims
        assert full - without == pytest.approx(top["weight"], abs=1e-4)
