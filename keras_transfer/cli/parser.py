"""The `keras-transfer` argument parser: every command, its options and their help."""

from __future__ import annotations

import argparse

from keras_transfer.cli.arguments import (
    SEQUENCE_LENGTH,
    WEIGHTS,
    add_output_arguments,
    add_tfds_arguments,
    add_training_arguments,
    backbone_kwargs_argument,
    count,
    epochs_argument,
    fraction,
    freeze_argument,
    positive,
)
from keras_transfer.cli.examples import EXAMPLES, sub_parser

MODEL_DIR_HELP = (
    "output folder of `keras-transfer train` or `keras-transfer tune`, or a .keras file"
)


def build_parser():
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
        "--data",
        required=True,
        help="folder with train/<class>/ (and val/<class>/), or tfds:NAME (TensorFlow Datasets)",
    )
    add_tfds_arguments(image)
    image.add_argument(
        "--backbone",
        default=None,
        help="registry name (see `keras-transfer backbones`) or hub:<preset>; required "
        "without --init-from",
    )
    image.add_argument(
        "--weights",
        default=None,
        help=f"{WEIGHTS} (default), none, or a file; not with --init-from",
    )
    image.add_argument(
        "--backbone-kwargs",
        type=backbone_kwargs_argument,
        default=None,
        help="JSON for the Keras constructor, e.g. '{\"alpha\": 0.25}'; not with --init-from",
    )
    image.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input side in pixels (default: the backbone's; --init-from: the run's)",
    )
    image.add_argument(
        "--batch-size", type=positive, default=32, help="images per batch (default %(default)s)"
    )
    image.add_argument(
        "--validation-split",
        type=fraction,
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
    add_training_arguments(image)

    text = sub_parser(kinds, "text", "text classifier on a KerasHub (BERT) preset")
    text.add_argument(
        "--data", required=True, help="training file: .csv, .tsv or .jsonl, or tfds:NAME"
    )
    add_tfds_arguments(text)
    text.add_argument("--val", default=None, help="validation / test file, same columns")
    text.add_argument(
        "--validation-split",
        type=fraction,
        default=None,
        help="fraction of --data held out for validation when there is no --val "
        "(default: none held out)",
    )
    text.add_argument(
        "--preset",
        default=None,
        help="KerasHub preset name, preset folder or Hugging Face BERT folder; required "
        "without --init-from",
    )
    text.add_argument(
        "--text-column", default="text", help="column with the texts (default %(default)s)"
    )
    text.add_argument(
        "--label-column", default="label", help="column with the labels (default %(default)s)"
    )
    text.add_argument(
        "--sequence-length",
        type=positive,
        default=None,
        help="longest input in word pieces, [CLS] and [SEP] included; longer texts are cut "
        f"(default {SEQUENCE_LENGTH}; --init-from: the run's)",
    )
    text.add_argument(
        "--padding",
        choices=["longest", "bucket", "fixed"],
        default="longest",
        help="pad each batch to its longest text (default), also group texts of similar "
        "length into batches (bucket), or pad all to --sequence-length (fixed)",
    )
    text.add_argument(
        "--pooling",
        choices=["auto", "cls", "mean"],
        default=None,
        help="what the head reads: BERT's pooled [CLS] output (cls, the default) or the mean "
        "of the token outputs over the text, as sentence-transformers pools (mean); auto: the "
        "checkpoint's own (mean for sentence-transformers folders such as MiniLM that ask for "
        "it, else cls); --init-from keeps the run's",
    )
    text.add_argument(
        "--freeze",
        type=freeze_argument,
        default=None,
        help="N: freeze the embeddings and the bottom N transformer blocks; 'backbone': the "
        "whole encoder, training the head alone (default: train everything)",
    )
    text.add_argument(
        "--batch-size", type=positive, default=32, help="texts per batch (default %(default)s)"
    )
    text.add_argument(
        "--max-rows", type=int, default=None, help="train on the first N rows of --data only"
    )
    text.add_argument(
        "--class-weights", action="store_true", help="the same as --class-weight balanced"
    )
    text.add_argument(
        "--epochs",
        type=epochs_argument,
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
    add_output_arguments(text)

    evaluate = sub_parser(commands, "evaluate", "evaluate a trained model on labelled data")
    evaluate.add_argument("model_dir", help=MODEL_DIR_HELP)
    evaluate.add_argument(
        "--data", required=True, help="image folder (its val/ part when present) or a text file"
    )
    evaluate.add_argument(
        "--batch-size", type=positive, default=32, help="examples per batch (default %(default)s)"
    )
    evaluate.add_argument(
        "--output",
        default=None,
        help="also write the report (report.json, .txt, .html), model and class names here",
    )

    predict = sub_parser(commands, "predict", "top-k classes for images or texts")
    predict.add_argument(
        "model_dir",
        help=MODEL_DIR_HELP + ", or an exported SavedModel "
        "(a version folder, or its base folder: the highest version is used)",
    )
    predict.add_argument("inputs", nargs="*", help="image files, or texts for a text model")
    predict.add_argument("--file", default=None, help="text model: a file with one text a line")
    predict.add_argument(
        "--top-k",
        type=positive,
        default=3,
        help="classes shown per input, most probable first "
        "(default 3, or all of them when there are fewer)",
    )
    predict.add_argument("--json", action="store_true", help="print JSON lines")

    export = sub_parser(
        commands, "export", "export a trained model for TF Serving, ONNX Runtime or LiteRT"
    )
    export.add_argument("model_dir", help=MODEL_DIR_HELP)
    export.add_argument("--output", required=True, help="base folder; writes <output>/<version>/")
    export.add_argument(
        "--version",
        type=positive,
        default=None,
        help="version folder to write (default: one more than the highest there)",
    )
    export.add_argument(
        "--format",
        choices=("saved_model", "onnx", "litert"),
        default="saved_model",
        help="saved_model (default: TF Serving, raw image bytes or strings in), onnx or "
        "litert (pixels or token ids in)",
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
    explain.add_argument("model_dir", help=MODEL_DIR_HELP)
    explain.add_argument("inputs", nargs="+", help="image files, or texts for a text model")
    explain.add_argument(
        "--output",
        default=None,
        help="folder for the overlays (default: explain/ in MODEL_DIR, or beside its .keras file)",
    )
    explain.add_argument(
        "--class",
        dest="class_name",
        default=None,
        help="class to explain (default: the predicted one)",
    )

    sub_parser(commands, "backbones", "list the registry's image backbones")

    from keras_transfer.cli.tune import add_tune_parser

    add_tune_parser(commands)

    demo = sub_parser(
        commands, "demo", "offline main job: fine-tune MiniLM on a small review set it writes"
    )
    demo.add_argument(
        "--output",
        default="runs/demo",
        help="folder for the data, model and reports (default %(default)s)",
    )
    demo.add_argument("--epochs", type=count, default=3, help="epochs (default %(default)s)")
    return parser
