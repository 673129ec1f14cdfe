"""Labels the loop can trust: the rules in one place (the trigger, ``prepare`` and the review queue
all use them).

**A text's label** (texts are stripped; several predictions of one text are one item):

- a reviewer's latest decision on the text wins: ``reject`` excludes the text from every retraining
  whatever its reports say; ``accept`` (the label the item proposed) and ``relabel`` (the reviewer's
  label) make that label trusted;
- otherwise (and unless ``feedback_review_required``) each reporting identity's latest word on the
  text is one vote; a label is trusted when at least ``feedback_min_identities`` distinct **keyed**
  identities (API keys, which an admin issues; default 3) give it and more keyed identities give it
  than the other label (a contested text waits for a reviewer). Anonymous reports (``anon:<address>``:
  addresses are cheap to come by) and reports without a reporter (older rows, ``unidentified``) never
  make agreement: they stay claims, and only raise the text's place in the review queue. Reports of
  an identity a burst alert quarantined (``feedback_burst``: its reports from the burst's start until
  the alert resolves) do not count as agreement either, until a reviewer accepts the text;
- a report marked reviewed by ``ml review`` / ``POST /admin/review`` counts as a reviewer's accept
  of that report's label.

**The threshold** counts texts, one vote each, whose trusted label differs from the champion's
prediction. Each vote is shared equally by the identities behind the label (its supporting
reporters; the reviewer when nobody reported it), and no identity counts for more than
``feedback_max_identity_share`` of the threshold (default 0.1: ten identities at least). So one
client's unlimited reports count at most that share, and only on texts other keys agreed with or a
reviewer accepted; one person with many addresses makes no label at all without a reviewer.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import psycopg

from ml.platform.config import Settings
from ml.store import review as store

LABELS = {0: "negative", 1: "positive"}


def text_key(text: str) -> str:
    """The item key of a text: sha256 of the stripped text (the queue deduplicates by it)."""
    return hashlib.sha256(str(text).strip().encode("utf-8")).hexdigest()


def redact(identity: str | None) -> str:
    """An identity fit for an alert: keys as they are (``key:<name>#<key id>``, the key id is public),
    anonymous client addresses masked (IPv4 /24, IPv6 /48)."""
    if not identity:
        return "unidentified"
    if not identity.startswith("anon:"):
        return identity
    addr = identity[5:]
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return "anon:" + (addr[:3] + "…" if len(addr) > 3 else "…")
    if ip.version == 4:
        return "anon:" + ".".join(addr.split(".")[:3]) + ".x"
    net = ipaddress.ip_network(f"{addr}/48", strict=False)
    return f"anon:{net.network_address}/48"


def keyed(identity: str | None) -> bool:
    """An API key's identity (``key:<name>#<key id>``): issued by an admin, so it may count as agreement."""
    return bool(identity) and str(identity).startswith("key:")


@dataclass
class Judged:
    """One text's reports and reviews, judged."""

    key: str
    text: str
    status: str = "untrusted"  # trusted | rejected | untrusted
    label: int | None = None
    source: str | None = None  # review | reviewed_report | agreement
    predicted: int | None = None  # the version's label for it (latest report's prediction)
    prediction_id: Any = None
    votes: dict[int, list[str]] = field(default_factory=lambda: {0: [], 1: []})
    # the votes that can make agreement: keyed identities whose latest report is not quarantined
    keyed: dict[int, list[str]] = field(default_factory=lambda: {0: [], 1: []})
    quarantined: int = 0  # reports of identities a burst alert quarantined
    supporters: list[str] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    review: dict[str, Any] | None = None
    last_report_at: datetime | None = None

    @property
    def wrong(self) -> bool:
        """Trusted, and the prediction disagrees with it: a misclassification the loop believes."""
        return self.status == "trusted" and self.predicted is not None and self.label != self.predicted

    @property
    def consumed(self) -> bool:
        return any(r["consumed"] for r in self.reports)

    def supporting_ids(self) -> list[int]:
        """Reports that gave the trusted label."""
        return [int(r["feedback_id"]) for r in self.reports if self.label is not None and r["label"] == self.label]

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "text": self.text,
            "status": self.status,
            "label": self.label,
            "source": self.source,
            "predicted": self.predicted,
            "votes": {LABELS[k]: len(v) for k, v in self.votes.items()},
            "keyed_votes": {LABELS[k]: len(v) for k, v in self.keyed.items()},
            "quarantined_reports": self.quarantined,
            "supporters": [redact(x) for x in self.supporters],
        }


def _last_report_ts(j: Judged) -> float:
    if j.last_report_at is None:  # judge() sets it on every text it returns (each has a report)
        raise ValueError(f"text {j.key}: no report time")
    return j.last_report_at.timestamp()


