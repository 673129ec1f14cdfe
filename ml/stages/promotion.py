"""Promotion, in one place: the rule (:func:`decide_promotion`), the gate's policy and record (built once,
:func:`gate_policy` / :func:`gate_record`), and the entry points that change the champion:

- :func:`promote`: the champion/challenger gate of a trained, evaluated and registered candidate (training,
  the comparison, ``POST /admin/promote``); :func:`promote_candidate` is the step both training DAGs end
  with (``plugins/sentiment_promotion.py``), :func:`promote_challenger` a retraining's (the retraining's
  margin, the outcome recorded on it, a shadow window when one is configured);
- :func:`confirm`: completes a promotion held for a shadow window, and :func:`decide_shadow` closes that
  window (``ml.stages.shadow`` holds the window itself: start, state, assessment);
- :func:`rollback`: the previous champion back (``ml promote --rollback``, ``POST /admin/rollback``).

The atomic move of the alias with its event under the promotion lock stays infrastructure:
``ml.platform.registry.move_champion`` / ``ml.platform.registry.rollback``, which every entry point here calls.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypedDict, TypeVar, cast

from ml.evaluation import external
from ml.evaluation import gate as gate_mod
from ml.evaluation.gate import GateDecision, GatePolicy, GateRecord, RecordedPolicy
from ml.platform import db, registry, tracking
from ml.platform.config import Settings, get_settings
from ml.stages import progressive, shadow
from ml.stages.train import check_behaviour, describe_version
from ml.store import predictions as predictions_store
from ml.store import retrainings as retrainings_store
from ml.store import shadow as shadow_store
from ml.store import training_runs as store

log = logging.getLogger(__name__)

P = ParamSpec("P")


class PromotionResult(TypedDict):
    """Every promotion's outcome (:func:`confirm`; :func:`promote` when the version already serves)."""

    promoted: bool
    version: int
    reason: str


class GateResult(PromotionResult, total=False):
    """:func:`promote`'s outcome: the gate's record and, when held for a shadow window, ``passed_gate``,
    ``held`` and the champion it runs beside."""

    behaviour_passed: bool | None
    gate: GateRecord
    passed_gate: bool
    held: bool
    champion_version: int


class CandidateResult(GateResult, total=False):
    """What the DAGs' ``promote`` task returns (:func:`promote_candidate`, XCom): :func:`promote`'s outcome,
    for a retraining's challenger or a progressive winner with its status (``promoted``, ``rejected``,
    ``shadow``), shadow window and margin."""

    retraining_id: int
    status: str
    shadow_id: int
    champion_after: int | None
    margin: float


R = TypeVar("R", bound=PromotionResult)


@dataclass
class Decision:
    promote: bool
    reason: str
    checks: dict[str, Any] = field(default_factory=dict)


def decide_promotion(
    candidate: dict[str, float],
    champion_metrics: dict[str, float] | None,
    *,
    metric: str,
    margin: float,
    checks_passed: bool = True,
    checks_reason: str = "",
    gate: Mapping[str, Any] | None = None,
    policy: GatePolicy | None = None,
) -> Decision:
    """THE promotion rule. A candidate that failed its behavioural checks is never promoted; the first
    model (no champion) is. Against a champion: without ``policy``, its ``metric`` on the same held-out
    set must beat the champion's by more than ``margin``; with ``policy`` (:func:`promote` always passes the
    settings': :func:`gate_policy`) the gate of :func:`ml.evaluation.gate.decide` on the paired evidence ``gate``
    (``ml.evaluation.gate.compare``): margin AND a significant paired win AND no slice regression AND no golden
    right-to-wrong flip beyond the max. The per-criterion outcome is in ``Decision.checks``."""
    if not checks_passed:
        return Decision(False, f"failed behavioural checks: {checks_reason}")
    if metric not in candidate:
        raise ValueError(f"candidate has no metric {metric!r}")
    if champion_metrics is None:
        return Decision(True, f"first model: promoted ({metric}={candidate[metric]:.4f})")
    if policy is None:
        c, ch = candidate[metric], champion_metrics[metric]
        if c > ch + margin:
            return Decision(True, f"{metric} {c:.4f} beats champion {ch:.4f} by more than {margin:.4f}")
        return Decision(False, f"{metric} {c:.4f} does not beat champion {ch:.4f} by more than {margin:.4f}")
    promote, reason, checks = gate_mod.decide(candidate, champion_metrics, gate, metric=metric, margin=margin, **policy)
    return Decision(promote, reason, checks)


