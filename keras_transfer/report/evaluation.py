"""`evaluate_classifier`: accuracy, per-class precision / recall / F1 and the confusion matrix."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class ClassificationReport:
    """The evaluation of a classifier on a labelled data set.

    Attributes:
        class_names: list of str, index = class id.
        accuracy: float in [0, 1].
        precision, recall, f1: lists of floats in [0, 1], one per class (0 where undefined,
            e.g. a class never predicted).
        support: list of ints, the number of true examples of each class.
        confusion_matrix: `(num_classes, num_classes)` list of lists of ints; row = true
            class, column = predicted class.
        num_examples: int.
    """

    class_names: list
    accuracy: float
    precision: list
    recall: list
    f1: list
    support: list
    confusion_matrix: list
    num_examples: int

    def to_dict(self):
        """A JSON-serialisable dict (plain floats, ints, lists and str)."""
        return {
            "num_examples": self.num_examples,
            "accuracy": self.accuracy,
            "per_class": {
                name: {
                    "precision": self.precision[i],
                    "recall": self.recall[i],
                    "f1": self.f1[i],
                    "support": self.support[i],
                }
                for i, name in enumerate(self.class_names)
            },
            "class_names": list(self.class_names),
            "confusion_matrix": self.confusion_matrix,
        }

    def __str__(self):
        width = max(12, *(len(name) for name in self.class_names)) + 2
        lines = [
            f"accuracy: {self.accuracy:.4f} ({self.num_examples} examples)",
            "",
            f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}",
        ]
        for i, name in enumerate(self.class_names):
            lines.append(
                f"{name:<{width}}{self.precision[i]:>10.4f}{self.recall[i]:>10.4f}"
                f"{self.f1[i]:>10.4f}{self.support[i]:>10d}"
            )
        lines += ["", "confusion matrix (rows: true class, columns: predicted class):"]
        cell = max(6, *(len(str(v)) + 1 for row in self.confusion_matrix for v in row))
        lines.append(" " * width + "".join(f"{i:>{cell}d}" for i in range(len(self.class_names))))
        for i, row in enumerate(self.confusion_matrix):
            label = f"{i} {self.class_names[i]}"
            lines.append(f"{label:<{width}}" + "".join(f"{v:>{cell}d}" for v in row))
        return "\n".join(lines)


def classification_report_from_predictions(y_true, y_pred, class_names):
    """Build a `ClassificationReport` from integer class ids.

    Args:
        y_true, y_pred: 1-D int arrays of class ids in `[0, len(class_names))`.
        class_names: list of str.

    Raises:
        ValueError: empty inputs or lengths that differ.
    """
    from sklearn import metrics

    y_true = np.asarray(y_true).astype(int)
    y_pred = np.asarray(y_pred).astype(int)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(
            f"Need the same, non-zero number of labels and predictions; got {y_true.size} "
            f"and {y_pred.size}."
        )
    labels = list(range(len(class_names)))
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    matrix = metrics.confusion_matrix(y_true, y_pred, labels=labels)
    return ClassificationReport(
        class_names=[str(name) for name in class_names],
        accuracy=float(metrics.accuracy_score(y_true, y_pred)),
        precision=[float(v) for v in precision],
        recall=[float(v) for v in recall],
        f1=[float(v) for v in f1],
        support=[int(v) for v in support],
        confusion_matrix=matrix.astype(int).tolist(),
        num_examples=int(y_true.size),
    )


def predict_labelled(model, dataset):
    """Run `model` over a dataset of `(inputs, one_hot_labels)` batches in one pass: a
    `tf.data.Dataset`, a `keras.utils.PyDataset`, a torch `DataLoader`, a generator or any
    iterable of batches (`fit_inputs.iter_batches`).

    Returns:
        `(probabilities, labels)`: `(n, num_classes)` float32 and `(n,)` int class ids, in
        the dataset's order (one pass, so a shuffled dataset is fine).
    """
    import tensorflow as tf

    from keras_transfer.data.fit_inputs import is_tf_dataset, iter_batches, labels_of
    from keras_transfer.training.label_checks import (
        check_batched,
        check_inputs_keyed,
        check_not_keyed,
    )
    from keras_transfer.training.processes import predict_on_batch

    probabilities, labels = [], []
    for index, batch in enumerate(iter_batches(dataset)):
        inputs, targets = batch[0], batch[1]
        if index == 0:
            check_not_keyed(model, targets, "dataset", is_tf_dataset(dataset))
            check_inputs_keyed(model, inputs, "dataset", is_tf_dataset(dataset))
            check_batched(model, tuple(np.shape(inputs)), "dataset", is_tf_dataset(dataset))
        if isinstance(inputs, tf.Tensor) and inputs.dtype != tf.string:
            inputs = inputs.numpy()
        probabilities.append(np.asarray(predict_on_batch(model, inputs), dtype="float32"))
        labels.append(labels_of(targets))
    if not probabilities:
        raise ValueError("The dataset is empty: nothing to evaluate.")
    return np.concatenate(probabilities), np.concatenate(labels)


def evaluate_classifier(model, dataset, class_names=None):
    """Evaluate a classifier on labelled data.

    Args:
        model: a classifier returning `(batch, num_classes)` probabilities (or logits; only
            the argmax is used).
        dataset: a `tf.data.Dataset`, `keras.utils.PyDataset`, torch `DataLoader`,
            generator or other iterable of `(inputs, labels)` batches, labels
            one-hot `(batch, num_classes)` or int class ids `(batch,)`, e.g. the `val_ds`
            of `image_folder_datasets` or `text_csv_datasets`.
        class_names: list of str, index = class id; default the names the model carries
            (`keras_transfer.models.class_names`) or else the dataset's (from
            `image_folder_datasets` / `text_csv_datasets`); without either, `"0"`, `"1"`,
            ... with a `UserWarning` that says how to attach them.

    Returns:
        A `ClassificationReport`: `.accuracy`, per-class `.precision` / `.recall` / `.f1` /
        `.support`, `.confusion_matrix`; `report.to_dict()` is JSON-able and `str(report)`
        a readable table.

    Raises:
        ValueError: arrays or a tuple as `dataset` (`fit_inputs.check_not_arrays`), a
            dataset of single examples (`label_checks.check_batched`), an empty dataset, a
            model whose number of outputs differs from `len(class_names)`, without
            `class_names` a model that carries other class names than `dataset`
            (`class_names.check_same_class_names`), labels given as a dict of another key
            than the model's output name (`label_checks.check_not_keyed`), or inputs given
            as a dict without the model's input name (`label_checks.check_inputs_keyed`).
    """
    from keras_transfer.data.fit_inputs import check_not_arrays
    from keras_transfer.training.label_checks import keyed_batches

    check_not_arrays(dataset, "dataset")
    if class_names is None:
        from keras_transfer.models.class_names import resolve_class_names

        class_names = resolve_class_names(model, None, "the report", dataset)
    probabilities, labels = predict_labelled(model, keyed_batches(model, dataset))
    if probabilities.shape[-1] != len(class_names):
        raise ValueError(
            f"The model predicts {probabilities.shape[-1]} classes but {len(class_names)} "
            f"class names were given: {list(class_names)}."
        )
    return classification_report_from_predictions(labels, probabilities.argmax(-1), class_names)
