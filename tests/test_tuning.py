"""Search over the cheap part (KerasTuner): trials on cached features, the leaderboard files,
the best model saved, and the trial and time budgets."""

import json

import numpy as np
import pytest

import keras_transfer as kt
from keras_transfer.cli.main import main

pytest.importorskip("keras_tuner")

TINY = {"mobilenet": {"alpha": 0.25}}


def _folder(tmp_path):
    from conftest import write_image_folder

    write_image_folder(tmp_path / "data" / "train", per_class=6, size=(32, 32))
    write_image_folder(tmp_path / "data" / "val", per_class=3, size=(32, 32))
    return tmp_path / "data"


def test_trials_reuse_cached_features_and_the_best_model_reloads(tmp_path, monkeypatch):
    from keras_transfer.features.feature_cache import FeatureSplit

    passes = []
    original = FeatureSplit.cache
    monkeypatch.setattr(
        FeatureSplit, "cache", lambda self, *a: passes.append(1) or original(self, *a)
    )
    result = kt.tune_image_classifier(
        _folder(tmp_path),
        ["mobilenet"],
        directory=tmp_path / "out",
        max_trials=3,
        search_space={"unfreeze_top_n": [0], "learning_rate": [1e-3, 1e-2]},
        image_size=32,
        batch_size=4,
        weights=None,
        backbone_kwargs=TINY,
        head_epochs=3,
        verbose=0,
    )
    assert len(passes) == 1  # one backbone pass for all three trials
    board = result["leaderboard"]
    assert len(board) == 3 and result["stopped_by"] == "max_trials"
    assert [row["rank"] for row in board] == [1, 2, 3]
    accuracies = [row["val_accuracy"] for row in board]
    assert accuracies == sorted(accuracies, reverse=True)
    assert (
        len({(row["learning_rate"], row["dropout"], row["label_smoothing"]) for row in board}) == 3
    )
    for row in board:
        assert row["backbone"] == "mobilenet" and row["fine_tuning"] == "none"
        assert row["learning_rate"] in (1e-3, 1e-2) and 1 <= row["head_epochs"] <= 3
    saved = json.loads((tmp_path / "out" / "leaderboard.json").read_text())
    assert saved["leaderboard"] == board and saved["class_names"] == ["cats", "dogs"]
    markdown = (tmp_path / "out" / "leaderboard.md").read_text()
    assert markdown.count("\n| ") == 4 and "| rank | backbone |" in markdown

    model, class_names = kt.load_classifier(result["best_model"])
    assert class_names == ["cats", "dogs"]
    val_ds = kt.image_folder_datasets(_folder(tmp_path), image_size=32, batch_size=4)[1]
    logs = model.evaluate(val_ds, verbose=0, return_dict=True)
    assert logs["accuracy"] == pytest.approx(board[0]["val_accuracy"], abs=1e-6)
    # The best model is the best trial's: its dropout rate is the one chosen.
    assert model.get_layer("dropout").rate == pytest.approx(board[0]["dropout"])


def test_time_budget_stops_the_search(tmp_path, monkeypatch):
    import time

    from keras_transfer.tuning import image as tuning

    # A clock that jumps past the budget once the first trial starts, so the test does not
    # depend on how fast this machine builds a model.
    started = []
    original = tuning.Search.run_trial

    def run_trial(self, hp, trial_id):
        started.append(trial_id)
        return original(self, hp, trial_id)

    class Clock:
        @staticmethod
        def monotonic():
            return time.monotonic() + (3600.0 if started else 0.0)

    monkeypatch.setattr(tuning.Search, "run_trial", run_trial)
    monkeypatch.setattr(tuning, "time", Clock)
    train_ds, val_ds, names = kt.image_folder_datasets(
        _folder(tmp_path), image_size=32, batch_size=4
    )
    result = kt.tune_image_classifier(
        (train_ds, val_ds, names),
        ["mobilenet"],
        directory=tmp_path / "out",
        max_trials=50,
        max_time=600,
        search_space={"unfreeze_top_n": [0]},
        weights=None,
        backbone_kwargs=TINY,
        head_epochs=50,
        verbose=0,
    )
    assert len(started) == 1
    assert result["stopped_by"] == "max_time" and len(result["leaderboard"]) == 1
    assert result["leaderboard"][0]["head_epochs"] == 1  # stopped after its first epoch


