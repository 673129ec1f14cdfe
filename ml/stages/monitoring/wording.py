"""The words of a drift report: the live-accuracy statement, the verdict line, and the digest the
alert channels carry (webhook JSON, e-mail subject and text)."""

from __future__ import annotations

from typing import Any

from ml.platform.config import Settings, get_settings


def accuracy_statement(predictions: int | None, reported_wrong: int | None, upper_bound: float | None) -> str:
    """What the live-accuracy bound means, in words (the one wording: verdict, summary, API, messages).

    ``at most 99.0% of the period's 61,000 predictions were right: 611 were reported wrong;
    unreported predictions are counted as right``."""
    if not predictions:
        return "no predictions in the period: nothing to say about accuracy"
    wrong = int(reported_wrong or 0)
    bound = upper_bound if upper_bound is not None else 1.0 - wrong / predictions
    reported = (
        "none were reported wrong" if wrong == 0 else f"{wrong:,} {'was' if wrong == 1 else 'were'} reported wrong"
    )
    digits = 1  # enough decimals that a bound below 100% never reads "100.0%"
    while wrong and digits < 4 and round(bound * 100, digits) >= 100:
        digits += 1
    return (
        f"at most {bound * 100:.{digits}f}% of the period's {predictions:,} predictions were right: {reported}; "
        "unreported predictions are counted as right"
    )


def _fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def verdict_line(summary: dict[str, Any]) -> str:
    """One line a person can act on."""
    p = summary["period"]
    when = f"{p['start'][:16]} -> {p['end'][:16]} UTC"
    if summary["status"] == "empty":
        return f"EMPTY: no predictions of {summary['model_name']} between {when}; nothing to compare."
    m = summary["metrics"]
    drifted = [SIGNAL_NAMES[k] for k, v in m.items() if v["detected"]]
    pl = m["prediction_label"]
    share = f"positive {pl['current_positive_share']:.0%} vs {pl['reference_positive_share']:.0%} in reference"
    fb = summary["feedback"]
    acc = (
        accuracy_statement(fb["predictions"], fb["reported_wrong"], fb["live_accuracy_upper_bound"])
        + f" (the champion's held-out accuracy at training: {_fmt_pct(fb['training_accuracy'])})"
    )
    if fb["concept_drift"]:
        acc += " - CONCEPT DRIFT"
    if summary.get("estimate") is not None:
        from ml.evaluation.estimate import statement

        acc += f"; {statement(summary['estimate'])}"
    head = f"DRIFT in {', '.join(drifted)}" if drifted else "No drift"
    if not drifted and fb["concept_drift"]:
        head = "No data drift but CONCEPT DRIFT"
    line = (
        f"{head}: {summary['current']['rows']:,} predictions ({when}) vs {summary['reference']['rows']:,} "
        f"reference (v{summary['reference_version']}); {share}; {acc}."
    )
    others = summary["current"].get("not_compared") or {}
    if others:
        left = ", ".join(f"v{v} ({int(n):,})" for v, n in sorted(others.items(), key=lambda kv: int(kv[0])))
        line += (
            f" Only v{summary['reference_version']}'s predictions (it served at the period's end) were compared; "
            f"not compared: {left}."
        )
    return line


SIGNAL_NAMES = {
    "prediction_label": "predicted labels",
    "probability": "p_positive",
    "text_descriptors": "text descriptors",
    "raw_text": "raw text",
    "embeddings": "text embeddings",
}


def report_urls(report_id: str, settings: Settings | None = None) -> dict[str, str]:
    """Absolute links to a report on the API (``public_api_url``, else ``http://<host>:<api_port>``)."""
    base = (settings or get_settings()).api_url
    return {"html": f"{base}/reports/{report_id}/html", "summary": f"{base}/reports/{report_id}"}


