"""Shadow before promotion: a retraining's challenger that passed the promotion gate first serves in
shadow, and is promoted only if it holds up on live traffic.

1. **Start** (:func:`start`, from ``ml.stages.promotion.promote_challenger`` when ``shadow_requests`` or ``shadow_hours``
   is set): ``ml.stages.promotion.promote(hold=True)`` ran the gate without moving the alias. A ``shadows`` row
   names the challenger version, the champion it shadows and the artifact sha256 recorded at
   registration (the API verifies it before loading, as for a champion); each model's isotonic
   calibrator is fitted on its own predictions on the retraining's held-out split (``ml.evaluation.estimate``) and
   stored on the row; a ``shadow_started`` model_events row is written (not a promotion event: the API
   keeps serving the champion).
2. **Window**: the API's model manager loads the running shadow beside the champion; every /predict
   and /predict/batch answer is the champion's, and after it is built the same texts go to a bounded
   queue that a background thread scores with the challenger and writes to ``shadow_predictions`` in
   batches (a full queue drops, and counts, items: never on the request path). The retraining DAG's
   ``shadow.window`` sensor (reschedule mode: no worker slot held between pokes) completes when
   ``shadow_requests`` requests were shadowed or ``shadow_hours`` passed, whichever comes first.
3. **Decide** (``ml.stages.promotion.decide_shadow``, :func:`assess`) on the shadowed requests:
   - *agreement*: share of requests where the challenger gives the champion's label >= ``shadow_min_agreement``;
   - *estimated live accuracy* (CBPE, label-free): each model's calibrated expected correctness on its
     own live predictions; the challenger's may be at most ``shadow_max_accuracy_drop`` below the champion's;
   - *reviewed labels*: where reviewers labelled shadowed texts (``reviews``, latest decision per text),
     both models' accuracy on them (paired); with at least ``shadow_min_reviewed`` of them the challenger
     fails when its accuracy is more than ``shadow_max_accuracy_drop`` below the champion's *and* the paired
     McNemar test calls it worse at ``promotion_confidence`` (a drop of one text in 24 is noise, not a veto).
   All hold: promoted through ``ml.stages.promotion.confirm`` (same lock, a ``promoted`` event with the
   digest), only if the champion did not change meanwhile. Otherwise rejected (a ``rejected`` event). No
   request shadowed in the window: rejected (no evidence). The results are on the shadow, the retraining
   (``retrainings.gate["shadow"]``), the training run's decision and the model card.

Both bounds 0 (the default of ``ml.platform.config``; ``config/platform.yaml`` sets 500 requests / 24 h) is no
shadow: the gate's promotion happens at once, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from ml.data.splits import split_for
from ml.evaluation import estimate
from ml.evaluation.stats import paired_comparison
from ml.platform import db, registry
from ml.platform.config import Settings, get_settings
from ml.stages import train
from ml.store import shadow as store
from ml.store import training_runs as training_runs_store

log = logging.getLogger(__name__)


def enabled(settings: Settings | None = None) -> bool:
    s = settings or get_settings()
    return int(s.shadow_requests) > 0 or float(s.shadow_hours) > 0


# ---------------------------------------------------------------- start
def calibrators(run_id: str, champion_version: int, settings: Settings | None = None) -> dict[str, Any]:
    """Each model's isotonic calibrator (``ml.evaluation.estimate.fit_calibrator``) fitted on its own predictions on
    the held-out split of the challenger's snapshot (the set the gate compared them on)."""
    s = settings or get_settings()
    with db.connect(s) as conn:
        rec = training_runs_store.run_record(conn, run_id)
    if rec is None:
        raise ValueError(f"no training run {run_id}")
    _, _, test_df = split_for(rec["snapshot_hash"], s)
    texts, y = test_df["text"].tolist(), test_df["label"].to_numpy()
    out: dict[str, Any] = {}
    for name, model in (
        ("challenger", train.load_run_model(run_id)),
        ("champion", registry.load_version(int(champion_version), s)),
    ):
        p = np.asarray(model.predict_proba(texts))[:, 1]
        out[name] = estimate.fit_calibrator(p, y)
    out["fitted_on"] = f"held-out split of snapshot {rec['snapshot_hash'][:16]} ({len(texts):,} rows)"
    return out


