"""Random image augmentation in the input pipeline (`tf.data`) on torch and jax.

Keras' resampling augmentation layers (`RandomRotation`, `RandomZoom`, ...) inside a model
are slow on torch and jax on CPU: the CLI's image quickstart (hymenoptera, 10 epochs) took
16 min 47 s on torch with the default augmentation against 47 s without it. Keras'
preprocessing layers also run inside `tf.data` on every backend (there they compute with
TensorFlow), so on torch and jax `fine_tune` moves a model's augmentation block there for
its stages that train through the whole model: the same layers with the same settings,
applied to the same training batches, in a pipeline that runs beside the training steps.
The model's own block passes its inputs through meanwhile (`augmentation_in_pipeline`)
and is back as it was when `fine_tune` returns, so `model.fit` augments inside the model
as before. On tensorflow the block stays in the model (its ops are as fast there).

The draws are made from `(layer seed, epoch, batch)`: each batch's augmentation is the
same in an uninterrupted run and in one resumed from a checkpoint, whatever the backend.
The images differ from tensorflow's in-model draws (another random stream), not in their
distribution.
"""

from __future__ import annotations

import contextlib
import warnings

import keras

from keras_transfer.data.example_sources import remember_derivation

AUGMENTATION_BLOCK = "augmentation"  # the block's name in `build_image_classifier`
# Keras augmentation layers that resample every image (an affine transform): slow inside
# a model on torch and jax.
RESAMPLING_AUGMENTATION = ("RandomRotation", "RandomZoom", "RandomTranslation", "RandomShear")
_DRAWS_PER_BATCH = 64  # room for each layer's draws per batch in its seed's counter
_EPOCH_STRIDE = 7919  # a prime: each epoch's seeds apart from the last's


def pipeline_layers(model, data):
    """The layers of `model`'s augmentation block that `fine_tune` runs in `data`'s
    pipeline instead of the model, or None where they stay in the model: on tensorflow,
    for a model without a block named "augmentation" (as `build_image_classifier` makes
    it), for `data` that is not a `tf.data.Dataset`, or when a layer of the block is not a
    random Keras preprocessing layer that runs in `tf.data` (`keras.layers.RandomFlip`,
    ...): a deterministic one (`Rescaling`, `Resizing`, ...) also runs on validation and
    test data, which go through the model.
    """
    import tensorflow as tf

    if keras.backend.backend() == "tensorflow" or not isinstance(data, tf.data.Dataset):
        return None
    try:
        block = model.get_layer(AUGMENTATION_BLOCK)
    except ValueError:
        return None
    layers = list(getattr(block, "layers", [block]))
    movable = [
        isinstance(layer, _data_layer_class()) and getattr(layer, "generator", None) is not None
        for layer in layers
    ]
    if not layers or not all(movable):
        return None
    return layers


def _data_layer_class():
    """Keras' base class of the preprocessing layers that run in `tf.data` on any backend
    (not exported by Keras 3.15)."""
    from keras.src.layers.preprocessing.data_layer import DataLayer

    return DataLayer


def _tensorflow_seed_generators(layers):
    """Each layer's seed generator for `tf.data` (made now, eagerly, rather than inside the
    pipeline's trace) and its base seed: the layer's `seed`, else its own generator's."""
    generators = []
    for layer in layers:
        layer.backend.set_backend("tensorflow")
        try:
            tf_generator = layer._get_seed_generator("tensorflow")
        finally:
            layer.backend.reset()
        seed = getattr(layer, "seed", None)
        if seed is None:
            seed = int(keras.ops.convert_to_numpy(layer.generator.state)[0])
        generators.append((tf_generator, int(seed) % 2**31))
    return generators