def test_bad_arguments_are_refused(tmp_path):
    for bad, match in [
        (dict(backbones=["mobilnet"]), "mobilenet"),
        (dict(backbones=[]), "backbones"),
        (dict(max_trials=0), "max_trials"),
        (dict(max_time=-1), "max_time"),
        (dict(finetune_epochs=0), "finetune_epochs"),
        (dict(search_space={"lr": [1e-3]}), "lr"),
        (dict(search_space={"dropout": []}), "dropout"),
        (dict(backbone_kwargs={"alpha": 0.25}), "keyed by backbone"),
    ]:
        kwargs = {"backbones": ["mobilenet"], "directory": tmp_path, **bad}
        with pytest.raises(ValueError, match=match):
            kt.tune_image_classifier(tmp_path, **kwargs)
    from conftest import write_image_folder

    flat = write_image_folder(tmp_path / "flat", per_class=2, size=(32, 32))  # no val/
    with pytest.raises(ValueError, match="validation-split"):
        kt.tune_image_classifier(flat, ["mobilenet"], directory=tmp_path / "out", image_size=32)


@pytest.mark.backends("tensorflow")  # the command line's plumbing; the search runs on all three
def test_cli_tunes_two_backbones(tmp_path, capsys):
    data = _folder(tmp_path)
    status = main(
        [
            "tune",
            "image",
            "--data",
            str(data),
            "--backbones",
            "mobilenet,mobilenet_v2",
            "--max-trials",
            "2",
            "--output",
            str(tmp_path / "out"),
            "--weights",
            "none",
            "--image-size",
            "32",
            "--batch-size",
            "4",
            "--search-space",
            '{"unfreeze_top_n": [0], "dropout": [0.2], "learning_rate": [1e-3], '
            '"label_smoothing": [0.0]}',
            "--backbone-kwargs",
            '{"mobilenet": {"alpha": 0.25}, "mobilenet_v2": {"alpha": 0.35}}',
        ]
    )
    assert status == 0
    board = json.loads((tmp_path / "out" / "leaderboard.json").read_text())["leaderboard"]
    # Two combinations in the space: each backbone once.
    assert sorted(row["backbone"] for row in board) == ["mobilenet", "mobilenet_v2"]
    assert "| rank |" in capsys.readouterr().out
    assert (tmp_path / "out" / "best_model.keras").is_file()
    # evaluate and predict read the tune folder, and its .keras file by name
    assert main(["evaluate", str(tmp_path / "out"), "--data", str(data / "val")]) == 0
    assert "accuracy" in capsys.readouterr().out
    image = next((data / "val").glob("*/*"))
    assert main(["predict", str(tmp_path / "out" / "best_model.keras"), str(image)]) == 0
    assert str(image) in capsys.readouterr().out


@pytest.mark.backends("tensorflow")  # compiling the whole model's training step is slow
def test_fine_tuning_trial_is_kept_or_reverted_and_saved_frozen(tmp_path):
    result = kt.tune_image_classifier(
        _folder(tmp_path),
        ["mobilenet"],
        directory=tmp_path / "out",
        max_trials=1,
        search_space={"unfreeze_top_n": [2]},
        image_size=32,
        batch_size=4,
        weights=None,
        backbone_kwargs=TINY,
        head_epochs=2,
        finetune_epochs=1,
        verbose=0,
    )
    (row,) = result["leaderboard"]
    assert row["unfreeze_top_n"] == 2 and row["fine_tuning"] in ("kept", "reverted")
    assert np.isfinite(row["val_loss"])
    model, _ = kt.load_classifier(result["best_model"])
    # Saved with the backbone frozen again (fine-tuned weights or not).
    assert not any(w.trainable for w in model.get_layer("backbone").weights)


