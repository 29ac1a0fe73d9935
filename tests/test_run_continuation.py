"""`keras-transfer train ... --init-from RUN` and `--overwrite`.

The continuation is command-line logic over the same `fit` calls that the other tests run
on every backend; each test runs on one backend (text on torch, images on tensorflow),
where the CLI trains fastest, to keep the suite's time.
"""

import json

import pytest
from conftest import SENTIMENT_ROWS, write_image_folder, write_text_file
from test_cli import _cli_in_process


@pytest.mark.backends("torch")
def test_a_finished_text_run_is_kept_or_continued(tiny_bert_preset, tmp_path, capsys):
    data = write_text_file(tmp_path / "train.csv", SENTIMENT_ROWS)
    out, more = tmp_path / "out", tmp_path / "more"
    train = ("train", "text", "--data", data, "--validation-split", "0.25")
    train += ("--preset", tiny_bert_preset, "--sequence-length", 16, "--batch-size", 4)
    result = _cli_in_process(capsys, *train, "--epochs", 1, "--no-checkpoint", "--output", out)
    assert result.returncode == 0, result.stderr
    before = (out / "model.keras").read_bytes()
    result = _cli_in_process(capsys, *train, "--epochs", 1, "--output", out)
    assert result.returncode == 2 and "holds a finished run" in result.stderr
    assert "--overwrite" in result.stderr and (out / "model.keras").read_bytes() == before
    weight = ("--class-weight", '{"hornets": 2.0}')
    result = _cli_in_process(capsys, *train, *weight, "--output", tmp_path / "w")
    assert result.returncode == 2 and "key 'hornets' is not a class" in result.stderr
    assert "0 'neg', 1 'pos'" in result.stderr
    weight = ("--class-weight", '{"pos": 2.0}')  # 'neg' gets 1.0
    # The run's model comes from the run: a --preset beside --init-from is refused.
    result = _cli_in_process(capsys, *train, "--init-from", out, "--output", more)
    assert result.returncode == 2 and "drop --preset" in result.stderr, result.stderr[-2000:]
    assert not more.exists()
    go_on = ("train", "text", "--data", data, "--validation-split", "0.25", "--batch-size", 4)
    result = _cli_in_process(
        capsys, *go_on, *weight, "--epochs", 1, "--init-from", out, "--output", more
    )
    assert result.returncode == 0, result.stderr
    history = json.loads((more / "history.json").read_text())
    # The probe head (1 epoch), 1 fine-tuning epoch, then 1 more fine-tuning epoch.
    assert len(history["head"]["loss"]) == 1 and len(history["finetune"]["loss"]) == 2
    assert "Epoch 3/3" in result.stdout and "Epoch 2/" not in result.stdout
    assert not (more / "checkpoint").exists()
    # RUN/model.keras continues as RUN does: its history.json beside it numbers the epochs.
    result = _cli_in_process(
        capsys,
        *go_on,
        "--epochs",
        1,
        "--init-from",
        more / "model.keras",
        "--output",
        tmp_path / "f",
    )
    assert result.returncode == 0 and "Epoch 4/4" in result.stdout, result.stderr[-2000:]
    images = write_image_folder(tmp_path / "images", classes=("neg", "pos"), per_class=2)
    result = _cli_in_process(
        capsys, "train", "image", "--data", images, "--init-from", out, "--output", tmp_path / "i"
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "holds a text classifier; continue it with `keras-transfer train text`" in result.stderr
    from argparse import Namespace

    from keras_transfer.cli.run_folder import check_not_finished

    check_not_finished(Namespace(output=str(out), overwrite=True, init_from=None))
    check_not_finished(Namespace(output=str(out), overwrite=False, init_from=str(out)))
    other = write_text_file(tmp_path / "other.csv", [(t, "x" + y) for t, y in SENTIMENT_ROWS])
    wrong = ("train", "text", "--data", other)
    result = _cli_in_process(capsys, *wrong, "--init-from", out, "--output", tmp_path / "w")
    assert result.returncode == 2 and "was trained on the classes ['neg', 'pos']" in result.stderr
    # Options that would change the continued model are refused, not ignored.
    for option, said in (
        (("--pooling", "mean"), "was trained with --pooling cls"),
        (("--sequence-length", 32), "was trained with --sequence-length 16"),
        (("--freeze", "backbone"), "drop --freeze backbone"),
    ):
        continued = ("train", "text", "--data", data, *option)
        result = _cli_in_process(capsys, *continued, "--init-from", out, "--output", tmp_path / "c")
        assert result.returncode == 2 and said in result.stderr, result.stderr[-2000:]


@pytest.mark.backends("tensorflow")
def test_an_image_run_goes_on_in_its_stage(tmp_path, capsys):
    write_image_folder(tmp_path / "data", per_class=4, size=(32, 32))
    train = ("train", "image", "--data", tmp_path / "data", "--backbone", "mobilenet")
    train += ("--weights", "none", "--backbone-kwargs", '{"alpha": 0.25}', "--image-size", 32)
    train += ("--validation-split", 0.25, "--batch-size", 4, "--no-augmentation")
    first, second = tmp_path / "first", tmp_path / "second"
    result = _cli_in_process(
        capsys, *train, "--epochs", 1, "--finetune-epochs", 0, "--output", first
    )
    assert result.returncode == 0, result.stderr
    # The options that build a model are refused beside --init-from, each one named.
    result = _cli_in_process(capsys, *train, "--init-from", first, "--output", second)
    assert result.returncode == 2 and not second.exists()
    for flag in ("--backbone, --weights, --backbone-kwargs, --no-augmentation",):
        assert f"drop {flag}." in result.stderr, result.stderr[-2000:]
    result = _cli_in_process(
        capsys, "train", "image", "--data", tmp_path / "data", "--output", second
    )
    assert result.returncode == 2 and "needs --backbone" in result.stderr
    # The data is read at the run's input size (32, not MobileNet's 224).
    train = ("train", "image", "--data", tmp_path / "data", "--validation-split", 0.25)
    train += ("--batch-size", 4)
    result = _cli_in_process(
        capsys,
        *train,
        "--epochs",
        0,
        "--finetune-epochs",
        1,
        "--init-from",
        first,
        "--output",
        second,
    )
    assert result.returncode == 0, result.stderr
    history = json.loads((second / "history.json").read_text())
    assert len(history["head"]["loss"]) == 1 and len(history["finetune"]["loss"]) == 1
    assert "Epoch 2/2" in result.stdout
    resized = (*train, "--image-size", 48)
    result = _cli_in_process(capsys, *resized, "--init-from", first, "--output", tmp_path / "r")
    assert result.returncode == 2 and "takes 32x32 images" in result.stderr
    # A run that reached fine-tuning goes on fine-tuning, and says so.
    result = _cli_in_process(
        capsys, *train, "--finetune-epochs", 0, "--init-from", second, "--output", tmp_path / "x"
    )
    assert result.returncode == 2 and "--finetune-epochs N" in result.stderr
    result = _cli_in_process(
        capsys, *train, "--finetune-epochs", 1, "--init-from", second, "--output", second
    )
    assert result.returncode == 0, result.stderr
    assert "Continuing the fine-tuning" in result.stdout
    history = json.loads((second / "history.json").read_text())
    assert len(history["head"]["loss"]) == 1 and len(history["finetune"]["loss"]) == 2
    assert "Epoch 3/3" in result.stdout
    # An image run is not continued as text, and a tune folder is no --output of train.
    texts = write_text_file(tmp_path / "t.csv", [("a b", "class_0"), ("b c", "class_1")] * 4)
    result = _cli_in_process(
        capsys, "train", "text", "--data", texts, "--init-from", first, "--output", tmp_path / "t"
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "holds an image classifier; continue it with `keras-transfer train image`" in (
        result.stderr
    )
    (tmp_path / "tune").mkdir()
    (tmp_path / "tune" / "best_model.keras").write_bytes((first / "model.keras").read_bytes())
    result = _cli_in_process(
        capsys,
        *train,
        "--epochs",
        0,
        "--init-from",
        tmp_path / "tune",
        "--output",
        tmp_path / "tune",
    )
    assert result.returncode == 2 and "is a `keras-transfer tune` folder" in result.stderr
