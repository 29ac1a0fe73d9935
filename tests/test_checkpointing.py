import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from conftest import PROJECT, write_image_folder

import keras_transfer as kt


def _run_script(data, checkpoint, result, *kill_at, cached=False):
    return subprocess.run(
        [sys.executable, str(PROJECT / "tests" / "fine_tune_script.py"), data, checkpoint, result]
        + [str(k) for k in kill_at],
        capture_output=True,
        text=True,
        env=dict(os.environ, KT_TEST_CACHED="1" if cached else "0"),
        timeout=900,
    )


def _events(result):
    with open(f"{result}.events") as handle:
        return [json.loads(line) for line in handle]


@pytest.mark.backends("tensorflow", "torch")  # jax: the same code, 10x slower convolutions
@pytest.mark.parametrize("cached", [False, True], ids=["augmented", "cached_features"])
def test_fine_tune_resumes_after_sigkill_in_either_stage(tmp_path, cached):
    data = tmp_path / "data"
    write_image_folder(data / "train", per_class=8)
    write_image_folder(data / "val", per_class=4)
    data, checkpoint = str(data), str(tmp_path / "checkpoint")

    baseline = str(tmp_path / "baseline.json")
    assert _run_script(data, str(tmp_path / "unused"), baseline, cached=cached).returncode == 0

    result = str(tmp_path / "result.json")
    # Killed mid-epoch 2 of the head stage (epochs 0-2), then mid-epoch 5 of fine-tuning (3-4).
    for kill_at, done in (((1, 2), {"head": 1}), ((4, 1), {"head": 3, "finetune": 4})):
        run = _run_script(data, checkpoint, result, *kill_at, cached=cached)
        assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
        with open(os.path.join(checkpoint, "state.json")) as handle:
            state = json.load(handle)
        assert {s: r["epochs_done"] for s, r in state["stages"].items()} == done
        assert sorted(os.listdir(checkpoint)) == sorted(["state.json", state["weights"]])
    run = _run_script(data, checkpoint, result, cached=cached)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Resuming 'finetune'" in run.stdout

    events = _events(result)
    # Each resumed run starts from the weights and optimizer step of the last completed epoch.
    starts = [
        i for i in range(1, len(events)) if events[i - 1]["kind"] == events[i]["kind"] == "begin"
    ]
    assert [events[i - 1]["epoch"] for i in starts] == [1, 4]  # the killed epochs
    for killed_begin in starts:
        resumed, before = events[killed_begin], events[killed_begin - 2]
        assert before["kind"] == "end" and resumed["kind"] == "begin"
        assert resumed["epoch"] == before["epoch"] + 1
        assert resumed["step"] == before["step"]
        np.testing.assert_allclose(resumed["weights"], before["weights"], rtol=1e-6, atol=1e-6)

    with open(result) as handle, open(baseline) as handle2:
        resumed, uninterrupted = json.load(handle), json.load(handle2)
    assert resumed["epochs"] == uninterrupted["epochs"] == {"head": [0, 1, 2], "finetune": [3, 4]}
    assert len(resumed["histories"]["head"]["val_accuracy"]) == 3
    assert len(resumed["histories"]["finetune"]["loss"]) == 2
    assert resumed["trainable"] == uninterrupted["trainable"]
    # Same batches, augmentation and dropout draws as the uninterrupted run: same results.
    for stage, history in uninterrupted["histories"].items():
        for metric, values in history.items():
            np.testing.assert_allclose(
                resumed["histories"][stage][metric], values, rtol=1e-4, atol=1e-5, err_msg=metric
            )
    assert abs(resumed["val_accuracy"] - uninterrupted["val_accuracy"]) <= 0.005
    assert not os.path.exists(checkpoint)  # removed once training completed


