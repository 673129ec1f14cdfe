"""The promotion gate: does the challenger beat the champion for real, and what did it change?

Held-out accuracy alone let a poisoned challenger through (0.8030 -> 0.8041 "beats the champion by
more than 0.0") while it now labelled "load tweet this is great" negative. So the gate compares the
two models' *paired predictions* on three sets and records what changed:

(a) the fixed held-out split (for a retraining: its parent's held-out texts with the parent's
    labels, reported texts included, never trained on — ``ml/stages/retraining/``);
(b) the reported tweets held out of a retraining's training (``retraining_report_eval_fraction``):
    compared and recorded (``ml.stages.retraining.challenger.evaluate``), not a promotion criterion — a few hundred
    hand-picked champion errors are too small and too biased a sample to decide on;
(c) the golden regression set: ``golden_path`` (config/golden.yaml: canonical tweets with their
    labels) plus the labelled behavioural cases of ``ml.evaluation.behaviour``.

:func:`compare` builds the *evidence* (``ml.stages.train.evaluate`` stores it in ``training_runs.gate``);
:func:`decide` is the rule (``ml.stages.promotion.decide_promotion`` delegates to it), with ``promotion_gate``:

``strict`` (default) — a candidate is promoted over a champion only when
  1. its ``promotion_metric`` beats the champion's by more than the margin (as before), and
  2. the win is statistically real: ``ml.evaluation.stats.paired_comparison`` on the held-out set says
     ``better`` at ``promotion_confidence`` (McNemar mid-p < 1 - confidence), and
  3. no slice (:data:`SLICES`) regresses beyond ``gate_slice_tolerance``: a slice regresses when its
     accuracy drops by more than the tolerance AND the paired test on the slice says ``worse`` (a
     100-tweet slice moves by 2 points on one or two tweets: noise is not a regression), and
  4. at most ``gate_max_golden_flips`` golden texts go from right to wrong, counting those the
     champion got right with probability >= ``gate_golden_min_confidence`` for the right label
     (a champion at 0.55 did not know the answer; losing that coin flip is listed, not counted).
``margin`` — the pre-gate rule: the metric beats the champion's by more than the margin; the
  evidence is still computed and stored, nothing else is enforced (tests/system/api ``publish()`` uses it
  to make every version serve).

The first model (no champion) is promoted as before when its behavioural checks pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import numpy as np
import yaml

from ml.evaluation import behaviour
from ml.evaluation.stats import paired_comparison
from ml.models.base import Scorer
from ml.models.base import decide as decide_label
from ml.platform.config import REPO_ROOT, Settings, get_settings

#: how many texts each flip list keeps (counts are always complete)
FLIP_LIST_CAP = 20

_MENTION = re.compile(r"@\w+")
_URL = re.compile(r"(https?://|www\.)\S+", re.IGNORECASE)
_NEGATION = re.compile(
    r"\b(not|no|never|nothing|nobody|none|nowhere|neither|nor|cannot|without)\b|n't\b|\bcant\b"
    r"|\bdont\b|\bdoesnt\b|\bdidnt\b|\bisnt\b|\bwont\b|\bwasnt\b|\bcouldnt\b",
    re.IGNORECASE,
)
SHORT_WORDS = 10  # a tweet of fewer words is "short"

#: the slices of the held-out set the gate watches — defined here only (name -> predicate on the text)
SLICES: dict[str, Callable[[str], bool]] = {
    "short": lambda t: len(t.split()) < SHORT_WORDS,
    "long": lambda t: len(t.split()) >= SHORT_WORDS,
    "mention": lambda t: bool(_MENTION.search(t)),
    "no_mention": lambda t: not _MENTION.search(t),
    "url": lambda t: bool(_URL.search(t)),
    "no_url": lambda t: not _URL.search(t),
    "negation": lambda t: bool(_NEGATION.search(t)),
    "no_negation": lambda t: not _NEGATION.search(t),
}

MODES = ("strict", "margin")


class GatePolicy(TypedDict):
    """The rule's settings, as :func:`decide` takes them (``ml.stages.promotion.gate_policy``)."""

    mode: str
    slice_tolerance: float
    max_golden_flips: int


class RecordedPolicy(GatePolicy):
    """The policy a gate record keeps: the rule's settings plus the metric, margin and confidence."""

    metric: str
    margin: float
    confidence: float


