"""Alert delivery channels: the alert as JSON (:func:`alert_payload`), the webhook, e-mail (SMTP), the
background sender (:func:`dispatch_alert`) and each channel's recorded outcome in ``alerts.channels``."""

from __future__ import annotations

import json
import logging
import smtplib
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import httpx

from ml.platform import db
from ml.platform.config import Settings, get_settings
from ml.store import alerts as store

log = logging.getLogger(__package__)  # the stage's logger ``ml.stages.alerts``, named in the log channel


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_pending: set[Future] = set()


def channel_result(channel: str, target: str, status: str, error: str | None = None) -> dict[str, Any]:
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


def addresses(value: str | None) -> list[str]:
    return [a.strip() for a in (value or "").split(",") if a.strip()]


def _email_recipients(settings: Settings) -> list[str]:
    """Who receives alerts by e-mail (``alert_email_to``); reports go to ``report_recipients``."""
    return addresses(settings.alert_email_to)


def send_webhook(payload: dict[str, Any], settings: Settings) -> None:
    if settings.alert_webhook_url is None:
        raise ValueError("alert_webhook_url is not set")
    r = httpx.post(settings.alert_webhook_url, json=payload, timeout=settings.alert_webhook_timeout_seconds)
    r.raise_for_status()


def send_email(payload: dict[str, Any], settings: Settings) -> None:
    """An alert by e-mail to ``alert_email_to``."""
    send_mail(
        f"[sentiment] ALERT {payload['rule']} ({payload['model_name']}): {payload['message'][:120]}",
        f"{payload['message']}\n\n{json.dumps(payload, indent=2, default=str)}\n",
        _email_recipients(settings),
        settings,
    )


def send_mail(subject: str, body: str, recipients: list[str], settings: Settings) -> None:
    """One plain-text message through the ``alert_smtp_*`` server."""
    msg = EmailMessage()
    msg["Subject"] = subject.replace("\n", " ")
    msg["From"] = settings.alert_email_from
    msg["To"] = ", ".join(recipients)
    msg.set_content(body)
    if settings.alert_smtp_host is None:
        raise ValueError("alert_smtp_host is not set")
    with smtplib.SMTP(
        settings.alert_smtp_host, settings.alert_smtp_port, timeout=settings.alert_webhook_timeout_seconds
    ) as smtp:
        if settings.alert_smtp_starttls:
            smtp.starttls()
        if settings.alert_smtp_user:
            smtp.login(settings.alert_smtp_user, settings.alert_smtp_password or "")
        smtp.send_message(msg)


def redacted_url(url: str) -> str:
    """Scheme and host only: webhook paths and queries are often secrets (Slack, Teams tokens)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}/…"


def log_outcomes(what: str, results: list[dict[str, Any]], logger: logging.Logger) -> None:
    """One line per channel outcome: info when sent, error otherwise (alerts and drift reports)."""
    for r in results:
        (logger.info if r["status"] == "sent" else logger.error)(
            "%s via %s (%s): %s%s",
            what,
            r["channel"],
            r["target"],
            r["status"],
            f" - {r['error']}" if r["error"] else "",
        )


def send_channels(alert_id: int, settings: Settings) -> list[dict[str, Any]]:
    """Send one alert on the configured channels; record each outcome in ``alerts.channels``."""
    results: list[dict[str, Any]] = []
    try:
        payload = alert_payload(alert_id, settings)
    except Exception as e:  # noqa: BLE001
        log.error("alert %s: cannot read it back to send it: %s", alert_id, e)
        return results
    if settings.alert_webhook_url:
        try:
            send_webhook(payload, settings)
            results.append(channel_result("webhook", redacted_url(settings.alert_webhook_url), "sent"))
        except Exception as e:  # noqa: BLE001 - recorded, never raised
            results.append(
                channel_result(
                    "webhook",
                    redacted_url(settings.alert_webhook_url),
                    "failed",
                    f"{type(e).__name__}: {str(e).replace(settings.alert_webhook_url, '<webhook>')}",
                )
            )
    if settings.alert_smtp_host and _email_recipients(settings):
        target = (
            f"smtp://{settings.alert_smtp_host}:{settings.alert_smtp_port} -> {', '.join(_email_recipients(settings))}"
        )
        try:
            send_email(payload, settings)
            results.append(channel_result("email", target, "sent"))
        except Exception as e:  # noqa: BLE001
            results.append(channel_result("email", target, "failed", f"{type(e).__name__}: {e}"))
    log_outcomes(f"alert {alert_id}", results, log)
    if results:
        try:
            with db.connect(
                settings, start_embedded=False, connect_timeout=5, application_name="sentiment-alerts"
            ) as conn:
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
    fut = _get_executor().submit(send_channels, alert_id, s)
    _pending.add(fut)
    fut.add_done_callback(_pending.discard)
    return fut


def wait_dispatched(timeout: float = 30.0) -> bool:
    """Wait for the background sends started so far (tests, clean shutdown). True if all finished."""
    done, not_done = wait(list(_pending), timeout=timeout)
    return not not_done
