import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    SENTIMENT_ROWS,
    without_encoder_dropout,
    write_image_folder,
    write_text_file,
)

import keras_transfer as kt
from keras_transfer.features.feature_cache import split_for_caching
from keras_transfer.models.layers import FoldedFunctional
from keras_transfer.models.precision import dtype_policy


def _image_data():
    """Dark vs bright 32x32 images in fixed batches (no reshuffling: both runs see the same)."""
    rng = np.random.default_rng(0)
    labels = np.arange(24) % 2
    images = rng.normal(60 + 120 * labels[:, None, None, None], 30, (24, 32, 32, 3))
    images = np.clip(images, 0, 255).astype("float32")
    one_hot = np.eye(2, dtype="float32")[labels]
    train = tf.data.Dataset.from_tensor_slices((images[:16], one_hot[:16])).batch(4)
    val = tf.data.Dataset.from_tensor_slices((images[16:], one_hot[16:])).batch(4)
    return train, val


def _image_model():
    # VGG16: its random (weights=None) features tell dark from bright; MobileNet's are ~0.
    return kt.build_image_classifier(
        "vgg16",
        2,
        input_shape=(32, 32, 3),
        weights=None,
        augmentation=None,
        dropout=0.3,  # in the head: random in both runs, with the same draws
    )


def _weights(layer):
    return [keras.ops.convert_to_numpy(w) for w in layer.weights]


def test_cached_and_uncached_head_training_give_the_same_model():
    train, val = _image_data()
    runs = {}
    for cache in (False, True):
        keras.utils.set_random_seed(5)
        model = _image_model()
        histories = kt.fine_tune(
            model,
            train,
            val,
            head_epochs=3,
            learning_rate=0.05,
            cache_features=cache,
            verbose=0,
            finetune_epochs=0,
        )
        runs[cache] = model, histories["head"].history
    (uncached, history), (cached, cached_history) = runs[False], runs[True]
    for a, b in zip(
        _weights(uncached.get_layer("predictions")),
        _weights(cached.get_layer("predictions")),
        strict=True,
    ):
        assert not np.allclose(a, 0, atol=1e-4)  # the bias too: the head learned
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    assert cached_history.keys() == history.keys()
    for metric, values in history.items():
        np.testing.assert_allclose(cached_history[metric], values, rtol=1e-4, atol=1e-5)
    # The returned model is the whole classifier, trained in place: same predictions.
    images = np.concatenate([x for x, _ in val.as_numpy_iterator()])
    np.testing.assert_allclose(
        cached.predict(images, verbose=0), uncached.predict(images, verbose=0), atol=1e-5
    )
    assert cached.get_layer("backbone").trainable is False


def test_auto_caches_in_inference_mode(capsys, tmp_path):
    write_image_folder(tmp_path / "train", per_class=4)
    write_image_folder(tmp_path / "val", per_class=2)
    train_ds, val_ds, _ = kt.image_folder_datasets(tmp_path, image_size=32, batch_size=4)
    model = kt.build_image_classifier(
        "mobilenet", 2, input_shape=(32, 32, 3), weights=None, backbone_kwargs={"alpha": 0.25}
    )  # default augmentation: random below the head
    split = split_for_caching(model)
    assert not split.exact and any(name.startswith("random_flip") for name in split.random_layers)
    for cache in ("auto", True):  # augmentation inactive in the cached pass, as training=False
        history = kt.fine_tune(
            model, train_ds, val_ds, head_epochs=2, cache_features=cache, verbose=1,
            finetune_epochs=0,
        )["head"]  # fmt: skip
        out = capsys.readouterr().out
        assert "outputs in inference mode (random_flip" in out and "--feature-cache off" in out
        assert "12/12" in out and "/example" in out  # the caching pass's progress bar
        assert len(history.history["val_accuracy"]) == 2
    kt.fine_tune(model, train_ds, val_ds, head_epochs=1, cache_features=False, finetune_epochs=0)
    assert "Caching" not in capsys.readouterr().out
    with pytest.raises(ValueError, match="cache_features"):
        kt.fine_tune(model, train_ds, head_epochs=1, cache_features="yes", finetune_epochs=0)
    inputs = keras.Input((32, 32, 3))
    backbone = model.get_layer("backbone")
    features = keras.layers.Concatenate(name="both")([backbone(inputs), backbone(inputs * 0.5)])
    two_paths = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(features)))
    assert split_for_caching(two_paths) is None  # not a chain: cannot be cut in two
    with pytest.raises(ValueError, match="is not a chain of layers"):
        kt.fine_tune(two_paths, train_ds, head_epochs=1, cache_features=True, finetune_epochs=0)


