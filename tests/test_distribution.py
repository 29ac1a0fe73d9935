"""Data-parallel fine-tuning: 1 device and 2 virtual CPU devices train to the same model.

The 2-device runs need the backend to start with 2 CPU devices, so they run in a
subprocess (`distributed_script.py`), once per backend, shared by the tests of this module.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import BACKEND, PROJECT, write_image_folder

import keras_transfer as kt

SCRIPT = PROJECT / "tests" / "distributed_script.py"
DISTRIBUTED = pytest.mark.backends("jax", "tensorflow")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The result JSON of `distributed_script.py` on this backend (see its docstring)."""
    if BACKEND not in ("jax", "tensorflow"):
        pytest.skip("data parallelism: jax and tensorflow")
    root = tmp_path_factory.mktemp("distributed")
    write_image_folder(root / "data" / "train", per_class=8, size=(32, 32))
    write_image_folder(root / "data" / "val", per_class=4, size=(32, 32))
    env = dict(os.environ, PYTHONPATH=str(PROJECT), KERAS_BACKEND=BACKEND)
    env.pop("XLA_FLAGS", None)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(root / "data"), str(root / "result.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((root / "result.json").read_text())


@DISTRIBUTED
@pytest.mark.parametrize("caching", ["cached", "uncached"])
def test_two_devices_train_the_model_of_one(runs, caching):
    one, two = runs[f"{caching}_1"], runs[f"{caching}_2"]
    assert (one["replicas"], one["variable_replicas"]) == (1, 1)
    assert (two["replicas"], two["variable_replicas"]) == (2, 2)  # really on 2 devices
    assert set(one["histories"]) == set(two["histories"])
    assert ("finetune" in two["histories"]) == (caching == "cached")  # stage 2 ran
    np.testing.assert_allclose(two["kernel"], one["kernel"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(two["bias"], one["bias"], rtol=1e-4, atol=1e-5)
    # The head learnt something: a test of weights that never moved could not fail.
    assert np.abs(np.asarray(one["kernel"])).max() > 1e-4
    for stage, history in one["histories"].items():
        for name, values in history.items():
            np.testing.assert_allclose(
                two["histories"][stage][name], values, rtol=1e-4, atol=1e-5, err_msg=name
            )
    # evaluate_classifier on the 2-device model: the last epoch's validation accuracy.
    last = two["histories"]["finetune" if caching == "cached" else "head"]["val_accuracy"][-1]
    assert two["accuracy"] == pytest.approx(last)
    if caching == "cached":  # the distributed model saves, loads and exports
        assert two["loaded_names"] == ["cats", "dogs"] and two["loaded_max_diff"] < 1e-5
        assert two["exported"] is (True if BACKEND == "tensorflow" else None)


@DISTRIBUTED
def test_a_model_built_outside_the_distribution_is_refused(runs):
    message = runs["errors"]["outside"]
    assert message is not None and "built outside" in message
    assert "kt.data_parallel()" in message


@DISTRIBUTED
def test_a_model_trained_after_its_distribution_was_left_is_refused(runs):
    message = runs["errors"]["left_scope"]
    assert message is not None and "distribution that is not in effect now" in message


@DISTRIBUTED
def test_a_batch_size_that_does_not_divide_is_refused(runs):
    message = runs["errors"]["odd_batch"]
    assert message is not None and "batch size 3 does not divide by the 2 devices" in message


@pytest.mark.backends("torch")
def test_torch_says_what_works(tmp_path, capsys):
    with pytest.raises(ValueError, match="KERAS_BACKEND=jax or KERAS_BACKEND=tensorflow"):
        kt.data_parallel()
    from keras_transfer.cli import main

    argv = ["train", "image", "--data", str(tmp_path), "--backbone", "mobilenet"]
    assert main([*argv, "--devices", "2", "--output", str(tmp_path / "run")]) == 2
    assert "not available on the torch backend" in capsys.readouterr().err


@DISTRIBUTED
def test_more_devices_than_there_are_is_refused():
    from keras_transfer.distribution import local_devices

    found = len(local_devices())
    with pytest.raises(ValueError, match=f"asks for more devices than the {found} found"):
        kt.data_parallel(found + 1)
    with pytest.raises(ValueError, match="`devices` must be None"):
        kt.data_parallel(0)


@DISTRIBUTED
def test_device_names_that_do_not_exist_or_repeat_are_refused():
    from keras_transfer.distribution import local_devices

    first = local_devices()[0]
    # tensorflow's MirroredStrategy hung on an unknown name and asserted on a repeated one.
    with pytest.raises(ValueError, match=r"(?i)'cpu:7' not found among the devices .*cpu:0"):
        kt.data_parallel(["cpu:0", "cpu:7"])
    with pytest.raises(ValueError, match="names a device more than once"):
        kt.data_parallel([first, first.lstrip("/").lower().replace("device:", "")])
    assert kt.data_parallel(["/CPU:0"]).devices == [first]  # the found device's name


def test_a_last_batch_that_does_not_divide_says_what_the_readers_can_do(tmp_path):
    from keras_transfer.distribution import check_batches_divide

    write_image_folder(tmp_path / "train", per_class=3, size=(32, 32))
    train_ds, _, _ = kt.image_folder_datasets(
        tmp_path / "train", image_size=(32, 32), batch_size=4, validation_split=None
    )
    with pytest.raises(ValueError, match="6 examples in batches of 4 leave 2") as error:
        check_batches_divide(train_ds, 4)
    message = str(error.value)
    assert "drop_remainder=True" not in message.split("tf.data pipeline of your own")[0]
    assert "leave out or add a few examples" in message


# tensorflow only: the jax side of --devices (XLA_FLAGS) is what distributed_script.py uses.
@pytest.mark.backends("tensorflow")
def test_the_cli_trains_on_two_devices(tmp_path):
    write_image_folder(tmp_path / "data" / "train", per_class=4, size=(32, 32))
    write_image_folder(tmp_path / "data" / "val", per_class=2, size=(32, 32))
    env = dict(os.environ, PYTHONPATH=str(PROJECT), KERAS_BACKEND=BACKEND)
    env.pop("XLA_FLAGS", None)
    command = [
        sys.executable,
        "-m",
        "keras_transfer.cli",
        "train",
        "image",
        "--data",
        str(tmp_path / "data"),
        "--backbone",
        "mobilenet",
        "--weights",
        "none",
        "--backbone-kwargs",
        '{"alpha": 0.25}',
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--epochs",
        "1",  # the head by gradient, on cached features, checkpointed
        "--finetune-epochs",
        "0",
        "--no-augmentation",
        "--devices",
        "2",
        "--output",
        str(tmp_path / "run"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "data-parallel on 2 devices" in result.stderr
    assert (tmp_path / "run" / "model.keras").is_file()
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history["head"]["loss"]) == 1
    model, names = kt.load_classifier(str(tmp_path / "run" / "model.keras"))
    assert names == ["cats", "dogs"] and model.output_shape == (None, 2)


@pytest.mark.backends("tensorflow")  # jax: the same code, its convolutions ~3x slower here
def test_a_killed_two_device_run_resumes_to_the_same_model(tmp_path):
    write_image_folder(tmp_path / "data" / "train", per_class=8)
    write_image_folder(tmp_path / "data" / "val", per_class=4)
    env = dict(os.environ, PYTHONPATH=str(PROJECT), KT_TEST_DEVICES="2", KT_TEST_CACHED="1")

    def run(checkpoint, result, *kill_at):
        return subprocess.run(
            [sys.executable, str(PROJECT / "tests" / "fine_tune_script.py")]
            + [str(tmp_path / "data"), str(tmp_path / checkpoint), str(tmp_path / result)]
            + [str(k) for k in kill_at],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )

    baseline = run("unused", "baseline.json")
    assert baseline.returncode == 0, baseline.stderr[-3000:]
    killed = run("checkpoint", "result.json", 4, 1)  # mid-epoch 5: the second of fine-tuning
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = run("checkpoint", "result.json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming 'finetune'" in resumed.stdout
    uninterrupted = json.loads((tmp_path / "baseline.json").read_text())
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["epochs"] == uninterrupted["epochs"] == {"head": [0, 1, 2], "finetune": [3, 4]}
    for stage, history in uninterrupted["histories"].items():
        for metric, values in history.items():
            np.testing.assert_allclose(
                result["histories"][stage][metric], values, rtol=1e-4, atol=1e-5, err_msg=metric
            )
    assert abs(result["val_accuracy"] - uninterrupted["val_accuracy"]) <= 0.005


@pytest.mark.backends("jax")
def test_two_jax_processes_join_and_fine_tune_says_it_needs_one(tmp_path):
    import socket

    write_image_folder(tmp_path / "data" / "train", per_class=4, size=(32, 32))
    write_image_folder(tmp_path / "data" / "val", per_class=2, size=(32, 32))
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(PROJECT), KERAS_BACKEND="jax")
    env.pop("XLA_FLAGS", None)
    script = str(PROJECT / "tests" / "jax_processes_script.py")
    processes = [
        subprocess.Popen(
            [sys.executable, script, str(i), str(port), str(tmp_path / "data")]
            + [str(tmp_path / f"process_{i}.json")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0].decode() for p in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    for i in range(2):
        result = json.loads((tmp_path / f"process_{i}.json").read_text())
        assert result["local"] == 1 and len(result["devices"]) == 2  # one mesh over both
        assert "does not run on several processes yet (2 here)" in result["error"]
