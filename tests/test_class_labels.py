"""Class weights checked before training, stratified validation splits, class names kept."""

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import write_image_folder, write_text_file

import keras_transfer as kt
from keras_transfer.data.batch_augmentation import mix_batches
from keras_transfer.models.class_names import (
    attach_class_names,
    class_names_of,
    remember_class_names,
)
from keras_transfer.training.class_weighting import check_class_weight, check_model_class_weight


def _labels(dataset):
    return np.concatenate([np.asarray(y).argmax(-1) for _, y in dataset.as_numpy_iterator()])


def _tiny_classifier(num_classes):
    """A classifier laid out as `build_image_classifier`'s (a layer named "backbone"), small
    enough to train in well under a second on every backend."""
    backbone = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D()],
        name="backbone",
    )
    images = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(num_classes, activation="softmax")(backbone(images))
    return keras.Model(images, outputs)


def test_class_weight_keys_and_values_are_checked():
    names = ["ants", "bees", "wasps"]
    with pytest.warns(UserWarning, match=r"no weight for class\(es\) 1 'bees', 2 'wasps'"):
        assert check_class_weight({0: 2.0}, 3, names) == {0: 2.0, 1: 1.0, 2: 1.0}
    with pytest.warns(UserWarning, match="'ants'"):
        assert check_class_weight({"bees": 0.5, "2": 3}, 3, names) == {0: 1.0, 1: 0.5, 2: 3.0}
    assert check_class_weight({np.int64(1): np.float32(2), 0: 1}, 2) == {0: 1.0, 1: 2.0}
    assert check_class_weight(None, 2) is None
    with pytest.raises(ValueError, match=r"key 7 is not a class.*0 'ants', 1 'bees', 2 'wasps'"):
        check_class_weight({7: 3.0}, 3, names)
    with pytest.raises(ValueError, match=r"key 'ants' is not a class.*class ids 0 to 1"):
        check_class_weight({"ants": 0.5}, 2)
    with pytest.raises(ValueError, match="two weights"):
        check_class_weight({0: 1.0, "ants": 2.0}, 3, names)
    for bad in (0, -1.0, float("nan"), float("inf"), "2", True, None):
        with pytest.raises(ValueError, match="finite numbers > 0"):
            check_class_weight({0: bad, 1: 1.0}, 2)
    with pytest.raises(ValueError, match="must be a dict"):
        check_class_weight([1.0, 2.0], 2)


def test_fine_tune_and_resumable_fit_check_class_weight_before_training(tmp_path):
    write_image_folder(tmp_path / "data", classes=("ants", "bees", "wasps"), per_class=2)
    train_ds, _, names = kt.image_folder_datasets(tmp_path / "data", image_size=8, batch_size=6)
    model = _tiny_classifier(3)
    with pytest.raises(ValueError, match=r"key 7 .* 0 'ants', 1 'bees', 2 'wasps'"):
        kt.fine_tune(model, train_ds, head_epochs=1, class_weight={7: 3.0}, verbose=0)
    with pytest.raises(ValueError, match="key 'hornets'"):
        kt.fine_tune(
            model, train_ds, head_epochs=1, class_weight={"hornets": 2.0}, cache_features=False
        )
    # A key short of the last class was Keras' `indices[1] = 2 is not in [0, 1)`; a class
    # name was a TypeError. Both train now, with the missing classes at 1.0.
    for class_weight in ({0: 2.0}, {"bees": 0.5}):
        with pytest.warns(UserWarning, match="no weight for class"):
            history = kt.fine_tune(
                model,
                train_ds,
                head_epochs=1,
                class_weight=class_weight,
                checkpoint_dir=tmp_path / "ckpt",
                verbose=0,
            )
        assert np.isfinite(history["head"].history["loss"]).all()
    # "balanced" (scikit-learn's term) counts the training labels: 2 of each class here.
    assert check_model_class_weight(model, "balanced", train_ds) == pytest.approx(
        {0: 1.0, 1: 1.0, 2: 1.0}
    )
    skewed = tf.data.Dataset.from_tensor_slices(
        (np.zeros((4, 8, 8, 3), "float32"), np.array([0, 0, 0, 1]))
    ).batch(2)
    assert check_model_class_weight(_tiny_classifier(2), "balanced", skewed) == pytest.approx(
        {0: 4 / 6, 1: 2.0}
    )
    history = kt.fine_tune(model, train_ds, head_epochs=1, class_weight="balanced", verbose=0)
    assert np.isfinite(history["head"].history["loss"]).all()
    with pytest.raises(ValueError, match="or \"balanced\", got 'balance'"):
        kt.fine_tune(model, train_ds, head_epochs=1, class_weight="balance", verbose=0)
    with pytest.raises(ValueError, match="counts the labels of a tf.data.Dataset"):
        check_model_class_weight(model, "balanced", None)
    kt.compile_classifier(model)
    with pytest.raises(ValueError, match="key 3 is not a class"):
        kt.resumable_fit(
            model, train_ds, epochs=1, checkpoint_dir=tmp_path / "fit", class_weight={3: 1.0}
        )
    assert not (tmp_path / "fit" / "state.json").exists()


