"""Behavioural checks (CheckList-style) that every candidate must pass before it may become
champion: held-out accuracy alone does not show that a model reads "not good" as negative.

Three types of test, a few cases each; a type passes when its pass rate reaches its
threshold (``behaviour_min_functionality``, ``behaviour_negation``, ``behaviour_invariance``
in config/platform.yaml):

- minimum functionality: plain sentences with an obvious label ("I love this" positive);
- negation: a negated positive is negative ("This is not good");
- invariance: changing an @mention or a URL must not flip the predicted label.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ml.models.base import Scorer, decide
from ml.platform.config import Settings, get_settings

log = logging.getLogger(__name__)

POS, NEG = 1, 0

MINIMUM_FUNCTIONALITY: list[tuple[str, int]] = [
    ("I love this", POS),
    ("This is great", POS),
    ("What a wonderful day", POS),
    ("I am so happy today", POS),
    ("Best day ever, thank you all", POS),
    ("I hate this", NEG),
    ("This is terrible", NEG),
    ("What an awful day", NEG),
    ("I am so sad today", NEG),
    ("Worst day ever, I feel sick", NEG),
]

NEGATION: list[tuple[str, int]] = [
    ("not good", NEG),
    ("This is not good", NEG),
    ("I am not happy about this", NEG),
    ("I don't like it", NEG),
    ("It was not fun at all", NEG),
    ("This movie is not great", NEG),
]

# (original, perturbed): only the @mention or the URL differs
INVARIANCE: list[tuple[str, str]] = [
    ("@sarah I love this song so much", "@mike_77 I love this song so much"),
    ("@mike I hate mondays, worst day", "@jenny I hate mondays, worst day"),
    ("great game tonight http://bit.ly/abc123", "great game tonight http://tinyurl.com/q9x"),
    ("my phone broke again http://tinyurl.com/xyz", "my phone broke again http://twitpic.com/4kd2"),
    ("@john thanks for the awesome party", "@robertsmith thanks for the awesome party"),
    ("@amy so sad you are leaving", "@amy so sad you are leaving http://t.co/8fj2k"),
    ("happy birthday to my best friend", "@lucy happy birthday to my best friend"),
    ("stuck in traffic, so annoyed http://t.co/a1", "stuck in traffic, so annoyed http://t.co/zz9"),
]

TYPES = ("minimum_functionality", "negation", "invariance")


def thresholds(settings: Settings | None = None) -> dict[str, float]:
    s = settings or get_settings()
    return {
        "minimum_functionality": s.behaviour_min_functionality,
        "negation": s.behaviour_negation,
        "invariance": s.behaviour_invariance,
    }


def run_checks(model: Scorer, settings: Settings | None = None) -> dict[str, Any]:
    """Score ``model`` (anything with ``predict_proba``) on every case; returns
    ``{"passed", "reason", "types": {type: {pass_rate, threshold, passed, n, failures}}}``."""
    limits = thresholds(settings)
    labelled = {"minimum_functionality": MINIMUM_FUNCTIONALITY, "negation": NEGATION}
    texts = [t for cases in labelled.values() for t, _ in cases]
    texts += [t for pair in INVARIANCE for t in pair]
    p = np.asarray(model.predict_proba(texts))[:, 1]
    at = dict(zip(texts, p.tolist()))

    types: dict[str, dict[str, Any]] = {}
    for name, cases in labelled.items():
        failures = [
            {"text": t, "expected": "positive" if y else "negative", "p_positive": round(at[t], 4)}
            for t, y in cases
            if int(decide(at[t])) != y
        ]
        types[name] = {"n": len(cases), "failed": len(failures), "failures": failures}
    inv_fail = [
        {"text": a, "perturbed": b, "p_positive": round(at[a], 4), "p_positive_perturbed": round(at[b], 4)}
        for a, b in INVARIANCE
        if decide(at[a]) != decide(at[b])
    ]
    types["invariance"] = {"n": len(INVARIANCE), "failed": len(inv_fail), "failures": inv_fail}

    problems = []
    for name, r in types.items():
        r["pass_rate"] = round((r["n"] - r["failed"]) / r["n"], 4)
        r["threshold"] = limits[name]
        r["passed"] = r["pass_rate"] >= limits[name]
        if not r["passed"]:
            examples = "; ".join(f"'{f['text']}'" for f in r["failures"][:3])
            problems.append(
                f"{name} {r['n'] - r['failed']}/{r['n']} passed "
                f"({r['pass_rate']:.0%} < {limits[name]:.0%}; e.g. {examples})"
            )
    passed = not problems
    reason = "all behavioural checks passed" if passed else "; ".join(problems)
    log.info(
        "behavioural checks: %s (%s)",
        "PASSED" if passed else "FAILED",
        ", ".join(f"{k} {v['pass_rate']:.0%}" for k, v in types.items()),
    )
    return {"passed": passed, "reason": reason, "types": types}
