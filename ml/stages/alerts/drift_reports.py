"""Drift reports to people (last task of ``sentiment_monitoring``): rule ``drift`` (:func:`drift_alert`) and
the report's delivery by webhook and e-mail (:func:`deliver_report`), recorded on the stored report."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from ml.platform import db
from ml.platform.config import Settings, get_settings
from ml.stages.alerts import events
from ml.stages.alerts.channels import (
    addresses,
    channel_result,
    log_outcomes,
    redacted_url,
    send_channels,
    send_mail,
    send_webhook,
)
from ml.stages.monitoring.archive import get_report, record_action
from ml.stages.monitoring.wording import digest_text, report_digest
from ml.stages.retraining.trigger import champion_context, pending_count
from ml.store import alerts as store
from ml.store import drift_reports as drift_reports_store

log = logging.getLogger(__package__)  # the stage's logger ``ml.stages.alerts``, named in the log channel


RULE_DRIFT = "drift"


def drift_alert(summary: dict[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Rule ``drift``: a report with status ``drift`` (data or concept drift) raises an alert, one open
    alert per model while the reports keep saying drift (later drift reports are counted on it:
    ``n_reports``, ``details.report_ids``); an ``ok`` report resolves it (an ``empty`` one says nothing).
    Same lock and unique index as the burst rule. Returns ``{"alert_id", "raised", "continued",
    "resolved", "message"}``; sending is the caller's."""
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
        digest = report_digest(summary, None, s)
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
        alert_id = events.open_alert(
            conn,
            RULE_DRIFT,
            model,
            severity="warning",
            window_seconds=int((datetime.fromisoformat(p["end"]) - datetime.fromisoformat(p["start"])).total_seconds()),
            threshold=None,
            n_reports=1,
            first_report_at=created,
            last_report_at=created,
            message=message,
            details=details,
        )
    if alert_id is not None:
        log.warning("ALERT %s #%s: %s", RULE_DRIFT, alert_id, message)
        out.update(alert_id=alert_id, raised=True, message=message)
    return out


def _retraining_status(settings: Settings) -> dict[str, Any] | None:
    """Reports since the champion was trained against the retraining threshold (None when unknown)."""
    try:
        ctx = champion_context(settings)
        return pending_count(ctx, settings) if ctx is not None else None
    except Exception as e:  # noqa: BLE001 - the report goes out without it
        log.warning("retraining threshold unknown for the report: %s", e)
        return None


def deliver_report(
    report: dict[str, Any] | str, retraining: dict[str, Any] | None = None, settings: Settings | None = None
) -> dict[str, Any]:
    """Tell people about one stored drift report: its digest (``ml.stages.monitoring.wording.report_digest``: verdict,
    drifted signals, prediction volume, reported-wrong count and what it means for accuracy, reports
    against the retraining threshold, a link to the HTML) to ``report_recipients`` by e-mail and to
    the webhook (``kind: "drift_report"``, with ``report_webhook``); a drift verdict also raises the
    ``drift`` alert (``drift_alert``), sent like any alert (``alert_email_to``, webhook ``kind:
    "alert"``). ``retraining``: ``check_trigger``'s decision (else counted now).

    Each channel's outcome is appended to the report's stored summary (``delivery``); a failing
    channel is recorded, never raised. Returns ``{"report_id", "status", "channels", "alert", "digest"}``."""
    s = settings or get_settings()
    rid = report if isinstance(report, str) else report["id"]
    summary = get_report(rid, settings=s)
    if summary is None:
        raise KeyError(f"no drift report {rid!r}")
    try:
        alert = drift_alert(summary, s)
    except Exception as e:  # noqa: BLE001 - the report still goes out
        log.error("drift alert for report %s failed: %s", rid, e)
        alert = {"alert_id": None, "raised": False, "error": f"{type(e).__name__}: {e}"}
    if retraining is None:
        retraining = _retraining_status(s)
    digest = report_digest(summary, retraining, s)
    digest["alert_id"] = alert.get("alert_id") if (alert.get("raised") or alert.get("continued")) else None
    log.info("DRIFT REPORT %s (%s): %s - %s", rid, digest["verdict"], summary["verdict"], digest["report_url"])
    results = [channel_result("log", "logger ml.stages.alerts", "sent")]
    if s.alert_webhook_url and s.report_webhook:
        target = redacted_url(s.alert_webhook_url)
        try:
            send_webhook(digest, s)
            results.append(channel_result("webhook", target, "sent"))
        except Exception as e:  # noqa: BLE001 - recorded, never raised
            results.append(
                channel_result(
                    "webhook",
                    target,
                    "failed",
                    f"{type(e).__name__}: {str(e).replace(s.alert_webhook_url, '<webhook>')}",
                )
            )
    recipients = addresses(s.report_recipients)
    if recipients:
        target = f"smtp://{s.alert_smtp_host}:{s.alert_smtp_port} -> {', '.join(recipients)}"
        if not s.alert_smtp_host:
            results.append(channel_result("email", target, "skipped", "report_recipients set but no alert_smtp_host"))
        else:
            try:
                send_mail(*digest_text(digest), recipients, s)
                results.append(channel_result("email", target, "sent"))
            except Exception as e:  # noqa: BLE001
                results.append(channel_result("email", target, "failed", f"{type(e).__name__}: {e}"))
    log_outcomes(f"drift report {rid}", results, log)
    try:
        with db.connect(s, start_embedded=False, connect_timeout=5, application_name="sentiment-alerts") as conn:
            drift_reports_store.append_delivery(conn, rid, results)
    except Exception as e:  # noqa: BLE001
        log.error("drift report %s: could not record channel outcomes: %s", rid, e)
    if alert.get("raised"):
        alert["channels"] = send_channels(alert["alert_id"], s)
    try:  # what the platform did, into the stored summary and the saved HTML's verdict block
        record_action(rid, alert, retraining, s)
    except Exception as e:  # noqa: BLE001 - the report was delivered; its page keeps "pending"
        log.error("drift report %s: could not record what the platform did: %s", rid, e)
    return {"report_id": rid, "status": summary["status"], "channels": results, "alert": alert, "digest": digest}
