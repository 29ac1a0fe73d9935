"""Benchmark: `fine_tune` with a cold and a warm feature store, on hymenoptera.

    python benchmarks/feature_store.py                    # 3 rounds, tensorflow
    KERAS_BACKEND=jax python benchmarks/feature_store.py --rounds 1

Each round, in a new empty store folder, runs three processes one after another (each a new
interpreter, so no run warms another's caches or compiled functions): `none` (no store),
`cold` (an empty store: the backbone runs and its features are written), `warm` (the store
of `cold`: no decoding in `fine_tune`, no backbone pass). Every process reads
`../shared/data/hymenoptera` with `image_folder_datasets(image_size=224, seed=1)`, builds
MobileNet alpha=0.25 224 with ImageNet weights (`KERAS_HOME` seeded from
`../shared/weights/keras`, e.g. by `../shared/tools/seed-keras-home`), no augmentation,
seed 1, and times `fine_tune(head_epochs=10, finetune_epochs=0, learning_rate=1e-3)`
(SGD momentum 0.9; model building and reading excluded, reading timed apart). The table
gives medians over the rounds, and the validation accuracies of every run (the same for the
same seed, with or without the store).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

PROJECT = pathlib.Path(__file__).resolve().parents[1]
DATA = PROJECT.parent / "shared" / "data" / "hymenoptera"


def one_run(store):
    """One process: read, build, `fine_tune`; prints a JSON line of times and accuracy."""
    import keras

    import keras_transfer as kt

    keras.utils.set_random_seed(1)
    start = time.perf_counter()
    train_ds, val_ds, class_names = kt.image_folder_datasets(DATA, image_size=224, seed=1)
    read = time.perf_counter() - start
    model = kt.build_image_classifier(
        "mobilenet",
        len(class_names),
        input_shape=(224, 224, 3),
        weights="imagenet",
        augmentation=None,
        backbone_kwargs={"alpha": 0.25},
    )
    model.compile(
        optimizer=keras.optimizers.SGD(1e-3, momentum=0.9),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    history = kt.fine_tune(
        model,
        train_ds,
        val_ds,
        head_epochs=10,
        finetune_epochs=0,
        feature_store=store,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    accuracy = history["head"].history["val_accuracy"][-1]
    print(json.dumps({"read": read, "fine_tune": seconds, "val_accuracy": accuracy}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", metavar="STORE", help=argparse.SUPPRESS)  # none: no store
    args = parser.parse_args()
    if args.one is not None:
        return one_run(None if args.one == "none" else args.one)
    results = {"none": [], "cold": [], "warm": []}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as store:
            for way in results:
                argv = [sys.executable, __file__, "--one", "none" if way == "none" else store]
                output = subprocess.run(argv, capture_output=True, text=True, check=True)
                results[way].append(json.loads(output.stdout.strip().splitlines()[-1]))
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    print(f"| way | backend | fine_tune (median of {args.rounds}) | reading | val accuracy |")
    print("|---|---|---|---|---|")
    for way, runs in results.items():
        seconds = statistics.median(run["fine_tune"] for run in runs)
        read = statistics.median(run["read"] for run in runs)
        accuracies = ", ".join(f"{run['val_accuracy']:.3f}" for run in runs)
        print(f"| {way} | {backend} | {seconds:.2f} s | {read:.2f} s | {accuracies} |")
    return None


if __name__ == "__main__":
    sys.exit(main())
