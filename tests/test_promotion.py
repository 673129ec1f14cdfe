"""The promotion rule: one small function."""
from ml.registry import decide_promotion


def test_first_model_is_promoted():
    d = decide_promotion({"f1": 0.5}, None)
    assert d.promote and "first model" in d.reason


def test_better_candidate_promoted_worse_or_equal_not():
    assert decide_promotion({"f1": 0.81}, {"f1": 0.80}).promote
    assert not decide_promotion({"f1": 0.80}, {"f1": 0.80}).promote
    assert not decide_promotion({"f1": 0.79}, {"f1": 0.80}).promote


def test_margin_and_metric():
    assert not decide_promotion({"f1": 0.805, "accuracy": 0.9}, {"f1": 0.80, "accuracy": 0.8}, margin=0.01).promote
    assert decide_promotion({"f1": 0.7, "accuracy": 0.9}, {"f1": 0.8, "accuracy": 0.8}, metric="accuracy").promote


def test_failed_checks_never_promoted():
    d = decide_promotion({"f1": 0.99}, None, checks_passed=False, checks_reason="negation")
    assert not d.promote and "negation" in d.reason
