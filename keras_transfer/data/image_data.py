"""`image_folder_datasets`: labelled image folders as `tf.data` pipelines for any backend.

Files are listed and checked by `image_files`, and read by the pipelines of
`image_pipeline`; the names that other modules use are importable from here too.
"""

from __future__ import annotations

import os

# Some names are imported here for other modules (the CLI, export, benchmarks) to use.
from keras_transfer.data.image_files import (  # noqa: F401
    IMAGE_EXTENSIONS,
    check_files,
    check_folder,
    decode_error_reason,
    file_system_paths,
    list_folders,
    printable_name,
    quoted,
    split_folders,
    supported,
    usable_images,
)
from keras_transfer.data.image_pipeline import (  # noqa: F401
    CACHE_BUDGET_BYTES,
    cache_in_memory,
    dataset,
    decode_and_resize,
    decode_images,
    file_loader,
    memory_loader,
)


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


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")


def _index(directories, class_names=None):
    """`(listed, bad)`: the folders' class files (`list_folders`) and `{path: reason}` for
    the files of a supported format that cannot be used (`check_files`)."""
    listed = list_folders(directories, class_names)
    everything = [path for _, _, files in listed for paths in files.values() for path in paths]
    return listed, check_files([path for path in everything if supported(path)])


def evaluation_dataset(directory, *, image_size, class_names, batch_size=32):
    """One labelled image folder, `directory/<class>/*`, as a dataset in file order, to
    score a trained model on (the CLI's `evaluate`).

    The folder is read as it is (no `train/` / `val/` layout; a class may be called
    "train"), with the checks and skipping of `image_folder_datasets`; the files are
    streamed (decoded when the dataset is read, not kept in memory).

    Args:
        directory: path of the folder.
        image_size: int or `(height, width)` in pixels: the model's input size.
        class_names: the model's classes, in its label order; `directory` must have a
            folder for each and no other.
        batch_size: int, default 32.

    Returns:
        A `tf.data.Dataset` of `(images, labels)` batches: images `(batch, height, width,
        3)` float32 whole numbers in [0, 255], labels `(batch, len(class_names))` float32
        one-hot.

    Raises:
        FileNotFoundError: `directory` does not exist.
        NotADirectoryError: `directory` is a file.
        ValueError: a class folder is missing or extra, a class has no usable image, a bad
            argument.
    """
    import numpy as np

    directory = os.fsdecode(directory)  # str, bytes or a path-like
    check_folder(directory)
    image_size = _image_size(image_size)
    _check_batch_size(batch_size)
    listed, bad = _index([directory], list(class_names))
    ((paths, labels, class_names),) = usable_images(listed, bad)
    options = dict(num_classes=len(class_names), batch_size=batch_size, seed=0)
    labels = np.asarray(labels, "int32")
    return dataset(
        file_system_paths(paths), labels, file_loader(image_size), shuffle=False, **options
    )


