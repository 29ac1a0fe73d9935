"""Data-parallel fine-tuning: 1 device and 2 virtual CPU devices train to the same model.

The 2-device runs need the backend to start with 2 CPU devices, so they run in a
subprocess (`distributed_script.py`), once per backend, shared by the tests of this module.
"""

import json
import os
import signal
import subprocess
import sys

import keras
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
    from keras_transfer.cli.main import main

    argv = ["train", "image", "--data", str(tmp_path), "--backbone", "mobilenet"]
    assert main([*argv, "--devices", "2", "--output", str(tmp_path / "run")]) == 2
    assert "not available on the torch backend" in capsys.readouterr().err


@DISTRIBUTED
def test_more_devices_than_there_are_is_refused():
    from keras_transfer.training.distribution import local_devices

    found = len(local_devices())
    with pytest.raises(ValueError, match=f"asks for more devices than the {found} found"):
        kt.data_parallel(found + 1)
    with pytest.raises(ValueError, match="`devices` must be None"):
        kt.data_parallel(0)


@DISTRIBUTED
def test_device_names_that_do_not_exist_or_repeat_are_refused():
    from keras_transfer.training.distribution import local_devices

    first = local_devices()[0]
    # tensorflow's MirroredStrategy hung on an unknown name and asserted on a repeated one.
    with pytest.raises(ValueError, match=r"(?i)'cpu:7' not found among the devices .*cpu:0"):
        kt.data_parallel(["cpu:0", "cpu:7"])
    with pytest.raises(ValueError, match="names a device more than once"):
        kt.data_parallel([first, first.lstrip("/").lower().replace("device:", "")])
    assert kt.data_parallel(["/CPU:0"]).devices == [first]  # the found device's name


def test_a_last_batch_that_does_not_divide_says_what_the_readers_can_do(tmp_path):
    from keras_transfer.training.replica_batches import check_batches_divide

    write_image_folder(tmp_path / "train", per_class=3, size=(32, 32))
    train_ds, _, _ = kt.image_folder_datasets(
        tmp_path / "train", image_size=(32, 32), batch_size=4, validation_split=None
    )
    with pytest.raises(ValueError, match="6 examples in batches of 4 leave 2") as error:
        check_batches_divide(train_ds, 4)
    message = str(error.value)
    assert "drop_remainder=True" not in message.split("tf.data pipeline of your own")[0]
    assert "leave out or add a few examples" in message


def test_a_short_last_batch_of_a_pipeline_of_your_own_is_caught():
    import tensorflow as tf

    from keras_transfer.training.replica_batches import check_batches_divide

    pairs = tf.data.Dataset.from_tensor_slices((np.zeros((9, 2)), np.zeros(9)))
    with pytest.raises(ValueError, match=r"the last batch \(1 examples\) does not divide"):
        check_batches_divide(pairs.batch(4).map(lambda x, y: (x, y)).prefetch(1), 2)
    check_batches_divide(pairs.batch(4, drop_remainder=True), 2)  # 4, 4
    check_batches_divide(pairs.take(8).batch(4), 2)  # 4, 4


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
        "keras_transfer.cli.main",
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


