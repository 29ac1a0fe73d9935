"""`tfds_datasets` and `--data tfds:NAME` on TFDS datasets built on disk by real builders."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from conftest import SENTIMENT_ROWS, centre_crop

import keras_transfer as kt


def _images(count, offset):
    """`count` (image, label) pairs: label 0 dark, 1 bright; 40x48 uint8 RGB."""
    rng = np.random.default_rng(offset)
    labels = (np.arange(count) + offset) % 2
    return [
        (np.clip(rng.normal(50 + 150 * label, 20, (40, 48, 3)), 0, 255).astype("uint8"), label)
        for label in labels
    ]


TRAIN_IMAGES, TEST_IMAGES = _images(12, 0), _images(4, 1)
TEST_REVIEWS = [("great fun film", "pos"), ("boring awful", "neg"), ("love it", "pos")]


class KtTinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Dark and bright images, as TFDS' image classification datasets hold them."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=["dark", "bright"]),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(TRAIN_IMAGES),
            "test": self._generate_examples(TEST_IMAGES),
        }

    def _generate_examples(self, examples):
        for key, (image, label) in enumerate(examples):
            yield key, {"image": image, "label": int(label)}


class KtTinyReviews(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Short reviews, as imdb_reviews holds them (a Text and a ClassLabel feature)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=["neg", "pos"]),
                }
            ),
            supervised_keys=("text", "label"),
        )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(SENTIMENT_ROWS),
            "test": self._generate_examples(TEST_REVIEWS),
        }

    def _generate_examples(self, rows):
        for key, (text, label) in enumerate(rows):
            yield key, {"text": text, "label": label}


class KtFailingDownload(tfds.core.GeneratorBasedBuilder):
    """A registered catalog-like dataset whose download fails (as without a network)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(num_classes=2)}
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        raise ConnectionError("Failed to resolve 'example.org'")

    def _generate_examples(self):
        yield from ()


def _tfds_examples(name, split, data_dir):
    """TFDS' own reading of a split (its stored order, decoded by TFDS): two arrays."""
    data = tfds.load(name, split=split, data_dir=data_dir, as_supervised=True, download=False)
    inputs, labels = zip(*tfds.as_numpy(data), strict=True)
    return np.stack(inputs), np.array(labels)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A TFDS data_dir with both datasets prepared (TFRecord shards, dataset_info.json).

    The builders are not registered: the datasets are found by name from their files, as
    in a process without the builders' code."""
    folder = str(tmp_path_factory.mktemp("tfds"))
    for builder in (KtTinyImages, KtTinyReviews):
        builder(data_dir=folder).download_and_prepare()
    return folder


def test_image_splits_give_the_batches_of_our_folder_reader(data_dir):
    train_ds, val_ds, class_names = kt.tfds_datasets(
        "kt_tiny_images", image_size=32, data_dir=data_dir, batch_size=4, download=False
    )
    assert class_names == ["dark", "bright"]  # the ClassLabel's names, in id order
    images, labels = (
        np.concatenate(part) for part in zip(*val_ds.as_numpy_iterator(), strict=True)
    )
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.float32
    stored, stored_labels = _tfds_examples("kt_tiny_images", "test", data_dir)
    np.testing.assert_array_equal(labels, np.eye(2)[stored_labels])
    expected = np.stack([tf.image.resize(centre_crop(x, (32, 32)), (32, 32)) for x in stored])
    np.testing.assert_allclose(images, expected, atol=1e-3)  # PNG is lossless
    orders = [
        np.concatenate([x[:, 0, 0, 0] for x, _ in train_ds.as_numpy_iterator()]) for _ in range(2)
    ]
    assert len(orders[0]) == 12 and not np.array_equal(*orders)  # reshuffled every epoch
    assert train_ds._kt_examples is not None  # feature caching remakes the pipeline

    sliced = kt.tfds_datasets(
        "kt_tiny_images",
        image_size=(24, 16),
        split=("train[:75%]", "train[75%:]"),
        data_dir=data_dir,
        download=False,
    )
    held_out = kt.tfds_datasets(
        "kt_tiny_images", image_size=16, split="train", validation_split=0.25, data_dir=data_dir
    )
    for train, val, _ in (sliced, held_out):
        assert [sum(len(y) for _, y in data) for data in (train, val)] == [9, 3]
    assert next(iter(sliced[0]))[0].shape[1:] == (24, 16, 3)
    val_labels = np.concatenate([y.argmax(1) for _, y in held_out[1].as_numpy_iterator()])
    assert sorted(val_labels.tolist()) in ([0, 1, 1], [0, 0, 1])  # stratified


