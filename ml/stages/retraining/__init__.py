"""Feedback-triggered retraining: the trigger (end of ``sentiment_monitoring``) and the stages of
the ``sentiment_retraining`` DAG.

**Trigger** (:func:`.trigger.check_trigger`). Only labels the loop trusts count (:mod:`ml.stages.review`: a
reviewer's accept / relabel, or ``feedback_min_identities`` agreeing API keys, never a text a
reviewer rejected) where they differ from the current champion version's prediction, not yet consumed
by a retraining: one vote per text, each identity capped at ``feedback_max_identity_share`` of the
threshold. While the burst guard (``ml.stages.alerts.burst.evaluate_burst``) sees a rate burst from
several identities (and for its quiet time after) the answer is ``paused_burst`` and nothing is
consumed; one identity's burst only quarantines that identity's reports. The threshold
is ``ceil(retraining_feedback_fraction x n_rows)`` of the champion's training snapshot, the
fraction validated to lie in [0.1%, 1%]. When it is reached, one ``retrainings`` row is written
and the reports are consumed (``retraining_feedback``, primary key on the feedback id) in one
transaction under an advisory lock; ``trigger_key`` (sha256 of the consumed ids) is unique. So
running the trigger twice, or concurrently, never starts two retrainings on the same reports. A
drift report is recorded in the decision; with ``retraining_on_drift`` it triggers on its own
(key ``drift:<report id>``).

**Training set** (:func:`.training_set.prepare`): the champion's snapshot + the reported tweets with their
corrected labels (latest report per prediction) — the reports consumed by this retraining and by
earlier unsuccessful retrainings of the same champion. Every row is a vote: a text present several
times gets the majority label; ties are dropped (as ``ml.data.validation.validate`` does). Stored as a
content-hashed snapshot of kind ``retraining`` whose ``parent_hash`` is the champion's snapshot.

**Held-out set (the choice, and why).** The new snapshot stores its own split (``split.parquet``,
honoured by ``ml.data.splits.split`` everywhere: training, evaluation, comparison, monitoring):

- ``test`` = the parent snapshot's held-out texts, ALL of them, with the PARENT's labels (the
  champion's held-out set, unchanged through a chain of retrainings). A report on one of those texts
  neither votes on its label nor makes it trainable: it stays held out with its original label, so
  the gate sees what the reports changed (a challenger that learnt a reported relabelling loses on
  it). Neither model trained on it, so champion and challenger are compared on the SAME sample; the
  promotion gate (``ml.evaluation.gate``: ``promotion_metric`` with ``retraining_promotion_margin``, default
  ``promotion_margin``, a significant paired win, slices, the golden set) uses it.
- reported tweets outside it are never added to ``test``: they are the champion's errors by
  construction, so adding them would hand the challenger an advantage that says nothing about the
  live population.
- ``excluded`` = a deterministic ``retraining_report_eval_fraction`` (20%, by hash of the text) of
  the reported tweets, held out of training: champion and challenger are both scored on them
  ("did retraining fix this kind of error"; paired, in ``retrainings.gate["reported_eval"]``),
  recorded in ``retrainings.metrics`` and on the MLflow run, but not used to promote (a few hundred hand-picked errors are too small and too biased a
  sample for the decision). The other 80% train; the challenger's accuracy on them is in-sample and
  reported as such.

The modules: ``trigger`` (champion context, threshold, pending reports, ``check_trigger``,
manual requests), ``training_set`` (``prepare``), ``challenger`` (train, evaluate, promote, the
whole run), ``records`` (the ``retrainings`` rows and the loop's status). This file holds only
``DAG_ID`` and ``RetrainingError``, shared by them.
"""

DAG_ID = "sentiment_retraining"


class RetrainingError(RuntimeError):
    pass