def test_image_validation_split_is_stratified(tmp_path):
    # 18 images of one class and 2 of another: every split holds one of the rare class.
    write_image_folder(tmp_path, classes=("common",), per_class=18)
    write_image_folder(tmp_path, classes=("rare",), per_class=2)
    splits = []
    for seed in range(4):
        train_ds, val_ds, names = kt.image_folder_datasets(
            tmp_path, image_size=8, validation_split=0.2, seed=seed
        )
        assert names == ["common", "rare"]
        assert np.bincount(_labels(val_ds), minlength=2).tolist() == [3, 1]
        assert np.bincount(_labels(train_ds), minlength=2).tolist() == [15, 1]
        splits.append(next(val_ds.as_numpy_iterator())[0])
    again = kt.image_folder_datasets(tmp_path, image_size=8, validation_split=0.2, seed=3)[1]
    np.testing.assert_array_equal(next(again.as_numpy_iterator())[0], splits[3])
    assert any(not np.array_equal(splits[0], other) for other in splits[1:])
    # A class of one image cannot be split: it stays in training, with a warning naming it.
    write_image_folder(tmp_path / "few", classes=("a", "b"), per_class=1)
    write_image_folder(tmp_path / "few", classes=("c",), per_class=5)
    with pytest.warns(UserWarning, match=r"class\(es\) \['a', 'b'\] have fewer than 2"):
        train_ds, val_ds, _ = kt.image_folder_datasets(
            tmp_path / "few", image_size=8, validation_split=0.5
        )
    assert sorted(_labels(val_ds).tolist()) == [2, 2, 2]
    assert sorted(_labels(train_ds).tolist()) == [0, 1, 2, 2]
    write_image_folder(tmp_path / "ones", classes=("a", "b", "c"), per_class=1)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no class has 2 or more"):
        kt.image_folder_datasets(tmp_path / "ones", image_size=8, validation_split=0.4)


def test_text_validation_split_is_stratified(tmp_path):
    rows = [(f"text {i}", "rare" if i in (3, 11) else "common") for i in range(20)]
    rows.append(("the lonely one", "single"))
    path = write_text_file(tmp_path / "t.csv", rows)
    with pytest.warns(UserWarning, match=r"\['single'\] have fewer than 2"):
        train_ds, val_ds, names = kt.text_csv_datasets(path, validation_split=0.2, seed=5)
    assert names == ["common", "rare", "single"]
    assert np.bincount(_labels(val_ds), minlength=3).tolist() == [3, 1, 0]
    assert np.bincount(_labels(train_ds), minlength=3).tolist() == [15, 1, 1]
    with pytest.warns(UserWarning):
        again = kt.text_csv_datasets(path, validation_split=0.2, seed=5)[1]
    assert [x.tolist() for x, _ in again.as_numpy_iterator()] == [
        x.tolist() for x, _ in val_ds.as_numpy_iterator()
    ]


def test_class_names_travel_with_the_model(tmp_path):
    write_image_folder(tmp_path / "data", classes=("ants", "bees"), per_class=2)
    train_ds, val_ds, names = kt.image_folder_datasets(
        tmp_path / "data", image_size=8, batch_size=4, validation_split=0.5
    )
    model = _tiny_classifier(2)
    assert class_names_of(model) is None
    with pytest.warns(UserWarning, match="carries no class names.*save_classifier"):
        report = kt.evaluate_classifier(model, iter(list(val_ds)))
    assert report.class_names == ["0", "1"]
    kt.fine_tune(model, train_ds, head_epochs=1, verbose=0)
    assert class_names_of(model) == ["ants", "bees"]
    assert kt.evaluate_classifier(model, val_ds).class_names == ["ants", "bees"]
    model.save(tmp_path / "plain.keras")  # the quickstart's save
    loaded, loaded_names = kt.load_classifier(tmp_path / "plain.keras")
    assert loaded_names == ["ants", "bees"] and class_names_of(loaded) == ["ants", "bees"]
    bare = _tiny_classifier(2)
    with pytest.raises(ValueError, match="3 class names"):
        attach_class_names(bare, ["a", "b", "c"])
    bare.save(tmp_path / "bare.keras")
    assert kt.load_classifier(tmp_path / "bare.keras")[1] is None
    kt.save_classifier(bare, tmp_path / "named.keras", ["x", "y"])
    assert class_names_of(bare) == ["x", "y"]
    with zipfile.ZipFile(tmp_path / "named.keras") as archive:
        assert json.loads(archive.read("keras_transfer/class_names.json")) == ["x", "y"]