class GateDecision(TypedDict):
    """A gate record's ``decision``: the outcome, per criterion, and the policy in force."""

    promoted: bool
    passed_gate: NotRequired[bool]  # with held_for_shadow: passed, held for a shadow window
    held_for_shadow: NotRequired[bool]
    reason: str
    checks: dict[str, Any]
    external_veto: str | None
    champion_version: int | None
    policy: RecordedPolicy


class GateRecord(TypedDict, total=False):
    """What ``training_runs.gate`` holds (JSON): the evidence of :func:`compare` and, once decided,
    the decision (``ml.stages.promotion.gate_record``) and a shadow window's results."""

    champion_version: int | None
    confidence: float
    golden: dict[str, Any]
    slice_accuracy: dict[str, Any]
    held_out: dict[str, Any]
    decision: GateDecision
    shadow: dict[str, Any]
    reported_eval: Any


def slice_masks(texts: Sequence[str]) -> dict[str, np.ndarray]:
    return {name: np.fromiter((bool(f(t)) for t in texts), dtype=bool, count=len(texts)) for name, f in SLICES.items()}


# ---------------------------------------------------------------- the golden set
def _golden_file(path: str | Path | None) -> Path:
    p = Path(path) if path else REPO_ROOT / "config" / "golden.yaml"
    return p if p.is_absolute() else REPO_ROOT / p


@lru_cache(maxsize=8)
def _load_golden(path: str, mtime: float) -> tuple[tuple[str, int], ...]:
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    rows: list[tuple[str, int]] = []
    for i, item in enumerate(doc.get("tweets") or []):
        text, label = str(item.get("text", "")).strip(), item.get("label")
        if not text or label not in (0, 1):
            raise ValueError(f"{path}: tweets[{i}] needs a non-empty text and a label 0 or 1, got {item!r}")
        rows.append((text, int(label)))
    if doc.get("include_behaviour_cases", True):
        rows += list(behaviour.MINIMUM_FUNCTIONALITY) + list(behaviour.NEGATION)
    seen: dict[str, int] = {}
    for text, label in rows:
        if seen.setdefault(text, label) != label:
            raise ValueError(f"{path}: golden text {text!r} has two labels")
    if not seen:
        raise ValueError(f"{path}: the golden set is empty")
    return tuple(seen.items())


def golden_set(settings: Settings | None = None) -> tuple[tuple[str, int], ...]:
    """(text, label) of the golden regression set: ``golden_path`` + the labelled behavioural cases.
    A missing or malformed file is an error, never an empty set."""
    s = settings or get_settings()
    p = _golden_file(s.golden_path)
    if not p.exists():
        raise FileNotFoundError(f"golden_path {p} does not exist (the promotion gate's golden regression set)")
    return _load_golden(str(p), p.stat().st_mtime)


# ---------------------------------------------------------------- evidence
def _labels(proba: np.ndarray) -> np.ndarray:
    return np.asarray(decide_label(np.asarray(proba)[:, 1])).astype(int)


def _flip_rows(
    idx: np.ndarray, texts: Sequence[str], y: np.ndarray, p_cand: np.ndarray | None, p_champ: np.ndarray | None
) -> list[dict[str, Any]]:
    out = []
    for i in idx[:FLIP_LIST_CAP]:
        row: dict[str, Any] = {"text": texts[i], "label": int(y[i])}
        if p_champ is not None:
            row["champion_p_positive"] = round(float(p_champ[i]), 4)
        if p_cand is not None:
            row["challenger_p_positive"] = round(float(p_cand[i]), 4)
        out.append(row)
    return out


def held_out_evidence(
    y: Sequence[int], texts: Sequence[str], cand_proba: np.ndarray, champ_proba: np.ndarray, confidence: float
) -> dict[str, Any]:
    """Paired comparison on the held-out set, per slice, and which texts changed label."""
    y_arr = np.asarray(y).astype(int)
    a, b = _labels(cand_proba), _labels(champ_proba)
    pa, pb = np.asarray(cand_proba)[:, 1], np.asarray(champ_proba)[:, 1]
    overall = paired_comparison(y_arr, a, b, confidence)
    slices: dict[str, Any] = {}
    for name, m in slice_masks(texts).items():
        n = int(m.sum())
        if n == 0:
            slices[name] = {"n": 0}
            continue
        pc = paired_comparison(y_arr[m], a[m], b[m], confidence)
        slices[name] = {
            "n": n,
            "challenger_accuracy": pc["accuracy_a"],
            "champion_accuracy": pc["accuracy_b"],
            "difference": pc["difference"],
            "p_value": pc["p_value"],
            "verdict": pc["verdict"],
        }
    ra, rb = a == y_arr, b == y_arr
    r2w, w2r = np.flatnonzero(rb & ~ra), np.flatnonzero(~rb & ra)
    return {
        **overall,
        "slices": slices,
        "flips": {
            "changed_label": int(np.sum(a != b)),
            "right_to_wrong": int(len(r2w)),
            "wrong_to_right": int(len(w2r)),
            "right_to_wrong_texts": _flip_rows(r2w, texts, y_arr, pa, pb),
            "wrong_to_right_texts": _flip_rows(w2r, texts, y_arr, pa, pb),
            "cap": FLIP_LIST_CAP,
        },
    }


