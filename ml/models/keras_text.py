"""Keras text classifiers that take raw strings: the ``cnn`` and ``bilstm`` families.

The whole pipeline lives in one Keras model, so a saved model needs nothing but its file:
``keras.Input(shape=(), dtype="string")`` -> ``TextVectorization`` (vocabulary learnt on the
training texts) -> ``Embedding`` -> family body -> ``Dense(1, sigmoid)`` = P(positive).

Embeddings start from scratch (``embeddings="scratch"``), from word2vec trained with gensim
on the training texts themselves (``"word2vec"``, the default), or from a GloVe/word2vec text
file (``embeddings="/path/to/vectors.txt"``; its dimension wins over ``embedding_dim``).
Training runs against a budget (``fit(..., validation=, budget_seconds=)``): the whole training
pool streams through tf.data (reshuffled every pass); every ``eval_every`` steps the model is scored
on the validation split (the learning curve), training stops when the wall-time budget, ``max_steps``,
``epochs`` passes or ``patience`` validations without improvement are spent, and the best weights
(by validation accuracy) are restored. Without a validation split, one is carved from the texts.
Text preprocessing (none | basic | lemma) runs in Python before the model, as in every family.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import warnings

import numpy as np
from sklearn.model_selection import train_test_split

from ml.features import preprocess
from ml.models.base import Budget, SentimentModel, Validation, new_history, seed_everything

log = logging.getLogger(__name__)
logging.getLogger("gensim").setLevel(logging.WARNING)  # its per-epoch lifecycle lines drown the log

MODEL_FILE = "model.keras"
HISTORY_FILE = "training.json"
PREDICT_CHUNK = 2048


def _keras() -> tuple[Any, Any]:
    import keras
    import tensorflow as tf

    return keras, tf


def load_vectors(path: str | Path, vocabulary: Sequence[str]) -> tuple[dict[str, np.ndarray], int]:
    """Vectors of the words in ``vocabulary`` from a GloVe (no header) or word2vec text file
    (``count dim`` header line). Only the needed rows are kept, so memory stays bounded."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"embeddings file not found: {path}")
    wanted = set(vocabulary)
    found: dict[str, np.ndarray] = {}
    dim = 0
    with path.open(encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            parts = line.rstrip().split(" ")
            if i == 0 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue  # word2vec header
            if len(parts) < 3:
                continue
            word, values = parts[0], parts[1:]
            dim = dim or len(values)
            if word in wanted and len(values) == dim:
                found[word] = np.asarray(values, dtype=np.float32)
    if not dim:
        raise ValueError(f"no vectors read from {path}")
    return found, dim


class KerasTextModel(SentimentModel):
    """Shared machinery of the Keras families; subclasses define :meth:`_body`."""

    requirements: ClassVar[tuple[str, ...]] = ("tensorflow-cpu", "keras")
    mask_zero: ClassVar[bool] = False

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {
            "preprocess": "basic",  # none | basic | lemma
            "vocab_size": 20_000,  # TextVectorization max_tokens (incl. padding and OOV)
            "max_len": 40,  # tokens per tweet (tweets are <= 140 chars)
            "embedding_dim": 100,
            "embeddings": "word2vec",  # scratch | word2vec (trained on the corpus) | path to a vectors file
            "trainable_embeddings": True,
            "w2v_epochs": 5,
            "hidden": 64,
            "dropout": 0.3,
            "learning_rate": 1e-3,
            "batch_size": 128,
            "epochs": 3,  # at most this many passes over the training texts
            "max_steps": 0,  # at most this many steps (0: no limit); the time budget is fit's
            "eval_every": 0,  # validate every N steps (0: once per pass)
            "eval_max_rows": 2000,  # validate on at most this many rows of the validation split
            "patience": 1,  # early stopping: validations without a better accuracy
            "validation_fraction": 0.1,  # carved from the texts when fit gets no validation split
            "seed": 42,
            "log_every": 100,  # log progress every N steps
        }

    # ---------------------------------------------------------------- model
    def _body(self, x: Any) -> Any:  # pragma: no cover - abstract in spirit
        raise NotImplementedError

    def _embedding_matrix(self, vocab: list[str], sequences: np.ndarray) -> np.ndarray | None:
        p = self.params
        mode = str(p["embeddings"])
        dim = int(p["embedding_dim"])
        if mode == "scratch":
            return None
        rng = np.random.default_rng(int(p["seed"]))
        t0 = time.perf_counter()
        if mode == "word2vec":
            from gensim.models import Word2Vec

            # sentences of token ids, exactly as TextVectorization tokenised them (no mismatch)
            sentences = [[str(i) for i in row if i > 1] for row in sequences]
            w2v = Word2Vec(
                sentences=sentences,
                vector_size=dim,
                window=5,
                min_count=1,
                workers=1,
                seed=int(p["seed"]),
                epochs=int(p["w2v_epochs"]),
            )
            matrix = rng.normal(0, 0.05, (len(vocab), dim)).astype(np.float32)
            hits = 0
            for i in range(2, len(vocab)):
                if str(i) in w2v.wv:
                    matrix[i] = w2v.wv[str(i)]
                    hits += 1
            log.info(
                "word2vec on %s training tweets: %s of %s words in %.1fs",
                f"{len(sentences):,}",
                f"{hits:,}",
                f"{len(vocab):,}",
                time.perf_counter() - t0,
            )
        else:
            vectors, file_dim = load_vectors(mode, vocab)
            if file_dim != dim:
                log.info("embeddings file has dimension %d: embedding_dim %d -> %d", file_dim, dim, file_dim)
                self.params["embedding_dim"] = dim = file_dim
            matrix = rng.normal(0, 0.05, (len(vocab), dim)).astype(np.float32)
            for i, w in enumerate(vocab):
                if w in vectors:
                    matrix[i] = vectors[w]
            log.info("pretrained vectors %s: %s of %s words found", mode, f"{len(vectors):,}", f"{len(vocab):,}")
        matrix[0] = 0.0  # padding
        return matrix

    def _build(self, vectorizer: Any, matrix: np.ndarray | None) -> Any:
        keras, _ = _keras()
        from keras import layers

        p = self.params
        vocab_size = vectorizer.vocabulary_size()
        inp = keras.Input(shape=(), dtype="string", name="text")
        x = vectorizer(inp)
        embedding = layers.Embedding(
            vocab_size,
            int(p["embedding_dim"]),
            mask_zero=self.mask_zero,
            trainable=bool(p["trainable_embeddings"]) or matrix is None,
            name="embedding",
        )
        x = embedding(x)
        x = self._body(x)
        out = layers.Dense(1, activation="sigmoid", name="p_positive")(x)
        model = keras.Model(inp, out, name=self.family)
        if matrix is not None:
            embedding.set_weights([matrix])
        model.compile(
            optimizer=keras.optimizers.Adam(float(p["learning_rate"])), loss="binary_crossentropy", metrics=["accuracy"]
        )
        return model

    # ---------------------------------------------------------------- fit
    def fit(
        self,
        texts: Sequence[str],
        labels: Sequence[int] | np.ndarray,
        validation: Validation | None = None,
        budget_seconds: float | None = None,
    ) -> KerasTextModel:
        """Train on all of ``texts`` (streamed through tf.data, reshuffled every pass) until the budget
        (``budget_seconds`` wall time, ``max_steps``), ``epochs`` passes, or ``patience`` evaluations
        without a better validation accuracy; evaluates every ``eval_every`` steps on (at most
        ``eval_max_rows`` of) the validation split and keeps the best weights."""
        p = self.params
        budget = Budget(budget_seconds, int(p["max_steps"]) or None)  # the clock starts here: all of fit counts
        keras, tf = _keras()
        y = self._check_labels(labels, np.float32)
        seed = int(p["seed"])
        seed_everything(seed)
        x = np.asarray(preprocess(texts, p["preprocess"]), dtype=object)
        if validation is not None:
            x_val = np.asarray(preprocess(list(validation[0]), p["preprocess"]), dtype=object)
            y_val = np.asarray(validation[1], dtype=np.float32)
        else:
            idx_train, idx_val = np.arange(len(x)), np.array([], dtype=int)
            frac = float(p["validation_fraction"])
            if frac > 0 and len(x) >= 20:
                idx_train, idx_val = train_test_split(np.arange(len(x)), test_size=frac, random_state=seed, stratify=y)
            x_val, y_val = x[idx_val], y[idx_val]
            x, y = x[idx_train], y[idx_train]
        cap = int(p["eval_max_rows"])
        if cap and len(x_val) > cap:  # a fixed random subset: cheap evaluations, the same every time
            keep = np.sort(np.random.default_rng(seed).choice(len(x_val), cap, replace=False))
            x_val, y_val = x_val[keep], y_val[keep]
        t0 = time.perf_counter()
        vectorizer = keras.layers.TextVectorization(
            max_tokens=int(p["vocab_size"]), output_sequence_length=int(p["max_len"]), name="vectorize"
        )
        vectorizer.adapt(tf.data.Dataset.from_tensor_slices(tf.constant(x.tolist())).batch(4096))
        vocab = vectorizer.get_vocabulary()
        log.info(
            "%s: vocabulary of %s tokens from %s tweets (%.1fs)",
            self.family,
            f"{len(vocab):,}",
            f"{len(x):,}",
            time.perf_counter() - t0,
        )
        matrix = None
        if p["embeddings"] != "scratch":
            seqs = vectorizer(tf.constant(x.tolist())).numpy()
            matrix = self._embedding_matrix(vocab, seqs)
        seed_everything(seed)
        model = self._build(vectorizer, matrix)

        bs = int(p["batch_size"])
        steps_per_epoch = -(-len(x) // bs)
        max_steps = steps_per_epoch * int(p["epochs"])
        if budget.steps:
            max_steps = min(max_steps, budget.steps)
        eval_every = int(p["eval_every"]) or steps_per_epoch
        eval_every = max(1, min(eval_every, max_steps))
        train_ds = (
            tf.data.Dataset.from_tensor_slices((tf.constant(x.tolist()), y))
            .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
            .batch(bs)
            .repeat()
            .prefetch(2)
        )
        history = new_history(len(x), len(x_val), budget)
        watch = _BudgetWatch(
            self.family,
            history,
            budget,
            max_steps,
            steps_per_epoch,
            len(x),
            bs,
            int(p["patience"]),
            int(p["log_every"]),
        )
        val_ds = None
        if len(x_val):
            val_ds = tf.data.Dataset.from_tensor_slices((tf.constant(x_val.tolist()), y_val)).batch(bs * 4)
        log.info(
            "%s: training on %s tweets (%s validation), %d steps a pass, up to %d steps (%s epochs), "
            "budget %s, validation every %d steps",
            self.family,
            f"{len(x):,}",
            f"{len(x_val):,}",
            steps_per_epoch,
            max_steps,
            p["epochs"],
            f"{budget.seconds:.0f}s ({budget.left():.0f}s left)" if budget.seconds else "none",
            eval_every,
        )

        with warnings.catch_warnings():  # "shuffle=True ... ignored": the dataset is shuffled above
            warnings.simplefilter("ignore", UserWarning)
            model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=-(-max_steps // eval_every),
                steps_per_epoch=eval_every,
                verbose=0,
                callbacks=[watch.callback()],
            )
        watch.finish(model)
        self.model_ = model
        self._serve = None
        history["seconds"] = round(budget.elapsed(), 3)
        self.history_ = history
        log.info(
            "%s: stopped (%s) after %d steps = %.2f epochs, %s examples, %.1fs; best step %s (val acc %s)",
            self.family,
            history["stopped"],
            history["steps"],
            history["epochs"],
            f"{history['examples_seen']:,}",
            history["seconds"],
            history["best_step"],
            history["best_val_accuracy"],
        )
        return self

    # ---------------------------------------------------------------- predict
    def _serving_fn(self) -> Any:
        if getattr(self, "_serve", None) is None:
            _, tf = _keras()
            model = self.model_

            @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], reduce_retracing=True)
            def serve(x: Any) -> Any:
                return model(x, training=False)

            self._serve = serve
        return self._serve

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        _, tf = _keras()
        prepped = preprocess(texts, self.params["preprocess"])
        if not prepped:
            return np.zeros((0, 2))
        serve = self._serving_fn()
        # Keras wants a tf string tensor here: a NumPy object array fails
        out = [
            serve(tf.constant(prepped[i : i + PREDICT_CHUNK])).numpy().reshape(-1)
            for i in range(0, len(prepped), PREDICT_CHUNK)
        ]
        p = np.concatenate(out).astype(np.float64)
        return np.column_stack([1.0 - p, p])

    # ---------------------------------------------------------------- persistence
    def _save(self, path: Path) -> None:
        self.model_.save(path / MODEL_FILE)
        (path / HISTORY_FILE).write_text(json.dumps(getattr(self, "history_", {}), indent=2))

    def _load(self, path: Path) -> None:
        keras, _ = _keras()
        self.model_ = keras.models.load_model(path / MODEL_FILE, compile=False)
        self._serve = None
        hist = path / HISTORY_FILE
        self.history_ = json.loads(hist.read_text()) if hist.exists() else {}


