"""The registry of model families, the one place a family is named: ``FAMILIES`` (name -> ``module:Class``,
imported only when used: ``ml.models.family_class``) and ``INLINE_FAMILIES``.

Pure data, no imports: the DAG files' ``families`` params read it at parse time by path, without importing
``ml`` (``plugins/sentiment_dag_defaults.py``: a DAG parse loads no numpy); everything else takes it from
``ml.models``."""

FAMILIES: dict[str, str] = {
    "tfidf_lr": "ml.models.tfidf:TfidfLogReg",
    "cnn": "ml.models.keras_text:TextCNN",
    "bilstm": "ml.models.keras_text:BiLSTM",
    "transformer": "ml.models.transformer:TransformerClassifier",
}

#: the families cheap enough to predict on the API's event loop (a batch of TF-IDF texts takes well under a
#: millisecond: cheaper than a thread hand-off); the others (a transformer: ~20 ms) run in the micro-batcher's
#: worker thread (api/runtime/inference.py)
INLINE_FAMILIES: frozenset[str] = frozenset({"tfidf_lr"})
