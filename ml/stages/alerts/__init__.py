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

The modules: ``burst`` (the two feedback rules), ``drift_reports`` (rule ``drift`` and the delivery
of drift reports), ``events`` (one-off events, reading alerts back), ``channels`` (webhook, e-mail,
the background sender).
"""
