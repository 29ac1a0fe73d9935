"""`keras-transfer train image|text`: read the data, build, fine-tune, write the run folder."""

from __future__ import annotations

import os
import sys

from keras_transfer.cli.arguments import (
    POOLING,
    SEQUENCE_LENGTH,
    WEIGHTS,
    training_settings,
    weights_argument,
)
from keras_transfer.cli.run_folder import CLASS_NAMES_FILE, MODEL_FILE, check_output, write_outputs

CACHE_FEATURES = {"auto": "auto", "on": True, "off": False}


TEXT_PADDING = {"longest": "longest", "bucket": "bucket", "fixed": None}

UNSET = (None, False)  # the values of options left out (an empty one counts as given)
# The options that build a new model, which `--init-from RUN` takes from RUN instead.
MODEL_OPTIONS = {
    "backbone": "--backbone",
    "preset": "--preset",
    "weights": "--weights",
    "backbone_kwargs": "--backbone-kwargs",
    "no_augmentation": "--no-augmentation",
    "mixed_precision": "--mixed-precision",
}


def check_model_options(args):
    """`train image` needs `--backbone`, `train text` `--preset`, unless `--init-from RUN`,
    whose model is trained on as it was saved: then the options that would build another
    model are refused rather than ignored (`--image-size`, `--pooling`, `--sequence-length`
    and `--freeze` are checked against the run's model when it is loaded).

    Raises:
        ValueError: a missing `--backbone` / `--preset`, or one of `MODEL_OPTIONS` given
            with `--init-from`.
    """
    needed = "backbone" if args.kind == "image" else "preset"
    if args.init_from is None:
        if getattr(args, needed) is None:
            raise ValueError(
                f"train {args.kind} needs {MODEL_OPTIONS[needed]} (the model to train), or "
                "--init-from RUN to train a finished run's model on."
            )
        return
    given = [flag for dest, flag in MODEL_OPTIONS.items() if getattr(args, dest, None) not in UNSET]
    if given:
        parts = "backbone, weights, augmentation" if args.kind == "image" else "preset"
        raise ValueError(
            f"--init-from {args.init_from!r} trains that run's model on as it was saved (its "
            f"{parts} and precision); drop {', '.join(given)}."
        )


def _tfds_data(args, image_size=None):
    """`kt.tfds_datasets` for `--data tfds:NAME`."""
    import keras_transfer as kt

    split = args.tfds_split
    if split is not None and "," in split:
        split = tuple(part.strip() for part in split.split(","))
        if len(split) != 2:
            raise ValueError(f"--tfds-split takes TRAIN or TRAIN,VAL, got {args.tfds_split!r}.")
    text = image_size is None  # a `train text` run: its column options name the features
    try:
        return kt.tfds_datasets(
            args.data[len("tfds:") :],
            image_size=image_size,
            split=split,
            data_dir=args.tfds_data_dir,
            batch_size=args.batch_size,
            validation_split=args.validation_split,
            seed=args.seed,
            download=not args.tfds_no_download,
            input_key=args.text_column if text and args.text_column != "text" else None,
            label_key=args.label_column if text and args.label_column != "label" else None,
        )
    except RuntimeError as error:  # the download or preparation failed: the message says why
        raise ValueError(str(error)) from error


def train_image(args):
    import keras

    import keras_transfer as kt
    from keras_transfer.cli.run_continuation import continue_run
    from keras_transfer.training.class_weighting import command_line_class_weight

    check_output(args.output, args)
    keras.utils.set_random_seed(args.seed)
    run = None
    if args.init_from is not None:  # the data is read at the run's input size
        from keras_transfer.cli.run_continuation import check_run_kind
        from keras_transfer.cli.run_folder import load_trained

        run = load_trained(args.init_from)
        check_run_kind(args.init_from, run[0], "image")
        image_size = tuple(run[0].input_shape[1:3])
    else:  # an unknown name or an unloadable preset fails here, before the data is read
        image_size = kt.default_image_size(args.backbone)
    if args.image_size is not None:
        image_size = (args.image_size, args.image_size)
    if args.data.startswith("tfds:"):
        train_ds, val_ds, class_names = _tfds_data(args, image_size)
    else:
        train_ds, val_ds, class_names = kt.image_folder_datasets(
            args.data,
            image_size=image_size,
            batch_size=args.batch_size,
            validation_split=args.validation_split,
            seed=args.seed,
        )
    if args.init_from is not None:  # train a finished run's model on
        weights = command_line_class_weight(args, train_ds, class_names)
        model, histories = continue_run(args, train_ds, val_ds, class_names, weights, run)
        return _evaluate_and_write(args, model, val_ds, class_names, histories)
    model = kt.build_image_classifier(
        args.backbone,
        len(class_names),
        input_shape=(*image_size, 3),
        weights=weights_argument(args.weights or WEIGHTS),
        backbone_kwargs=args.backbone_kwargs,
        augmentation=None if args.no_augmentation else "default",
        mixed_precision=args.mixed_precision,
    )
    return _fit_and_write(args, model, train_ds, val_ds, class_names)