def test_class_names_come_through_label_keeping_steps_and_from_keras_loaders(tmp_path):
    from keras_transfer.models.class_names import dataset_class_names

    write_image_folder(tmp_path / "data", classes=("ants", "bees"), per_class=2)
    ours, _, _ = kt.image_folder_datasets(tmp_path / "data", image_size=8, batch_size=4)
    theirs = keras.utils.image_dataset_from_directory(
        tmp_path / "data", image_size=(8, 8), batch_size=4, label_mode="categorical"
    )
    for dataset in (ours, theirs):
        # The Keras guide's `.cache().prefetch()` dropped the names that fine_tune adopts.
        kept = dataset.shuffle(4).repeat(2).take(2).cache().prefetch(1)
        assert dataset_class_names(kept) == ["ants", "bees"]
        # `.map` may change the labels: its names are not taken on trust.
        assert dataset_class_names(dataset.map(lambda x, y: (x, y[:, ::-1]))) is None
        model = _tiny_classifier(2)
        kt.fine_tune(model, kept, head_epochs=1, verbose=0)
        assert class_names_of(model) == ["ants", "bees"]
    assert dataset_class_names(tf.data.Dataset.range(3).prefetch(1)) is None


@pytest.mark.backends("tensorflow")
def test_export_of_a_model_without_class_names_warns(tmp_path):
    layers = [keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2, "softmax")]
    model = keras.Sequential(layers)
    with pytest.warns(UserWarning, match="the export labels its 2 classes '0' to '1'"):
        path = kt.export_saved_model(model, tmp_path / "export")
    assert json.loads((tmp_path / "export" / "1" / "assets.extra" / "class_names.json").read_text())
    attach_class_names(model, ["cat", "dog"])
    path = kt.export_saved_model(model, tmp_path / "export")
    from keras_transfer.export.saved_model import read_class_names

    assert read_class_names(path) == ["cat", "dog"]


def _arrays(count=12, num_classes=3):
    rng = np.random.default_rng(0)
    labels = np.arange(count) % num_classes
    images = (
        rng.uniform(0, 255, (count, 8, 8, 3)).astype("float32") + 20 * labels[:, None, None, None]
    )
    return images, np.eye(num_classes, dtype="float32")[labels]