def test_a_pipeline_that_gives_other_inputs_each_epoch_fails_with_a_clear_error():
    # A .take() of a reshuffling pipeline: its inputs are looked up by fingerprint, and the
    # second epoch brings images the caching pass never saw.
    train, _ = _image_data()
    reshuffled = train.unbatch().shuffle(16, seed=3, reshuffle_each_iteration=True).batch(4)
    model = _image_model()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\.take\(\), \.skip\(\)"):
        kt.fine_tune(
            model,
            reshuffled.take(1),
            head_epochs=3,
            cache_features=True,
            verbose=0,
            finetune_epochs=0,
        )
    model = _image_model()
    kt.fine_tune(
        model, reshuffled.take(1), head_epochs=3, cache_features=False, verbose=0, finetune_epochs=0
    )


def _spy_on_inference_extractor(monkeypatch):
    """The list that collects what each `backbone_rewrites.inference_extractor` call returns."""
    from keras_transfer.features import backbone_rewrites

    made = []
    original = backbone_rewrites.inference_extractor

    def spy(*args):
        made.append(original(*args))
        return made[-1]

    monkeypatch.setattr(backbone_rewrites, "inference_extractor", spy)
    return made


@pytest.mark.parametrize("backbone", ["vgg16", "mobilenet_v2", "efficientnet_b0"])
def test_torch_extracts_features_in_the_channels_first_layout(backbone, monkeypatch):
    """On torch the caching pass runs a channels-first copy of the backbone (no transposes
    around each convolution) when it gives the channels-last features; elsewhere, and for
    a copy that computes something else, the model's own layout."""
    if keras.backend.backend() != "torch" and backbone != "vgg16":
        pytest.skip("torch-only copies; vgg16 checks that other backends keep their layout")
    made = _spy_on_inference_extractor(monkeypatch)
    model = kt.build_image_classifier(
        backbone, 2, input_shape=(32, 32, 3), weights=None, augmentation=None
    )
    kt.freeze_backbone(model)
    train, val = _image_data()
    split = split_for_caching(model)
    _assert_cached_features_are_the_models(model, split, train, val)
    if keras.backend.backend() == "torch":
        assert len(made) == 1 and made[0] is not None  # tried once, on the first batch
        layers = [layer for layer in made[0]._flatten_layers() if hasattr(layer, "data_format")]
        assert layers and all(layer.data_format == "channels_first" for layer in layers)
    else:
        assert made == [None]  # VGG16 has no BatchNormalization to fold: the model's layers
    # Caching again after the weights changed: the copy is made anew from them.
    kernel = model.get_layer("backbone").weights[0]
    kernel.assign(kernel * 1.5)
    _assert_cached_features_are_the_models(model, split, train, val)

    # A layer that builds in the other layout but computes something else there (a softmax
    # over the last axis, the width of 8x8 maps with 8 channels) is caught by the check,
    # even when the first images are all black (uniform maps: equal in both layouts).
    inputs = keras.Input((8, 8, 3))
    maps = keras.layers.Conv2D(8, 1, use_bias=False)(inputs)
    odd = keras.Model(inputs, keras.layers.Softmax(axis=-1)(maps), name="backbone")
    image = keras.Input((8, 8, 3))
    features = keras.layers.GlobalAveragePooling2D(name="pooling")(odd(image))
    model = keras.Model(image, keras.layers.Dense(2, activation="softmax")(features))
    kt.freeze_backbone(model)
    images = np.random.default_rng(0).uniform(0, 255, (12, 8, 8, 3)).astype("float32")
    images[:4] = 0
    labels = np.eye(2, dtype="float32")[np.arange(12) % 2]
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(6)
    made.clear()
    _assert_cached_features_are_the_models(model, split_for_caching(model), data, None)
    assert made == [None]  # rejected on torch, nothing to fold or transpose elsewhere


