"""Hyperparameter search per model family, tracked in MLflow: the middle of the comparison.

1. :func:`ml.stages.search.plan.plan_comparison` checks the request (families, search space,
   sample sizes), opens the parent MLflow run every trial is nested under, and returns the *plan*
   (a small dict that the DAG passes between tasks).
2. :func:`ml.stages.search.family.search_family` runs one family's trials (one DAG task per
   family, mapped) against the family's budget (``budget_seconds`` of wall time per profile,
   shared by its trials): each trial fits on the family's training pool (all of it unless a sample
   size is asked for) with early stopping on the validation split carved from the training split
   (the same rows for every family; the held-out split is never seen), logs its learning curve
   (validation accuracy against steps: MLflow metric ``curve_val_accuracy`` with ``step=``, and
   ``learning_curve.png``) and is scored on that validation split.
   The best trial's model is logged to MLflow as a pyfunc and recorded in ``training_runs``.
3. :func:`ml.stages.search.winners.evaluate_winners` scores every family's winner on the same
   held-out split.

The search spaces live in ``config/search_space.yaml`` (profiles quick and full).

The modules: ``space`` (search spaces, profiles, overrides, the trials' parameter sets, the
selection metric), ``splits`` (validation and held-out splits), ``plan`` (step 1), ``trial`` (one
trial's fit, scores and MLflow run), ``curves`` (learning curves, plots and links logged to
MLflow), ``family`` (step 2: the budgeted search loop and the winner), ``winners`` (step 3). This
file holds only ``SearchSpaceError``, shared by them.
"""


class SearchSpaceError(ValueError):
    """The search space or the comparison request is not usable; the message says why."""
