import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SENTIMENT_ROWS, write_image_folder

import keras_transfer as kt
from keras_transfer.cli import main as cli
from keras_transfer.export import runtimes

SIZE = 32
NAMES = ["ants", "bees", "wasps"]


SEED = 3


def _lively_image_model():
    """A tiny MobileNet (weights=None) whose outputs depend on the image: random init alone
    gives ~0 features at 32x32, so BatchNorm offsets and the head are set to spread them.
    Seeded here: a module fixture is made before the per-test seed, after any earlier test."""
    keras.utils.set_random_seed(SEED)
    model = kt.build_image_classifier(
        "mobilenet",
        3,
        input_shape=(SIZE, SIZE, 3),
        weights=None,
        backbone_kwargs={"alpha": 0.25},
    )
    rng = np.random.default_rng(1)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            beta = rng.normal(0.5, 0.2, beta.shape).astype("float32")
            layer.set_weights([gamma, beta, mean, variance * 0.05])
    pixels = _pixels(64, seed=3)
    features = keras.Model(model.inputs, model.get_layer("pooling").output)
    features = features.predict(pixels, verbose=0)
    kernel = rng.normal(size=(features.shape[1], 3))
    kernel *= 2 / (features - features.mean(0)).dot(kernel).std(0)
    bias = -(features @ kernel).mean(0)
    model.get_layer("predictions").set_weights([kernel.astype("float32"), bias.astype("float32")])
    return model


def _pixels(n, seed):
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


@pytest.fixture(scope="module")
def image_model():
    model = _lively_image_model()
    classes = model.predict(_pixels(32, seed=4), verbose=0).argmax(-1)
    assert len(set(classes.tolist())) == 3  # the check below can tell classes apart
    return model


