"""Alerts: bursts of misclassification reports, and platform events (DAG failures).

Rule ``misclassification_burst`` (from the original deployment): ``alert_misclassification_count``
(3) predictions reported wrong within ``alert_window_seconds`` (300 s) raise an alert.

- **Counted in PostgreSQL**, never in memory: an API restart or several API workers see the same
  window. A *misclassification report* is a feedback row whose ``correct_label`` differs from the
  prediction's label; several reports on the same prediction count once. Reports are counted per
  registered model (``predictions.model_name``).
- **One alert per burst.** Each evaluation runs in one transaction under a transaction-level
  advisory lock per (rule, model), so evaluations are serialised across processes. While the
  window holds at least ``count`` reports the burst goes on: later reports are appended to the open
  alert (``later_feedback_ids``), no new alert. A report that finds fewer than ``count`` in its
  window (or an open alert whose last report is older than the window) ends the burst
  (``resolved_at``); the next crossing raises a new alert. The partial unique index
  ``alerts_one_open_per_rule`` makes a second open alert impossible even without the lock.
- **The text says the whole burst**: on every report of an open burst, ``n_reports`` and ``message``
  are rewritten from PostgreSQL: the predictions reported wrong since the burst's first report, and
  over what period (``burst_message``: "1,497 predictions of M reported wrong in 30 s (first -> last
  UTC); alert rule: 3 reports within 300 s"). The webhook / e-mail carry the text of the moment
  the alert was raised; the stored alert (``ml alerts``, the model card) follows the burst.
- **Rule ``drift``** (``drift_alert``, from ``deliver_report``): a drift report (data or concept
  drift) raises an alert; later drift reports are counted on the open one; an ``ok`` report resolves
  it. **Drift reports** themselves (``deliver_report``, last task of ``sentiment_monitoring``) go to
  ``report_recipients`` by e-mail and to the webhook; the webhook tells both apart by ``kind``
  (``"alert"`` | ``"drift_report"``).
- **Channels**: a log line always (``WARNING`` on logger ``ml.stages.alerts``), a webhook (HTTP POST of
  the alert as JSON) when ``alert_webhook_url`` is set, e-mail (SMTP) when ``alert_smtp_host`` and
  ``alert_email_to`` are set. The webhook and e-mail are sent by a background thread, off the
  request path; what each channel did (sent / failed + error) is recorded in ``alerts.channels``.
"""

from __future__ import annotations

import json
import logging
import smtplib
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any, cast

import psycopg

from ml.platform import db
from ml.platform.config import Settings, get_settings
from ml.store import alerts as store
from ml.store import reports as reports_store

log = logging.getLogger(__name__)

RULE_BURST = "misclassification_burst"
RULE_DAG_FAILURE = "dag_failure"
RULE_DRIFT = "drift"
RULE_FEEDBACK_BURST = "feedback_burst"

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_pending: set[Future] = set()


# ---------------------------------------------------------------- the rule
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


