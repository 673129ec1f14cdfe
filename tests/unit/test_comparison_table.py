"""The comparison's table, Markdown, HTML and chart from given rows (no runs)."""

from __future__ import annotations

from ml.stages import compare
from ml.views import comparison


def test_table_markdown_html_chart(tmp_path):
    rows = [
        {
            "family": "tfidf_lr",
            "params": {"C": 1.0},
            "accuracy": 0.80,
            "f1": 0.79,
            "roc_auc": 0.88,
            "inference_ms_per_tweet": 0.03,
            "model_size_mb": 12.0,
            "training_seconds": 4.2,
            "sample_size": 75000,
            "n_trials": 2,
            "val_accuracy": 0.81,
            "run_id": "a",
            "n_test": 20000,
        },
        {
            "family": "cnn",
            "params": {"vocab_size": 20000},
            "accuracy": 0.79,
            "f1": 0.80,
            "roc_auc": 0.87,
            "inference_ms_per_tweet": 0.2,
            "model_size_mb": 8.0,
            "training_seconds": 60.0,
            "sample_size": 5000,
            "n_trials": 2,
            "val_accuracy": 0.78,
            "run_id": "b",
            "n_test": 20000,
            "budget_seconds": 120.0,
            "budget_used_seconds": 118.4,
            "epochs": 1.53,
            "steps": 890,
            "examples_seen": 113920,
            "learning_curve": {
                "url": "http://127.0.0.1:5000/#/experiments/1/runs/b/artifacts/learning_curve.png",
                "artifact_uri": "file:///x/b/artifacts/learning_curve.png",
            },
        },
    ]
    win = compare.choose_winner(rows, "accuracy")
    assert win["family"] == "tfidf_lr"
    md = comparison.to_markdown(rows, win["family"])
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + len(rows)  # header + one row per family
    assert "**tfidf_lr** (winner)" in md and "C=1.0" in md and "75,000" in md
    # the budget: used / given, fractional epochs, steps, examples seen, and the learning-curve link
    assert "| 118 / 120 | 1.53 | 890 | 113,920 |" in md
    assert "[curve](http://127.0.0.1:5000/#/experiments/1/runs/b/artifacts/learning_curve.png)" in md
    html = comparison.to_html(rows, win["family"])
    assert html.count("<tr") == 1 + len(rows) and 'class="winner"' in html
    assert '<a href="http://127.0.0.1:5000/#/experiments/1/runs/b/artifacts/learning_curve.png">curve</a>' in html
    png = comparison.plot_accuracy_vs_latency(rows, tmp_path / "c.png", win["family"])
    assert png.read_bytes()[:4] == b"\x89PNG"