def _check_report(folder, quantization=None):
    with open(os.path.join(folder, "check.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    assert report["quantization"] == quantization
    with open(os.path.join(folder, "class_names.json"), encoding="utf-8") as handle:
        assert json.load(handle) == NAMES
    return report


def _run(model, model_file, tmp_path, n=5):
    """The artifact's probabilities on n new images (another batch size than the exporter's
    check) in its runtime, in a fresh process, against the Keras model."""
    pixels = _pixels(n, seed=n)
    expected = model.predict(pixels, verbose=0)
    kind = "onnx" if model_file.endswith(".onnx") else "litert"
    return runtimes.check_artifact(kind, model_file, pixels, expected, str(tmp_path))


# jax and torch models take one path for both formats (saved, rebuilt on tensorflow in a
# subprocess, converted there): ONNX is tested from jax, LiteRT from torch, to keep CI short.
@pytest.mark.backends("tensorflow", "jax")
def test_onnx_export_runs_in_onnx_runtime(image_model, tmp_path):
    folder = kt.export_onnx(image_model, tmp_path / "onnx", class_names=NAMES)
    assert folder == str(tmp_path / "onnx" / "1")
    report = _check_report(folder)
    assert report["runtime"] == "onnxruntime" and report["max_abs_diff"] <= 1e-4
    report = _run(image_model, os.path.join(folder, "model.onnx"), tmp_path)
    assert report["max_abs_diff"] <= 1e-4 and report["top1_agreement"] == 1


@pytest.mark.backends("tensorflow", "torch")
def test_litert_float_export_runs_in_litert(image_model, tmp_path):
    folder = kt.export_litert(image_model, tmp_path / "litert", class_names=NAMES)
    report = _check_report(folder)
    assert report["runtime"] == "litert" and report["max_abs_diff"] <= 1e-4
    report = _run(image_model, os.path.join(folder, "model.tflite"), tmp_path)
    assert report["max_abs_diff"] <= 1e-4 and report["top1_agreement"] == 1


@pytest.mark.backends("tensorflow")
def test_cli_litert_int8_takes_uint8_pixels_and_is_smaller(image_model, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    kt.save_classifier(image_model, run / "model.keras", NAMES)
    write_image_folder(tmp_path / "train", classes=NAMES, per_class=40, size=(40, 48))
    args = ["export", str(run), "--output", str(tmp_path / "q"), "--format", "litert"]
    assert cli.main(args + ["--quantization", "int8"]) == 2  # no --calibration-data
    assert cli.main(args + ["--format", "onnx", "--quantization", "int8"]) == 2
    assert not (tmp_path / "q").exists()
    args += ["--quantization", "int8", "--calibration-data", str(tmp_path / "train")]
    assert cli.main(args) == 0
    folder = str(tmp_path / "q" / "1")
    report = _check_report(folder, "int8")
    assert report["examples"] == 32 and report["top1_agreement"] >= 0.5
    model_file = os.path.join(folder, "model.tflite")
    details = tf.lite.Interpreter(model_file).get_input_details()[0]
    assert details["dtype"] == np.uint8
    scale, zero_point = details["quantization"]
    assert abs(scale - 1) < 0.02 and zero_point == 0  # the uint8 pixels themselves
    # A random tiny model on noise images is a hard case for int8 (about 0.8 agreement;
    # chance would be 1/3); docs/serving.md has the figures of a real model.
    report = _run(image_model, model_file, tmp_path, n=64)
    assert report["top1_agreement"] >= 0.6
    float32_bytes = 4 * image_model.count_params()
    assert os.path.getsize(model_file) < 0.4 * float32_bytes


@pytest.mark.backends("tensorflow")
def test_litert_dynamic_range_and_argument_errors(image_model, tmp_path):
    folder = kt.export_litert(
        image_model,
        tmp_path / "d",
        quantization="dynamic",
        class_names=NAMES,
        version=4,
        min_top1_agreement=0.5,
    )
    assert os.path.basename(folder) == "4"
    assert _check_report(folder, "dynamic")["top1_agreement"] >= 0.5
    with pytest.raises(ValueError, match="needs `representative_data`"):
        kt.export_litert(image_model, tmp_path / "x", quantization="int8")
    with pytest.raises(ValueError, match="'dynamic' or 'int8'"):
        kt.export_litert(image_model, tmp_path / "x", quantization="float16")
    with pytest.raises(ValueError, match=r"\(n, 32, 32, 3\)"):
        kt.export_litert(
            image_model,
            tmp_path / "x",
            quantization="int8",
            representative_data=_pixels(2, 0)[:, :16],
        )
    with pytest.raises(FileExistsError, match="never overwritten"):
        kt.export_litert(image_model, tmp_path / "d", class_names=NAMES, version=4)
    assert not (tmp_path / "x").exists()


@pytest.mark.backends("tensorflow")
def test_a_failed_check_leaves_no_version(image_model, tmp_path):
    base = tmp_path / "onnx"
    with pytest.raises(RuntimeError, match="disagrees with the Keras model"):
        kt.export_onnx(image_model, base, tolerance=-1.0)  # no artifact can pass
    assert not base.exists()


def _lively_text_model(preset):
    """A tiny random BERT classifier whose head spreads the classes apart (random init alone
    gives near-equal probabilities, where the top-1 check could not tell anything)."""
    keras.utils.set_random_seed(SEED)
    model = kt.build_text_classifier(preset, 3, sequence_length=16)
    texts = [t for t, _ in SENTIMENT_ROWS]
    # Random weights give nearly the same pooled output for every text; a steeper pooler
    # spreads them, so that the head need not amplify float noise.
    pooler = model.backbone.get_layer("pooled_dense")
    kernel, bias = pooler.get_weights()
    pooler.set_weights([kernel * 30, bias])
    pooled = keras.ops.convert_to_numpy(model.backbone(model.preprocessor(texts))["pooled_output"])
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(pooled.shape[1], 3))
    kernel *= 2 / (pooled - pooled.mean(0)).dot(kernel).std(0)
    bias = -(pooled @ kernel).mean(0)
    model.get_layer("logits").set_weights([kernel.astype("float32"), bias.astype("float32")])
    return model, texts


def _export_text_and_run(model, texts, export, base, runner, file_name):
    # The tiny random encoder's outputs differ little between texts, and the head that tells
    # them apart amplifies float noise to ~1e-4: the check's tolerance is 1e-3 here.
    folder = export(model, base, class_names=NAMES, check_data=texts, tolerance=1e-3)
    assert _check_report(folder)["top1_agreement"] == 1.0
    inputs = runtimes.text_inputs(folder, texts)  # the client: raw strings to token ids
    expected = model.preprocessor(texts)
    for key, value in expected.items():
        np.testing.assert_array_equal(inputs[key], np.asarray(value).astype("int32"))
    got = runner(os.path.join(folder, file_name), inputs)
    np.testing.assert_allclose(got, model.predict(texts, verbose=0), atol=1e-3)
    assert len(set(got.argmax(-1).tolist())) > 1  # the comparison could tell classes apart
    return folder


# A torch model takes the path through a tensorflow subprocess (as jax's would).
@pytest.mark.backends("tensorflow", "torch")
def test_text_onnx_takes_token_ids_and_ships_its_tokenizer(tiny_bert_preset, tmp_path):
    model, texts = _lively_text_model(tiny_bert_preset)
    _export_text_and_run(
        model, texts, kt.export_onnx, tmp_path / "onnx", runtimes.onnx_probabilities, "model.onnx"
    )
    with pytest.raises(ValueError, match="image classifiers"):
        kt.export_litert(model, tmp_path / "int8", quantization="int8", representative_data=texts)
    with pytest.raises(FileNotFoundError, match="text classifier"):
        runtimes.text_inputs(tmp_path, texts)


def test_text_inputs_takes_a_list_of_texts_one_example_each(tiny_bert_preset, tmp_path):
    from keras_transfer.export.text import save_preprocessor

    model = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=16)
    save_preprocessor(model, tmp_path / runtimes.PREPROCESSOR_FOLDER)
    texts = ["great fun film", "boring awful"]
    inputs = runtimes.text_inputs(tmp_path, texts)
    assert inputs["token_ids"].shape == (2, 16)
    array = runtimes.text_inputs(tmp_path, np.array(texts))
    np.testing.assert_array_equal(array["token_ids"], inputs["token_ids"])
    # A tuple was packed as two segments of one example, a str gave 1-D arrays.
    for wrong in (tuple(texts), texts[0], [texts[0], b"bytes"]):
        with pytest.raises(TypeError, match="`texts` must be a list of str"):
            runtimes.text_inputs(tmp_path, wrong)
    with pytest.raises(ValueError, match="`texts` is empty"):
        runtimes.text_inputs(tmp_path, [])


@pytest.mark.backends("tensorflow")
def test_text_litert_float_and_dynamic_range(tiny_bert_preset, tmp_path):
    model, texts = _lively_text_model(tiny_bert_preset)
    _export_text_and_run(
        model,
        texts,
        kt.export_litert,
        tmp_path / "litert",
        runtimes.litert_probabilities,
        "model.tflite",
    )
    folder = kt.export_litert(
        model, tmp_path / "dynamic", quantization="dynamic", check_data=texts, class_names=NAMES
    )
    assert _check_report(folder, "dynamic")["top1_agreement"] >= 0.8


@pytest.mark.backends("tensorflow")
def test_cli_refuses_int8_calibration_for_a_text_run(tiny_bert_preset, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    model = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=16)
    kt.save_classifier(model, run / "model.keras", ["neg", "pos"])
    write_image_folder(tmp_path / "train", per_class=2, size=(32, 32))
    args = ["export", str(run), "--output", str(tmp_path / "q"), "--format", "litert"]
    calibration = ["--calibration-data", str(tmp_path / "train")]
    for extra in (["--quantization", "int8", *calibration], calibration):
        capsys.readouterr()
        assert cli.main(args + extra) == 2  # was a traceback in calibration_images
        error = capsys.readouterr().err
        assert "holds a text classifier" in error and "--quantization dynamic" in error
        assert "Traceback" not in error
    assert not (tmp_path / "q").exists()


def test_quantize_classifier_int8_keeps_the_encoder_outputs(tiny_bert_preset):
    model = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=16)
    texts = np.array([t for t, _ in SENTIMENT_ROWS], dtype=object)
    inputs = model.preprocessor(texts)

    def encoded():
        return keras.ops.convert_to_numpy(model.backbone(inputs)["sequence_output"])

    expected = encoded()
    assert kt.quantize_classifier(model) is model
    quantized = [
        layer
        for layer in model._flatten_layers()
        if type(layer).__name__ in ("Dense", "EinsumDense")
    ]
    assert len(quantized) >= 10  # attention, feed-forward and the head
    assert all(layer.quantization_mode == "int8" for layer in quantized)
    got = encoded()
    error = np.abs(got - expected)
    assert 0 < error.mean() < 0.02 * expected.std() and error.max() < 0.2 * expected.std()
    with pytest.raises(ValueError, match="`mode`"):
        kt.quantize_classifier(model, "int3")