def gate_policy(settings: Settings) -> GatePolicy:
    """The promotion gate's settings, as :func:`decide_promotion` takes them."""
    return {
        "mode": settings.promotion_gate,
        "slice_tolerance": settings.gate_slice_tolerance,
        "max_golden_flips": settings.gate_max_golden_flips,
    }


def gate_record(
    evidence: GateRecord,
    decision: Decision,
    external_veto: str | None,
    champion_version: int | None,
    settings: Settings,
    held: bool = False,
) -> GateRecord:
    """What ``training_runs.gate`` records of one decision: the paired evidence, the outcome per criterion, the
    external-set veto, the champion it was judged against and the policy in force (``held``: passed the gate,
    held for a shadow window)."""
    policy: RecordedPolicy = {
        **gate_policy(settings),
        "metric": settings.promotion_metric,
        "margin": settings.promotion_margin,
        "confidence": settings.promotion_confidence,
    }
    decided: GateDecision = {
        "promoted": False if held else decision.promote,
        "reason": decision.reason,
        "checks": decision.checks,
        "external_veto": external_veto,
        "champion_version": champion_version,
        "policy": policy,
    }
    if held:
        decided["passed_gate"] = decided["held_for_shadow"] = True
    return {**evidence, "decision": decided}


def _gate_tags(result: Mapping[str, Any], settings: Settings) -> dict[str, str]:
    """The gate's verdict on a version, as tags, from what :func:`promote` / :func:`confirm` return
    (the end of a shadow window keeps the McNemar p-value the gate recorded)."""
    import mlflow

    if "gate" in result:
        verdict = (
            "passed, held for the shadow window"
            if result.get("held")
            else ("promoted" if result.get("promoted") else "rejected")
        )
        p = (result["gate"].get("held_out") or {}).get("p_value")
        p_value = f"{p:.4g}" if p is not None else "n/a (no champion to compare with)"
    else:  # confirm
        verdict = (
            "promoted after the shadow window" if result.get("promoted") else "not promoted after the shadow window"
        )
        mv = mlflow.MlflowClient().get_model_version(settings.model_name, str(result["version"]))
        p_value = (mv.tags or {}).get("mcnemar_p_value", "n/a")
    return {"gate_verdict": verdict, "gate_reason": str(result.get("reason", "")), "mcnemar_p_value": p_value}


def _records_gate_on_version(fn: Callable[P, R]) -> Callable[P, R]:
    """After a gate decision (:func:`promote`, :func:`confirm`), its verdict goes on the registered version
    (tags + description, ``ml.stages.train.describe_version``). The decision stands when MLflow refuses the
    tags: logged."""
    params = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        result = fn(*args, **kwargs)
        if result.get("reason") == "already champion":  # recorded when it became champion
            return result
        bound = params.bind(*args, **kwargs)
        s = bound.arguments.get("settings") or get_settings()
        try:
            describe_version(int(result["version"]), bound.arguments["run_id"], s, _gate_tags(result, s))
        except Exception:
            log.exception("the gate's verdict on version %s could not be recorded in MLflow", result.get("version"))
        return result

    return wrapper


