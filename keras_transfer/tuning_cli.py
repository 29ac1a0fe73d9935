"""`keras-transfer tune image`: the command line of `tuning.tune_image_classifier`."""

from __future__ import annotations

import argparse
import json
import sys

from keras_transfer.tuning import DEFAULT_SEARCH_SPACE, tune_image_classifier
from keras_transfer.tuning_leaderboard import leaderboard_markdown


def add_tune_parser(commands):
    """Add `keras-transfer tune image ...` to the CLI's subcommands."""
    from keras_transfer.cli_examples import EXAMPLES, sub_parser

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
    image.add_argument("--max-trials", type=int, default=10, help="trials at most (default 10)")
    image.add_argument(
        "--max-time", type=float, default=None, help="seconds; no trial starts after it"
    )
    image.add_argument(
        "--output", required=True, help="folder for leaderboard.json/.md and best_model.keras"
    )
    image.add_argument(
        "--search-space",
        default=None,
        help="JSON overriding lists of values, e.g. '{\"unfreeze_top_n\": [0]}' (keys: "
        + ", ".join(DEFAULT_SEARCH_SPACE)
        + ")",
    )
    image.add_argument(
        "--backbone-kwargs",
        default=None,
        help='JSON {backbone: kwargs}, e.g. \'{"mobilenet": {"alpha": 0.25}}\'',
    )
    image.add_argument("--weights", default="imagenet", help="imagenet (default) or none")
    image.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input side in pixels (default: the backbone's)",
    )
    image.add_argument(
        "--batch-size", type=int, default=32, help="images per batch (default %(default)s)"
    )
    image.add_argument(
        "--validation-split",
        type=float,
        default=None,
        help="fraction of train/ held out when DATA has no val/ folder (default: none)",
    )
    image.add_argument(
        "--finetune-epochs",
        default="auto",
        help="fine-tuning epochs of trials with an unfreeze depth above 0 (default auto: "
        "fine_tune's step budget with early stopping)",
    )
    image.add_argument(
        "--seed",
        type=int,
        default=1337,
        help="seed of the search and the data (default %(default)s)",
    )


def run_tune_command(args):
    """Run `keras-transfer tune image` from parsed arguments; returns the exit status."""
    options = {}
    for name in ("search_space", "backbone_kwargs"):
        text = getattr(args, name)
        try:
            options[name] = json.loads(text) if text else None
        except json.JSONDecodeError as error:
            raise ValueError(f"--{name.replace('_', '-')} is not valid JSON ({error}).") from None
    result = tune_image_classifier(
        args.data,
        [name.strip() for name in args.backbones.split(",") if name.strip()],
        directory=args.output,
        max_trials=args.max_trials,
        max_time=args.max_time,
        image_size=args.image_size,
        batch_size=args.batch_size,
        validation_split=args.validation_split,
        weights=None if args.weights.lower() == "none" else args.weights,
        finetune_epochs=_finetune_epochs(args.finetune_epochs),
        seed=args.seed,
        **options,
    )
    print(leaderboard_markdown(result), end="")
    if result["best_model"] is None:  # every trial failed (their errors are printed above)
        print("keras-transfer: error: no trial finished; see the errors above.", file=sys.stderr)
        return 2
    return 0


def _finetune_epochs(text):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"--finetune-epochs must be 'auto' or an int >= 1, got {text!r}."
        ) from None