class _Batches(keras.utils.PyDataset):
    def __init__(self, images, labels, batch_size=4):
        super().__init__()
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.epochs_begun = self.epochs_ended = 0

    def on_epoch_begin(self):
        self.epochs_begun += 1

    def on_epoch_end(self):
        self.epochs_ended += 1

    def __len__(self):
        return -(-len(self.images) // self.batch_size)

    def __getitem__(self, index):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.images[part], self.labels[part]


def test_fine_tune_takes_generators_and_pydatasets(tmp_path, capsys):
    images, labels = _arrays()

    def batches():
        for start in range(0, len(images), 4):
            yield images[start : start + 4], labels[start : start + 4]

    model = _tiny_classifier(3)
    history = kt.fine_tune(model, batches(), head_epochs=1)
    assert "without feature caching: the data is a Python generator" in capsys.readouterr().out
    assert len(history["head"].history["loss"]) == 1
    with pytest.raises(ValueError, match="a Python generator is read once"):
        kt.fine_tune(model, batches(), head_epochs=1, checkpoint_dir=tmp_path / "c", verbose=0)
    # A generator gives one epoch: the default head trains that one (was 20 epochs, all
    # but the first repeating its numbers without data), more epochs are refused.
    history = kt.fine_tune(model, batches(), verbose=0)
    assert len(history["head"].history["loss"]) == 1
    with pytest.raises(ValueError, match="`train_ds` is a Python generator, read once, .* 3 times"):
        kt.fine_tune(model, batches(), head_epochs=3, verbose=0)
    with pytest.raises(ValueError, match="`val_ds` is a Python generator, read once"):
        kt.fine_tune(model, _Batches(images, labels), batches(), finetune_epochs=2, verbose=0)
    data = _Batches(images, labels)
    history = kt.fine_tune(
        model,
        data,
        _Batches(images[:8], labels[:8]),
        head_epochs=2,
        finetune_epochs=1,
        class_weight={"0": 2.0, 1: 1.0, 2: 1.0},
        checkpoint_dir=tmp_path / "ckpt",
        verbose=0,
    )
    assert len(history["finetune"].history["val_loss"]) == 1
    assert not (tmp_path / "ckpt").exists()  # cleared when done
    for source in (data, batches()):
        report = kt.evaluate_classifier(model, source, ["a", "b", "c"])
        assert report.num_examples == 12 and sum(report.support) == 12


@pytest.mark.backends("torch")
def test_fine_tune_takes_torch_dataloaders(tmp_path, capsys):
    import torch

    images, labels = _arrays()
    tensors = torch.utils.data.TensorDataset(torch.tensor(images), torch.tensor(labels))
    loader = torch.utils.data.DataLoader(tensors, batch_size=4)
    model = _tiny_classifier(3)
    history = kt.fine_tune(
        model, loader, loader, head_epochs=2, finetune_epochs=0, checkpoint_dir=tmp_path / "c"
    )
    assert "Training without" not in capsys.readouterr().out  # its features are cached
    assert len(history["head"].history["val_loss"]) == 2
    report = kt.evaluate_classifier(model, loader, ["a", "b", "c"])
    assert report.num_examples == 12
    # Class ids for the one-hot loss: refused from the first batch, before any pass (was
    # Keras' "`target` and `output` must have the same shape" after the feature pass).
    ids = torch.tensor(labels.argmax(-1))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.tensor(images), ids), batch_size=4, shuffle=True
    )
    state = torch.random.get_rng_state()
    with pytest.raises(ValueError, match=r"class-id labels of shape \(4,\).*tf.one_hot\(y, 3\)"):
        kt.fine_tune(model, loader, head_epochs=1, verbose=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # no sampler drawn
    with pytest.raises(ValueError, match="Keras' fit does not take it with a torch DataLoader"):
        kt.fine_tune(model, torch.utils.data.DataLoader(tensors, batch_size=4), class_weight={0: 2})


def test_dataloaders_the_label_check_cannot_read_by_index_train(tmp_path):
    """The first-batch check reads a DataLoader's examples 0..batch_size-1 only where those
    are its indices, and puts back the random states an augmenting dataset draws from; an
    iterable dataset with a length and a sampler of keys train as before (the check raised
    NotImplementedError and KeyError: 0)."""
    import random

    import torch

    from keras_transfer.data.fit_inputs import first_batch

    images, labels = _arrays()

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(zip(torch.tensor(images), torch.tensor(labels), strict=True))

        def __len__(self):
            return len(images)

    class Keyed(torch.utils.data.Dataset):  # rows looked up by name
        def __getitem__(self, key):
            index = int(key[3:])
            return torch.tensor(images[index]), torch.tensor(labels[index])

        def __len__(self):
            return len(images)

    class Names(torch.utils.data.Sampler):
        def __iter__(self):
            return iter(f"img{i}" for i in range(len(images)))

        def __len__(self):
            return len(images)

    class Augmenting(torch.utils.data.Dataset):  # draws from every global generator
        def __getitem__(self, index):
            shift = torch.rand(()) + np.random.rand() + random.random()
            return torch.tensor(images[index]) + shift, torch.tensor(labels[index])

        def __len__(self):
            return len(images)

    model = _tiny_classifier(3)
    for loader in (
        torch.utils.data.DataLoader(Stream(), batch_size=4),
        torch.utils.data.DataLoader(Keyed(), batch_size=4, sampler=Names()),
    ):
        assert first_batch(loader) is None
        history = kt.fine_tune(model, loader, head_epochs=1, finetune_epochs=0, verbose=0)
        assert np.isfinite(history["head"].history["loss"]).all()
    loader = torch.utils.data.DataLoader(Augmenting(), batch_size=4, shuffle=True)
    states = torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    assert first_batch(loader)[1].shape == (4, 3)
    assert torch.equal(torch.random.get_rng_state(), states[0])
    assert (np.random.get_state()[1] == states[1]).all() and random.getstate() == states[2]


def test_fine_tune_takes_grain_datasets(capsys):
    grain = pytest.importorskip("grain")
    images, labels = _arrays()
    data = grain.MapDataset.source(list(zip(images, labels, strict=True))).batch(4)
    model = _tiny_classifier(3)
    history = kt.fine_tune(model, data, data, head_epochs=2, finetune_epochs=1)
    assert "Training without" not in capsys.readouterr().out  # its features are cached
    assert len(history["head"].history["val_loss"]) == 2
    assert len(history["finetune"].history["val_loss"]) == 1
    report = kt.evaluate_classifier(model, data, ["a", "b", "c"])
    assert report.num_examples == 12 and sum(report.support) == 12
    ids = grain.MapDataset.source(list(zip(images, labels.argmax(-1), strict=True))).batch(4)
    with pytest.raises(ValueError, match=r"class-id labels of shape \(4,\)"):
        kt.fine_tune(model, ids, head_epochs=1, verbose=0)
    single = grain.MapDataset.source(list(zip(images, labels, strict=True)))  # not batched
    with pytest.raises(ValueError, match=r"single examples of shape \(8, 8, 3\).*batch it first"):
        kt.fine_tune(model, single, head_epochs=1, verbose=0)  # was "class-id labels (3,)"
    with pytest.raises(ValueError, match=r"`val_ds` is an infinite grain MapDataset.*val_ds\[:n\]"):
        kt.fine_tune(model, data, data.repeat(), verbose=0)  # was a run that never ended
    kt.fine_tune(model, data.repeat()[:3], data, head_epochs=1, finetune_epochs=0, verbose=0)


def test_the_auto_head_is_the_linear_probe_on_data_read_again(capsys):
    """A PyDataset (and a DataLoader, grain) is read once for the feature cache, so the
    default head is the cross-validated linear probe there too, with its labels and sample
    weights; a one-shot generator falls back to fitting the head by gradient."""
    rng = np.random.default_rng(1)
    labels = np.arange(24) % 3
    images = rng.uniform(0, 40, (24, 8, 8, 3)).astype("float32") + 100 * labels[:, None, None, None]
    one_hot = np.eye(3, dtype="float32")[labels]
    keras.utils.set_random_seed(2)
    model = _tiny_classifier(3)
    validation = _Batches(images[:9], one_hot[:9])
    history = kt.fine_tune(model, _Batches(images, one_hot), validation, finetune_epochs=0)
    out = capsys.readouterr().out
    assert "Head fitted as a linear probe" in out and "Training without" not in out
    head = history["head"].history
    assert len(head["loss"]) == 1 and head["accuracy"][0] == 1.0 and "val_loss" in head
    report = kt.evaluate_classifier(model, _Batches(images, one_hot), ["a", "b", "c"])
    assert report.accuracy == 1.0

    class Weighted(_Batches):  # sample weight 0 for class 2: the probe never sees it
        def __getitem__(self, index):
            x, y = super().__getitem__(index)
            return x, y, (y.argmax(-1) != 2).astype("float32")

    model = _tiny_classifier(3)
    kt.fine_tune(model, Weighted(images, one_hot), finetune_epochs=0, verbose=0)
    predicted = model.predict(images, verbose=0).argmax(-1)
    assert not (predicted == 2).any() and (predicted[labels != 2] == labels[labels != 2]).all()

    def batches():
        for start in range(0, len(images), 4):
            yield images[start : start + 4], one_hot[start : start + 4]

    kt.fine_tune(_tiny_classifier(3), batches(), finetune_epochs=0)
    out = capsys.readouterr().out
    assert "without feature caching: the data is a Python generator" in out
    assert "cannot be fitted as a linear probe here" in out


def _named_classifier(num_classes):
    """`_tiny_classifier` on an input named "image" (Keras takes `{"image": x}` for it)."""
    backbone = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D()],
        name="backbone",
    )
    images = keras.Input((8, 8, 3), name="image")
    outputs = keras.layers.Dense(num_classes, activation="softmax")(backbone(images))
    return keras.Model(images, outputs)


