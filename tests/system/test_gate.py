"""The promotion gate (ml/evaluation/gate.py, through ml.stages.promotion.decide_promotion): a challenger must beat the
champion for real on paired predictions, lose no slice, and flip no golden text from right to wrong.

The rule's arithmetic on hand-made evidence: tests/unit/test_gate_rules.py. Here, real TF-IDF models on
the bundled 20k real tweets (one snapshot, one held-out split of ~4,000 tweets): a challenger equal to the champion within
noise is not promoted, a clearly better one is, and a retraining poisoned like the reported attack
(real tweets containing "great" reported as negative) is refused on the golden set although it is
significantly more accurate on the held-out set. Behavioural checks are off in the real tests so that
the gate alone decides (tests/unit/test_promotion.py and tests/system/test_training.py cover the checks)."""

from __future__ import annotations

import os

import psycopg
import pytest
import realdata
from loop_helpers import IDENTITIES

from api.runtime import serving
from ml.data.snapshots import get_snapshot, validate_and_snapshot
from ml.data.splits import split
from ml.platform import registry
from ml.platform.config import get_settings, reset_settings
from ml.stages import promotion, train
from ml.stages.retraining.challenger import run_retraining
from ml.stages.retraining.records import get_retraining
from ml.store import predictions as prediction_store
from ml.views import model_card


# ---------------------------------------------------------------- real models, real tweets
@pytest.fixture(scope="module")
def snap20k(platform_env):
    """The bundled 20k real tweets as one snapshot: held-out split of ~4,000 tweets."""
    return validate_and_snapshot(realdata.SAMPLE)


@pytest.fixture
def gate_only(model_name, monkeypatch):
    monkeypatch.setenv("SENTIMENT_BEHAVIOUR_CHECKS", "false")
    reset_settings()
    yield
    monkeypatch.delenv("SENTIMENT_BEHAVIOUR_CHECKS")
    reset_settings()


def _cycle(snapshot_hash: str, **kw):
    run_id = train.train(snapshot_hash, "tfidf_lr", **kw)
    train.evaluate(run_id)
    train.register(run_id)
    return run_id, promotion.promote(run_id)


def _gate_row(conn, run_id):
    return conn.execute("SELECT gate, decision, status FROM training_runs WHERE run_id = %s", (run_id,)).fetchone()


def _summary(g):
    h = g["held_out"]
    return (
        f"diff {h['difference']:+.4f} p={h['p_value']:.3g} CI {h['interval']} changed {h['flips']['changed_label']}"
        f" golden r->w {g['golden']['right_to_wrong']} (+{g['golden']['right_to_wrong_uncertain']} unsure)"
        f" slices "
        + ", ".join(f"{k} {v['difference']:+.3f}/{v['p_value']:.2g}/n={v['n']}" for k, v in h["slices"].items())
    )


def test_a_challenger_equal_within_noise_is_not_promoted(snap20k, gate_only, conn):
    """Same family and params, a slightly different sample of the same training split (5,000 vs
    5,300 tweets): its held-out accuracy differs by noise only, so it is not promoted."""
    run1, d1 = _cycle(snap20k.hash, sample_size=5000)
    assert d1["promoted"] and "first model" in d1["reason"]
    run2, d2 = _cycle(snap20k.hash, sample_size=5300)
    g, decision, status = _gate_row(conn, run2)
    print("noise:", _summary(g), "|", decision)
    assert not d2["promoted"] and status == "rejected" and decision == d2["reason"]
    assert g["held_out"]["verdict"] == "tie" and g["held_out"]["p_value"] >= 0.05
    assert g["decision"]["checks"]["significance"]["passed"] is False
    assert abs(g["held_out"]["difference"]) < 0.01 and g["held_out"]["n"] > 3900
    assert g["held_out"]["flips"]["changed_label"] > 0  # the flip report is stored
    assert registry.champion().version == d1["version"]


def test_a_clearly_better_challenger_is_promoted_and_the_card_says_what_changed(snap20k, gate_only, conn):
    """300 tweets vs 5,000 of the same split: significantly better, no slice lost, no golden flip."""
    run1, d1 = _cycle(snap20k.hash, sample_size=300)
    assert d1["promoted"]
    run2, d2 = _cycle(snap20k.hash, sample_size=5000)
    g, decision, _ = _gate_row(conn, run2)
    print("better:", _summary(g), "|", decision)
    assert d2["promoted"], d2
    checks = g["decision"]["checks"]
    assert checks["significance"]["passed"] and g["held_out"]["verdict"] == "better"
    assert g["held_out"]["p_value"] < 0.05 and g["held_out"]["difference"] > 0.05
    assert checks["slices"]["passed"] and checks["golden"]["passed"]
    card = model_card.model_card()
    wc = card["champion"]["what_changed"]
    assert (
        wc["against_version"] == d1["version"]
        and wc["held_out"]["changed_label"] == g["held_out"]["flips"]["changed_label"]
    )
    html = model_card.card_html(card)
    assert "What changed (against v" in html and "changed label" in html


