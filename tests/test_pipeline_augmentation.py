import warnings

import keras
import numpy as np
import pytest

import keras_transfer as kt
from keras_transfer.data.example_sources import epoch_pipeline
from keras_transfer.data.pipeline_augmentation import (
    augment_in_pipeline,
    augmentation_in_pipeline,
    pipeline_layers,
)


def _model(augmentation="default"):
    return kt.build_image_classifier(
        "mobilenet",
        3,
        input_shape=(32, 32, 3),
        weights=None,
        backbone_kwargs={"alpha": 0.25},
        augmentation=augmentation,
    )


def _data(n=8, batch=4):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (n, 32, 32, 3)).astype("float32")
    labels = keras.utils.to_categorical(np.arange(n) % 3, 3)
    return images, tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)


def _epoch(data, epoch):
    import tensorflow as tf

    batches = epoch_pipeline(data, tf.constant(epoch, "int64"))
    return [images for images, _ in batches.as_numpy_iterator()]


def test_layers_move_to_the_pipeline_on_torch_and_jax_only(backend):
    _, data = _data()
    model = _model()
    layers = pipeline_layers(model, data)
    if backend == "tensorflow":
        assert layers is None
        return
    assert [type(layer).__name__ for layer in layers] == [
        "RandomFlip",
        "RandomRotation",
        "RandomZoom",
    ]
    assert pipeline_layers(_model(augmentation=None), data) is None
    assert pipeline_layers(model, _data()[0]) is None  # not a tf.data.Dataset

    class Custom(keras.layers.Layer):  # not a Keras preprocessing layer: stays in the model
        def call(self, inputs):
            return inputs

    assert pipeline_layers(_model(augmentation=[Custom()]), data) is None
    # A deterministic layer also runs on validation data, through the model: all stay there.
    fixed = [keras.layers.RandomFlip("horizontal"), keras.layers.Rescaling(1.0)]
    assert pipeline_layers(_model(augmentation=fixed), data) is None


@pytest.mark.backends("torch", "jax")
def test_each_epoch_is_augmented_from_its_seed_alone():
    images, data = _data()
    augmented = augment_in_pipeline(data, pipeline_layers(_model(), data))
    first, again, second = _epoch(augmented, 0), _epoch(augmented, 0), _epoch(augmented, 1)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)  # the same draws when an epoch is made again
    assert not np.allclose(first[0], images[:4])  # augmented
    assert not np.allclose(first[0], first[1])
    # New draws each epoch.
    assert any(not np.allclose(a, b) for a, b in zip(first, second, strict=True))
    assert first[0].shape == (4, 32, 32, 3) and first[0].dtype == np.float32


@pytest.mark.backends("torch", "jax")
def test_the_models_block_passes_through_while_the_pipeline_augments():
    images, data = _data()
    model = _model()
    block = model.get_layer("augmentation")
    with augmentation_in_pipeline(model, data) as augmented:
        assert augmented is not data
        passed = keras.ops.convert_to_numpy(block(images[:4], training=True))
        np.testing.assert_array_equal(passed, images[:4])
    assert "call" not in vars(block)  # the class's own call is back
    assert not np.allclose(keras.ops.convert_to_numpy(block(images[:4], training=True)), images[:4])


@pytest.mark.backends("torch", "jax")
def test_fine_tune_augments_in_the_pipeline_without_the_slow_warning():
    _, data = _data()
    model = _model()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        history = kt.fine_tune(
            model, data, data, head_epochs=1, finetune_epochs=1, cache_features=False, verbose=0
        )
    assert not [w for w in record if "resample" in str(w.message)]
    assert len(history["head"].history["loss"]) == 1
    assert len(history["finetune"].history["loss"]) == 1
    assert "call" not in vars(model.get_layer("augmentation"))
