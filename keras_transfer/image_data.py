"""`image_folder_datasets`: labelled image folders as `tf.data` pipelines for any backend."""

from __future__ import annotations

import functools
import os
import re
import warnings

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


def _files(folder):
    """The files below `folder` (recursively, as Keras indexes them; not hidden ones), sorted."""

    def unreadable(error):
        raise ValueError(
            f"Cannot read the folder {_quoted(error.filename)} ({error.strerror}); fix its "
            "permissions."
        ) from None

    found, seen = [], {os.path.realpath(folder)}
    for parent, folders, names in os.walk(folder, onerror=unreadable, followlinks=True):
        kept = []
        for name in folders:
            real = os.path.realpath(os.path.join(parent, name))
            if not name.startswith(".") and real not in seen:  # a link loop or a repeat
                seen.add(real)
                kept.append(name)
        folders[:] = kept
        found += [os.path.join(parent, name) for name in names if not name.startswith(".")]
    return sorted(found)


def _decode_all(paths, image_size=None):
    """Decode every file among `paths` once, with TensorFlow's decoders.

    All files are first decoded in one `tf.data` pipeline that writes each image straight
    into one batch (`_decode_in_one_pipeline`); only if a file fails there are they decoded
    again one by one, in threads, to name each file that fails and why.

    Args:
        paths: list of file paths.
        image_size: `(height, width)` to also keep every image as `decode_and_resize` gives
            it, or None to only check that the files decode.

    Returns:
        `(reasons, images)`: `{path: reason}` for the files that cannot be decoded, and
        the images of the others (in the order of `paths`) as one `(count, height, width,
        3)` float32 tensor in [0, 255], or None without `image_size` or decodable files.
    """
    import tensorflow as tf

    if not paths:
        return {}, None
    try:
        return {}, _decode_in_one_pipeline(paths, image_size)
    except (tf.errors.OpError, UnicodeDecodeError):  # a file fails: find each one, and why
        pass
    return _decode_one_by_one(paths, image_size)


def _decode_in_one_pipeline(paths, image_size):
    """`paths` decoded (and resized) in parallel by `tf.data` into one `(count, height,
    width, 3)` float32 tensor (None without `image_size`: the files are only decoded).

    On hymenoptera (396 JPEGs, 2 cores) this took 0.69 s instead of 0.97 s for decoding in
    threads and stacking the images (medians of 6 runs): the batch is filled as the images
    come, without a second copy of every image.

    Raises:
        tf.errors.OpError: a file cannot be read or decoded.
    """
    import tensorflow as tf

    @tf.autograph.experimental.do_not_convert
    def decode(path):
        if image_size is not None:
            return _load_image(path, image_size)
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return tf.shape(image)

    data = tf.data.Dataset.from_tensor_slices(file_system_paths(paths))
    data = data.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    images = next(iter(data.batch(len(paths))))
    return images if image_size is not None else None


def _decode_one_by_one(paths, image_size):
    """`_decode_all` file by file, in threads: each file's reason if it fails."""
    from concurrent.futures import ThreadPoolExecutor

    import tensorflow as tf

    def decode(path):
        try:
            encoded = tf.io.read_file(os.fsencode(path))  # see `file_system_paths`
            if image_size is not None:
                return decode_and_resize(encoded, image_size), None
            tf.io.decode_image(encoded, channels=3, expand_animations=False)
        except (tf.errors.OpError, UnicodeDecodeError) as error:  # undecodable, unreadable
            return None, decode_error_reason(error, path)
        return None, None

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(decode, paths))  # TF ops release the GIL
    reasons = {path: why for path, (_, why) in zip(paths, results, strict=True) if why}
    decoded = [image for image, _ in results if image is not None]
    return reasons, tf.stack(decoded) if decoded else None


def decode_error_reason(error, path):
    """Why TensorFlow could not read or decode the file `path`, in one short line, from
    `error`: a `tf.errors.OpError` (its message without the path, which the caller names,
    and without TF's op details), or the `UnicodeDecodeError` TF raises when its message
    holds a path that is not UTF-8."""
    if isinstance(error, UnicodeDecodeError):
        return "cannot read or decode it" if os.path.exists(path) else "No such file or directory"
    message = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", error.message)
    # Keep TF's reason ("<path>; No such file or directory"), not its repeat of the path.
    message = message.replace(str(path), "").strip(" ;:\n")
    return (message.splitlines() or ["cannot decode"])[0][:80] or "cannot read"


def _quoted(path):
    """`path` in quotes for a message, as printable text (`printable_name`: one backslash
    per escape, where `repr` would double it)."""
    return f"'{printable_name(path)}'"


