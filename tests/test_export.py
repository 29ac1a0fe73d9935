import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import SENTIMENT_ROWS, decode_like_training, require_shared, serve

import keras_transfer as kt
from keras_transfer.export import saved_model as export_module


@pytest.fixture(scope="module")
def image_model():
    require_shared("weights", "keras", "mobilenet_2_5_224_tf_no_top.h5")
    model = kt.build_image_classifier(
        "mobilenet", 2, input_shape=(224, 224, 3), backbone_kwargs={"alpha": 0.25}
    )
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 224, 224, 3)).astype("float32")
    model.fit(images, keras.utils.to_categorical([0, 1, 0, 1], 2), epochs=1, verbose=0)
    return model


def _image_files(tmp_path):
    from PIL import Image

    val = require_shared("data", "hymenoptera", "val")
    files = [sorted((val / name).iterdir())[0] for name in ("ants", "bees")]
    files.append(require_shared("data", "hymenoptera", "train", "ants", "imageNotFound.gif"))
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 255, (50, 70), dtype="uint8")
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    rgba = rng.integers(0, 255, (60, 40, 4), dtype="uint8")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgba[..., :3], "RGB").save(tmp_path / "rgb.bmp")
    return files + [tmp_path / "gray.png", tmp_path / "rgba.png", tmp_path / "rgb.bmp"]


def test_image_export_signatures_match_the_keras_model(image_model, tmp_path):
    path = kt.export_saved_model(image_model, tmp_path / "export", class_names=["ants", "bees"])
    assert path == str(tmp_path / "export" / "1")

    pixels = np.random.default_rng(2).uniform(0, 255, (3, 224, 224, 3)).astype("float32")
    np.save(tmp_path / "pixels.npy", pixels)
    expected = keras.ops.convert_to_numpy(image_model(pixels, training=False))
    response = serve(
        path, "serving_pixels", {"input": "pixels", "npy": str(tmp_path / "pixels.npy")}, tmp_path
    )
    np.testing.assert_allclose(response["probabilities"], expected, atol=1e-4)
    assert response["dtypes"] == {
        "probabilities": "float32",
        "class_ids": "int64",
        "class_names": "string",
    }

    files = _image_files(tmp_path)
    response = serve(
        path,
        "serving_default",
        {"input": "image_bytes", "files": [str(f) for f in files]},
        tmp_path,
    )
    expected = keras.ops.convert_to_numpy(
        image_model(decode_like_training(files, (224, 224)), training=False)
    )
    # The bytes path decodes and resizes with the training pipeline's TF ops: same pixels.
    np.testing.assert_allclose(response["probabilities"], expected, atol=1e-4)
    assert response["class_ids"] == expected.argmax(-1).tolist()
    assert response["class_names"] == [["ants", "bees"][i] for i in response["class_ids"]]
    assert export_module.read_class_names(path) == ["ants", "bees"]


