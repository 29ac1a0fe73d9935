"""The `keras-transfer` command line: train, evaluate and predict.

    keras-transfer train image --data DIR --backbone NAME --output DIR [options]
    keras-transfer train text --data train.csv [--val test.csv] --preset NAME_OR_DIR --output DIR
    keras-transfer evaluate MODEL_DIR --data DIR_OR_FILE
    keras-transfer predict MODEL_DIR INPUT [INPUT ...] [--top-k K]
    keras-transfer export MODEL_DIR --output EXPORT_DIR [--version N]
    keras-transfer explain MODEL_DIR INPUT [INPUT ...] [--class NAME] [--output DIR]

Training writes to the output folder: `model.keras`, `class_names.json`, `report.json`,
`report.txt`, `report.html` (plots and the top losses, self-contained) and `history.json`.
Paths are only ever opened as files, never passed to a shell.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

MODEL_FILE = "model.keras"
CLASS_NAMES_FILE = "class_names.json"
CACHE_FEATURES = {"auto": "auto", "on": True, "off": False}
TEXT_PADDING = {"longest": "longest", "bucket": "bucket", "fixed": None}


def _json_object(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object like '{{\"alpha\": 0.25}}', got {text!r}"
        )
    return value


def _weights(text):
    return None if text.lower() == "none" else text


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-transfer",
        description="Transfer learning with Keras 3: fine-tune pretrained models on your data.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a classifier")
    kinds = train.add_subparsers(dest="kind", required=True)
    image = kinds.add_parser(
        "image", help="image classifier on a keras.applications or KerasHub backbone"
    )
    image.add_argument(
        "--data", required=True, help="folder with train/<class>/ (and val/<class>/)"
    )
    image.add_argument(
        "--backbone",
        required=True,
        help="registry name (see `keras-transfer backbones`) or hub:<preset>",
    )
    image.add_argument(
        "--weights", default="imagenet", type=_weights, help="imagenet (default), none, or a file"
    )
    image.add_argument(
        "--backbone-kwargs",
        type=_json_object,
        default=None,
        help="JSON for the Keras constructor, e.g. '{\"alpha\": 0.25}'",
    )
    image.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input side in pixels (default: the backbone's)",
    )
    image.add_argument("--batch-size", type=int, default=32)
    image.add_argument(
        "--validation-split",
        type=float,
        default=None,
        help="fraction held out when DATA has no val/ folder",
    )
    image.add_argument("--no-augmentation", action="store_true")
    _add_training_arguments(image, default_epochs=10)

    text = kinds.add_parser("text", help="text classifier on a KerasHub (BERT) preset")
    text.add_argument("--data", required=True, help="training file: .csv, .tsv or .jsonl")
    text.add_argument("--val", default=None, help="validation / test file, same columns")
    text.add_argument("--validation-split", type=float, default=None)
    text.add_argument(
        "--preset",
        required=True,
        help="KerasHub preset name, preset folder or Hugging Face BERT folder",
    )
    text.add_argument("--text-column", default="text")
    text.add_argument("--label-column", default="label")
    text.add_argument("--sequence-length", type=int, default=128)
    text.add_argument(
        "--padding",
        choices=["longest", "bucket", "fixed"],
        default="longest",
        help="pad each batch to its longest text (default), also group texts of similar "
        "length into batches (bucket), or pad all to --sequence-length (fixed)",
    )
    text.add_argument(
        "--freeze",
        default=None,
        help="N: freeze the embeddings and the bottom N blocks; 'backbone': all",
    )
    text.add_argument("--batch-size", type=int, default=32)
    text.add_argument(
        "--max-rows", type=int, default=None, help="train on the first N rows of --data only"
    )
    text.add_argument(
        "--class-weights", action="store_true", help="balanced class weights for imbalanced data"
    )
    text.add_argument("--epochs", type=_count, default=3, help="epochs (default 3, the seed's)")
    text.add_argument("--lr", type=float, default=None, help="learning rate (default Adam 2e-5)")
    text.add_argument("--seed", type=int, default=1337)
    _add_output_arguments(text)

    evaluate = commands.add_parser("evaluate", help="evaluate a trained model on labelled data")
    evaluate.add_argument("model_dir", help="output folder of `keras-transfer train`")
    evaluate.add_argument(
        "--data", required=True, help="image folder (its val/ part when present) or a text file"
    )
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--output", default=None, help="also write report.json/report.txt here")

    predict = commands.add_parser("predict", help="top-k classes for images or texts")
    predict.add_argument(
        "model_dir",
        help="output folder of `keras-transfer train`, or an exported SavedModel "
        "(a version folder, or its base folder: the highest version is used)",
    )
    predict.add_argument("inputs", nargs="*", help="image files, or texts for a text model")
    predict.add_argument("--file", default=None, help="text model: a file with one text a line")
    predict.add_argument(
        "--top-k",
        type=int,
        default=3,
        help="classes shown per input, most probable first "
        "(default 3, or all of them when there are fewer)",
    )
    predict.add_argument("--json", action="store_true", help="print JSON lines")

    export = commands.add_parser("export", help="export a trained model for TF Serving")
    export.add_argument("model_dir", help="output folder of `keras-transfer train`")
    export.add_argument("--output", required=True, help="base folder; writes <output>/<version>/")
    export.add_argument("--version", type=int, default=None, help="default: the next integer")

    explain = commands.add_parser("explain", help="Grad-CAM overlays or word scores")
    explain.add_argument("model_dir", help="output folder of `keras-transfer train`")
    explain.add_argument("inputs", nargs="+", help="image files, or texts for a text model")
    explain.add_argument("--output", default=None, help="default: MODEL_DIR/explain")
    explain.add_argument("--class", dest="class_name", default=None, help="default: predicted")

    commands.add_parser("backbones", help="list the registry's image backbones")

    demo = commands.add_parser(
        "demo", help="offline main job: fine-tune MiniLM on a small review set we ship"
    )
    demo.add_argument("--output", default="runs/demo", help="folder for data, model, reports")
    demo.add_argument("--epochs", type=_count, default=3)
    return parser


def _count(text):
    """argparse type: an int >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {text!r}")
    return value


