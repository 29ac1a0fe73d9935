"""`export_onnx` and `export_litert`: classifiers for ONNX Runtime and LiteRT.

Beside `export_saved_model` (TF Serving), these write one file per version folder, with the
same atomic, versioned layout (`export_dir/<version>/`, never overwritten):

- `model.onnx` (ONNX Runtime) or `model.tflite` (LiteRT, the new name of TensorFlow Lite);
- `class_names.json`: the class names, index = class id;
- `check.json`: the check made after writing (see below).

Input: pixels, float32 `(batch, height, width, 3)` RGB in [0, 255] at the model's input size,
with the model's preprocessing inside (full-int8 LiteRT: uint8 pixels). Output: the softmax
probabilities `(batch, num_classes)`. Neither format can decode JPEG / PNG bytes inside the
model; clients decode and resize as training did (`docs/serving.md` has the few lines).
The training-time augmentation layers are left out of the artifacts (they are identities at
inference).

Conversion uses Keras' own exporters (`model.export(format="onnx" | "litert")`: tf2onnx and
the TFLite converter) on the tensorflow backend; models trained on jax or torch are saved,
rebuilt on tensorflow in a subprocess and converted there, as `export_saved_model` does.

Every artifact is run after writing, in a fresh process, in its own runtime
(`keras_transfer/export/runtimes.py`: `onnxruntime`; `ai_edge_litert`, else `tf.lite.Interpreter`)
on a sample of images, and compared with the Keras model: float formats must give the same
top-1 class and probabilities within `tolerance` (default 1e-4); quantised LiteRT models must
give the same top-1 class on at least `min_top1_agreement` of the sample. A failed check
raises and leaves no version folder behind.

Text classifiers are exported from token ids on (`export.text`): the artifact takes the
preprocessor's int32 `(batch, sequence_length)` arrays and the preprocessor is saved beside it
in `preprocessor/`; `runtimes.text_inputs(folder, texts)` makes those arrays from raw
strings. `export_saved_model` instead tokenises raw strings inside the SavedModel.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from keras_transfer.export import runtimes
from keras_transfer.export.calibration import CALIBRATION_EXAMPLES, check_images, litert_options
from keras_transfer.export.saved_model import (
    _check_class_names,
    _export_in_tensorflow_process,
    write_version,
)

FILES = {"onnx": "model.onnx", "litert": "model.tflite"}
CLASS_NAMES_FILE = "class_names.json"
CHECK_FILE = "check.json"
QUANTIZATIONS = (None, "dynamic", "int8")
CHECK_EXAMPLES = 32


def export_onnx(
    model, export_dir, *, version=None, class_names=None, check_data=None, tolerance=1e-4
):
    """Export a classifier as `export_dir/<version>/model.onnx` for ONNX Runtime.

    Converted with Keras' `model.export(format="onnx")` (tf2onnx, on the tensorflow backend;
    jax and torch models are rebuilt on tensorflow in a subprocess). The ONNX graph has one
    input, `image`: float32 `(batch, height, width, 3)` RGB pixels in [0, 255] (any batch
    size), and one output: float32 probabilities `(batch, num_classes)`. A text classifier's
    graph takes int32 token arrays `(batch, sequence_length)` instead (`token_ids`,
    `segment_ids`, `padding_mask`), made by `runtimes.text_inputs` with the preprocessor
    saved in `<version>/preprocessor/`. Checked after writing in ONNX Runtime in a fresh
    process (see the module docstring).

    Args:
        model: a classifier from `build_image_classifier` or `build_text_classifier`, on
            any backend.
        export_dir: base folder (str or path-like, valid UTF-8), created if missing.
        version: positive int, or None (default) for the next integer.
        class_names: list of str, index = class id; default `"0"`, `"1"`, ...
        check_data: pixels `(n, height, width, 3)` in [0, 255] for the check; default: 16
            random images (seed 0). Text models: a list of str; default 8 short sentences.
        tolerance: largest allowed |probability difference| against Keras; default 1e-4.

    Returns:
        str: the version folder written.

    Raises:
        ValueError: bad `version` / `class_names` / `check_data`.
        FileExistsError: the version exists already.
        RuntimeError: conversion failed, or the artifact disagrees with the Keras model.

    Example:
    ```python
    folder = keras_transfer.export_onnx(model, "exports/ants_bees_onnx", class_names=names)
    probabilities = keras_transfer.export.runtimes.onnx_probabilities(
        os.path.join(folder, "model.onnx"), pixels)
    ```
    """
    return _export(
        "onnx", model, export_dir, version, class_names, None, None, check_data, tolerance, 1.0
    )


def export_litert(
    model,
    export_dir,
    *,
    quantization=None,
    representative_data=None,
    version=None,
    class_names=None,
    check_data=None,
    tolerance=1e-4,
    min_top1_agreement=0.8,
):
    """Export a classifier as `export_dir/<version>/model.tflite` for LiteRT.

    Converted with Keras' `model.export(format="litert")` (the TFLite converter, on the
    tensorflow backend; jax and torch models are rebuilt on tensorflow in a subprocess),
    restricted to LiteRT's builtin ops so that the file runs on any LiteRT runtime without
    the TensorFlow (Flex) delegate. The batch dimension is dynamic
    (`interpreter.resize_tensor_input`). Text classifiers: token inputs as for `export_onnx`
    (batch and sequence length dynamic; `runtimes.litert_probabilities` runs the serving
    signature), float32 or dynamic-range only.

    Variants (`quantization`):
    - None: float32 weights and activations; float32 pixels in [0, 255] in, float32
      probabilities out.
    - `"dynamic"`: dynamic-range quantisation, int8 weights (about 1/4 the size), float
      computation where kernels lack int8; float32 input and output as above.
    - `"int8"`: full-integer quantisation calibrated on `representative_data`; every op in
      int8, input uint8 pixels `(batch, height, width, 3)` (scale ~1, zero point 0: the raw
      pixel values) and output uint8 probabilities (scale 1/256): see
      `runtimes.litert_probabilities` for the conversion.

    Args:
        model: a classifier from `build_image_classifier` or `build_text_classifier`, on
            any backend.
        export_dir: base folder (str or path-like, valid UTF-8), created if missing.
        quantization: None (default), `"dynamic"` or `"int8"` (images only).
        representative_data: images drawn from the training data for the int8 calibration
            (100-500 recommended; the first 300 are used): an array `(n, height, width, 3)`
            in [0, 255], or an iterable / `tf.data.Dataset` of such batches or of
            `(images, labels)` batches. Required for `"int8"`, ignored otherwise.
        version: positive int, or None (default) for the next integer.
        class_names: list of str, index = class id; default `"0"`, `"1"`, ...
        check_data: pixels `(n, height, width, 3)` in [0, 255] for the check; default: the
            first 32 representative images if given, else 16 random images (seed 0). Text
            models: a list of str; default 8 short sentences.
        tolerance: float formats: largest allowed |probability difference|; default 1e-4.
        min_top1_agreement: quantised formats: the smallest share of the check images with
            the Keras model's top-1 class; default 0.8.

    Returns:
        str: the version folder written.

    Raises:
        ValueError: bad `quantization` (`"int8"` for a text classifier: its inputs are token
            ids, not values to calibrate; use `"dynamic"`, or `quantize_classifier` for a
            Keras int8 model), `"int8"` without `representative_data`, bad `version` /
            `class_names` / data shapes.
        FileExistsError: the version exists already.
        RuntimeError: conversion failed, or the artifact disagrees with the Keras model.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"`quantization` must be None, 'dynamic' or 'int8', got {quantization!r}.")
    from keras_transfer.models.compiling import is_text_classifier

    calibration = None
    if quantization == "int8" and is_text_classifier(model):
        raise ValueError(
            "Full-integer (`quantization='int8'`) LiteRT export is for image classifiers: a "
            "text model's inputs are token ids. Use `quantization='dynamic'` (int8 weights), "
            "or `quantize_classifier(model, 'int8')` for an int8 Keras model."
        )
    if quantization == "int8":
        if representative_data is None:
            raise ValueError(
                "`quantization='int8'` needs `representative_data`: 100-500 training images "
                "(batch, height, width, 3) in [0, 255] to calibrate the int8 ranges (command "
                "line: --calibration-data TRAIN_FOLDER)."
            )
        calibration = check_images(
            model, representative_data, CALIBRATION_EXAMPLES, "representative_data"
        )
    return _export(
        "litert",
        model,
        export_dir,
        version,
        class_names,
        quantization,
        calibration,
        check_data,
        tolerance,
        min_top1_agreement,
    )


