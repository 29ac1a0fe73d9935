"""`check_class_weight`: a `class_weight` dict checked before any training, or "balanced".

Keras turns `class_weight` into a lookup table as long as its largest key, inside the data
pipeline: a key missing below the largest fails deep in `tf.data` (`indices[1] = 2 is not in
[0, 1)`), a key past the last class is silently ignored, and a class name as key fails with
a `TypeError`. Here every key is checked against the model's classes first.
"""

from __future__ import annotations

import math
import numbers
import warnings

from keras_transfer.data.fit_inputs import UNREAD

MISSING_WEIGHT = 1.0


def _classes(num_classes, class_names):
    if class_names is None:
        return f"the {num_classes} class ids 0 to {num_classes - 1} (no class names known)"
    return "the classes " + ", ".join(f"{i} {name!r}" for i, name in enumerate(class_names))


def _class_id(key, num_classes, class_names):
    """The class id of one key, or None when it names no class."""
    if isinstance(key, numbers.Integral) and not isinstance(key, bool):
        return int(key) if 0 <= int(key) < num_classes else None
    if isinstance(key, str):
        if class_names is not None and key in class_names:
            return class_names.index(key)
        if key.strip().isdigit():  # e.g. JSON object keys: '{"0": 2.0}'
            return _class_id(int(key), num_classes, None)
    return None


def check_class_weight(class_weight, num_classes, class_names=None):
    """`class_weight` for `fit` as a complete `{class_id: weight}` dict, or None.

    Args:
        class_weight: None, or a dict whose keys are class ids (ints in
            `[0, num_classes)`) or class names (str, mapped to ids through `class_names`;
            a string of digits that is not a name is read as an id) and whose values are
            finite numbers > 0.
        num_classes: int, the model's number of outputs.
        class_names: list of str (index = class id), or None when not known.

    Returns:
        None for None; else `{class_id: float}` with one entry for every class id; a class
        without a weight gets `MISSING_WEIGHT` (1.0), said in a `UserWarning` that names it.

    Raises:
        ValueError: not a dict, a key that is no class (the error names it and lists the
            classes), two keys for the same class, or a weight that is not a finite
            number > 0.

    Example:
        >>> check_class_weight({"bees": 2.0}, 2, ["ants", "bees"])  # warns: 'ants' gets 1.0
        {0: 1.0, 1: 2.0}
    """
    if class_weight is None:
        return None
    if not isinstance(class_weight, dict):
        raise ValueError(
            f"`class_weight` must be a dict {{class id or class name: weight}}, got a "
            f"{type(class_weight).__name__}."
        )
    checked = {}
    for key, weight in class_weight.items():
        class_id = _class_id(key, num_classes, class_names)
        if class_id is None:
            raise ValueError(
                f"`class_weight` key {key!r} is not a class of this model; use class ids "
                f"or names among {_classes(num_classes, class_names)}."
            )
        if class_id in checked:
            raise ValueError(
                f"`class_weight` gives class {class_id} two weights (key {key!r} and another "
                "key for the same class); keep one."
            )
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            value = None
        else:
            value = float(weight)
        if value is None or not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"`class_weight`[{key!r}] is {weight!r}; weights must be finite numbers > 0."
            )
        checked[class_id] = value
    missing = [i for i in range(num_classes) if i not in checked]
    if missing:
        shown = ", ".join(
            f"{i} {class_names[i]!r}" if class_names is not None else str(i) for i in missing
        )
        warnings.warn(
            f"`class_weight` has no weight for class(es) {shown}; they get {MISSING_WEIGHT}.",
            UserWarning,
            stacklevel=3,
        )
    return {i: checked.get(i, MISSING_WEIGHT) for i in range(num_classes)}


def check_model_class_weight(model, class_weight, data=None, batch=UNREAD):
    """`check_class_weight` for `model`'s outputs, with the class names the model (or else
    `data`, see `keras_transfer.models.class_names`) carries. `class_weight="balanced"`
    (scikit-learn's term) is computed from the labels of `data` (`balanced_class_weight`).
    `batch`: the first batch of `data` where a check has read it already
    (`label_checks.check_batches` returns it); by default it is read here if needed.

    Raises:
        ValueError: as `check_class_weight`; "balanced" without `data` to count, or another
            string; `data` whose batches carry sample weights (Keras takes `class_weight`
            or sample weights, not both), or a torch `DataLoader`, grain dataset or
            generator (Keras' `fit` takes no `class_weight` with them).
    """
    from keras_transfer.models.class_names import class_names_of, dataset_class_names

    if class_weight is None:
        return None
    _check_no_sample_weights(data, batch)
    num_classes = int(model.output_shape[-1])
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(
                '`class_weight` must be a dict {class id or class name: weight} or "balanced", '
                f"got {class_weight!r}."
            )
        return balanced_class_weight(data, num_classes)
    names = class_names_of(model) or dataset_class_names(data)
    if names is not None and len(names) != num_classes:
        names = None
    return check_class_weight(class_weight, num_classes, names)