def test_a_tfds_image_dataset_trains_through_fine_tune_with_cached_features(data_dir):
    train_ds, val_ds, _ = kt.tfds_datasets(
        "kt_tiny_images", image_size=32, data_dir=data_dir, batch_size=4, download=False
    )
    # The pipelines of `image_folder_datasets` (whose cached and uncached runs agree:
    # test_feature_cache), remade over the cached features.
    assert not train_ds._kt_examples.in_memory  # encoded images, decoded by the caching pass
    model = kt.build_image_classifier(
        "mobilenet",
        2,
        input_shape=(32, 32, 3),
        weights=None,
        augmentation=None,
        backbone_kwargs={"alpha": 0.25},
    )
    head = model.get_layer("predictions")
    before = [keras.ops.convert_to_numpy(w) for w in head.weights]
    history = kt.fine_tune(
        model,
        train_ds,
        val_ds,
        head_epochs=2,
        finetune_epochs=0,
        learning_rate=0.05,
        cache_features=True,
        verbose=0,
    )["head"].history
    assert len(history["loss"]) == len(history["val_loss"]) == 2
    after = [keras.ops.convert_to_numpy(w) for w in head.weights]
    assert not np.allclose(before[-1], after[-1])  # the bias learned


def test_a_tfds_image_dataset_is_kept_in_the_feature_store_by_its_examples(
    data_dir, tmp_path, capsys
):
    """The encoded images TFDS holds in memory key the store (they are not file paths)."""
    store = tmp_path / "store"

    def run(split):
        train_ds, _, _ = kt.tfds_datasets(
            "kt_tiny_images", image_size=32, split=split, data_dir=data_dir, batch_size=4
        )
        keras.utils.set_random_seed(3)  # the same weights every run
        model = kt.build_image_classifier(
            "mobilenet", 2, input_shape=(32, 32, 3), weights=None, augmentation=None,
            backbone_kwargs={"alpha": 0.25},
        )  # fmt: skip
        options = dict(head_epochs=1, finetune_epochs=0, verbose=2)
        kt.fine_tune(model, train_ds, None, feature_store=store, **options)
        return capsys.readouterr().out

    assert "Backbone features written to the feature store" in run("train")
    assert "Backbone features read from the feature store" in run("train")
    assert "Backbone features written to the feature store" in run("train[:8]")  # others
    assert len([entry for entry in store.iterdir() if not entry.name.startswith(".")]) == 2