def test_checkpoint_of_another_run_is_refused(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy")
    x = np.random.default_rng(0).random((8, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(8) % 2, 2)
    history = kt.resumable_fit(
        model, x, y=y, epochs=2, checkpoint_dir=tmp_path, settings={"lr": 0.1}, verbose=0
    )
    assert len(history.history["loss"]) == 2
    with pytest.raises(ValueError, match="lr: 0.1 then, 0.2 now.*Re-run with the same settings"):
        kt.resumable_fit(
            model, x, y=y, epochs=3, checkpoint_dir=tmp_path, settings={"lr": 0.2}, verbose=0
        )
    # Settings only the checkpoint records (e.g. what an older version recorded): no re-run
    # can give them again, and the message says so.
    with pytest.raises(ValueError, match="lr: 0.1 then, unset now.*records none of those"):
        kt.resumable_fit(model, x, y=y, epochs=3, checkpoint_dir=tmp_path, settings={}, verbose=0)
    settings = {"lr": 0.1, "tag": None}  # a None is not taken for an unset setting
    with pytest.raises(ValueError, match="other settings.*tag: unset then, None now"):
        kt.resumable_fit(
            model, x, y=y, epochs=3, checkpoint_dir=tmp_path, settings=settings, verbose=0
        )
    with pytest.raises(TypeError, match="`settings` must be a dict, got list"):
        kt.resumable_fit(model, x, y=y, epochs=3, checkpoint_dir=tmp_path, settings=[1])
    # Same settings: the two epochs done are kept, one more is trained.
    history = kt.resumable_fit(
        model, x, y=y, epochs=3, checkpoint_dir=tmp_path, settings={"lr": 0.1}, verbose=0
    )
    assert history.epoch == [0, 1, 2] and len(history.history["loss"]) == 3
    state = json.loads((tmp_path / "state.json").read_text())
    for damage in ("{not json", "[]", json.dumps({**state, "stages": None})):
        (tmp_path / "state.json").write_text(damage)
        with pytest.raises(ValueError, match="Cannot read the checkpoint.*delete the folder"):
            kt.resumable_fit(model, x, y=y, epochs=3, checkpoint_dir=tmp_path, verbose=0)
    (tmp_path / "state.json").write_text(json.dumps(state))
    (tmp_path / state["weights"]).write_bytes(b"HDF5 cut short")
    with pytest.raises(ValueError, match="Cannot load the checkpoint.*delete the folder"):
        kt.resumable_fit(
            model, x, y=y, epochs=4, checkpoint_dir=tmp_path, settings={"lr": 0.1}, verbose=0
        )
    (tmp_path / state["weights"]).unlink()
    with pytest.raises(ValueError, match="weights file .* is missing"):
        kt.resumable_fit(model, x, y=y, epochs=4, checkpoint_dir=tmp_path, verbose=0)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="is a file; pass a folder"):
        kt.resumable_fit(model, x, y=y, epochs=1, checkpoint_dir=tmp_path / "a_file", verbose=0)


def test_same_seed_gives_the_same_history(tmp_path):
    write_image_folder(tmp_path / "train", per_class=6)
    write_image_folder(tmp_path / "val", per_class=2)

    def run():
        keras.utils.set_random_seed(3)
        train_ds, val_ds, names = kt.image_folder_datasets(
            tmp_path, image_size=32, batch_size=4, seed=3
        )
        model = kt.build_image_classifier(
            "mobilenet", 2, input_shape=(32, 32, 3), weights=None, backbone_kwargs={"alpha": 0.25}
        )
        histories = kt.fine_tune(
            model, train_ds, val_ds, head_epochs=2, finetune_epochs=1, verbose=0
        )
        return {stage: h.history for stage, h in histories.items()}

    first, second = run(), run()
    assert first.keys() == second.keys()
    for stage in first:
        for metric, values in first[stage].items():
            np.testing.assert_allclose(values, second[stage][metric], rtol=1e-5, err_msg=metric)


@pytest.mark.backends("tensorflow")
def test_cli_train_resumes_after_sigkill(tmp_path):
    data = tmp_path / "data"
    write_image_folder(data / "train", per_class=16)
    write_image_folder(data / "val", per_class=4)
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "keras_transfer.cli.main",
        "train",
        "image",
        "--data",
        str(data),
        "--backbone",
        "mobilenet",
        "--weights",
        "none",
        "--backbone-kwargs",
        '{"alpha": 0.25}',
        "--image-size",
        "64",
        "--batch-size",
        "2",
        "--epochs",
        "4",
        "--finetune-epochs",
        "0",
        "--output",
        str(out),
    ]
    state_path = out / "checkpoint" / "state.json"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while not state_path.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.kill()  # SIGKILL, just after the first checkpoint: during epoch 2
    output = process.communicate()[0].decode()
    assert process.returncode == -signal.SIGKILL, output[-2000:]
    assert not (out / "model.keras").exists()
    other = command[:-2] + ["--batch-size", "4", "--output", str(out)]  # another run's settings
    refused = subprocess.run(other, capture_output=True, text=True, timeout=900)
    assert refused.returncode == 2 and "batch_size: 2 then, 4 now" in refused.stderr
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming 'head'" in resumed.stdout
    history = json.loads((out / "history.json").read_text())
    assert len(history["head"]["loss"]) == 4
    assert (out / "model.keras").exists() and not (out / "checkpoint").exists()