def _batchnorm_backbone():
    """A small backbone with BatchNormalizations that can be folded (after a Conv2D with and
    without bias, a depthwise convolution with 2 channels per input channel, BN without
    `center` or `scale`) and 3 that cannot (after an activated convolution, after a
    convolution whose output a residual sum also reads, after that sum), all with random
    statistics."""
    rng = np.random.default_rng(0)
    layers = keras.layers
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = layers.ReLU(6.0)(layers.BatchNormalization()(x))
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", use_bias=False)(x)
    x = layers.ReLU()(layers.BatchNormalization(center=False)(x))
    x = layers.Conv2D(16, 1, use_bias=True)(x)
    x = layers.BatchNormalization(scale=False, epsilon=1e-5)(x)
    y = layers.Conv2D(16, 1, activation="relu")(x)
    y = layers.BatchNormalization()(y)  # after an activation: kept
    z = layers.Conv2D(16, 1)(y)
    x = layers.Add()([layers.BatchNormalization()(z), z])  # z is read twice: kept
    x = layers.BatchNormalization()(x)  # after a sum: kept
    backbone = keras.Model(inputs, x, name="backbone")
    for layer in backbone.layers:
        for variable in layer.weights:
            shape = variable.shape
            if variable.path.endswith("moving_variance"):
                variable.assign(rng.uniform(0.2, 3.0, shape).astype("float32"))
            else:
                variable.assign(rng.normal(0, 0.5, shape).astype("float32"))
    image = keras.Input((16, 16, 3))
    features = layers.GlobalAveragePooling2D(name="pooling")(backbone(image))
    return keras.Model(image, layers.Dense(2, activation="softmax")(features))


def test_batchnorm_is_folded_into_convolutions_for_the_caching_pass(monkeypatch):
    """On tensorflow and torch the caching pass folds each BatchNormalization that alone
    reads a linear convolution into it, and gives the model's features up to float noise;
    jax keeps the BatchNormalizations and computes the depthwise convolution by shifts."""
    made = _spy_on_inference_extractor(monkeypatch)
    model = _batchnorm_backbone()
    kt.freeze_backbone(model)
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (12, 16, 16, 3)).astype("float32")
    labels = np.eye(2, dtype="float32")[np.arange(12) % 2]
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(6)
    _assert_cached_features_are_the_models(model, split_for_caching(model), data, None)
    assert len(made) == 1 and made[0] is not None
    kinds = [type(layer).__name__ for layer in made[0]._flatten_layers()]
    if keras.backend.backend() == "jax":
        assert kinds.count("BatchNormalization") == 6
        assert kinds.count("ShiftedDepthwiseConv2D") == 1 and "DepthwiseConv2D" not in kinds
    elif keras.backend.backend() == "tensorflow":  # the model's own graph, 3 pairs folded
        (folded,) = [layer for layer in made[0].layers if isinstance(layer, FoldedFunctional)]
        assert len(folded.convolutions) == len(folded.left_out) == 3
        assert not folded.weights  # the folded weights are constants
    else:
        assert kinds.count("BatchNormalization") == 3  # of 6: the 3 that cannot be folded
        convolutions = ("Conv2D", "DepthwiseConv2D", "FusedConv2D", "FusedDepthwiseConv2D")
        assert sum(kinds.count(kind) for kind in convolutions) == 5  # none lost
    if keras.backend.backend() == "torch":  # bias and ReLU inside each convolution's call
        assert kinds.count("FusedConv2D") == 4 and kinds.count("FusedDepthwiseConv2D") == 1
        assert "ReLU" not in kinds  # both read a folded BatchNormalization alone
    elif keras.backend.backend() == "jax":
        assert kinds.count("ReLU") == 2
    # The model itself is unchanged: its BatchNormalizations and convolutions are intact.
    backbone = model.get_layer("backbone")
    assert [type(layer).__name__ for layer in backbone.layers].count("BatchNormalization") == 6
    assert not backbone.layers[1].use_bias
    assert [type(layer) for layer in backbone.layers].count(keras.layers.DepthwiseConv2D) == 1

    # Under mixed precision nothing is folded (a 16-bit bias would round off the features)
    # nor computed by shifts (taps summed in 16 bits).
    with dtype_policy("mixed_bfloat16"):
        model = _batchnorm_backbone()
    kt.freeze_backbone(model)
    made.clear()
    split_for_caching(model).cache(data)
    if keras.backend.backend() != "torch":
        assert made == [None]
    else:  # torch: the channels-first copy, checked, with all 6 BatchNormalizations
        kinds = [type(layer).__name__ for layer in made[0]._flatten_layers()]
        assert kinds.count("BatchNormalization") == 6


