"""`tfds_datasets`: TensorFlow Datasets (TFDS) by name as our training pipelines.

A TFDS split is read once into per-example sources (the encoded image bytes as TFDS stores
them, or the texts) and their `ClassLabel` ids; the pipelines are then made by the same code
as those of `image_folder_datasets` and `text_csv_datasets`: same batches, same one-hot
labels, same per-epoch shuffling, and `fine_tune`'s feature caching remakes them over the
cached backbone outputs.
"""

from __future__ import annotations

import functools
import os

import numpy as np

READ_BATCH = 1024  # examples per batch when a split is read into memory


def _builder(name, data_dir, download):
    """The prepared `tfds.core.DatasetBuilder` of `name` (registered, or found in `data_dir`)."""
    import tensorflow_datasets as tfds

    if not isinstance(name, str) or not name.strip():
        raise ValueError(
            f"`name` must be a TFDS dataset name such as 'tf_flowers', got {name!r}; see "
            "https://www.tensorflow.org/datasets/catalog for the catalog."
        )
    if data_dir is not None:
        data_dir = os.fspath(data_dir)
    where = data_dir
    if where is None:
        where = "TFDS' default data_dir ($TFDS_DATA_DIR, else ~/tensorflow_datasets)"
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"No TFDS dataset {name!r}: it is not in the TFDS catalog of tensorflow-datasets "
            f"{tfds.__version__} and not prepared in {where}. Check the name "
            "(https://www.tensorflow.org/datasets/catalog), or pass as `data_dir` (CLI: "
            "--tfds-data-dir) the folder where it was prepared (it holds <name>/<version>/)."
        ) from None
    if builder.is_prepared():
        return builder
    how = (
        f"Prepare it where the data can be downloaded, with `tfds build {name} --data_dir DIR` "
        f"or `tfds.builder({name!r}, data_dir=DIR).download_and_prepare()` (datasets with "
        "manual downloads: put the files in DIR/downloads/manual first), then pass "
        "data_dir=DIR (CLI: --tfds-data-dir DIR)"
    )
    if not download:
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in {where} (looked for {builder.data_dir}) "
            f"and download=False. {how}, or pass download=True."
        )
    print(
        f"TFDS dataset {name!r} is not prepared in {where}: downloading and preparing it "
        f"into {builder.data_dir} (download=False, CLI --tfds-no-download: an error instead)."
    )
    try:
        builder.download_and_prepare()
    except Exception as error:  # no network, a manual download, a failed extraction...
        raise RuntimeError(
            f"TFDS dataset {name!r} is not prepared in {where} (looked for {builder.data_dir}) "
            f"and preparing it failed: {type(error).__name__}: {str(error)[:300]}. {how}."
        ) from error
    return builder


def _keys(builder, input_key, label_key):
    """`(input_key, kind, label_key, class_names)`: kind "image" or "text"."""
    import tensorflow_datasets as tfds

    features = builder.info.features
    names = dict(features.items()) if hasattr(features, "items") else {}
    supervised = builder.info.supervised_keys
    if isinstance(supervised, tuple) and len(supervised) == 2:
        if all(isinstance(key, str) and key in names for key in supervised):
            input_key = input_key or supervised[0]
            label_key = label_key or supervised[1]

    def only(kinds, what):
        found = [key for key, feature in names.items() if isinstance(feature, kinds)]
        if len(found) != 1:
            raise ValueError(
                f"TFDS dataset {builder.name!r} has {len(found)} {what} features among "
                f"{sorted(names)}; pass `{'label_key' if what == 'ClassLabel' else 'input_key'}`"
                " to name the one to use."
            )
        return found[0]

    input_key = input_key or only((tfds.features.Image, tfds.features.Text), "image or text")
    label_key = label_key or only(tfds.features.ClassLabel, "ClassLabel")
    for key, what in ((input_key, "input_key"), (label_key, "label_key")):
        if key not in names:
            raise ValueError(
                f"`{what}`={key!r} is not a feature of TFDS dataset {builder.name!r}; its "
                f"features: {sorted(names)}."
            )
    feature = names[input_key]
    if isinstance(feature, tfds.features.Image):
        kind = "image"
    elif isinstance(feature, tfds.features.Text):
        kind = "text"
    else:
        raise ValueError(
            f"Feature {input_key!r} of TFDS dataset {builder.name!r} is a "
            f"{type(feature).__name__}; keras-transfer trains on an Image or a Text feature."
        )
    if not isinstance(names[label_key], tfds.features.ClassLabel):
        raise ValueError(
            f"Feature {label_key!r} of TFDS dataset {builder.name!r} is a "
            f"{type(names[label_key]).__name__}, not a ClassLabel; pass `label_key`."
        )
    return input_key, kind, label_key, list(names[label_key].names)