@_records_gate_on_version
def promote(run_id: str, settings: Settings | None = None, hold: bool = False) -> GateResult:
    """The champion/challenger gate: behavioural checks (run now unless already run), then the
    promotion rule against the champion (:func:`decide_promotion` -> ``ml.evaluation.gate``: margin,
    significant paired win on the same held-out split, slices, golden set), then the external-set veto (a
    candidate significantly worse than the champion on ``external_eval_path``, paired test at
    ``promotion_confidence``, is not promoted); moves the champion alias if the candidate wins.
    The decision and its reason are recorded either way, with the gate's evidence and per-criterion
    outcome (the flip report) in ``training_runs.gate``.

    ``hold`` (a retraining with a shadow window, ``ml.stages.shadow``): a candidate that passes the gate against a
    champion does not move the alias; the result says ``passed_gate`` and ``held``, and the promotion is
    completed (or not) by :func:`confirm` after the shadow window."""
    s = settings or get_settings()
    tracking.configure(s)
    with db.connect(s) as conn:
        row = store.gate_inputs(conn, run_id)
    if row is None or row.metrics is None or row.version is None:
        raise ValueError(f"run {run_id} must be evaluated and registered before promotion")
    metrics, champion_metrics, version, checks = row.metrics, row.champion_metrics, row.version, row.behaviour
    evidence = cast("GateRecord", row.gate or {})  # training_runs.gate (jsonb): gate.compare's evidence
    if s.behaviour_checks and checks is None:
        checks = check_behaviour(run_id, s)
    # decide + move the alias + record under one lock per registered model, so two promoters
    # (training, retraining, a rollback) never interleave between reading and moving the alias
    with db.connect(s) as conn:
        store.lock_promotions(conn, s.model_name)
        champ = registry.champion(s)
        if champ is not None and champ.version == version:
            return {"promoted": True, "version": version, "reason": "already champion"}
        if champ is not None and (champion_metrics or {}).get("version") != champ.version:
            raise ValueError(
                f"run {run_id} was evaluated against champion "
                f"v{(champion_metrics or {}).get('version', 'none')}, but the champion is now v{champ.version}; "
                f"evaluate it again (ml evaluate {run_id})"
            )
        decision = decide_promotion(
            metrics,
            champion_metrics if champ is not None else None,
            metric=s.promotion_metric,
            margin=s.promotion_margin,
            checks_passed=bool(checks["passed"]) if s.behaviour_checks and checks else True,
            checks_reason=checks["reason"] if checks else "",
            gate=evidence,
            policy=gate_policy(s),
        )
        why_not = external.veto(metrics, champ.version) if champ is not None else None
        if why_not:  # significantly worse on the external set: vetoed (recorded also when the gate refused)
            decision = Decision(
                False, f"{decision.reason}, {'but' if decision.promote else 'and'} vetoed: {why_not}", decision.checks
            )
        held = hold and decision.promote and champ is not None
        record = gate_record(evidence, decision, why_not, champ.version if champ else None, s, held=held)
        store.set_gate(conn, run_id, record)
        if held and champ is not None:  # (held implies a champion; narrowed for the type checker)
            log.info("version %s passed the gate (%s); held for its shadow window", version, decision.reason)
            return {
                "promoted": False,
                "passed_gate": True,
                "held": True,
                "version": version,
                "champion_version": champ.version,
                "reason": decision.reason,
                "behaviour_passed": bool(checks["passed"]) if checks else None,
                "gate": record,
            }
        store.set_decision(conn, run_id, decision.promote, decision.reason)
        if decision.promote:  # event + digest (what the API checks) + alias, atomically: registry.move_champion
            digest = store.run_artifact_digest(conn, run_id) or registry.version_artifact_digest(version, s)
            registry.move_champion(
                conn, version, champ.version if champ else None, "promoted", decision.reason, digest, s
            )
        else:
            store.insert_event(
                conn, s.model_name, version, champ.version if champ else None, "rejected", decision.reason
            )
    log.info(
        "version %s %s: %s", version, "promoted to champion" if decision.promote else "not promoted", decision.reason
    )
    return {
        "promoted": decision.promote,
        "version": version,
        "reason": decision.reason,
        "behaviour_passed": bool(checks["passed"]) if checks else None,
        "gate": record,
    }


@_records_gate_on_version
def confirm(
    run_id: str, version: int, expected_champion: int, reason: str, settings: Settings | None = None
) -> PromotionResult:
    """Complete a promotion held by :func:`promote` (``hold``) once its shadow window said yes: under the
    same lock, only while the champion is still ``expected_champion``; moves the alias and records the
    ``promoted`` event with the artifact digest the API verifies. Returns ``promoted`` and the reason."""
    s = settings or get_settings()
    tracking.configure(s)
    with db.connect(s) as conn:
        store.lock_promotions(conn, s.model_name)
        champ = registry.champion(s)
        if champ is not None and champ.version == version:
            return {"promoted": True, "version": version, "reason": "already champion"}
        if champ is None or champ.version != expected_champion:
            why = (
                f"not promoted: the champion changed during the shadow window (v{expected_champion} -> "
                f"v{champ.version if champ else 'none'})"
            )
            store.set_decision(conn, run_id, False, why)
            return {"promoted": False, "version": version, "reason": why}
        store.set_decision(conn, run_id, True, reason)
        digest = store.run_artifact_digest(conn, run_id) or registry.version_artifact_digest(version, s)
        registry.move_champion(conn, version, champ.version, "promoted", reason, digest, s)
    log.info("version %s promoted to champion after its shadow window: %s", version, reason)
    return {"promoted": True, "version": version, "reason": reason}