def _warn_skipped(directory, skipped, total):
    shown = "\n  ".join(skipped[:20]) + ("\n  ..." if len(skipped) > 20 else "")
    warnings.warn(
        f"Skipped {len(skipped)} of {total} file(s) in {_quoted(directory)}: not a decodable image "
        f"of a supported format ({', '.join(IMAGE_EXTENSIONS)}). Remove, convert or replace "
        f"them to use them:\n  {shown}",
        UserWarning,
        stacklevel=4,
    )


def _index_folders(directories, class_names=None, image_size=None):
    """The usable images of labelled folders, with a clear error for a folder that cannot be one.

    Checks the class folders (at least 2 in the first folder unless `class_names` are
    given; in the others, exactly the first one's classes), decodes every image of all
    folders once (together: one pipeline), and skips (with one warning per folder that
    counts and names them) files of an unsupported format and files that cannot be
    decoded; every class must keep an image in every folder.

    Returns:
        `(indexed, images)`: `indexed` holds `(paths, labels, class_names)` per folder
        (lists of str and int, in sorted file order); `images` is None, or with
        `image_size` the decoded, resized images of all folders' `paths`, the first
        folder's first (one float32 tensor, see `_decode_all`).
    """
    listed = []
    for directory in directories:
        class_names, files = _class_files(directory, class_names)
        listed.append((directory, class_names, files))
    everything = [path for _, _, files in listed for paths in files.values() for path in paths]
    bad, images = _decode_all([path for path in everything if _supported(path)], image_size)
    indexed = []
    for directory, class_names, files in listed:
        found = [path for paths in files.values() for path in paths]
        skipped = [
            f"{printable_name(os.path.relpath(path, directory))} "
            f"({bad[path] if path in bad else 'unsupported format'})"
            for path in found
            if path in bad or not _supported(path)
        ]
        if skipped:
            _warn_skipped(directory, sorted(skipped), len(found))
        paths, labels = [], []
        for label, name in enumerate(class_names):
            usable = [path for path in files[name] if _supported(path) and path not in bad]
            paths += usable
            labels += [label] * len(usable)
        present = set(labels)
        empty = [name for label, name in enumerate(class_names) if label not in present]
        if empty:
            raise ValueError(
                f"Class folder(s) {empty} in {_quoted(directory)} hold no usable images "
                f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder(s)."
            )
        shown = printable_name(directory)
        print(f"Found {len(paths)} images belonging to {len(class_names)} classes in {shown}.")
        indexed.append((paths, labels, list(class_names)))
    return indexed, images


def _supported(path):
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _text(name):
    """Whether a name from the file system is text (Python decoded all of its bytes, as
    UTF-8 in a UTF-8 locale; `os.walk` keeps other bytes as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_name(name):
    """`name` as printable text: the bytes that are not valid UTF-8 as `\\xff` escapes."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # other lone surrogates (no file system name decodes to them)
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def file_system_paths(paths):
    """`paths` as the bytes the file system holds (`os.fsencode`), for TensorFlow: a `str`
    path goes into a `tf.string` tensor as UTF-8, which a name that is not valid UTF-8
    (Python keeps its bytes as surrogates) cannot be; its bytes open it as they are."""
    return [os.fsencode(path) for path in paths]


def _class_files(directory, class_names=None):
    """`(class_names, {class_name: sorted file paths})` of a labelled folder, after checking
    its class folders (at least 2; with `class_names`, exactly those)."""
    found = _class_folders(directory)
    misnamed = [printable_name(name) for name in found if not _text(name)]
    if misnamed:
        raise ValueError(
            f"{_quoted(directory)} has class folders whose names are not text: "
            f"{', '.join(misnamed)} (not valid UTF-8, or this locale's encoding is not "
            "UTF-8: then set PYTHONUTF8=1). Class names label the model's outputs; rename "
            "the folders."
        )
    if class_names is None:
        if len(found) < 2:
            raise ValueError(
                f"{_quoted(directory)} has {len(found)} class folder(s) ({found}); a classifier "
                "needs at least 2: lay the images out as <dir>/<class_name>/<image>."
            )
        class_names = found
    extra = sorted(set(found) - set(class_names))
    if extra:
        raise ValueError(
            f"{_quoted(directory)} has class folders that the training data does not: {extra}. "
            f"Training classes: {class_names}. Rename or remove those folders."
        )
    missing = [name for name in class_names if name not in found]
    if missing:
        raise ValueError(
            f"{_quoted(directory)} has no folder for the training class(es) {missing}; add "
            f"{printable_name(directory)}/<class>/ with at least one image for each of "
            f"{class_names}."
        )
    return class_names, {name: _files(os.path.join(directory, name)) for name in class_names}


