"""The persistent feature store: cached backbone features kept on disk between runs."""

import os
import pathlib
import shutil

import keras
import numpy as np
import pytest
from conftest import SENTIMENT_ROWS, write_image_folder, write_text_file

import keras_transfer as kt
from keras_transfer.features.feature_cache import split_for_caching


class Counted(keras.layers.Layer):
    """Passes its input on and counts its calls (symbolic, traced or eager): any backbone
    pass calls it at least once."""

    calls = 0

    def call(self, inputs):
        Counted.calls += 1
        return inputs


def _model(seed=0, size=8):
    """A small chain classifier: a functional backbone (convolution, BatchNormalization,
    ReLU, `Counted`), pooling and a softmax head of 2 classes."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = Counted()(keras.layers.ReLU()(x))
    backbone = keras.Model(inputs, x, name="backbone")
    image = keras.Input((size, size, 3))
    features = keras.layers.GlobalAveragePooling2D()(backbone(image))
    model = keras.Model(image, keras.layers.Dense(2, activation="softmax")(features))
    kt.freeze_backbone(model)
    return model


def _folder(tmp_path):
    write_image_folder(tmp_path / "data" / "train", per_class=5, size=(10, 12))
    write_image_folder(tmp_path / "data" / "val", per_class=2, size=(10, 12))
    return tmp_path / "data"


def _cache(model, train_ds, val_ds, store):
    """`(split, [train batches], [val batches])` of one caching pass with `store`, and the
    number of backbone calls it made."""
    split = split_for_caching(model)
    split.store = store
    Counted.calls = 0
    train_features, val_features = split.cache(train_ds, val_ds)
    calls = Counted.calls
    train = [tuple(map(np.asarray, batch)) for batch in train_features.as_numpy_iterator()]
    val = [tuple(map(np.asarray, batch)) for batch in val_features.as_numpy_iterator()]
    return split, train, val, calls


def _entries(store):
    return sorted(path.name for path in pathlib.Path(store).iterdir() if path.is_dir())


def test_a_warm_store_runs_no_backbone_and_gives_the_cold_runs_features(tmp_path):
    """The second pass over the same data with the same backbone reads the store: the
    backbone is not called, and the batches (features, labels, order) are the first's."""
    train_ds, val_ds, _ = kt.image_folder_datasets(_folder(tmp_path), image_size=8, batch_size=4)
    store = tmp_path / "store"
    cold, train, val, calls = _cache(_model(), train_ds, val_ds, store)
    assert cold.store_hit is False and calls > 0
    warm, warm_train, warm_val, warm_calls = _cache(_model(), train_ds, val_ds, store)
    assert warm.store_hit is True and warm_calls == 0
    assert len(_entries(store)) == 1
    for cold_batches, warm_batches in ((train, warm_train), (val, warm_val)):
        assert len(cold_batches) == len(warm_batches)
        for cold_batch, warm_batch in zip(cold_batches, warm_batches, strict=True):
            for cold_part, warm_part in zip(cold_batch, warm_batch, strict=True):
                np.testing.assert_array_equal(cold_part, warm_part)


def test_a_changed_file_backbone_or_image_size_misses_the_store(tmp_path):
    """Each change of what the features depend on gives a new entry, computed anew."""
    folder = _folder(tmp_path)
    store = tmp_path / "store"

    def datasets(size=8):
        return kt.image_folder_datasets(folder, image_size=size, batch_size=4, cache=False)[:2]

    assert _cache(_model(), *datasets(), store)[0].store_hit is False
    assert _cache(_model(), *datasets(), store)[0].store_hit is True
    image = next((folder / "train" / "cats").iterdir())
    status = image.stat()
    os.utime(image, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))  # touched
    assert _cache(_model(), *datasets(), store)[0].store_hit is False
    assert _cache(_model(seed=1), *datasets(), store)[0].store_hit is False  # other weights
    assert _cache(_model(size=6), *datasets(size=6), store)[0].store_hit is False
    assert len(_entries(store)) == 4


