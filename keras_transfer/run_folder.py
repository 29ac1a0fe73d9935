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
    from keras_transfer.saving import save_classifier

    os.makedirs(output, exist_ok=True)
    save_classifier(model, os.path.join(output, MODEL_FILE), class_names)
    write_text(os.path.join(output, CLASS_NAMES_FILE), json.dumps(list(class_names), indent=1))
    if report is not None:
        write_text(os.path.join(output, "report.json"), json.dumps(report.to_dict(), indent=1))
        write_text(os.path.join(output, "report.txt"), str(report) + "\n")
    if histories is not None:
        history = {stage: h.history for stage, h in histories.items()}
        write_text(os.path.join(output, "history.json"), json.dumps(history, indent=1))


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


def check_output(output, args=None):
    """Refuse an --output that cannot become the output folder before any training."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise FileExistsError(
            f"--output {output!r} is a file; pass a folder (it is made if missing)."
        )
    if args is not None:  # a finished run there: --overwrite or --init-from
        from keras_transfer.run_continuation import check_not_finished

        check_not_finished(args)