class _BudgetWatch:
    """Keras fit in chunks of ``eval_every`` steps ("epochs" to Keras): counts steps and examples,
    stops when the budget, the step limit or the patience is spent, records the learning curve and
    keeps the best weights (by validation accuracy)."""

    def __init__(
        self,
        name: str,
        history: dict[str, Any],
        budget: Budget,
        max_steps: int,
        steps_per_epoch: int,
        n_train: int,
        batch_size: int,
        patience: int,
        log_every: int,
    ) -> None:
        self.name, self.h, self.budget, self.max_steps = name, history, budget, max_steps
        self.spe, self.n, self.bs = steps_per_epoch, n_train, batch_size
        self.patience, self.log_every = patience, log_every
        self.step, self.bad, self.best, self.best_weights = 0, 0, -1.0, None
        self.eval_seconds = 0.0  # how long the last validation took: kept in reserve before the budget ends
        self.stopped: str | None = None

    def examples(self) -> int:
        full, part = divmod(self.step, self.spe)
        return full * self.n + min(part * self.bs, self.n)

    def callback(self) -> Any:
        import keras  # the module itself (not _keras()'s value), so that the base class below is a name mypy resolves

        watch = self

        class Watch(keras.callbacks.Callback):
            def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
                watch.step += 1
                if watch.log_every and watch.step % watch.log_every == 0:
                    log.info(
                        "%s step %d/%d (%.2f epochs) loss %.4f, %.0fs",
                        watch.name,
                        watch.step,
                        watch.max_steps,
                        watch.step / watch.spe,
                        float((logs or {}).get("loss", float("nan"))),
                        watch.budget.elapsed(),
                    )
                why = watch.budget.spent(watch.step, reserve=1.25 * watch.eval_seconds)
                if why is None and watch.step >= watch.max_steps:
                    why = "epochs"
                if why:
                    watch.stopped = watch.stopped or why
                    self.model.stop_training = True

            def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
                self._t_eval = time.perf_counter()

            def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
                watch.eval_seconds = time.perf_counter() - self._t_eval

            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                logs = logs or {}
                if "val_accuracy" not in logs:
                    return
                acc, loss = float(logs["val_accuracy"]), float(logs.get("val_loss", float("nan")))
                c = watch.h["curve"]
                c["step"].append(watch.step)
                c["examples"].append(watch.examples())
                c["seconds"].append(round(watch.budget.elapsed(), 2))
                c["val_accuracy"].append(acc)
                c["val_loss"].append(loss)
                log.info(
                    "%s step %d (%.2f epochs, %.0fs): val_acc %.4f val_loss %.4f",
                    watch.name,
                    watch.step,
                    watch.step / watch.spe,
                    watch.budget.elapsed(),
                    acc,
                    loss,
                )
                if acc > watch.best:
                    watch.best, watch.bad = acc, 0
                    watch.best_weights = self.model.get_weights()
                    watch.h["best_step"], watch.h["best_val_accuracy"] = watch.step, acc
                else:
                    watch.bad += 1
                    if watch.patience and watch.bad >= watch.patience and not self.model.stop_training:
                        watch.stopped = watch.stopped or "patience"
                        self.model.stop_training = True
                if not self.model.stop_training:  # the budget may be spent by this validation itself
                    why = watch.budget.spent(watch.step, reserve=0.0)
                    if why:
                        watch.stopped = watch.stopped or why
                        self.model.stop_training = True

        return Watch()

    def finish(self, model: Any) -> None:
        if self.best_weights is not None:
            model.set_weights(self.best_weights)  # restore the best state seen on validation
        self.h.update(
            steps=self.step,
            epochs=round(self.step / self.spe, 3),
            examples_seen=self.examples(),
            stopped=self.stopped or "epochs",
        )