def _splits(builder, split, validation_split):
    """`(train_split, val_split or None)` from the `split` argument."""
    available = list(builder.info.splits.keys())
    if split is None:
        if "train" not in available:
            raise ValueError(
                f"TFDS dataset {builder.name!r} has no 'train' split (splits: {available}); "
                "pass `split` (CLI: --tfds-split)."
            )
        val = None
        if validation_split is None:
            val = next((name for name in ("validation", "test") if name in available), None)
        return "train", val
    if isinstance(split, str):
        return split, None
    if (
        isinstance(split, (tuple, list))
        and len(split) == 2
        and all(isinstance(s, str) for s in split)
    ):
        if validation_split is not None:
            raise ValueError(
                f"`split` names a validation split ({split[1]!r}); do not also pass "
                "`validation_split`."
            )
        return split[0], split[1]
    raise ValueError(
        "`split` must be a TFDS split such as 'train' or 'train[:80%]', or (train, validation)"
        f" such as ('train[:80%]', 'train[80%:]'), got {split!r}."
    )


def _read_split(builder, split, input_key, label_key, kind, class_names):
    """`(sources, labels)` of one split in TFDS' order: encoded image bytes (object array)
    or texts (list of str), and int64 class ids."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def unreadable(error):
        return ValueError(
            f"Split {split!r} of TFDS dataset {builder.name!r} cannot be read ({error}). "
            f"Its splits: {list(builder.info.splits.keys())}; slices read as 'train[:80%]', "
            "'train[80%:]', 'train[:1000]', 'train[10:20]' (start before end), "
            "'train+validation'."
        )

    decoders = {input_key: tfds.decode.SkipDecoding()} if kind == "image" else None
    try:
        data = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
    except (ValueError, AssertionError, KeyError) as error:
        raise unreadable(error) from None
    data = data.map(lambda example: (example[input_key], example[label_key]))
    sources, labels = [], []
    try:
        for inputs, ids in data.batch(READ_BATCH).as_numpy_iterator():
            sources.extend(inputs.tolist())
            labels.append(ids)
    except tf.errors.OpError as error:  # e.g. 'train[5:2]': "expected to contain -3 elements"
        reason = error.message.split("}} ")[-1].split(" [Op:")[0][:200]
        raise unreadable(
            f"a slice whose end comes before its start? TensorFlow: {reason}"
        ) from None
    labels = np.concatenate(labels).astype("int64") if labels else np.zeros(0, "int64")
    if not len(labels):
        raise ValueError(f"Split {split!r} of TFDS dataset {builder.name!r} holds no examples.")
    unlabelled = int(((labels < 0) | (labels >= len(class_names))).sum())
    if unlabelled:
        raise ValueError(
            f"Split {split!r} of TFDS dataset {builder.name!r} has {unlabelled} example(s) "
            f"without a class among {class_names} (label -1: unlabelled data); train on a "
            "labelled split."
        )
    if kind == "text":
        return [text.decode("utf-8") for text in sources], labels
    return np.array(sources, dtype=object), labels


def tfds_datasets(
    name,
    *,
    image_size=None,
    split=None,
    data_dir=None,
    batch_size=32,
    validation_split=None,
    seed=1337,
    download=True,
    input_key=None,
    label_key=None,
):
    """Read a TensorFlow Datasets (TFDS) dataset into training and validation `tf.data.Dataset`s.

    Images or texts, whichever the dataset holds: its input is its `supervised_keys` input,
    or its only `tfds.features.Image` / `tfds.features.Text` feature (or `input_key`); its
    labels are its `supervised_keys` label or its only `tfds.features.ClassLabel` (or
    `label_key`), whose names are the class names, in the ClassLabel's id order.

    Each split is read once (in TFDS' order, files not shuffled) and kept in memory as TFDS
    stores it: the encoded images (their JPEG / PNG size: ~220 MB for tf_flowers' 3,670
    images), decoded and resized again in every epoch by the ops of `image_folder_datasets`
    (`image_data.decode_and_resize`), or the texts. The pipelines are made by the code of
    `image_folder_datasets` / `text_csv_datasets`: same batches and labels, same per-epoch
    shuffling, and feature caching in `fine_tune` runs the backbone once over the examples.

    Args:
        name: str, a TFDS name such as "tf_flowers", "imdb_reviews" or "mnist:3.0.1", or
            the name of a dataset prepared in `data_dir` (e.g. by a builder of your own).
        image_size: int or `(height, width)` in pixels: required for images, None for text.
        split: None (default: "train", validated on "validation", else "test", when the
            dataset has one and `validation_split` is None); a split string for training
            alone ("train", "train[:80%]", "train+validation"); or `(train, validation)`
            split strings, e.g. `("train[:80%]", "train[80%:]")`.
        data_dir: folder of prepared TFDS data (it holds `<name>/<version>/`), or None for
            TFDS' default (`$TFDS_DATA_DIR`, else `~/tensorflow_datasets`).
        batch_size: int, default 32.
        validation_split: float in (0, 1) or None: the fraction of the training split held
            out for validation, stratified by class and drawn with `seed` (as in
            `image_folder_datasets`).
        seed: int in [0, 2**32), default 1337: the shuffle and split seed.
        download: bool, default True: download and prepare the dataset into `data_dir`
            when it is not prepared there (without a network, TFDS may take minutes to
            give up); False raises at once instead.
        input_key, label_key: feature names, or None to find them as above.

    Returns:
        `(train_ds, val_ds, class_names)`: datasets of `(inputs, labels)` batches, images
        `(batch, height, width, 3)` float32 in [0, 255] or texts `(batch,)` tf.string;
        labels `(batch, num_classes)` float32 one-hot; the training data reshuffled every
        epoch (under `fine_tune`, epoch e in an order drawn from `(seed, e)`), validation
        data in TFDS' order; `val_ds` None without validation data; `class_names` a list
        of str.

    Raises:
        ValueError: an unknown name (names where it looked), a bad split (lists the
            splits), features that are not found or not of a supported kind, unlabelled or
            empty splits, `image_size` missing for images or given for text, fewer than 2
            classes, a bad argument.
        FileNotFoundError: not prepared and `download=False` (names the folder searched and
            how to prepare it).
        RuntimeError: not prepared and the download or preparation failed (same message).
    """
    from keras_transfer.data import image_data, text_data
    from keras_transfer.data.example_sources import shuffle_seed
    from keras_transfer.data.stratified_split import stratified_split
    from keras_transfer.models.class_names import remember_class_names

    seed = shuffle_seed(seed)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    if validation_split is not None and not (
        isinstance(validation_split, (int, float))
        and not isinstance(validation_split, bool)
        and 0 < validation_split < 1
    ):
        raise ValueError(f"`validation_split` must be a float in (0, 1), got {validation_split!r}.")
    if image_size is not None:
        image_size = image_data._image_size(image_size)
    builder = _builder(name, data_dir, download)
    train_split, val_split = _splits(builder, split, validation_split)
    input_key, kind, label_key, class_names = _keys(builder, input_key, label_key)
    if kind == "image" and image_size is None:
        raise ValueError(
            f"TFDS dataset {name!r} holds images: pass `image_size`, e.g. 224 (CLI: train "
            "it with `keras-transfer train image`)."
        )
    if kind == "text" and image_size is not None:
        raise ValueError(
            f"TFDS dataset {name!r} holds text, not images: `image_size` must be None (CLI: "
            "train it with `keras-transfer train text`)."
        )
    if len(class_names) < 2:
        raise ValueError(
            f"TFDS dataset {name!r}: {len(class_names)} class(es) in {label_key!r}; a "
            "classifier needs at least 2."
        )
    read = functools.partial(
        _read_split, builder, input_key=input_key, label_key=label_key, kind=kind
    )
    sources, labels = read(train_split, class_names=class_names)
    val = None if val_split is None else read(val_split, class_names=class_names)
    if validation_split is not None:
        count = int(validation_split * len(labels))
        if count == 0 or count == len(labels):
            raise ValueError(
                f"`validation_split={validation_split}` of {len(labels)} examples leaves "
                f"{'no validation' if count == 0 else 'no training'} examples; change it."
            )
        where = f"TFDS {name}[{train_split}]"
        kept, held_out = stratified_split(labels, count, seed, class_names, where)
        val = (_take(sources, held_out), labels[held_out])
        sources, labels = _take(sources, kept), labels[kept]
    count = f"{len(labels)} training" + (f" and {len(val[1])} validation" if val else "")
    print(f"Read {count} examples of {len(class_names)} classes from TFDS {builder.name!r}.")
    if kind == "image":
        load = functools.partial(image_data.decode_and_resize, image_size=image_size)
        options = dict(num_classes=len(class_names), batch_size=batch_size, seed=seed)
        train_ds = image_data.dataset(sources, labels, load, shuffle=True, **options)
        val_ds = None if val is None else image_data.dataset(*val, load, shuffle=False, **options)
    else:
        options = dict(num_classes=len(class_names), batch_size=batch_size, seed=seed)
        train_ds = text_data._dataset(sources, labels, shuffle=True, **options)
        val_ds = None if val is None else text_data._dataset(*val, shuffle=False, **options)
    remember_class_names(train_ds, class_names)
    remember_class_names(val_ds, class_names)
    return train_ds, val_ds, class_names


def _take(sources, indices):
    if isinstance(sources, np.ndarray):
        return sources[indices]
    return [sources[i] for i in indices]