def _add_training_arguments(parser, default_epochs):
    parser.add_argument(
        "--epochs",
        type=_count,
        default=default_epochs,
        help=f"epochs on a frozen backbone (default {default_epochs})",
    )
    parser.add_argument(
        "--finetune-epochs",
        type=_count,
        default=0,
        help="epochs with the top of the backbone unfrozen (default 0)",
    )
    parser.add_argument(
        "--unfreeze-top-n",
        type=_count,
        default=None,
        help="units unfrozen for fine-tuning, from the top (default all)",
    )
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default=None)
    parser.add_argument("--lr", type=float, default=None, help="learning rate of the head stage")
    parser.add_argument("--seed", type=int, default=1337)
    _add_output_arguments(parser)


def _add_output_arguments(parser):
    """--output, checkpoints, feature caching, precision: for `train image` and `train text`."""
    parser.add_argument("--output", required=True, help="folder for the model and reports")
    parser.add_argument(
        "--mixed-precision",
        choices=["bfloat16", "float16"],
        default=None,
        help="compute in 16 bits, weights in float32 (default: float32 throughout); "
        "bfloat16 for CPUs with native support (AVX512-BF16, AMX) and recent GPUs, "
        "float16 for NVIDIA GPUs",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint folder (default OUTPUT/checkpoint): every epoch is saved there and "
        "re-running the same command after a crash resumes from the last completed epoch",
    )
    parser.add_argument(
        "--no-checkpoint", action="store_true", help="do not save per-epoch checkpoints"
    )
    parser.add_argument(
        "--feature-cache",
        choices=["auto", "on", "off"],
        default="auto",
        help="train the head on backbone outputs computed once (frozen backbone): auto "
        "(default) where that is exact, on also with augmentation / dropout below the head "
        "(then inactive), off never",
    )


def _write_text(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_outputs(output, model, class_names, report=None, histories=None):
    """Write the model, class names, report and history into `output` (atomically per file)."""
    from keras_transfer.saving import save_classifier

    os.makedirs(output, exist_ok=True)
    save_classifier(model, os.path.join(output, MODEL_FILE), class_names)
    _write_text(os.path.join(output, CLASS_NAMES_FILE), json.dumps(list(class_names), indent=1))
    if report is not None:
        _write_text(os.path.join(output, "report.json"), json.dumps(report.to_dict(), indent=1))
        _write_text(os.path.join(output, "report.txt"), str(report) + "\n")
    if histories is not None:
        history = {stage: h.history for stage, h in histories.items()}
        _write_text(os.path.join(output, "history.json"), json.dumps(history, indent=1))


def load_trained(model_dir):
    """Load `model.keras` (with its class names) from a training output folder.

    Raises:
        FileNotFoundError: the folder has no `model.keras`.
    """
    from keras_transfer.saving import load_classifier

    path = os.path.join(model_dir, MODEL_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path!r} not found: pass the --output folder of `keras-transfer train`."
        )
    model, class_names = load_classifier(path)
    if class_names is None:
        with open(os.path.join(model_dir, CLASS_NAMES_FILE), encoding="utf-8") as handle:
            class_names = json.load(handle)
    return model, class_names