def rollback(settings: Settings | None = None, reason: str | None = None) -> dict[str, Any]:
    """Put the previous champion back (``ml promote --rollback``, ``POST /admin/rollback``):
    ``ml.platform.registry.rollback`` (the history in ``model_events``, under the promotion lock, atomic
    with its ``rollback`` event)."""
    return registry.rollback(settings, reason=reason)


def _retraining(rid: int, settings: Settings) -> dict[str, Any] | None:
    with db.connect(settings) as conn:
        return retrainings_store.get(conn, rid)


def _update_retraining(rid: int, settings: Settings, **values: Any) -> None:
    with db.connect(settings) as conn:
        retrainings_store.update(conn, rid, **values)


def promote_challenger(retraining_id: Any, run_id: str, settings: Settings | None = None) -> CandidateResult:
    """A retraining's challenger through the gate (:func:`promote`: behavioural checks + the promotion rule on the
    held-out set) with ``retraining_promotion_margin``; the outcome is recorded on the retraining.

    With a shadow window (``shadow_requests`` / ``shadow_hours``, ``ml.stages.shadow``) a challenger that passes
    the gate against a champion is not promoted yet: it goes into shadow (status ``shadow``, ``shadow_id``
    in the result) and :func:`decide_shadow` promotes it or not when the window is over."""
    s = settings or get_settings()
    rid = int(retraining_id)
    margin = s.retraining_promotion_margin if s.retraining_promotion_margin is not None else s.promotion_margin
    result = promote(run_id, s.model_copy(update={"promotion_margin": margin}), hold=shadow.enabled(s))
    if result.get("held"):
        sid = shadow.start(rid, run_id, result, s)
        r = _retraining(rid, s) or {}
        record = {**(result.get("gate") or {}), "reported_eval": (r.get("gate") or {}).get("reported_eval")}
        reason = f"passed the gate ({result['reason']}); in shadow #{sid} beside v{result['champion_version']}"
        _update_retraining(rid, s, status="shadow", candidate_version=result["version"], decision=reason, gate=record)
        log.info("retraining #%s: %s", rid, reason)
        return {
            **result,
            "retraining_id": rid,
            "status": "shadow",
            "shadow_id": sid,
            "reason": reason,
            "champion_after": result["champion_version"],
            "margin": margin,
        }
    champ = registry.champion(s)
    status = "promoted" if result["promoted"] else "rejected"
    r = _retraining(rid, s) or {}
    record = {**(result.get("gate") or {}), "reported_eval": (r.get("gate") or {}).get("reported_eval")}
    _update_retraining(
        rid,
        s,
        status=status,
        champion_after=champ.version if champ else None,
        candidate_version=result["version"],
        decision=result["reason"],
        finished_at=datetime.now(UTC),
        **({"gate": record} if result.get("gate") else {}),
    )
    log.info(
        "retraining #%s %s: %s (champion now v%s)", rid, status, result["reason"], champ.version if champ else None
    )
    return {
        **result,
        "retraining_id": rid,
        "status": status,
        "champion_after": champ.version if champ else None,
        "margin": margin,
    }


def promote_candidate(
    run_id: str, retraining_id: Any = None, settings: Settings | None = None, progressive_id: Any = None
) -> GateResult:
    """The promotion step shared by both DAGs: :func:`promote`, or for a retraining's challenger
    :func:`promote_challenger` (the same gate with the retraining's margin, recorded on it), or for the
    progressive champion's background comparison :func:`promote_progressive` (those two: a
    :class:`CandidateResult`)."""
    if retraining_id not in (None, "", "None"):
        return promote_challenger(retraining_id, run_id, settings)
    if progressive_id not in (None, "", "None"):
        return promote_progressive(progressive_id, run_id, settings)
    return promote(run_id, settings)


