"""Scale benchmark: memory and time of `image_folder_datasets` + `fine_tune` as the number of
images grows.

    python benchmarks/scale.py                          # N = 2,000, 20,000, 50,000
    python benchmarks/scale.py --sizes 2000 --workdir /tmp/scale

For each N, a folder of N real-looking JPEGs is written into a temporary folder (never the
repository): random crops (30-100 % of each side) of the hymenoptera photos in ../shared,
resized so the longer side is 440-560 px and re-encoded at JPEG quality 88-94 (about 40 KB
each), 90 % in `train/<class>/` and 10 % in `val/<class>/` (ants and bees). Then one fresh
process per N measures, with the defaults of keras-transfer: `image_folder_datasets(folder,
image_size=224)` and `fine_tune(MobileNet alpha=0.25 224 ImageNet, frozen, head_epochs=3,
finetune_epochs=0)`:

- read s: `image_folder_datasets` alone; total s: it and `fine_tune` (model building left
  out); img/s: N / total s;
- val acc: the head's last validation accuracy (`keras.utils.set_random_seed(1)` first);
- RSS after read and peak RSS: the process's resident memory after reading
  (/proc/self/status VmRSS) and its peak over the whole run (`resource.getrusage`
  ru_maxrss), in GB (10^9 bytes); `cache`: whether the images were kept in memory.

With `--store-and-floor`, three more runs per N, each in a fresh process: the same
`fine_tune` with `feature_store=` a new folder (cold: the backbone runs and the features
are written), then again on the same folder (warm: read back; model building left out of
both), and the floor with reading: one pass of `keras.utils.image_dataset_from_directory`
(224x224, batches of 32) over train/ and val/ through the frozen backbone's forward pass
(`predict`, the model's own preprocessing inside), nothing else.

Prints Markdown tables. Set KERAS_HOME to a folder seeded with the ImageNet weights
(../shared/tools/seed-keras-home) on a machine without internet.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("KERAS_TRANSFER_SHARED", os.path.join(HERE, "..", "..", "shared"))
PHOTOS = os.path.join(SHARED, "data", "hymenoptera")
CLASSES = ("ants", "bees")
VAL_FRACTION = 0.1
HEAD_EPOCHS = 3
SEED = 1


def _photos(name):
    from PIL import Image

    photos = []
    for split in ("train", "val"):
        folder = os.path.join(PHOTOS, split, name)
        for file in sorted(os.listdir(folder)):
            try:
                with Image.open(os.path.join(folder, file)) as image:
                    photos.append(image.convert("RGB"))
            except OSError:  # the GIF placeholder, anything else unreadable
                continue
    return photos


def write_folder(root, count, seed=0):
    """Write `count` JPEGs (see the module docstring) below `root`; skip if already there."""
    import numpy as np

    done = os.path.join(root, "done")
    if os.path.exists(done):
        return
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        photos = _photos(name)
        per_class = count // len(CLASSES) + (name == CLASSES[0]) * (count % len(CLASSES))
        num_val = int(VAL_FRACTION * per_class)
        for split, number in (("train", per_class - num_val), ("val", num_val)):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(number):
                photo = photos[rng.integers(len(photos))]
                width, height = photo.size
                crop_w, crop_h = (int(side * rng.uniform(0.3, 1.0)) for side in (width, height))
                left, top = rng.integers(width - crop_w + 1), rng.integers(height - crop_h + 1)
                crop = photo.crop((left, top, left + crop_w, top + crop_h))
                scale = rng.uniform(440, 560) / max(crop.size)
                crop = crop.resize((max(1, int(crop_w * scale)), max(1, int(crop_h * scale))))
                quality = int(rng.integers(88, 95))
                crop.save(os.path.join(folder, f"{name}_{i:06d}.jpg"), quality=quality)
    open(done, "w").close()


def _rss_gb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def measure(root, store=None):
    """One run in this process (with `store`: `fine_tune(feature_store=store)`): see the
    module docstring. Returns a dict."""
    import keras

    import keras_transfer as kt

    keras.utils.set_random_seed(SEED)  # the head's initialisation (shuffling: the default seed)
    start = time.perf_counter()
    train, val, names = kt.image_folder_datasets(root, image_size=224)
    read = time.perf_counter() - start
    rss_read = _rss_gb()
    build_start = time.perf_counter()
    model = kt.build_image_classifier("mobilenet", len(names), backbone_kwargs={"alpha": 0.25})
    build = time.perf_counter() - build_start
    histories = kt.fine_tune(
        model,
        train,
        val,
        head_epochs=HEAD_EPOCHS,
        finetune_epochs=0,
        feature_store=store,
        verbose=0,
    )
    total = time.perf_counter() - start - build
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB on Linux
    return dict(
        read_s=read,
        total_s=total,
        rss_read_gb=rss_read,
        peak_gb=peak,
        in_memory=bool(train._kt_examples.in_memory),
        val_accuracy=histories["head"].history["val_accuracy"][-1],
    )


def floor(root):
    """The floor with reading (see the module docstring). Returns a dict with `total_s`."""
    import keras

    backbone = keras.applications.MobileNet(
        input_shape=(224, 224, 3), alpha=0.25, include_top=False, weights="imagenet"
    )
    inputs = keras.Input((224, 224, 3))
    outputs = backbone(keras.applications.mobilenet.preprocess_input(inputs), training=False)
    model = keras.Model(inputs, outputs)
    start = time.perf_counter()
    count = 0
    for split in ("train", "val"):
        data = keras.utils.image_dataset_from_directory(
            os.path.join(root, split), image_size=(224, 224), batch_size=32, shuffle=False
        )
        count += len(model.predict(data.map(lambda x, y: x), verbose=0))
    return dict(total_s=time.perf_counter() - start, images=count)


def _child(*args):
    output = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,20000,50000", help="comma-separated N")
    parser.add_argument("--workdir", help="where the JPEG folders go (default: a temp folder)")
    parser.add_argument(
        "--store-and-floor",
        action="store_true",
        help="also time a cold and a warm feature store run and the floor with reading",
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # one run, in a child process
    parser.add_argument("--store", help=argparse.SUPPRESS)  # with --measure
    parser.add_argument("--floor", help=argparse.SUPPRESS)  # one floor run
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.store)))
        return
    if args.floor:
        print(json.dumps(floor(args.floor)))
        return
    workdir = args.workdir or tempfile.mkdtemp(prefix="kt_scale_")
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    rows = []
    for count in (int(size) for size in args.sizes.split(",")):
        root = os.path.join(workdir, f"n{count}")
        write_start = time.perf_counter()
        write_folder(root, count)
        print(f"{count} images in {root} ({time.perf_counter() - write_start:.0f} s)", flush=True)
        result = _child("--measure", root)
        print(json.dumps(result), flush=True)
        if args.store_and_floor:
            store = tempfile.mkdtemp(prefix="kt_store_", dir=workdir)
            result["cold"] = _child("--measure", root, "--store", store)
            result["warm"] = _child("--measure", root, "--store", store)
            result["floor"] = _child("--floor", root)
            print(json.dumps(result), flush=True)
        rows.append((count, result))
    print(f"\nbackend {backend}, MobileNet alpha=0.25 224 frozen, {HEAD_EPOCHS} head epochs\n")
    columns = "images | kept in memory | read s | total s | img/s | RSS after read | peak RSS"
    print(f"| {columns} | val acc |")
    print("|---|---|---|---|---|---|---|---|")
    for count, r in rows:
        print(
            f"| {count:,} | {'yes' if r['in_memory'] else 'no (streamed)'} | {r['read_s']:.1f} "
            f"| {r['total_s']:.1f} | {count / r['total_s']:.0f} | {r['rss_read_gb']:.2f} GB "
            f"| {r['peak_gb']:.2f} GB | {r['val_accuracy']:.3f} |"
        )

    if args.store_and_floor:
        print(
            "\n| images | floor s | default total s | / floor | store cold s | store warm s "
            "| cold / warm | val acc cold / warm |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for count, r in rows:
            cold, warm, low = r["cold"], r["warm"], r["floor"]
            print(
                f"| {count:,} | {low['total_s']:.1f} | {r['total_s']:.1f} "
                f"| {r['total_s'] / low['total_s']:.2f}x | {cold['total_s']:.1f} "
                f"| {warm['total_s']:.1f} | {cold['total_s'] / warm['total_s']:.1f}x "
                f"| {cold['val_accuracy']:.3f} / {warm['val_accuracy']:.3f} |"
            )


if __name__ == "__main__":
    main()
