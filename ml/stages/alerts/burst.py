"""The feedback rules, counted in PostgreSQL under a lock per (rule, model): ``misclassification_burst``
(:func:`evaluate_feedback`, one alert per burst) and the burst guard ``feedback_burst``
(:func:`evaluate_burst`: an identity's burst quarantines its reports; a burst from many identities
at once pauses retraining)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import psycopg

from ml.platform import db
from ml.platform.config import Settings, get_settings
from ml.stages.alerts import events
from ml.stages.alerts.channels import dispatch_alert
from ml.stages.review import redact
from ml.store import alerts as store

log = logging.getLogger(__package__)  # the stage's logger ``ml.stages.alerts``, named in the log channel


RULE_BURST = "misclassification_burst"
RULE_FEEDBACK_BURST = "feedback_burst"


def evaluate_feedback(
    feedback_id: int, settings: Settings | None = None, dispatch: bool = True, conn: psycopg.Connection | None = None
) -> dict[str, Any]:
    """Apply the burst rule after feedback ``feedback_id`` was stored (and committed).

    Returns ``{"misclassification", "raised", "alert_id", "n_reports", "threshold"}``. When an alert
    is raised it is logged now and, with ``dispatch``, sent to the webhook / e-mail in the
    background."""
    s = settings or get_settings()
    out: dict[str, Any] = {"feedback_id": feedback_id, "misclassification": False, "raised": False, "alert_id": None}
    # ``conn``: a connection the caller keeps (the API's alert thread), one transaction per call
    with (
        conn.transaction()
        if conn is not None
        else db.connect(s, start_embedded=False, connect_timeout=5, application_name="sentiment-alerts")
    ) as opened:
        # with ``conn`` the context is its transaction; without, the new connection itself
        c = conn if conn is not None else cast(psycopg.Connection, opened)
        row = store.feedback_verdict(c, feedback_id)
        if row is None or not row[1]:
            return out  # unknown, or a confirmation (the prediction was right)
        model_name = row[0]
        out["misclassification"] = True
        alert = _evaluate_locked(c, model_name, feedback_id, s)
        out.update(alert)
        out["feedback_burst"] = burst = evaluate_burst(c, model_name, s)  # the burst guard (pauses retraining)
    if out["raised"]:
        log.warning("ALERT %s #%s: %s", RULE_BURST, out["alert_id"], out["message"])
        if dispatch:
            dispatch_alert(out["alert_id"], s)
    if burst["raised"] and dispatch:
        dispatch_alert(burst["alert_id"], s)
    return out


def _evaluate_locked(conn: psycopg.Connection, model_name: str, feedback_id: int, settings: Settings) -> dict[str, Any]:
    """One transaction: lock (rule, model), count the window, open / extend / resolve the alert."""
    threshold, window = int(settings.alert_misclassification_count), float(settings.alert_window_seconds)
    now = store.lock(conn, RULE_BURST, model_name)
    start = now - timedelta(seconds=window)
    n, ids, first, last = store.wrong_reports_between(conn, model_name, start, now)
    res: dict[str, Any] = {
        "n_reports": n,
        "threshold": threshold,
        "window_seconds": window,
        "raised": False,
        "alert_id": None,
        "model_name": model_name,
    }
    open_alert = store.open_alert(conn, RULE_BURST, model_name)
    if open_alert is not None and (
        n < threshold or open_alert["last_report_at"] is None or open_alert["last_report_at"] <= start
    ):
        # the burst is over: its window holds fewer than `threshold` reports, or nothing new came in a window
        last_at = open_alert["last_report_at"]
        store.resolve(conn, open_alert["id"], min(now, last_at + timedelta(seconds=window)) if last_at else now)
        open_alert = None
    if n < threshold:
        return res
    if first is None or last is None:  # n >= threshold reports in the window: both are set
        raise RuntimeError(f"{RULE_BURST} ({model_name}): {n} reports in the window but no first / last report time")
    if open_alert is not None:  # the same burst: record the report on the open alert, recount the burst
        store.add_later_report(conn, open_alert["id"], feedback_id)
        # a report stored late (moved from pending_feedback, its own time kept) may predate the alert's start
        burst_first = min(open_alert["first_report_at"] or first, first)
        n_burst, _, _, burst_last = store.wrong_reports_between(conn, model_name, burst_first, now, include_start=True)
        burst_last = max(burst_last or last, last)
        store.update_count(
            conn,
            open_alert["id"],
            n_burst,
            burst_last,
            burst_message(n_burst, model_name, burst_first, burst_last, threshold, window),
            first_report_at=burst_first,
        )
        res.update(alert_id=open_alert["id"], n_burst=n_burst)
        return res
    message = burst_message(n, model_name, first, last, threshold, window)
    details = {"feedback_ids": ids, "first_report_at": first.isoformat(), "last_report_at": last.isoformat()}
    alert_id = events.open_alert(
        conn,
        RULE_BURST,
        model_name,
        severity="error",
        window_seconds=int(window),
        threshold=threshold,
        n_reports=n,
        feedback_ids=ids,
        first_report_at=first,
        last_report_at=last,
        message=message,
        details=details,
    )
    if alert_id is None:  # cannot happen under the lock; the unique index is the second guard
        return res
    res.update(raised=True, alert_id=alert_id, message=message, feedback_ids=ids)
    return res


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def burst_message(n: int, model_name: str, first: datetime, last: datetime, threshold: int, window: float) -> str:
    """The burst alert's text: how many reports, over what period (rewritten on every report of the
    burst, so that it always says the whole burst), and the rule that raised it."""
    a, b = first.astimezone(UTC), last.astimezone(UTC)
    return (
        f"{n:,} predictions of {model_name} reported wrong in {_duration((b - a).total_seconds())} "
        f"({a:%Y-%m-%d %H:%M:%S} -> {b:%Y-%m-%d %H:%M:%S} UTC); "
        f"alert rule: {threshold} reports within {window:g} s"
    )


# ---------------------------------------------------------------- the burst guard (feedback_burst)
def _sha(identity: str) -> str:
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _Window:
    """The burst guard's window (``feedback_burst_window_seconds`` up to ``now``): each reporter's
    wrong-reports, the identities bursting alone, and the rate rule over the others."""

    now: datetime
    counts: list[tuple[str, int, datetime, datetime]]  # (reporter, wrong-reports, first, last), most first
    loud: list[tuple[str, int]]  # the identities at ``feedback_burst_identity_count`` or more
    total: int  # the others' wrong-reports (the rate rule's count)
    normal: float  # the normal rate, per window
    rate_burst: bool

    @property
    def loud_names(self) -> set[str]:
        return {who for who, _ in self.loud}

    @property
    def bursting(self) -> bool:
        return bool(self.loud) or self.rate_burst


def _count_window(conn: psycopg.Connection, model_name: str, now: datetime, settings: Settings) -> _Window:
    """Who reported how much in the window, who bursts alone, and whether the others make a rate burst."""
    window = float(settings.feedback_burst_window_seconds)
    start = now - timedelta(seconds=window)
    counts = store.wrong_reports_by_reporter(conn, model_name, start, now)
    loud = [(who, n) for who, n, _, _ in counts if n >= settings.feedback_burst_identity_count]
    loud_names = {who for who, _ in loud}
    crowd = [c for c in counts if c[0] not in loud_names]  # the rate rule: identities not bursting alone
    total = sum(n for _, n, _, _ in crowd)
    base_start = now - timedelta(hours=float(settings.feedback_burst_baseline_hours))
    base_total = (
        store.wrong_report_total(conn, model_name, base_start, start)
        if total >= settings.feedback_burst_rate_min
        else 0
    )  # below the minimum: no rate burst anyway
    normal = base_total * window / max(1.0, (start - base_start).total_seconds())  # per window
    rate_limit = max(float(settings.feedback_burst_rate_min), float(settings.feedback_burst_rate_factor) * normal)
    rate_burst = total >= rate_limit and len(crowd) >= int(settings.feedback_min_identities)
    return _Window(now, counts, loud, total, normal, rate_burst)


def _pausing(details: dict[str, Any], now: datetime, quiet: float) -> bool:
    """Whether the alert pauses retraining: a rate burst within the last ``quiet`` seconds."""
    rate_last = details.get("rate_last_at")
    return bool(rate_last) and datetime.fromisoformat(str(rate_last)) + timedelta(seconds=quiet) > now


def _calm(
    conn: psycopg.Connection, open_alert: dict[str, Any], now: datetime, quiet: float, res: dict[str, Any]
) -> None:
    """No burst in the window, an alert open: resolve it once ``quiet`` seconds passed since its last
    report, else say it is still open (and whether it still pauses retraining)."""
    last_at = open_alert["last_report_at"]
    if last_at is None or last_at + timedelta(seconds=quiet) <= now:  # quiet long enough: it is over
        store.resolve(
            conn,
            open_alert["id"],
            (last_at + timedelta(seconds=quiet)) if last_at else now,
            {"resolved": f"no burst for {quiet:g} s"},
        )
        res["resolved"] = open_alert["id"]
        return
    res.update(
        open=True,
        pauses=_pausing(open_alert["details"], now, quiet),
        alert_id=open_alert["id"],
        message=open_alert["details"].get("message"),
    )


def _burst_counts(
    conn: psycopg.Connection,
    model_name: str,
    w: _Window,
    open_alert: dict[str, Any] | None,
    hashes: set[str],
    rated: bool,
) -> list[tuple[str, int, datetime, datetime]]:
    """The burst's wrong-reports per reporter since it began: everyone's once a rate burst was seen, else
    the named identities'."""
    window_first = min(
        f for _, _, f, _ in (w.counts if w.rate_burst else [c for c in w.counts if c[0] in w.loud_names])
    )
    # the burst began at the alert's first report, or earlier: a report stored late (moved from
    # pending_feedback once its prediction was written, its own time kept) may predate it
    first_at = (
        min(open_alert["first_report_at"], window_first)
        if open_alert and open_alert["first_report_at"]
        else window_first
    )
    burst_counts = store.wrong_reports_by_reporter(conn, model_name, first_at, w.now, include_start=True)
    if not rated:  # the named identities' reports since the burst began
        burst_counts = [c for c in burst_counts if _sha(c[0]) in hashes]
    return burst_counts


