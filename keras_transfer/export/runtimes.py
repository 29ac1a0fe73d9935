"""Run exported ONNX and LiteRT classifiers in their own runtimes, without Keras.

These functions are the client code for the artifacts `export_onnx` and `export_litert` write:
they need only numpy and the runtime (`onnxruntime`, or `ai_edge_litert` with a fallback to
TensorFlow's `tf.lite.Interpreter`); text models also need their tokenizer (`text_inputs`,
KerasHub). The exporters run this file as a script in a fresh process to check every
artifact after writing it:

    python runtimes.py onnx|litert MODEL_FILE INPUTS.npz PROBABILITIES.npy

(`check_artifact` runs that and compares with the Keras model's probabilities.)

Input of both formats: pixels, float32 `(batch, height, width, 3)` RGB in [0, 255], resized
to the model's input size (the model's own preprocessing is inside the artifact). A full-int8
LiteRT model takes uint8 pixels and returns uint8 probabilities; `litert_probabilities`
converts both ways with the quantisation parameters stored in the file, so callers always
pass float pixels and get float32 probabilities back.

Input of text models: the tokenizer's output, a dict of int32 `(batch, sequence_length)`
arrays (`token_ids`, `segment_ids`, `padding_mask` for BERT), made from raw strings by
`text_inputs` with the preprocessor saved beside the artifact.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np


def decode_like_training(image_file, image_size):
    """Decode and resize one image file as training did (`image_data.decode_and_resize`),
    with Pillow and numpy only: RGB (grayscale and RGBA converted, alpha dropped, 16-bit
    samples cut to their high byte; a GIF gives its first frame, transparent pixels black),
    the largest centred box with the aspect ratio of `image_size`, then bilinear resizing
    with half-pixel centres and no antialiasing, as `tf.image.resize(..., "bilinear")` does.

    Pixels equal TensorFlow's to float rounding for lossless files (PNG, BMP, GIF), except
    8-bit palette BMPs (TensorFlow ignores their palette) and GIFs whose first frame is
    smaller than the image. JPEG decoders differ between libjpeg builds, by up to a few
    grey levels (3 measured on hymenoptera photos, Pillow against TensorFlow).

    Args:
        image_file: a path or a binary file object.
        image_size: `(height, width)` in pixels: the model's input size.

    Returns:
        float32 array `(height, width, 3)` in [0, 255].
    """
    from PIL import Image

    with Image.open(image_file) as image:
        image.seek(0)
        if image.mode.startswith("I"):  # 16-bit grayscale: TensorFlow keeps the high byte
            gray = np.right_shift(np.asarray(image).astype("int64").clip(0, 65535), 8)
            pixels = np.repeat(gray[..., None], 3, axis=-1).astype("float32")
        elif image.format == "GIF":  # TensorFlow leaves transparent pixels black
            rgba = np.asarray(image.convert("RGBA"), dtype="float32")
            pixels = rgba[..., :3] * (rgba[..., 3:] > 0)
        else:
            pixels = np.asarray(image.convert("RGB"), dtype="float32")
    (height, width), (target_height, target_width) = pixels.shape[:2], image_size
    crop_height = max(min(height, width * target_height // target_width), 1)  # smart_resize's
    crop_width = max(min(width, height * target_width // target_height), 1)
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    pixels = pixels[top : top + crop_height, left : left + crop_width]
    (y0, y1, dy), (x0, x1, dx) = (
        _bilinear_axis(out, size) for out, size in zip(image_size, pixels.shape[:2], strict=True)
    )
    dx = dx[None, :, None]
    top = pixels[y0][:, x0] + (pixels[y0][:, x1] - pixels[y0][:, x0]) * dx
    bottom = pixels[y1][:, x0] + (pixels[y1][:, x1] - pixels[y1][:, x0]) * dx
    return (top + (bottom - top) * dy[:, None, None]).astype("float32")


def _bilinear_axis(out_size, in_size):
    position = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    floor = np.floor(position)
    lower = np.maximum(floor, 0).astype(int)
    upper = np.minimum(np.ceil(position), in_size - 1).astype(int)
    return lower, upper, (position - floor).astype("float32")


PREPROCESSOR_FOLDER = "preprocessor"


def text_inputs(export_folder, texts):
    """Token inputs for an exported text classifier, from raw strings.

    Uses the KerasHub preprocessor that `export_onnx` / `export_litert` save in
    `<export_folder>/preprocessor/` (tokenizer vocabulary and sequence length of training),
    so the ids are the ones the model was trained on. Needs `keras-hub` (any backend).

    Args:
        export_folder: the version folder written by the exporter.
        texts: a list (or 1-D numpy array) of str, one example each.

    Returns:
        dict of int32 numpy arrays `(len(texts), sequence_length)`: `token_ids`,
        `segment_ids`, `padding_mask` (1 = a real token), as the artifact takes them.

    Raises:
        TypeError: `texts` is a str or a tuple (KerasHub reads a tuple as the segments of
            one example) or holds something other than str.
        ValueError: `texts` is empty.
        FileNotFoundError: the folder holds no `preprocessor/` (an image model's export).
    """
    texts = _text_list(texts)
    folder = os.path.join(os.fspath(export_folder), PREPROCESSOR_FOLDER)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"{folder!r} not found: `text_inputs` needs the export folder of a text classifier."
        )
    import keras_hub

    preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(folder)
    return {key: np.asarray(value).astype("int32") for key, value in preprocessor(texts).items()}


def _text_list(texts):
    """`texts` checked for `text_inputs`: a list of str."""
    if isinstance(texts, np.ndarray) and texts.ndim == 1:
        texts = texts.tolist()
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise TypeError(
            "`texts` must be a list of str, one example each (e.g. ['great film']), got "
            f"{type(texts).__name__} {str(texts)[:80]!r}; wrap a single text in a list, and "
            "pass a list, not a tuple (a tuple is read as the segments of one example)."
        )
    if not texts:
        raise ValueError("`texts` is empty: pass at least one text, e.g. ['great film'].")
    return texts


def onnx_probabilities(model_file, inputs):
    """Class probabilities of an ONNX classifier in ONNX Runtime (CPU).

    Args:
        model_file: path of the `.onnx` file.
        inputs: image models: array `(batch, height, width, 3)` of RGB values in [0, 255];
            text models: the dict `text_inputs` returns.

    Returns:
        float32 array `(batch, num_classes)`.
    """
    import onnxruntime

    ort_session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    if isinstance(inputs, dict):
        feeds = {
            spec.name: np.asarray(inputs[spec.name], dtype=_ONNX_TYPES[spec.type])
            for spec in ort_session.get_inputs()
        }
    else:
        feeds = {ort_session.get_inputs()[0].name: np.asarray(inputs, dtype="float32")}
    (probabilities,) = ort_session.run(None, feeds)
    return np.asarray(probabilities, dtype="float32")


_ONNX_TYPES = {"tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool"}


def litert_interpreter(model_file):
    """A LiteRT interpreter for `model_file`: `ai_edge_litert` if installed, else
    TensorFlow's `tf.lite.Interpreter` (the same runtime, shipped with TensorFlow). In a
    process that has imported TensorFlow already, TensorFlow's is used: the two packages
    each carry their own copy of the runtime, and loading both into one process can crash
    it."""
    if "tensorflow" not in sys.modules:
        try:
            from ai_edge_litert.interpreter import Interpreter

            return Interpreter(model_path=str(model_file))
        except ImportError:
            pass
    import tensorflow as tf

    return tf.lite.Interpreter(model_path=str(model_file))


def litert_probabilities(model_file, inputs):
    """Class probabilities of a LiteRT classifier (float32, dynamic-range or full int8).

    Float inputs are passed as they are; for a uint8 / int8 input the pixels are quantised
    with the input's `(scale, zero_point)` (for the int8 models `export_litert` writes, scale
    is about 1 and zero point 0: the uint8 pixels themselves). Quantised outputs are
    dequantised with the output's parameters.

    Args:
        model_file: path of the `.tflite` file.
        inputs: image models: array `(batch, height, width, 3)` of RGB values in [0, 255];
            text models: the dict `text_inputs` returns (run through the file's serving
            signature, which resizes to the batch and sequence length).

    Returns:
        float32 array `(batch, num_classes)`.
    """
    interpreter = litert_interpreter(model_file)
    if isinstance(inputs, dict):
        runner = interpreter.get_signature_runner()
        outputs = runner(**{key: np.asarray(value, "int32") for key, value in inputs.items()})
        (probabilities,) = outputs.values()
        return np.asarray(probabilities, dtype="float32")
    pixels = np.asarray(inputs, dtype="float32")
    source = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(source["index"], list(pixels.shape))
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    target = interpreter.get_output_details()[0]
    interpreter.set_tensor(source["index"], _quantize(pixels, source))
    interpreter.invoke()
    return _dequantize(interpreter.get_tensor(target["index"]), target)


def _quantize(values, details):
    dtype = np.dtype(details["dtype"])
    if dtype.kind == "f":
        return values.astype(dtype)
    scale, zero_point = details["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(values / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(values, details):
    if np.dtype(details["dtype"]).kind == "f":
        return values.astype("float32")
    scale, zero_point = details["quantization"]
    return ((values.astype("float32") - zero_point) * scale).astype("float32")


def check_artifact(kind, model_file, inputs, expected, workdir):
    """Run `model_file` on `inputs` in its runtime in a fresh process and compare.

    Args:
        kind: `"onnx"` or `"litert"`.
        model_file: the artifact's path.
        inputs: float32 pixels `(n, height, width, 3)` in [0, 255], or a text model's dict
            of int32 token arrays `(n, sequence_length)`.
        expected: the Keras model's float32 probabilities `(n, num_classes)`.
        workdir: a folder for the exchanged `.npz` / `.npy` files.

    Returns:
        dict: `runtime`, `examples`, `max_abs_diff`, `top1_agreement` (share in [0, 1]).

    Raises:
        RuntimeError: the runtime process failed (its error is included).
    """
    inputs_file = os.path.join(workdir, "check_inputs.npz")
    output_file = os.path.join(workdir, "check_probabilities.npy")
    np.savez(inputs_file, **(inputs if isinstance(inputs, dict) else {PIXELS: inputs}))
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), kind, model_file, inputs_file, output_file],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"The exported {kind} model failed in its runtime:\n{result.stderr[-4000:]}"
        )
    got = np.load(output_file)
    if got.shape != expected.shape:
        raise RuntimeError(
            f"The exported {kind} model returned shape {got.shape}, Keras {expected.shape}."
        )
    return {
        "runtime": "onnxruntime" if kind == "onnx" else "litert",
        "examples": len(expected),
        "max_abs_diff": float(np.abs(got - expected).max()),
        "top1_agreement": float((got.argmax(-1) == expected.argmax(-1)).mean()),
    }


def verdict(report, quantization, tolerance, min_agreement):
    """Raise RuntimeError where a `check_artifact` report fails: float formats (quantization
    None) need max |difference| <= tolerance and the same top-1 everywhere; quantised ones
    a top-1 agreement >= min_agreement."""
    if quantization is None:
        if report["max_abs_diff"] > tolerance or report["top1_agreement"] < 1:
            raise RuntimeError(
                f"The exported model disagrees with the Keras model: max |probability "
                f"difference| {report['max_abs_diff']:.2e} (allowed {tolerance:.0e}), top-1 "
                f"agreement {report['top1_agreement']:.3f} on {report['examples']} examples."
            )
    elif report["top1_agreement"] < min_agreement:
        raise RuntimeError(
            f"The {quantization}-quantised model agrees with the Keras model's top-1 class on "
            f"only {report['top1_agreement']:.3f} of {report['examples']} examples (at least "
            f"{min_agreement} required); try more representative data, or a float variant."
        )


RUNNERS = {"onnx": onnx_probabilities, "litert": litert_probabilities}
PIXELS = "pixels"


def _main(argv):
    kind, model_file, inputs_file, output_file = argv
    with np.load(inputs_file) as stored:
        inputs = {key: stored[key] for key in stored.files}
    inputs = inputs[PIXELS] if PIXELS in inputs else inputs
    np.save(output_file, RUNNERS[kind](model_file, inputs))


if __name__ == "__main__":
    _main(sys.argv[1:])