@pytest.mark.parametrize("constants_limit", [2**20, 0], ids=["constants", "variables"])
def test_folded_functional_gives_the_models_outputs(constants_limit):
    """`FoldedFunctional` (tensorflow's caching pass, usable on every backend): the model's
    outputs up to float noise, with the folded weights held as constants or variables."""
    from keras_transfer.features.backbone_rewrites import _foldable_batchnorms

    backbone = _batchnorm_backbone().get_layer("backbone")
    folded = _foldable_batchnorms([backbone])
    layer = FoldedFunctional(backbone, folded, constants_limit=constants_limit)
    assert len(layer.convolutions) == 3 and len(layer.weights) == (0 if constants_limit else 6)
    images = np.random.default_rng(4).uniform(0, 255, (3, 16, 16, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(backbone(images, training=False))
    outputs = keras.ops.convert_to_numpy(layer(images))
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    assert layer.compute_output_shape((None, 16, 16, 3)) == (None, 16, 16, 16)


def test_folded_functional_takes_keyword_calls_and_the_models_policy():
    """A convolution called as `conv(inputs=x)` is folded like any other, and the layer
    computes in the model's float32 whatever the global policy was when it was made."""
    from keras_transfer.features.backbone_rewrites import _foldable_batchnorms

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs=inputs)
    batchnorm = keras.layers.BatchNormalization()
    backbone = keras.Model(inputs, batchnorm(x))
    rng = np.random.default_rng(5)
    for variable in batchnorm.weights:
        variable.assign(rng.uniform(0.2, 3.0, variable.shape).astype("float32"))
    folded = _foldable_batchnorms([backbone])
    assert list(folded.values()) == [batchnorm]
    with dtype_policy("mixed_bfloat16"):
        layer = FoldedFunctional(backbone, folded)
    images = rng.uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(backbone(images, training=False))
    outputs = keras.ops.convert_to_numpy(layer(images))
    assert outputs.dtype == "float32"
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_caching_falls_back_to_the_models_layers_when_the_rewrite_fails_to_run(monkeypatch):
    """A rewritten extractor that fails on its first batch (a layer call the rewrite does
    not handle) leaves the caching pass on the model's own layers, with their features."""
    from keras_transfer.features import backbone_rewrites

    made = _spy_on_inference_extractor(monkeypatch)
    predict = backbone_rewrites.predict_full_batch
    failed = []

    def failing_rewrite(extractor, images):
        if made and extractor is made[0]:
            failed.append(extractor)
            raise TypeError("an unexpected layer call")
        return predict(extractor, images)

    monkeypatch.setattr(backbone_rewrites, "predict_full_batch", failing_rewrite)
    model, data = _frozen_batchnorm_model_and_data(seed=6, count=12)
    _assert_cached_features_are_the_models(model, split_for_caching(model), data, None)
    assert made[0] is not None and len(failed) == 1  # tried once, then the model's layers


def test_16_bit_layers_of_a_float32_model_are_not_rewritten(monkeypatch):
    """Folding and the depthwise rewrite look at each layer's own dtype: a bfloat16
    BatchNormalization or DepthwiseConv2D inside a float32 model is left as it is."""
    made = _spy_on_inference_extractor(monkeypatch)
    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 1, use_bias=False)(inputs)
    x = layers.BatchNormalization(dtype="mixed_bfloat16")(x)
    x = layers.DepthwiseConv2D(3, padding="same", dtype="mixed_bfloat16")(x)
    x = layers.BatchNormalization()(x)
    backbone = keras.Model(inputs, x, name="backbone")
    image = keras.Input((8, 8, 3))
    features = layers.GlobalAveragePooling2D(name="pooling")(backbone(image))
    model = keras.Model(image, layers.Dense(2, activation="softmax")(features))
    kt.freeze_backbone(model)
    images = np.random.default_rng(3).uniform(0, 255, (4, 8, 8, 3)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((images, np.eye(2, dtype="float32")[[0, 1, 0, 1]]))
    split_for_caching(model).cache(data.batch(4))
    if keras.backend.backend() == "torch":  # the channels-first copy, nothing folded
        kinds = [type(layer).__name__ for layer in made[0]._flatten_layers()]
        assert kinds.count("BatchNormalization") == 2 and "DepthwiseConv2D" in kinds
    else:
        assert made == [None]


def test_caching_falls_back_to_the_models_layers_when_a_rewrite_fails(monkeypatch):
    """A layer that the folding (on jax: the depthwise rewrite) cannot inspect (here: the
    inspection raises) leaves the caching pass on the model's own layers, with the model's
    features."""
    from keras_transfer.features import backbone_rewrites

    def broken(layers):
        raise RuntimeError("an exotic layer")

    monkeypatch.setattr(backbone_rewrites, "_foldable_batchnorms", broken)
    monkeypatch.setattr(backbone_rewrites, "_depthwise_convolutions", broken)
    made = _spy_on_inference_extractor(monkeypatch)
    model, data = _frozen_batchnorm_model_and_data(seed=2, count=6)
    _assert_cached_features_are_the_models(model, split_for_caching(model), data, None)
    assert made == [None]


def _frozen_batchnorm_model_and_data(seed, count):
    """`_batchnorm_backbone`'s classifier, frozen, and `count` uniform noise images in
    [0, 255] with alternating labels, in batches of 6."""
    model = _batchnorm_backbone()
    kt.freeze_backbone(model)
    images = np.random.default_rng(seed).uniform(0, 255, (count, 16, 16, 3)).astype("float32")
    labels = np.eye(2, dtype="float32")[np.arange(count) % 2]
    return model, tf.data.Dataset.from_tensor_slices((images, labels)).batch(6)


def _assert_cached_features_are_the_models(model, split, train, val):
    train_features, _ = split.cache(train, val)
    images = np.concatenate([x for x, _ in train.as_numpy_iterator()])
    features = np.concatenate([x for x, _ in train_features.as_numpy_iterator()])
    extractor = keras.Model(model.inputs, model.get_layer("pooling").output)
    expected = extractor.predict_on_batch(images)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5 * scale)