def test_text_trials_reuse_each_presets_features_and_can_fine_tune(tiny_bert_preset, tmp_path):
    from conftest import SENTIMENT_ROWS, save_tiny_bert, write_text_file

    from keras_transfer.features.feature_cache import FeatureSplit

    other = tmp_path / "other_bert"
    save_tiny_bert(str(other), max_sequence_length=64)
    train = write_text_file(tmp_path / "train.csv", SENTIMENT_ROWS)
    test = write_text_file(tmp_path / "test.csv", SENTIMENT_ROWS[:4] + SENTIMENT_ROWS[-2:])
    passes = []
    original = FeatureSplit.cache
    FeatureSplit.cache = lambda self, *a: passes.append(1) or original(self, *a)
    try:
        result = kt.tune_text_classifier(
            str(train),
            [tiny_bert_preset, str(other)],
            directory=tmp_path / "out",
            max_trials=4,
            search_space={  # 2 presets x 2 depths: 4 combinations, all tried
                "unfreeze_top_n": [0, 1],
                "learning_rate": [1e-2],
                "dropout": [0.1],
                "label_smoothing": [0.0],
            },
            sequence_length=16,
            val_path=str(test),
            batch_size=4,
            head_epochs=2,
            finetune_epochs=1,
            verbose=0,
        )
    finally:
        FeatureSplit.cache = original
    board = result["leaderboard"]
    assert len(board) == 4 and result["class_names"] == ["neg", "pos"]
    assert len(passes) == 2  # one encoder pass per preset for all its trials
    assert {(row["backbone"], row["unfreeze_top_n"]) for row in board} == {
        (preset, depth) for preset in (tiny_bert_preset, str(other)) for depth in (0, 1)
    }
    for row in board:
        expected = ("kept", "reverted") if row["unfreeze_top_n"] else ("none",)
        assert row["fine_tuning"] in expected and 1 <= row["head_epochs"] <= 2
    model, names = kt.load_classifier(result["best_model"])
    assert names == ["neg", "pos"]
    probabilities = model.predict(np.array(["a great fun movie", "an awful boring film"]))
    assert probabilities.shape == (2, 2)


def test_text_search_refuses_bad_arguments(tiny_bert_preset, tmp_path):
    from conftest import SENTIMENT_ROWS, write_text_file

    train = write_text_file(tmp_path / "train.csv", SENTIMENT_ROWS)
    with pytest.raises(ValueError, match="no validation rows"):
        kt.tune_text_classifier(str(train), [tiny_bert_preset], directory=tmp_path / "o")
    with pytest.raises(ValueError, match="Unknown search_space entry 'backbone_kwargs'"):
        kt.tune_text_classifier(
            str(train),
            [tiny_bert_preset],
            directory=tmp_path / "o",
            search_space={"backbone_kwargs": [1]},
        )
    with pytest.raises(ValueError, match="pooling"):
        kt.tune_text_classifier(
            str(train), [tiny_bert_preset], directory=tmp_path / "o", pooling="max"
        )


def test_cli_tunes_text_presets(tiny_bert_preset, tmp_path, capsys):
    from conftest import SENTIMENT_ROWS, write_text_file

    train = write_text_file(tmp_path / "train.csv", [*SENTIMENT_ROWS, ("great " * 20, "pos")])
    test = write_text_file(tmp_path / "test.csv", SENTIMENT_ROWS[:4] + SENTIMENT_ROWS[-2:])
    command = ["tune", "text", "--data", str(train), "--val", str(test)]
    command += ["--presets", tiny_bert_preset, "--max-trials", "2", "--output", str(tmp_path / "o")]
    command += ["--sequence-length", "16", "--batch-size", "4", "--pooling", "mean"]
    command += ["--search-space", '{"learning_rate": [1e-3, 1e-2], "dropout": [0.1]}']
    with pytest.warns(UserWarning, match="1 of 9 training texts are longer than sequence_len"):
        assert main(command) == 0
    board = json.loads((tmp_path / "o" / "leaderboard.json").read_text())["leaderboard"]
    assert len(board) == 2 and {row["learning_rate"] for row in board} <= {1e-3, 1e-2}
    assert "| rank |" in capsys.readouterr().out
    model, names = kt.load_classifier(str(tmp_path / "o" / "best_model.keras"))
    assert names == ["neg", "pos"] and type(model).__name__ == "MeanPooledTextClassifier"
