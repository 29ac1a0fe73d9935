"""`fine_tune` when it fails: the model's trainable flags and compiled state put back after
an error in either stage, and arguments refused before anything trains."""

import datetime
import functools
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_transfer as kt
from keras_transfer.training.stage_compiling import learning_rate_value


def _mobilenet():
    return kt.build_image_classifier(
        "mobilenet", 2, input_shape=(32, 32, 3), weights=None, backbone_kwargs={"alpha": 0.25},
        augmentation=None,
    )  # fmt: skip


def _tiny_classifier(num_classes=2):
    """A classifier laid out as `build_image_classifier`'s (a layer named "backbone" with 2
    layers), not compiled."""
    backbone = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D()],
        name="backbone",
    )
    images = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(num_classes, activation="softmax")(backbone(images))
    return keras.Model(images, outputs)


def _dataset(size=32, n=16):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (n, size, size, 3)).astype("float32")
    labels = keras.utils.to_categorical(np.arange(n) % 2, 2)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)


def _flags(model):
    backbone = model.get_layer("backbone")
    layers = [(layer.name, layer.trainable) for layer in [*model.layers, *backbone.layers]]
    return layers, [(weight.path, weight.trainable) for weight in model.weights]


class _Failure(Exception):
    pass


class _RaiseInFit(keras.callbacks.Callback):
    """Raises `error` at the end of the first epoch of the `fit_number`-th `fit`."""

    def __init__(self, fit_number, error):
        super().__init__()
        self.fit_number, self.error, self.fits = fit_number, error, 0
        self.backbone_trainable = None

    def on_train_begin(self, logs=None):
        self.fits += 1

    def on_epoch_end(self, epoch, logs=None):
        if self.fits == self.fit_number:
            layers = {layer.name: layer for layer in self.model.layers}
            if "backbone" in layers:
                self.backbone_trainable = layers["backbone"].trainable
            raise self.error


def test_an_error_in_stage_2_puts_back_flags_and_the_compiled_optimizer():
    model = _mobilenet()
    kt.unfreeze_backbone(model, top_n=5)  # the user's own mix of trainable layers
    kt.compile_classifier(model, keras.optimizers.SGD(learning_rate=0.05, momentum=0.5))
    optimizer, loss, before = model.optimizer, model.loss, _flags(model)
    failing = _RaiseInFit(2, _Failure("from a callback"))  # stage 1: 1 fit on features
    with pytest.raises(_Failure) as raised:
        kt.fine_tune(
            model, _dataset(), head_epochs=1, finetune_epochs=2, callbacks=[failing], verbose=0
        )
    assert raised.value is failing.error
    assert failing.backbone_trainable is True  # raised while the whole backbone trained
    assert _flags(model) == before
    assert model.compiled and model.optimizer is optimizer
    assert learning_rate_value(model.optimizer) == pytest.approx(0.05)  # not the schedule
    assert type(model.loss) is type(loss)
    model.fit(_dataset().take(1), verbose=0)  # trains as compiled before the call
    assert int(model.optimizer.iterations) == 1


def test_an_interrupt_in_stage_1_puts_back_flags_and_the_compiled_state():
    model = _mobilenet()
    model.get_layer("backbone").trainable = True  # a fully trainable backbone, compiled
    kt.compile_classifier(model, label_smoothing=0.2)
    optimizer, before = model.optimizer, _flags(model)
    failing = _RaiseInFit(1, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):  # stage 1 through the model: backbone frozen
        kt.fine_tune(
            model, _dataset(), head_epochs=2, finetune_epochs=0, callbacks=[failing],
            cache_features=False, label_smoothing=0.0, verbose=0,
        )  # fmt: skip
    assert failing.backbone_trainable is False
    assert _flags(model) == before and model.get_layer("backbone").trainable
    assert model.optimizer is optimizer
    assert model.loss.get_config()["label_smoothing"] == pytest.approx(0.2)
    # A model that was not compiled is not compiled after the error.
    model = _tiny_classifier()
    before = _flags(model)
    with pytest.raises(_Failure):
        kt.fine_tune(
            model, _dataset(8), head_epochs=1, finetune_epochs=1, cache_features=False,
            callbacks=[_RaiseInFit(1, _Failure())], verbose=0,
        )  # fmt: skip
    assert not model.compiled and model.optimizer is None and _flags(model) == before


