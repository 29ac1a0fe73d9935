"""Images for LiteRT's int8 calibration and for the exporters' checks, and the LiteRT
converter options of each quantisation (`formats`)."""

from __future__ import annotations

import numpy as np

CALIBRATION_EXAMPLES = 300


def calibration_images(directory, model, class_names, count=CALIBRATION_EXAMPLES, seed=0):
    """`count` images drawn at random (seeded) from an image folder `directory/<class>/*`
    (e.g. the training data), decoded and resized as in training: float32
    `(n, height, width, 3)` in [0, 255], for `export_litert(..., quantization="int8")`.
    Reads at most about 2,000 images (in file order) to draw from."""
    from keras_transfer.data.image_data import evaluation_dataset

    size = tuple(int(d) for d in model.input_shape[1:3])
    dataset = evaluation_dataset(directory, image_size=size, class_names=class_names)
    images = np.concatenate([np.asarray(x) for x, _ in dataset.take(2000 // 32 + 1)])
    order = np.random.default_rng(seed).permutation(len(images))[:count]
    return images[np.sort(order)]


def check_images(model, data, limit, name):
    """`data` (array, or iterable of batches / (batch, labels)) as float32 `(n, h, w, 3)`."""
    shape = tuple(int(d) for d in model.input_shape[1:])
    if hasattr(data, "shape"):
        batches = [np.asarray(data)]
    else:
        batches, count = [], 0
        for batch in data:
            batch = np.asarray(batch[0] if isinstance(batch, (tuple, list)) else batch)
            batches.append(batch)
            count += len(batch)
            if limit is not None and count >= limit:
                break
    images = np.concatenate(batches) if batches else np.zeros((0, *shape))
    if images.ndim != 4 or images.shape[1:] != shape or len(images) == 0:
        raise ValueError(
            f"`{name}` must hold images of shape (n, {', '.join(map(str, shape))}) with "
            f"n >= 1 (the model's input size, pixels in [0, 255]); got shape {images.shape}."
        )
    return images[:limit].astype("float32")


def litert_options(quantization, calibration_file):
    import tensorflow as tf

    builtins = tf.lite.OpsSet.TFLITE_BUILTINS
    if quantization is None:
        return {"target_spec": {"supported_ops": [builtins]}}
    if quantization == "dynamic":
        return {
            "target_spec": {"supported_ops": [builtins]},
            "optimizations": [tf.lite.Optimize.DEFAULT],
        }
    calibration = np.load(calibration_file)

    def representative_dataset():
        for index, image in enumerate(calibration):
            if index == 0:  # one pixel at 0 and one at 255: the input's range is [0, 255],
                image = image.copy()  # so its uint8 values are the pixels themselves
                image[0, 0], image[0, -1] = 0.0, 255.0
            yield [image[None]]

    return {
        "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
        "optimizations": [tf.lite.Optimize.DEFAULT],
        "representative_dataset": representative_dataset,
        "inference_input_type": tf.uint8,
        "inference_output_type": tf.uint8,
    }
