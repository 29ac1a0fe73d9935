"""`keras-transfer demo|evaluate|explain|predict|export`: the commands on a trained run."""

from __future__ import annotations

import json
import os

from keras_transfer.cli.parser import build_parser
from keras_transfer.cli.run_folder import load_trained, write_outputs
from keras_transfer.cli.train import train_text


def demo_command(args):
    from keras_transfer.cli import demo
    from keras_transfer.export.saved_model import utf8_path

    utf8_path(args.output, "write the demo and its SavedModel to")  # before the training
    train, test = demo.write_review_data(os.path.join(args.output, "data"))
    print(f"Wrote the demo reviews: {train} and {test}")
    text_args = build_parser().parse_args(
        [
            "train",
            "text",
            "--data",
            train,
            "--val",
            test,
            "--preset",
            demo.minilm_folder(),
            "--sequence-length",
            "32",
            "--batch-size",
            "16",
            "--lr",
            "5e-5",
            "--epochs",
            str(args.epochs),
            "--output",
            args.output,
            "--overwrite",  # the demo's folder is made anew each time
        ]
    )
    train_text(text_args)
    from keras_transfer.export.saved_model import export_saved_model

    model, class_names = load_trained(args.output)
    path = export_saved_model(model, os.path.join(args.output, "export"), class_names=class_names)
    print(f"Exported the TF Serving SavedModel to {path}")
    return 0


def evaluate_command(args):
    import keras_transfer as kt
    from keras_transfer.data.image_data import evaluation_dataset, split_folders
    from keras_transfer.models.compiling import is_text_classifier

    model, class_names = load_trained(args.model_dir)
    if is_text_classifier(model):
        # One pass, so the shuffled "training" dataset of this single file is fine.
        dataset, _, _ = kt.text_csv_datasets(
            args.data, batch_size=args.batch_size, class_names=class_names
        )
        report = kt.evaluate_classifier(model, dataset, class_names)
        print(report)
        if args.output:
            write_outputs(args.output, model, class_names, report)
            _write_html(args, model, class_names, report, dataset)
        return 0
    train_dir, val_dir = split_folders(args.data)  # only the scored folder is read
    dataset = evaluation_dataset(
        val_dir or train_dir,
        image_size=tuple(model.input_shape[1:3]),
        class_names=class_names,
        batch_size=args.batch_size,
    )
    report = kt.evaluate_classifier(model, dataset, class_names)
    print(report)
    if args.output:
        write_outputs(args.output, model, class_names, report)
        _write_html(args, model, class_names, report, dataset)
    return 0


def _write_html(args, model, class_names, report, dataset):
    from keras_transfer.report.html import write_run_report

    write_run_report(args.output, model, class_names, report, None, dataset, vars(args))


def explain_command(args):
    from keras_transfer.models.compiling import is_text_classifier
    from keras_transfer.report import explain

    model, class_names = load_trained(args.model_dir)
    folder = args.model_dir if os.path.isdir(args.model_dir) else os.path.dirname(args.model_dir)
    output = args.output or os.path.join(folder, "explain")
    if is_text_classifier(model):
        explain.explain_texts(model, class_names, args.inputs, output, args.class_name)
        return 0
    images = [_load_image(path, tuple(model.input_shape[1:3])) for path in args.inputs]
    explain.explain_images(model, class_names, args.inputs, images, output, args.class_name)
    return 0


