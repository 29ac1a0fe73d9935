import json
import warnings

import keras
import numpy as np
import pytest
from conftest import require_shared

import keras_transfer as kt


def _tiny(num_classes=3, **kwargs):
    kwargs.setdefault("weights", None)
    kwargs.setdefault("backbone_kwargs", {"alpha": 0.25})
    return kt.build_image_classifier("mobilenet", num_classes, input_shape=(32, 32, 3), **kwargs)


def _images(n=4, size=32, dtype="float32"):
    return np.random.default_rng(1).uniform(0, 255, (n, size, size, 3)).astype(dtype)


def test_outputs_probabilities_for_uint8_and_float_pixels():
    model = _tiny()
    pixels = _images(dtype="uint8")
    from_uint8 = keras.ops.convert_to_numpy(model(pixels))
    from_float = keras.ops.convert_to_numpy(model(pixels.astype("float32")))
    assert from_uint8.shape == (4, 3)
    np.testing.assert_allclose(from_uint8.sum(-1), 1, atol=1e-5)
    np.testing.assert_allclose(from_uint8, from_float, atol=1e-6)


def test_preprocessing_inside_the_model_is_the_backbones_own():
    model = _tiny()
    layer = model.get_layer("preprocessing")
    pixels = _images()
    expected = keras.applications.mobilenet.preprocess_input(pixels.copy())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(pixels)), expected, atol=1e-6)
    assert float(expected.min()) >= -1 and float(expected.max()) <= 1


def test_augmentation_is_active_only_in_training():
    model = _tiny(dropout=0.0)
    pixels = _images()
    first = keras.ops.convert_to_numpy(model(pixels, training=False))
    second = keras.ops.convert_to_numpy(model(pixels, training=False))
    np.testing.assert_allclose(first, second)
    augmentation = model.get_layer("augmentation")
    augmented = keras.ops.convert_to_numpy(augmentation(pixels, training=True))
    assert not np.allclose(augmented, pixels)


def test_no_augmentation_and_custom_layers():
    assert "augmentation" not in [layer.name for layer in _tiny(augmentation=None).layers]
    model = _tiny(augmentation=[keras.layers.RandomFlip("vertical")])
    assert len(model.get_layer("augmentation").layers) == 1
    with pytest.raises(ValueError, match="augmentation"):
        _tiny(augmentation="strong")
    with pytest.raises(ValueError, match=r"RandomCrop\) turns images of shape \(32, 32, 3\) into"):
        _tiny(augmentation=[keras.layers.RandomCrop(24, 24)])
    crop = [keras.layers.RandomCrop(24, 24), keras.layers.Resizing(32, 32)]  # as the error says
    assert _tiny(augmentation=crop).predict(np.zeros((1, 32, 32, 3)), verbose=0).shape == (1, 3)


def test_resampling_augmentation_in_the_model_is_said_to_be_slow_on_torch_and_jax(backend):
    from keras_transfer.data.pipeline_augmentation import warn_slow_augmentation

    def said(model, stages):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            warn_slow_augmentation(model, stages)
        return [str(w.message) for w in record]

    def with_augmentation(layers):  # as build_image_classifier makes it (see above)
        block = keras.Sequential(layers, name="augmentation")
        return keras.Sequential([keras.Input((8, 8, 3)), block, keras.layers.Flatten()])

    model = with_augmentation(kt.default_augmentation())
    assert said(model, []) == []  # no epoch runs through it
    flips = [keras.layers.RandomFlip("horizontal")]
    assert said(with_augmentation(flips), ["fine-tuning"]) == []
    if backend == "tensorflow":
        assert said(model, ["fine-tuning"]) == []
        return
    (message,) = said(model, ["the head stage", "fine-tuning"])
    assert message.startswith(f"On {backend}, the model's augmentation layers RandomRotation, ")
    assert "RandomZoom resample every image" in message and "--no-augmentation" in message
    assert "each epoch of the head stage and fine-tuning several times slower" in message


class _Batches(keras.utils.PyDataset):
    def __init__(self, images, labels):
        super().__init__()
        self.images, self.labels = images, labels

    def __len__(self):
        return 1

    def __getitem__(self, index):
        return self.images, self.labels


