"""Run exported ONNX and LiteRT image classifiers in their own runtimes, without Keras.

These functions are the client code for the artifacts `export_onnx` and `export_litert` write:
they need only numpy and the runtime (`onnxruntime`, or `ai_edge_litert` with a fallback to
TensorFlow's `tf.lite.Interpreter`). The exporters run this file as a script in a fresh
process to check every artifact after writing it:

    python runtimes.py onnx|litert MODEL_FILE PIXELS.npy PROBABILITIES.npy

Input of both formats: pixels, float32 `(batch, height, width, 3)` RGB in [0, 255], resized
to the model's input size (the model's own preprocessing is inside the artifact). A full-int8
LiteRT model takes uint8 pixels and returns uint8 probabilities; `litert_probabilities`
converts both ways with the quantisation parameters stored in the file, so callers always
pass float pixels and get float32 probabilities back.
"""

from __future__ import annotations

import sys

import numpy as np


def onnx_probabilities(model_file, pixels):
    """Class probabilities of an ONNX classifier in ONNX Runtime (CPU).

    Args:
        model_file: path of the `.onnx` file.
        pixels: array `(batch, height, width, 3)` of RGB values in [0, 255].

    Returns:
        float32 array `(batch, num_classes)`.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    (probabilities,) = session.run(None, {name: np.asarray(pixels, dtype="float32")})
    return np.asarray(probabilities, dtype="float32")


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


def litert_probabilities(model_file, pixels):
    """Class probabilities of a LiteRT classifier (float32, dynamic-range or full int8).

    Float inputs are passed as they are; for a uint8 / int8 input the pixels are quantised
    with the input's `(scale, zero_point)` (for the int8 models `export_litert` writes, scale
    is about 1 and zero point 0: the uint8 pixels themselves). Quantised outputs are
    dequantised with the output's parameters.

    Args:
        model_file: path of the `.tflite` file.
        pixels: array `(batch, height, width, 3)` of RGB values in [0, 255].

    Returns:
        float32 array `(batch, num_classes)`.
    """
    pixels = np.asarray(pixels, dtype="float32")
    interpreter = litert_interpreter(model_file)
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


RUNNERS = {"onnx": onnx_probabilities, "litert": litert_probabilities}


def _main(argv):
    kind, model_file, pixels_file, output_file = argv
    np.save(output_file, RUNNERS[kind](model_file, np.load(pixels_file)))


if __name__ == "__main__":
    _main(sys.argv[1:])