def _rules_text(hashes: set[str], rated: bool, normal: float, settings: Settings) -> str:
    """The rules the burst crossed, as the alert's text names them."""
    window, min_ids = float(settings.feedback_burst_window_seconds), int(settings.feedback_min_identities)
    rules = []
    if hashes:
        rules.append(f"{settings.feedback_burst_identity_count} wrong-reports from one identity within {window:g} s")
    if rated:
        rules.append(
            f"wrong-reports from >= {min_ids} identities at {settings.feedback_burst_rate_factor:g}x the normal rate "
            f"({normal:.1f} per {window:g} s) and >= {settings.feedback_burst_rate_min}"
        )
    return "; ".join(rules)


def _effects_text(hashes: set[str], named: list[str], pauses: bool, quiet: float) -> str:
    """What the burst does: the quarantine of the named identities' reports, and whether retraining pauses."""
    effects = []
    if hashes:
        effects.append(
            f"reports of {', '.join(named[:5]) or 'the bursting identity'}"
            f"{f' and {len(named) - 5} more' if len(named) > 5 else ''} are quarantined (no agreement, not "
            "counted toward retraining) until a reviewer accepts them"
        )
    effects.append(
        f"retraining is paused until {quiet:g} s pass without a rate burst"
        if pauses
        else "retraining is not paused (one identity cannot pause it; only a rate burst from several does)"
    )
    return "; ".join(effects)


