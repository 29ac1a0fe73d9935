"""Class names that travel with a model and its data, so that none are ever invented.

A model learns its class names from the data (`fine_tune` on datasets from
`image_folder_datasets` / `text_csv_datasets`), from `load_classifier`, or from
`attach_class_names`. A model that knows them keeps them through a plain `model.save(...)`:
they are written into the `.keras` archive as `assets/keras_transfer_class_names.json`, which
`load_classifier` reads (as it reads the entry `save_classifier` writes).
"""

from __future__ import annotations

import json
import os
import warnings

ASSET_FILE = "keras_transfer_class_names.json"
ARCHIVE_ENTRY = f"assets/{ASSET_FILE}"
HOW_TO_ATTACH = (
    "save it with `save_classifier(model, path, class_names)`, call "
    "`keras_transfer.attach_class_names(model, class_names)`, or pass "
    "`class_names=` (the list `image_folder_datasets` / `text_csv_datasets` return)"
)


def _checked(model, class_names):
    names = [str(name) for name in class_names]
    outputs = int(model.output_shape[-1])
    if len(names) != outputs:
        raise ValueError(
            f"{len(names)} class names {names[:10]} for a model with {outputs} outputs."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"The class names {names} repeat a name; each class needs its own.")
    return names


def attach_class_names(model, class_names):
    """Let `model` carry `class_names`, also through `model.save(...)`.

    Args:
        model: a `keras.Model` with `(batch, num_classes)` outputs.
        class_names: list of str, index = class id, one per output.

    Returns:
        `model`, which now answers `class_names_of(model)`.

    Raises:
        ValueError: as many names as outputs are needed, and no name twice.

    Example:
        >>> attach_class_names(model, ["ants", "bees"])
        >>> model.save("model.keras")  # load_classifier("model.keras") gives the names back
    """
    names = _checked(model, class_names)
    original = getattr(type(model), "save_assets", None)

    def save_assets(dir_path):
        if original is not None:
            original(model, dir_path)
        with open(os.path.join(dir_path, ASSET_FILE), "w", encoding="utf-8") as handle:
            json.dump(names, handle, ensure_ascii=False)

    # Plain attributes (not tracked by Keras): `model.save` calls `save_assets` of the model.
    object.__setattr__(model, "_kt_class_names", names)
    object.__setattr__(model, "save_assets", save_assets)
    return model


def class_names_of(model):
    """The class names `model` carries (list of str), or None."""
    names = getattr(model, "_kt_class_names", None)
    return list(names) if names is not None else None


def remember_class_names(dataset, class_names):
    """Note on a dataset (kept by this dataset object only) the class names of its labels."""
    if dataset is not None:
        dataset._kt_class_names = [str(name) for name in class_names]
    return dataset


# tf.data transformations that keep each element's label: a dataset made by one of them from
# a dataset with class names has the same class names (`.map` may change labels: not walked).
_LABEL_KEEPING = {
    "AssertCardinalityDataset",
    "BatchDataset",
    "CacheDataset",
    "FilterDataset",
    "IgnoreErrorsDataset",
    "OptionsDataset",
    "PaddedBatchDataset",
    "ParallelBatchDataset",
    "PrefetchDataset",
    "RepeatDataset",
    "ShardDataset",
    "ShuffleDataset",
    "SkipDataset",
    "TakeDataset",
}


def dataset_class_names(dataset):
    """The class names of `dataset`'s labels, or None: those noted by `remember_class_names`
    (our datasets), else the `class_names` attribute of Keras' own
    `keras.utils.image_dataset_from_directory` / `text_dataset_from_directory`, also through
    `tf.data` steps that keep the labels (`prefetch`, `cache`, `shuffle`, `batch`, `take`,
    ...; not `map`, which may change them)."""
    while dataset is not None:
        for attribute in ("_kt_class_names", "class_names"):
            names = getattr(dataset, attribute, None)
            if isinstance(names, (list, tuple)) and names and all(
                isinstance(name, str) for name in names
            ):
                return list(names)
        if type(dataset).__name__.lstrip("_") not in _LABEL_KEEPING:
            return None
        dataset = getattr(dataset, "_input_dataset", None)
    return None


def _fitting_names(model, dataset):
    """The class names of `dataset` when there are as many as `model` has outputs, else None
    (e.g. `label_mode="binary"`: two names, one output)."""
    found = dataset_class_names(dataset)
    if found is not None and len(found) == int(model.output_shape[-1]):
        return found
    return None


def check_same_class_names(model, dataset, name="train_ds"):
    """Raise when `model` carries class names and `dataset` others (or in another order):
    its outputs would be trained or read under the wrong names.

    Raises:
        ValueError: the two lists differ.
    """
    names, found = class_names_of(model), _fitting_names(model, dataset)
    if names is not None and found is not None and names != found:
        raise ValueError(
            f"{model.name!r} carries the class names {names}, and `{name}` has {found}: "
            "its outputs would be read under the wrong names. Give data whose label ids "
            "follow the model's classes, or, if the data's classes are meant (a model "
            "trained on others before), call `keras_transfer.attach_class_names(model, "
            f"{found})` first."
        )


def adopt_class_names(model, dataset):
    """Attach the class names of `dataset` to `model` when it has none and they fit its outputs.

    Returns:
        The model's class names (list of str) after this, or None when neither knows them.

    Raises:
        ValueError: the model carries other class names than `dataset`
            (`check_same_class_names`).
    """
    check_same_class_names(model, dataset)
    names = class_names_of(model)
    found = _fitting_names(model, dataset)
    if names is None and found is not None:
        attach_class_names(model, found)
        names = found
    return names


def resolve_class_names(model, class_names, what, data=None):
    """`class_names` checked against `model`, else the ones it (or `data`) carries, else
    `"0"`, `"1"`, ... with a warning that says how to attach real ones.

    Args:
        model: the classifier.
        class_names: list of str or None.
        what: what the names label, for the warning (e.g. "the export").
        data: a dataset that may carry class names, or None.

    Raises:
        ValueError: `class_names` of another length than the model's outputs; without
            `class_names`, a model that carries other class names than `data`.
    """
    if class_names is not None:
        return _checked(model, class_names)
    check_same_class_names(model, data, "dataset")
    names = class_names_of(model) or _fitting_names(model, data)
    if names is not None:
        return _checked(model, names)
    count = int(model.output_shape[-1])
    warnings.warn(
        f"{model.name!r} carries no class names, so {what} labels its {count} classes "
        f"'0' to '{count - 1}'. To use the real names, {HOW_TO_ATTACH}.",
        UserWarning,
        stacklevel=3,
    )
    return [str(i) for i in range(count)]


def read_archive_class_names(archive):
    """The class names in an open `.keras` `zipfile.ZipFile` written by `model.save` of a
    model that carried them (`attach_class_names`), or None."""
    if ARCHIVE_ENTRY not in archive.namelist():
        return None
    return json.loads(archive.read(ARCHIVE_ENTRY).decode("utf-8"))