@pytest.mark.parametrize("damage", ["truncated", "changed", "no manifest", "a file"])
def test_a_damaged_store_entry_is_rebuilt_never_read(tmp_path, damage):
    """A truncated or changed features file, one without its manifest, or an entry folder
    replaced by a file is detected: the entry is removed with a warning and computed again,
    with the right features."""
    train_ds, val_ds, _ = kt.image_folder_datasets(_folder(tmp_path), image_size=8, batch_size=4)
    store = tmp_path / "store"
    _, train, _, _ = _cache(_model(), train_ds, val_ds, store)
    (entry,) = _entries(store)
    features = pathlib.Path(store, entry, "features.npy")
    data = features.read_bytes()
    if damage == "truncated":
        features.write_bytes(data[: len(data) - 16])
    elif damage == "changed":
        features.write_bytes(data[:-4] + np.float32(123.0).tobytes())
    elif damage == "no manifest":
        pathlib.Path(store, entry, "manifest.json").unlink()
    else:
        shutil.rmtree(pathlib.Path(store, entry))
        pathlib.Path(store, entry).write_text("not an entry")
    with pytest.warns(UserWarning, match="damaged"):
        rebuilt, rebuilt_train, _, calls = _cache(_model(), train_ds, val_ds, store)
    assert rebuilt.store_hit is False and calls > 0
    for batch, rebuilt_batch in zip(train, rebuilt_train, strict=True):
        np.testing.assert_array_equal(batch[0], rebuilt_batch[0])
    assert _cache(_model(), train_ds, val_ds, store)[0].store_hit is True
    assert features.read_bytes() == data


def test_fine_tune_with_a_warm_store_decodes_no_image_and_trains_the_same_head(tmp_path, capsys):
    """`fine_tune(feature_store=...)`: after a cold run, a run on the same datasets reads the
    store, and decodes nothing (the image files are overwritten with zeros of the same size
    and time: decoding them would fail), and its head weights are the cold run's."""
    folder = _folder(tmp_path)
    train_ds, val_ds, _ = kt.image_folder_datasets(folder, image_size=8, batch_size=4, cache=False)
    options = dict(head_epochs=3, finetune_epochs=0, learning_rate=0.05, verbose=2)
    heads = []
    for run in ("cold", "warm"):
        model = _model()
        keras.utils.set_random_seed(7)
        kt.fine_tune(model, train_ds, val_ds, feature_store=tmp_path / "store", **options)
        heads.append(model.layers[-1].get_weights())
        said = capsys.readouterr().out
        verb = "written to" if run == "cold" else "read from"
        assert f"Backbone features {verb} the feature store" in said
        for image in folder.rglob("*.png"):  # unreadable from now on
            status = image.stat()
            image.write_bytes(bytes(status.st_size))
            os.utime(image, ns=(status.st_atime_ns, status.st_mtime_ns))
    for cold, warm in zip(*heads, strict=True):
        np.testing.assert_array_equal(cold, warm)
    with pytest.raises(ValueError, match="cache_features=False"):
        kt.fine_tune(
            _model(), train_ds, val_ds, cache_features=False, feature_store=tmp_path, **options
        )
    a_file = next(folder.rglob("*.png"))
    with pytest.raises(NotADirectoryError, match="is a file"):
        kt.fine_tune(_model(), train_ds, val_ds, feature_store=a_file, **options)
    model, Counted.calls = _model(), 0
    with pytest.raises(ValueError, match="`feature_store` must be a folder path.*not empty"):
        kt.fine_tune(model, train_ds, val_ds, feature_store="", **options)
    assert Counted.calls == 0  # refused before any work


def test_text_features_are_kept_by_their_texts_and_sequence_length(tmp_path, tiny_bert_preset):
    """CSV text pipelines: the same texts and encoder hit the store (and give the same
    encoder outputs); another text, or another `sequence_length`, misses it."""
    store = tmp_path / "store"

    def cache(rows, sequence_length=16):
        write_text_file(tmp_path / "train.csv", rows)
        train_ds, _, _ = kt.text_csv_datasets(tmp_path / "train.csv", batch_size=4)
        keras.utils.set_random_seed(5)
        model = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=sequence_length)
        kt.freeze_backbone(model)
        split = split_for_caching(model)
        split.store = store
        features, _ = split.cache(train_ds)
        return split.store_hit, np.concatenate([x for x, _ in features.as_numpy_iterator()])

    cold_hit, cold = cache(SENTIMENT_ROWS)
    warm_hit, warm = cache(SENTIMENT_ROWS)
    assert (cold_hit, warm_hit) == (False, True)
    np.testing.assert_array_equal(cold, warm)
    changed = [("good great film", "pos"), *SENTIMENT_ROWS[1:]]
    assert cache(changed)[0] is False
    assert cache(SENTIMENT_ROWS, sequence_length=8)[0] is False
    assert len(_entries(store)) == 3