def test_quantize_classifier_refuses_models_without_dense_layers():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))
    with pytest.raises(ValueError, match="export_litert"):
        kt.quantize_classifier(model)


def test_client_decoding_matches_the_training_pipeline(tmp_path):
    from PIL import Image

    from keras_transfer.data.image_data import decode_and_resize

    rng = np.random.default_rng(2)
    files = {
        "rgb.png": Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype="uint8")),
        "gray.png": Image.fromarray(rng.integers(0, 255, (20, 90), dtype="uint8"), "L"),
        "rgba.png": Image.fromarray(rng.integers(0, 255, (64, 30, 4), dtype="uint8"), "RGBA"),
    }
    for name, image in files.items():
        image.save(tmp_path / name)
    for name, channels in (("gray16.png", 1), ("graya16.png", 2), ("rgba16.png", 4)):
        pixels = rng.integers(0, 65536, (25, 41, channels), dtype="uint16")
        tf.io.write_file(str(tmp_path / name), tf.io.encode_png(pixels))
        files[name] = None
    palette = Image.fromarray(rng.integers(0, 255, (31, 17, 3), dtype="uint8")).quantize(8)
    palette.save(tmp_path / "clear.gif", transparency=3)  # index 3: transparent
    frames = [palette, palette.rotate(90)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], transparency=0)
    files.update({"clear.gif": None, "anim.gif": None})
    for name in files:
        for size in ((32, 32), (48, 24)):
            expected = decode_and_resize(tf.io.read_file(str(tmp_path / name)), size).numpy()
            got = runtimes.decode_like_training(tmp_path / name, size)
            assert got.shape == (*size, 3) and got.dtype == np.float32
            np.testing.assert_allclose(got, expected, atol=1e-3, err_msg=name)


@pytest.mark.backends("tensorflow")
def test_image_saved_model_stores_each_weight_once(image_model, tmp_path):
    folder = kt.export_saved_model(image_model, tmp_path / "sm")
    variables = tmp_path / "sm" / "1" / "variables"
    stored = sum(f.stat().st_size for f in variables.iterdir())
    weights = 4 * image_model.count_params()  # float32
    assert weights <= stored < 1.25 * weights  # once, plus the checkpoint's bookkeeping
    keys = tf.train.load_checkpoint(os.path.join(folder, "variables", "variables"))
    stored = [k for k in keys.get_variable_to_shape_map() if k != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert len(stored) <= len(image_model.weights)