def _evaluate_locked(conn: psycopg.Connection, model_name: str, feedback_id: int, s: Settings) -> dict[str, Any]:
    """One transaction: lock (rule, model), count the window, open / extend / resolve the alert."""
    threshold, window = int(s.alert_misclassification_count), float(s.alert_window_seconds)
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
        burst_first = open_alert["first_report_at"] or first
        n_burst, _, _, burst_last = store.wrong_reports_between(conn, model_name, burst_first, now, include_start=True)
        burst_last = max(burst_last or last, last)
        store.update_count(
            conn,
            open_alert["id"],
            n_burst,
            burst_last,
            burst_message(n_burst, model_name, burst_first, burst_last, threshold, window),
        )
        res.update(alert_id=open_alert["id"], n_burst=n_burst)
        return res
    message = burst_message(n, model_name, first, last, threshold, window)
    details = {"feedback_ids": ids, "first_report_at": first.isoformat(), "last_report_at": last.isoformat()}
    alert_id = store.insert_open(
        conn,
        rule=RULE_BURST,
        model_name=model_name,
        severity="error",
        window_seconds=int(window),
        threshold=threshold,
        n_reports=n,
        feedback_ids=ids,
        first_report_at=first,
        last_report_at=last,
        message=message,
        details=details,
        channels=[_channel_result("log", "logger ml.stages.alerts", "sent")],
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
    import hashlib

    return hashlib.sha256(identity.encode("utf-8")).hexdigest()


def evaluate_burst(conn: psycopg.Connection, model_name: str, s: Settings) -> dict[str, Any]:
    """Rule ``feedback_burst`` (the burst guard), in the caller's transaction: a burst is
    ``feedback_burst_identity_count`` wrong-reports from ONE identity within
    ``feedback_burst_window_seconds``, or all wrong-reports in a window at ``feedback_burst_rate_factor``
    x the normal rate (the last ``feedback_burst_baseline_hours``) and at least ``feedback_burst_rate_min``.

    One open alert per model while the burst lasts: raised at the first crossing, its count, period
    and identities rewritten on every report of the burst; resolved once ``feedback_burst_quiet_seconds``
    pass without burst-level reporting. While it is open the retraining trigger answers ``paused_burst``
    (``ml.stages.retraining.check_trigger`` calls this too, so a burst the alert thread has not seen yet
    pauses it as well). Identities are named redacted (``ml.stages.review.redact``); the alert keeps only
    their sha256 to recount them. Returns ``{"open", "raised", "alert_id", "message", ...}``."""
    from ml.stages.review import redact

    window, quiet = float(s.feedback_burst_window_seconds), float(s.feedback_burst_quiet_seconds)
    now = store.lock(conn, RULE_FEEDBACK_BURST, model_name)
    start = now - timedelta(seconds=window)
    counts = store.wrong_reports_by_reporter(conn, model_name, start, now)
    total = sum(n for _, n, _, _ in counts)
    base_start = now - timedelta(hours=float(s.feedback_burst_baseline_hours))
    base_total = (
        store.wrong_report_total(conn, model_name, base_start, start) if total >= s.feedback_burst_rate_min else 0
    )  # below the minimum: no rate burst anyway
    normal = base_total * window / max(1.0, (start - base_start).total_seconds())  # per window
    rate_limit = max(float(s.feedback_burst_rate_min), float(s.feedback_burst_rate_factor) * normal)
    loud = [(who, n) for who, n, _, _ in counts if n >= s.feedback_burst_identity_count]
    rate_burst = total >= rate_limit
    res: dict[str, Any] = {
        "open": False,
        "raised": False,
        "alert_id": None,
        "message": None,
        "model_name": model_name,
        "window_reports": total,
        "normal_per_window": round(normal, 2),
    }
    open_alert = store.open_alert(conn, RULE_FEEDBACK_BURST, model_name)
    if open_alert is not None and not (loud or rate_burst):
        last_at = open_alert["last_report_at"]
        if last_at is None or last_at + timedelta(seconds=quiet) <= now:  # quiet long enough: it is over
            store.resolve(
                conn,
                open_alert["id"],
                (last_at + timedelta(seconds=quiet)) if last_at else now,
                {"resolved": f"no burst for {quiet:g} s"},
            )
            res["resolved"] = open_alert["id"]
            return res
        res.update(open=True, alert_id=open_alert["id"], message=open_alert["details"].get("message"))
        return res
    if not (loud or rate_burst):
        return res
    details = dict(open_alert["details"]) if open_alert else {}
    hashes = set(details.get("identity_sha256", [])) | {_sha(w) for w, _ in loud}
    kind = "identity" if hashes else "rate"  # one (or a few) identities, or everyone at once
    first_at = (
        open_alert["first_report_at"]
        if open_alert and open_alert["first_report_at"]
        else min(f for _, _, f, _ in counts)
    )
    burst_counts = store.wrong_reports_by_reporter(conn, model_name, first_at, now, include_start=True)
    if kind == "identity":  # their reports since the burst began
        burst_counts = [c for c in burst_counts if _sha(c[0]) in hashes]
    n = sum(c[1] for c in burst_counts)
    first = min(c[2] for c in burst_counts)
    last = max(c[3] for c in burst_counts)
    who = [(redact(c[0]), c[1]) for c in burst_counts[:5]]
    more = len(burst_counts) - len(who)
    whom = ", ".join(f"{w} ({k:,})" for w, k in who) + (f" and {more} more" if more > 0 else "")
    rule = (
        f"{s.feedback_burst_identity_count} wrong-reports from one identity within {window:g} s"
        if kind == "identity"
        else f"wrong-reports at {s.feedback_burst_rate_factor:g}x the normal rate ({normal:.1f} per {window:g} s) "
        f"and >= {s.feedback_burst_rate_min}"
    )
    a, b = first.astimezone(UTC), last.astimezone(UTC)
    message = (
        f"{n:,} misclassification reports on {model_name} from {whom} in "
        f"{_duration((b - a).total_seconds())} ({a:%Y-%m-%d %H:%M:%S} -> {b:%Y-%m-%d %H:%M:%S} UTC); "
        f"burst rule: {rule}. Retraining is paused until {quiet:g} s pass without a burst."
    )
    details.update(
        kind=kind,
        identities=[w for w, _ in who],
        identity_sha256=sorted(hashes),
        message=message,
        first_report_at=a.isoformat(),
        last_report_at=b.isoformat(),
        window_reports=total,
        normal_per_window=round(normal, 2),
        per_identity={w: k for w, k in who},
    )
    if open_alert is not None:
        store.update_count(conn, open_alert["id"], n, last, message, details)
        res.update(open=True, alert_id=open_alert["id"], message=message, n_reports=n)
        return res
    alert_id = store.insert_open(
        conn,
        rule=RULE_FEEDBACK_BURST,
        model_name=model_name,
        severity="error",
        window_seconds=int(window),
        threshold=int(s.feedback_burst_identity_count),
        n_reports=n,
        feedback_ids=[],
        first_report_at=first,
        last_report_at=last,
        message=message,
        details=details,
        channels=[_channel_result("log", "logger ml.stages.alerts", "sent")],
    )
    if alert_id is None:  # the unique index: another process raised it a moment ago
        return res
    log.warning("ALERT %s #%s: %s", RULE_FEEDBACK_BURST, alert_id, message)
    res.update(open=True, raised=True, alert_id=alert_id, message=message, n_reports=n)
    return res


# ---------------------------------------------------------------- events (DAG failures)
def raise_event(
    rule: str,
    model_name: str,
    message: str,
    details: dict[str, Any] | None = None,
    severity: str = "error",
    settings: Settings | None = None,
    send: bool = True,
) -> int | None:
    """Record a one-off alert (already resolved: an event, not a state) and send it on every channel
    now, in this thread (DAG callbacks are not on a request path). Returns its id, or None when the
    database is unreachable (the log line is written either way)."""
    s = settings or get_settings()
    log.warning("ALERT %s (%s): %s", rule, model_name, message)
    try:
        with db.connect(s, start_embedded=False, connect_timeout=5, application_name="sentiment-alerts") as conn:
            alert_id = store.insert_event(
                conn,
                rule,
                model_name,
                severity,
                message,
                details or {},
                [_channel_result("log", "logger ml.stages.alerts", "sent")],
            )
    except Exception as e:  # noqa: BLE001 - a failure callback must not fail
        log.error("could not record alert %s: %s", rule, e)
        return None
    if send:
        _send_channels(alert_id, s)
    return alert_id


# ---------------------------------------------------------------- channels
def _channel_result(channel: str, target: str, status: str, error: str | None = None) -> dict[str, Any]:
    return {"channel": channel, "target": target, "status": status, "error": error, "at": datetime.now(UTC).isoformat()}


def alert_payload(alert_id: int, settings: Settings | None = None) -> dict[str, Any]:
    """The alert as the webhook receives it (JSON)."""
    s = settings or get_settings()
    with db.connect(s, start_embedded=False, connect_timeout=5, application_name="sentiment-alerts") as conn:
        out = store.payload(conn, alert_id)
    if out is None:
        raise KeyError(f"no alert {alert_id}")
    out["alert_id"] = out.pop("id")
    out["kind"] = "alert"
    out["source"] = "tweet-sentiment-platform"
    return out


def _addresses(value: str | None) -> list[str]:
    return [a.strip() for a in (value or "").split(",") if a.strip()]


def _email_recipients(s: Settings) -> list[str]:
    """Who receives alerts by e-mail (``alert_email_to``); reports go to ``report_recipients``."""
    return _addresses(s.alert_email_to)


def send_webhook(payload: dict[str, Any], s: Settings) -> None:
    import httpx

    if s.alert_webhook_url is None:
        raise ValueError("alert_webhook_url is not set")
    r = httpx.post(s.alert_webhook_url, json=payload, timeout=s.alert_webhook_timeout_seconds)
    r.raise_for_status()


def send_email(payload: dict[str, Any], s: Settings) -> None:
    """An alert by e-mail to ``alert_email_to``."""
    send_mail(
        f"[sentiment] ALERT {payload['rule']} ({payload['model_name']}): {payload['message'][:120]}",
        f"{payload['message']}\n\n{json.dumps(payload, indent=2, default=str)}\n",
        _email_recipients(s),
        s,
    )


def send_mail(subject: str, body: str, recipients: list[str], s: Settings) -> None:
    """One plain-text message through the ``alert_smtp_*`` server."""
    msg = EmailMessage()
    msg["Subject"] = subject.replace("\n", " ")
    msg["From"] = s.alert_email_from
    msg["To"] = ", ".join(recipients)
    msg.set_content(body)
    if s.alert_smtp_host is None:
        raise ValueError("alert_smtp_host is not set")
    with smtplib.SMTP(s.alert_smtp_host, s.alert_smtp_port, timeout=s.alert_webhook_timeout_seconds) as smtp:
        if s.alert_smtp_starttls:
            smtp.starttls()
        if s.alert_smtp_user:
            smtp.login(s.alert_smtp_user, s.alert_smtp_password or "")
        smtp.send_message(msg)


def _redacted(url: str) -> str:
    """Scheme and host only: webhook paths and queries are often secrets (Slack, Teams tokens)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}/…"


def _send_channels(alert_id: int, s: Settings) -> list[dict[str, Any]]:
    """Send one alert on the configured channels; record each outcome in ``alerts.channels``."""
    results: list[dict[str, Any]] = []
    try:
        payload = alert_payload(alert_id, s)
    except Exception as e:  # noqa: BLE001
        log.error("alert %s: cannot read it back to send it: %s", alert_id, e)
        return results
    if s.alert_webhook_url:
        try:
            send_webhook(payload, s)
            results.append(_channel_result("webhook", _redacted(s.alert_webhook_url), "sent"))
        except Exception as e:  # noqa: BLE001 - recorded, never raised
            results.append(
                _channel_result(
                    "webhook",
                    _redacted(s.alert_webhook_url),
                    "failed",
                    f"{type(e).__name__}: {str(e).replace(s.alert_webhook_url, '<webhook>')}",
                )
            )
    if s.alert_smtp_host and _email_recipients(s):
        target = f"smtp://{s.alert_smtp_host}:{s.alert_smtp_port} -> {', '.join(_email_recipients(s))}"
        try:
            send_email(payload, s)
            results.append(_channel_result("email", target, "sent"))
        except Exception as e:  # noqa: BLE001
            results.append(_channel_result("email", target, "failed", f"{type(e).__name__}: {e}"))
    for r in results:
        (log.info if r["status"] == "sent" else log.error)(
            "alert %s via %s (%s): %s%s",
            alert_id,
            r["channel"],
            r["target"],
            r["status"],
            f" - {r['error']}" if r["error"] else "",
        )
    if results:
        try:
            with db.connect(s, start_embedded=False, connect_timeout=5, application_name="sentiment-alerts") as conn:
                store.add_channels(conn, alert_id, results)
        except Exception as e:  # noqa: BLE001
            log.error("alert %s: could not record channel outcomes: %s", alert_id, e)
    return results


def _get_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="alert-send")
        return _executor


def dispatch_alert(alert_id: int, settings: Settings | None = None) -> Future | None:
    """Send the alert on the webhook / e-mail channels in a background thread (off the request path)."""
    s = settings or get_settings()
    if not s.alert_webhook_url and not (s.alert_smtp_host and _email_recipients(s)):
        return None
    fut = _get_executor().submit(_send_channels, alert_id, s)
    _pending.add(fut)
    fut.add_done_callback(_pending.discard)
    return fut


def wait_dispatched(timeout: float = 30.0) -> bool:
    """Wait for the background sends started so far (tests, clean shutdown). True if all finished."""
    from concurrent.futures import wait

    done, not_done = wait(list(_pending), timeout=timeout)
    return not not_done


# ---------------------------------------------------------------- drift reports (DAG sentiment_monitoring)
def drift_alert(summary: dict[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Rule ``drift``: a report with status ``drift`` (data or concept drift) raises an alert, one open
    alert per model while the reports keep saying drift (later drift reports are counted on it:
    ``n_reports``, ``details.report_ids``); an ``ok`` report resolves it (an ``empty`` one says nothing).
    Same lock and unique index as the burst rule. Returns ``{"alert_id", "raised", "continued",
    "resolved", "message"}``; sending is the caller's."""
    from ml.stages import monitoring

    s = settings or get_settings()
    model, rid, status = summary["model_name"], summary["id"], summary["status"]
    out: dict[str, Any] = {"alert_id": None, "raised": False, "continued": False, "resolved": False, "message": None}
    with db.connect(s, start_embedded=False, connect_timeout=5, application_name="sentiment-alerts") as conn:
        store.lock(conn, RULE_DRIFT, model)
        open_alert = store.open_alert(conn, RULE_DRIFT, model)
        if status != "drift":
            if open_alert is not None and status == "ok":
                store.resolve(conn, open_alert["id"], details={"resolved_by_report": rid})
                out.update(alert_id=open_alert["id"], resolved=True)
            return out
        report_ids = list(open_alert["details"].get("report_ids", [])) if open_alert else []
        if rid not in report_ids:
            report_ids.append(rid)
        digest = monitoring.report_digest(summary, None, s)
        p = summary["period"]
        message = (
            f"DRIFT in {', '.join(digest['drifted_signals']) or 'the report'}: drift report {rid} of {model} "
            f"({p['start'][:16]} -> {p['end'][:16]} UTC, {digest['predictions']:,} predictions)"
            + (f"; drift in {len(report_ids)} reports in a row" if len(report_ids) > 1 else "")
            + f". Report: {digest['report_url']}"
        )
        details = {
            "report_ids": report_ids,
            "report_url": digest["report_url"],
            "drifted_signals": digest["drifted_signals"],
            "verdict": summary["verdict"],
        }
        created = datetime.fromisoformat(summary["created_at"])
        if open_alert is not None:
            store.update_count(conn, open_alert["id"], len(report_ids), created, message, details)
            out.update(alert_id=open_alert["id"], continued=True, message=message)
            return out
        alert_id = store.insert_open(
            conn,
            rule=RULE_DRIFT,
            model_name=model,
            severity="warning",
            window_seconds=int((datetime.fromisoformat(p["end"]) - datetime.fromisoformat(p["start"])).total_seconds()),
            threshold=None,
            n_reports=1,
            feedback_ids=[],
            first_report_at=created,
            last_report_at=created,
            message=message,
            details=details,
            channels=[_channel_result("log", "logger ml.stages.alerts", "sent")],
        )
    if alert_id is not None:
        log.warning("ALERT %s #%s: %s", RULE_DRIFT, alert_id, message)
        out.update(alert_id=alert_id, raised=True, message=message)
    return out


def _retraining_status(s: Settings) -> dict[str, Any] | None:
    """Reports since the champion was trained against the retraining threshold (None when unknown)."""
    try:
        from ml.stages import retraining

        ctx = retraining.champion_context(s)
        return retraining.pending_count(ctx, s) if ctx is not None else None
    except Exception as e:  # noqa: BLE001 - the report goes out without it
        log.warning("retraining threshold unknown for the report: %s", e)
        return None


def deliver_report(
    report: dict[str, Any] | str, retraining: dict[str, Any] | None = None, settings: Settings | None = None
) -> dict[str, Any]:
    """Tell people about one stored drift report: its digest (``ml.stages.monitoring.report_digest``: verdict,
    drifted signals, prediction volume, reported-wrong count and what it means for accuracy, reports
    against the retraining threshold, a link to the HTML) to ``report_recipients`` by e-mail and to
    the webhook (``kind: "drift_report"``, with ``report_webhook``); a drift verdict also raises the
    ``drift`` alert (``drift_alert``), sent like any alert (``alert_email_to``, webhook ``kind:
    "alert"``). ``retraining``: ``check_trigger``'s decision (else counted now).

    Each channel's outcome is appended to the report's stored summary (``delivery``); a failing
    channel is recorded, never raised. Returns ``{"report_id", "status", "channels", "alert", "digest"}``."""
    from ml.stages import monitoring

    s = settings or get_settings()
    rid = report if isinstance(report, str) else report["id"]
    summary = monitoring.get_report(rid, settings=s)
    if summary is None:
        raise KeyError(f"no drift report {rid!r}")
    try:
        alert = drift_alert(summary, s)
    except Exception as e:  # noqa: BLE001 - the report still goes out
        log.error("drift alert for report %s failed: %s", rid, e)
        alert = {"alert_id": None, "raised": False, "error": f"{type(e).__name__}: {e}"}
    if retraining is None:
        retraining = _retraining_status(s)
    digest = monitoring.report_digest(summary, retraining, s)
    digest["alert_id"] = alert.get("alert_id") if (alert.get("raised") or alert.get("continued")) else None
    log.info("DRIFT REPORT %s (%s): %s - %s", rid, digest["verdict"], summary["verdict"], digest["report_url"])
    results = [_channel_result("log", "logger ml.stages.alerts", "sent")]
    if s.alert_webhook_url and s.report_webhook:
        target = _redacted(s.alert_webhook_url)
        try:
            send_webhook(digest, s)
            results.append(_channel_result("webhook", target, "sent"))
        except Exception as e:  # noqa: BLE001 - recorded, never raised
            results.append(
                _channel_result(
                    "webhook",
                    target,
                    "failed",
                    f"{type(e).__name__}: {str(e).replace(s.alert_webhook_url, '<webhook>')}",
                )
            )
    recipients = _addresses(s.report_recipients)
    if recipients:
        target = f"smtp://{s.alert_smtp_host}:{s.alert_smtp_port} -> {', '.join(recipients)}"
        if not s.alert_smtp_host:
            results.append(_channel_result("email", target, "skipped", "report_recipients set but no alert_smtp_host"))
        else:
            try:
                send_mail(*monitoring.digest_text(digest), recipients, s)
                results.append(_channel_result("email", target, "sent"))
            except Exception as e:  # noqa: BLE001
                results.append(_channel_result("email", target, "failed", f"{type(e).__name__}: {e}"))
    for r in results:
        (log.info if r["status"] == "sent" else log.error)(
            "drift report %s via %s (%s): %s%s",
            rid,
            r["channel"],
            r["target"],
            r["status"],
            f" - {r['error']}" if r["error"] else "",
        )
    try:
        with db.connect(s, start_embedded=False, connect_timeout=5, application_name="sentiment-alerts") as conn:
            reports_store.append_delivery(conn, rid, results)
    except Exception as e:  # noqa: BLE001
        log.error("drift report %s: could not record channel outcomes: %s", rid, e)
    if alert.get("raised"):
        alert["channels"] = _send_channels(alert["alert_id"], s)
    return {"report_id": rid, "status": summary["status"], "channels": results, "alert": alert, "digest": digest}


# ---------------------------------------------------------------- reading back
def list_alerts(
    limit: int = 50, model_name: str | None = None, rule: str | None = None, settings: Settings | None = None
) -> list[dict[str, Any]]:
    s = settings or get_settings()
    with db.connect(s, start_embedded=False, connect_timeout=5, application_name="sentiment-alerts") as conn:
        return store.latest(conn, limit, model_name or None, rule or None)