def judge(reports: list[dict[str, Any]], reviews: dict[str, dict[str, Any]], settings: Settings) -> dict[str, Judged]:
    """Group ``reports`` (ml.store.review rows, oldest first) by text and apply the rules, with the
    latest ``reviews`` by text key."""
    out: dict[str, Judged] = {}
    for r in reports:
        text = str(r["text"]).strip()
        if not text:
            continue
        k = text_key(text)
        j = out.get(k)
        if j is None:
            j = out[k] = Judged(k, text)
        j.reports.append(r)
    min_ids = int(settings.feedback_min_identities)
    for k, j in out.items():
        latest: dict[str, dict[str, Any]] = {}
        for r in j.reports:  # oldest first: the last one of each identity wins
            latest[r["reporter"]] = r
        last = j.reports[-1]
        j.predicted, j.prediction_id = int(last["predicted"]), last["prediction_id"]
        j.last_report_at = last["created_at"]
        for who, r in latest.items():
            j.votes[int(r["label"])].append(who)
            if keyed(who) and not r.get("quarantined"):
                j.keyed[int(r["label"])].append(who)
        j.quarantined = sum(1 for r in j.reports if r.get("quarantined"))
        j.review = reviews.get(k)
        marked = [r for r in j.reports if r["reviewed"] and r.get("review_id") is None]
        if j.review is not None:
            if j.review["decision"] == "reject":
                j.status = "rejected"
            else:
                j.status, j.label, j.source = "trusted", int(j.review["label"]), "review"
        elif marked:
            j.status, j.label, j.source = "trusted", int(marked[-1]["label"]), "reviewed_report"
        elif not settings.feedback_review_required:  # agreement: keyed identities only (not quarantined)
            n0, n1 = len(j.keyed[0]), len(j.keyed[1])
            best, other = (1, n0) if n1 > n0 else (0, n1)
            if len(j.keyed[best]) >= min_ids and len(j.keyed[best]) > other:
                j.status, j.label, j.source = "trusted", best, "agreement"
        if j.status == "trusted":
            if j.label is None:  # every rule that trusts a text gives it its label
                raise ValueError(f"text {k}: trusted without a label")
            # agreement: the keys that made it; a reviewer's accept: everyone who gave the label
            behind = j.keyed[j.label] if j.source == "agreement" else j.votes[j.label]
            j.supporters = sorted(behind) or [f"review:{(j.review or {}).get('reviewer', 'unknown')}"]
    return out


def judge_texts(
    conn: psycopg.Connection, model_name: str, reports: list[dict[str, Any]], settings: Settings
) -> dict[str, Judged]:
    keys = sorted({text_key(r["text"]) for r in reports if str(r["text"]).strip()})
    return judge(reports, store.latest_reviews(conn, model_name, keys) if keys else {}, settings)


def count_votes(items: list[Judged], threshold: int, settings: Settings) -> dict[str, Any]:
    """One vote per text, shared by its supporters; each identity capped at
    ``feedback_max_identity_share x threshold``. Returns the count (a Fraction) and who was capped."""
    cap = Fraction(str(settings.feedback_max_identity_share)) * int(threshold)
    per: dict[str, Fraction] = defaultdict(Fraction)
    for j in items:
        share = Fraction(1, len(j.supporters))
        for who in j.supporters:
            per[who] += share
    counted = sum((min(v, cap) for v in per.values()), Fraction(0))
    capped = {redact(w): float(v) for w, v in sorted(per.items(), key=lambda kv: -kv[1]) if v > cap}
    return {"counted": counted, "cap": float(cap), "identities": len(per), "capped": capped}


def pending(
    conn: psycopg.Connection,
    model_name: str,
    version: int,
    since: datetime | None,
    threshold: int | None,
    settings: Settings,
) -> dict[str, Any]:
    """The version's misclassifications the loop believes and has not consumed yet, counted against
    ``threshold``; the feedback ids a retraining would consume (every unconsumed report on those texts)."""
    reports = store.reports_of_version(conn, model_name, version, since)
    judged = judge_texts(conn, model_name, reports, settings)
    items = [j for j in judged.values() if j.wrong and not j.consumed]
    votes = count_votes(items, threshold or 1, settings)
    ids = sorted(int(r["feedback_id"]) for j in items for r in j.reports if not r["consumed"])
    open_texts = [j for j in judged.values() if not j.consumed]
    return {
        "items": items,
        "feedback_ids": ids,
        "reports": len(items),
        "counted": votes["counted"],
        "identity_cap": votes["cap"],
        "identities": votes["identities"],
        "capped_identities": votes["capped"],
        "reported_texts": len(open_texts),
        "untrusted_texts": sum(1 for j in open_texts if j.status == "untrusted"),
        "rejected_texts": sum(1 for j in open_texts if j.status == "rejected"),
        "feedback_rows": sum(len(j.reports) for j in open_texts),
        "quarantined_reports": sum(j.quarantined for j in open_texts),
    }