def _record_burst(
    conn: psycopg.Connection,
    model_name: str,
    open_alert: dict[str, Any] | None,
    n: int,
    first: datetime,
    last: datetime,
    message: str,
    details: dict[str, Any],
    pauses: bool,
    settings: Settings,
    res: dict[str, Any],
) -> dict[str, Any]:
    """Rewrite the open alert's count, period and text, or open the alert (and log it)."""
    if open_alert is not None:
        store.update_count(conn, open_alert["id"], n, last, message, details, first_report_at=first)
        res.update(open=True, pauses=pauses, alert_id=open_alert["id"], message=message, n_reports=n)
        return res
    alert_id = events.open_alert(
        conn,
        RULE_FEEDBACK_BURST,
        model_name,
        severity="error",
        window_seconds=int(float(settings.feedback_burst_window_seconds)),
        threshold=int(settings.feedback_burst_identity_count),
        n_reports=n,
        first_report_at=first,
        last_report_at=last,
        message=message,
        details=details,
    )
    if alert_id is None:  # the unique index: another process raised it a moment ago
        return res
    log.warning("ALERT %s #%s: %s", RULE_FEEDBACK_BURST, alert_id, message)
    res.update(open=True, pauses=pauses, raised=True, alert_id=alert_id, message=message, n_reports=n)
    return res


