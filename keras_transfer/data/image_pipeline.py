"""`tf.data` pipelines over image files: decoded per epoch from the files (streamed), or
taken from decoded images held in memory as uint8; the same batches either way."""

from __future__ import annotations

import functools
import os

from keras_transfer.data.image_files import decode_error_reason, file_system_paths

CACHE_BUDGET_BYTES = 1 << 30  # 1 GiB of uint8 images: 7,133 images at 224x224
_THREADS = 8


def decode_and_resize(encoded, image_size):
    """Decode one encoded image, crop it to the aspect ratio of `image_size` and resize it,
    as the training pipeline does.

    `tf.io.decode_image` with 3 channels (grayscale and RGBA become RGB; a GIF gives its
    first frame), then the largest centred box with the aspect ratio of `image_size` (the
    crop of Keras' `smart_resize` and `image_dataset_from_directory(crop_to_aspect_ratio=
    True)`; ImageNet models are evaluated on undistorted centre crops), then bilinear
    `tf.image.resize`. Used by the training pipelines, the exported serving signature and
    the CLI's `predict`; the training pipelines round its pixels to whole grey levels
    (`load_image`), at most 0.5 away.

    Args:
        encoded: scalar `tf.string` tensor (JPEG, PNG, GIF or BMP bytes).
        image_size: `(height, width)` in pixels.

    Returns:
        `(height, width, 3)` float32 tensor in [0, 255].
    """
    import tensorflow as tf

    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = tf.image.resize(center_crop(image, image_size), image_size, method="bilinear")
    image.set_shape((*image_size, 3))
    return image


