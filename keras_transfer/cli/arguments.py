"""Argument types and the option groups that several `keras-transfer` commands share."""

from __future__ import annotations

import argparse
import json

SEQUENCE_LENGTH = 128  # train text --sequence-length, without --init-from
POOLING = "cls"  # train text --pooling, without --init-from
WEIGHTS = "imagenet"  # train image --weights, without --init-from


def json_object(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object like '{{\"alpha\": 0.25}}', got {text!r}"
        )
    return value


def backbone_kwargs_argument(text):
    """A --backbone-kwargs value: a JSON object without the keys other flags or the
    classifier set (`build_image_classifier` refuses them too, naming its arguments)."""
    value = json_object(text)
    flags = {"weights": "--weights", "input_shape": "--image-size"}
    for key in ("weights", "input_shape", "pooling", "include_top", "input_tensor"):
        if key in value:
            how = f"use {flags[key]}" if key in flags else "the classifier sets it"
            raise argparse.ArgumentTypeError(f"{key!r} cannot be set here ({how}): {text!r}")
    return value


def class_weight_argument(text):
    """A --class-weight value: "balanced", or a JSON object of weights."""
    if text.strip().lower() == "balanced":
        return "balanced"
    try:
        return json_object(text)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(
            f"expected balanced or a JSON object like '{{\"bees\": 2.0}}': {error}"
        ) from None


def weights_argument(text):
    """A --weights value as `build_image_classifier`'s `weights`: None for "none"."""
    lowered = text.lower()
    return None if lowered == "none" else "imagenet" if lowered == "imagenet" else text


def training_settings(args):
    """The arguments a checkpoint of a `train` run must match to be resumed: all but those
    that do not change the training (`--overwrite`, `--tensorboard`, `--feature-store`,
    and where it writes: `--output`, `--checkpoint`, so a moved run folder resumes), the
    defaults left unset resolved, so that naming a default (`--image-size 224` for a
    224-pixel backbone, `--weights IMAGENET`) resumes the run that left it out. An
    `--init-from` run leaves out the options its loaded model fixes (and checks): the
    input size, sequence length, pooling and frozen blocks."""
    unchanged = ("overwrite", "tensorboard", "feature_store", "output", "checkpoint")
    settings = {k: v for k, v in vars(args).items() if k not in unchanged}
    if getattr(args, "init_from", None) is not None:
        for key in ("image_size", "sequence_length", "pooling", "freeze"):
            settings.pop(key, None)
        return settings
    defaults = {"weights": WEIGHTS, "sequence_length": SEQUENCE_LENGTH, "pooling": POOLING}
    for key, default in defaults.items():
        if key in settings and settings[key] is None:
            settings[key] = default
    weights = settings.get("weights")
    if isinstance(weights, str) and weights.lower() in ("none", "imagenet"):
        settings["weights"] = weights.lower()
    if settings.get("image_size") is None and getattr(args, "backbone", None):
        import keras_transfer as kt

        settings["image_size"] = kt.default_image_size(args.backbone)[0]
    return settings


def positive(text):
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}")
    return value


def folder(text):
    """argparse type: a folder path, not empty."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must be a folder path, got an empty one")
    return text


def fraction(text):
    """argparse type: a float strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}")
    return value


def freeze_argument(text):
    """argparse type for `train text --freeze`: an int >= 0 (as a str) or 'backbone'."""
    if text != "backbone":
        count(text)
    return text


def count(text):
    """argparse type: an int >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {text!r}")
    return value


def epochs_argument(text):
    """argparse type: 'auto' or an int >= 0."""
    return "auto" if text == "auto" else count(text)


def positive_epochs(text):
    """argparse type: 'auto' or an int >= 1."""
    return "auto" if text == "auto" else positive(text)


def seconds(text):
    """argparse type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def add_tfds_arguments(parser):
    parser.add_argument(
        "--tfds-data-dir",
        default=None,
        help="with --data tfds:NAME: the folder of prepared TFDS data (default: TFDS' own)",
    )
    parser.add_argument(
        "--tfds-split",
        default=None,
        help="with --data tfds:NAME: TRAIN or TRAIN,VAL split strings, e.g. "
        "'train[:80%%],train[80%%:]' (default: train, validated on validation or test)",
    )
    parser.add_argument(
        "--tfds-no-download",
        action="store_true",
        help="with --data tfds:NAME: stop with an error when the dataset is not prepared in "
        "--tfds-data-dir, instead of downloading it",
    )


def add_training_arguments(parser):
    parser.add_argument(
        "--epochs",
        type=epochs_argument,
        default="auto",
        help="head epochs on a frozen backbone; default auto: the head fitted as a "
        "cross-validated linear probe on cached features",
    )
    parser.add_argument(
        "--finetune-epochs",
        type=epochs_argument,
        default="auto",
        help="epochs with the backbone unfrozen (--unfreeze-top-n); default auto: at least 200 "
        "steps (3 to 30 epochs) with early stopping on the validation loss, kept only if "
        "it beats the head alone; 0: none",
    )
    parser.add_argument(
        "--unfreeze-top-n",
        type=count,
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
        help="learning rate of head epochs trained by gradient; fine-tuning peaks at 0.1x "
        "it (default: the optimizer's, Adam 1e-3)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1337,
        help="seed of the weights' initialisation, shuffling and augmentation "
        "(default %(default)s)",
    )
    add_output_arguments(parser)


def add_output_arguments(parser):
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
        type=class_weight_argument,
        default=None,
        metavar="JSON|balanced",
        help="loss weight per class, e.g. '{\"bees\": 2.0}' (class names or ids; classes left "
        "out get 1.0), or balanced: n / (classes * n_class) from the training labels",
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
        type=positive,
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
    parser.add_argument(
        "--feature-store",
        metavar="DIR",
        type=folder,
        help="keep the cached backbone features in DIR (made when missing), keyed by the "
        "backbone, its weights, the input size and the data files: a later run on the same "
        "data and backbone (another head, --lr, --epochs) skips the backbone (default: none)",
    )
