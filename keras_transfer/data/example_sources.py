"""Pipelines that remember their examples, so that they can be made again over others.

`image_folder_datasets` and `text_csv_datasets` attach an `ExampleSource` to the datasets
they return: the per-example sources (image paths, decoded images by index, texts), the
function that loads one, and the function that builds the pipeline. From it:
- feature caching (`feature_cache`) makes the same pipeline (same labels, batches, seed and
  shuffling) over the cached backbone outputs instead of the images;
- `fine_tune` makes each epoch's pipeline anew (`epoch_pipeline`), in the order that
  `epoch_order` draws from the seed and the epoch alone, so that an epoch's batches are the
  same with and without feature caching and checkpoints, on every backend.

This module sits below everything that reads data: it imports no other module of the
package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np


class ExampleSource(NamedTuple):
    """How a pipeline was made from its examples, so that it can be made again over others.

    Attributes:
        examples: the per-example sources, in file order (image paths or texts).
        load: tf function from one source to the model's input (e.g. decode an image).
        build: `build(examples, load, shuffle, epoch=None, in_memory=False)` gives the
            pipeline's batches of `(load(example), label)` for the same labels, batch size
            and seed; `shuffle=False` keeps file order; with `epoch` (an int64 scalar
            tensor) the batches of that epoch alone, in the order `epoch_order` gives; with
            `in_memory`, `load` takes each batch's vector of examples (one gather per batch
            instead of one per example: on 244 cached hymenoptera features, 10 epochs read
            in 0.08 s instead of 0.16 s).
        shuffle: whether the pipeline reshuffles every epoch.
        in_memory: whether `load` also takes a vector of examples and gives their batch
            straight from memory (e.g. decoded images taken by index); the caching pass
            then reads them without a pipeline.
        labels: the examples' int class ids `(n,)`, in file order, or None; balanced
            class weights are counted from them without reading the pipeline.
    """

    examples: Any
    load: Callable
    build: Callable
    shuffle: bool
    in_memory: bool = False
    labels: Any = None


def remember_examples(dataset, source):
    """Attach an `ExampleSource` to `dataset` (kept only by this dataset object)."""
    dataset._kt_examples = source
    return dataset


def remember_derivation(dataset, parent, transform, *, per_epoch=False):
    """Note that `dataset` is `transform(parent)` (a per-batch transformation), so that
    `epoch_pipeline` can make it for one epoch from `parent`'s pipeline of that epoch.

    With `per_epoch`, `transform(batches, epoch)` also takes the epoch (an int64 scalar
    tensor), e.g. random augmentation drawn from `(seed, epoch, batch)`; `epoch_pipeline`
    then applies it to `parent` itself when `parent` cannot be made per epoch.
    """
    dataset._kt_derived = (parent, transform)
    dataset._kt_per_epoch = per_epoch
    return dataset


def shuffle_seed(seed):
    """`seed` of a dataset function checked: an int in [0, 2**32), or None for one drawn
    from NumPy's global generator (which `keras.utils.set_random_seed` seeds).

    Raises:
        ValueError: `seed` is not such an int or None.
    """
    if seed is None:
        return int(np.random.randint(2**31 - 1))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"`seed` must be an int in [0, 2**32) or None, got {seed!r}.")
    return int(seed)


def epoch_order(count, seed, epoch):
    """The order of `count` examples in epoch `epoch`: a permutation drawn from `(seed,
    epoch)` alone (`tf.random.experimental.stateless_shuffle`), so it does not depend on how
    many iterators of the dataset were made before (by `fit`, a resume, feature caching).

    Returns:
        int64 tensor `(count,)`.
    """
    import tensorflow as tf

    seed = tf.stack([tf.constant(seed, "int64"), tf.cast(epoch, "int64")])
    return tf.random.experimental.stateless_shuffle(tf.range(count, dtype="int64"), seed)


def shuffled_slices(examples, labels, *, shuffle, seed, epoch=None):
    """`tf.data.Dataset.from_tensor_slices((examples, labels))` in the order a pipeline of
    ours gives them: file order without `shuffle`; with `shuffle`, the order of epoch
    `epoch` (an int64 scalar tensor, `epoch_order`), or without `epoch` a full reshuffle by
    every iterator (with `seed`).
    """
    import tensorflow as tf

    count = len(examples)
    if shuffle and epoch is not None:
        order = epoch_order(count, seed, epoch)
        examples, labels = tf.gather(examples, order), tf.gather(labels, order)
    dataset = tf.data.Dataset.from_tensor_slices((examples, labels))
    if shuffle and epoch is None:
        dataset = dataset.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    return dataset


def remade_per_epoch(dataset):
    """Whether `epoch_pipeline` can make `dataset`'s batches of any epoch."""
    if getattr(dataset, "_kt_examples", None) is not None:
        return True
    parent, _ = getattr(dataset, "_kt_derived", (None, None))
    return parent is not None and remade_per_epoch(parent)


def example_labels(dataset):
    """The int class ids `(n,)` of every example of `dataset`, in file order, when it is a
    pipeline of ours (or derived from one batch by batch, e.g. augmented or over cached
    features) that remembers them; else None. Nothing is decoded."""
    source = getattr(dataset, "_kt_examples", None)
    if source is not None:
        return None if source.labels is None else np.asarray(source.labels)
    parent, _ = getattr(dataset, "_kt_derived", (None, None))
    return None if parent is None else example_labels(parent)


def epoch_pipeline(dataset, epoch):
    """The batches `dataset` gives in epoch `epoch` (an int64 scalar tensor), or None.

    For pipelines from `image_folder_datasets` and `text_csv_datasets` (and those remade over
    cached features, and `pad_to_longest` of them): the same pipeline over the examples in
    `epoch_order` (file order without shuffling). None for any other dataset.
    """
    source = getattr(dataset, "_kt_examples", None)
    if source is not None:
        return source.build(source.examples, source.load, source.shuffle, epoch, source.in_memory)
    parent, transform = getattr(dataset, "_kt_derived", (None, None))
    if parent is None:
        return None
    parent_epoch = epoch_pipeline(parent, epoch)
    if getattr(dataset, "_kt_per_epoch", False):
        return transform(parent if parent_epoch is None else parent_epoch, epoch)
    return None if parent_epoch is None else transform(parent_epoch)