def _train_image(args):
    import keras

    import keras_transfer as kt

    _check_output(args.output)
    keras.utils.set_random_seed(args.seed)
    # An unknown name or an unloadable preset fails here, before the data is read.
    image_size = kt.default_image_size(args.backbone)
    if args.image_size is not None:
        image_size = (args.image_size, args.image_size)
    train_ds, val_ds, class_names = kt.image_folder_datasets(
        args.data,
        image_size=image_size,
        batch_size=args.batch_size,
        validation_split=args.validation_split,
        seed=args.seed,
    )
    model = kt.build_image_classifier(
        args.backbone,
        len(class_names),
        input_shape=(*image_size, 3),
        weights=args.weights,
        backbone_kwargs=args.backbone_kwargs,
        augmentation=None if args.no_augmentation else "default",
        mixed_precision=args.mixed_precision,
    )
    return _fit_and_write(args, model, train_ds, val_ds, class_names)


def _train_text(args):
    import keras

    import keras_transfer as kt
    from keras_transfer.checkpointing import clear_checkpoint, fit_one_pass_per_epoch
    from keras_transfer.text_classifier import count_truncated
    from keras_transfer.text_padding import pad_to_longest, without_preprocessor

    _check_output(args.output)
    keras.utils.set_random_seed(args.seed)
    freeze = args.freeze
    if freeze is not None and freeze != "backbone":
        try:
            freeze = int(freeze)
        except ValueError:
            raise ValueError(f"--freeze must be an int or 'backbone', got {freeze!r}.") from None
    train_ds, val_ds, class_names = kt.text_csv_datasets(
        args.data,
        text_column=args.text_column,
        label_column=args.label_column,
        val_path=args.val,
        validation_split=args.validation_split,
        batch_size=args.batch_size,
        seed=args.seed,
        max_rows=args.max_rows,
    )
    model = kt.build_text_classifier(
        args.preset,
        len(class_names),
        sequence_length=args.sequence_length,
        freeze=freeze,
        mixed_precision=args.mixed_precision,
    )
    truncated, total = count_truncated(model, train_ds)
    if truncated:
        limit = getattr(model.backbone, "max_sequence_length", "?")
        print(
            f"keras-transfer: warning: {truncated} of {total} training texts are longer than "
            f"--sequence-length {args.sequence_length} allows; only their first "
            f"{args.sequence_length - 2} word pieces are used. Raise --sequence-length (up to "
            f"{limit} for this encoder) to use more of them.",
            file=sys.stderr,
        )
    kt.compile_classifier(model, learning_rate=args.lr)
    class_weight = kt.class_weights(train_ds, len(class_names)) if args.class_weights else None
    if freeze == "backbone":  # the head alone: fine_tune's stage 1, with feature caching
        histories = kt.fine_tune(
            model,
            train_ds,
            val_ds,
            head_epochs=args.epochs,
            learning_rate=args.lr,
            class_weight=class_weight,
            checkpoint_dir=_checkpoint_dir(args),
            checkpoint_settings=vars(args),
            cache_features=CACHE_FEATURES[args.feature_cache],
            text_padding=TEXT_PADDING[args.padding],
        )
        return _evaluate_and_write(args, model, val_ds, class_names, histories)
    fit_data, fit_val = train_ds, val_ds
    if args.padding != "fixed":
        fit_data = pad_to_longest(model, train_ds, bucket_by_length=args.padding == "bucket")
        fit_val = None if val_ds is None else pad_to_longest(model, val_ds)
    fit_kwargs = dict(validation_data=fit_val, epochs=args.epochs, class_weight=class_weight)
    checkpoint_dir = _checkpoint_dir(args)
    with without_preprocessor(model) if args.padding != "fixed" else contextlib.nullcontext():
        if checkpoint_dir is None:  # the batches of a checkpointed run
            history = fit_one_pass_per_epoch(model, fit_data, **fit_kwargs)
        else:
            history = kt.resumable_fit(
                model, fit_data, checkpoint_dir=checkpoint_dir, settings=vars(args), **fit_kwargs
            )
    if checkpoint_dir is not None:
        clear_checkpoint(checkpoint_dir)
    return _evaluate_and_write(args, model, val_ds, class_names, {"train": history})


