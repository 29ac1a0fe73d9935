"""The `keras-transfer` command line: train, evaluate and predict.

    keras-transfer train image --data DIR --backbone NAME --output DIR [options]
    keras-transfer train text --data train.csv [--val test.csv] --preset NAME_OR_DIR --output DIR
    keras-transfer evaluate MODEL_DIR --data DIR_OR_FILE
    keras-transfer predict MODEL_DIR INPUT [INPUT ...] [--top-k K]
    keras-transfer export MODEL_DIR --output EXPORT_DIR [--version N] [--format FORMAT]
    keras-transfer tune image --data DIR --backbones A,B --max-trials N --max-time S --output DIR
    keras-transfer explain MODEL_DIR INPUT [INPUT ...] [--class NAME] [--output DIR]

Training writes to the output folder: `model.keras`, `class_names.json`, `report.json`,
`report.txt`, `report.html` (plots and the top losses, self-contained) and `history.json`.
Paths are only ever opened as files, never passed to a shell.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from keras_transfer.cli_examples import EXAMPLES, sub_parser

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


def _positive(text):
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}")
    return value


def _fraction(text):
    """argparse type: a float strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}")
    return value


def _freeze(text):
    """argparse type for `train text --freeze`: an int >= 0 (as a str) or 'backbone'."""
    if text != "backbone":
        _count(text)
    return text