def golden_evidence(
    golden: Sequence[tuple[str, int]], cand_proba: np.ndarray, champ_proba: np.ndarray | None, min_confidence: float
) -> dict[str, Any]:
    """The golden set: accuracy of both, and the texts that went right -> wrong (``counted`` when the
    champion's probability of the right label was >= ``min_confidence``) and wrong -> right."""
    texts = [t for t, _ in golden]
    y = np.array([lab for _, lab in golden], dtype=int)
    a = _labels(cand_proba)
    pa = np.asarray(cand_proba)[:, 1]
    out: dict[str, Any] = {"n": len(y), "challenger_accuracy": float(np.mean(a == y))}
    wrong = np.flatnonzero(a != y)
    if champ_proba is None:
        out["challenger_wrong_texts"] = _flip_rows(wrong, texts, y, pa, None)
        return out
    b = _labels(champ_proba)
    pb = np.asarray(champ_proba)[:, 1]
    ra, rb = a == y, b == y
    p_right = np.where(y == 1, pb, 1.0 - pb)  # the champion's probability of the right label
    r2w = np.flatnonzero(rb & ~ra)
    counted = r2w[p_right[r2w] >= min_confidence]
    uncertain = r2w[p_right[r2w] < min_confidence]
    w2r = np.flatnonzero(~rb & ra)
    out.update(
        {
            "champion_accuracy": float(np.mean(rb)),
            "changed_label": int(np.sum(a != b)),
            "right_to_wrong": int(len(counted)),
            "right_to_wrong_uncertain": int(len(uncertain)),
            "wrong_to_right": int(len(w2r)),
            "min_confidence": min_confidence,
            "right_to_wrong_texts": _flip_rows(counted, texts, y, pa, pb),
            "right_to_wrong_uncertain_texts": _flip_rows(uncertain, texts, y, pa, pb),
            "wrong_to_right_texts": _flip_rows(w2r, texts, y, pa, pb),
            "cap": FLIP_LIST_CAP,
        }
    )
    return out


def compare(
    y: Sequence[int],
    texts: Sequence[str],
    cand_proba: np.ndarray,
    champ_proba: np.ndarray | None,
    golden: Sequence[tuple[str, int]],
    cand_golden_proba: np.ndarray,
    champ_golden_proba: np.ndarray | None,
    *,
    confidence: float,
    golden_min_confidence: float,
    champion_version: int | None = None,
) -> dict[str, Any]:
    """The gate's evidence for one candidate (``training_runs.gate``): held-out (a) and golden (c)."""
    ev: dict[str, Any] = {
        "champion_version": champion_version,
        "confidence": confidence,
        "golden": golden_evidence(golden, cand_golden_proba, champ_golden_proba, golden_min_confidence),
    }
    ev["slice_accuracy"] = slice_accuracy(y, texts, cand_proba)
    if champ_proba is not None:
        ev["held_out"] = held_out_evidence(y, texts, cand_proba, champ_proba, confidence)
    return ev


def slice_accuracy(y: Sequence[int], texts: Sequence[str], proba: np.ndarray) -> dict[str, Any]:
    """The candidate's own held-out accuracy per slice (:data:`SLICES`), with or without a champion to
    compare with: what the model card shows as the slices where the model is weak."""
    y_arr = np.asarray(y).astype(int)
    right = _labels(proba) == y_arr
    out: dict[str, Any] = {}
    for name, m in slice_masks(texts).items():
        n = int(m.sum())
        out[name] = {"n": n, "accuracy": float(right[m].mean()) if n else None}
    return out