def test_text_head_on_cached_encoder_outputs(tiny_bert_preset):
    texts = [text for text, _ in SENTIMENT_ROWS]
    one_hot = np.array([[label == "neg", label == "pos"] for _, label in SENTIMENT_ROWS], "float32")
    train_ds = tf.data.Dataset.from_tensor_slices((texts[2:], one_hot[2:])).batch(4)
    val_ds = tf.data.Dataset.from_tensor_slices((texts[:2], one_hot[:2])).batch(4)
    runs = {}
    for cache in (False, True):
        keras.utils.set_random_seed(5)
        model = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=16)
        without_encoder_dropout(model)  # nothing random below the head
        assert split_for_caching(model).exact
        history = kt.fine_tune(
            model,
            train_ds,
            val_ds,
            head_epochs=2,
            learning_rate=1e-2,
            cache_features=cache,
            verbose=0,
            finetune_epochs=0,
        )["head"].history
        runs[cache] = model, history
    (uncached, history), (cached, cached_history) = runs[False], runs[True]
    np.testing.assert_allclose(cached_history["loss"], history["loss"], rtol=1e-4)
    for a, b in zip(_weights(uncached.output_dense), _weights(cached.output_dense), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def _head_training(make_data, make_model, cache, **fine_tune_kwargs):
    """Head weights and history of one seeded `fine_tune` run on fresh datasets."""
    keras.utils.set_random_seed(5)
    train_ds, val_ds = make_data()
    model = make_model()
    fine_tune_kwargs = {"finetune_epochs": 0, **fine_tune_kwargs}  # the head alone by default
    history = kt.fine_tune(
        model, train_ds, val_ds, cache_features=cache, verbose=0, **fine_tune_kwargs
    )["head"].history
    return model, history


def _assert_cached_image_head_matches_uncached(make_data):
    """Seeded 3-epoch head trainings of `_image_model` on `make_data()`, with and without
    cached features: the same losses and head weights."""
    runs = {
        cache: _head_training(make_data, _image_model, cache, head_epochs=3, learning_rate=0.05)
        for cache in (False, True)
    }
    (uncached, history), (cached, cached_history) = runs[False], runs[True]
    # Losses, not accuracies: the features come from batches of another size, so they differ
    # in the last float bits (torch), which can flip an example that sits on the boundary.
    for metric in ("loss", "val_loss"):
        np.testing.assert_allclose(cached_history[metric], history[metric], rtol=1e-4)
    for a, b in zip(
        _weights(uncached.get_layer("predictions")),
        _weights(cached.get_layer("predictions")),
        strict=True,
    ):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_folder_pipelines_are_remade_over_the_cached_features(tmp_path):
    """The reshuffled folder pipeline, remade over features: the uncached run's batches."""
    write_image_folder(tmp_path / "train", per_class=7)
    write_image_folder(tmp_path / "val", per_class=3)

    def make_data():
        train_ds, val_ds, _ = kt.image_folder_datasets(tmp_path, image_size=32, batch_size=4)
        return train_ds, val_ds

    train_ds, val_ds = make_data()
    assert train_ds._kt_examples.in_memory  # decoded images, read by index
    model = _image_model()
    kt.freeze_backbone(model)
    split = split_for_caching(model)
    train_features, val_features = split.cache(train_ds, val_ds)
    extractor = keras.Model(model.inputs, model.get_layer("pooling").output)
    fresh_train, _ = make_data()
    for _ in range(3):  # epochs: every one reshuffled, the same way in both pipelines
        for (features, labels), (images, image_labels) in zip(
            train_features.as_numpy_iterator(), fresh_train.as_numpy_iterator(), strict=True
        ):
            np.testing.assert_array_equal(labels, image_labels)
            expected = extractor.predict_on_batch(images)
            np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    orders = [
        np.concatenate([y.argmax(1) for _, y in train_features.as_numpy_iterator()])
        for _ in range(2)
    ]
    assert not np.array_equal(*orders)  # reshuffled
    val_batches = list(val_features.as_numpy_iterator())
    assert [len(y) for _, y in val_batches] == [6]  # in one batch (VALIDATION_BATCH)
    val_images = [(x, y) for x, y in val_ds.as_numpy_iterator()]
    np.testing.assert_array_equal(val_batches[0][1], np.concatenate([y for _, y in val_images]))
    np.testing.assert_allclose(
        val_batches[0][0],
        extractor.predict_on_batch(np.concatenate([x for x, _ in val_images])),
        rtol=1e-5,
        atol=1e-6,
    )

    _assert_cached_image_head_matches_uncached(make_data)


def test_folder_training_data_with_another_validation_pipeline(tmp_path):
    """A folder pipeline for training and a plain tf.data one for validation: the features
    are looked up by fingerprint, and training still sees each epoch's uncached batches."""
    write_image_folder(tmp_path / "train", per_class=7)
    write_image_folder(tmp_path / "val", per_class=3)

    def make_data():
        train_ds, val_ds, _ = kt.image_folder_datasets(tmp_path, image_size=32, batch_size=4)
        batches = list(val_ds.as_numpy_iterator())
        images, labels = (np.concatenate(part) for part in zip(*batches, strict=True))
        return train_ds, tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)

    _assert_cached_image_head_matches_uncached(make_data)