@pytest.mark.backends("torch")
def test_fine_tune_says_which_stages_run_through_slow_augmentation():
    images, labels = _images(), keras.utils.to_categorical([0, 1, 2, 0], 3)
    data = _Batches(images, labels)  # not tf.data: the augmentation stays in the model
    with pytest.warns(UserWarning, match="resample") as record:
        kt.fine_tune(_tiny(), data, head_epochs=1, finetune_epochs=1, verbose=0)
    (message,) = [str(w.message) for w in record if "resample" in str(w.message)]
    assert "fine-tuning several times slower" in message


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 1}, "num_classes"),
        ({"pooling": "sum"}, "pooling"),
        ({"dropout": 1.5}, "dropout"),
        ({"freeze": "all"}, "freeze"),
        # Keys the classifier sets (was "got multiple values for argument 'weights'").
        ({"backbone_kwargs": {"weights": None}}, "`backbone_kwargs` sets 'weights'.*weights="),
        ({"backbone_kwargs": {"input_shape": (32, 32, 3)}}, "sets 'input_shape'"),
        ({"backbone_kwargs": {"pooling": "max"}}, "sets 'pooling'.*pooling='avg' or 'max'"),
        ({"backbone_kwargs": {"include_top": True}}, "sets 'include_top'"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    num_classes = kwargs.pop("num_classes", 2)
    with pytest.raises(ValueError, match=match):
        _tiny(num_classes, **kwargs)


def test_weights_by_path_and_missing_file(tmp_path):
    source = _tiny(augmentation=None)
    path = str(tmp_path / "backbone.weights.h5")
    source.get_layer("backbone").save_weights(path)
    model = _tiny(augmentation=None, weights=path)
    for a, b in zip(
        source.get_layer("backbone").weights, model.get_layer("backbone").weights, strict=True
    ):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        _tiny(weights=str(tmp_path / "missing.h5"))


def test_imagenet_weights_from_the_keras_cache():
    require_shared("weights", "keras", "mobilenet_2_5_224_tf_no_top.h5")
    model = kt.build_image_classifier(
        "mobilenet", 2, input_shape=(224, 224, 3), backbone_kwargs={"alpha": 0.25}
    )
    reference = keras.applications.MobileNet(
        alpha=0.25, include_top=False, weights="imagenet", input_shape=(224, 224, 3)
    )
    ours = model.get_layer("backbone").weights[0]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(reference.weights[0])
    )


def test_save_and_load_keep_predictions_and_trainable_flags(tmp_path):
    model = _tiny()
    kt.unfreeze_backbone(model, top_n=5)

    def flags_of(m):
        return [
            (layer.name, layer.trainable)
            for layer in m.get_layer("backbone").layers
            if layer.weights
        ]

    flags = flags_of(model)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    pixels = _images()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(pixels)),
        keras.ops.convert_to_numpy(model(pixels)),
        atol=1e-6,
    )
    assert flags_of(loaded) == flags
    assert [name for name, trainable in flags if trainable] == ["conv_pw_13"]
    assert json.loads(json.dumps(loaded.get_config())) is not None


def test_keras_hub_preset_folder_as_backbone():
    preset = require_shared("weights", "keras_hub", "efficientnet_lite0_imagenet")
    model = kt.build_image_classifier(
        f"hub:{preset}", 2, input_shape=(64, 64, 3), augmentation=None
    )
    assert model.input_shape == (None, 64, 64, 3)
    probabilities = keras.ops.convert_to_numpy(model(_images(2, 64)))
    assert probabilities.shape == (2, 2)
    assert not model.get_layer("backbone").trainable
    assert kt.default_image_size(f"hub:{preset}") == (224, 224)


def test_unknown_hub_preset_says_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="preset folder not found.*no_such_preset"):
        kt.build_image_classifier(f"hub:{tmp_path / 'no_such_preset'}", 2)
    (tmp_path / "empty_preset").mkdir()
    with pytest.raises(ValueError, match="empty_preset' \\(folder\\)"):
        kt.build_image_classifier(f"hub:{tmp_path / 'empty_preset'}", 2)


def test_weights_file_that_is_not_hdf5_and_bad_weights_argument(tmp_path):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"definitely not hdf5")
    with pytest.raises(ValueError, match="garbage.h5"):
        _tiny(weights=str(garbage))
    with pytest.raises(ValueError, match="`weights`"):
        _tiny(weights=True)


def test_weights_file_of_another_configuration_is_named():
    with_top = require_shared("weights", "keras", "mobilenet_2_5_128_tf.h5")
    with pytest.raises(ValueError, match="128_tf.h5.*no_top.*is mobilenet_2_5_128_tf_no_top"):
        kt.build_image_classifier(
            "mobilenet",
            2,
            input_shape=(128, 128, 3),
            weights=str(with_top),
            backbone_kwargs={"alpha": 0.25},
        )
    no_top = require_shared("weights", "keras", "mobilenet_2_5_224_tf_no_top.h5")
    with pytest.raises(ValueError, match="Keras uses for these arguments is mobilenet_5_0_160_tf"):
        kt.build_image_classifier(  # another alpha and size than the file's
            "mobilenet",
            2,
            input_shape=(160, 160, 3),
            weights=str(no_top),
            backbone_kwargs={"alpha": 0.5},
        )
