"""The `keras-transfer` command line: train, evaluate and predict.

    keras-transfer train image --data DIR|tfds:NAME --backbone NAME --output DIR [options]
    keras-transfer train text --data train.csv [--val test.csv] --preset NAME_OR_DIR --output DIR
    keras-transfer evaluate MODEL_DIR --data DIR_OR_FILE
    keras-transfer predict MODEL_DIR INPUT [INPUT ...] [--top-k K]
    keras-transfer export MODEL_DIR --output EXPORT_DIR [--version N] [--format FORMAT]
    keras-transfer tune image --data DIR --backbones A,B --max-trials N --max-time S --output DIR
    keras-transfer tune text --data train.csv --val test.csv --presets A,B --output DIR
    keras-transfer explain MODEL_DIR INPUT [INPUT ...] [--class NAME] [--output DIR]

Training writes to the output folder: `model.keras`, `class_names.json`, `report.json`,
`report.txt`, `report.html` (plots and the top losses, self-contained) and `history.json`.
Paths are only ever opened as files, never passed to a shell.
"""

from __future__ import annotations

import os
import sys

from keras_transfer.cli.commands import (
    demo_command,
    evaluate_command,
    explain_command,
    export_command,
    predict_command,
)
from keras_transfer.cli.parser import build_parser
from keras_transfer.cli.run_folder import check_output
from keras_transfer.cli.start_up import device_summary, start_tensorflow_quietly
from keras_transfer.cli.train import check_model_options, train_image, train_text

_INPUTS = {
    "data": ("--data", "pass an existing data folder or file"),
    "val": ("--val", "pass an existing validation file"),
    "model_dir": (
        "MODEL_DIR",
        "pass the --output folder of `keras-transfer train` or `tune`, a .keras file or an export",
    ),
    "file": ("--file", "pass an existing text file, one text a line"),
    "init_from": ("--init-from", "pass the --output folder of a finished run, or its .keras file"),
}


def _check_inputs(args):
    """Refuse a missing input path (--data, --val, MODEL_DIR, --file) before any import."""
    for dest, (name, hint) in _INPUTS.items():
        path = getattr(args, dest, None)
        if dest == "data" and args.command == "train" and str(path).startswith("tfds:"):
            continue  # a TFDS name, not a path
        if path is not None and not os.path.exists(path):
            raise FileNotFoundError(f"{name} {path!r} not found: {hint}.")


def _tensorflow_workers():
    """True when TF_CONFIG names several tensorflow workers (then `--devices` must count
    them: `processes.join_processes` checks it)."""
    from keras_transfer.training.tf_workers import configured_workers

    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    return backend == "tensorflow" and configured_workers() > 1


def _data_parallel(devices):
    """`--devices N`: `data_parallel(N)` entered (nothing for N = 1)."""
    import contextlib

    if devices == 1:
        return contextlib.nullcontext()
    from keras_transfer.training.distribution import data_parallel

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
    args = build_parser().parse_args(argv)
    try:
        _check_inputs(args)  # before the heavy imports
        if args.command == "train":
            check_output(args.output)
            check_model_options(args)
        start_tensorflow_quietly()  # its C++ start-up lines left out
        if args.command == "backbones":
            import keras_transfer as kt

            print("\n".join(kt.list_backbones()))
            return 0
        devices = getattr(args, "devices", 1) if args.command == "train" else 1
        if devices > 1 or _tensorflow_workers():  # before jax or TensorFlow start: join
            from keras_transfer.training.processes import join_processes

            join_processes(devices)
        import keras

        print(
            f"keras-transfer: Keras {keras.__version__}, {keras.backend.backend()} backend "
            f"(KERAS_BACKEND chooses it) on {device_summary()}",
            file=sys.stderr,
        )
        if args.command == "train":
            with _data_parallel(devices):  # the model is built and trained inside
                return train_image(args) if args.kind == "image" else train_text(args)
        if args.command == "demo":
            return demo_command(args)
        if args.command == "tune":
            from keras_transfer.cli.tune import run_tune_command

            return run_tune_command(args)
        if args.command == "evaluate":
            return evaluate_command(args)
        if args.command == "predict":
            return predict_command(args)
        if args.command == "export":
            return export_command(args)
        if args.command == "explain":
            return explain_command(args)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as error:
        print(f"keras-transfer: error: {error}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
