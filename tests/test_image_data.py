import os
import shutil
import warnings

import numpy as np
import PIL.Image
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


def test_images_kept_in_memory_are_the_ones_decoded_every_epoch(tmp_path):
    # cache=True keeps the images of the up-front check; cache=False decodes every epoch:
    # the same pixels, batches and reshuffling either way.
    write_image_folder(tmp_path / "train", per_class=5, fmt="JPEG")
    write_image_folder(tmp_path / "val", per_class=2, fmt="JPEG")
    for root, split in ((tmp_path, None), (tmp_path / "train", 0.4)):
        kept, read = (
            kt.image_folder_datasets(
                root, image_size=(20, 24), batch_size=3, validation_split=split, cache=cache
            )[:2]
            for cache in (True, False)
        )
        for kept_ds, read_ds in zip(kept, read, strict=True):
            for _ in range(2):  # two epochs: the reshuffled order too
                pairs = zip(kept_ds.as_numpy_iterator(), read_ds.as_numpy_iterator(), strict=True)
                for (x_kept, y_kept), (x_read, y_read) in pairs:
                    assert x_kept.dtype == "float32" and x_kept.shape[1:] == (20, 24, 3)
                    np.testing.assert_array_equal(x_kept, x_read)
                    np.testing.assert_array_equal(y_kept, y_read)


def test_single_folder_split(tmp_path):
    write_image_folder(tmp_path, per_class=10)
    train_ds, val_ds, _ = kt.image_folder_datasets(tmp_path, image_size=8, validation_split=0.2)
    assert _count(train_ds) == 16 and _count(val_ds) == 4


def test_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        kt.image_folder_datasets(tmp_path / "nowhere", image_size=8)
    (tmp_path / "photo.jpg").write_bytes(b"not a folder")
    with pytest.raises(NotADirectoryError, match="photo.jpg' is a file, not a folder"):
        kt.image_folder_datasets(tmp_path / "photo.jpg", image_size=8)
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
    with pytest.raises(ValueError, match="must be a float in"):
        kt.image_folder_datasets(tmp_path / "two" / "train", image_size=8, validation_split="0.2")
    for seed in ("1", 1.5, True, -1, 2**32):
        with pytest.raises(ValueError, match="`seed` must be an int in"):
            kt.image_folder_datasets(tmp_path / "two" / "train", image_size=8, seed=seed)
    write_image_folder(tmp_path / "few", per_class=1, classes=("a", "b"))
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no class has 2 or more"):
        kt.image_folder_datasets(tmp_path / "few", image_size=8, validation_split=0.5)


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