def test_fine_tuning_after_a_cached_head_sees_the_uncached_batches(tmp_path, monkeypatch):
    """Both stages see the same batches with and without cached features and checkpoints,
    on every backend (each epoch's order is drawn from the seed and the epoch, not from how
    many iterators `fit` made); and pipelines that decode their files every epoch
    (`cache=False`: the caching pass decodes them in chunks), with small decode chunks and
    extraction batches (padded at the end), give the same features as images kept in memory
    (the other tests)."""
    from keras_transfer.features import feature_split

    write_image_folder(tmp_path / "train", per_class=7)
    write_image_folder(tmp_path / "val", per_class=3)
    runs = {
        "uncached": dict(cache_features=False),
        "checkpointed": dict(cache_features=False, checkpoint_dir=tmp_path / "checkpoint"),
        "cached": dict(cache_features=True),
    }
    histories = {}
    for name, options in runs.items():
        if name == "cached":
            monkeypatch.setattr(feature_split, "DECODE_CHUNK", 6)  # 20 images: 4 chunks
            monkeypatch.setattr(feature_split, "EXTRACT_BATCH", 4)  # a short batch per chunk
        keras.utils.set_random_seed(5)
        train_ds, val_ds, _ = kt.image_folder_datasets(
            tmp_path, image_size=32, batch_size=4, cache=False
        )
        assert not train_ds._kt_examples.in_memory  # the chunked decoding pass
        histories[name] = kt.fine_tune(
            _image_model(),
            train_ds,
            val_ds,
            head_epochs=2,
            finetune_epochs=2,
            learning_rate=0.05,
            verbose=0,
            **options,
        )
    for name in ("checkpointed", "cached"):
        for stage in ("head", "finetune"):
            for metric in ("loss", "val_loss"):
                np.testing.assert_allclose(
                    histories[name][stage].history[metric],
                    histories["uncached"][stage].history[metric],
                    rtol=1e-4,
                    err_msg=f"{name}: {stage} {metric}",
                )


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_csv_pipelines_are_remade_over_the_cached_encoder_outputs(
    tmp_path, tiny_bert_preset, pooling
):
    """Text from `text_csv_datasets`, encoded by length: the uncached run's loss and head
    (the head reading the pooled [CLS] output or the masked mean of the token outputs)."""
    rows = SENTIMENT_ROWS + [("a " * 40 + "good movie", "pos")]  # one long row: two lengths
    write_text_file(tmp_path / "train.csv", rows)
    write_text_file(tmp_path / "val.csv", SENTIMENT_ROWS[:4])

    def make_data():
        train_ds, val_ds, _ = kt.text_csv_datasets(
            tmp_path / "train.csv", val_path=tmp_path / "val.csv", batch_size=4
        )
        return train_ds, val_ds

    def make_model():
        model = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=64, pooling=pooling)
        without_encoder_dropout(model)  # nothing random below the head
        assert split_for_caching(model).exact
        return model

    runs = {
        cache: _head_training(
            make_data, make_model, cache, head_epochs=3, learning_rate=1e-2, optimizer="adam"
        )
        for cache in (False, True)
    }
    (uncached, history), (cached, cached_history) = runs[False], runs[True]
    np.testing.assert_allclose(cached_history["loss"], history["loss"], rtol=1e-4)
    np.testing.assert_allclose(cached_history["val_loss"], history["val_loss"], rtol=1e-4)
    for a, b in zip(_weights(uncached.output_dense), _weights(cached.output_dense), strict=True):
        assert not np.allclose(a, 0, atol=1e-4)
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_text_encoded_by_length_matches_fixed_padding(tiny_bert_preset):
    from keras_transfer.features.feature_cache import _encode_by_length

    model = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=64)
    texts = [text for text, _ in SENTIMENT_ROWS] + ["a " * 40 + "good movie", "ok"]
    inputs = {
        key: keras.ops.convert_to_numpy(value)
        for key, value in model.preprocessor(tf.constant(texts)).items()
    }
    expected = keras.ops.convert_to_numpy(model.backbone.predict_on_batch(inputs)["pooled_output"])
    batches = [{key: value[i : i + 5] for key, value in inputs.items()} for i in (0, 5, 10)]
    encoded = _encode_by_length(model.backbone, batches, 64, batch_size=2)  # 6 lengths
    np.testing.assert_allclose(encoded, expected, rtol=1e-4, atol=1e-5)
    assert _encode_by_length(model.backbone, [], 64).shape == (0, expected.shape[1])


