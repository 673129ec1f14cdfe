"""The promotion rule: one small function, with no default of its own (the metric and margin
always come from the platform's settings)."""

import pytest

from ml.platform.config import Settings
from ml.stages.promotion import decide_promotion

S = Settings()


def test_the_rule_has_no_hidden_default():
    with pytest.raises(TypeError):
        decide_promotion({"accuracy": 0.5}, None)  # type: ignore[call-arg]
    assert S.promotion_metric == "accuracy"


def test_first_model_is_promoted():
    d = decide_promotion({"accuracy": 0.5}, None, metric=S.promotion_metric, margin=S.promotion_margin)
    assert d.promote and "first model" in d.reason


def test_better_candidate_promoted_worse_or_equal_not():
    rule = {"metric": S.promotion_metric, "margin": S.promotion_margin}
    assert decide_promotion({"accuracy": 0.81}, {"accuracy": 0.80}, **rule).promote
    assert not decide_promotion({"accuracy": 0.80}, {"accuracy": 0.80}, **rule).promote
    assert not decide_promotion({"accuracy": 0.79}, {"accuracy": 0.80}, **rule).promote


def test_margin_and_metric():
    assert not decide_promotion(
        {"f1": 0.9, "accuracy": 0.805}, {"f1": 0.8, "accuracy": 0.80}, metric="accuracy", margin=0.01
    ).promote
    assert decide_promotion({"f1": 0.9, "accuracy": 0.7}, {"f1": 0.8, "accuracy": 0.8}, metric="f1", margin=0.0).promote


def test_failed_checks_never_promoted():
    d = decide_promotion(
        {"accuracy": 0.99}, None, metric="accuracy", margin=0.0, checks_passed=False, checks_reason="negation"
    )
    assert not d.promote and "negation" in d.reason


def test_failed_checks_block_a_better_candidate_against_a_champion():
    d = decide_promotion(
        {"accuracy": 0.9},
        {"accuracy": 0.6},
        metric="accuracy",
        margin=0.0,
        checks_passed=False,
        checks_reason="minimum_functionality 8/10 passed",
    )
    assert not d.promote and d.reason == "failed behavioural checks: minimum_functionality 8/10 passed"
    assert decide_promotion(
        {"accuracy": 0.9}, {"accuracy": 0.6}, metric="accuracy", margin=0.0
    ).promote  # the checks alone block it