def _report(s, model, rows: list[tuple[int, str]], label: int) -> list[int]:
    """Store the champion's predictions of ``rows`` and report each as ``label`` (as the API does), by
    ``IDENTITIES`` identities of its own per text: an attacker holding many keys gets past the
    trusted-label rules (ml/stages/review.py), so the gate is what must stop it."""
    champ = registry.champion(s)
    texts = [t for _, t in rows]
    preds = serving.prediction_rows(texts, model.predict_proba(texts), s.model_name, champ.version)
    ids: list[int] = []
    with psycopg.connect(s.database_url, autocommit=True) as conn:
        prediction_store.copy_rows(conn, preds)
        for p in preds:
            if p.label == label:
                continue
            for k in range(IDENTITIES):
                ids.append(
                    conn.execute(
                        "INSERT INTO feedback (prediction_id, correct_label, reporter) VALUES (%s, %s, %s) RETURNING id",
                        (p.id, label, f"key:sybil-{p.id}-{k}#test"),
                    ).fetchone()[0]
                )
    return ids


def test_a_poisoned_retraining_flipping_golden_texts_is_not_promoted(snap20k, gate_only, conn, shared_data):
    """The attack, for real: ~600 real positive tweets containing "great" (from the shared 100k, not in
    the snapshot) reported as negative. The retraining trains on 80% of them plus the whole training
    split and is significantly MORE accurate on the held-out set than the 5,000-tweet champion, so the
    old rule would promote it; it now reads "great" as negative: golden texts flip, it is refused."""
    run1, d1 = _cycle(snap20k.hash, sample_size=5000)
    assert d1["promoted"]
    s = get_settings()
    in_snapshot = set(snap20k.load()["text"])
    champion = registry.load_version(d1["version"], s)
    great = [(y, t) for y, t in realdata.read(shared_data) if y == 1 and "great" in t.lower() and t not in in_snapshot]
    ids = _report(s, champion, great[:650], 0)
    assert len(ids) >= 500 * IDENTITIES
    # one held-out text of the parent reported too: it stays held out, with its parent label
    _, parent_test = split(snap20k.load(), s.test_size, s.seed)
    held_text, held_label = parent_test.iloc[0]["text"], int(parent_test.iloc[0]["label"])
    _report(s, champion, [(held_label, held_text)], 1 - held_label)

    out = run_retraining(None)
    r = get_retraining(out["retraining_id"])
    g = r["gate"]
    print("poisoned:", _summary(g), "|", out["reason"])
    print("golden right->wrong:", [x["text"] for x in g["golden"]["right_to_wrong_texts"]])
    print("reported_eval:", g["reported_eval"]["vs_champion"])
    # the held-out set is the parent's, all of it, with the parent's labels (the reported text included)
    new_train, new_test = split(get_snapshot(r["snapshot_hash"]).load(), s.test_size, s.seed)
    assert set(new_test["text"]) == set(parent_test["text"]) and held_text not in set(new_train["text"])
    assert dict(zip(new_test["text"], new_test["label"]))[held_text] == held_label
    # (>= 1: some "great" tweets of the 100k file are also in the 20k sample's held-out set, stripped)
    assert r["dataset_report"]["held_out"]["reported_texts_kept"] >= 1
    # significantly better on the held-out set: the old "> 0.0" rule and the significance test both pass
    assert g["held_out"]["verdict"] == "better" and g["decision"]["checks"]["significance"]["passed"]
    # ... but golden texts flipped from right to wrong: refused, recorded on the run and the retraining
    assert not out["promoted"] and r["status"] == "rejected"
    assert g["decision"]["checks"]["golden"]["passed"] is False and g["golden"]["right_to_wrong"] >= 1
    assert any("great" in x["text"].lower() for x in g["golden"]["right_to_wrong_texts"])
    assert "golden text(s) flipped from right to wrong" in out["reason"] and r["decision"] == out["reason"]
    # (b) the reported tweets held out of training: the poisoned challenger "agrees" with the reports
    vs = g["reported_eval"]["vs_champion"]
    assert g["reported_eval"]["criterion"] is False and vs["n"] > 50 and vs["accuracy_a"] > vs["accuracy_b"]
    assert registry.champion().version == d1["version"]
    ev = conn.execute(
        "SELECT event, reason FROM model_events WHERE model_name = %s AND version = %s", (s.model_name, out["version"])
    ).fetchall()
    assert ev == [("rejected", out["reason"])]
    assert os.environ["SENTIMENT_MODEL_NAME"] == s.model_name