def test_a_pydatasets_inputs_keyed_by_the_models_input_name_are_cached():
    """`({"image": x}, y)` batches, as Keras takes them, from a PyDataset: the one pass that
    caches the features reads the tensors out (was `TypeError: unhashable type: 'slice'`
    in the feature pass); the head is the linear probe, and fine-tuning trains on them.
    Labels keyed by the output's name (which Keras' fit takes from tf.data only) are
    refused before training (they failed in the fine-tuning stage)."""
    images, labels = _arrays()
    model = _named_classifier(3)

    class Keyed(_Batches):
        def __getitem__(self, index):
            x, y = super().__getitem__(index)
            return {"image": x}, y

    history = kt.fine_tune(model, Keyed(images, labels), Keyed(images, labels), finetune_epochs=1)
    head = history["head"].history
    assert len(head["loss"]) == 1 and np.isfinite(head["val_loss"]).all()
    assert head["accuracy"][0] > 0.5  # chance is 1/3
    assert len(history["finetune"].history["val_loss"]) == 1
    result = kt.lr_find(model, Keyed(images, labels), num_steps=3)
    assert len(result.learning_rates) == 3

    class KeyedLabels(_Batches):
        def __getitem__(self, index):
            x, y = super().__getitem__(index)
            return {"image": x}, {model.output_names[0]: y}

    for call in (kt.fine_tune, kt.lr_find):
        with pytest.raises(ValueError, match="labels as a dict .* give the array itself"):
            call(model, KeyedLabels(images, labels))


def test_text_features_of_a_pydataset_are_the_models(tiny_bert_preset, capsys):
    from conftest import SENTIMENT_ROWS

    from keras_transfer.features.feature_cache import split_for_caching

    texts = np.array([text for text, _ in SENTIMENT_ROWS])
    one_hot = np.array([[label == "neg", label == "pos"] for _, label in SENTIMENT_ROWS], "float32")
    model = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=16)
    train = _Batches(texts, one_hot)
    history = kt.fine_tune(
        model, train, _Batches(list(texts[:6]), one_hot[:6]), finetune_epochs=2
    )  # texts as NumPy strings, and as a list of str
    assert "Head fitted as a linear probe" in capsys.readouterr().out
    assert len(history["finetune"].history["val_loss"]) == 2  # KerasHub's fit read it too
    # Its epoch hooks run around every pass (2 epochs, passes that count batches, and on
    # jax and torch one first batch read for the input spec: begun, not ended).
    assert train.epochs_begun >= train.epochs_ended >= 2
    split = split_for_caching(model)  # the cut the cache used: encoder, then the head
    features = np.concatenate(list(split.features_of([texts[:5], texts[5:]])))
    np.testing.assert_allclose(
        split.head.predict(features, verbose=0), model.predict(texts, verbose=0), atol=1e-5
    )


def test_only_data_that_can_be_read_again_is_cached(capsys):
    from keras_transfer.data.fit_inputs import plan_for_inputs

    class Endless(_Batches):
        @property
        def num_batches(self):
            return None  # an infinite PyDataset: one pass never ends

    images, labels = _arrays()
    model = _tiny_classifier(3)
    assert plan_for_inputs(model, "auto", None, _Batches(images, labels), None) == ("auto", None)
    assert capsys.readouterr().out == ""
    assert plan_for_inputs(model, "auto", None, Endless(images, labels), None) == (False, None)
    assert "without feature caching: the data is a keras.utils.PyDataset" in capsys.readouterr().out
    endless = Endless(images, labels)
    for train, val, name in (
        (endless, None, "train_ds"),
        (_Batches(images, labels), endless, "val_ds"),
    ):
        with pytest.raises(ValueError, match=f"`{name}` is an infinite keras.utils.PyDataset"):
            kt.fine_tune(model, train, val)  # fit would never end an epoch