def _check_no_sample_weights(data, batch=UNREAD):
    """Refuse, before training, `class_weight` with data Keras' `fit` cannot weight by class:
    batches of `(inputs, labels, sample_weights)` (a `tf.data` element spec, or the first
    batch of a `PyDataset`, grain or `DataLoader`: "You cannot `class_weight` and
    `sample_weight` at the same time"), and torch `DataLoader`s, grain datasets and
    generators ("`class_weight` is not supported for ..."), which Keras refused only in the
    stage that trains through the backbone, after the frozen one."""
    from keras_transfer.data.fit_inputs import first_batch, is_tf_dataset, kind_of

    if data is None:
        return
    if is_tf_dataset(data):
        spec = data.element_spec
        weighted = isinstance(spec, tuple) and len(spec) == 3
        weighted = weighted and type(spec[2]).__name__ != "NoneTensorSpec"  # (x, y, None)
    else:
        kind = kind_of(data)
        if kind in ("torch DataLoader", "Python generator", "iterator") or kind.startswith("grain"):
            raise ValueError(
                f"`class_weight` was given, and Keras' fit does not take it with a {kind}: "
                "give (inputs, labels, sample_weights) batches with each example's class "
                "weight, or a tf.data.Dataset or keras.utils.PyDataset."
            )
        if batch is UNREAD:
            batch = first_batch(data)
        weighted = isinstance(batch, (tuple, list)) and len(batch) == 3 and batch[2] is not None
    if weighted:
        raise ValueError(
            "`class_weight` was given, but `train_ds` gives sample weights too (a third "
            "element): Keras takes one or the other. Multiply each example's class weight "
            "into its sample weight (e.g. with `table = tf.constant([weights[c] for c in "
            "range(num_classes)])`, `.map(lambda x, y, w: (x, y, w * tf.gather(table, "
            "tf.argmax(y, -1))))`), or drop `class_weight`."
        )


def balanced_class_weight(data, num_classes):
    """`{class_id: weight}` for `class_weight="balanced"`: `n / (num_classes * n_c)` from the
    labels of `data` (scikit-learn's rule, `keras_transfer.class_weights`), one pass over it
    (none for a pipeline of ours, which remembers its labels).

    Raises:
        ValueError: `data` that is not a `tf.data.Dataset` of `(inputs, labels)` batches (or
            None); a class without examples.
    """
    from keras_transfer.data.fit_inputs import is_tf_dataset
    from keras_transfer.data.labels import class_weights

    if data is None or not is_tf_dataset(data):
        raise ValueError(
            '`class_weight="balanced"` counts the labels of a tf.data.Dataset of (inputs, '
            "labels) batches; for other data pass a dict, e.g. "
            "`keras_transfer.class_weights(labels)` of your label array."
        )
    return class_weights(data, num_classes)


def fit_class_weight(model, class_weight, data, batch=UNREAD):
    """Before training `model` on `data`: the model takes the class names `data` carries
    when it has none (`class_names.adopt_class_names`), and `class_weight` is checked
    against them (`check_model_class_weight`, with `batch`, the first batch of `data`
    where it was read already). Returns the checked `class_weight`."""
    from keras_transfer.models.class_names import adopt_class_names

    adopt_class_names(model, data)
    return check_model_class_weight(model, class_weight, data, batch)


def command_line_class_weight(args, train_ds, class_names):
    """The `class_weight` of a `keras-transfer train` command, checked before training:
    `--class-weight JSON` (class names or ids as keys), balanced weights from the training
    labels with `--class-weight balanced` (or `--class-weights`, text), or None.

    Raises:
        ValueError: both options, or a bad `--class-weight` (see `check_class_weight`).
    """
    from keras_transfer.data.labels import class_weights

    given, balanced = getattr(args, "class_weight", None), getattr(args, "class_weights", False)
    if given is not None and balanced:
        raise ValueError("Pass --class-weight JSON (or balanced) or --class-weights, not both.")
    if balanced or given == "balanced":
        weights = class_weights(train_ds, len(class_names))
        shown = ", ".join(f"{name} {weights[i]:.3g}" for i, name in enumerate(class_names))
        print(f"Balanced class weights: {shown}")
        return weights
    return check_class_weight(given, len(class_names), class_names)