def _load_image(path, image_size):
    import tensorflow as tf

    return decode_and_resize(tf.io.read_file(path), image_size)


def _stored_image(index, store):
    import tensorflow as tf

    return tf.gather(store, index)


def _dataset(
    sources, labels, load, *, num_classes, batch_size, shuffle, seed, in_memory=False, epoch=None
):
    """`(load(source), one_hot)` batches: images decoded from their paths by
    `decode_and_resize`, or taken by index from the decoded images in memory.

    Reshuffled by every iterator; with `epoch` (an int64 scalar tensor) the batches of that
    epoch alone, in `feature_cache.epoch_order`. The dataset remembers how it was made
    (`feature_cache.ExampleSource`), so that feature caching can make the same pipeline over
    cached features, and `fine_tune` the pipeline of each epoch.
    """
    import tensorflow as tf

    from keras_transfer.example_sources import ExampleSource, remember_examples, shuffled_slices

    # Plain TF ops: autograph's conversion (a parse of the source) would only add time to
    # every pipeline made, per epoch and over cached features too.
    @tf.autograph.experimental.do_not_convert
    def example(source, label):
        return load(source), tf.one_hot(label, num_classes, dtype="float32")

    # Paths or indices: a full shuffle is cheap.
    dataset = shuffled_slices(sources, labels, shuffle=shuffle, seed=seed, epoch=epoch)
    if in_memory:  # one gather per batch instead of one per example: the same batches
        dataset = dataset.batch(batch_size).map(example)
    else:
        dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        dataset = dataset.batch(batch_size)
    options = dict(num_classes=num_classes, batch_size=batch_size, seed=seed)

    def build(other_sources, other_load, other_shuffle, other_epoch=None, other_in_memory=False):
        return _dataset(
            other_sources,
            labels,
            other_load,
            shuffle=other_shuffle,
            epoch=other_epoch,
            in_memory=other_in_memory,
            **options,
        )

    return remember_examples(
        dataset.prefetch(tf.data.AUTOTUNE),
        ExampleSource(sources, load, build, shuffle, in_memory),
    )


def _check_folder(path):
    if os.path.isfile(path):
        raise NotADirectoryError(
            f"{_quoted(path)} is a file, not a folder of images: pass the folder that holds one "
            "subfolder per class (or train/ and val/ folders of them)."
        )
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Image folder not found: {_quoted(path)}.")


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")


def evaluation_dataset(directory, *, image_size, class_names, batch_size=32):
    """One labelled image folder, `directory/<class>/*`, as a dataset in file order, to
    score a trained model on (the CLI's `evaluate`).

    The folder is read as it is (no `train/` / `val/` layout; a class may be called
    "train"), with the checks, skipping and decoding of `image_folder_datasets` (files are
    decoded again when the dataset is read, not kept in memory).

    Args:
        directory: path of the folder.
        image_size: int or `(height, width)` in pixels: the model's input size.
        class_names: the model's classes, in its label order; `directory` must have a
            folder for each and no other.
        batch_size: int, default 32.

    Returns:
        A `tf.data.Dataset` of `(images, labels)` batches: images `(batch, height, width,
        3)` float32 in [0, 255], labels `(batch, len(class_names))` float32 one-hot.

    Raises:
        FileNotFoundError: `directory` does not exist.
        NotADirectoryError: `directory` is a file.
        ValueError: a class folder is missing or extra, a class has no usable image, a bad
            argument.
    """
    directory = os.fsdecode(directory)  # str, bytes or a path-like
    _check_folder(directory)
    image_size = _image_size(image_size)
    _check_batch_size(batch_size)
    ((paths, labels, class_names),), _ = _index_folders([directory], list(class_names))
    paths, load = file_system_paths(paths), functools.partial(_load_image, image_size=image_size)
    options = dict(num_classes=len(class_names), batch_size=batch_size, seed=0)
    return _dataset(paths, labels, load, shuffle=False, **options)


def split_folders(root):
    """The training and validation folders of a data folder, as `image_folder_datasets`
    reads them: `(root/train, root/val or root/validation or None)`, or `(root, None)`
    when there is no `root/train/`.
    """
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        return root, None
    for name in ("val", "validation"):
        if os.path.isdir(os.path.join(root, name)):
            return train_dir, os.path.join(root, name)
    return train_dir, None


