import keras
import numpy as np
import pytest
from conftest import batchnorm_statistics

import keras_transfer as kt


def test_image_round_trip_keeps_flags_batchnorm_guarantee_and_class_names(tmp_path):
    model = kt.build_image_classifier(
        "mobilenet",
        3,
        input_shape=(32, 32, 3),
        weights=None,
        backbone_kwargs={"alpha": 0.25},
        augmentation=None,
    )
    kt.unfreeze_backbone(model, top_n=6)
    path = tmp_path / "model.keras"
    kt.save_classifier(model, path, ["a", "b", "c"])
    loaded, names = kt.load_classifier(path)  # safe_mode=True
    assert names == ["a", "b", "c"]
    flags = [
        (layer.name, layer.trainable)
        for layer in model.get_layer("backbone").layers
        if layer.weights
    ]
    assert [
        (layer.name, layer.trainable)
        for layer in loaded.get_layer("backbone").layers
        if layer.weights
    ] == flags
    images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(images)),
        keras.ops.convert_to_numpy(model(images)),
        atol=1e-6,
    )
    before = batchnorm_statistics(loaded)
    kt.compile_classifier(loaded, learning_rate=0.1)
    loaded.fit(images, keras.utils.to_categorical(np.arange(8) % 3, 3), epochs=2, verbose=0)
    for b, a in zip(before, batchnorm_statistics(loaded), strict=True):
        np.testing.assert_array_equal(b, a)
    # The plain Keras loader reads the same file.
    assert isinstance(keras.saving.load_model(path, safe_mode=True), keras.Model)


def test_text_round_trip_keeps_frozen_blocks_and_class_names(tiny_bert_preset, tmp_path):
    model = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=16, freeze=1)
    kt.save_classifier(model, tmp_path / "text.keras", ["ham", "spam"])
    loaded, names = kt.load_classifier(tmp_path / "text.keras")
    assert names == ["ham", "spam"]
    assert not loaded.backbone.get_layer("transformer_layer_0").trainable
    assert loaded.backbone.get_layer("transformer_layer_1").trainable
    np.testing.assert_allclose(
        np.asarray(loaded.predict(["good movie"], verbose=0)),
        np.asarray(model.predict(["good movie"], verbose=0)),
        atol=1e-5,
    )


def test_save_errors_and_files_without_class_names(tmp_path):
    model = kt.build_image_classifier(
        "mobilenet", 2, input_shape=(32, 32, 3), weights=None, backbone_kwargs={"alpha": 0.25}
    )
    with pytest.raises(ValueError, match="3 class names"):
        kt.save_classifier(model, tmp_path / "m.keras", ["a", "b", "c"])
    with pytest.raises(ValueError, match=".keras"):
        kt.save_classifier(model, tmp_path / "m.h5", ["a", "b"])
    assert not list(tmp_path.iterdir())  # nothing half-written
    model.save(tmp_path / "plain.keras")
    assert kt.load_classifier(tmp_path / "plain.keras")[1] is None
    with pytest.raises(FileNotFoundError):
        kt.load_classifier(tmp_path / "missing.keras")


def test_a_failed_save_leaves_the_previous_file(tmp_path, monkeypatch):
    model = kt.build_image_classifier(
        "mobilenet", 2, input_shape=(32, 32, 3), weights=None, backbone_kwargs={"alpha": 0.25}
    )
    path = tmp_path / "model.keras"
    kt.save_classifier(model, path, ["a", "b"])
    before = path.read_bytes()

    def dies_half_way(target, *args, **kwargs):  # as a kill or a full disk would
        with open(target, "wb") as handle:
            handle.write(before[: len(before) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(model, "save", dies_half_way)
    with pytest.raises(OSError, match="No space"):
        kt.save_classifier(model, path, ["x", "y"])
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "model.keras"
    ]
    assert kt.load_classifier(path)[1] == ["a", "b"]


def test_the_saved_file_leaves_the_optimizer_state_out_unless_asked(tmp_path):
    import io
    import zipfile

    import h5py

    model = kt.build_image_classifier(
        "mobilenet", 2, input_shape=(32, 32, 3), weights=None, backbone_kwargs={"alpha": 0.25}
    )
    kt.unfreeze_backbone(model)
    kt.compile_classifier(model)  # Adam: two slots per trainable weight once built
    images = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    model.fit(images, keras.utils.to_categorical([0, 1, 0, 1], 2), epochs=1, verbose=0)
    kt.save_classifier(model, tmp_path / "serve.keras", ["a", "b"])
    kt.save_classifier(model, tmp_path / "full.keras", ["a", "b"], include_optimizer=True)

    def optimizer_values(path):
        with zipfile.ZipFile(path) as archive:
            data = archive.read("model.weights.h5")
        with h5py.File(io.BytesIO(data), "r") as weights:
            group = weights["optimizer/vars"]
            return sum(group[name].size for name in group)

    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert optimizer_values(tmp_path / "serve.keras") == 0
    assert optimizer_values(tmp_path / "full.keras") > 2 * trainable
    serve, full = (tmp_path / "serve.keras").stat().st_size, (tmp_path / "full.keras").stat()
    assert serve < 0.6 * full.st_size
    for name in ("serve.keras", "full.keras"):
        loaded, names = kt.load_classifier(tmp_path / name)
        assert names == ["a", "b"] and loaded.compiled
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(loaded(images)),
            keras.ops.convert_to_numpy(model(images)),
            atol=1e-6,
        )
        loaded.fit(images, keras.utils.to_categorical([0, 1, 0, 1], 2), epochs=1, verbose=0)
    for wrong in ("no", 1, None):  # "no" was truthy: the state was kept
        with pytest.raises(TypeError, match="`include_optimizer` must be True or False"):
            kt.save_classifier(model, tmp_path / "x.keras", ["a", "b"], include_optimizer=wrong)
    assert not (tmp_path / "x.keras").exists()


def test_a_model_compiled_with_the_recipes_schedule_loads_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    from keras_transfer.models.schedules import WarmupDecay

    model = kt.build_image_classifier(
        "mobilenet", 2, input_shape=(32, 32, 3), weights=None, backbone_kwargs={"alpha": 0.25}
    )
    schedule = WarmupDecay(1e-3, total_steps=10)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="categorical_crossentropy")
    kt.save_classifier(model, tmp_path / "model.keras", ["a", "b"])
    # A fresh process: nothing of ours is imported yet, so WarmupDecay is registered only if
    # load_classifier (or `import keras_transfer` after keras) registers it.
    code = (
        "import sys, keras_transfer as kt\n"
        "model, names = kt.load_classifier(sys.argv[1])\n"
        "print(model.optimizer.get_config()['learning_rate']['class_name'], names)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "model.keras")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "WarmupDecay ['a', 'b']"
