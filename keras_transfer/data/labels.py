"""Balanced class weights from labels: an array, or a `tf.data.Dataset` of labelled batches.

`class_weights` is scikit-learn's "balanced" rule for `model.fit(class_weight=...)` and for
`fine_tune(class_weight="balanced")`, for images and text alike.
"""

from __future__ import annotations

import numpy as np


def class_weights(data, num_classes=None):
    """Balanced class weights for `model.fit(class_weight=...)` on imbalanced data.

    `weight[c] = n_examples / (num_classes * n_examples_of_c)`, scikit-learn's "balanced"
    rule, so that every class contributes equally to the loss.

    Args:
        data: a `tf.data.Dataset` of `(inputs, labels)` batches (e.g. `train_ds`), or an
            array of labels: int class ids `(n,)` or `(n, 1)`, or one-hot `(n, num_classes)`.
        num_classes: int; default from the one-hot width or the largest id + 1.

    Returns:
        dict `{class_id: weight}` of Python floats.

    Raises:
        ValueError: no labels, or a class without examples; a dataset that is infinite,
            whose elements are not `(inputs, labels)` tuples, whose labels are a dict, or
            of single examples with one-hot labels.
    """
    from sklearn.utils.class_weight import compute_class_weight

    if hasattr(data, "as_numpy_iterator"):  # ours give the ids they remember, undecoded
        labels = _dataset_labels(data)
        spec = getattr(data, "element_spec", None)
        shape = getattr(spec[1], "shape", None) if isinstance(spec, tuple) and spec else None
        if num_classes is None and labels.ndim == 1 and shape is not None and shape.rank == 2:
            num_classes = shape[-1] if shape[-1] not in (None, 1) else None  # one-hot width
    else:
        labels = np.asarray(data)
    if labels.ndim == 2 and labels.shape[1] == 1:  # sparse ids as a column (batch, 1)
        labels = labels[:, 0]
    elif labels.ndim == 2:
        num_classes = num_classes or labels.shape[1]
        labels = labels.argmax(-1)
    if labels.size == 0:
        raise ValueError("No labels to compute class weights from.")
    if not np.array_equal(labels, np.round(labels)) or labels.min() < 0:
        raise ValueError(
            "Labels must be int class ids >= 0 or one-hot rows; got values such as "
            f"{labels[(labels != np.round(labels)) | (labels < 0)][:5].tolist()}."
        )
    labels = labels.astype("int64")
    num_classes = num_classes or int(labels.max()) + 1
    if labels.max() >= num_classes:
        raise ValueError(f"Class id {int(labels.max())} is out of range for {num_classes} classes.")
    counts = np.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(
            f"Class id(s) {np.flatnonzero(counts == 0).tolist()} have no examples; balanced "
            "class weights are undefined."
        )
    weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=labels)
    return {i: float(w) for i, w in enumerate(weights)}


def _dataset_labels(data):
    """The labels of every element of a `tf.data.Dataset` of `(inputs, labels)` batches, end
    to end (ids `(n,)`, `(n, 1)` or one-hot `(n, classes)`), or of single examples' ids.
    A pipeline of ours (`image_folder_datasets`, `text_csv_datasets`, TFDS) gives the ids it
    remembers (`example_sources.example_labels`): a streamed image folder is not decoded
    just to read its labels.

    Raises:
        ValueError: see `class_weights`.
    """
    from keras_transfer.data.example_sources import example_labels
    from keras_transfer.data.fit_inputs import check_finite

    known = example_labels(data)
    if known is not None:
        return known
    check_finite(data, "data")
    spec = data.element_spec
    if not isinstance(spec, tuple) or len(spec) < 2:
        raise ValueError(
            "`data` gives no (inputs, labels) tuples (an image-only dataset?): pass labelled "
            "batches, or the label array itself."
        )
    if not hasattr(spec[1], "shape"):
        raise ValueError(
            "`data` gives its labels as a dict or nested structure: pass the label array "
            "itself, or map the dataset to (inputs, labels) pairs."
        )
    shape, dtype = spec[1].shape, spec[1].dtype
    if shape.rank == 1 and dtype.is_floating and shape[0] is not None:
        raise ValueError(
            f"`data` gives labels of shape {tuple(shape)}: one-hot rows of single examples? "
            "Batch the dataset first (e.g. data.batch(32)), or pass the label array itself."
        )
    labels = [np.asarray(batch[1]) for batch in data.as_numpy_iterator()]
    if labels and labels[0].ndim == 0:  # single examples' class ids
        return np.stack(labels)
    return np.concatenate(labels) if labels else np.zeros((0,))
