"""Plots of a run: training curves, confusion matrix and per-class precision / recall / F1.

Every function returns a `matplotlib.figure.Figure` drawn with the headless Agg canvas (no
display, no `pyplot` global state) and saves a PNG when given `path`.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np

STAGE_NAMES = {"head": "head", "finetune": "fine-tune", "train": "train"}


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure, path):
    """Write `figure` to `path` as a PNG (folders created); returns `path`."""
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def png_bytes(figure):
    """The PNG encoding of `figure`, as bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def normalize_histories(histories):
    """The per-stage metric lists of a run, as `{stage: {metric: [float per epoch]}}`.

    Args:
        histories: `fine_tune`'s `{"head": History, "finetune": History}` (a stage may be
            None), a single `keras.callbacks.History`, a `{metric: [values]}` dict, the CLI's
            `history.json` content (`{stage: {metric: [values]}}`) or a path to that file.

    Raises:
        ValueError: anything else, or a metric whose values are not a list of numbers.
    """
    if isinstance(histories, (str, os.PathLike)):
        with open(histories, encoding="utf-8") as handle:
            histories = json.load(handle)
    if hasattr(histories, "history") and isinstance(histories.history, dict):
        histories = {"train": histories.history}
    if not isinstance(histories, dict):
        raise ValueError(
            f"`histories` must be a History, a dict of Histories or metric lists, or a "
            f"history.json path; got {type(histories).__name__}."
        )
    if histories and all(isinstance(v, (list, tuple)) for v in histories.values()):
        histories = {"train": histories}
    stages = {}
    for stage, history in histories.items():
        if history is None:
            continue
        metrics = history.history if hasattr(history, "history") else history
        if not isinstance(metrics, dict):
            raise ValueError(f"Stage {stage!r} of `histories` is not a History or metric dict.")
        try:
            stages[stage] = {k: [float(v) for v in values] for k, values in metrics.items()}
        except (TypeError, ValueError) as error:
            raise ValueError(f"Stage {stage!r} holds a non-numeric metric: {error}") from error
    return stages


def plot_training_curves(histories, path=None):
    """Loss and accuracy per epoch, training and validation, all stages on one axis.

    The stages follow each other along the epoch axis (head epochs, then fine-tuning
    epochs); a dashed vertical line marks where each new stage begins.

    Args:
        histories: anything `normalize_histories` accepts, e.g. `fine_tune`'s return value
            or the path of a run's `history.json`.
        path: optional PNG path to save to.

    Returns:
        A `matplotlib.figure.Figure` with two axes: loss (left) and accuracy (right; absent
        when no accuracy was recorded).

    Example:
    ```python
    histories = keras_transfer.fine_tune(model, train_ds, val_ds)
    plot_training_curves(histories, "curves.png")
    ```
    """
    stages = normalize_histories(histories)
    if not any(stages.values()):
        raise ValueError("`histories` holds no epochs to plot.")
    metrics = [m for m in ("loss", "accuracy") if any(m in h for h in stages.values())]
    figure = _figure(5.5 * len(metrics), 3.8)
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    for axis, metric in zip(axes, metrics, strict=True):
        start = 0
        for index, (stage, history) in enumerate(stages.items()):
            epochs = max((len(v) for v in history.values()), default=0)
            x = np.arange(start + 1, start + epochs + 1)
            label = STAGE_NAMES.get(stage, stage)
            for key, style in ((metric, "-"), (f"val_{metric}", "--")):
                values = history.get(key)
                if values:
                    split = "train" if style == "-" else "val"
                    axis.plot(
                        x[: len(values)],
                        values,
                        style,
                        marker="o",
                        markersize=3,
                        color=f"C{2 * index + (style == '--')}",
                        label=f"{split} ({label})",
                    )
            if index > 0:
                axis.axvline(start + 0.5, color="grey", linestyle=":", linewidth=1.5)
                axis.text(start + 0.6, 0.98, label, transform=axis.get_xaxis_transform(), va="top")
            start += epochs
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
        axis.xaxis.get_major_locator().set_params(integer=True)
    if path is not None:
        save_png(figure, path)
    return figure


