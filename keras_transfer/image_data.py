"""`image_folder_datasets`: labelled image folders as `tf.data` pipelines for any backend."""

from __future__ import annotations

import os

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")


def _image_size(image_size):
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    try:
        height, width = image_size
    except (TypeError, ValueError):
        raise ValueError(
            f"`image_size` must be an int or (height, width), got {image_size!r}."
        ) from None
    if not all(isinstance(d, int) and d > 0 for d in (height, width)):
        raise ValueError(f"`image_size` must hold positive ints, got {image_size!r}.")
    return (height, width)


def decode_and_resize(encoded, image_size):
    """Decode one encoded image and resize it as the training pipeline does.

    The same TF ops as `keras.utils.image_dataset_from_directory`: `tf.io.decode_image` with
    3 channels (grayscale and RGBA become RGB; a GIF gives its first frame), then bilinear
    `tf.image.resize` without cropping. Used by the exported serving signature and the CLI's
    `predict`, so served and trained pixels match.

    Args:
        encoded: scalar `tf.string` tensor (JPEG, PNG, GIF or BMP bytes).
        image_size: `(height, width)` in pixels.

    Returns:
        `(height, width, 3)` float32 tensor in [0, 255].
    """
    import tensorflow as tf

    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = tf.image.resize(image, image_size, method="bilinear")
    image.set_shape((*image_size, 3))
    return image


def _class_folders(directory):
    return sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def _image_files(folder):
    """Image files below `folder` (recursively, as Keras indexes them), sorted."""
    return sorted(
        os.path.join(parent, name)
        for parent, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )


def _undecodable(paths):
    """The files among `paths` that TensorFlow cannot decode as images, with the reason."""
    import tensorflow as tf

    bad = []
    for path in paths:
        try:
            tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
            bad.append(f"{path} ({error.message.splitlines()[0][:80]})")
    return bad


def _check_classes(directory, class_names=None):
    """Raise a clear error for a folder that cannot be a labelled image folder.

    Checks the class folders (at least 2; for validation, the training classes) and that
    every class has images and every image decodes, before any training starts.
    """
    found = _class_folders(directory)
    if class_names is None:
        if len(found) < 2:
            raise ValueError(
                f"{directory!r} has {len(found)} class folder(s) ({found}); a classifier "
                "needs at least 2: lay the images out as <dir>/<class_name>/<image>."
            )
        class_names = found
    extra = sorted(set(found) - set(class_names))
    if extra:
        raise ValueError(
            f"Validation folder {directory!r} has classes that the training folder does not: "
            f"{extra}. Training classes: {class_names}. Rename or remove those folders."
        )
    missing = [name for name in class_names if name not in found]
    if missing:
        raise ValueError(
            f"{directory!r} has no folder for the training class(es) {missing}; add "
            f"{directory}/<class>/ with at least one image for each of {class_names}."
        )
    files = {name: _image_files(os.path.join(directory, name)) for name in class_names}
    empty = [name for name, paths in files.items() if not paths]
    if empty:
        raise ValueError(
            f"Class folder(s) {empty} in {directory!r} hold no images "
            f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder(s)."
        )
    bad = _undecodable([path for paths in files.values() for path in paths])
    if bad:
        shown = "\n  ".join(bad[:20]) + ("\n  ..." if len(bad) > 20 else "")
        raise ValueError(
            f"{len(bad)} file(s) in {directory!r} cannot be decoded as images (empty, "
            f"truncated or not an image); remove or replace them:\n  {shown}"
        )
    return class_names


def _load(directory, *, image_size, class_names, seed, validation_split=None, subset=None):
    import keras

    return keras.utils.image_dataset_from_directory(
        directory,
        labels="inferred",
        label_mode="categorical",
        class_names=class_names,
        color_mode="rgb",
        batch_size=None,
        image_size=image_size,
        shuffle=validation_split is not None,
        seed=seed,
        validation_split=validation_split,
        subset=subset,
        interpolation="bilinear",
        verbose=True,
    )


def _finish(dataset, *, batch_size, shuffle, seed, cache):
    import tensorflow as tf

    if cache:
        dataset = dataset.cache()
    if shuffle:
        dataset = dataset.shuffle(1024, seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def image_folder_datasets(
    root, *, image_size, batch_size=32, validation_split=None, seed=1337, cache=True
):
    """Read a labelled image folder into training and validation `tf.data.Dataset`s.

    Layouts (class names are the sub-folder names, sorted):
    - `root/train/<class>/*` with `root/val/<class>/*` (or `root/validation/<class>/*`);
    - `root/train/<class>/*` alone, or `root/<class>/*`: split by `validation_split`, or
      no validation data when `validation_split` is None.

    Images (JPEG, PNG, GIF first frame, BMP) are decoded to RGB (grayscale and RGBA are
    converted) and resized (squashed, bilinear) to `image_size` by
    `keras.utils.image_dataset_from_directory`; the exported serving signature resizes the
    same way. Datasets feed `model.fit` on tensorflow, jax and torch.

    Args:
        root: path of the data folder.
        image_size: int or `(height, width)` in pixels, e.g. 224 or `(224, 224)`.
        batch_size: int, default 32.
        validation_split: float in (0, 1) or None; the fraction of the (training) folder
            held out for validation when there is no `val/` folder.
        seed: int, default 1337: the shuffle and split seed.
        cache: bool, default True: keep the decoded, resized images in memory after the
            first epoch (`height * width * 3 * 4` bytes per image, 0.6 MB at 224x224);
            False decodes every epoch.

    Returns:
        `(train_ds, val_ds, class_names)`: datasets of `(images, labels)` batches, images
        `(batch, height, width, 3)` float32 in [0, 255], labels `(batch, num_classes)`
        float32 one-hot; the training data reshuffled every epoch; `val_ds` is None when
        there is no validation data; `class_names` a list of str.

    Raises:
        FileNotFoundError: `root` does not exist.
        ValueError: fewer than 2 class folders, validation classes unknown to training,
            both a `val/` folder and `validation_split`, a bad argument.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Image folder not found: {root!r}.")
    image_size = _image_size(image_size)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    if validation_split is not None and not 0 < validation_split < 1:
        raise ValueError(f"`validation_split` must be in (0, 1), got {validation_split!r}.")

    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        train_dir = root
    val_dir = next(
        (
            os.path.join(root, name)
            for name in ("val", "validation")
            if train_dir != root and os.path.isdir(os.path.join(root, name))
        ),
        None,
    )
    if val_dir is not None and validation_split is not None:
        raise ValueError(
            f"{root!r} has a validation folder {val_dir!r}; do not also pass `validation_split`."
        )
    class_names = _check_classes(train_dir)
    load = dict(image_size=image_size, class_names=class_names, seed=seed)
    if validation_split is not None:
        train_ds, val_ds = _load(
            train_dir, validation_split=validation_split, subset="both", **load
        )
    else:
        train_ds = _load(train_dir, **load)
        val_ds = None
        if val_dir is not None:
            _check_classes(val_dir, class_names)
            val_ds = _load(val_dir, **load)
    finish = dict(batch_size=batch_size, seed=seed, cache=cache)
    train_ds = _finish(train_ds, shuffle=True, **finish)
    if val_ds is not None:
        val_ds = _finish(val_ds, shuffle=False, **finish)
    return train_ds, val_ds, list(class_names)
