import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import batchnorm_statistics, require_shared

import keras_transfer as kt


def _tiny():
    return kt.build_image_classifier(
        "mobilenet",
        2,
        input_shape=(32, 32, 3),
        weights=None,
        backbone_kwargs={"alpha": 0.25},
        augmentation=None,
    )


def _data(n=16):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (n, 32, 32, 3)).astype("float32")
    labels = keras.utils.to_categorical(rng.integers(0, 2, n), 2)
    return images, labels


def _first_kernel(model):
    return keras.ops.convert_to_numpy(model.get_layer("backbone").get_layer("conv1").kernel).copy()


def _fit(model):
    images, labels = _data()
    model.fit(images, labels, batch_size=8, epochs=1, verbose=0)


def test_batchnorm_statistics_never_move_through_freeze_unfreeze_compile_fit():
    model = _tiny()
    before_stats = batchnorm_statistics(model)
    kt.compile_classifier(model, learning_rate=0.1)
    _fit(model)
    kt.unfreeze_backbone(model)
    _fit(model)
    kt.freeze_backbone(model)
    _fit(model)
    kt.unfreeze_backbone(model, top_n=10)
    kt.compile_classifier(model, optimizer="adam", learning_rate=0.01)
    _fit(model)
    kt.unfreeze_backbone(model)
    _fit(model)
    for before, after in zip(before_stats, batchnorm_statistics(model), strict=True):
        np.testing.assert_array_equal(before, after)
    # The last recompile built the optimizer for every trainable weight.
    assert len(model.trainable_weights) == 29
    assert len(model.optimizer.variables) == 2 + 2 * 29  # iterations, lr; Adam m and v


def test_unfreeze_takes_effect_on_pretrained_weights_without_manual_recompile():
    """With ImageNet weights (random-init activations vanish through frozen BatchNorm)."""
    require_shared("weights", "keras", "mobilenet_2_5_224_tf_no_top.h5")
    model = kt.build_image_classifier(
        "mobilenet",
        2,
        input_shape=(224, 224, 3),
        backbone_kwargs={"alpha": 0.25},
        augmentation=None,
    )
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (8, 224, 224, 3)).astype("float32")
    labels = keras.utils.to_categorical(rng.integers(0, 2, 8), 2)
    stats, kernel = batchnorm_statistics(model), _first_kernel(model)
    kt.compile_classifier(model, learning_rate=0.05)
    model.fit(images, labels, batch_size=8, epochs=1, verbose=0)
    np.testing.assert_array_equal(kernel, _first_kernel(model))  # frozen: unchanged
    kt.unfreeze_backbone(model)  # recompiles: the next fit trains the backbone
    model.fit(images, labels, batch_size=8, epochs=2, verbose=0)
    assert not np.allclose(kernel, _first_kernel(model))
    for before, after in zip(stats, batchnorm_statistics(model), strict=True):
        np.testing.assert_array_equal(before, after)


def test_plain_keras_trainable_flag_moves_batchnorm_statistics():
    """keras-team/keras#20285, the failure unfreeze_backbone protects against."""
    model = _tiny()
    before = batchnorm_statistics(model)
    model.get_layer("backbone").trainable = True
    kt.compile_classifier(model)
    _fit(model)
    moved = [
        not np.allclose(b, a) for b, a in zip(before, batchnorm_statistics(model), strict=True)
    ]
    assert any(moved)


def test_train_batchnorm_true_lets_statistics_move():
    model = _tiny()
    before = batchnorm_statistics(model)
    kt.unfreeze_backbone(model, train_batchnorm=True)
    kt.compile_classifier(model)
    _fit(model)
    assert any(
        not np.allclose(b, a) for b, a in zip(before, batchnorm_statistics(model), strict=True)
    )


def test_frozen_backbone_has_no_trainable_weights_and_head_trains():
    model = _tiny()
    assert model.get_layer("backbone").trainable_weights == []
    assert [w.path for w in model.trainable_weights] == ["predictions/kernel", "predictions/bias"]


