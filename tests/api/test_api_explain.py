"""Why this label: ``POST /predict?explain=true`` on a real TF-IDF champion (tests/api/conftest.py), and
the families' shared explainer (ml/models/base.py: occlusion by default, TF-IDF its own coefficients)."""

from __future__ import annotations

import re

import numpy as np

from ml.models.base import occlusion


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


def test_occlusion_weighs_each_word_by_the_drop_in_p_positive_in_one_call():
    calls: list[int] = []

    def proba(texts):  # a toy model: "good" +0.4, "bad" -0.3
        calls.append(len(texts))
        p = np.array([0.5 + 0.4 * ("good" in t.split()) - 0.3 * ("bad" in t.split()) for t in texts])
        return np.column_stack([1 - p, p])

    [[first, second, *rest]] = occlusion(proba, ["good not bad good"], top_k=10)
    assert calls == [1 + 3]  # the text + one variant per distinct word, one call
    assert first == {"token": "good", "weight": 0.4} and second == {"token": "bad", "weight": -0.3}
    assert rest == [{"token": "not", "weight": 0.0}]
    [[_, *more]] = occlusion(proba, [" ".join(f"w{i}" for i in range(100))], top_k=100, max_words=40)
    assert len(more) == 39 and calls[-1] == 41  # capped at 40 words