class TextCNN(KerasTextModel):
    """Embedding -> two Conv1D -> global max pooling -> dense -> P(positive)."""

    family = "cnn"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {**super().default_params(), "filters": 128, "kernel_size": 3}

    def _body(self, x: Any) -> Any:
        from keras import layers

        p = self.params
        k, f = int(p["kernel_size"]), int(p["filters"])
        x = layers.Conv1D(f, k, padding="same", activation="relu", name="conv1")(x)
        x = layers.Conv1D(f, k, padding="same", activation="relu", name="conv2")(x)
        x = layers.GlobalMaxPooling1D(name="max_pool")(x)
        x = layers.Dropout(float(p["dropout"]))(x)
        x = layers.Dense(int(p["hidden"]), activation="relu", name="dense")(x)
        return layers.Dropout(float(p["dropout"]))(x)


class BiLSTM(KerasTextModel):
    """Embedding (masked) -> two Bidirectional LSTM layers -> dense -> P(positive)."""

    family = "bilstm"
    mask_zero = True

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {**super().default_params(), "lstm_units": 64, "epochs": 2}

    def _body(self, x: Any) -> Any:
        from keras import layers

        p = self.params
        u = int(p["lstm_units"])
        x = layers.Bidirectional(layers.LSTM(u, return_sequences=True), name="bilstm1")(x)
        x = layers.Bidirectional(layers.LSTM(u), name="bilstm2")(x)
        x = layers.Dense(int(p["hidden"]), activation="relu", name="dense")(x)
        return layers.Dropout(float(p["dropout"]))(x)