def center_crop(image, image_size):
    """The largest centred box of `image` (`(h, w, channels)`) with the aspect ratio of
    `image_size`, in whole pixels as Keras' `smart_resize` computes it."""
    import tensorflow as tf

    target_height, target_width = image_size
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    crop_height = tf.maximum(tf.minimum(height, width * target_height // target_width), 1)
    crop_width = tf.maximum(tf.minimum(width, height * target_width // target_height), 1)
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    return image[top : top + crop_height, left : left + crop_width]


def load_image(path, image_size):
    """The file `path` (a scalar `tf.string`) decoded and resized by `decode_and_resize`,
    rounded to a `(height, width, 3)` uint8 tensor: what the pipelines keep in memory."""
    import tensorflow as tf

    image = decode_and_resize(tf.io.read_file(path), image_size)
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), "uint8")


def _load_float(path, image_size):
    import tensorflow as tf

    return tf.cast(load_image(path, image_size), "float32")


_load_float.reads_files = True  # its sources are file paths: the feature store stats them


def file_loader(image_size):
    """A `load` for `dataset`: one file path to its float32 image (`load_image`)."""
    return functools.partial(_load_float, image_size=image_size)


def _stored_image(index, store):
    import tensorflow as tf

    return tf.cast(tf.gather(store, index), "float32")


def memory_loader(images):
    """A `load` for `dataset` that takes images by index (a scalar or a vector) from
    `images`, a `(count, height, width, 3)` uint8 tensor, as float32."""
    return functools.partial(_stored_image, store=images)


def cache_in_memory(cache, count, image_size):
    """Whether `count` images of `image_size` are kept in memory under `cache` (see
    `image_folder_datasets`): True / False as they are; `"auto"` when their uint8 pixels
    take at most `CACHE_BUDGET_BYTES`; an int when they take at most that many bytes.

    Raises:
        ValueError: `cache` is none of these.
    """
    if isinstance(cache, bool):
        return cache
    if cache == "auto":
        budget = CACHE_BUDGET_BYTES
    elif isinstance(cache, int) and cache >= 0:
        budget = cache
    else:
        raise ValueError(
            f"`cache` must be 'auto', True, False or a budget in bytes (an int >= 0), got "
            f"{cache!r}."
        )
    height, width = image_size
    return count * height * width * 3 <= budget


def decode_images(paths, image_size):
    """Decode and resize every file among `paths` once (`load_image`), into memory.

    All files are decoded in one `tf.data` pipeline that writes each image straight into
    one batch; only if a file fails there are they decoded again one by one, in threads,
    to name each file that fails and why.

    Args:
        paths: list of file paths.
        image_size: `(height, width)` in pixels.

    Returns:
        `(reasons, images)`: `{path: reason}` for the files that cannot be decoded, and the
        images of the others (in the order of `paths`) as one `(count, height, width, 3)`
        uint8 tensor (`height * width * 3` bytes per image), or None when none decodes.
    """
    import tensorflow as tf

    if not paths:
        return {}, None
    load = tf.autograph.experimental.do_not_convert(
        functools.partial(load_image, image_size=image_size)
    )
    data = tf.data.Dataset.from_tensor_slices(file_system_paths(paths))
    data = data.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    try:
        return {}, next(iter(data.batch(len(paths))))
    except (tf.errors.OpError, UnicodeDecodeError):  # a file fails: find each one, and why
        pass
    return _decode_one_by_one(paths, image_size)


def _decode_one_by_one(paths, image_size):
    """`decode_images` file by file, in threads: each file's reason if it fails."""
    from concurrent.futures import ThreadPoolExecutor

    import tensorflow as tf

    def decode(path):
        try:
            return load_image(os.fsencode(path), image_size), None  # see `file_system_paths`
        except (tf.errors.OpError, UnicodeDecodeError) as error:  # undecodable, unreadable
            return None, decode_error_reason(error, path)

    with ThreadPoolExecutor(max_workers=min(_THREADS, os.cpu_count() or 1)) as pool:
        results = list(pool.map(decode, paths))  # TF ops release the GIL
    reasons = {path: why for path, (_, why) in zip(paths, results, strict=True) if why}
    decoded = [image for image, _ in results if image is not None]
    return reasons, tf.stack(decoded) if decoded else None


def dataset(
    sources, labels, load, *, num_classes, batch_size, shuffle, seed, in_memory=False, epoch=None
):
    """`(load(source), one_hot)` batches: images decoded from their paths (`file_loader`),
    or taken by index from the decoded images in memory (`memory_loader`).

    Streamed, the files are decoded in parallel (`tf.data.AUTOTUNE` threads, in order) and
    batches are prefetched; what the pipeline holds per image is its path or index and its
    label (and, shuffled, a place in the shuffle buffer of paths or indices).

    Reshuffled by every iterator; with `epoch` (an int64 scalar tensor) the batches of that
    epoch alone, in `example_sources.epoch_order`. The dataset remembers how it was made
    (`example_sources.ExampleSource`), so that feature caching can make the same pipeline over
    cached features, and `fine_tune` the pipeline of each epoch.
    """
    import tensorflow as tf

    from keras_transfer.data.example_sources import (
        ExampleSource,
        remember_examples,
        shuffled_slices,
    )

    # Plain TF ops: autograph's conversion (a parse of the source) would only add time to
    # every pipeline made, per epoch and over cached features too.
    @tf.autograph.experimental.do_not_convert
    def example(source, label):
        return load(source), tf.one_hot(label, num_classes, dtype="float32")

    # Paths or indices: a full shuffle is cheap.
    data = shuffled_slices(sources, labels, shuffle=shuffle, seed=seed, epoch=epoch)
    if in_memory:  # one gather per batch instead of one per example: the same batches
        data = data.batch(batch_size).map(example)
    else:
        data = data.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        data = data.batch(batch_size)
    options = dict(num_classes=num_classes, batch_size=batch_size, seed=seed)

    def build(other_sources, other_load, other_shuffle, other_epoch=None, other_in_memory=False):
        return dataset(
            other_sources,
            labels,
            other_load,
            shuffle=other_shuffle,
            epoch=other_epoch,
            in_memory=other_in_memory,
            **options,
        )

    return remember_examples(
        data.prefetch(tf.data.AUTOTUNE),
        ExampleSource(sources, load, build, shuffle, in_memory, labels),
    )