def augment_in_pipeline(data, layers):
    """`data`'s `(images, labels[, weights])` batches with `layers` applied to the images
    in training mode, in `tf.data`.

    Under `fine_tune` (per epoch, `example_sources.epoch_pipeline`), batch b of epoch e
    is augmented from the seeds `(layer seed + 7919 e, 64 b)` alone; iterated directly,
    the layers draw from their running `tf.data` seed generators.

    Args:
        data: a `tf.data.Dataset` of batches; images `(batch, height, width, 3)` in
            [0, 255], uint8 or float.
        layers: Keras preprocessing layers (see `pipeline_layers`).

    Returns:
        The `tf.data.Dataset` of augmented batches (images float32), batches in order.
    """
    import tensorflow as tf

    generators = _tensorflow_seed_generators(layers)

    def apply(images):
        for layer in layers:
            images = layer(images, training=True)
        return images

    def seeded(epoch):
        def augment(batch, example):
            for generator, seed in generators:
                state = generator.state
                generator_seed = tf.cast(seed + _EPOCH_STRIDE * epoch, state.dtype)
                counter = tf.cast(batch * _DRAWS_PER_BATCH, state.dtype)
                state.assign(tf.stack([generator_seed, counter]))
            return (apply(example[0]), *example[1:])

        return augment

    def per_epoch(batches, epoch):
        # One batch at a time: the layers' seed state is shared by the calls.
        return batches.enumerate().map(seeded(epoch))

    augmented = data.map(lambda *example: (apply(example[0]), *example[1:]))
    return remember_derivation(augmented, data, per_epoch, per_epoch=True)


@contextlib.contextmanager
def augmentation_in_pipeline(model, data):
    """Within the block, `model`'s augmentation runs in `data`'s pipeline where
    `pipeline_layers` allows it: yields the data to train on (`augment_in_pipeline`), with
    the model's augmentation block passing its inputs through; else yields `data` and
    changes nothing.
    """
    layers = pipeline_layers(model, data)
    if layers is None:
        yield data
        return
    block = model.get_layer(AUGMENTATION_BLOCK)
    block.call = _passthrough  # an instance attribute: the class's `call` comes back below
    try:
        yield augment_in_pipeline(data, layers)
    finally:
        del block.call


def _passthrough(inputs, training=None, mask=None):
    return inputs


def warn_slow_augmentation(model, stages, data=None):
    """Warn, as a run starts, when the model's augmentation will make its epochs slow.

    On torch and jax, Keras' resampling augmentation layers (`RESAMPLING_AUGMENTATION`)
    inside the model take most of each training step's time on CPU: the CLI's image
    quickstart (hymenoptera, 10 epochs) took 16 min 47 s on torch with the default
    augmentation against 47 s with `--no-augmentation`. Nothing is said on tensorflow, for
    a model without such layers (in a block named "augmentation", as
    `build_image_classifier` makes), when no epoch runs through them, or when `fine_tune`
    runs them in `data`'s pipeline instead (`pipeline_augmentation`: a `tf.data.Dataset`
    and Keras preprocessing layers).

    Args:
        model: the classifier.
        stages: the names of the stages whose epochs run through the whole model (the
            head stage when it is not cached, the fine-tuning stage), possibly empty.
        data: the training data, or None when unknown.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow" or not stages:
        return
    if data is not None and pipeline_layers(model, data) is not None:
        return
    try:
        block = model.get_layer(AUGMENTATION_BLOCK)
    except ValueError:
        return
    slow = [
        type(layer).__name__
        for layer in getattr(block, "layers", [block])
        if type(layer).__name__ in RESAMPLING_AUGMENTATION
    ]
    if slow:
        warnings.warn(
            f"On {backend}, the model's augmentation layers {', '.join(slow)} resample every "
            f"image inside the model, which makes each epoch of {' and '.join(stages)} "
            "several times slower than on tensorflow (the CLI image quickstart on torch: "
            "16 min 47 s, against 47 s without them). To avoid it: the CLI's "
            "--no-augmentation, build_image_classifier(..., augmentation=None) or "
            "augmentation=[keras.layers.RandomFlip('horizontal')], or KERAS_BACKEND=tensorflow.",
            UserWarning,
            stacklevel=3,
        )