def train_text(args):
    import keras

    import keras_transfer as kt
    from keras_transfer.cli.run_continuation import continue_run
    from keras_transfer.models.text_classifier import truncation_message
    from keras_transfer.training.class_weighting import command_line_class_weight

    check_output(args.output, args)
    keras.utils.set_random_seed(args.seed)
    freeze = args.freeze
    if freeze is not None and freeze != "backbone":
        try:
            freeze = int(freeze)
        except ValueError:
            raise ValueError(f"--freeze must be an int or 'backbone', got {freeze!r}.") from None
    if args.data.startswith("tfds:"):
        if args.val is not None or args.max_rows is not None:
            raise ValueError(
                "--val and --max-rows read files; with --data tfds:NAME pass --tfds-split "
                "instead, e.g. 'train[:1000],test[:500]'."
            )
        train_ds, val_ds, class_names = _tfds_data(args)
    else:
        train_ds, val_ds, class_names = kt.text_csv_datasets(
            args.data,
            text_column=args.text_column,
            label_column=args.label_column,
            val_path=args.val,
            validation_split=args.validation_split,
            batch_size=args.batch_size,
            seed=args.seed,
            max_rows=args.max_rows,
        )
    if args.init_from is not None:  # train a finished run's model on
        weights = command_line_class_weight(args, train_ds, class_names)
        model, histories = continue_run(args, train_ds, val_ds, class_names, weights)
        return _evaluate_and_write(args, model, val_ds, class_names, histories)
    model = kt.build_text_classifier(
        args.preset,
        len(class_names),
        sequence_length=args.sequence_length or SEQUENCE_LENGTH,
        freeze=freeze,
        mixed_precision=args.mixed_precision,
        pooling=args.pooling or POOLING,
    )
    message = truncation_message(model, train_ds, "--sequence-length")
    if message:
        print(f"keras-transfer: warning: {message}", file=sys.stderr)
    class_weight = command_line_class_weight(args, train_ds, class_names)
    unfreeze_top_n = None
    if isinstance(freeze, int):  # the embeddings and the bottom `freeze` blocks stay frozen
        unfreeze_top_n = len(model.backbone.transformer_layers) - freeze
    head_only = freeze == "backbone" or unfreeze_top_n == 0
    histories = kt.fine_tune(
        model,
        train_ds,
        val_ds,
        head_epochs=args.epochs if head_only else "auto",
        finetune_epochs=0 if head_only else args.epochs,
        unfreeze_top_n=unfreeze_top_n,
        learning_rate=args.lr if head_only else None,
        finetune_learning_rate=None if head_only else args.lr,
        class_weight=class_weight,
        checkpoint_dir=_checkpoint_dir(args),
        checkpoint_settings=training_settings(args),
        callbacks=_tensorboard(args),
        cache_features=CACHE_FEATURES[args.feature_cache],
        feature_store=args.feature_store,
        text_padding=TEXT_PADDING[args.padding],
    )
    return _evaluate_and_write(args, model, val_ds, class_names, histories)


def _checkpoint_dir(args):
    if args.no_checkpoint:
        return None
    return args.checkpoint or os.path.join(args.output, "checkpoint")


def _tensorboard(args):
    """`[keras.callbacks.TensorBoard(DIR)]` for `--tensorboard DIR`, else None."""
    if not getattr(args, "tensorboard", None):
        return None
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise ValueError(
            "--tensorboard needs the tensorboard package: pip install tensorboard "
            "(or keras-transfer[report])."
        )
    import keras

    return [keras.callbacks.TensorBoard(log_dir=args.tensorboard)]


def _fit_and_write(args, model, train_ds, val_ds, class_names):
    import keras_transfer as kt
    from keras_transfer.training.class_weighting import command_line_class_weight

    histories = kt.fine_tune(
        model,
        train_ds,
        val_ds,
        head_epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        unfreeze_top_n=args.unfreeze_top_n,
        optimizer=args.optimizer,
        learning_rate=args.lr,
        class_weight=command_line_class_weight(args, train_ds, class_names),
        checkpoint_dir=_checkpoint_dir(args),
        checkpoint_settings=training_settings(args),
        callbacks=_tensorboard(args),
        cache_features=CACHE_FEATURES[args.feature_cache],
        feature_store=args.feature_store,
    )
    return _evaluate_and_write(args, model, val_ds, class_names, histories)


def _evaluate_and_write(args, model, val_ds, class_names, histories):
    import keras_transfer as kt

    report = None
    if val_ds is not None:
        report = kt.evaluate_classifier(model, val_ds, class_names)
        print(report)
    from keras_transfer.training.processes import is_chief, process_count

    if not is_chief():  # several processes: the chief writes the run folder
        return 0
    write_outputs(args.output, model, class_names, report, histories)
    if report is not None and process_count() > 1:
        print(
            "No HTML report in a run of several processes (its plots run the model in one "
            f"process); in one process, `keras-transfer evaluate {args.output} --data DATA "
            "--output DIR` writes one."
        )
    elif report is not None:
        from keras_transfer.report.html import write_run_report

        settings = vars(args)
        if getattr(args, "kind", None) == "text" and settings.get("pooling") in (None, "auto"):
            from keras_transfer.models.text_pooling import MeanPooledTextClassifier

            chosen = "mean" if isinstance(model, MeanPooledTextClassifier) else "cls"
            given = settings.get("pooling")  # the report names the pooling the model has
            settings = {**settings, "pooling": chosen if given is None else f"auto ({chosen})"}
        write_run_report(args.output, model, class_names, report, histories, val_ds, settings)
    if report is None:
        print(
            f"Wrote {os.path.join(args.output, MODEL_FILE)}, {CLASS_NAMES_FILE} and "
            f"history.json to {args.output} (no validation data: no report)"
        )
    else:
        print(f"Wrote {os.path.join(args.output, MODEL_FILE)} and reports to {args.output}")
    return 0
