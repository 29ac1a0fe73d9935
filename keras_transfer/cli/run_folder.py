"""The output folder of `keras-transfer train`: the model, class names and reports written
there, read back by `evaluate`, `predict`, `export`, `explain` and `--init-from`."""

from __future__ import annotations

import json
import os

MODEL_FILE = "model.keras"
CLASS_NAMES_FILE = "class_names.json"


def write_text(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_outputs(output, model, class_names, report=None, histories=None):
    """Write the model, class names, report and history into `output` (atomically per file)."""
    from keras_transfer.models.saving import save_classifier

    os.makedirs(output, exist_ok=True)
    save_classifier(model, os.path.join(output, MODEL_FILE), class_names)
    write_text(os.path.join(output, CLASS_NAMES_FILE), json.dumps(list(class_names), indent=1))
    if report is not None:
        write_text(os.path.join(output, "report.json"), json.dumps(report.to_dict(), indent=1))
        write_text(os.path.join(output, "report.txt"), str(report) + "\n")
    if histories is not None:
        history = {stage: h.history for stage, h in histories.items()}
        write_text(os.path.join(output, "history.json"), json.dumps(history, indent=1))


def trained_model_path(model_dir):
    """The `.keras` file that `model_dir` names: the file itself, the `model.keras` of a
    `keras-transfer train` folder, or the `best_model.keras` of a `keras-transfer tune`
    folder.

    Raises:
        FileNotFoundError: none of these exists.
        ValueError: the folder holds both, so which one is meant is not clear.
    """
    from keras_transfer.tuning.leaderboard import BEST_MODEL

    if os.path.isfile(model_dir) and str(model_dir).endswith(".keras"):
        return model_dir
    found = [
        os.path.join(model_dir, name)
        for name in (MODEL_FILE, BEST_MODEL)
        if os.path.isfile(os.path.join(model_dir, name))
    ]
    if len(found) == 2:
        raise ValueError(
            f"{os.fsdecode(model_dir)!r} holds both {MODEL_FILE!r} (keras-transfer train) and "
            f"{BEST_MODEL!r} (keras-transfer tune): pass the .keras file you mean."
        )
    if found:
        return found[0]
    import glob

    exported = [
        path
        for pattern in ("model.onnx", "model.tflite", "*/model.onnx", "*/model.tflite")
        for path in glob.glob(os.path.join(glob.escape(os.fsdecode(model_dir)), pattern))
    ]
    hint = (
        f" {exported[0]!r} is an ONNX / LiteRT export: run it in its own runtime "
        "(keras_transfer.export.runtimes, docs/serving.md)."
        if exported
        else ""
    )
    raise FileNotFoundError(
        f"No {MODEL_FILE!r} (or {BEST_MODEL!r}) in {os.fsdecode(model_dir)!r}: pass the "
        "--output folder of `keras-transfer train` or `keras-transfer tune`, or a .keras file."
        + hint
    )


def load_trained(model_dir):
    """Load a trained model and its class names (see `trained_model_path` for what
    `model_dir` may be); the class names come from the file, else from
    `class_names.json` beside it.

    Raises:
        FileNotFoundError: no model there, or a model saved without class names and no
            `class_names.json` beside it.
        ValueError: a `class_names.json` that is not one name per output of the model.
    """
    from keras_transfer.models.saving import load_classifier

    path = trained_model_path(model_dir)
    model, class_names = load_classifier(path)
    if class_names is None:
        names_file = os.path.join(os.path.dirname(path), CLASS_NAMES_FILE)
        if not os.path.isfile(names_file):
            raise FileNotFoundError(
                f"{path!r} was saved without class names and {names_file!r} is missing: "
                "save it with keras_transfer.save_classifier(model, path, class_names)."
            )
        class_names = _read_class_names(names_file, model)
    return model, class_names


def _read_class_names(path, model):
    """`class_names.json`: a list of str, one per output of `model` (ValueError naming
    the file otherwise)."""
    from keras_transfer.models.class_names import attach_class_names

    try:
        with open(path, encoding="utf-8") as handle:
            names = json.load(handle)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("it must be a JSON list of class names (strings)")
        attach_class_names(model, names)  # one name per output, none twice
    except ValueError as error:  # JSON errors included
        raise ValueError(
            f"{path!r} does not give the model's class names: {error}. Write the list the "
            "data functions return, one name per output."
        ) from None
    return names


def check_output(output, args=None):
    """Refuse an --output that cannot become the output folder before any training: a
    file, a `keras-transfer tune` folder, or (with `args`) a finished run that neither
    `--overwrite` nor `--init-from` allows replacing.

    Raises:
        FileExistsError: any of these.
    """
    from keras_transfer.tuning.leaderboard import BEST_MODEL

    if os.path.exists(output) and not os.path.isdir(output):
        raise FileExistsError(
            f"--output {output!r} is a file; pass a folder (it is made if missing)."
        )
    if os.path.isfile(os.path.join(output, BEST_MODEL)):  # its MODEL_FILE would sit beside
        raise FileExistsError(
            f"--output {output!r} is a `keras-transfer tune` folder (it holds {BEST_MODEL}); "
            "pass another --output (--init-from it trains its best model on)."
        )
    if args is not None:  # a finished run there: --overwrite or --init-from
        check_not_finished(args)


def check_not_finished(args):
    """Refuse to train into an `--output` that holds a finished run, unless `--overwrite`
    (or `--init-from` that same folder, which continues it).

    Raises:
        FileExistsError: `--output` holds `model.keras` and neither flag allows replacing it.
    """
    model_file = os.path.join(args.output, MODEL_FILE)
    continues = args.init_from is not None and os.path.realpath(args.init_from) == os.path.realpath(
        args.output
    )
    if os.path.isfile(model_file) and not args.overwrite and not continues:
        raise FileExistsError(
            f"{args.output!r} holds a finished run ({model_file}). Pass --overwrite to replace "
            f"it, --init-from {args.output} to train it on, or another --output."
        )