FORMATS = ("saved_model", "onnx", "litert")


def export_model(
    model,
    export_dir,
    *,
    format="saved_model",
    quantization=None,
    representative_data=None,
    version=None,
    class_names=None,
):
    """Export with `export_saved_model`, `export_onnx` or `export_litert`, chosen by `format`
    (`"saved_model"`, the default, `"onnx"` or `"litert"`); the other arguments are theirs
    (`quantization` and `representative_data`: LiteRT only). Returns the version folder.

    Raises:
        ValueError: an unknown `format`, or `quantization` with another format than
            `"litert"`; and whatever the chosen exporter raises.
    """
    from keras_transfer.export.saved_model import export_saved_model

    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}, got {format!r}.")
    if format != "litert" and quantization is not None:
        raise ValueError(f"`quantization` applies to format 'litert' only, not {format!r}.")
    options = dict(version=version, class_names=class_names)
    if format == "saved_model":
        return export_saved_model(model, export_dir, **options)
    if format == "onnx":
        return export_onnx(model, export_dir, **options)
    return export_litert(
        model,
        export_dir,
        quantization=quantization,
        representative_data=representative_data,
        **options,
    )


def _export(
    kind,
    model,
    export_dir,
    version,
    class_names,
    quantization,
    calibration,
    check_data,
    tolerance,
    min_agreement,
):
    import keras

    from keras_transfer.export import text as export_text
    from keras_transfer.models.compiling import is_text_classifier

    text = is_text_classifier(model)
    class_names = _check_class_names(model, class_names)
    if text:
        sample = export_text.token_inputs(model, export_text.check_texts(check_data))
    elif check_data is not None:
        sample = check_images(model, check_data, None, "check_data")
    elif calibration is not None:
        sample = calibration[:CHECK_EXAMPLES]
    else:
        shape = (16, *(int(d) for d in model.input_shape[1:]))
        sample = np.random.default_rng(0).uniform(0, 255, shape).astype("float32")

    def write(staged, workdir):
        os.makedirs(staged)
        calibration_file = ""
        if calibration is not None:
            calibration_file = os.path.join(workdir, "calibration.npy")
            np.save(calibration_file, calibration)
        args = (kind, quantization or "none", calibration_file)
        if keras.backend.backend() == "tensorflow":
            _write_artifact(model, staged, class_names, *args)
        else:
            _export_in_tensorflow_process(
                model, staged, class_names, workdir, "keras_transfer.export.formats", args
            )
        if text:
            export_text.save_preprocessor(model, os.path.join(staged, runtimes.PREPROCESSOR_FOLDER))
            expected = export_text.probabilities(model, sample)
        else:
            expected = np.asarray(model.predict(sample, verbose=0), dtype="float32")
        report = runtimes.check_artifact(
            kind, os.path.join(staged, FILES[kind]), sample, expected, workdir
        )
        report["quantization"] = quantization
        runtimes.verdict(report, quantization, tolerance, min_agreement)
        with open(os.path.join(staged, CHECK_FILE), "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)

    return write_version(export_dir, version, write)


def inference_model(model):
    """`model` without its training-time augmentation block (layers shared, not copied):
    random augmentation layers are identities at inference, but their random ops stay in
    the traced graph, where ONNX and LiteRT builtins have no kernels for them."""
    import keras

    if "augmentation" not in [layer.name for layer in model.layers]:
        return model

    class Passthrough(keras.layers.Layer):
        def call(self, inputs, mask=None, training=None):
            return inputs

    def swap(layer):
        return Passthrough(name=layer.name) if layer.name == "augmentation" else layer

    return keras.models.clone_model(model, clone_function=swap)


def _write_artifact(model, folder, class_names, kind, quantization, calibration_file):
    """Convert `model` into `folder` (tensorflow backend only); `quantization`: None,
    `"none"`, `"dynamic"` or `"int8"`."""
    from keras_transfer.models.compiling import is_text_classifier

    quantization = None if quantization == "none" else quantization
    if is_text_classifier(model):  # exporters need a model that has been called
        from keras_transfer.export.text import token_inputs

        model(token_inputs(model, ["a"]), training=False)
    else:
        model = inference_model(model)
        model(np.zeros((1, *model.input_shape[1:]), "float32"), training=False)
    path = os.path.join(folder, FILES[kind])
    try:
        if kind == "onnx":
            model.export(path, format="onnx", verbose=False)
        else:
            model.export(
                path,
                format="litert",
                verbose=False,
                **litert_options(quantization, calibration_file),
            )
    except Exception as error:  # the converters raise many types; keep theirs as the cause
        raise RuntimeError(f"Converting the model to {kind} failed: {error}") from error
    with open(os.path.join(folder, CLASS_NAMES_FILE), "w", encoding="utf-8") as handle:
        json.dump(class_names, handle, ensure_ascii=False)


def _main(argv):
    """`python -m keras_transfer.export.formats MODEL.keras FOLDER CLASS_NAMES_JSON KIND
    QUANTIZATION CALIBRATION_NPY` (tensorflow backend)."""
    import keras

    model_file, folder, class_names, kind, quantization, calibration_file = argv
    if keras.backend.backend() != "tensorflow":
        raise SystemExit("keras_transfer.export.formats must run with KERAS_BACKEND=tensorflow")
    model = keras.saving.load_model(model_file, safe_mode=True)
    _write_artifact(model, folder, json.loads(class_names), kind, quantization, calibration_file)


if __name__ == "__main__":
    import keras_transfer.models.layers  # noqa: F401  (registers the layers before loading)
    import keras_transfer.models.text_pooling  # noqa: F401  (and the mean-pooled text classifier)

    _main(sys.argv[1:])