def _load_image(path, image_size):
    import tensorflow as tf

    from keras_transfer.data.image_data import (
        decode_and_resize,
        decode_error_reason,
        printable_name,
    )

    shown = printable_name(path)
    if os.path.isdir(path):
        raise ValueError(
            f"'{shown}' is a folder; pass image files (e.g. {os.path.join(shown, '*.jpg')})."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Image file not found: '{shown}'.")
    try:
        # The file system's bytes: a name that is not UTF-8 cannot go to TF as a str.
        return decode_and_resize(tf.io.read_file(os.fsencode(path)), image_size).numpy()
    except (tf.errors.OpError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{shown}: not a decodable JPEG, PNG, GIF or BMP image "
            f"({decode_error_reason(error, path)})."
        ) from None


def _saved_model_path(path):
    """The SavedModel folder for `path` (itself, or its highest numbered version), or None."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = [n for n in os.listdir(path) if n.isdigit()] if os.path.isdir(path) else []
    versions = [n for n in versions if os.path.isfile(os.path.join(path, n, "saved_model.pb"))]
    return os.path.join(path, max(versions, key=int)) if versions else None


def _read_texts(args):
    inputs = list(args.inputs)
    if args.file:
        try:
            with open(args.file, encoding="utf-8-sig") as handle:
                inputs += [line.rstrip("\r\n") for line in handle if line.strip()]
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{args.file}: byte {error.start}: not UTF-8 text; re-save the file as UTF-8 "
                "(e.g. `iconv -f latin1 -t utf-8`)."
            ) from None
    if not inputs:
        raise ValueError("Nothing to predict: pass texts as arguments or --file.")
    return inputs


def _predict_saved_model(args, path):
    import tensorflow as tf

    try:
        import tensorflow_text  # noqa: F401  (registers the ops of text exports)
    except ImportError:
        pass
    serving = tf.saved_model.load(path).signatures["serving_default"]
    input_name = next(iter(serving.structured_input_signature[1]))
    if input_name == "text":
        inputs = _read_texts(args)
        values = inputs
    else:
        inputs = list(args.inputs)
        if not inputs:
            raise ValueError("Nothing to predict: pass image files.")
        values = []
        for name in inputs:
            _load_image(name, (8, 8))  # a clear error for a missing or undecodable file
            with open(name, "rb") as handle:
                values.append(handle.read())
    probabilities = serving(**{input_name: tf.constant(values)})["probabilities"].numpy()
    from keras_transfer.export.saved_model import read_class_names

    return inputs, probabilities, read_class_names(path)


def predict_command(args):
    import keras_transfer as kt

    saved_model = _saved_model_path(args.model_dir)
    if saved_model is not None:
        inputs, probabilities, class_names = _predict_saved_model(args, saved_model)
    else:
        model, class_names = load_trained(args.model_dir)
        inputs, probabilities = _predict_keras(args, model, kt)
    _print_top_k(args, inputs, probabilities, class_names)
    return 0


def _predict_keras(args, model, kt):
    import numpy as np

    from keras_transfer.models.compiling import is_text_classifier

    inputs = list(args.inputs)
    if is_text_classifier(model):
        inputs = _read_texts(args)
        probabilities = np.asarray(model.predict(np.array(inputs, dtype=object), verbose=0))
    else:
        if not inputs:
            raise ValueError("Nothing to predict: pass image files.")
        image_size = tuple(model.input_shape[1:3])
        images = np.stack([_load_image(path, image_size) for path in inputs])
        probabilities = np.asarray(model.predict(images, verbose=0))
    return inputs, probabilities


def _print_top_k(args, inputs, probabilities, class_names):
    import numpy as np

    from keras_transfer.data.image_data import printable_name

    top_k = min(args.top_k, len(class_names))
    for name, probs in zip(inputs, probabilities, strict=True):
        name = printable_name(name)  # valid text (and JSON) for a file name that is not UTF-8
        best = np.argsort(-probs)[:top_k]
        ranked = [(class_names[i], float(probs[i])) for i in best]
        if args.json:
            top = [{"class": c, "probability": p} for c, p in ranked]
            print(json.dumps({"input": name, "top_k": top}, ensure_ascii=False))
        else:
            print(f"{name}: " + ", ".join(f"{c} {p:.4f}" for c, p in ranked))


def export_command(args):
    from keras_transfer.export.calibration import calibration_images
    from keras_transfer.export.formats import export_model
    from keras_transfer.models.compiling import is_text_classifier

    model, class_names = load_trained(args.model_dir)
    if (args.quantization == "int8" or args.calibration_data) and is_text_classifier(model):
        raise ValueError(
            f"{args.model_dir} holds a text classifier: --quantization int8 (full-integer, "
            "calibrated on the images of --calibration-data) is for image models, a text "
            "model's inputs being token ids. Export a text model with --quantization dynamic "
            "(int8 weights) or without --quantization (float32), and no --calibration-data."
        )
    data = args.calibration_data and calibration_images(args.calibration_data, model, class_names)
    path = export_model(
        model,
        args.output,
        format=args.format,
        quantization=args.quantization,
        representative_data=data,
        version=args.version,
        class_names=class_names,
    )
    print(f"Exported {path}")
    return 0