def test_saved_model_cli_lists_the_signatures(image_model, tmp_path):
    path = kt.export_saved_model(image_model, tmp_path / "export", version=7)
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run(
        [cli, "show", "--dir", path, "--all"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    default = text[text.index("signature_def['serving_default']") :]
    assert "inputs['image_bytes'] tensor_info:" in default
    assert "dtype: DT_STRING" in default and "shape: (-1)" in default
    pixels = text[text.index("signature_def['serving_pixels']") :]
    assert "inputs['pixels']" in pixels and "shape: (-1, 224, 224, 3)" in pixels
    for name, dtype in (
        ("probabilities", "DT_FLOAT"),
        ("class_ids", "DT_INT64"),
        ("class_names", "DT_STRING"),
    ):
        block = default[default.index(f"outputs['{name}']") :]
        assert dtype in block.split("name:")[0]


def test_text_export_takes_raw_strings(tiny_bert_preset, tmp_path):
    model = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=16)
    texts = [t for t, _ in SENTIMENT_ROWS]
    labels = keras.utils.to_categorical([int(label == "pos") for _, label in SENTIMENT_ROWS], 2)
    kt.compile_classifier(model, learning_rate=1e-2)
    model.fit(np.array(texts, dtype=object), labels, epochs=2, batch_size=4, verbose=0)
    path = kt.export_saved_model(model, tmp_path / "export", class_names=["neg", "pos"])
    probe = texts + ["", "a word the tokenizer never saw: zyxxy " * 20]
    expected = np.asarray(model.predict(np.array(probe, dtype=object), verbose=0))
    response = serve(path, "serving_default", {"input": "text", "texts": probe}, tmp_path)
    np.testing.assert_allclose(response["probabilities"], expected, atol=1e-4)
    assert response["class_names"] == [["neg", "pos"][i] for i in expected.argmax(-1)]


def test_versions_and_atomicity(image_model, tmp_path, monkeypatch):
    base = tmp_path / "export"
    first = kt.export_saved_model(image_model, base)
    second = kt.export_saved_model(image_model, base)
    assert [os.path.basename(first), os.path.basename(second)] == ["1", "2"]
    with pytest.raises(FileExistsError, match="never overwritten"):
        kt.export_saved_model(image_model, base, version=1)
    snapshot = {p: p.stat().st_mtime_ns for p in (base / "1").rglob("*")}

    def broken(*args, **kwargs):
        staged = args[1]
        os.makedirs(staged)
        (open(os.path.join(staged, "saved_model.pb"), "wb")).write(b"half")
        raise RuntimeError("disk full")

    name = (
        "_write_saved_model"
        if keras.backend.backend() == "tensorflow"
        else "_export_in_tensorflow_process"
    )
    monkeypatch.setattr(export_module, name, broken)
    with pytest.raises(RuntimeError, match="disk full"):
        kt.export_saved_model(image_model, base)
    assert sorted(os.listdir(base)) == ["1", "2"]  # no partial 3/, no temporary folder left
    assert {p: p.stat().st_mtime_ns for p in (base / "1").rglob("*")} == snapshot
    with pytest.raises(RuntimeError, match="disk full"):
        kt.export_saved_model(image_model, tmp_path / "new" / "base")
    assert not (tmp_path / "new").exists()  # nor the folders that the call made
    with pytest.raises(ValueError, match="3 names"):
        kt.export_saved_model(image_model, base, class_names=["a", "b", "c"])


def test_an_export_folder_whose_name_is_not_utf8_is_refused_up_front(image_model, tmp_path):
    # Latin-1 "è" (byte 0xe8) is not UTF-8; TensorFlow's SavedModel writer takes UTF-8 paths.
    target = tmp_path / "mod\udce8les"
    for given in (target, os.fsencode(target), target / "1"):
        with pytest.raises(ValueError, match=r"mod\\xe8les.*'.*valid UTF-8"):
            kt.export_saved_model(image_model, given)
    assert not os.path.lexists(target)  # nothing made
    with pytest.raises(ValueError, match=r"a\\ud800b'"):  # a surrogate no name decodes to
        kt.export_saved_model(image_model, tmp_path / "a\ud800b")


def test_cli_export_and_predict_from_the_saved_model(image_model, tmp_path):
    from keras_transfer.cli.run_folder import write_outputs

    write_outputs(tmp_path / "run", image_model, ["ants", "bees"])
    env = dict(os.environ)
    command = [sys.executable, "-m", "keras_transfer.cli.main"]
    result = subprocess.run(
        [*command, "export", str(tmp_path / "run"), "--output", str(tmp_path / "serve")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    image = sorted((require_shared("data", "hymenoptera", "val", "bees")).iterdir())[0]
    outputs = []
    for model_dir in (tmp_path / "run", tmp_path / "serve"):
        result = subprocess.run(
            [*command, "predict", str(model_dir), str(image), "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        outputs.append(result.stdout.strip().splitlines()[-1])
    import json

    keras_top, served_top = (json.loads(o)["top_k"] for o in outputs)
    assert [e["class"] for e in keras_top] == [e["class"] for e in served_top]
    # Both decode with the training pipeline's TF ops.
    assert abs(keras_top[0]["probability"] - served_top[0]["probability"]) < 1e-4