def _check_output(output):
    """Refuse an --output that cannot become the output folder before any training."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise FileExistsError(
            f"--output {output!r} is a file; pass a folder (it is made if missing)."
        )


def _checkpoint_dir(args):
    if args.no_checkpoint:
        return None
    return args.checkpoint or os.path.join(args.output, "checkpoint")


def _fit_and_write(args, model, train_ds, val_ds, class_names):
    import keras_transfer as kt

    histories = kt.fine_tune(
        model,
        train_ds,
        val_ds,
        head_epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        unfreeze_top_n=args.unfreeze_top_n,
        optimizer=args.optimizer,
        learning_rate=args.lr,
        checkpoint_dir=_checkpoint_dir(args),
        checkpoint_settings=vars(args),
        cache_features=CACHE_FEATURES[args.feature_cache],
    )
    return _evaluate_and_write(args, model, val_ds, class_names, histories)


def _evaluate_and_write(args, model, val_ds, class_names, histories):
    import keras_transfer as kt

    report = None
    if val_ds is not None:
        report = kt.evaluate_classifier(model, val_ds, class_names)
        print(report)
    write_outputs(args.output, model, class_names, report, histories)
    if report is not None:
        from keras_transfer.report.html import write_run_report

        write_run_report(args.output, model, class_names, report, histories, val_ds, vars(args))
    if report is None:
        print(
            f"Wrote {os.path.join(args.output, MODEL_FILE)}, {CLASS_NAMES_FILE} and "
            f"history.json to {args.output} (no validation data: no report)"
        )
    else:
        print(f"Wrote {os.path.join(args.output, MODEL_FILE)} and reports to {args.output}")
    return 0


def _demo(args):
    from keras_transfer import demo
    from keras_transfer.export import utf8_path

    utf8_path(args.output, "write the demo and its SavedModel to")  # before the training
    train, test = demo.write_review_data(os.path.join(args.output, "data"))
    print(f"Wrote the demo reviews: {train} and {test}")
    text_args = _parser().parse_args(
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
        ]
    )
    _train_text(text_args)
    from keras_transfer.export import export_saved_model

    model, class_names = load_trained(args.output)
    path = export_saved_model(model, os.path.join(args.output, "export"), class_names=class_names)
    print(f"Exported the TF Serving SavedModel to {path}")
    return 0


def _evaluate(args):
    import keras_transfer as kt
    from keras_transfer.image_data import evaluation_dataset, split_folders

    model, class_names = load_trained(args.model_dir)
    if kt.compiling.is_text_classifier(model):
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


def _explain(args):
    import keras_transfer as kt
    from keras_transfer.report import explain

    model, class_names = load_trained(args.model_dir)
    output = args.output or os.path.join(args.model_dir, "explain")
    if kt.compiling.is_text_classifier(model):
        explain.explain_texts(model, class_names, args.inputs, output, args.class_name)
        return 0
    images = [_load_image(path, tuple(model.input_shape[1:3])) for path in args.inputs]
    explain.explain_images(model, class_names, args.inputs, images, output, args.class_name)
    return 0


def _load_image(path, image_size):
    import tensorflow as tf

    from keras_transfer.image_data import decode_and_resize, decode_error_reason, printable_name

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
    from keras_transfer.export import read_class_names

    return inputs, probabilities, read_class_names(path)


def _predict(args):

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

    inputs = list(args.inputs)
    if kt.compiling.is_text_classifier(model):
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

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}.")
    from keras_transfer.image_data import printable_name

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


def _export(args):
    from keras_transfer.export import export_saved_model

    model, class_names = load_trained(args.model_dir)
    path = export_saved_model(model, args.output, version=args.version, class_names=class_names)
    print(f"Exported {path}")
    return 0


def main(argv=None):
    """Entry point of the `keras-transfer` command. Returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "backbones":
            import keras_transfer as kt

            print("\n".join(kt.list_backbones()))
            return 0
        import keras

        print(
            f"keras-transfer: Keras {keras.__version__}, {keras.backend.backend()} backend "
            "(KERAS_BACKEND chooses it)",
            file=sys.stderr,
        )
        if args.command == "train":
            return _train_image(args) if args.kind == "image" else _train_text(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "predict":
            return _predict(args)
        if args.command == "export":
            return _export(args)
        if args.command == "explain":
            return _explain(args)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as error:
        print(f"keras-transfer: error: {error}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
