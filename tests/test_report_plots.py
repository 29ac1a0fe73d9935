import json

import keras
import numpy as np
import pytest
from PIL import Image

from keras_transfer.report import plots
from keras_transfer.report.evaluation import classification_report_from_predictions

HEAD = {"loss": [1.0, 0.7, 0.5], "accuracy": [0.5, 0.7, 0.8], "val_loss": [0.9, 0.6, 0.55]}
FINETUNE = {"loss": [0.45, 0.35], "accuracy": [0.85, 0.9], "val_loss": [0.5, 0.45]}


def _history(metrics):
    history = keras.callbacks.History()
    history.history = metrics
    return history


def test_training_curves_join_the_stages_and_mark_the_boundary(tmp_path):
    figure = plots.plot_training_curves({"head": _history(HEAD), "finetune": _history(FINETUNE)})
    loss, accuracy = figure.axes
    assert [a.get_title() for a in figure.axes] == ["loss", "accuracy"]
    lines = {line.get_label(): line for line in loss.get_lines()}
    np.testing.assert_array_equal(lines["train (fine-tune)"].get_xdata(), [4, 5])
    np.testing.assert_array_equal(lines["val (head)"].get_ydata(), HEAD["val_loss"])
    boundaries = [line for line in loss.get_lines() if line.get_label().startswith("_")]
    assert [line.get_xdata()[0] for line in boundaries] == [3.5]
    assert len(accuracy.get_lines()) == 3  # two train lines and the boundary; no val accuracy
    # The CLI's history.json gives the same plot.
    path = tmp_path / "history.json"
    path.write_text(json.dumps({"head": HEAD, "finetune": FINETUNE}))
    png = tmp_path / "curves.png"
    again = plots.plot_training_curves(str(path), path=png)
    assert [line.get_label() for line in again.axes[0].get_lines()] == list(lines)
    with Image.open(png) as image:
        assert image.size == (1100, 380)
    single = plots.plot_training_curves(_history(HEAD))
    assert len(single.axes[0].get_lines()) == 2
    with pytest.raises(ValueError, match="non-numeric"):
        plots.plot_training_curves({"head": {"loss": ["x"]}})


def test_confusion_matrix_and_per_class_bars_for_fifty_classes(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"class_{i}" for i in range(50)]
    y_true = rng.integers(0, 50, 1000)
    y_pred = np.where(rng.random(1000) < 0.7, y_true, rng.integers(0, 50, 1000))
    report = classification_report_from_predictions(y_true, y_pred, names)
    figure = plots.plot_confusion_matrix(report, path=tmp_path / "cm.png")
    counts, normalized = figure.axes[:2]  # then the two colour bars
    assert [t.get_text() for t in counts.get_yticklabels()] == names
    assert [t.get_text() for t in normalized.get_xticklabels()] == names
    np.testing.assert_array_equal(counts.images[0].get_array(), report.confusion_matrix)
    np.testing.assert_allclose(normalized.images[0].get_array().sum(1), 1)
    assert not counts.texts  # too many cells to write numbers in
    bars = plots.plot_per_class_metrics(report.to_dict(), path=tmp_path / "bars.png")
    assert len(bars.axes[0].patches) == 150
    assert bars.axes[0].get_yticklabels()[3].get_text() == f"class_3 (n={report.support[3]})"
    for name in ("cm.png", "bars.png"):
        with Image.open(tmp_path / name) as image:
            assert min(image.size) > 300


def test_small_confusion_matrix_writes_its_cells():
    figure = plots.plot_confusion_matrix([[2, 1], [0, 3]], class_names=["ants", "bees"])
    assert [t.get_text() for t in figure.axes[0].texts] == ["2", "1", "0", "3"]
    assert [t.get_text() for t in figure.axes[1].texts] == ["0.67", "0.33", "0.00", "1.00"]
    with pytest.raises(ValueError, match=r"expected \(3, 3\)"):
        plots.plot_confusion_matrix([[2, 1], [0, 3]], class_names=["a", "b", "c"])
