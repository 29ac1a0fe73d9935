"""Exported formats side by side: accuracy, agreement with Keras, file size, batch-1 latency.

    KERAS_BACKEND=tensorflow python benchmarks/export_formats.py [--epochs 10] [--calls 100]

Trains the README's image model (hymenoptera, MobileNet alpha=0.25 ImageNet 224, frozen
backbone, no augmentation, `fine_tune(head_epochs=EPOCHS)`), then exports it as a SavedModel,
ONNX, LiteRT float32, LiteRT dynamic-range and LiteRT int8 (calibrated on 300 training
images, or all when fewer), and scores each on the val images in its own runtime:
accuracy, top-1 agreement with Keras, max |probability difference|, file size, and the
median latency of `--calls` calls at batch 1 (after 5 warm-up calls) on this CPU. Prints
one Markdown table. Nothing is written outside a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import keras_transfer as kt  # noqa: E402
from keras_transfer.export import formats as export_formats  # noqa: E402
from keras_transfer.export import runtimes  # noqa: E402

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
DATA = os.path.join(SHARED, "data", "hymenoptera")
WEIGHTS = os.path.join(SHARED, "weights", "keras", "mobilenet_2_5_224_tf_no_top.h5")


def _arrays(dataset):
    images, labels = zip(*[(np.asarray(x), np.asarray(y)) for x, y in dataset], strict=True)
    return np.concatenate(images), np.concatenate(labels).argmax(-1)


def median_ms(predict, inputs, calls, warmup=5):
    """Median milliseconds of `calls` calls of `predict(inputs)`, after `warmup` calls."""
    for _ in range(warmup):
        predict(inputs)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        predict(inputs)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def file_size(path):
    """Bytes of a file, or of every file under a folder."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    import tensorflow as tf

    train, val, names = kt.image_folder_datasets(DATA, image_size=224)
    model = kt.build_image_classifier(
        "mobilenet",
        len(names),
        weights=WEIGHTS,
        augmentation=None,
        backbone_kwargs={"alpha": 0.25},
    )
    kt.fine_tune(model, train, val, head_epochs=args.epochs, finetune_epochs=0)
    val_images, val_labels = _arrays(val)
    train_images, _ = _arrays(train)
    keras_probs = model.predict(val_images, verbose=0)
    rows = [("Keras `model(x)`, eager", keras_probs, None, lambda x: model(x, training=False))]
    with tempfile.TemporaryDirectory() as tmp:
        folder = kt.export_saved_model(model, os.path.join(tmp, "sm"), class_names=names)
        serve = tf.saved_model.load(folder).signatures["serving_pixels"]
        rows.append(
            (
                "SavedModel (serving_pixels)",
                serve(pixels=tf.constant(val_images))["probabilities"].numpy(),
                folder,
                lambda x: serve(pixels=tf.constant(x)),
            )
        )
        folder = kt.export_onnx(model, os.path.join(tmp, "onnx"), class_names=names)
        onnx_file = os.path.join(folder, "model.onnx")
        import onnxruntime

        ort_session = onnxruntime.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
        rows.append(
            (
                "ONNX Runtime",
                runtimes.onnx_probabilities(onnx_file, val_images),
                onnx_file,
                lambda x: ort_session.run(None, {"image": x}),
            )
        )
        calibration = train_images[np.random.default_rng(0).permutation(len(train_images))]
        for quantization in (None, "dynamic", "int8"):
            folder = export_formats.export_litert(
                model,
                os.path.join(tmp, f"litert-{quantization}"),
                quantization=quantization,
                representative_data=calibration[:300],
                class_names=names,
            )
            litert_file = os.path.join(folder, "model.tflite")
            interpreter = runtimes.litert_interpreter(litert_file)
            interpreter.allocate_tensors()
            source = interpreter.get_input_details()[0]

            def invoke(x, interpreter=interpreter, source=source):
                interpreter.set_tensor(source["index"], runtimes._quantize(x, source))
                interpreter.invoke()

            rows.append(
                (
                    f"LiteRT {quantization or 'float32'}",
                    runtimes.litert_probabilities(litert_file, val_images),
                    litert_file,
                    invoke,
                )
            )
        print(
            f"hymenoptera val ({len(val_labels)} images), MobileNet alpha=0.25 224, "
            f"{args.epochs} head epochs; latency: batch 1, median of {args.calls} calls\n"
        )
        print("| format | accuracy | top-1 = Keras | max abs prob diff | size (MB) | ms |")
        print("|---|---|---|---|---|---|")
        for name, probs, path, predict in rows:
            accuracy = (probs.argmax(-1) == val_labels).mean()
            agreement = (probs.argmax(-1) == keras_probs.argmax(-1)).mean()
            diff = np.abs(probs - keras_probs).max()
            size = f"{file_size(path) / 1e6:.2f}" if path else "-"
            ms = median_ms(predict, val_images[:1], args.calls)
            print(f"| {name} | {accuracy:.3f} | {agreement:.3f} | {diff:.1e} | {size} | {ms:.2f} |")


if __name__ == "__main__":
    main()