def trusted_training_rows(
    conn: psycopg.Connection, model_name: str, version: int, consumed: list[tuple[Any, ...]], settings: Settings
) -> tuple[list[tuple[Any, ...]], dict[str, int]]:
    """Of the consumed reports (feedback id, prediction id, text, label, created at), those that train:
    on a text whose label is trusted NOW (judged on every report of the version and the latest
    reviews: a reviewer's rejection after the trigger still excludes it), giving that label."""
    judged = judge_texts(conn, model_name, store.reports_of_version(conn, model_name, version), settings)
    keep: list[tuple[Any, ...]] = []
    dropped = {"untrusted": 0, "rejected": 0, "other_label": 0}
    for row in consumed:
        j = judged.get(text_key(row[2]))
        if j is None or j.status != "trusted":
            dropped[j.status if j is not None else "untrusted"] += 1
        elif int(row[3]) != j.label:
            dropped["other_label"] += 1
        else:
            keep.append(row)
    return keep, dropped


def as_number(x: Fraction | float | int) -> float | int:
    """A count for people: an integer when it is one."""
    f = float(x)
    return int(f) if f == int(f) else round(f, 2)


# ---------------------------------------------------------------- the review queue
def _proposed(j: Judged) -> int:
    """What a reported item proposes: the label more identities gave (a tie: the latest report's)."""
    n0, n1 = len(j.votes[0]), len(j.votes[1])
    return 1 if n1 > n0 else 0 if n0 > n1 else int(j.reports[-1]["label"])


def _item(kind: str, pred: dict[str, Any], key: str, text: str, proposed: int, j: Judged | None) -> dict[str, Any]:
    p_pos = float(pred["p_positive"]) if pred.get("p_positive") is not None else None
    return {
        "id": str(pred["id"]),
        "key": key,
        "kind": kind,
        "text": text,
        "predicted_label": LABELS[int(pred["label"])],
        "p_positive": p_pos,
        "confidence": None if p_pos is None else round(max(p_pos, 1 - p_pos), 4),
        "model_version": pred.get("model_version"),
        "proposed_label": LABELS[proposed],
        "reports": {LABELS[k]: len(v) for k, v in j.votes.items()} if j else {"negative": 0, "positive": 0},
        "identities": len({r["reporter"] for r in j.reports}) if j else 0,
        # keys whose latest word agrees with the proposal: what agreement counts (anonymous reports only rank)
        "keyed_identities": len(j.keyed[proposed]) if j else 0,
        "quarantined_reports": j.quarantined if j else 0,
        "status": j.status if j else "unreported",
        "last_report_at": j.last_report_at.isoformat() if j and j.last_report_at else None,
        "report_count": len(j.reports) if j else 0,
        "comments": _comments(j),
    }


MAX_COMMENTS = 5
MAX_COMMENT_CHARS = 500


def _comments(j: Judged | None) -> list[dict[str, Any]]:
    """The reporters' comments on the text, newest first (at most ``MAX_COMMENTS``, each cut at
    ``MAX_COMMENT_CHARS``): attacker-controlled text, the page inserts it as text only."""
    if j is None:
        return []
    out: list[dict[str, Any]] = []
    for r in reversed(j.reports):
        c = str(r.get("comment") or "").strip()
        if c:
            out.append(
                {"comment": c[:MAX_COMMENT_CHARS], "reporter": redact(r["reporter"]), "label": LABELS[int(r["label"])]}
            )
        if len(out) >= MAX_COMMENTS:
            break
    return out


