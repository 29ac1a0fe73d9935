"""`export_saved_model`: SavedModels for TF Serving that take raw image bytes or raw text.

Signatures of an exported image classifier:
- `serving_default`: input `image_bytes`, `tf.string` `(batch,)`, encoded JPEG / PNG / GIF
  (first frame) / BMP. Each image is decoded to RGB (grayscale and RGBA converted),
  centre-cropped to the aspect ratio of the model's input and resized (bilinear) to it,
  exactly as `image_folder_datasets` does in training, then run through the model. The
  `_bytes` suffix lets the TF Serving REST API take `{"b64": "..."}` values.
- `serving_pixels`: input `pixels`, float32 `(batch, height, width, 3)` in [0, 255].

Signature of an exported text classifier:
- `serving_default`: input `text`, `tf.string` `(batch,)` raw text; tokenisation runs inside
  the SavedModel. The graph uses TensorFlow Text ops (for BERT's WordPiece tokenizer:
  `RegexSplitWithOffsets`, `FastWordpieceTokenizeWithOffsets`, `RoundRobinTrim`, and friends),
  so the serving binary must have them: `tensorflow/serving` images since 2.x include
  TF Text ops; in Python, `import tensorflow_text` before `tf.saved_model.load`.

Outputs of every signature: `probabilities` float32 `(batch, num_classes)`, `class_ids` int64
`(batch,)`, `class_names` string `(batch,)`. The full list of class names is also written to
`assets.extra/class_names.json` in the version folder (TF Serving ignores `assets.extra`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

IMAGE_DEFAULT_INPUT = "image_bytes"
PIXELS_INPUT = "pixels"
TEXT_INPUT = "text"


CLASS_NAMES_ASSET = os.path.join("assets.extra", "class_names.json")


def read_class_names(saved_model_dir):
    """The class names stored beside an exported SavedModel (`assets.extra/class_names.json`)."""
    with open(os.path.join(saved_model_dir, CLASS_NAMES_ASSET), encoding="utf-8") as handle:
        return json.load(handle)


def _next_version(export_dir):
    versions = [int(name) for name in os.listdir(export_dir) if name.isdigit()]
    return max(versions, default=0) + 1


def _check_class_names(model, class_names):
    from keras_transfer.models.class_names import resolve_class_names

    num_classes = int(model.output_shape[-1])
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(
            f"`class_names` has {len(class_names)} names but the model predicts "
            f"{num_classes} classes."
        )
    return resolve_class_names(model, class_names, "the export")


def _write_saved_model(model, path, class_names):
    """Write the SavedModel at `path` (tensorflow backend only)."""
    import keras
    import tensorflow as tf

    from keras_transfer.data.image_data import decode_and_resize
    from keras_transfer.models.compiling import is_text_classifier

    names = tf.constant(class_names)

    def outputs(probabilities):
        probabilities = tf.cast(probabilities, tf.float32)
        class_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {
            "probabilities": probabilities,
            "class_ids": class_ids,
            "class_names": tf.gather(names, class_ids),
        }

    # Not `archive.track(model)`: the endpoints track the variables they use, and tracking
    # the model too would store every weight twice (`variables/` and `_all_variables/`).
    archive = keras.export.ExportArchive()
    if is_text_classifier(model):
        preprocessor = model.preprocessor
        preprocessor(tf.constant(["build the preprocessor"]))  # unbuilt layers cannot be tracked
        archive.track(preprocessor)

        def serve_text(text):
            return outputs(model(preprocessor(text), training=False))

        archive.add_endpoint(
            "serving_default", serve_text, [tf.TensorSpec([None], tf.string, name=TEXT_INPUT)]
        )
    else:
        height, width = (int(d) for d in model.input_shape[1:3])

        def decode(encoded):
            return decode_and_resize(encoded, (height, width))

        def serve_bytes(image_bytes):
            pixels = tf.map_fn(
                decode, image_bytes, fn_output_signature=tf.TensorSpec((height, width, 3))
            )
            return outputs(model(pixels, training=False))

        def serve_pixels(pixels):
            return outputs(model(pixels, training=False))

        archive.add_endpoint(
            "serving_default",
            serve_bytes,
            [tf.TensorSpec([None], tf.string, name=IMAGE_DEFAULT_INPUT)],
        )
        archive.add_endpoint(
            "serving_pixels",
            serve_pixels,
            [tf.TensorSpec([None, height, width, 3], tf.float32, name=PIXELS_INPUT)],
        )
    archive.write_out(path, verbose=False)
    os.makedirs(os.path.join(path, "assets.extra"), exist_ok=True)
    with open(os.path.join(path, CLASS_NAMES_ASSET), "w", encoding="utf-8") as handle:
        json.dump(class_names, handle, ensure_ascii=False)


def _export_in_tensorflow_process(
    model, path, class_names, workdir, module="keras_transfer.export.saved_model", extra_args=()
):
    """Rebuild the model on the tensorflow backend in a subprocess and export it there.

    The subprocess runs `python -m <module> MODEL.keras PATH CLASS_NAMES_JSON *extra_args`.
    """
    model_file = os.path.join(workdir, "model.keras")
    model.save(model_file)
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    result = subprocess.run(
        [sys.executable, "-m", module, model_file, path, json.dumps(class_names), *extra_args],
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(
            "Exporting through a tensorflow-backend process failed:\n" + result.stderr[-4000:]
        )


def export_saved_model(model, export_dir, *, version=None, class_names=None):
    """Export a classifier as a versioned SavedModel for TF Serving.

    Writes `export_dir/<version>/` (the layout TF Serving watches). The SavedModel is written
    into a hidden temporary folder inside `export_dir` and renamed into place, so a version
    folder is either complete or absent: an existing version is never touched, and a failed
    export leaves nothing behind. Models trained on jax or torch are saved to `.keras`,
    rebuilt on the tensorflow backend in a subprocess and exported there; the caller sees one
    call.

    Signatures: image models get `serving_default` (input `image_bytes`: `tf.string`
    `(batch,)` encoded JPEG / PNG / GIF / BMP, decoded to RGB and resized like the training
    pipeline) and `serving_pixels` (input `pixels`: float32 `(batch, height, width, 3)` in
    [0, 255]); text models get `serving_default` (input `text`: `tf.string` `(batch,)` raw
    text, tokenised inside the graph with TensorFlow Text ops). Every signature returns
    `probabilities` float32 `(batch, num_classes)`, `class_ids` int64 `(batch,)` and
    `class_names` string `(batch,)`; `assets.extra/class_names.json` lists all names.

    Args:
        model: a classifier from `build_image_classifier` (input `(batch, height, width, 3)`)
            or `build_text_classifier` (a KerasHub text classifier with its preprocessor).
        export_dir: the model's base folder (str, bytes or path-like; its path must be
            valid UTF-8), created with its missing parents if needed (and removed again
            if the export fails).
        version: positive int, or None (default) for the next integer after the highest
            existing version (1 for an empty folder).
        class_names: list of str, index = class id; default the names the model carries
            (from `fine_tune` on our datasets, `load_classifier`, `attach_class_names`),
            else `"0"`, `"1"`, ... with a `UserWarning` that says how to attach them.

    Returns:
        str: the path of the written version folder.

    Raises:
        FileExistsError: `export_dir/<version>` exists already.
        ValueError: bad `version`, `class_names` of the wrong length, or an `export_dir`
            whose path is not valid UTF-8.
        RuntimeError: the tensorflow-backend subprocess failed (its error is included).
    """
    import keras

    class_names = _check_class_names(model, class_names)

    def write(staged, workdir):
        if keras.backend.backend() == "tensorflow":
            _write_saved_model(model, staged, class_names)
        else:
            _export_in_tensorflow_process(model, staged, class_names, workdir)

    return write_version(export_dir, version, write)


def write_version(export_dir, version, write):
    """Write `export_dir/<version>/` atomically: `write(staged, workdir)` fills the folder
    `staged` (which it creates) inside the hidden temporary folder `workdir` in `export_dir`,
    then `staged` is renamed into place. A failed write leaves nothing behind.

    Returns:
        str: the path of the written version folder.

    Raises:
        FileExistsError: `export_dir/<version>` exists already.
        ValueError: bad `version`, or an `export_dir` whose path is not valid UTF-8.
    """
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or version < 1
    ):
        raise ValueError(f"`version` must be a positive int or None, got {version!r}.")
    export_dir = utf8_path(export_dir, "export to")
    made = _missing_folders(export_dir)
    workdir = None
    try:
        os.makedirs(export_dir, exist_ok=True)
        version = version or _next_version(export_dir)
        final = os.path.join(export_dir, str(version))
        if os.path.exists(final):
            raise FileExistsError(
                f"{final!r} exists already; exported versions are never overwritten. Pass "
                "another `version` or leave it None for the next one."
            )
        workdir = tempfile.mkdtemp(prefix=f".export-{version}-", dir=export_dir)
        staged = os.path.join(workdir, "staged")
        write(staged, workdir)
        os.rename(staged, final)
    except BaseException:
        _remove(workdir, made)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    return final


def utf8_path(path, action):
    """`path` (str, bytes or path-like) as a str, for TensorFlow's SavedModel writer, which
    takes UTF-8 paths only.

    Raises:
        ValueError: the path is not valid UTF-8 (e.g. a Latin-1 folder name); the message
            names it as printable text and starts with "Cannot <action> ...".
    """
    from keras_transfer.data.image_data import printable_name

    path = os.fsdecode(path)
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"Cannot {action} '{printable_name(path)}': TensorFlow writes SavedModels only "
            "under paths that are valid UTF-8. Choose a path that is (a SavedModel can be "
            "moved anywhere afterwards)."
        ) from None
    return path


def _missing_folders(path):
    """The folders that `os.makedirs(path)` would create, deepest first."""
    missing, path = [], os.path.abspath(path)
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _remove(workdir, made):
    """After a failed export: the temporary folder, then the folders the export made (each
    only while empty), so that nothing is left behind."""
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)
    for folder in made:
        try:
            os.rmdir(folder)
        except OSError:  # not empty (or gone): keep it and the folders above
            break


def _main(argv):
    """`python -m keras_transfer.export.saved_model MODEL.keras OUT_DIR CLASS_NAMES_JSON`
    (tensorflow)."""
    import keras

    model_file, path, class_names = argv
    if keras.backend.backend() != "tensorflow":
        raise SystemExit("keras_transfer.export.saved_model must run with KERAS_BACKEND=tensorflow")
    model = keras.saving.load_model(model_file, safe_mode=True)
    _write_saved_model(model, path, json.loads(class_names))


if __name__ == "__main__":
    import keras_transfer.models.layers  # noqa: F401  (registers the layers before loading)
    import keras_transfer.models.text_pooling  # noqa: F401  (and the mean-pooled text classifier)

    _main(sys.argv[1:])