def test_arguments_refused_before_training():
    model, data = _tiny_classifier(), _dataset(8)
    weights = model.get_weights()
    refused = [
        ({"verbose": 3}, r"`verbose` must be 'auto', 0 \(silent\), 1"),
        ({"verbose": "yes"}, "`verbose` must be"),
        ({"train_batchnorm": "yes"}, "`train_batchnorm` must be True or False, got 'yes'"),
        ({"train_batchnorm": 1}, "`train_batchnorm` must be True or False"),
        ({"unfreeze_top_n": 3}, r"`unfreeze_top_n=3` is more .* has: 2 layers; pass at most 2"),
        ({"unfreeze_top_n": -1}, "`unfreeze_top_n` must be None or an int >= 0"),
        ({"class_weight": {0: 1.0, 2: 1.0}}, r"key 2 is not a class.*class ids 0 to 1"),
        ({"class_weight": {"cats": 2.0}}, "key 'cats' is not a class"),
        ({"checkpoint_settings": {"when": datetime.date(2024, 1, 2)}}, r"\['when'\] = .*JSON"),
        ({"checkpoint_settings": {"rate": float("nan")}}, r"\['rate'\] = nan .*finite float"),
        ({"checkpoint_settings": ["a"]}, "`checkpoint_settings` must be None or a dict"),
        ({"head_epochs": 1.0}, "`head_epochs` must be 'auto' or an int >= 0"),
        ({"finetune_epochs": np.True_}, "`finetune_epochs` must be 'auto' or an int >= 0"),
    ]
    for arguments, message in refused:
        with pytest.raises(ValueError, match=message):
            kt.fine_tune(model, data, **{"head_epochs": 1, "finetune_epochs": 1, **arguments})
    assert not model.compiled  # nothing trained or compiled
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights(), strict=True))


def test_numpy_integers_and_bools_are_accepted(tmp_path):
    model = _tiny_classifier()
    histories = kt.fine_tune(
        model, _dataset(8), head_epochs=np.int64(1), finetune_epochs=np.int32(1),
        unfreeze_top_n=np.int64(2), train_batchnorm=np.False_, verbose=False,
        learning_rate=np.float32(1e-3), finetune_learning_rate=1,  # ints, NumPy floats
        checkpoint_dir=tmp_path / "ckpt", checkpoint_settings={"note": "x", "n": np.int64(3)},
    )  # fmt: skip
    assert len(histories["head"].epoch) == 1 and histories["finetune"].epoch == [1]


def test_checkpoint_settings_are_kept_apart_from_fine_tunes_own(tmp_path):
    from keras_transfer.training.checkpointing import read_checkpoint

    model, data, ckpt = _tiny_classifier(), _dataset(8), tmp_path / "ckpt"
    mine = {"finetune_epochs": 99, "n": np.int64(3)}
    run = dict(head_epochs=1, finetune_epochs=1, checkpoint_dir=ckpt, verbose=0)
    with pytest.raises(_Failure):  # stopped in stage 2: the checkpoint stays
        kt.fine_tune(
            model, data, checkpoint_settings=mine, callbacks=[_RaiseInFit(2, _Failure())], **run
        )
    settings = json.loads((ckpt / "state.json").read_text())["settings"]
    assert settings["finetune_epochs"] == 1
    assert settings["checkpoint_settings"] == {"finetune_epochs": 99, "n": 3}
    with pytest.raises(ValueError, match="checkpoint_settings.n: 3 then, 4 now"):
        read_checkpoint(ckpt, {**settings, "checkpoint_settings": {**mine, "n": 4}})
    # A dotted key is not taken for a nested one.
    state = json.loads((ckpt / "state.json").read_text())
    state["settings"]["checkpoint_settings"] = {"n": {"x": 3}}
    (ckpt / "state.json").write_text(json.dumps(state))
    dotted = {**settings, "checkpoint_settings": {"n.x": 3}}
    with pytest.raises(ValueError, match=r"checkpoint_settings.n.x: 3 then, unset now, \["):
        read_checkpoint(ckpt, dotted)


def test_an_unregistered_loss_function_is_kept_through_every_recompile():
    calls = []

    def my_loss(y_true, y_pred):  # a plain function: Keras cannot rebuild it from its config
        calls.append(1)
        return keras.losses.categorical_crossentropy(y_true, y_pred)

    model, data = _tiny_classifier(), _dataset(8)
    model.compile(optimizer="adam", loss=my_loss, metrics=["accuracy"])
    histories = kt.fine_tune(model, data, data, finetune_epochs=1, verbose=0)  # the probe head
    assert list(histories) == ["head", "finetune"] and calls
    assert model.loss is my_loss  # compiled as the user compiled it
    result = kt.lr_find(model, data, num_steps=5)
    assert 1 <= len(result.learning_rates) <= 5 and model.loss is my_loss  # may diverge early
    smoothed = functools.partial(keras.losses.categorical_crossentropy, label_smoothing=0.1)
    model.compile(optimizer="adam", loss=smoothed)  # Keras cannot even serialise it
    kt.fine_tune(model, data, data, finetune_epochs=1, verbose=0)
    assert model.loss is smoothed
