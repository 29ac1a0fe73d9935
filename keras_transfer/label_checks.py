"""Checks of the batches `fine_tune` and `lr_find` are given, against the model and its
loss, before anything trains: a clear error naming the argument and the fix, instead of a
shape mismatch from inside Keras (or a silently wrong head)."""

from __future__ import annotations

import numpy as np

_DEFAULT_LOSS = "CategoricalCrossentropy, compile_classifier's"


def loss_kind(model):
    """`(kind, name)` of `model`'s compiled loss: kind `"categorical"` (one-hot labels),
    `"sparse"` (class ids) or None (a loss of the user's that names neither); an
    uncompiled model counts as `compile_classifier`'s categorical cross-entropy."""
    loss = getattr(model, "loss", None)
    if loss is None:
        return "categorical", _DEFAULT_LOSS
    name = loss if isinstance(loss, str) else getattr(loss, "__name__", type(loss).__name__)
    lowered = str(name).lower()
    if "sparse" in lowered:
        return "sparse", name
    if "categorical" in lowered:
        return "categorical", name
    return None, name


def check_label_shape(model, shape, name="train_ds", label_smoothing=None):
    """Raise a clear ValueError when labels of `shape` cannot meet `model`'s loss.

    Args:
        model: a classifier, output `(batch, num_classes)`, compiled or not.
        shape: the labels' shape, a tuple or `tf.TensorShape` (`None` for unknown sizes;
            an unknown rank is left to Keras).
        name: the argument the labels came from, named in the message.
        label_smoothing: `fine_tune`'s; a smoothed loss is a categorical cross-entropy.

    Raises:
        ValueError: class ids (`(batch,)` or `(batch, 1)`) for a one-hot (categorical)
            loss or with `label_smoothing`; one-hot labels whose width is not the model's
            number of classes; one-hot labels for a sparse loss.
    """
    if shape is None or getattr(shape, "rank", 0) is None:
        return
    dims = tuple(shape.as_list() if hasattr(shape, "as_list") else shape)
    outputs = getattr(model, "output_shape", None)
    if not isinstance(outputs, tuple) or len(outputs) != 2 or len(dims) not in (1, 2):
        return
    classes = outputs[1]
    kind, loss = loss_kind(model)
    ids = len(dims) == 1 or dims[1] == 1
    if ids and (kind == "categorical" or label_smoothing):
        why = (
            "`label_smoothing` makes the loss a categorical cross-entropy, which takes"
            if label_smoothing and kind != "categorical"
            else f"the model's loss ({loss}) takes"
        )
        raise ValueError(
            f"`{name}` has class-id labels of shape {dims}, and {why} one-hot labels "
            f"(batch, {classes}), float32. Map them with tf.one_hot(y, {classes}) (or "
            "keras.utils.to_categorical), or use our dataset functions "
            "(image_folder_datasets, text_csv_datasets)."
        )
    if not ids and dims[1] is not None and kind == "categorical" and dims[1] != classes:
        raise ValueError(
            f"`{name}` has one-hot labels of {dims[1]} columns, and the model has "
            f"{classes} classes: build the model with num_classes={dims[1]}, or encode "
            f"the labels with {classes} columns."
        )
    if not ids and dims[1] is not None and kind == "sparse":
        raise ValueError(
            f"`{name}` has one-hot labels of {dims[1]} columns, and the model's loss "
            f"({loss}) takes class ids (batch,): map them with tf.argmax(y, -1), or "
            "compile the model with a categorical loss (compile_classifier)."
        )


def check_not_keyed(model, inputs, labels, name="train_ds", tf_data=True):
    """Refuse inputs or labels given as a dict (e.g. `({"image": x}, {"label": y})`, as
    TFDS and `from_tensor_slices` of dicts give them) to a model that takes one tensor
    and gives one: Keras 3's `fit` does not read them out by name either.

    Args:
        model: the classifier; one built on dict inputs (`model.input` a dict, as
            KerasHub's text backbones) takes dict inputs.
        inputs, labels: one batch's parts, or a `tf.data` element spec's.
        name: what the data was passed as, named in the message.
        tf_data: whether the message may suggest `name.map(...)`.

    Raises:
        ValueError: dict inputs for a model built on one tensor, or dict labels.
    """
    for part, what in ((inputs, "inputs"), (labels, "labels")):
        if not isinstance(part, dict):
            continue
        if what == "inputs" and isinstance(getattr(model, "input", None), dict):
            continue
        keys = sorted(part)
        example = "x[key], y" if what == "inputs" else "x, y[key]"
        fix = (
            f"map each batch to it, e.g. {name}.map(lambda x, y: ({example}))"
            if tf_data
            else "give the array itself"
        )
        raise ValueError(
            f"`{name}` gives its {what} as a dict (keys {keys}), and the model "
            f"{'takes one tensor' if what == 'inputs' else 'has one output'}: {fix}."
        )


def check_batches(model, data, name="train_ds", label_smoothing=None):
    """`check_label_shape` and `check_not_keyed` for a `tf.data.Dataset` (its element
    spec), a `PyDataset`, a torch `DataLoader` or a grain dataset (their first batch), and a
    clear error for a dataset of single examples; a one-shot generator or iterator is read
    as it trains, and left to Keras.

    Raises:
        ValueError: see `check_label_shape` and `check_not_keyed`; a tf.data dataset
            that is not batched.
    """
    import keras

    from keras_transfer.fit_inputs import is_tf_dataset, iter_batches, readable_again

    if is_tf_dataset(data):
        spec = data.element_spec
        if not isinstance(spec, tuple) or len(spec) < 2:
            return
        check_not_keyed(model, spec[0], spec[1], name)
        inputs, labels = (getattr(part, "shape", None) for part in spec[:2])
        _check_batched(model, inputs, name)
    elif data is not None and readable_again(data):  # read again later: peek at batch 0
        pydataset = isinstance(data, keras.utils.PyDataset)
        batch = data[0] if pydataset else next(iter(iter_batches(data)), None)
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            return
        check_not_keyed(model, batch[0], batch[1], name, tf_data=False)
        labels = np.shape(batch[1])
    else:
        return
    check_label_shape(model, labels, name, label_smoothing)


def _check_batched(model, inputs, name):
    """A dataset of single examples (its inputs one rank short of the model's)."""
    try:
        expected = model.input_shape
    except (AttributeError, ValueError):  # several inputs, or not built
        return
    if not isinstance(expected, tuple) or inputs is None or inputs.rank is None:
        return
    if inputs.rank == len(expected) - 1 and len(expected) > 1:
        raise ValueError(
            f"`{name}` gives single examples of shape {tuple(inputs.as_list())}, and the "
            f"model takes batches {expected}: batch it first, e.g. {name}.batch(32)."
        )