def image_folder_datasets(
    root, *, image_size, batch_size=32, validation_split=None, seed=1337, cache=True
):
    """Read a labelled image folder into training and validation `tf.data.Dataset`s.

    Layouts (class names are the sub-folder names, sorted; images may sit in nested folders
    below a class folder):
    - `root/train/<class>/*` with `root/val/<class>/*` (or `root/validation/<class>/*`);
    - `root/train/<class>/*` alone, or `root/<class>/*`: split by `validation_split`, or
      no validation data when `validation_split` is None.

    Every image is decoded once up front (with `cache=True`, the default, that decoding is
    the one the datasets use: they never read the files again). Files of another format (not
    JPEG, PNG, GIF, BMP) and files that do not decode (empty, truncated, not an image) are
    skipped with one `UserWarning` per folder that counts and names them (file names need
    not be UTF-8; class folder names must be text). Images are decoded
    to RGB (grayscale, palette and 16-bit PNGs and CMYK JPEGs are converted; RGBA loses its
    alpha; a GIF gives its first frame) and resized (squashed, bilinear) to `image_size`
    with the ops of `keras.utils.image_dataset_from_directory`, by `decode_and_resize`,
    which the exported serving signature uses too. Datasets feed `model.fit` on tensorflow,
    jax and torch. Each dataset remembers the images it was made from, so that `fine_tune`'s
    feature caching can run the backbone once over them and remake the same pipeline (same
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
        cache: bool, default True: keep the decoded, resized images of the up-front check
            in memory, for every epoch (`height * width * 3 * 4` bytes per image, 0.6 MB at
            224x224; the memory is taken when this function returns); False decodes the
            files again in every epoch (for data that does not fit in memory).

    Returns:
        `(train_ds, val_ds, class_names)`: datasets of `(images, labels)` batches, images
        `(batch, height, width, 3)` float32 in [0, 255], labels `(batch, num_classes)`
        float32 one-hot; the training data fully reshuffled every epoch (under `fine_tune`
        and `resumable_fit`, epoch e in an order drawn from `(seed, e)` alone, the same with
        or without checkpoints and feature caching, on every backend), the validation data
        in file order; `val_ds` is None when there is no validation data; `class_names` a
        list of str.

    Raises:
        FileNotFoundError: `root` does not exist.
        NotADirectoryError: `root` is a file.
        ValueError: fewer than 2 class folders, a class folder whose name is not text
            (not valid UTF-8), validation classes that differ from the training ones, a class left
            without a usable image, both a `val/` folder and `validation_split`, a bad
            argument.
    """
    import numpy as np

    from keras_transfer.class_names import remember_class_names
    from keras_transfer.example_sources import shuffle_seed
    from keras_transfer.stratified_split import stratified_split

    seed = shuffle_seed(seed)
    root = os.fsdecode(root)  # str, bytes or a path-like
    _check_folder(root)
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
            f"{_quoted(root)} has a validation folder {_quoted(val_dir)}; do not also pass "
            "`validation_split`."
        )
    kept_size = image_size if cache else None
    directories = [train_dir] + ([val_dir] if val_dir is not None else [])
    indexed, images = _index_folders(directories, image_size=kept_size)
    paths, labels, class_names = indexed[0]
    if cache:  # the decoded images are the sources, by index (validation's after training's)
        paths, load = np.arange(len(paths)), _loader(images)  # `load` takes index vectors too
    else:
        paths = file_system_paths(paths)
        load = functools.partial(_load_image, image_size=image_size)
    val = None
    if validation_split is not None:
        num_val = int(validation_split * len(paths))
        if num_val == 0 or num_val == len(paths):
            raise ValueError(
                f"`validation_split={validation_split}` of {len(paths)} images leaves "
                f"{'no validation' if num_val == 0 else 'no training'} images; change it."
            )
        kept, held_out = stratified_split(labels, num_val, seed, class_names, _quoted(train_dir))
        val = ([paths[i] for i in held_out], [labels[i] for i in held_out], load)
        paths, labels = [paths[i] for i in kept], [labels[i] for i in kept]
    elif val_dir is not None:
        val_paths, val_labels, _ = indexed[1]
        if cache:
            val = (np.arange(len(paths), len(paths) + len(val_paths)), val_labels, load)
        else:
            val = (file_system_paths(val_paths), val_labels, load)
    options = dict(num_classes=len(class_names), batch_size=batch_size, seed=seed, in_memory=cache)
    train_ds = _dataset(paths, labels, load, shuffle=True, **options)
    val_ds = None if val is None else _dataset(*val, shuffle=False, **options)
    remember_class_names(train_ds, class_names)
    remember_class_names(val_ds, class_names)
    return train_ds, val_ds, class_names


def _loader(images):
    """A `load` for `_dataset` that takes images by index from `images`, a `(count, height,
    width, 3)` tensor."""
    return functools.partial(_stored_image, store=images)
