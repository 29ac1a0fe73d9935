import numpy as np
import pytest
from conftest import write_image_folder

import keras_transfer as kt


def _count(dataset):
    return sum(int(images.shape[0]) for images, _ in dataset)


def test_train_val_folders(tmp_path):
    write_image_folder(tmp_path / "train", per_class=5)
    write_image_folder(tmp_path / "val", per_class=2, fmt="JPEG")
    train_ds, val_ds, class_names = kt.image_folder_datasets(tmp_path, image_size=24, batch_size=4)
    assert class_names == ["cats", "dogs"]
    images, labels = next(iter(train_ds))
    assert images.shape == (4, 24, 24, 3) and images.dtype.name == "float32"
    assert labels.shape == (4, 2)
    np.testing.assert_array_equal(labels.numpy().sum(-1), 1)
    assert 0 <= float(images.numpy().min()) and float(images.numpy().max()) <= 255
    assert _count(train_ds) == 10 and _count(val_ds) == 4
    # The validation images are in file order: class 0 first; labels follow the folders.
    val_labels = np.concatenate([y.numpy().argmax(-1) for _, y in val_ds])
    assert val_labels.tolist() == [0, 0, 1, 1]
    val_images = np.concatenate([x.numpy() for x, _ in val_ds])
    assert val_images[:2].mean() < val_images[2:].mean()  # dark cats, bright dogs


def test_validation_folder_may_be_called_validation(tmp_path):
    write_image_folder(tmp_path / "train", per_class=3)
    write_image_folder(tmp_path / "validation", per_class=1)
    _, val_ds, _ = kt.image_folder_datasets(tmp_path, image_size=(20, 30))
    images, _ = next(iter(val_ds))
    assert images.shape[1:] == (20, 30, 3)


def test_training_data_is_reshuffled_every_epoch(tmp_path):
    write_image_folder(tmp_path, per_class=16)
    train_ds, val_ds, _ = kt.image_folder_datasets(tmp_path, image_size=8, batch_size=32)
    assert val_ds is None
    first = np.concatenate([y.numpy().argmax(-1) for _, y in train_ds])
    second = np.concatenate([y.numpy().argmax(-1) for _, y in train_ds])
    assert sorted(first) == sorted(second) and first.tolist() != second.tolist()


def test_single_folder_split(tmp_path):
    write_image_folder(tmp_path, per_class=10)
    train_ds, val_ds, _ = kt.image_folder_datasets(tmp_path, image_size=8, validation_split=0.2)
    assert _count(train_ds) == 16 and _count(val_ds) == 4


def test_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        kt.image_folder_datasets(tmp_path / "nowhere", image_size=8)
    write_image_folder(tmp_path / "one", classes=("only",))
    with pytest.raises(ValueError, match="at least 2"):
        kt.image_folder_datasets(tmp_path / "one", image_size=8)
    write_image_folder(tmp_path / "two" / "train")
    write_image_folder(tmp_path / "two" / "val", classes=("cats", "birds"))
    with pytest.raises(ValueError, match="birds"):
        kt.image_folder_datasets(tmp_path / "two", image_size=8)
    with pytest.raises(ValueError, match="validation_split"):
        kt.image_folder_datasets(tmp_path / "two", image_size=8, validation_split=0.1)
    with pytest.raises(ValueError, match="image_size"):
        kt.image_folder_datasets(tmp_path / "two", image_size=(0, 3))


def test_feeds_fit_on_this_backend(tmp_path):
    write_image_folder(tmp_path / "train", per_class=4)
    write_image_folder(tmp_path / "val", per_class=2)
    train_ds, val_ds, names = kt.image_folder_datasets(tmp_path, image_size=32, batch_size=4)
    model = kt.build_image_classifier(
        "mobilenet",
        len(names),
        input_shape=(32, 32, 3),
        weights=None,
        backbone_kwargs={"alpha": 0.25},
    )
    histories = kt.fine_tune(
        model, train_ds, val_ds, head_epochs=1, finetune_epochs=1, unfreeze_top_n=3, verbose=0
    )
    assert set(histories) == {"head", "finetune"}
    assert len(histories["head"].history["val_accuracy"]) == 1
    assert histories["finetune"].epoch == [1]
    report = kt.evaluate_classifier(model, val_ds, names)
    assert report.num_examples == 4


def test_undecodable_files_are_named_before_training(tmp_path):
    write_image_folder(tmp_path / "train", per_class=3, fmt="JPEG")
    good = next((tmp_path / "train" / "cats").iterdir()).read_bytes()
    (tmp_path / "train" / "cats" / "empty.jpg").write_bytes(b"")
    (tmp_path / "train" / "dogs" / "notes.jpg").write_text("not an image")
    (tmp_path / "train" / "dogs" / "cut.jpg").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="3 file\\(s\\)") as info:
        kt.image_folder_datasets(tmp_path, image_size=16)
    for name in ("empty.jpg", "notes.jpg", "cut.jpg"):
        assert name in str(info.value)


def test_empty_class_folder_and_val_missing_a_class(tmp_path):
    write_image_folder(tmp_path / "a" / "train")
    (tmp_path / "a" / "train" / "birds").mkdir()
    with pytest.raises(ValueError, match="birds.*hold no images"):
        kt.image_folder_datasets(tmp_path / "a", image_size=16)
    write_image_folder(tmp_path / "b" / "train")
    write_image_folder(tmp_path / "b" / "val", classes=("cats",))
    with pytest.raises(ValueError, match="no folder for the training class.*dogs"):
        kt.image_folder_datasets(tmp_path / "b", image_size=16)