def queue(conn: psycopg.Connection, model_name: str, settings: Settings, limit: int = 50) -> dict[str, Any]:
    """Items for a reviewer, deduplicated by text, none reviewed yet: reported texts (most reporting
    identities first, keyed or anonymous: anonymous reports make no label, they raise the text's place
    here; then the latest) and the least-confident live predictions (uncertainty sampling: probability
    closest to 0.5), at least a quarter of the queue when there are any."""
    since = datetime.now(UTC) - timedelta(hours=float(settings.review_queue_hours))
    reports = list(reversed(store.reported_predictions(conn, model_name, since, max(1000, limit * 40))))
    uncertain_rows = store.least_confident(conn, model_name, since, limit * 5)
    keys = {text_key(r["text"]) for r in reports} | {text_key(p["text"]) for p in uncertain_rows}
    reviews = store.latest_reviews(conn, model_name, sorted(keys)) if keys else {}
    judged = judge(reports, reviews, settings)
    reported = sorted(
        (j for j in judged.values() if j.review is None),
        key=lambda j: (-len({r["reporter"] for r in j.reports}), -_last_report_ts(j)),
    )
    uncertain: list[dict[str, Any]] = []
    seen = set(judged) | set(reviews)
    for p in uncertain_rows:
        text = str(p["text"]).strip()
        k = text_key(text)
        if text and k not in seen:
            seen.add(k)
            uncertain.append(_item("uncertain", p, k, text, int(p["label"]), None))
    n_reported = min(len(reported), limit - min(len(uncertain), limit // 4))
    items: list[dict[str, Any]] = []
    if n_reported:
        preds = {str(p["id"]): p for p in (store.prediction(conn, j.prediction_id) for j in reported[:n_reported]) if p}
        for j in reported[:n_reported]:
            pred = preds.get(str(j.prediction_id))
            if pred is not None:
                items.append(_item("reported", pred, j.key, j.text, _proposed(j), j))
    items += uncertain[: limit - len(items)]
    return {
        "model_name": model_name,
        "items": items,
        "reported_waiting": len(reported),
        "uncertain_waiting": len(uncertain),
    }


class ReviewError(ValueError):
    """A decision that cannot be recorded (unknown item, missing label)."""


def decide(
    conn: psycopg.Connection, prediction_id: Any, decision: str, label: int | None, reviewer: str, settings: Settings
) -> dict[str, Any]:
    """Record a reviewer's decision on the item of ``prediction_id`` (its text): ``accept`` (``label``,
    default: what the item proposes), ``relabel`` (``label`` required) or ``reject``. Accept / relabel
    are also stored as the reviewer's report on that prediction (consumed and traced like any report)."""
    if decision not in ("accept", "reject", "relabel"):
        raise ReviewError(f"decision must be accept, reject or relabel, got {decision!r}")
    pred = store.prediction(conn, prediction_id)
    if pred is None:
        raise LookupError(f"no prediction with id {prediction_id}")
    text = str(pred["text"]).strip()
    k = text_key(text)
    reports = [
        r for r in store.reports_of_version(conn, pred["model_name"], pred["model_version"]) if text_key(r["text"]) == k
    ]
    j = judge(reports, {}, settings).get(k) if reports else None
    proposed = _proposed(j) if j else int(pred["label"])
    if decision == "reject":
        label = None
    elif decision == "relabel" and label is None:
        raise ReviewError("relabel needs the label: negative or positive")
    elif decision == "accept" and label is None:
        label = proposed
    row = store.insert_review(
        conn,
        model_name=pred["model_name"],
        text=text,
        text_sha256=k,
        prediction_id=pred["id"],
        decision=decision,
        label=label,
        proposed_label=proposed,
        reviewer=reviewer,
    )
    row["feedback_id"] = None
    if label is not None:
        row["feedback_id"] = store.insert_review_report(
            conn, pred["id"], int(label), reviewer, row["id"], f"review #{row['id']}: {decision}"
        )
    row["text"] = text
    return row


class UndoRefused(ValueError):
    """A decision that cannot be withdrawn (409): a later decision exists, or a retraining consumed it."""


def undo(conn: psycopg.Connection, review_id: int, caller_id: str, is_admin: bool) -> dict[str, Any]:
    """Withdraw a decision: the review row and the report it stored go together, in the caller's
    transaction. Only the reviewer who made it or an admin (PermissionError); only the latest decision
    on its text, and only while no retraining consumed its report (:class:`UndoRefused`)."""
    row = store.review_for_update(conn, review_id)
    if row is None:
        raise LookupError(f"no review decision #{review_id}")
    if row["reviewer"] != caller_id and not is_admin:
        raise PermissionError(f"decision #{review_id} was made by {row['reviewer']}; only they or an admin may undo it")
    if row["latest_id"] != row["id"]:
        raise UndoRefused(
            f"decision #{review_id} is not the latest on its text (#{row['latest_id']} is); undo that first"
        )
    consumed = [f for f in store.review_feedback(conn, review_id) if f["retraining_id"] is not None]
    if consumed:
        raise UndoRefused(
            f"decision #{review_id}'s label (feedback #{consumed[0]['id']}) was already consumed by retraining "
            f"#{consumed[0]['retraining_id']}; it cannot be withdrawn"
        )
    n = store.delete_review(conn, review_id)
    return {
        "id": row["id"],
        "item": str(row["prediction_id"]) if row["prediction_id"] is not None else None,
        "key": row["text_sha256"],
        "decision": row["decision"],
        "feedback_deleted": n,
        "undone": True,
    }