def _parser():
    from keras_transfer import __version__

    parser = argparse.ArgumentParser(
        prog="keras-transfer",
        description="Transfer learning with Keras 3: fine-tune pretrained models on your data.",
        epilog=EXAMPLES["main"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = sub_parser(commands, "train", "train a classifier")
    kinds = train.add_subparsers(dest="kind", required=True)
    image = sub_parser(
        kinds, "image", "image classifier on a keras.applications or KerasHub backbone"
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
    image.add_argument(
        "--batch-size", type=_positive, default=32, help="images per batch (default %(default)s)"
    )
    image.add_argument(
        "--validation-split",
        type=_fraction,
        default=None,
        help="fraction of train/ held out for validation when DATA has no val/ folder "
        "(default: none held out)",
    )
    image.add_argument(
        "--no-augmentation",
        action="store_true",
        help="no random flips, rotations and zooms while fine-tuning (the head is fitted "
        "on backbone outputs computed once, without augmentation, either way)",
    )
    _add_training_arguments(image)

    text = sub_parser(kinds, "text", "text classifier on a KerasHub (BERT) preset")
    text.add_argument("--data", required=True, help="training file: .csv, .tsv or .jsonl")
    text.add_argument("--val", default=None, help="validation / test file, same columns")
    text.add_argument(
        "--validation-split",
        type=_fraction,
        default=None,
        help="fraction of --data held out for validation when there is no --val "
        "(default: none held out)",
    )
    text.add_argument(
        "--preset",
        required=True,
        help="KerasHub preset name, preset folder or Hugging Face BERT folder",
    )
    text.add_argument(
        "--text-column", default="text", help="column with the texts (default %(default)s)"
    )
    text.add_argument(
        "--label-column", default="label", help="column with the labels (default %(default)s)"
    )
    text.add_argument(
        "--sequence-length",
        type=_positive,
        default=128,
        help="longest input in word pieces, [CLS] and [SEP] included; longer texts are cut "
        "(default %(default)s)",
    )
    text.add_argument(
        "--padding",
        choices=["longest", "bucket", "fixed"],
        default="longest",
        help="pad each batch to its longest text (default), also group texts of similar "
        "length into batches (bucket), or pad all to --sequence-length (fixed)",
    )
    text.add_argument(
        "--freeze",
        type=_freeze,
        default=None,
        help="N: freeze the embeddings and the bottom N transformer blocks; 'backbone': the "
        "whole encoder, training the head alone (default: train everything)",
    )
    text.add_argument(
        "--batch-size", type=_positive, default=32, help="texts per batch (default %(default)s)"
    )
    text.add_argument(
        "--max-rows", type=int, default=None, help="train on the first N rows of --data only"
    )
    text.add_argument(
        "--class-weights", action="store_true", help="balanced class weights for imbalanced data"
    )
    text.add_argument(
        "--epochs",
        type=_epochs,
        default="auto",
        help="fine-tuning epochs (with --freeze backbone: head epochs); default auto: "
        "a linear-probe head, then fine-tuning for at least 200 steps (3 to 30 epochs) with "
        "early stopping on the validation loss",
    )
    text.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak fine-tuning learning rate (default AdamW 5e-5, BERT's)",
    )
    text.add_argument(
        "--seed",
        type=int,
        default=1337,
        help="seed of the weights' initialisation, shuffling and dropout (default %(default)s)",
    )
    _add_output_arguments(text)

    evaluate = sub_parser(commands, "evaluate", "evaluate a trained model on labelled data")
    evaluate.add_argument("model_dir", help="output folder of `keras-transfer train`")
    evaluate.add_argument(
        "--data", required=True, help="image folder (its val/ part when present) or a text file"
    )
    evaluate.add_argument(
        "--batch-size", type=_positive, default=32, help="examples per batch (default %(default)s)"
    )
    evaluate.add_argument("--output", default=None, help="also write report.json/report.txt here")

    predict = sub_parser(commands, "predict", "top-k classes for images or texts")
    predict.add_argument(
        "model_dir",
        help="output folder of `keras-transfer train`, or an exported SavedModel "
        "(a version folder, or its base folder: the highest version is used)",
    )
    predict.add_argument("inputs", nargs="*", help="image files, or texts for a text model")
    predict.add_argument("--file", default=None, help="text model: a file with one text a line")
    predict.add_argument(
        "--top-k",
        type=_positive,
        default=3,
        help="classes shown per input, most probable first "
        "(default 3, or all of them when there are fewer)",
    )
    predict.add_argument("--json", action="store_true", help="print JSON lines")

    export = sub_parser(
        commands, "export", "export a trained model for TF Serving, ONNX Runtime or LiteRT"
    )
    export.add_argument("model_dir", help="output folder of `keras-transfer train`")
    export.add_argument("--output", required=True, help="base folder; writes <output>/<version>/")
    export.add_argument(
        "--version",
        type=_positive,
        default=None,
        help="version folder to write (default: one more than the highest there)",
    )
    export.add_argument(
        "--format",
        choices=("saved_model", "onnx", "litert"),
        default="saved_model",
        help="saved_model (default: TF Serving, raw image bytes or strings in), onnx or "
        "litert (image models, pixels in)",
    )
    export.add_argument(
        "--quantization",
        choices=("dynamic", "int8"),
        default=None,
        help="litert only: dynamic-range or full int8 (default: float32)",
    )
    export.add_argument(
        "--calibration-data",
        help="int8 only: image folder <class>/* to calibrate on, e.g. DATA/train",
    )

    explain = sub_parser(commands, "explain", "Grad-CAM overlays or word scores for inputs")
    explain.add_argument("model_dir", help="output folder of `keras-transfer train`")
    explain.add_argument("inputs", nargs="+", help="image files, or texts for a text model")
    explain.add_argument(
        "--output", default=None, help="folder for the overlays (default: MODEL_DIR/explain)"
    )
    explain.add_argument(
        "--class",
        dest="class_name",
        default=None,
        help="class to explain (default: the predicted one)",
    )

    sub_parser(commands, "backbones", "list the registry's image backbones")

    from keras_transfer.tuning_cli import add_tune_parser

    add_tune_parser(commands)

    demo = sub_parser(
        commands, "demo", "offline main job: fine-tune MiniLM on a small review set it writes"
    )
    demo.add_argument(
        "--output",
        default="runs/demo",
        help="folder for the data, model and reports (default %(default)s)",
    )
    demo.add_argument("--epochs", type=_count, default=3, help="epochs (default %(default)s)")
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


def _epochs(text):
    """argparse type: 'auto' or an int >= 0."""
    return "auto" if text == "auto" else _count(text)


def _add_training_arguments(parser):
    parser.add_argument(
        "--epochs",
        type=_epochs,
        default="auto",
        help="head epochs on a frozen backbone; default auto: the head fitted as a "
        "cross-validated linear probe on cached features",
    )
    parser.add_argument(
        "--finetune-epochs",
        type=_epochs,
        default="auto",
        help="epochs with the top of the backbone unfrozen; default auto: at least 200 "
        "steps (3 to 30 epochs) with early stopping on the validation loss, kept only if "
        "it beats the head alone; 0: none",
    )
    parser.add_argument(
        "--unfreeze-top-n",
        type=_count,
        default=None,
        help="how much of the backbone --finetune-epochs train, counted from the top, in "
        "units: the entries of the backbone's `layers` list for a CNN (as in the Keras "
        "fine-tuning guide's `base_model.layers[-N:]`), transformer blocks for an encoder; "
        "BatchNormalization stays frozen (default: the whole backbone)",
    )
    parser.add_argument(
        "--optimizer",
        choices=["sgd", "adam", "adamw"],
        default=None,
        help="optimizer of both stages (default: compile_classifier's for the model: Adam "
        "1e-3 for images)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate of head epochs trained by gradient; fine-tuning peaks at 0.3x "
        "it (default: the optimizer's, Adam 1e-3)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1337,
        help="seed of the weights' initialisation, shuffling and augmentation "
        "(default %(default)s)",
    )
    _add_output_arguments(parser)


def _add_output_arguments(parser):
    """--output, checkpoints, feature caching, precision: for `train image` and `train text`."""
    parser.add_argument("--output", required=True, help="folder for the model and reports")
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="RUN",
        help="the --output folder of a finished run: train its model on, in the stage it ended "
        "in, for --epochs (image: and/or --finetune-epochs) more epochs, the epoch count going on",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a finished run in --output"
    )
    parser.add_argument(
        "--class-weight",
        type=_json_object,
        default=None,
        metavar="JSON",
        help="loss weight per class, e.g. '{\"bees\": 2.0}' (class names or ids; classes left "
        "out get 1.0)",
    )
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
        "--tensorboard",
        default=None,
        metavar="DIR",
        help="write TensorBoard logs of every fitted epoch there (Keras' TensorBoard "
        "callback; default: none); view with `tensorboard --logdir DIR`",
    )
    parser.add_argument(
        "--devices",
        type=_positive,
        default=1,
        help="train data-parallel on N devices (jax and tensorflow; default %(default)s): "
        "the first N GPUs, or on a machine without them N virtual CPU devices (to try it "
        "out: they share the cores); --batch-size is the global batch, split over them "
        "(docs/distributed.md)",
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
    from keras_transfer.class_weighting import command_line_class_weight
    from keras_transfer.run_continuation import continue_run

    _check_output(args.output, args)
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
    if args.init_from is not None:  # train a finished run's model on
        weights = command_line_class_weight(args, train_ds, class_names)
        model, histories = continue_run(args, train_ds, val_ds, class_names, weights)
        return _evaluate_and_write(args, model, val_ds, class_names, histories)
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
    from keras_transfer.class_weighting import command_line_class_weight
    from keras_transfer.run_continuation import continue_run
    from keras_transfer.text_classifier import count_truncated

    _check_output(args.output, args)
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
    if args.init_from is not None:  # train a finished run's model on
        weights = command_line_class_weight(args, train_ds, class_names)
        model, histories = continue_run(args, train_ds, val_ds, class_names, weights)
        return _evaluate_and_write(args, model, val_ds, class_names, histories)
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
    class_weight = command_line_class_weight(args, train_ds, class_names)
    unfreeze_top_n = None
    if isinstance(freeze, int):  # the embeddings and the bottom `freeze` blocks stay frozen
        unfreeze_top_n = len(model.backbone.transformer_layers) - freeze
    head_only = freeze == "backbone" or unfreeze_top_n == 0
    histories = kt.fine_tune(
        model,
        train_ds,
        val_ds,
        head_epochs=args.epochs if head_only else "auto",
        finetune_epochs=0 if head_only else args.epochs,
        unfreeze_top_n=unfreeze_top_n,
        learning_rate=args.lr if head_only else None,
        finetune_learning_rate=None if head_only else args.lr,
        class_weight=class_weight,
        checkpoint_dir=_checkpoint_dir(args),
        checkpoint_settings=_training_settings(args),
        callbacks=_tensorboard(args),
        cache_features=CACHE_FEATURES[args.feature_cache],
        text_padding=TEXT_PADDING[args.padding],
    )
    return _evaluate_and_write(args, model, val_ds, class_names, histories)


def _check_output(output, args=None):
    """Refuse an --output that cannot become the output folder before any training."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise FileExistsError(
            f"--output {output!r} is a file; pass a folder (it is made if missing)."
        )
    if args is not None:  # a finished run there: --overwrite or --init-from
        from keras_transfer.run_continuation import check_not_finished

        check_not_finished(args)


_INPUTS = {
    "data": ("--data", "pass an existing data folder or file"),
    "val": ("--val", "pass an existing validation file"),
    "model_dir": ("MODEL_DIR", "pass the --output folder of `keras-transfer train` or an export"),
    "file": ("--file", "pass an existing text file, one text a line"),
}


def _check_inputs(args):
    """Refuse a missing input path (--data, --val, MODEL_DIR, --file) before any import."""
    for dest, (name, hint) in _INPUTS.items():
        path = getattr(args, dest, None)
        if path is not None and not os.path.exists(path):
            raise FileNotFoundError(f"{name} {path!r} not found: {hint}.")


def _checkpoint_dir(args):
    if args.no_checkpoint:
        return None
    return args.checkpoint or os.path.join(args.output, "checkpoint")


def _training_settings(args):
    """The arguments a checkpoint must match to be resumed: all but those that do not change
    the training (`--overwrite`, `--tensorboard`)."""
    return {k: v for k, v in vars(args).items() if k not in ("overwrite", "tensorboard")}


def _tensorboard(args):
    """`[keras.callbacks.TensorBoard(DIR)]` for `--tensorboard DIR`, else None."""
    if not getattr(args, "tensorboard", None):
        return None
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise ValueError(
            "--tensorboard needs the tensorboard package: pip install tensorboard "
            "(or keras-transfer[report])."
        )
    import keras

    return [keras.callbacks.TensorBoard(log_dir=args.tensorboard)]


def _fit_and_write(args, model, train_ds, val_ds, class_names):
    import keras_transfer as kt
    from keras_transfer.class_weighting import command_line_class_weight

    histories = kt.fine_tune(
        model,
        train_ds,
        val_ds,
        head_epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        unfreeze_top_n=args.unfreeze_top_n,
        optimizer=args.optimizer,
        learning_rate=args.lr,
        class_weight=command_line_class_weight(args, train_ds, class_names),
        checkpoint_dir=_checkpoint_dir(args),
        checkpoint_settings=_training_settings(args),
        callbacks=_tensorboard(args),
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
            "--overwrite",  # the demo's folder is made anew each time
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
    from keras_transfer.export_formats import calibration_images, export_model

    model, class_names = load_trained(args.model_dir)
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


def _data_parallel(devices):
    """`--devices N`: `data_parallel(N)` entered (nothing for N = 1)."""
    import contextlib

    if devices == 1:
        return contextlib.nullcontext()
    from keras_transfer.distribution import data_parallel

    run = data_parallel(devices)
    print(
        f"keras-transfer: data-parallel on {run.num_replicas} devices "
        f"({', '.join(run.devices)}): {type(run.engine).__name__}",
        file=sys.stderr,
    )
    return run


def main(argv=None):
    """Entry point of the `keras-transfer` command. Returns the exit status.

    Arguments are checked before TensorFlow, Keras or KerasHub are imported, so `--help`,
    `--version` and usage errors answer at once.
    """
    args = _parser().parse_args(argv)
    try:
        _check_inputs(args)  # before the heavy imports
        if args.command == "train":
            _check_output(args.output)
        if args.command == "backbones":
            import keras_transfer as kt

            print("\n".join(kt.list_backbones()))
            return 0
        devices = getattr(args, "devices", 1) if args.command == "train" else 1
        if devices > 1:  # before jax or TensorFlow start
            from keras_transfer.distribution import make_virtual_cpu_devices

            make_virtual_cpu_devices(devices)
        import keras

        print(
            f"keras-transfer: Keras {keras.__version__}, {keras.backend.backend()} backend "
            "(KERAS_BACKEND chooses it)",
            file=sys.stderr,
        )
        if args.command == "train":
            with _data_parallel(devices):  # the model is built and trained inside
                return _train_image(args) if args.kind == "image" else _train_text(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "tune":
            from keras_transfer.tuning_cli import run_tune_command

            return run_tune_command(args)
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
