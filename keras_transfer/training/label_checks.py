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
        column = "y" if len(dims) == 1 else "y[:, 0]"  # (batch, 1): one id a row
        raise ValueError(
            f"`{name}` has class-id labels of shape {dims}, and {why} one-hot labels "
            f"(batch, {classes}), float32. Map them with tf.one_hot({column}, {classes}) (or "
            "keras.utils.to_categorical), pass label_mode='categorical' to Keras' "
            "image_dataset_from_directory / text_dataset_from_directory, or use our dataset "
            "functions (image_folder_datasets, text_csv_datasets)."
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


def _one_name(names):
    """The one name in `names`, or None when there are several (or none)."""
    names = [name for name in (names or []) if name]
    return str(names[0]) if len(names) == 1 else None


def keyed_names(model):
    """`(input name, output name)` a batch's dicts may be keyed by: the model's one input
    (its InputLayer's name, which Keras looks dict inputs up by) and one output;
    None where the model has several, or was built on dict inputs (Keras reads those)."""
    import keras

    inputs = None
    try:
        structure = model.input
    except (AttributeError, ValueError):  # a subclassed model: it reads its inputs itself
        structure = {}
    if not isinstance(structure, dict):
        specs = keras.tree.flatten(getattr(model, "input_spec", None))
        inputs = _one_name([getattr(spec, "name", None) for spec in specs])
    return inputs, _one_name(getattr(model, "output_names", None))


def check_not_keyed(model, labels, name="train_ds", tf_data=True):
    """Refuse labels given as a dict (e.g. `(x, {"label": y})`) other than, in `tf.data`,
    one keyed by the name of the model's one output (`keyed_batches` reads that one out;
    Keras' `fit` takes no dict labels from other data for a one-output model).

    Args:
        model: the classifier.
        labels: one batch's labels, or a `tf.data` element spec's.
        name: what the data was passed as, named in the message.
        tf_data: whether the data is a `tf.data.Dataset` (the message may then suggest
            `name.map(...)`).

    Raises:
        ValueError: dict labels with another key, or any dict labels outside `tf.data`.
    """
    if not isinstance(labels, dict) or (tf_data and list(labels) == [keyed_names(model)[1]]):
        return
    keys = sorted(labels)
    fix = f"map each batch to it, e.g. {name}.map(lambda x, y: (x, y[{keys[0]!r}]))"
    raise ValueError(
        f"`{name}` gives its labels as a dict (keys {keys}), and the model has one "
        f"output: {fix if tf_data else 'give the array itself'}."
    )


def check_inputs_keyed(model, inputs, name="train_ds", tf_data=True):
    """Refuse inputs given as a dict without the name of the model's one input (Keras
    looks dict inputs up by it; `keyed_batches` reads `{"image": x}` out).

    Raises:
        ValueError: as above (was a TypeError deep in the feature cache, or Keras' own
            error); the message names `name`, the keys and the input's name.
    """
    key = keyed_names(model)[0]
    if key is None or not isinstance(inputs, dict) or key in inputs:
        return
    keys = sorted(inputs)
    fix = f"the array itself, e.g. {name}.map(lambda x, y: (x[{keys[0]!r}], y))"
    raise ValueError(
        f"`{name}` gives its inputs as a dict (keys {keys}), and the model's one input is "
        f"named {key!r}: key them by {key!r}, or give {fix if tf_data else 'the array itself'}."
    )


def keyed_batches(model, data):
    """`data` with a `tf.data.Dataset`'s inputs (labels) given as a dict keyed by the
    name of the model's one input (output) read out to the tensors themselves, so that
    feature caching and the linear probe read them too; other data is returned as it is.
    The class names the dataset carries are kept.

    Args:
        model: the classifier (`keyed_names` gives the keys read out).
        data: a `tf.data.Dataset` of `(inputs, labels[, sample_weights])` batches, other
            data `fit` takes, or None.

    Returns:
        A `tf.data.Dataset` of the same batches with those dicts replaced by their one
        tensor, or `data` itself when nothing is keyed so. Raises nothing: keys of
        other names are left to `check_batches`.
    """
    from keras_transfer.data.fit_inputs import is_tf_dataset, keyed_by
    from keras_transfer.models.class_names import dataset_class_names, remember_class_names

    if not is_tf_dataset(data) or not isinstance(data.element_spec, tuple):
        return data
    spec = data.element_spec
    keys = [
        key if keyed_by(part, key) else None
        for part, key in zip(spec[:2], keyed_names(model), strict=False)
    ]
    if not any(keys):
        return data

    def plain(*batch):
        return tuple(part[keys[i]] if i < 2 and keys[i] else part for i, part in enumerate(batch))

    import tensorflow as tf

    mapped = data.map(plain, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    names = dataset_class_names(data)
    return remember_class_names(mapped, names) if names is not None else mapped


def check_batches(model, data, name="train_ds", label_smoothing=None):
    """`check_label_shape`, `check_not_keyed` and `check_inputs_keyed` for a
    `tf.data.Dataset` (its element spec), or the first batch of a `PyDataset`, a grain
    `MapDataset` or a torch `DataLoader` over a map-style dataset
    (`fit_inputs.first_batch`), and a clear error for a dataset of single examples or of
    dict elements (TFDS without `as_supervised`); other data (generators, iterable
    datasets) is read as it trains, and left to Keras.

    Returns:
        The first batch it read (for the next check, e.g. `check_model_class_weight`, to
        read it no more), None where there was none, or `fit_inputs.UNREAD` (a
        `tf.data.Dataset`, checked by its element spec).

    Raises:
        ValueError: see `check_label_shape`, `check_not_keyed` and `check_inputs_keyed`;
            a tf.data dataset that is not batched, whose elements are dicts, or that is
            empty (by its cardinality).
    """
    from keras_transfer.data.fit_inputs import UNREAD, first_batch, is_tf_dataset

    batch = UNREAD
    if is_tf_dataset(data):
        spec = data.element_spec
        if isinstance(spec, dict):
            raise ValueError(
                f"`{name}` gives dicts (keys {sorted(spec)}), not (inputs, labels) pairs: "
                f"map them, e.g. {name}.map(lambda e: (e['image'], e['label'])), or load "
                "TFDS data with as_supervised=True (or our tfds_datasets)."
            )
        if int(data.cardinality()) == 0:  # e.g. a .take(0), or a .batch() with drop_remainder
            raise ValueError(_empty(name, "a tf.data.Dataset of 0 batches"))
        if not isinstance(spec, tuple) or len(spec) < 2:
            return batch
        check_not_keyed(model, spec[1], name)
        check_inputs_keyed(model, spec[0], name)
        inputs, labels = (getattr(part, "shape", None) for part in spec[:2])
        if inputs is not None and inputs.rank is not None:
            check_batched(model, tuple(inputs.as_list()), name)
    else:
        batch = first_batch(data)
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            return batch
        check_not_keyed(model, batch[1], name, tf_data=False)
        check_inputs_keyed(model, batch[0], name, tf_data=False)
        inputs = getattr(batch[0], "shape", None)  # not a list or dict of several inputs
        if inputs is not None:
            check_batched(model, tuple(inputs), name, tf_data=False)
        labels = tuple(getattr(batch[1], "shape", None) or np.shape(batch[1]))
    check_label_shape(model, labels, name, label_smoothing)
    return batch


def _empty(name, what):
    """The message for empty data given as the argument `name`."""
    fix = ", or val_ds=None to train without validation" if name == "val_ds" else ""
    return f"`{name}` is empty ({what}): pass data of at least one batch{fix}."


def check_batched(model, inputs, name, tf_data=True):
    """Refuse a dataset of single examples: its inputs' shape (a tuple) one rank short of
    the model's.

    Raises:
        ValueError: as above; the message names `name` and says how to batch it.
    """
    try:
        expected = model.input_shape
    except (AttributeError, ValueError):  # several inputs, or not built
        return
    if not isinstance(expected, tuple):
        return
    if len(inputs) == len(expected) - 1 and len(expected) > 1:
        fix = f"{name}.batch(32)" if tf_data else "give batches, e.g. its .batch(32)"
        raise ValueError(
            f"`{name}` gives single examples of shape {inputs}, and the model takes "
            f"batches {expected}: batch it first, e.g. {fix}."
        )