def _report_parts(report, class_names=None):
    if hasattr(report, "to_dict"):
        report = report.to_dict()
    if isinstance(report, dict):
        names = class_names or report["class_names"]
        return report, list(names), np.asarray(report["confusion_matrix"], dtype=int)
    matrix = np.asarray(report, dtype=int)
    if class_names is None:
        class_names = [str(i) for i in range(len(matrix))]
    return None, list(class_names), matrix


def plot_confusion_matrix(report, class_names=None, path=None):
    """The confusion matrix as counts and row-normalised (recall per true class), side by side.

    Readable up to about 50 classes: the figure grows with the number of classes, the tick
    labels shrink, and cell values are written only up to 20 classes (colour beyond).

    Args:
        report: a `ClassificationReport`, its `to_dict()` / report.json content, or a
            `(num_classes, num_classes)` int matrix (row = true class, column = predicted).
        class_names: list of str; default: the report's (or 0, 1, ... for a bare matrix).
        path: optional PNG path.

    Returns:
        A `matplotlib.figure.Figure` with two axes: counts, then row fractions in [0, 1].

    Raises:
        ValueError: a matrix that is not square or does not match `class_names`.
    """
    _, names, matrix = _report_parts(report, class_names)
    n = len(names)
    if matrix.ndim != 2 or matrix.shape != (n, n):
        raise ValueError(f"The confusion matrix has shape {matrix.shape}; expected ({n}, {n}).")
    rows = matrix.sum(1, keepdims=True)
    normalized = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    side = min(max(3.2, 0.28 * n + 1.8), 16)
    figure = _figure(2 * side + 1, side + 0.6)
    axes = figure.subplots(1, 2)
    fontsize = max(6.5, min(10, 350 / max(n, 1)))
    for axis, values, title, fmt in (
        (axes[0], matrix, "counts", "d"),
        (axes[1], normalized, "row-normalised (recall)", ".2f"),
    ):
        top = 1.0 if fmt == ".2f" else max(values.max(), 1)
        image = axis.imshow(values, cmap="Blues", vmin=0, vmax=top)
        figure.colorbar(image, ax=axis, shrink=0.8)
        axis.set_title(title)
        axis.set_xlabel("predicted class")
        axis.set_ylabel("true class")
        axis.set_xticks(range(n), names, rotation=90 if n > 6 else 0, fontsize=fontsize)
        axis.set_yticks(range(n), names, fontsize=fontsize)
        if n <= 20:
            threshold = values.max() / 2
            for i in range(n):
                for j in range(n):
                    axis.text(
                        j,
                        i,
                        format(values[i, j], fmt),
                        ha="center",
                        va="center",
                        fontsize=fontsize,
                        color="white" if values[i, j] > threshold else "black",
                    )
    if path is not None:
        save_png(figure, path)
    return figure


def plot_per_class_metrics(report, path=None):
    """Per-class precision, recall and F1 as grouped horizontal bars, support in the labels.

    Args:
        report: a `ClassificationReport` or its `to_dict()` / report.json content.
        path: optional PNG path.

    Returns:
        A `matplotlib.figure.Figure` with one axis, the classes top to bottom.
    """
    data, names, _ = _report_parts(report)
    if data is None:
        raise ValueError("`report` must be a ClassificationReport or its report.json dict.")
    per_class = data["per_class"]
    n = len(names)
    figure = _figure(7, min(max(2.2, 0.32 * n * 1.4 + 1.2), 30))
    axis = figure.subplots()
    y = np.arange(n)
    height = 0.27
    for k, metric in enumerate(("precision", "recall", "f1")):
        values = [per_class[name][metric] for name in names]
        axis.barh(y + (k - 1) * height, values, height, label=metric, color=f"C{k}")
    axis.set_yticks(
        y,
        [f"{name} (n={per_class[name]['support']})" for name in names],
        fontsize=max(7, min(10, 300 / max(n, 1))),
    )
    axis.invert_yaxis()
    axis.set_xlim(0, 1.0)
    axis.set_xlabel("score")
    axis.set_title(f"per-class metrics (accuracy {data['accuracy']:.3f})")
    axis.grid(axis="x", alpha=0.3)
    figure.legend(*axis.get_legend_handles_labels(), loc="outside lower center", ncols=3)
    if path is not None:
        save_png(figure, path)
    return figure
