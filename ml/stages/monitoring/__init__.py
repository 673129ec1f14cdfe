"""Monitoring: drift of the stored predictions of a period against the champion's reference.

One report = one period (default: the last ``monitoring_hours``):

- **current**: the rows of ``predictions`` (API and batch) of ``settings.model_name`` created in
  the period; above ``monitoring_max_rows`` a deterministic random sample (``md5(id)`` order).
- **reference**: the champion's own predictions on its held-out set (the ``ml.data.splits.split`` test part
  of the snapshot named by the champion run's ``dataset_hash`` tag), at most
  ``monitoring_reference_max_rows`` (stratified sample), computed once per champion version and
  cached as Parquet under ``var/reference/<model>/v<version>/``.
- **columns** (both sides): predicted ``label``, ``p_positive``, text descriptors
  (``text_length``, ``word_count``, ``non_letter_share``, ``oov_share`` against the model's own
  vocabulary, ``n_mentions``, ``n_urls``, ``n_hashtags``) and the raw ``text``.
- **tests** (Evidently's): with at least ``monitoring_small_sample_rows`` rows on both sides,
  effect sizes that do not fire on large samples for trivial differences (normed Wasserstein for
  numeric columns, Jensen-Shannon for the label and the counts, ROC AUC of a reference-vs-current
  text classifier for the raw text); with fewer rows, p-value tests (KS, z, bootstrap of the
  text classifier's AUC) that account for the sample size.
- **verdicts**: prediction drift (label share), probability drift (``p_positive``), text
  descriptors drift (at least ``monitoring_drift_share`` of them drifted), raw-text drift,
  optionally LSA-embedding drift; ``drift_detected`` is any of them.
- **feedback**: the predictions of the period that users gave feedback on (latest per prediction,
  received up to the report). Every prediction reported with another label is certainly wrong;
  the others are counted right, so ``live_accuracy_upper_bound = 1 - reported_wrong / predictions``
  is an upper bound of the live accuracy. **Concept drift** is flagged when even this upper bound
  is below the champion's training-time held-out accuracy (MLflow metric ``accuracy``) by more
  than ``monitoring_accuracy_tolerance`` (with at least ``monitoring_min_rows`` predictions): the
  bound can only overstate accuracy, so this never fires for unreported errors alone.
- **estimate** (``ml.evaluation.estimate``): a label-free accuracy estimate (CBPE) of the period's
  predictions served by the champion: the mean probability of being right of each prediction
  under an isotonic calibration fitted on the reference (cached as ``calibration.json`` beside it).

Each report is written to ``var/reports/<id>/`` (``report.html`` and ``report.json`` from
Evidently, ``summary.json`` ours) and its summary stored in ``drift_reports``. An empty period is
a stored report with status ``empty``.

The modules: ``period`` (the span, the period's predictions and feedback), ``descriptors`` (text
descriptor columns), ``reference`` (the champion's cached reference), ``drift`` (the Evidently
computation and per-signal metrics), ``wording`` (accuracy statement, verdict, channel digest),
``build`` (``build_report``, the DAG task and ``ml monitor``), ``archive`` (the ``drift_reports`` row,
what the platform did after a report, reading reports back), ``verdict`` (the verdict block that opens
each saved page), ``report_html`` (Evidently's page with its data escaped), ``history`` (the drift
history's charts). This file holds only ``MonitoringError``, shared by them.

Only the predictions of the version that served at the period's end are compared, with that
version's own reference (``build``'s docstring says why); the others are counted as not compared.
"""


class MonitoringError(RuntimeError):
    """A report cannot be built; the message says why."""