def test_each_epoch_order_is_drawn_from_the_seed_and_the_epoch(tmp_path):
    """`one_pass_per_epoch` remakes the pipeline of each epoch: every epoch a new order, the
    same one whatever iterators of the dataset were made before (a resume from epoch 1 sees
    epochs 1 and 2 as the uninterrupted run did), and another one for another seed."""
    from keras_transfer.training.epoch_passes import one_pass_per_epoch

    write_image_folder(tmp_path, per_class=8)

    def epochs(seed, first, last, iterators_before=0):
        train_ds, _, _ = kt.image_folder_datasets(tmp_path, image_size=4, batch_size=4, seed=seed)
        for _ in range(iterators_before):
            iter(train_ds)  # moves the dataset's own reshuffling on
        data, steps = one_pass_per_epoch(train_ds, first, last)
        images = np.concatenate([x for x, _ in data.as_numpy_iterator()])
        assert steps == 4 and len(images) == 16 * (last - first)
        keys = images.reshape(len(images), -1).sum(axis=1)  # one number per image
        return keys.reshape(last - first, 16)

    run = epochs(seed=7, first=0, last=3)
    for epoch in run:
        np.testing.assert_array_equal(np.sort(epoch), np.sort(run[0]))  # each image once
    assert not np.array_equal(run[0], run[1]) and not np.array_equal(run[1], run[2])
    np.testing.assert_array_equal(epochs(seed=7, first=1, last=3, iterators_before=2), run[1:])
    assert not np.array_equal(epochs(seed=8, first=0, last=1)[0], run[0])


@pytest.mark.backends("tensorflow")  # jax and torch build these before their first step
@pytest.mark.parametrize("way", ["fit_one_pass_per_epoch", "resumable_fit"])
@pytest.mark.parametrize("labels", ["one_hot", "integer"])
def test_training_step_is_traced_once(tmp_path, monkeypatch, way, labels):
    """The model, its optimizer and its metrics are built before `fit`, so `tf.function`
    traces the training step once (Keras would build them in the first trace, and
    tf.function then traces again), and training gives plain `fit`'s history: "accuracy"
    resolved from the labels (categorical or sparse), a model built by its first batch
    (a Sequential without an Input), metrics that an empty batch would break (F1Score)."""
    import tensorflow as tf

    from keras_transfer.training import epoch_passes

    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 3)).astype("float32")
    y = rng.integers(0, 2, 48)
    if labels == "one_hot":
        y = np.eye(2, dtype="float32")[y]
        loss, metrics = "categorical_crossentropy", ["accuracy", keras.metrics.F1Score()]
    else:
        loss, metrics = (
            "sparse_categorical_crossentropy",
            ["accuracy", "sparse_top_k_categorical_accuracy"],
        )
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)

    def model():
        keras.utils.set_random_seed(3)
        made = keras.Sequential([keras.layers.Dense(2, activation="softmax")])
        made.compile(keras.optimizers.SGD(0.1, momentum=0.9), loss, metrics=metrics)
        return made

    expected = model().fit(data, epochs=3, verbose=0, shuffle=False).history
    trained = model()
    traces, train_step = [], trained.train_step
    monkeypatch.setattr(trained, "train_step", lambda data: traces.append(1) or train_step(data))
    if way == "resumable_fit":
        history = kt.resumable_fit(trained, data, epochs=3, checkpoint_dir=tmp_path, verbose=0)
    else:
        history = epoch_passes.fit_one_pass_per_epoch(trained, data, epochs=3, verbose=0)
    assert len(traces) == 1
    assert history.history.keys() == expected.keys()
    for key, values in expected.items():
        np.testing.assert_allclose(history.history[key], values, rtol=1e-5, err_msg=key)