def _free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _free_ports():
    """The first of two free neighbouring ports (tensorflow's workers take PORT, PORT + 1)."""
    import socket

    for _ in range(100):
        port = _free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("localhost", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two free neighbouring ports on localhost")


def _processes(tmp_path, name, *extra, ids=(0, 1)):
    """Start `processes_script.py` as the processes `ids` (-1: alone, the reference)."""
    env = dict(os.environ, PYTHONPATH=str(PROJECT), KERAS_BACKEND=BACKEND)
    env.pop("XLA_FLAGS", None)
    env.pop("TF_CONFIG", None)
    port, script = str(_free_ports()), str(PROJECT / "tests" / "processes_script.py")
    processes = []
    for i in ids:
        (tmp_path / name / str(i)).mkdir(parents=True, exist_ok=True)
        result = str(tmp_path / name / str(i) / "result.json")
        command = [sys.executable, script, str(i), port, str(tmp_path / "data"), result]
        # Output to a file: a full pipe that nobody reads would stop the process.
        with open(tmp_path / name / str(i) / "output.txt", "wb") as log:
            process = subprocess.Popen(
                [*command, *map(str, extra)], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        process.log = tmp_path / name / str(i) / "output.txt"
        processes.append(process)
    return processes


def _output(process):
    return process.log.read_text(errors="replace")


def _finish(processes):
    for process in processes:
        process.wait(timeout=600)
    outputs = [_output(process) for process in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    return outputs


def _result(tmp_path, name, i):
    return json.loads((tmp_path / name / str(i) / "result.json").read_text())


def _assert_same_training(result, reference):
    assert result["epochs"] == reference["epochs"] == {"head": [0, 1], "finetune": [2, 3]}
    for stage, history in reference["histories"].items():
        for metric, values in history.items():
            np.testing.assert_allclose(
                result["histories"][stage][metric], values, rtol=1e-4, atol=1e-5, err_msg=metric
            )
    np.testing.assert_allclose(result["kernel"], reference["kernel"], rtol=1e-4, atol=1e-5)
    assert abs(result["accuracy"] - reference["accuracy"]) <= 0.005


@DISTRIBUTED
def test_two_processes_fine_tune_the_model_of_one(tmp_path):
    write_image_folder(tmp_path / "data" / "train", per_class=4, size=(32, 32))
    write_image_folder(tmp_path / "data" / "val", per_class=2, size=(32, 32))
    # The 2 processes and the reference (one process, no distribution) side by side.
    outputs = _finish(_processes(tmp_path, "run", ids=(0, 1, -1)))
    reference = _result(tmp_path, "run", -1)
    assert np.abs(np.asarray(reference["kernel"])).max() > 1e-3  # the head learnt
    for i in (0, 1):
        result = _result(tmp_path, "run", i)
        assert len(result["devices"]) == 2  # one mesh over both processes
        _assert_same_training(result, reference)
    assert "Feature caching is off in a run of 2 processes" in outputs[0]
    assert (tmp_path / "run" / "0" / "model.keras").is_file()  # the chief saves
    assert not (tmp_path / "run" / "1" / "model.keras").exists()
    model, names = kt.load_classifier(str(tmp_path / "run" / "0" / "model.keras"))
    assert names == ["cats", "dogs"]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.get_layer("predictions").kernel),
        reference["kernel"],
        rtol=1e-4,
        atol=1e-5,
    )


@DISTRIBUTED
def test_a_killed_two_process_run_resumes_to_the_same_model(tmp_path):
    write_image_folder(tmp_path / "data" / "train", per_class=4, size=(32, 32))
    write_image_folder(tmp_path / "data" / "val", per_class=2, size=(32, 32))
    checkpoint = tmp_path / "checkpoint"
    # Process 1 dies before batch 1 of epoch 3 (the second of fine-tuning); process 0 then
    # waits for it in the gradients' all-reduce, and is killed too: all processes restart.
    pair = _processes(tmp_path, "killed", checkpoint, 3, 1)
    alone = _processes(tmp_path, "alone", ids=(-1,))  # uninterrupted, not checkpointed
    pair[1].wait(timeout=600)
    pair[0].kill()  # it may have failed already, or be waiting
    pair[0].wait(timeout=60)
    outputs = [_output(process) for process in pair]
    assert pair[1].returncode == -signal.SIGKILL, "\n".join(o[-2000:] for o in outputs)
    _finish(alone)
    assert (checkpoint / "state.json").is_file()
    outputs = _finish(_processes(tmp_path, "resumed", checkpoint))
    assert all("Resuming 'finetune'" in output for output in outputs)
    reference = _result(tmp_path, "alone", -1)
    for i in (0, 1):
        _assert_same_training(_result(tmp_path, "resumed", i), reference)
    assert not checkpoint.exists()  # the chief clears it when training completes
    assert (tmp_path / "resumed" / "0" / "model.keras").is_file()


@DISTRIBUTED
def test_the_cli_trains_in_two_processes(tmp_path):
    write_image_folder(tmp_path / "data" / "train", per_class=4, size=(32, 32))
    write_image_folder(tmp_path / "data" / "val", per_class=2, size=(32, 32))
    port = _free_ports()
    command = [sys.executable, "-m", "keras_transfer.cli.main", "train", "image"]
    command += ["--data", str(tmp_path / "data"), "--backbone", "mobilenet"]
    command += ["--weights", "none", "--backbone-kwargs", '{"alpha": 0.25}']
    command += ["--image-size", "32", "--batch-size", "4", "--epochs", "1"]
    command += ["--finetune-epochs", "1", "--no-augmentation", "--devices", "2"]
    command += ["--output", str(tmp_path / "run")]
    processes = []
    addresses = [f"localhost:{port}", f"localhost:{port + 1}"]
    for i in range(2):
        env = dict(os.environ, PYTHONPATH=str(PROJECT), KERAS_BACKEND=BACKEND)
        env.pop("XLA_FLAGS", None)
        if BACKEND == "jax":
            env.update(
                KERAS_DISTRIBUTION_JOB_ADDRESSES=",".join(addresses),
                KERAS_DISTRIBUTION_NUM_PROCESSES="2",
                KERAS_DISTRIBUTION_PROCESS_ID=str(i),
            )
        else:  # the workers of a MultiWorkerMirroredStrategy
            task = {"type": "worker", "index": i}
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": addresses}, "task": task})
        with open(tmp_path / f"output_{i}.txt", "wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        process.log = tmp_path / f"output_{i}.txt"
        processes.append(process)
    outputs = _finish(processes)
    assert all("data-parallel on 2 devices" in output for output in outputs)
    assert "No HTML report in a run of several processes" in outputs[0]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history["head"]["loss"]) == 1 and len(history["finetune"]["loss"]) == 1
    assert (tmp_path / "run" / "report.json").is_file()
    assert not (tmp_path / "run" / "checkpoint").exists()  # cleared by the chief
    model, names = kt.load_classifier(str(tmp_path / "run" / "model.keras"))
    assert names == ["cats", "dogs"] and model.output_shape == (None, 2)


@pytest.mark.backends("tensorflow")
def test_a_tf_config_that_tensorflow_cannot_read_is_named(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{worker: [localhost:2222]}")
    with pytest.raises(ValueError, match="TF_CONFIG is not the JSON"):
        kt.data_parallel()


@pytest.mark.backends("tensorflow")
def test_devices_that_differ_from_the_tensorflow_workers_are_refused(monkeypatch):
    from keras_transfer.training.processes import join_processes

    cluster = {"worker": ["localhost:2222", "localhost:2223"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"index": 0}}))
    with pytest.raises(ValueError, match="pass --devices 2"):
        join_processes(4)