def test_top_n_counts_backbone_layers_from_the_top():
    model = _tiny()
    kt.unfreeze_backbone(model, top_n=4)
    layers = model.get_layer("backbone").layers
    trainable = [layer.name for layer in layers if layer.trainable]
    expected = [
        layer.name
        for layer in layers[-4:]
        if not isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert trainable == expected
    assert len(trainable) >= 2  # conv_pw_13 and its ReLU at least


def test_top_n_validation():
    with pytest.raises(ValueError, match="top_n"):
        kt.unfreeze_backbone(_tiny(), top_n=-1)
    model = _tiny()
    before = model.get_weights()
    with pytest.raises(ValueError, match="unfreeze_top_n=0.*unfreezes no part"):
        kt.fine_tune(model, _data(), head_epochs=1, finetune_epochs=1, unfreeze_top_n=0)
    # Learning rates are checked before anything trains (was: the head trained, then an error).
    for rates in ({"learning_rate": -1.0}, {"finetune_learning_rate": 0.0}, {"learning_rate": "1"}):
        (name,) = rates
        with pytest.raises(ValueError, match=f"`{name}` must be None or a positive number"):
            kt.fine_tune(model, _data(), head_epochs=1, finetune_epochs=1, **rates)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_unfreeze_top_n_zero_with_auto_epochs_trains_the_head_only():
    model = _tiny()
    data = tf.data.Dataset.from_tensor_slices(_data()).batch(8)
    kernel = _first_kernel(model)
    histories = kt.fine_tune(model, data, data, unfreeze_top_n=0, verbose=0)
    assert list(histories) == ["head"]  # finetune_epochs="auto": no stage 2
    assert np.array_equal(kernel, _first_kernel(model))
    assert not model.get_layer("backbone").trainable


def test_fine_tune_refuses_arrays_with_a_clear_error():
    model = _tiny()
    images = np.zeros((4, *model.input_shape[1:]), "float32")
    labels = np.eye(2, dtype="float32")[[0, 1, 0, 1]]
    with pytest.raises(ValueError, match="`train_ds` must be a tf.data.Dataset.*tuple"):
        kt.fine_tune(model, (images, labels), head_epochs=1, finetune_epochs=0)
    with pytest.raises(ValueError, match="`val_ds` must be a tf.data.Dataset.*ndarray"):
        kt.fine_tune(
            model,
            tf.data.Dataset.from_tensor_slices(_data()).batch(4),
            images,
            head_epochs=1,
            finetune_epochs=0,
        )


def test_model_without_backbone_is_refused():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="backbone"):
        kt.freeze_backbone(model)


def test_compile_defaults_are_the_recipes():
    model = kt.compile_classifier(_tiny())
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert not isinstance(model.optimizer, keras.optimizers.AdamW)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)
    model = kt.compile_classifier(_tiny(), optimizer="sgd")
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)
    assert float(model.optimizer.momentum) == pytest.approx(0.9)
    model = kt.compile_classifier(_tiny(), optimizer="adamw")
    assert float(model.optimizer.weight_decay) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="optimizer"):
        kt.compile_classifier(_tiny(), optimizer="rmsprop-ish")
    with pytest.raises(ValueError, match="learning_rate"):
        kt.compile_classifier(_tiny(), learning_rate=-1)


@pytest.mark.backends("torch")
def test_frozen_layers_cost_no_backward_pass_on_torch():
    # keras-team/keras#18519: torch must not build gradients for frozen weights.
    model = _tiny()
    backbone = model.get_layer("backbone")
    assert not any(v.value.requires_grad for v in backbone.weights)
    assert all(v.value.requires_grad for v in model.get_layer("predictions").weights)
    x, y = _data()
    model.train_on_batch(x, y)
    assert all(v.value.grad is None for v in backbone.weights)  # no backward through them
    assert all(v.value.grad is not None for v in model.get_layer("predictions").weights)
    kt.unfreeze_backbone(model, top_n=3)
    trainable = {id(v) for v in backbone.trainable_weights}
    assert trainable and all(
        v.value.requires_grad == (id(v) in trainable) for v in backbone.weights
    )