class _Scripted(keras.callbacks.Callback):
    """Logs `score` = SCORES[epoch] (for EarlyStopping to watch); raises `KeyboardInterrupt`
    at the start of epoch `crash_at` or, with `crash_at="end"`, once `fit` is over."""

    SCORES = [5.0, 3.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]

    def __init__(self, crash_at=None):
        super().__init__()
        self.crash_at, self.epochs = crash_at, []

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.crash_at:
            raise KeyboardInterrupt
        self.epochs.append(epoch)

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = self.SCORES[epoch]

    def on_train_end(self, logs=None):
        if self.crash_at == "end":
            raise KeyboardInterrupt


@pytest.mark.parametrize(
    "crash_at, patience, monitor, epochs_run",
    [
        (3, 2, "score", [3]),  # mid-patience: it stops after one more epoch
        ("end", 2, "score", []),  # after it stopped: nothing more to train
        ("end", 10, "score", []),  # the whole budget run: the best epoch still restored
        (3, 2, "absent", [3, 4, 5, 6, 7]),  # a monitor never logged: it never acts
        (3, 2, "accuracy", None),  # a metric's direction, known once metrics are built
        ("end", 1, "accuracy", []),  # ... and recorded: a stopped run trains no more
    ],
    ids=[
        "mid_patience",
        "after_stopping",
        "full_budget",
        "absent_monitor",
        "accuracy",
        "accuracy_after_stopping",
    ],  # fmt: skip
)
def test_early_stopping_resumes_with_its_patience_and_best_weights(
    tmp_path, crash_at, patience, monitor, epochs_run
):
    import tensorflow as tf

    from keras_transfer.training.checkpointing import resumable_fit

    rng = np.random.default_rng(0)
    data = tf.data.Dataset.from_tensor_slices(
        (rng.normal(size=(16, 4)).astype("float32"), np.eye(2)[rng.integers(0, 2, 16)])
    ).batch(4)

    def run(checkpoint_dir, scripted):
        keras.utils.set_random_seed(1)
        layers = [keras.Input((4,)), keras.layers.Dense(2, activation="softmax")]
        model = keras.Sequential(layers, name="scripted")
        model.compile(
            optimizer=keras.optimizers.SGD(0.5),
            loss="categorical_crossentropy",
            metrics=["accuracy"],
        )
        mode = "auto" if monitor == "accuracy" else "min"
        stops = [
            keras.callbacks.EarlyStopping(
                monitor, patience=patience, mode=mode, restore_best_weights=True
            ),
            keras.callbacks.EarlyStopping("loss", patience=50, restore_best_weights=True),
        ]
        history = resumable_fit(
            model, data, epochs=8, checkpoint_dir=checkpoint_dir, verbose=0,
            callbacks=[scripted, *stops],
        )  # fmt: skip
        return model, history

    uninterrupted, expected = run(tmp_path / "a", _Scripted())
    if patience == 1:
        assert len(expected.epoch) < 8  # it stopped early
    checkpoint = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint, _Scripted(crash_at))
    resumed_script = _Scripted()
    resumed, history = run(checkpoint, resumed_script)
    assert history.epoch == expected.epoch
    if epochs_run is not None:
        assert resumed_script.epochs == epochs_run
    for a, b in zip(uninterrupted.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_resumed_stoppers_are_matched_by_monitor_not_position(tmp_path):
    import tensorflow as tf

    from keras_transfer.training.checkpointing import resumable_fit

    rng = np.random.default_rng(0)
    data = tf.data.Dataset.from_tensor_slices(
        (rng.normal(size=(16, 4)).astype("float32"), np.eye(2)[rng.integers(0, 2, 16)])
    ).batch(4)

    def run(stops, scripted):
        layers = [keras.Input((4,)), keras.layers.Dense(2, activation="softmax")]
        model = keras.Sequential(layers, name="resumed")
        model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"])
        callbacks = [scripted, *stops]
        return resumable_fit(
            model, data, epochs=4, checkpoint_dir=tmp_path, verbose=0, callbacks=callbacks
        )

    def stopper(monitor):
        return keras.callbacks.EarlyStopping(monitor, patience=10, restore_best_weights=True)

    with pytest.raises(KeyboardInterrupt):
        run([stopper("loss"), stopper("accuracy")], _Scripted(crash_at=2))
    swapped = [stopper("accuracy"), stopper("loss")]
    assert run(swapped, _Scripted()).epoch == [0, 1, 2, 3]
    assert swapped[0].monitor_op is keras.ops.greater and swapped[1].monitor_op is keras.ops.less
    assert [s.mode for s in swapped] == ["auto", "auto"]  # the callbacks keep their mode
    # A stopper the first run did not have resumes too.
    import shutil

    shutil.rmtree(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run([stopper("loss")], _Scripted(crash_at=2))
    assert run([stopper("loss"), stopper("accuracy")], _Scripted()).epoch == [0, 1, 2, 3]


def test_a_named_default_resumes_the_run_that_left_it_out():
    from keras_transfer.cli.arguments import training_settings as _training_settings
    from keras_transfer.cli.parser import build_parser

    parse = build_parser().parse_args
    image = ["train", "image", "--data", "d", "--backbone", "mobilenet", "--output", "o"]
    named = [*image, "--image-size", "224", "--weights", "IMAGENET", "--overwrite"]
    assert _training_settings(parse(image)) == _training_settings(parse(named))
    assert _training_settings(parse([*image, "--image-size", "96"]))["image_size"] == 96
    text = ["train", "text", "--data", "d.csv", "--preset", "p", "--output", "o"]
    named = [*text, "--sequence-length", "128", "--pooling", "cls"]
    assert _training_settings(parse(text)) == _training_settings(parse(named))
    assert _training_settings(parse([*text, "--sequence-length", "64"])) != _training_settings(
        parse(text)
    )
    # --init-from: the loaded model fixes (and checks) its size, sequence length, pooling.
    more = ["train", "image", "--data", "d", "--init-from", "run", "--output", "o"]
    named = [*more, "--image-size", "224", "--tensorboard", "tb", "--feature-store", "fs"]
    assert _training_settings(parse(more)) == _training_settings(parse(named))
    more = ["train", "text", "--data", "d.csv", "--init-from", "run", "--output", "o"]
    named = [*more, "--sequence-length", "64", "--pooling", "mean"]
    assert _training_settings(parse(more)) == _training_settings(parse(named))
    assert _training_settings(parse([*more, "--epochs", "3"])) != _training_settings(parse(more))
    # A moved run folder resumes (paths as typed: a moved project with relative ones too).
    image = ["train", "image", "--backbone", "mobilenet", "--data", "photos"]
    moved = [*image, "--output", "elsewhere", "--checkpoint", "c"]
    assert _training_settings(parse([*image, "--output", "o"])) == _training_settings(parse(moved))
    assert _training_settings(parse([*image, "--output", "o"]))["data"] == "photos"