def promote_progressive(progressive_id: Any, run_id: str, settings: Settings | None = None) -> CandidateResult:
    """The winner of ``make up``'s background comparison (``ml.platform.progressive``) as any challenger: the gate
    (:func:`promote`), and with a shadow window configured a winner that passes it goes into shadow
    (``ml.stages.shadow.start``) instead of moving the alias; the training DAG's ``shadow`` group then
    decides it (:func:`decide_shadow`). A loser stays a challenger. While the champion has answered no live
    request since it began serving (a platform nobody uses yet), a window would end empty and reject the winner:
    with ``progressive_shadow_needs_traffic`` (the default) the gate alone decides then, and says so. The outcome is
    recorded on the progressive row (what ``make status`` and the web page show)."""
    s = settings or get_settings()
    window = shadow.enabled(s)
    idle = window and not _champion_has_live_traffic(s)
    result: CandidateResult = {**promote(run_id, s, hold=window and not idle)}
    if idle and result.get("promoted"):
        reason = (
            f"{result['reason']}; no shadow window: the champion has answered no live request since it began serving"
            " (nothing to shadow), so the gate decided (progressive_shadow_needs_traffic)"
        )
        result = {**result, "reason": reason}
        log.info("progressive #%s: %s", progressive_id, reason)
    if result.get("held"):
        sid = shadow.start(None, run_id, result, s)
        reason = f"passed the gate ({result['reason']}); in shadow #{sid} beside v{result['champion_version']}"
        result = {**result, "status": "shadow", "shadow_id": sid, "reason": reason}
        log.info("progressive #%s: %s", progressive_id, reason)
    progressive.record_promotion(progressive_id, result, s)
    return result


def _champion_has_live_traffic(settings: Settings) -> bool:
    """Whether a shadow window beside the current champion would see traffic: the champion answered a live request
    since it began serving. Always True with ``progressive_shadow_needs_traffic`` off, or with no champion."""
    if not settings.progressive_shadow_needs_traffic:
        return True
    champ = registry.champion(settings)
    if champ is None:
        return True
    with db.connect(settings) as conn:
        return predictions_store.answered_live_since_serving(conn, settings.model_name, champ.version)


def decide_shadow(shadow_id: int, settings: Settings | None = None) -> dict[str, Any]:
    """Close a shadow window: promote the challenger (:func:`confirm`) or reject it on its shadow results
    (``ml.stages.shadow.assess``), and record them on the shadow, the retraining and the training run.
    Idempotent: a shadow that already ended returns its recorded outcome."""
    s = settings or get_settings()
    sid = int(shadow_id)
    with db.connect(s) as conn:
        sh = shadow_store.get(conn, sid)
        if sh is None:
            raise LookupError(f"no shadow #{sid}")
        if sh["status"] != "running":
            return {
                "shadow_id": sid,
                "status": sh["status"],
                "promoted": sh["status"] == "promoted",
                "reason": sh["decision"],
                "results": sh["results"],
                "version": sh["challenger_version"],
            }
        rows = shadow_store.predictions(conn, sid)
        gate = store.run_gate(conn, sh["run_id"]) or {}
    results = shadow.assess(rows, sh["calibration"], s)
    gate_reason = ((gate.get("decision") or {}).get("reason")) or "passed the gate"
    reason = f"{gate_reason}; {results['reason']}"
    version, champion_version = int(sh["challenger_version"]), int(sh["champion_version"])
    if results["promote"]:
        out = confirm(sh["run_id"], version, champion_version, reason, s)
        promoted, reason = out["promoted"], out["reason"]
    else:
        promoted = False
    status = "promoted" if promoted else "rejected"
    results["decision"] = {"promoted": promoted, "reason": reason}
    with db.connect(s) as conn:
        shadow_store.finish(conn, sid, status, results, reason)
        if not promoted:
            shadow_store.set_run_status(conn, sh["run_id"], "rejected", reason)
            shadow_store.insert_event(
                conn, s.model_name, version, champion_version, "rejected", f"shadow #{sid}: {reason}"
            )
        store.set_gate(conn, sh["run_id"], {**gate, "shadow": {**results, "shadow_id": sid}})
        if sh["retraining_id"] is not None:
            r = retrainings_store.get(conn, int(sh["retraining_id"])) or {}
            champ = registry.champion(s)
            retrainings_store.update(
                conn,
                int(sh["retraining_id"]),
                status=status,
                decision=reason,
                champion_after=champ.version if champ else None,
                finished_at=datetime.now(UTC),
                gate={**(r.get("gate") or {}), "shadow": {**results, "shadow_id": sid}},
            )
    log.info("shadow #%s: v%s %s: %s", sid, version, status, reason)
    return {
        "shadow_id": sid,
        "status": status,
        "promoted": promoted,
        "reason": reason,
        "results": results,
        "version": version,
        "champion_version": champion_version,
    }
