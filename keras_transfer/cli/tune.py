"""`keras-transfer tune image|text`: the command line of `tuning.image.tune_image_classifier` and
`tuning.text.tune_text_classifier`."""

from __future__ import annotations

import argparse
import json
import sys

from keras_transfer.cli.arguments import (
    fraction,
    positive,
    positive_epochs,
    seconds,
    weights_argument,
)
from keras_transfer.tuning.image import DEFAULT_SEARCH_SPACE, tune_image_classifier
from keras_transfer.tuning.leaderboard import leaderboard_markdown
from keras_transfer.tuning.text import TEXT_SEARCH_SPACE, tune_text_classifier


def add_tune_parser(commands):
    """Add `keras-transfer tune image|text ...` to the CLI's subcommands."""
    from keras_transfer.cli.examples import EXAMPLES, sub_parser

    tune = sub_parser(
        commands, "tune", "search backbones and head settings (KerasTuner), save the best model"
    )
    kinds = tune.add_subparsers(dest="kind", required=True)
    image = kinds.add_parser(
        "image",
        help="image classifiers on registry or hub: backbones",
        description="Search image classifiers on registry or hub: backbones.",
        epilog=EXAMPLES["tune"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    image.add_argument("--data", required=True, help="folder with train/<class>/ and val/<class>/")
    image.add_argument(
        "--backbones", required=True, help="comma-separated names, e.g. mobilenet_v2,resnet50"
    )
    _search_options(image, DEFAULT_SEARCH_SPACE, "images")
    image.add_argument(
        "--backbone-kwargs",
        default=None,
        help='JSON {backbone: kwargs}, e.g. \'{"mobilenet": {"alpha": 0.25}}\'',
    )
    image.add_argument(
        "--weights", type=weights_argument, default="imagenet", help="imagenet (default) or none"
    )
    image.add_argument(
        "--image-size",
        type=positive,
        default=None,
        help="input side in pixels (default: the backbone's)",
    )
    image.add_argument(
        "--validation-split",
        type=fraction,
        default=None,
        help="fraction of train/ held out when DATA has no val/ folder (default: none)",
    )
    text = kinds.add_parser(
        "text",
        help="text classifiers on BERT-style presets",
        description="Search text classifiers on BERT-style KerasHub presets or folders "
        "(frozen encoder, heads on its cached features; see docs/recipe.md).",
    )
    text.add_argument("--data", required=True, help="training file (.csv, .tsv or .jsonl)")
    text.add_argument("--val", default=None, help="validation file in the same form")
    text.add_argument(
        "--validation-split",
        type=fraction,
        default=None,
        help="fraction of --data held out when there is no --val (default: none)",
    )
    text.add_argument(
        "--presets", required=True, help="comma-separated KerasHub presets or preset folders"
    )
    _search_options(text, TEXT_SEARCH_SPACE, "texts")
    text.add_argument("--text-column", default="text", help="default %(default)s")
    text.add_argument("--label-column", default="label", help="default %(default)s")
    text.add_argument(
        "--sequence-length",
        type=positive,
        default=128,
        help="tokens per text (default %(default)s)",
    )
    text.add_argument(
        "--pooling",
        choices=["auto", "cls", "mean"],
        default="cls",
        help="cls (default), mean, or auto: each preset's own (as train text --pooling)",
    )
    text.add_argument(
        "--max-rows", type=positive, default=None, help="use only the first N rows of --data"
    )


def _search_options(parser, space, items):
    """The options `tune image` and `tune text` share."""
    parser.add_argument(
        "--max-trials", type=positive, default=10, help="trials at most (default 10)"
    )
    parser.add_argument(
        "--max-time", type=seconds, default=None, help="seconds; no trial starts after it"
    )
    parser.add_argument(
        "--output", required=True, help="folder for leaderboard.json/.md and best_model.keras"
    )
    parser.add_argument(
        "--search-space",
        default=None,
        help="JSON overriding lists of values, e.g. '{\"unfreeze_top_n\": [0]}' (keys: "
        + ", ".join(space)
        + ")",
    )
    parser.add_argument(
        "--batch-size", type=positive, default=32, help=f"{items} per batch (default %(default)s)"
    )
    parser.add_argument(
        "--finetune-epochs",
        type=positive_epochs,
        default="auto",
        help="fine-tuning epochs of trials with an unfreeze depth above 0 (default auto: "
        "fine_tune's step budget with early stopping)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1337,
        help="seed of the search and the data (default %(default)s)",
    )


def run_tune_command(args):
    """Run `keras-transfer tune image|text` from parsed arguments; returns the exit status."""
    options = {}
    names = ("search_space", "backbone_kwargs") if args.kind == "image" else ("search_space",)
    for name in names:
        text = getattr(args, name)
        try:
            options[name] = json.loads(text) if text else None
        except json.JSONDecodeError as error:
            raise ValueError(f"--{name.replace('_', '-')} is not valid JSON ({error}).") from None
    common = dict(
        directory=args.output,
        max_trials=args.max_trials,
        max_time=args.max_time,
        batch_size=args.batch_size,
        validation_split=args.validation_split,
        finetune_epochs=args.finetune_epochs,
        seed=args.seed,
        **options,
    )
    if args.kind == "image":
        result = tune_image_classifier(
            args.data,
            _names(args.backbones),
            image_size=args.image_size,
            weights=args.weights,
            **common,
        )
    else:
        result = tune_text_classifier(
            args.data,
            _names(args.presets),
            val_path=args.val,
            text_column=args.text_column,
            label_column=args.label_column,
            sequence_length=args.sequence_length,
            pooling=args.pooling,
            max_rows=args.max_rows,
            **common,
        )
    print(leaderboard_markdown(result), end="")
    if result["best_model"] is None:  # every trial failed (their errors are printed above)
        print("keras-transfer: error: no trial finished; see the errors above.", file=sys.stderr)
        return 2
    return 0


def _names(text):
    return [name.strip() for name in text.split(",") if name.strip()]