def test_a_tfds_text_dataset_trains_on_cached_encoder_outputs(data_dir, tiny_bert_preset):
    train_ds, val_ds, class_names = kt.tfds_datasets("kt_tiny_reviews", data_dir=data_dir)
    assert class_names == ["neg", "pos"]
    texts, labels = next(iter(val_ds))  # the "test" split validates by default
    assert texts.dtype == tf.string and labels.dtype == tf.float32
    stored, stored_labels = _tfds_examples("kt_tiny_reviews", "test", data_dir)
    assert texts.numpy().tolist() == stored.tolist()
    assert sorted(t.decode() for t in stored) == sorted(text for text, _ in TEST_REVIEWS)
    np.testing.assert_array_equal(labels, np.eye(2)[stored_labels])
    # The pipelines are those of `text_csv_datasets` (whose cached and uncached runs agree:
    # test_feature_cache), remade over the cached encoder outputs.
    assert train_ds._kt_examples is not None and val_ds._kt_examples is not None
    model = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=16)
    before = [keras.ops.convert_to_numpy(w) for w in model.output_dense.weights]
    history = kt.fine_tune(
        model,
        train_ds,
        val_ds,
        head_epochs=2,
        finetune_epochs=0,
        learning_rate=1e-2,
        cache_features=True,
        verbose=0,
    )["head"].history
    assert len(history["loss"]) == len(history["val_loss"]) == 2
    after = [keras.ops.convert_to_numpy(w) for w in model.output_dense.weights]
    assert all(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


def test_names_that_are_not_prepared_fail_with_where_it_looked_and_what_to_do(
    tmp_path, data_dir, capsys
):
    empty = str(tmp_path / "empty")
    with pytest.raises(FileNotFoundError) as error:  # a catalog dataset, not prepared here
        kt.tfds_datasets("mnist", image_size=28, data_dir=empty, download=False)
    message = str(error.value)
    assert empty in message and "tfds build mnist --data_dir" in message
    assert "download=True" in message and not os.path.exists(empty)  # nothing was fetched
    with pytest.raises(RuntimeError) as error:  # download=True (the default), and it fails
        kt.tfds_datasets("kt_failing_download", data_dir=empty)
    message = str(error.value)
    assert empty in message and "ConnectionError: Failed to resolve" in message
    assert "downloading and preparing it" in capsys.readouterr().out
    assert "tfds build kt_failing_download --data_dir DIR" in message
    with pytest.raises(ValueError, match="not in the TFDS catalog.*not prepared in .*empty"):
        kt.tfds_datasets("kt_no_such_dataset", data_dir=empty, download=False)
    with pytest.raises(ValueError, match=r"Its splits: \['train', 'test'\]"):
        kt.tfds_datasets("kt_tiny_reviews", split="validation", data_dir=data_dir)
    for empty in ("train[3:1]", "train[:0]"):  # a reversed slice failed inside TensorFlow
        with pytest.raises(ValueError, match=r"cannot be read .*Its splits: \['train', 'test'\]"):
            kt.tfds_datasets("kt_tiny_reviews", split=empty, data_dir=data_dir)
    with pytest.raises(ValueError, match="holds text.*keras-transfer train text"):
        kt.tfds_datasets("kt_tiny_reviews", image_size=32, data_dir=data_dir)
    with pytest.raises(ValueError, match="`image_size` must be an int or"):  # before reading
        kt.tfds_datasets("kt_no_such_dataset", image_size="big", data_dir=empty)
    with pytest.raises(ValueError, match="do not also pass `validation_split`"):
        kt.tfds_datasets(
            "kt_tiny_reviews", split=("train", "test"), validation_split=0.5, data_dir=data_dir
        )


# The CLI only passes its arguments on: its runs are checked on one backend.
@pytest.mark.backends("tensorflow")
def test_cli_trains_on_tfds_images_prepared_on_disk(data_dir, tmp_path):
    from keras_transfer.cli.main import main

    out = tmp_path / "out"
    args = ["train", "image", "--data", "tfds:kt_tiny_images", "--tfds-data-dir", data_dir]
    args += ["--backbone", "mobilenet", "--weights", "none", "--image-size", "32"]
    args += ["--backbone-kwargs", '{"alpha": 0.25}', "--epochs", "1", "--finetune-epochs", "0"]
    args += ["--batch-size", "4", "--feature-cache", "on", "--output", str(out)]
    assert main(args) == 0
    assert json.loads((out / "class_names.json").read_text()) == ["dark", "bright"]
    assert json.loads((out / "report.json").read_text())["num_examples"] == 4  # "test"
    assert len(json.loads((out / "history.json").read_text())["head"]["loss"]) == 1


@pytest.mark.backends("tensorflow")
def test_cli_trains_on_tfds_text_and_names_missing_data(
    data_dir, tiny_bert_preset, tmp_path, capsys
):
    from keras_transfer.cli.main import main

    out = tmp_path / "out"
    args = ["train", "text", "--data", "tfds:kt_tiny_reviews", "--tfds-data-dir", data_dir]
    args += ["--tfds-split", "train[:6],train[6:]+test", "--preset", tiny_bert_preset]
    args += ["--sequence-length", "16", "--freeze", "backbone", "--feature-cache", "on"]
    args += ["--epochs", "2", "--batch-size", "4", "--output", str(out)]
    assert main(args) == 0
    assert json.loads((out / "class_names.json").read_text()) == ["neg", "pos"]
    assert json.loads((out / "report.json").read_text())["num_examples"] == 5
    assert len(json.loads((out / "history.json").read_text())["head"]["val_loss"]) == 2

    args[3:6] = ["tfds:kt_no_such_dataset", "--tfds-data-dir", str(tmp_path / "empty")]
    args[-1] = str(tmp_path / "out2")
    assert main(args) == 2  # a clean error, exit status 2
    assert "No TFDS dataset 'kt_no_such_dataset'" in capsys.readouterr().err
    args[3] = "tfds:kt_failing_download"  # in the catalog (registered here), not prepared
    assert main([*args, "--tfds-no-download"]) == 2
    assert "is not prepared in" in capsys.readouterr().err
