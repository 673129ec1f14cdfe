"""The promotion gate's rules on given evidence (ml/evaluation/gate.py, ml/stages/promotion.py decide_promotion):
slices, the golden set, the paired significance test, slice regressions and golden flips."""

from __future__ import annotations

import numpy as np
import realdata

from ml.evaluation import behaviour, gate
from ml.platform.config import Settings
from ml.stages.promotion import decide_promotion

S = Settings()
POLICY = {"mode": "strict", "slice_tolerance": 0.02, "max_golden_flips": 0}


# ---------------------------------------------------------------- the rule on hand-made evidence
def _evidence(a_only: int, b_only: int, n: int = 4000, golden_flip=False, slice_drop=0):
    """Paired labels on ``n`` texts: ``a_only`` only the candidate gets right, ``b_only`` only the
    champion, 600 both wrong; ``slice_drop`` of the @mention texts moved from both-right to only-the-champion-right."""
    rng = np.random.default_rng(0)
    texts = [f"tweet number {i}" + (" @someone" if i % 4 == 0 else "") for i in range(n)]
    y = rng.integers(0, 2, n)
    cand, champ = y.copy(), y.copy()
    cand[a_only : a_only + b_only] ^= 1
    champ[:a_only] ^= 1
    cand[a_only + b_only : a_only + b_only + 600] ^= 1
    champ[a_only + b_only : a_only + b_only + 600] ^= 1
    if slice_drop:
        idx = [i for i in range(a_only + b_only + 600, n) if i % 4 == 0][:slice_drop]
        cand[idx] ^= 1
    proba = lambda lab: np.column_stack([0.9 - lab * 0.8, lab * 0.8 + 0.1])  # noqa: E731
    golden = [("this is great", 1), ("I hate this", 0)]
    g_cand = np.array([0 if golden_flip else 1, 0])
    ev = gate.compare(
        y,
        texts,
        proba(cand),
        proba(champ),
        golden,
        proba(g_cand),
        proba(np.array([1, 0])),
        confidence=0.95,
        golden_min_confidence=0.7,
        champion_version=1,
    )
    h = ev["held_out"]
    return ev, {"accuracy": h["accuracy_a"]}, {"accuracy": h["accuracy_b"]}


def test_slices_are_defined_once_and_cover_the_named_ones():
    m = gate.slice_masks(["@bob not good at all http://t.co/x", "love it"])
    assert set(gate.SLICES) == {"short", "long", "mention", "no_mention", "url", "no_url", "negation", "no_negation"}
    assert m["mention"].tolist() == [True, False] and m["url"].tolist() == [True, False]
    assert m["negation"].tolist() == [True, False] and m["short"].tolist() == [True, True]
    assert gate.slice_masks(["I don't like it"])["negation"].tolist() == [True]


def test_golden_set_is_config_plus_the_behavioural_cases():
    golden = dict(gate.golden_set(S))
    assert len(golden) >= 40 + len(behaviour.MINIMUM_FUNCTIONALITY) + len(behaviour.NEGATION)
    assert golden["this is great, thank you!"] == 1 and golden["This is not good"] == 0
    assert all(golden[t] == y for t, y in behaviour.MINIMUM_FUNCTIONALITY + behaviour.NEGATION)
    sample = {t for _, t in realdata.read()}
    assert not sample & set(golden)  # written for the platform, not taken from Sentiment140


def test_significant_win_is_promoted_and_a_noise_win_is_not():
    ev, cand, champ = _evidence(150, 50)
    d = decide_promotion(cand, champ, metric="accuracy", margin=0.0, gate=ev, policy=POLICY)
    assert d.promote and d.checks["significance"]["passed"], d
    ev, cand, champ = _evidence(110, 100)  # +0.0025: passes "> 0.0", not the paired test
    d = decide_promotion(cand, champ, metric="accuracy", margin=0.0, gate=ev, policy=POLICY)
    assert not d.promote and "not a significant win" in d.reason and ev["held_out"]["p_value"] > 0.05
    # the same evidence under promotion_gate=margin (tests/system/api publish()): the plain margin rule
    d = decide_promotion(cand, champ, metric="accuracy", margin=0.0, gate=ev, policy={**POLICY, "mode": "margin"})
    assert d.promote and "promotion_gate: margin" in d.reason


def test_slice_regression_and_golden_flip_block_a_significant_win():
    ev, cand, champ = _evidence(250, 50, slice_drop=150)
    d = decide_promotion(cand, champ, metric="accuracy", margin=0.0, gate=ev, policy=POLICY)
    assert not d.promote and d.checks["significance"]["passed"] and d.checks["slices"]["regressed"] == ["mention"], (
        d.reason
    )
    assert "slice regression" in d.reason
    ev, cand, champ = _evidence(250, 50, golden_flip=True)
    assert ev["golden"]["right_to_wrong_texts"][0]["text"] == "this is great"
    d = decide_promotion(cand, champ, metric="accuracy", margin=0.0, gate=ev, policy=POLICY)
    assert not d.promote and "golden text(s) flipped" in d.reason and "'this is great'" in d.reason
    assert decide_promotion(
        cand, champ, metric="accuracy", margin=0.0, gate=ev, policy={**POLICY, "max_golden_flips": 1}
    ).promote


def test_first_model_and_failed_checks_and_missing_evidence():
    assert decide_promotion({"accuracy": 0.6}, None, metric="accuracy", margin=0.0, gate={}, policy=POLICY).promote
    assert not decide_promotion(
        {"accuracy": 0.9}, None, metric="accuracy", margin=0.0, checks_passed=False, gate={}, policy=POLICY
    ).promote
    d = decide_promotion({"accuracy": 0.9}, {"accuracy": 0.6}, metric="accuracy", margin=0.0, gate={}, policy=POLICY)
    assert not d.promote and "no paired evidence" in d.reason
