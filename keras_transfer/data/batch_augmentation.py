"""MixUp and CutMix for the fine-tuning stage: Keras 3's own layers, run in `tf.data`.

Both mix pairs of images of a batch and their one-hot labels (Zhang et al., 2018; Yun et
al., 2019), so they act on `(images, labels)` batches, not inside the model: the batches
of the training pipeline are mixed in `tf.data` (on any backend), and the pipeline is still
made anew for every epoch in the same order (`example_sources.remember_derivation`).
"""

from __future__ import annotations

import keras

BATCH_AUGMENTATIONS = {"mixup": keras.layers.MixUp, "cutmix": keras.layers.CutMix}


def batch_augmentation_layer(batch_augmentation, seed=None):
    """The Keras layer for `batch_augmentation`: `"mixup"` (`keras.layers.MixUp`, alpha
    0.2), `"cutmix"` (`keras.layers.CutMix`, factor 1.0), or a layer of either class.

    Raises:
        ValueError: another name or object.
    """
    if isinstance(batch_augmentation, tuple(BATCH_AUGMENTATIONS.values())):
        return batch_augmentation
    layer = BATCH_AUGMENTATIONS.get(str(batch_augmentation).lower())
    if layer is None:
        raise ValueError(
            "`batch_augmentation` must be None, 'mixup', 'cutmix' or a keras.layers.MixUp / "
            f"CutMix layer, got {batch_augmentation!r}."
        )
    return layer(seed=seed)


def mix_batches(dataset, batch_augmentation, seed=None):
    """`dataset`'s `(images, one_hot_labels[, ...])` batches mixed by `batch_augmentation`.

    Args:
        dataset: `tf.data.Dataset` of batches, images `(batch, height, width, 3)` (any real
            dtype; the mixed images are float32) and one-hot labels `(batch, classes)`.
        batch_augmentation: see `batch_augmentation_layer`.
        seed: int or None, the layer's seed.

    Returns:
        The mixed `tf.data.Dataset` (made anew per epoch where `dataset` is).
    """
    import tensorflow as tf

    from keras_transfer.data.example_sources import remade_per_epoch, remember_derivation

    layer = batch_augmentation_layer(batch_augmentation, seed)

    def mix(images, labels, *rest):
        mixed = layer(
            {"images": tf.cast(images, "float32"), "labels": tf.cast(labels, "float32")},
            training=True,
        )
        return (mixed["images"], mixed["labels"], *rest)

    def transform(data):
        return data.map(mix, num_parallel_calls=tf.data.AUTOTUNE)

    mixed = transform(dataset)
    if remade_per_epoch(dataset):
        remember_derivation(mixed, dataset, transform)
    return mixed