def test_undecodable_and_unsupported_files_are_skipped_with_their_names(tmp_path):
    write_image_folder(tmp_path / "train", per_class=3, fmt="JPEG")
    good = next((tmp_path / "train" / "cats").iterdir()).read_bytes()
    (tmp_path / "train" / "cats" / "empty.jpg").write_bytes(b"")
    (tmp_path / "train" / "dogs" / "notes.jpg").write_text("not an image")
    (tmp_path / "train" / "dogs" / "cut.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "train" / "dogs" / "scan.tiff").write_bytes(good)
    (tmp_path / "train" / "dogs" / ".DS_Store").write_bytes(b"\0")  # hidden: not counted
    with pytest.warns(UserWarning, match="Skipped 4 of 10 file") as record:
        train_ds, _, _ = kt.image_folder_datasets(tmp_path, image_size=16, batch_size=2)
    message = str(record[0].message)
    for name in ("cats/empty.jpg", "dogs/notes.jpg", "dogs/cut.jpg", "dogs/scan.tiff"):
        assert name in message
    assert "Input is empty" in message and "unsupported format" in message
    (tmp_path / "train" / "dogs" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "train" / "cats" / "loop").symlink_to(tmp_path / "train" / "cats")
    with pytest.warns(UserWarning, match="Skipped 5 of 11") as record:  # the loop adds nothing
        kt.image_folder_datasets(tmp_path, image_size=16, batch_size=2)
    # The reason, not the start of TF's message (which repeats the full path).
    assert "dogs/gone.png (No such file or directory)" in str(record[0].message)
    assert _count(train_ds) == 6  # the good ones, and training would run on them
    # Decoded file by file after a failure, the kept images are still the good files', in
    # order: the same batches as decoding them every epoch.
    with pytest.warns(UserWarning, match="Skipped 5 of 11"):
        kept_ds, read_ds = (
            kt.image_folder_datasets(tmp_path, image_size=16, batch_size=2, cache=cache)[0]
            for cache in (True, False)
        )
    pairs = zip(kept_ds.as_numpy_iterator(), read_ds.as_numpy_iterator(), strict=True)
    for (x_kept, y_kept), (x_read, y_read) in pairs:
        np.testing.assert_array_equal(x_kept, x_read)
        np.testing.assert_array_equal(y_kept, y_read)
    for name in ("empty.jpg", "notes.jpg", "cut.jpg"):
        (tmp_path / "val" / "cats").mkdir(parents=True, exist_ok=True)
        (tmp_path / "val" / "dogs").mkdir(parents=True, exist_ok=True)
        (tmp_path / "val" / "dogs" / name).write_bytes(b"")
    (tmp_path / "val" / "cats" / "ok.jpg").write_bytes(good)
    with pytest.warns(UserWarning, match="Skipped 3 of 4"):
        with pytest.raises(ValueError, match="dogs.*no usable images"):
            kt.image_folder_datasets(tmp_path, image_size=16)


def test_odd_but_decodable_images_are_converted_and_used(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype="uint8"))
    gray16 = (rng.integers(0, 65536, (30, 40))).astype("uint16")
    folder = tmp_path / "train" / "chats_été"  # non-ASCII class and file names
    (folder / "nested" / "deeper").mkdir(parents=True)
    files = {
        "gray.png": rgb.convert("L"),
        "rgba.png": rgb.convert("RGBA"),
        "palette.gif": rgb.convert("P"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "nested/deeper/photo_ü.jpg": rgb,
        "deep16.png": Image.fromarray(gray16),
    }
    for name, image in files.items():
        image.save(folder / name)
    big = Image.new("RGB", (8000, 8000), (200, 30, 60))
    big.save(tmp_path / "big.jpg", quality=50)
    write_image_folder(tmp_path / "train", classes=("dogs",), per_class=2)
    (tmp_path / "train" / "dogs" / "big.jpg").write_bytes((tmp_path / "big.jpg").read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is skipped
        train_ds, _, names = kt.image_folder_datasets(tmp_path, image_size=(30, 40), cache=False)
    assert names == ["chats_été", "dogs"]
    pairs = list(train_ds.unbatch().as_numpy_iterator())
    images = [x for x, _ in pairs]
    assert len(images) == len(files) + 3
    assert all(image.shape == (30, 40, 3) for image in images)
    # Each file's pixels are those of PIL's RGB conversion (JPEG decoders differ a little).
    by_content = sorted(float(image.mean()) for image, y in pairs if y[0] == 1)
    expected = []
    for name in files:
        with Image.open(folder / name) as image:
            pixels = np.asarray(image.convert("RGB") if image.mode != "I;16" else image)
            if pixels.dtype == np.uint16:
                pixels = pixels // 257
            expected.append(float(pixels.mean()))
    np.testing.assert_allclose(by_content, sorted(expected), atol=2.0)
    big_image = [image for image in images if image.std((0, 1)).max() < 3]
    assert len(big_image) == 1
    np.testing.assert_allclose(big_image[0].mean((0, 1)), (200, 30, 60), atol=4)


def test_empty_class_folder_and_val_missing_a_class(tmp_path):
    write_image_folder(tmp_path / "a" / "train")
    (tmp_path / "a" / "train" / "birds").mkdir()
    with pytest.raises(ValueError, match="birds.*hold no usable images"):
        kt.image_folder_datasets(tmp_path / "a", image_size=16)
    write_image_folder(tmp_path / "b" / "train")
    write_image_folder(tmp_path / "b" / "val", classes=("cats",))
    with pytest.raises(ValueError, match="no folder for the training class.*dogs"):
        kt.image_folder_datasets(tmp_path / "b", image_size=16)


def test_evaluation_dataset_reads_one_folder_as_it_is(tmp_path):
    from keras_transfer.data.image_data import evaluation_dataset

    classes = ("bus", "car", "train")  # a class named like a split folder
    write_image_folder(tmp_path / "val", classes=classes, per_class=2)
    dataset = evaluation_dataset(tmp_path / "val", image_size=8, class_names=classes, batch_size=4)
    labels = np.concatenate([y for _, y in dataset.as_numpy_iterator()]).argmax(-1)
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2])  # file order, model's labels
    images = next(iter(dataset))[0]
    assert images.shape == (4, 8, 8, 3) and images.dtype == "float32"
    with pytest.raises(ValueError, match="no folder for the training class.*'plane'"):
        evaluation_dataset(tmp_path / "val", image_size=8, class_names=(*classes, "plane"))
    with pytest.raises(ValueError, match="class folders that the training data does not.*train"):
        evaluation_dataset(tmp_path / "val", image_size=8, class_names=("bus", "car"))
    with pytest.raises(FileNotFoundError, match="missing"):
        evaluation_dataset(tmp_path / "missing", image_size=8, class_names=classes)
    (tmp_path / "val.zip").write_bytes(b"PK")
    with pytest.raises(NotADirectoryError, match="is a file"):
        evaluation_dataset(tmp_path / "val.zip", image_size=8, class_names=classes)


