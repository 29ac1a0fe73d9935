import keras
import numpy as np
import pytest

import keras_transfer as kt
from keras_transfer.features.feature_cache import split_for_caching


def _image_model(mixed_precision):
    # VGG16: its random (weights=None) features carry gradients; MobileNet's are ~0.
    return kt.build_image_classifier(
        "vgg16",
        2,
        input_shape=(32, 32, 3),
        weights=None,
        augmentation=None,
        mixed_precision=mixed_precision,
    )


def test_bfloat16_image_classifier_computes_in_16_bits_and_trains():
    model = _image_model("bfloat16")
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    assert model.get_layer("backbone").compute_dtype == "bfloat16"
    assert model.get_layer("pooling").compute_dtype == "bfloat16"
    assert model.get_layer("preprocessing").compute_dtype == "float32"
    assert model.get_layer("predictions").compute_dtype == "float32"
    assert {w.dtype for w in model.weights} == {"float32"}  # weights stay float32
    reference = _image_model(None)
    reference.set_weights(model.get_weights())
    images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    probabilities = model.predict(images, verbose=0)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, reference.predict(images, verbose=0), atol=0.02)
    labels = np.eye(2, dtype="float32")[[0, 0, 0, 0, 0, 0, 1, 1]]  # unbalanced: the bias moves
    kt.unfreeze_backbone(model)
    trained = [
        model.get_layer("predictions").bias,
        model.get_layer("backbone").trainable_weights[0],
    ]
    before = [keras.ops.convert_to_numpy(w) for w in trained]
    loss = model.train_on_batch(images, labels)[0]
    assert np.isfinite(loss)
    for weight, old in zip(trained, before, strict=True):  # head and backbone both learn
        assert weight.dtype == "float32"
        assert not np.allclose(keras.ops.convert_to_numpy(weight), old)


def test_float16_scales_the_loss_in_every_stage(tmp_path):
    model = _image_model("float16")
    assert model.get_layer("backbone").compute_dtype == "float16"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    kt.unfreeze_backbone(model)  # recompiles: loss scaling again
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    head = split_for_caching(model).head  # as fine_tune compiles the cached head
    head.compile(**keras.saving.deserialize_keras_object(model.get_compile_config()))
    assert isinstance(head.optimizer, keras.optimizers.LossScaleOptimizer)


def test_bad_mixed_precision_is_refused():
    with pytest.raises(ValueError, match="mixed_precision"):
        _image_model("fp16")


def test_bfloat16_text_classifier(tiny_bert_preset):
    model = kt.build_text_classifier(
        tiny_bert_preset, 2, sequence_length=16, mixed_precision="bfloat16"
    )
    assert model.backbone.compute_dtype == "bfloat16"
    assert {w.dtype for w in model.weights} == {"float32"}
    probabilities = keras.ops.convert_to_numpy(
        keras.ops.cast(model.predict(["a good movie", "awful film"], verbose=0), "float32")
    )
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=0.02)