def start(retraining_id: int | None, run_id: str, held: Mapping[str, Any], settings: Settings | None = None) -> int:
    """Put a challenger that passed the gate (``held``: ``ml.stages.promotion.promote(hold=True)``'s result) in shadow."""
    s = settings or get_settings()
    version, champion_version = int(held["version"]), int(held["champion_version"])
    cal = calibrators(run_id, champion_version, s)
    with db.connect(s) as conn:
        digest = training_runs_store.run_artifact_digest(conn, run_id)
    digest = digest or registry.version_artifact_digest(version, s)
    window = (
        (f"{s.shadow_requests} requests" if s.shadow_requests else "")
        + (" or " if s.shadow_requests and s.shadow_hours else "")
        + (f"{s.shadow_hours:g} h" if s.shadow_hours else "")
    )
    reason = f"passed the gate ({held['reason']}); in shadow beside v{champion_version} for {window}"
    with db.connect(s) as conn:
        sid = store.start(
            conn,
            model_name=s.model_name,
            retraining_id=retraining_id,
            run_id=run_id,
            challenger_version=version,
            champion_version=champion_version,
            artifact_sha256=digest,
            window_requests=int(s.shadow_requests),
            window_hours=float(s.shadow_hours),
            calibration=cal,
        )
        store.insert_event(
            conn, s.model_name, version, champion_version, "shadow_started", f"shadow #{sid}: {reason}", digest
        )
        store.set_run_status(conn, run_id, "shadow", reason)
    log.info("shadow #%s: v%s beside champion v%s for %s", sid, version, champion_version, window)
    return sid


# ---------------------------------------------------------------- window
def window(shadow_id: int, settings: Settings | None = None) -> dict[str, Any]:
    """Where the window stands: ``done`` when the shadow is no longer running, ``window_requests``
    requests were shadowed, or the time cap passed."""
    s = settings or get_settings()
    with db.connect(s) as conn:
        w = store.window_state(conn, int(shadow_id))
    if w is None:
        raise LookupError(f"no shadow #{shadow_id}")
    n, req = int(w["n"]), int(w["window_requests"])
    why = (
        "ended: " + w["status"]
        if w["status"] != "running"
        else f"{n} of {req} requests shadowed"
        if req and n >= req
        else f"{w['window_hours']:g} h passed ({n} requests shadowed)"
        if w["timed_out"]
        else None
    )
    return {
        "shadow_id": int(shadow_id),
        "done": why is not None,
        "why": why,
        "n": n,
        "window_requests": req,
        "window_hours": float(w["window_hours"]),
        "elapsed_seconds": float(w["elapsed_seconds"]),
    }


# ---------------------------------------------------------------- decide
def _acc(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(pred == y))