class _Shuffled(_Batches):
    """Texts that reshuffle in `on_epoch_begin`, logging each hook and batch read."""

    def __init__(self):
        super().__init__(np.array([f"t{i}" for i in range(8)]), np.eye(2, dtype="float32"))
        self.order, self.log, self.rng = np.arange(8), [], np.random.default_rng(0)

    def on_epoch_begin(self):
        self.log.append("begin")
        self.rng.shuffle(self.order)

    def on_epoch_end(self):
        self.log.append("end")

    def __len__(self):
        return 4

    def __getitem__(self, index):
        self.log.append(index)
        chosen = self.order[2 * index : 2 * index + 2]
        return self.images[chosen], self.labels[chosen % 2]


def test_a_pydataset_read_through_tf_data_keeps_its_epoch_hooks():
    from keras_transfer.data.fit_inputs import as_tf_dataset

    data = _Shuffled()
    dataset = as_tf_dataset(data)
    passes = [[t for batch in dataset.as_numpy_iterator() for t in batch[0]] for _ in range(2)]
    for texts in passes:  # each pass reads every text once, after its reshuffle
        assert sorted(texts) == sorted(t.encode() for t in data.images)
    assert passes[0] != passes[1]
    assert data.log[1:] == ["begin", 0, 1, 2, 3, "end"] * 2  # after the spec's first read
    list(dataset.take(1).as_numpy_iterator())  # a pass cut short ends too
    assert data.log[-1] == "end" and data.log.count("begin") == data.log.count("end") == 3
    ids = _Batches(data.images, np.arange(8) % 2)
    with pytest.raises(ValueError, match="`train_ds` has class-id labels of shape \\(4,\\)"):
        kt.fine_tune(kt.build_image_classifier("mobilenet", 2, weights=None), ids, verbose=0)


def test_batches_keyed_by_the_models_input_and_output_names():
    """`({input_name: x}, {output_name: y})` batches (the InputLayer's name, which Keras
    looks dict inputs up by): fine_tune (the probe on cached features, then fine-tuning),
    lr_find and evaluate_classifier read them as `(x, y)`, the class names kept. Labels
    keyed otherwise, and TFDS-like dict elements, are refused with the map that fixes them."""
    import tensorflow as tf

    rng = np.random.default_rng(3)
    ids = np.arange(24) % 3
    images = rng.uniform(0, 40, (24, 8, 8, 3)).astype("float32") + 100 * ids[:, None, None, None]
    labels = np.eye(3, dtype="float32")[ids]
    model = _tiny_classifier(3)
    image_name, output_name = model.input_spec[0].name, model.output_names[0]
    keyed = tf.data.Dataset.from_tensor_slices(({image_name: images}, {output_name: labels}))
    keyed = remember_class_names(keyed.batch(6), ["a", "b", "c"])
    history = kt.fine_tune(model, keyed, keyed, finetune_epochs=1, verbose=0)
    assert history["head"].history["accuracy"][0] == 1.0  # the probe read every label
    assert len(history["finetune"].history["val_loss"]) == 1
    report = kt.evaluate_classifier(model, keyed)  # the class names kept through the map
    assert report.class_names == ["a", "b", "c"] and report.accuracy == 1.0
    kt.freeze_backbone(model)
    assert len(kt.lr_find(model, keyed, num_steps=5).learning_rates) == 5
    inputs_only = tf.data.Dataset.from_tensor_slices(({image_name: images}, labels)).batch(6)
    assert kt.evaluate_classifier(model, inputs_only, ["a", "b", "c"]).accuracy == 1.0

    weights = model.get_weights()
    other = tf.data.Dataset.from_tensor_slices((images, {"label": labels})).batch(6)
    with pytest.raises(ValueError, match=r"`val_ds` gives its labels as a dict \(keys \['label'\]"):
        kt.fine_tune(model, keyed, other, verbose=0)
    with pytest.raises(ValueError, match=r"train_ds.map\(lambda x, y: \(x, y\['label'\]\)\)"):
        kt.lr_find(model, other, num_steps=5)
    with pytest.raises(ValueError, match=r"`dataset` gives its labels as a dict"):
        kt.evaluate_classifier(model, other, ["a", "b", "c"])
    elements = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels}).batch(6)
    with pytest.raises(ValueError, match=r"gives dicts \(keys \['image', 'label'\]\).*supervised"):
        kt.fine_tune(model, elements, verbose=0)
    # Inputs keyed by another name (was a TypeError in the feature cache's fingerprints).
    misnamed = tf.data.Dataset.from_tensor_slices(({"pixels": images}, labels)).batch(6)
    with pytest.raises(ValueError, match=r"`train_ds` gives its inputs as a dict \(keys \['pixels"):
        kt.fine_tune(model, misnamed, verbose=0)
    with pytest.raises(ValueError, match=rf"`dataset` .*named '{image_name}': key them by"):
        kt.evaluate_classifier(model, misnamed, ["a", "b", "c"])
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights(), strict=True))

    class Keyed(_Batches):
        def __getitem__(self, index):
            x, y = super().__getitem__(index)
            return x, {"label": y}

    with pytest.raises(ValueError, match=r"labels as a dict \(keys \['label'\]\).*the array"):
        kt.fine_tune(model, Keyed(images, labels), verbose=0)