def compare_models(
    candidate: Scorer,
    champion: Scorer,
    y: Sequence[int],
    texts: Sequence[str],
    settings: Settings | None = None,
    *,
    cand_proba: np.ndarray | None = None,
    champ_proba: np.ndarray | None = None,
    champion_version: int | None = None,
) -> dict[str, Any]:
    """:func:`compare` on two models (anything with ``predict_proba``); given probabilities are reused."""
    s = settings or get_settings()
    golden = golden_set(s)
    gtexts = [t for t, _ in golden]
    if cand_proba is None:
        cand_proba = np.asarray(candidate.predict_proba(list(texts)))
    if champion is not None and champ_proba is None:
        champ_proba = np.asarray(champion.predict_proba(list(texts)))
    return compare(
        y,
        texts,
        cand_proba,
        champ_proba if champion is not None else None,
        golden,
        np.asarray(candidate.predict_proba(gtexts)),
        np.asarray(champion.predict_proba(gtexts)) if champion is not None else None,
        confidence=s.promotion_confidence,
        golden_min_confidence=s.gate_golden_min_confidence,
        champion_version=champion_version,
    )


# ---------------------------------------------------------------- the rule
def decide(
    candidate: dict[str, Any],
    champion_metrics: dict[str, Any],
    evidence: Mapping[str, Any] | None,
    *,
    metric: str,
    margin: float,
    mode: str = "strict",
    slice_tolerance: float = 0.02,
    max_golden_flips: int = 0,
) -> tuple[bool, str, dict[str, Any]]:
    """The rule against an existing champion: (promote, reason, per-criterion outcome)."""
    if mode not in MODES:
        raise ValueError(f"promotion_gate must be one of {MODES}, got {mode!r}")
    c, ch = candidate[metric], champion_metrics[metric]
    beats = c > ch + margin
    checks: dict[str, Any] = {
        "margin": {"passed": beats, "candidate": c, "champion": ch, "margin": margin, "metric": metric}
    }
    margin_text = (
        f"{metric} {c:.4f} beats champion {ch:.4f} by more than {margin:.4f}"
        if beats
        else f"{metric} {c:.4f} does not beat champion {ch:.4f} by more than {margin:.4f}"
    )
    if mode == "margin":
        return (
            beats,
            margin_text + " (promotion_gate: margin — paired test, slices and golden set not enforced)",
            checks,
        )
    held = (evidence or {}).get("held_out")
    if held is None:
        return (
            False,
            (f"{margin_text}; no paired evidence against the champion (evaluate the candidate again): not promoted"),
            checks,
        )
    problems: list[str] = [] if beats else [margin_text]
    conf = held["confidence"]
    significant = held["verdict"] == "better"
    checks["significance"] = {
        "passed": significant,
        "difference": held["difference"],
        "p_value": held["p_value"],
        "interval": held["interval"],
        "confidence": conf,
        "n": held["n"],
    }
    paired = (
        f"paired held-out difference {held['difference']:+.4f} ({conf:.0%} CI "
        f"[{held['interval'][0]:+.4f}, {held['interval'][1]:+.4f}]), McNemar mid-p {held['p_value']:.3g}, "
        f"n={held['n']:,}"
    )
    if not significant:
        problems.append(f"not a significant win: {paired} (needs p < {1 - conf:.2g} and a positive difference)")
    regressed = {
        name: v
        for name, v in held.get("slices", {}).items()
        if v.get("n") and v["difference"] < -slice_tolerance and v["verdict"] == "worse"
    }
    checks["slices"] = {"passed": not regressed, "tolerance": slice_tolerance, "regressed": sorted(regressed)}
    if regressed:
        problems.append(
            "slice regression beyond "
            + f"{slice_tolerance:.3f}: "
            + ", ".join(
                f"{name} {v['champion_accuracy']:.4f} -> {v['challenger_accuracy']:.4f} ({v['difference']:+.4f}, "
                f"p={v['p_value']:.3g}, n={v['n']})"
                for name, v in sorted(regressed.items())
            )
        )
    golden = (evidence or {}).get("golden") or {}
    flips = int(golden.get("right_to_wrong", 0))
    checks["golden"] = {
        "passed": flips <= max_golden_flips,
        "right_to_wrong": flips,
        "max": max_golden_flips,
        "right_to_wrong_uncertain": golden.get("right_to_wrong_uncertain", 0),
    }
    if flips > max_golden_flips:
        examples = "; ".join(f"'{r['text']}'" for r in golden.get("right_to_wrong_texts", [])[:3])
        problems.append(f"{flips} golden text(s) flipped from right to wrong (max {max_golden_flips}): {examples}")
    if problems:
        return False, "; ".join(problems), checks
    return (
        True,
        (
            f"{margin_text}; {paired}: better; no slice regresses beyond {slice_tolerance:.3f}; "
            f"{flips} golden right-to-wrong flips (max {max_golden_flips})"
        ),
        checks,
    )