@pytest.mark.backends("tensorflow")
def test_a_worker_list_that_is_not_a_list_is_named(monkeypatch):
    from keras_transfer.training.tf_workers import configured_workers

    cluster = {"worker": "localhost:2222,localhost:2223"}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"index": 0}}))
    with pytest.raises(ValueError, match="must be a list of 'host:port' strings"):
        configured_workers()


@pytest.mark.backends("tensorflow")
def test_the_cli_in_a_tensorflow_worker_without_devices_is_refused(tmp_path, monkeypatch, capsys):
    from keras_transfer.cli.main import main

    write_image_folder(tmp_path / "data" / "train", per_class=2, size=(32, 32))
    cluster = {"worker": ["localhost:2222", "localhost:2223"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"index": 0}}))
    command = ["train", "image", "--data", str(tmp_path / "data"), "--backbone", "mobilenet"]
    assert main([*command, "--output", str(tmp_path / "run")]) == 2
    assert "pass --devices 2" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.backends("tensorflow")
def test_a_text_model_on_several_tensorflow_replicas_is_refused(tiny_bert_preset):
    from keras_transfer.training.distribution import _check_text_on_tensorflow

    model = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=16)
    with pytest.raises(ValueError, match="Text classifiers do not train on several tensorflow"):
        _check_text_on_tensorflow(model, 2)
    _check_text_on_tensorflow(model, 1)  # one replica: trains