def test_the_command_line_takes_class_weight_balanced(capsys):
    import argparse
    from argparse import Namespace

    from keras_transfer.cli.arguments import class_weight_argument
    from keras_transfer.cli.parser import build_parser
    from keras_transfer.training.class_weighting import command_line_class_weight

    assert class_weight_argument(" Balanced ") == "balanced"
    assert class_weight_argument('{"bees": 2}') == {"bees": 2}
    for wrong in ("balance", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="expected balanced or a JSON"):
            class_weight_argument(wrong)
    args = build_parser().parse_args(
        ["train", "image", "--data", "d", "--output", "o", "--class-weight", "balanced"]
    )
    assert args.class_weight == "balanced"
    skewed = tf.data.Dataset.from_tensor_slices(
        (np.zeros((4, 2), "float32"), np.eye(2, dtype="float32")[[0, 0, 0, 1]])
    ).batch(3)
    weights = command_line_class_weight(args, skewed, ["ants", "bees"])
    assert weights == pytest.approx({0: 4 / 6, 1: 2.0})
    assert "Balanced class weights: ants 0.667, bees 2" in capsys.readouterr().out
    both = Namespace(class_weight="balanced", class_weights=True)
    with pytest.raises(ValueError, match="not both"):
        command_line_class_weight(both, skewed, ["ants", "bees"])


def test_a_model_with_class_names_is_not_trained_or_read_under_others(tmp_path):
    write_image_folder(tmp_path / "data", classes=("ants", "bees"), per_class=2)
    train_ds, _, _ = kt.image_folder_datasets(tmp_path / "data", image_size=8, batch_size=4)
    # The same examples, their one-hot columns swapped: id 0 is now "bees".
    swapped = remember_class_names(train_ds.map(lambda x, y: (x, y[:, ::-1])), ["bees", "ants"])
    model = _tiny_classifier(2)
    kt.fine_tune(model, train_ds, head_epochs=1, verbose=0)
    # Trained on, or evaluated on, data whose ids mean other classes: the names would be
    # wrong (they were kept silently).
    with pytest.raises(ValueError, match=r"carries the class names \['ants', 'bees'\]"):
        kt.fine_tune(model, swapped, head_epochs=1, verbose=0)
    with pytest.raises(ValueError, match="`dataset` has \\['bees', 'ants'\\]"):
        kt.evaluate_classifier(model, swapped)
    assert kt.evaluate_classifier(model, swapped, ["x", "y"]).class_names == ["x", "y"]
    kt.attach_class_names(model, ["bees", "ants"])  # the data's classes are meant
    kt.fine_tune(model, swapped, head_epochs=1, verbose=0)
    assert class_names_of(model) == ["bees", "ants"]
    # save_classifier takes the names the model carries; a model without any is refused.
    kt.save_classifier(model, tmp_path / "m.keras")
    assert kt.load_classifier(tmp_path / "m.keras")[1] == ["bees", "ants"]
    with pytest.raises(ValueError, match="carries no class names: pass class_names"):
        kt.save_classifier(_tiny_classifier(2), tmp_path / "n.keras")
    # Names of another count than the outputs describe no output: not used, and no error.
    with pytest.warns(UserWarning, match="carries no class names"):
        report = kt.evaluate_classifier(
            _tiny_classifier(3),
            train_ds.map(lambda x, y: (x, tf.pad(y, [[0, 0], [0, 1]]))).apply(
                lambda d: remember_class_names(d, ["ants", "bees"])
            ),
        )
    assert report.class_names == ["0", "1", "2"]


def test_resumable_fit_takes_balanced_and_refuses_what_it_cannot_resume(tmp_path):
    skewed = tf.data.Dataset.from_tensor_slices(
        (np.zeros((4, 8, 8, 3), "float32"), np.eye(2, dtype="float32")[[0, 0, 0, 1]])
    ).batch(2)
    model = _tiny_classifier(2)
    kt.compile_classifier(model)
    history = kt.resumable_fit(
        model, skewed, epochs=1, checkpoint_dir=tmp_path / "a", class_weight="balanced"
    )
    assert np.isfinite(history.history["loss"]).all()
    with pytest.raises(ValueError, match="drop `steps_per_epoch`"):
        kt.resumable_fit(model, skewed, epochs=1, checkpoint_dir=tmp_path / "b", steps_per_epoch=2)
    with pytest.raises(ValueError, match="`train_ds` is an infinite tf.data.Dataset"):
        kt.resumable_fit(model, skewed.repeat(), epochs=1, checkpoint_dir=tmp_path / "c")