def test_file_and_folder_names_that_are_not_utf8_are_read(tmp_path):
    # Latin-1 "é" (byte 0xe9) is not UTF-8: Python keeps it as the surrogate "\udce9".
    root = tmp_path / "donn\udce9es"
    try:
        root.mkdir()
    except (OSError, UnicodeError):
        pytest.skip("this file system takes only UTF-8 file names")
    write_image_folder(root / "train", per_class=2)
    write_image_folder(root / "val", per_class=1)
    (root / "train" / "dogs" / "caf\udce9.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="Skipped 1 of 5 file") as record:
        kt.image_folder_datasets(root, image_size=16)
    assert r"dogs/caf\xe9.png (" in str(record[0].message)  # named, as printable text
    bright = np.full((16, 16, 3), 250, "uint8")
    PIL.Image.fromarray(bright).save(root / "train" / "dogs" / "caf\udce9.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped
        kept, read = (
            kt.image_folder_datasets(root, image_size=16, batch_size=5, cache=cache)
            for cache in (True, False)
        )
    assert kept[2] == ["cats", "dogs"]
    assert _count(kt.image_folder_datasets(os.fsencode(root), image_size=16)[0]) == 5  # bytes
    for kept_ds, read_ds, count in zip(kept[:2], read[:2], (5, 2), strict=True):
        pairs = zip(kept_ds.as_numpy_iterator(), read_ds.as_numpy_iterator(), strict=True)
        images = []
        for (x_kept, y_kept), (x_read, y_read) in pairs:
            np.testing.assert_array_equal(x_kept, x_read)
            np.testing.assert_array_equal(y_kept, y_read)
            images.append(x_kept)
        assert len(np.concatenate(images)) == count
    images = np.concatenate([x for x, _ in kept[0].as_numpy_iterator()])
    assert (images == 250).all(axis=(1, 2, 3)).sum() == 1  # the bright dog, once
    # A broken link so named: TF's error message holds the name's bytes, which are not text.
    (root / "train" / "cats" / "lien\udce9.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.warns(UserWarning, match="Skipped 1 of 6 file") as record:
        kt.image_folder_datasets(root, image_size=16)
    assert r"cats/lien\xe9.png (No such file or directory)" in str(record[0].message)
    assert r"donn\xe9es" in str(record[0].message)  # the folder as printable text too
    shutil.rmtree(root / "val" / "dogs")
    with pytest.raises(ValueError, match=r"add .*donn\\xe9es/val/<class>/"):
        kt.image_folder_datasets(root, image_size=16)
    (root / "val" / "d\udce9").mkdir()
    with pytest.raises(ValueError, match=r"class folders whose names are not text: d\\xe9"):
        kt.image_folder_datasets(root, image_size=16)


def test_cache_auto_keeps_images_in_memory_only_within_the_budget(tmp_path):
    write_image_folder(tmp_path / "train", per_class=4, fmt="JPEG")
    write_image_folder(tmp_path / "val", per_class=2, fmt="JPEG")
    one_image = 12 * 10 * 3  # uint8 bytes
    made = {
        cache: kt.image_folder_datasets(tmp_path, image_size=(12, 10), batch_size=3, cache=cache)
        for cache in ("auto", 12 * one_image, 12 * one_image - 1, True, False)
    }
    in_memory = [data[0]._kt_examples.in_memory for data in made.values()]
    # 12 images: within 1 GiB and within 12 images' bytes; one byte less streams them.
    assert in_memory == [True, True, False, True, False]
    # In memory or streamed: the same batches, epoch after epoch.
    for kept, streamed in (("auto", False), (True, 12 * one_image - 1)):
        for _ in range(2):
            pairs = zip(
                made[kept][0].as_numpy_iterator(),
                made[streamed][0].as_numpy_iterator(),
                strict=True,
            )
            for (x, y), (x_streamed, y_streamed) in pairs:
                assert x.dtype == "float32" and (x == np.round(x)).all()  # whole grey levels
                np.testing.assert_array_equal(x, x_streamed)
                np.testing.assert_array_equal(y, y_streamed)
    for bad in ("yes", -1, 1.5, None):
        with pytest.raises(ValueError, match="`cache` must be 'auto', True, False or a budget"):
            kt.image_folder_datasets(tmp_path, image_size=8, cache=bad)


def test_streamed_files_are_decoded_per_epoch_and_not_up_front(tmp_path):
    write_image_folder(tmp_path, per_class=3)
    # Starts and ends as a JPEG does: not decoded while listing, so only a pipeline that
    # decodes it finds that it is damaged.
    damaged = tmp_path / "dogs" / "damaged.jpg"
    damaged.write_bytes(b"\xff\xd8\xff\xe0" + b"not image data " * 40 + b"\xff\xd9")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped up front
        streamed_ds = kt.image_folder_datasets(tmp_path, image_size=8, cache=False)[0]
    with pytest.raises(tf_errors().InvalidArgumentError):
        list(streamed_ds)
    with pytest.warns(UserWarning, match="(?s)Skipped 1 of 7 file.*dogs/damaged.jpg"):
        kept_ds = kt.image_folder_datasets(tmp_path, image_size=8, cache=True)[0]
    assert _count(kept_ds) == 6
    # Streamed, every epoch reads the files as they are then; kept, as they were.
    damaged.unlink()
    streamed_ds = kt.image_folder_datasets(tmp_path, image_size=8, cache=False)[0]
    kept_ds = kt.image_folder_datasets(tmp_path, image_size=8, cache=True)[0]
    before = {
        ds: np.concatenate([x for x, _ in ds.as_numpy_iterator()]) for ds in (streamed_ds, kept_ds)
    }
    for path in (tmp_path / "cats").iterdir():
        PIL.Image.new("RGB", (48, 40), (255, 255, 255)).save(path, "PNG")
    after = {
        ds: np.concatenate([x for x, _ in ds.as_numpy_iterator()]) for ds in (streamed_ds, kept_ds)
    }
    assert (after[streamed_ds] == 255).all(axis=(1, 2, 3)).sum() == 3
    assert (before[streamed_ds] == 255).all(axis=(1, 2, 3)).sum() == 0
    np.testing.assert_array_equal(np.sort(after[kept_ds], 0), np.sort(before[kept_ds], 0))


def tf_errors():
    import tensorflow as tf

    return tf.errors


def test_images_are_centre_cropped_to_the_aspect_ratio_not_squashed(tmp_path):
    # A wide image: a white square between two black bands, each half the square's width.
    pixels = np.zeros((40, 80, 3), dtype="uint8")
    pixels[:, 20:60] = 255
    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            PIL.Image.fromarray(pixels).save(tmp_path / split / name / "wide.png")
    dataset, _, _ = kt.image_folder_datasets(tmp_path, image_size=20)
    images = np.concatenate([x for x, _ in dataset.as_numpy_iterator()])
    assert images.shape == (2, 20, 20, 3)
    np.testing.assert_array_equal(images, 255)  # the bands are cropped off
    wide, _, _ = kt.image_folder_datasets(tmp_path, image_size=(10, 40))
    image = next(wide.as_numpy_iterator())[0][
        0
    ]  # wider than the image: all its width, its middle rows
    assert image[:, :8].max() == 0 and image[:, 12:28].min() == 255 and image[:, -8:].max() == 0