def evaluate_burst(conn: psycopg.Connection, model_name: str, settings: Settings) -> dict[str, Any]:
    """Rule ``feedback_burst`` (the burst guard), in the caller's transaction. Counts are of distinct
    predictions reported wrong (one report per prediction and reporter), reviewers' decisions left out.
    Two kinds of burst, one open alert per model for both:

    - **identity**: ``feedback_burst_identity_count`` predictions reported wrong by ONE identity within
      ``feedback_burst_window_seconds``. The alert names it and **quarantines** its reports (its sha256
      in ``details.identity_sha256``: from the burst's first report until the alert resolves they make
      no agreement and count nothing toward retraining until a reviewer accepts the text:
      ``ml.stages.review``). It does **not** pause retraining: one identity must not be able to hold
      the loop for everyone.
    - **rate**: the wrong-reports in a window of the identities that are not bursting themselves, from at
      least ``feedback_min_identities`` distinct identities, at ``feedback_burst_rate_factor`` x the
      normal rate (the last ``feedback_burst_baseline_hours``) and at least ``feedback_burst_rate_min``.
      This pauses the retraining trigger (``paused_burst``) until ``feedback_burst_quiet_seconds``
      pass without a rate burst (``details.rate_last_at``): only many identities at once can pause it.

    The alert is raised at the first crossing, its count, period and identities rewritten on every
    report of the burst; resolved once ``feedback_burst_quiet_seconds`` pass without a burst of either
    kind. ``check_trigger`` calls this too, so a burst the alert thread has not seen yet counts as well.
    Identities are named redacted (``ml.stages.review.redact``); the alert keeps only their sha256.
    Returns ``{"open", "pauses", "raised", "alert_id", "message", ...}``."""
    quiet = float(settings.feedback_burst_quiet_seconds)
    now = store.lock(conn, RULE_FEEDBACK_BURST, model_name)
    w = _count_window(conn, model_name, now, settings)
    res: dict[str, Any] = {
        "open": False,
        "pauses": False,
        "raised": False,
        "alert_id": None,
        "message": None,
        "model_name": model_name,
        "window_reports": w.total,
        "normal_per_window": round(w.normal, 2),
    }
    open_alert = store.open_alert(conn, RULE_FEEDBACK_BURST, model_name)
    if not w.bursting:
        if open_alert is not None:
            _calm(conn, open_alert, now, quiet, res)
        return res
    details = dict(open_alert["details"]) if open_alert else {}
    hashes = set(details.get("identity_sha256", [])) | {_sha(who) for who, _ in w.loud}
    if w.rate_burst:
        details["rate_last_at"] = now.astimezone(UTC).isoformat()
    rated = bool(details.get("rate_last_at"))
    kind = "identity+rate" if hashes and rated else "identity" if hashes else "rate"
    burst_counts = _burst_counts(conn, model_name, w, open_alert, hashes, rated)
    n = sum(c[1] for c in burst_counts)
    first = min(c[2] for c in burst_counts)
    last = max(c[3] for c in burst_counts)
    who = [(redact(c[0]), c[1]) for c in burst_counts[:5]]
    more = len(burst_counts) - len(who)
    whom = ", ".join(f"{r} ({k:,})" for r, k in who) + (f" and {more} more" if more > 0 else "")
    named = sorted(redact(c[0]) for c in burst_counts if _sha(c[0]) in hashes)
    pauses = _pausing(details, now, quiet)
    a, b = first.astimezone(UTC), last.astimezone(UTC)
    message = (
        f"{n:,} predictions reported wrong on {model_name} by {whom} in "
        f"{_duration((b - a).total_seconds())} ({a:%Y-%m-%d %H:%M:%S} -> {b:%Y-%m-%d %H:%M:%S} UTC); "
        f"burst rule: {_rules_text(hashes, rated, w.normal, settings)}. "
        + _effects_text(hashes, named, pauses, quiet)
        + "."
    )
    details.update(
        kind=kind,
        identities=[r for r, _ in who],
        identity_sha256=sorted(hashes),
        quarantined=named,
        pauses=pauses,
        message=message,
        first_report_at=a.isoformat(),
        last_report_at=b.isoformat(),
        window_reports=w.total,
        normal_per_window=round(w.normal, 2),
        per_identity={r: k for r, k in who},
    )
    return _record_burst(conn, model_name, open_alert, n, first, last, message, details, pauses, settings, res)