def test_class_weights_of_datasets_of_every_form():
    images, ids = np.zeros((4, 2), "float32"), np.array([0, 0, 0, 1])
    expected = {0: 4 / 6, 1: 2.0}
    one_hot = np.eye(2, dtype="float32")[ids]
    pairs = tf.data.Dataset.from_tensor_slices((images, one_hot))
    assert kt.class_weights(pairs.batch(3)) == pytest.approx(expected)
    assert kt.class_weights(tf.data.Dataset.from_tensor_slices((images, ids))) == pytest.approx(
        expected
    )  # single examples' ids
    # One-hot rows of single examples were read as ids 0 and 1: {0: 1.0, 1: 1.0}.
    with pytest.raises(ValueError, match="one-hot rows of single examples"):
        kt.class_weights(pairs)
    with pytest.raises(ValueError, match="labels as a dict"):
        kt.class_weights(pairs.batch(2).map(lambda x, y: (x, {"out": y})))
    with pytest.raises(ValueError, match="no \\(inputs, labels\\) tuples"):
        kt.class_weights(tf.data.Dataset.from_tensor_slices(images).batch(2))
    with pytest.raises(ValueError, match="infinite"):  # was a hang
        kt.class_weights(pairs.batch(2).repeat())


def test_balanced_weights_of_our_pipelines_decode_no_image(tmp_path):
    root = write_image_folder(tmp_path / "data", classes=("ants", "bees"), per_class=4)
    for i in range(4):  # 8 ants, 4 bees
        (root / "ants" / f"more_{i}.png").write_bytes(
            (root / "ants" / f"ants_{i}.png").read_bytes()
        )
    train_ds, val_ds, _ = kt.image_folder_datasets(
        root, image_size=8, batch_size=4, validation_split=0.25, cache=False
    )
    counted = kt.class_weights(train_ds)  # read from the pipeline's batches
    assert counted == pytest.approx({0: 9 / 12, 1: 9 / 6})  # 6 ants, 3 bees kept
    mixed = mix_batches(train_ds, "mixup", seed=1)  # derived batch by batch: the same labels
    for path in root.rglob("*.png"):
        path.unlink()
    # The streamed pipeline remembers its labels: no photo is decoded to count them (they
    # are gone: reading a batch would fail).
    with pytest.raises(tf.errors.NotFoundError):
        next(iter(train_ds))
    assert kt.class_weights(train_ds) == pytest.approx(counted)
    assert kt.class_weights(mixed) == pytest.approx(counted)
    assert kt.class_weights(val_ds) == pytest.approx({0: 3 / 4, 1: 3 / 2})  # 2 ants, 1 bee
    assert check_model_class_weight(_tiny_classifier(2), "balanced", train_ds) == pytest.approx(
        counted
    )


def test_class_weights_of_our_pipelines_keep_the_one_hot_width(tmp_path):
    path = write_text_file(tmp_path / "t.csv", [("one", "a"), ("two", "b"), ("three", "a")])
    train_ds, _, _ = kt.text_csv_datasets(path, class_names=["a", "b", "c"], batch_size=2)
    # Labels one-hot of width 3, class "c" without examples: refused, as counting the
    # batches does (the remembered ids alone gave {0: 0.75, 1: 1.5}).
    with pytest.raises(ValueError, match=r"Class id\(s\) \[2\] have no examples"):
        kt.class_weights(train_ds)


def test_class_weight_with_sample_weights_is_refused_before_training():
    images, ids = np.zeros((4, 8, 8, 3), "float32"), np.array([0, 0, 0, 1])
    weighted = tf.data.Dataset.from_tensor_slices(
        (images, np.eye(2, dtype="float32")[ids], np.ones(4, "float32"))
    ).batch(2)
    model = _tiny_classifier(2)
    for class_weight in ("balanced", {0: 1.0, 1: 3.0}):
        # Was Keras' "You cannot `class_weight` and `sample_weight` at the same time" after
        # the frozen stage.
        with pytest.raises(ValueError, match="gives sample weights too .* drop `class_weight`"):
            kt.fine_tune(model, weighted, head_epochs=1, class_weight=class_weight, verbose=0)
    history = kt.fine_tune(model, weighted, head_epochs=1, finetune_epochs=0, verbose=0)
    assert np.isfinite(history["head"].history["loss"]).all()
    unweighted = weighted.map(lambda x, y, w: (x, y, None))  # as Keras' fit takes it
    history = kt.fine_tune(model, unweighted, head_epochs=1, class_weight="balanced", verbose=0)
    assert np.isfinite(history["head"].history["loss"]).all()

    class Weighted(_Batches):
        def __getitem__(self, index):
            x, y = super().__getitem__(index)
            return x, y, np.ones(len(x), "float32")

    class Counted(Weighted):
        reads = 0

        def __getitem__(self, index):
            self.reads += 1
            return super().__getitem__(index)

    for check in (
        lambda data: kt.fine_tune(model, data, class_weight={0: 1.0}, verbose=0),
        lambda data: kt.lr_find(model, data, num_steps=3, class_weight={0: 1.0}),
    ):
        weighted_batches = Counted(images, np.eye(2)[ids])
        with pytest.raises(ValueError, match="gives sample weights too"):
            check(weighted_batches)
        assert weighted_batches.reads == 1  # the label check's first batch, not read again