def image_folder_datasets(
    root, *, image_size, batch_size=32, validation_split=None, seed=1337, cache="auto"
):
    """Read a labelled image folder into training and validation `tf.data.Dataset`s.

    Layouts (class names are the sub-folder names, sorted; images may sit in nested folders
    below a class folder):
    - `root/train/<class>/*` with `root/val/<class>/*` (or `root/validation/<class>/*`);
    - `root/train/<class>/*` alone, or `root/<class>/*`: split by `validation_split`, or
      no validation data when `validation_split` is None.

    The files are listed and checked without decoding them: each file's first and last
    bytes are read, and only a file that does not look like a whole JPEG, PNG, GIF or BMP is
    decoded up front, to confirm. Files of another format and files that do not decode
    (empty, truncated, not an image) are skipped with one `UserWarning` per folder that
    counts and names them, with each one's reason (file names need not be UTF-8; class
    folder names must be text). Then, under `cache` (below), either every image is decoded
    once, now, and kept in memory as uint8 (the datasets never read the files again; a file
    that fails to decode is skipped as above), or the datasets stream the files: each file is
    decoded once per epoch, in parallel threads, with batches prefetched, and the memory
    held per image is its path, label and place in the shuffle order (about 100 bytes); a
    file whose start and end are whole but whose inside is damaged then stops the epoch
    that reaches it with TensorFlow's decoding error (`tf.errors.InvalidArgumentError`).
    Images are decoded to RGB (grayscale, palette and 16-bit PNGs and CMYK JPEGs are
    converted; RGBA loses its alpha; a GIF gives its first frame), centre-cropped to the
    aspect ratio of `image_size` and resized (bilinear) to it, as
    `keras.utils.image_dataset_from_directory(crop_to_aspect_ratio=True)` does
    (`decode_and_resize`, which the exported serving signature uses too), and rounded to
    whole grey levels: kept in memory or streamed, the same pixels, batches and
    reshuffling for the same seed. Datasets feed `model.fit` on tensorflow, jax and torch.
    Each dataset remembers the images it was made from, so that `fine_tune`'s feature
    caching can run the backbone once over them and remake the same pipeline (same
    batches, same reshuffling) over the cached backbone outputs; a dataset derived from it
    (`.map`, `.take`, ...) is cached by input fingerprints instead.

    Args:
        root: path of the data folder.
        image_size: int or `(height, width)` in pixels, e.g. 224 or `(224, 224)`.
        batch_size: int, default 32.
        validation_split: float in (0, 1) or None; the fraction of the (training) folder
            held out for validation when there is no `val/` folder: `int(split * count)`
            images, stratified by class (each class keeps its share, at least one image on
            each side; a class of fewer than 2 images stays in training, with a warning
            that names it; `stratified_split`), drawn with `seed`.
        seed: int in [0, 2**32), default 1337: the shuffle and split seed (None: drawn
            from NumPy's global generator).
        cache: where the decoded images live. `"auto"` (default): in memory when the
            usable images of all folders take at most `CACHE_BUDGET_BYTES` (1 GiB) as uint8
            (`height * width * 3` bytes per image: 150,528 bytes at 224x224, so up to 7,133
            images), else streamed from the files; an int >= 0: the same with that budget
            in bytes; True: always in memory (taken when this function returns); False:
            always streamed (for data that does not fit in memory).

    Returns:
        `(train_ds, val_ds, class_names)`: datasets of `(images, labels)` batches, images
        `(batch, height, width, 3)` float32 whole numbers in [0, 255], labels `(batch,
        num_classes)` float32 one-hot; the training data fully reshuffled every epoch
        (under `fine_tune` and `resumable_fit`, epoch e in an order drawn from `(seed, e)`
        alone, the same with or without checkpoints and feature caching, on every
        backend), the validation data in file order; `val_ds` is None when there is no
        validation data; `class_names` a list of str.

    Raises:
        FileNotFoundError: `root` does not exist.
        NotADirectoryError: `root` is a file.
        ValueError: fewer than 2 class folders, a class folder whose name is not text
            (not valid UTF-8), validation classes that differ from the training ones, a
            class left without a usable image, both a `val/` folder and `validation_split`, a bad
            argument (`cache` not "auto", a bool or an int >= 0).
    """
    import numpy as np

    from keras_transfer.data.example_sources import shuffle_seed
    from keras_transfer.data.stratified_split import stratified_split
    from keras_transfer.models.class_names import remember_class_names

    seed = shuffle_seed(seed)
    root = os.fsdecode(root)  # str, bytes or a path-like
    check_folder(root)
    image_size = _image_size(image_size)
    _check_batch_size(batch_size)
    if validation_split is not None and not (
        isinstance(validation_split, (int, float))
        and not isinstance(validation_split, bool)
        and 0 < validation_split < 1
    ):
        raise ValueError(f"`validation_split` must be a float in (0, 1), got {validation_split!r}.")

    train_dir, val_dir = split_folders(root)
    if val_dir is not None and validation_split is not None:
        raise ValueError(
            f"{quoted(root)} has a validation folder {quoted(val_dir)}; do not also pass "
            "`validation_split`."
        )
    directories = [train_dir] + ([val_dir] if val_dir is not None else [])
    listed, bad = _index(directories)
    usable = [  # in the order of `usable_images`: folder by folder, class by class
        path
        for _, names, files in listed
        for name in names
        for path in files[name]
        if supported(path) and path not in bad
    ]
    in_memory = cache_in_memory(cache, len(usable), image_size)
    if in_memory:  # the first epoch's decoding, up front: the datasets never read the files
        more_bad, images = decode_images(usable, image_size)
        bad.update(more_bad)
    indexed = usable_images(listed, bad)
    paths, labels, class_names = indexed[0]
    if in_memory:  # the decoded images are the sources, by index (validation's after training's)
        paths, load = np.arange(len(paths)), memory_loader(images)  # takes index vectors too
    else:
        paths, load = file_system_paths(paths), file_loader(image_size)
    val = None
    if validation_split is not None:
        num_val = int(validation_split * len(paths))
        if num_val == 0 or num_val == len(paths):
            raise ValueError(
                f"`validation_split={validation_split}` of {len(paths)} images leaves "
                f"{'no validation' if num_val == 0 else 'no training'} images; change it."
            )
        kept, held_out = stratified_split(labels, num_val, seed, class_names, quoted(train_dir))
        val = ([paths[i] for i in held_out], [labels[i] for i in held_out], load)
        paths, labels = [paths[i] for i in kept], [labels[i] for i in kept]
    elif val_dir is not None:
        val_paths, val_labels, _ = indexed[1]
        if in_memory:
            val = (np.arange(len(paths), len(paths) + len(val_paths)), val_labels, load)
        else:
            val = (file_system_paths(val_paths), val_labels, load)
    options = dict(
        num_classes=len(class_names), batch_size=batch_size, seed=seed, in_memory=in_memory
    )
    train_ds = dataset(paths, np.asarray(labels, "int32"), load, shuffle=True, **options)
    val_ds = None
    if val is not None:
        val_paths, val_labels, load = val
        val_labels = np.asarray(val_labels, "int32")
        val_ds = dataset(val_paths, val_labels, load, shuffle=False, **options)
    remember_class_names(train_ds, class_names)
    remember_class_names(val_ds, class_names)
    return train_ds, val_ds, class_names
