import json
import os
import subprocess
import sys

import keras
import pytest
from conftest import minilm_folder, write_image_folder


def _cli(*args, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "keras_transfer.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=900,
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def _cli_in_process(capsys, *args):
    """`keras-transfer ARGS` run by `cli.main` in this test's process (its backend, without
    a new interpreter's start-up): `(exit status, stdout, stderr)`."""
    from keras_transfer.cli.main import main

    capsys.readouterr()  # only this call's output
    try:
        code = main([str(arg) for arg in args])
    except SystemExit as exit:  # argparse's usage errors
        code = exit.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_train_evaluate_predict_on_a_tiny_folder(tmp_path, capsys):
    data = tmp_path / "data"
    write_image_folder(data / "train", per_class=4)
    write_image_folder(data / "val", per_class=2)
    out = tmp_path / "out"
    _cli(
        "train",
        "image",
        "--data",
        data,
        "--backbone",
        "mobilenet",
        "--weights",
        "none",
        "--backbone-kwargs",
        '{"alpha": 0.25}',
        "--image-size",
        32,
        "--epochs",
        1,
        "--finetune-epochs",
        1,
        "--unfreeze-top-n",
        2,
        "--batch-size",
        4,
        "--mixed-precision",
        "bfloat16",
        "--tensorboard",
        tmp_path / "tb",
        "--output",
        out,
    )
    assert any(path.name.startswith("events.out") for path in (tmp_path / "tb").rglob("*"))
    for name in ("model.keras", "class_names.json", "report.json", "report.html", "history.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "class_names.json").read_text()) == ["cats", "dogs"]
    assert json.loads((out / "report.json").read_text())["num_examples"] == 4
    history = json.loads((out / "history.json").read_text())
    assert set(history) == {"head", "finetune"}

    result = _cli("evaluate", out, "--data", data)
    assert "accuracy:" in result.stdout
    assert f"{keras.backend.backend()} backend" in result.stderr
    # Only the scored folder (val/) is read.
    assert f"Found 4 images belonging to 2 classes in {data / 'val'}." in result.stdout
    assert str(data / "train") not in result.stdout

    image = next((data / "val" / "dogs").iterdir())
    result = _cli("predict", out, image, "--top-k", 2, "--json")
    line = json.loads(result.stdout.strip().splitlines()[-1])
    line_classes = [entry["class"] for entry in line["top_k"]]
    assert line_classes in (["cats", "dogs"], ["dogs", "cats"])
    assert abs(sum(entry["probability"] for entry in line["top_k"]) - 1) < 1e-4
    result = _cli_in_process(capsys, "predict", out, data / "val")
    assert result.returncode == 2 and "is a folder; pass image files" in result.stderr
    odd = tmp_path / "caf\udce9.png"  # a name that is not UTF-8 (Latin-1 "é")
    try:
        odd.write_bytes(image.read_bytes())
    except (OSError, UnicodeError):
        return  # this file system takes only UTF-8 names
    result = _cli_in_process(capsys, "predict", out, odd, "--top-k", 1, "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout.strip().splitlines()[-1])["top_k"][0]["class"] in line_classes


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    # The entry point once in its own process (one line, no traceback); then `cli.main` in
    # this one, where an unexpected exception fails the test.
    result = _cli(
        "train",
        "image",
        "--data",
        tmp_path,
        "--backbone",
        "mobilnet",
        "--output",
        tmp_path / "out",
        check=False,
    )
    assert result.returncode == 2
    assert "Unknown backbone 'mobilnet'" in result.stderr and "mobilenet" in result.stderr
    assert "Traceback" not in result.stderr
    result = _cli_in_process(capsys, "predict", tmp_path, "x.jpg")
    assert result.returncode == 2 and "model.keras" in result.stderr
    write_image_folder(tmp_path / "data", per_class=2)
    train = ("train", "image", "--data", tmp_path / "data", "--backbone", "mobilenet")
    misspelled = (*train[:-1], "mobilnet", "--image-size", 32, "--output", tmp_path / "out")
    result = _cli_in_process(capsys, *misspelled)
    assert result.returncode == 2 and "keras-transfer backbones" in result.stderr
    assert "Found" not in result.stdout  # refused before the data is read
    missing_preset = (*train[:-1], f"hub:{tmp_path / 'no_preset'}", "--image-size", 32)
    result = _cli_in_process(capsys, *missing_preset, "--output", tmp_path / "out")
    assert result.returncode == 2 and "no_preset" in result.stderr
    assert "Found" not in result.stdout
    result = _cli_in_process(capsys, *train, "--epochs", -1, "--output", tmp_path / "out")
    assert result.returncode == 2 and "--epochs: must be an int >= 0, got '-1'" in result.stderr
    (tmp_path / "taken").write_text("")
    # Refused before the data is read or a model is built.
    result = _cli_in_process(capsys, *train, "--weights", "none", "--output", tmp_path / "taken")
    assert result.returncode == 2 and "is a file; pass a folder" in result.stderr
    assert "Found" not in result.stdout
    result = _cli_in_process(capsys, "demo", "--output", tmp_path / "d\udce9mo")
    assert result.returncode == 2 and r"d\xe9mo': TensorFlow writes" in result.stderr
    assert "Cannot write the demo and its SavedModel to '" in result.stderr
    assert not (tmp_path / "d\udce9mo").exists()  # refused before the training
    not_a_folder = ("train", "image", "--data", tmp_path / "taken", "--backbone", "mobilenet")
    result = _cli_in_process(
        capsys, *not_a_folder, "--weights", "none", "--output", tmp_path / "out"
    )
    assert result.returncode == 2 and "is a file, not a folder of images" in result.stderr
    empty_store = (*train, "--feature-store", "", "--output", tmp_path / "out")
    result = _cli_in_process(capsys, *empty_store)
    assert result.returncode == 2 and "--feature-store: must be a folder path" in result.stderr
    assert "Found" not in result.stdout


@pytest.mark.backends("tensorflow")
def test_demo_main_job_trains_evaluates_and_exports(tmp_path):
    minilm_folder()
    out = tmp_path / "demo"
    result = _cli("demo", "--output", out, "--epochs", 1)
    assert "accuracy:" in result.stdout
    assert (out / "export" / "1" / "saved_model.pb").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["num_examples"] == 32 and report["class_names"] == ["negative", "positive"]
    result = _cli("predict", out / "export", "a great kettle, I love it", "--json")
    assert json.loads(result.stdout.strip().splitlines()[-1])["top_k"][0]["class"] in (
        "negative",
        "positive",
    )


def test_train_text_head_on_cached_features_with_a_checkpoint(tiny_bert_preset, tmp_path):
    from conftest import SENTIMENT_ROWS, write_text_file

    data = write_text_file(tmp_path / "train.csv", SENTIMENT_ROWS)
    out = tmp_path / "out"
    result = _cli(
        "train",
        "text",
        "--data",
        data,
        "--validation-split",
        "0.25",
        "--preset",
        tiny_bert_preset,
        "--sequence-length",
        "16",
        "--freeze",
        "backbone",
        "--feature-cache",
        "on",
        "--padding",
        "bucket",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--mixed-precision",
        "bfloat16",
        "--output",
        out,
    )
    assert "outputs in inference mode" in result.stdout
    history = json.loads((out / "history.json").read_text())
    assert len(history["head"]["val_accuracy"]) == 2
    assert (out / "model.keras").exists() and not (out / "checkpoint").exists()