def _small_chain_model():
    """Rescaling, a functional backbone (convolution, BatchNormalization, ReLU) of 8x8
    images, pooling, a softmax head of 2 classes: quick to build and run on every backend."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    backbone = keras.Model(inputs, x, name="backbone")
    image = keras.Input((8, 8, 3))
    x = backbone(keras.layers.Rescaling(1 / 255)(image))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(image, keras.layers.Dense(2, activation="softmax")(x))


def test_features_above_the_memory_budget_give_the_same_batches_from_a_memory_map(
    tmp_path, monkeypatch
):
    """With the budget at 0 bytes the cached features are memory-mapped from a file: every
    epoch's batches (reshuffled by each iterator, and each epoch's pipeline that `fine_tune`
    makes) and the validation batches are those of features in memory; and `fine_tune` with
    checkpoints trains the same head as without either."""
    from keras_transfer.data.example_sources import epoch_pipeline

    write_image_folder(tmp_path / "train", per_class=5, size=(10, 12))
    write_image_folder(tmp_path / "val", per_class=2, size=(10, 12))

    def batches(dataset):
        return [batch for batch in dataset.as_numpy_iterator()]

    seen, heads = {}, {}
    for budget in ("in memory", "0"):
        if budget == "0":
            monkeypatch.setenv("KERAS_TRANSFER_FEATURE_MEMORY", budget)
        train_ds, val_ds, _ = kt.image_folder_datasets(
            tmp_path, image_size=8, batch_size=4, cache=False
        )
        keras.utils.set_random_seed(3)
        model = _small_chain_model()
        kt.freeze_backbone(model)
        train_features, val_features = split_for_caching(model).cache(train_ds, val_ds)
        assert isinstance(train_features._kt_cache, np.memmap) == (budget == "0")
        seen[budget] = [
            *(batches(train_features) for _ in range(2)),
            *(batches(epoch_pipeline(train_features, tf.constant(e, "int64"))) for e in (0, 1)),
            batches(val_features),
        ]
        keras.utils.set_random_seed(3)
        model = _small_chain_model()
        checkpoint = None if budget == "in memory" else tmp_path / "checkpoint"
        kt.fine_tune(
            model,
            train_ds,
            val_ds,
            head_epochs=3,
            finetune_epochs=0,
            learning_rate=0.05,
            checkpoint_dir=checkpoint,
            verbose=0,
        )
        heads[budget] = model.layers[-1].get_weights()
    for in_memory, mapped in zip(seen["in memory"], seen["0"], strict=True):
        assert len(in_memory) == len(mapped) > 0
        for batch, mapped_batch in zip(in_memory, mapped, strict=True):
            for part, mapped_part in zip(batch, mapped_batch, strict=True):
                np.testing.assert_array_equal(part, mapped_part)
    assert not all(  # reshuffled: the two iterators' orders differ
        np.array_equal(a[1], b[1]) for a, b in zip(*seen["0"][:2], strict=True)
    )
    for weights, mapped_weights in zip(heads["in memory"], heads["0"], strict=True):
        np.testing.assert_allclose(mapped_weights, weights, rtol=1e-5, atol=1e-6)


def test_the_memory_budget_comes_from_the_environment(monkeypatch):
    from keras_transfer.features.feature_store import DEFAULT_MEMORY_BUDGET, memory_budget

    monkeypatch.delenv("KERAS_TRANSFER_FEATURE_MEMORY", raising=False)
    assert memory_budget() == DEFAULT_MEMORY_BUDGET == 2 * 2**30
    monkeypatch.setenv("KERAS_TRANSFER_FEATURE_MEMORY", "1000")
    assert memory_budget() == 1000
    for value in ("2GB", "-1"):
        monkeypatch.setenv("KERAS_TRANSFER_FEATURE_MEMORY", value)
        with pytest.raises(ValueError, match="KERAS_TRANSFER_FEATURE_MEMORY"):
            memory_budget()