def assess(rows: list[dict[str, Any]], calibration: dict[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """The shadow's evidence and the per-criterion outcome (pure: rows of ``ml.store.shadow.predictions``)."""
    s = settings or get_settings()
    drop_max = float(s.shadow_max_accuracy_drop)
    out: dict[str, Any] = {
        "n": len(rows),
        "policy": {
            "min_agreement": float(s.shadow_min_agreement),
            "max_accuracy_drop": drop_max,
            "min_reviewed": int(s.shadow_min_reviewed),
        },
    }
    if not rows:
        out.update(promote=False, criteria={}, reason="no live request was shadowed in the window: no evidence")
        return out
    ch_l = np.array([r["champion_label"] for r in rows], dtype=int)
    ch_p = np.array([r["champion_p_positive"] for r in rows], dtype=float)
    cl_l = np.array([r["challenger_label"] for r in rows], dtype=int)
    cl_p = np.array([r["challenger_p_positive"] for r in rows], dtype=float)
    agreement = float(np.mean(ch_l == cl_l))
    est = {}
    for name, p, lab in (("champion", ch_p, ch_l), ("challenger", cl_p, cl_l)):
        c = estimate.expected_correct(calibration[name], p, lab)
        est[name] = {
            "estimated_accuracy": float(np.mean(c)),
            "standard_error": float(np.sqrt(np.sum(c * (1 - c)))) / len(c),
            "held_out_accuracy": calibration[name].get("held_out_accuracy"),
        }
    est_drop = est["champion"]["estimated_accuracy"] - est["challenger"]["estimated_accuracy"]
    out.update(
        agreement=agreement,
        disagreements=int(np.sum(ch_l != cl_l)),
        estimate={**est, "drop": est_drop, "method": estimate.METHOD.replace("the champion's", "each model's")},
    )
    criteria = {
        "agreement": {
            "value": agreement,
            "min": float(s.shadow_min_agreement),
            "passed": agreement >= float(s.shadow_min_agreement),
        },
        "estimated_accuracy": {"drop": est_drop, "max": drop_max, "passed": est_drop <= drop_max},
    }
    rev = [r for r in rows if r.get("reviewed_label") is not None]
    reviewed: dict[str, Any] = {"n": len(rev)}
    if rev:
        y = np.array([r["reviewed_label"] for r in rev], dtype=int)
        a = np.array([r["challenger_label"] for r in rev], dtype=int)
        b = np.array([r["champion_label"] for r in rev], dtype=int)
        reviewed.update(
            challenger_accuracy=_acc(a, y),
            champion_accuracy=_acc(b, y),
            drop=_acc(b, y) - _acc(a, y),
            vs_champion=paired_comparison(y, a, b, s.promotion_confidence),
        )
    criterion = len(rev) >= int(s.shadow_min_reviewed)
    criteria["reviewed_accuracy"] = {
        "n": len(rev),
        "min_n": int(s.shadow_min_reviewed),
        "criterion": criterion,
        **(
            {
                "drop": reviewed["drop"],
                "max": drop_max,
                "verdict": reviewed["vs_champion"]["verdict"],
                # a veto needs a drop beyond the max that is also significant (paired McNemar at
                # promotion_confidence): on a few dozen reviewed texts one text is ~4 points
                "passed": not (reviewed["drop"] > drop_max and reviewed["vs_champion"]["verdict"] == "worse"),
            }
            if criterion
            else {"passed": True, "note": f"{len(rev)} reviewed texts < shadow_min_reviewed: recorded, not a criterion"}
        ),
    }
    out.update(reviewed=reviewed, criteria=criteria)
    failed = [k for k, v in criteria.items() if not v["passed"]]
    out["promote"] = not failed
    parts = [
        f"agreement {agreement:.3f} ({'>=' if criteria['agreement']['passed'] else '<'} {s.shadow_min_agreement:g})",
        f"estimated accuracy {est['challenger']['estimated_accuracy']:.4f} vs champion "
        f"{est['champion']['estimated_accuracy']:.4f} (drop {est_drop:+.4f}, max {drop_max:g})",
    ]
    if rev:
        parts.append(
            f"reviewed labels n={len(rev)}: {reviewed['challenger_accuracy']:.3f} vs champion "
            f"{reviewed['champion_accuracy']:.3f} (drop {reviewed['drop']:+.3f}"
            + (
                f", max {drop_max:g}, paired: {reviewed['vs_champion']['verdict']}, "
                f"p {reviewed['vs_champion']['p_value']:.3g})"
                if criterion
                else f", not a criterion below {s.shadow_min_reviewed})"
            )
        )
    out["reason"] = (
        f"shadow on {len(rows)} live requests: "
        + "; ".join(parts)
        + (": held up" if not failed else f": failed {', '.join(failed)}")
    )
    return out


def summary(shadow_row: dict[str, Any] | None) -> dict[str, Any] | None:
    """The model card's shadow section of one shadow row (``ml.store.shadow.of_version`` / ``latest``)."""
    if not shadow_row:
        return None
    res = shadow_row.get("results") or {}
    est = res.get("estimate") or {}
    rev = res.get("reviewed") or {}
    return {
        "shadow_id": shadow_row["id"],
        "status": shadow_row["status"],
        "challenger_version": shadow_row["challenger_version"],
        "champion_version": shadow_row["champion_version"],
        "window_requests": shadow_row["window_requests"],
        "window_hours": shadow_row["window_hours"],
        "started_at": str(shadow_row["created_at"]),
        "finished_at": str(shadow_row.get("finished_at") or ""),
        "n": res.get("n"),
        "agreement": res.get("agreement"),
        "estimated_accuracy": {k: (est.get(k) or {}).get("estimated_accuracy") for k in ("challenger", "champion")}
        if est
        else None,
        "reviewed": {k: rev.get(k) for k in ("n", "challenger_accuracy", "champion_accuracy")} if rev else None,
        "criteria": res.get("criteria"),
        "decision": shadow_row.get("decision"),
    }