def report_digest(
    summary: dict[str, Any], retraining: dict[str, Any] | None = None, settings: Settings | None = None
) -> dict[str, Any]:
    """The short summary of a stored report that the channels carry (webhook JSON, e-mail text).

    ``retraining``: misclassification reports since the champion was trained against the retraining
    threshold (``ml.stages.retraining.trigger.check_trigger``'s decision or ``pending_count``), None when unknown."""
    s = settings or get_settings()
    fb = summary.get("feedback") or {}
    metrics = summary.get("metrics") or {}
    signals = [SIGNAL_NAMES.get(k, k) for k, v in metrics.items() if v.get("detected")]
    if fb.get("concept_drift"):
        signals.append("concept drift (live accuracy bound below training accuracy)")
    status = summary["status"]
    predictions = (summary.get("current") or {}).get("rows_in_period", 0)
    from ml.evaluation.estimate import statement as estimate_statement

    est = summary.get("estimate") or {"status": "not computed for this report"}
    retr = None
    if retraining:
        retr = {k: retraining.get(k) for k in ("threshold", "fraction", "corpus_rows")}
        retr["reports"] = retraining.get("reports", retraining.get("pending_reports"))
        retr["triggered"] = bool(retraining.get("trigger"))
        retr["retraining_id"] = retraining.get("retraining_id")
        done, thr = retr["reports"], retr["threshold"]
        retr["text"] = (
            f"{done:,} misclassification reports since the champion was trained, retraining threshold "
            f"{thr:,}" + (" - retraining triggered" if retr["triggered"] else "")
            if done is not None and thr
            else "no retraining threshold (no champion snapshot)"
        )
    return {
        "kind": "drift_report",
        "source": "tweet-sentiment-platform",
        "report_id": summary["id"],
        "model_name": summary["model_name"],
        "reference_version": summary.get("reference_version"),
        "period": summary["period"],
        "status": status,
        "verdict": {"drift": "DRIFT", "ok": "NO DRIFT", "empty": "EMPTY"}.get(status, status.upper()),
        "verdict_line": summary["verdict"],
        "drifted_signals": signals,
        "predictions": predictions,
        "predictions_compared": (summary.get("current") or {}).get("rows", 0),
        "reported_wrong": fb.get("reported_wrong", 0),
        "live_accuracy_upper_bound": fb.get("live_accuracy_upper_bound"),
        "accuracy": fb.get("accuracy_statement")
        or accuracy_statement(predictions, fb.get("reported_wrong"), fb.get("live_accuracy_upper_bound")),
        "training_accuracy": fb.get("training_accuracy"),
        # the label-free estimate (ml.evaluation.estimate, CBPE): no feedback needed; None with a status when
        # there is nothing to estimate (empty period, no prediction by the champion, a failure)
        "estimated_accuracy": est.get("estimated_accuracy"),
        "estimated_accuracy_status": (
            estimate_statement(est)
            if est.get("estimated_accuracy") is not None
            else est.get("status") or "not available"
        ),
        "retraining": retr,
        "report_url": report_urls(summary["id"], s)["html"],
        "summary_url": report_urls(summary["id"], s)["summary"],
    }


def digest_text(d: dict[str, Any]) -> tuple[str, str]:
    """(subject, plain-text body) of a report digest for e-mail."""
    p = d["period"]
    when = f"{p['start'][:16]} -> {p['end'][:16]} UTC"
    head = d["verdict"] + (f" in {', '.join(d['drifted_signals'])}" if d["drifted_signals"] else "")
    subject = f"[sentiment] drift report {d['model_name']} {p['end'][:10]}: {head}"[:200]
    est = d["estimated_accuracy"]
    lines = [
        f"Drift report {d['report_id']} of {d['model_name']} (reference: champion v{d['reference_version']})",
        f"Period: {when}",
        f"Verdict: {head}",
        f"Drifted signals: {', '.join(d['drifted_signals']) or 'none'}",
        f"Predictions in the period: {d['predictions']:,} ({d['predictions_compared']:,} compared)",
        f"Reported wrong: {d['reported_wrong']:,}",
        f"Accuracy: {d['accuracy']}",
        f"Estimated accuracy (label-free): {_fmt_pct(est) if est is not None else d['estimated_accuracy_status']}",
        f"Retraining: {(d['retraining'] or {}).get('text', 'unknown')}",
        "",
        d["verdict_line"],
        "",
        f"Full report: {d['report_url']}",
    ]
    return subject, "\n".join(lines) + "\n"
