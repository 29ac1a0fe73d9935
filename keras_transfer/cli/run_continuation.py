"""Continue a finished `keras-transfer train` run: `--init-from RUN`, and `--overwrite`.

`continue_run` loads `RUN/model.keras` (its weights and its layers' trainable flags, so the
stage it ended in) and trains it on for more epochs, the epoch numbers going on from
`RUN/history.json` (each epoch's shuffling is drawn from the seed and that number, so the
continued epochs see new orders, as a longer run would). The optimizer starts afresh (its
state is not saved with the model). In Python, the same is
`model, names = load_classifier(path)`, `compile_classifier(model, ...)`, then
`resumable_fit(model, data, initial_epoch=done, epochs=done + more, ...)` or `model.fit`.
"""

from __future__ import annotations

import contextlib
import json
import os
import types

HISTORY_FILE = "history.json"


def check_run_kind(run_dir, model, kind):
    """Refuse to continue a text run with `train image` or an image run with `train text`.

    Raises:
        ValueError: `model` is not of `kind` ("image" or "text").
    """
    from keras_transfer.models.compiling import is_text_classifier

    run_kind = "text" if is_text_classifier(model) else "image"
    if run_kind != kind:
        raise ValueError(
            f"--init-from {run_dir!r} holds {'an' if run_kind == 'image' else 'a'} {run_kind} "
            f"classifier; continue it with "
            f"`keras-transfer train {run_kind}` (and {run_kind} data)."
        )


def previous_run(run_dir, class_names, loaded=None, kind=None):
    """`(model, history)` of a finished run folder, checked against the data's classes
    and against `kind` ("image" or "text"; None: not checked) (`loaded`:
    `load_trained(run_dir)` when already called).

    Raises:
        FileNotFoundError: no `model.keras` in `run_dir`.
        ValueError: the run's classes differ from `class_names`, or its model is not of
            `kind`.
    """
    from keras_transfer.cli.run_folder import load_trained

    model, run_names = loaded or load_trained(run_dir)
    if kind is not None:
        check_run_kind(run_dir, model, kind)
    if list(run_names) != list(class_names):
        raise ValueError(
            f"--init-from {run_dir!r} was trained on the classes {run_names}, but the data has "
            f"{list(class_names)}; continue it on data with the same classes."
        )
    history = {}
    folder = os.path.dirname(run_dir) if os.path.isfile(run_dir) else run_dir  # RUN/model.keras
    path = os.path.join(folder, HISTORY_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            history = json.load(handle)
    return model, history


def _epochs(history, stage):
    values = history.get(stage) or {}
    return max((len(v) for v in values.values()), default=0)


def _fit(model, data, val, stage, first, last, args, class_weight, settings):
    from keras_transfer.data.pipeline_augmentation import augmentation_in_pipeline
    from keras_transfer.data.text_padding import pad_to_longest, without_preprocessor
    from keras_transfer.models.compiling import is_text_classifier
    from keras_transfer.training.checkpointing import resumable_fit
    from keras_transfer.training.epoch_passes import fit_one_pass_per_epoch

    padded = is_text_classifier(model) and getattr(args, "padding", "fixed") != "fixed"
    if padded:
        data = pad_to_longest(model, data, bucket_by_length=args.padding == "bucket")
        val = None if val is None else pad_to_longest(model, val)
    kwargs = dict(validation_data=val, initial_epoch=first, epochs=last, class_weight=class_weight)
    moved = contextlib.nullcontext(data) if padded else augmentation_in_pipeline(model, data)
    with without_preprocessor(model) if padded else contextlib.nullcontext(), moved as data:
        if _checkpoint_dir(args) is None:
            return fit_one_pass_per_epoch(model, data, **kwargs)
        return resumable_fit(
            model,
            data,
            checkpoint_dir=_checkpoint_dir(args),
            settings=settings,
            stage=stage,
            **kwargs,
        )


def _checkpoint_dir(args):
    if args.no_checkpoint:
        return None
    return args.checkpoint or os.path.join(args.output, "checkpoint")


def _check_text_options(args, model):
    """Refuse `train text` options that would change the model `--init-from` continues.

    Raises:
        ValueError: `--freeze`, or a `--pooling` / `--sequence-length` other than the run's.
    """
    from keras_transfer.models.text_pooling import MeanPooledTextClassifier

    run = f"--init-from {args.init_from!r}"
    if args.freeze is not None:
        raise ValueError(
            f"{run} trains the run's model on with its own frozen and trainable layers; "
            f"drop --freeze {args.freeze} (or train a new run without --init-from)."
        )
    pooling = "mean" if isinstance(model, MeanPooledTextClassifier) else "cls"
    if args.pooling not in (None, "auto", pooling):
        raise ValueError(
            f"{run} was trained with --pooling {pooling}, and a continued run keeps it; "
            f"drop --pooling {args.pooling}."
        )
    length = model.preprocessor.sequence_length
    if args.sequence_length not in (None, length):
        raise ValueError(
            f"{run} was trained with --sequence-length {length}, and a continued run keeps "
            f"it; drop --sequence-length {args.sequence_length}."
        )


def continue_run(args, train_ds, val_ds, class_names, class_weight=None, loaded=None):
    """Train the model of `args.init_from` on for more epochs, in the stage it ended in.

    Image runs that ended in the head stage train the head for `--epochs` more epochs (none
    for "auto": the head is already fitted), then fine-tune for `--finetune-epochs` (the
    backbone unfrozen as `fine_tune` does it, at `FINETUNE_LR_FACTOR` times the learning
    rate; "auto": `fine_tune`'s step budget); runs that reached fine-tuning go on
    fine-tuning for `--finetune-epochs`. Text runs train for `--epochs` more epochs ("auto":
    the step budget) with the loaded trainable flags. `loaded`: `load_trained(RUN)` when
    the caller has already read the run (else it is read here).

    Returns:
        `(model, histories)`: `histories` maps each stage to an object with `.history`,
        the run's earlier epochs followed by the new ones.

    Raises:
        ValueError: a run that reached fine-tuning continued without `--finetune-epochs`,
            the run's classes differ from the data's, (images) its input size from
            `--image-size`, or (text) `--freeze`, `--pooling` or `--sequence-length` would
            change its model.
    """
    from keras_transfer.models.compiling import compile_classifier
    from keras_transfer.models.freezing import unfreeze_backbone
    from keras_transfer.training.checkpointing import clear_checkpoint
    from keras_transfer.training.stage_compiling import learning_rate_value
    from keras_transfer.training.stages import FINETUNE_LR_FACTOR, finetune_budget

    model, history = previous_run(args.init_from, class_names, loaded, args.kind)
    if args.kind == "image":
        size, data_size = tuple(model.input_shape[1:3]), tuple(train_ds.element_spec[0].shape[1:3])
        if size != data_size:
            raise ValueError(
                f"--init-from {args.init_from!r} takes {size[0]}x{size[1]} images, but the data "
                f"is read at {data_size[0]}x{data_size[1]}; drop --image-size (the run's size "
                "is the default)."
            )
    else:
        _check_text_options(args, model)
    done = sum(_epochs(history, stage) for stage in history)
    optimizer = getattr(args, "optimizer", None)
    finetune_epochs = getattr(args, "finetune_epochs", 0)
    if finetune_epochs == "auto":  # the default recipe's budget (no early stopping here)
        finetune_epochs = finetune_budget(train_ds)
    from keras_transfer.cli.arguments import training_settings

    settings = {**training_settings(args), "epochs_before": done}  # every stage of this run
    new = {}
    if args.kind == "text":
        stage = next(reversed(history), "train")  # the stage it ended in
        compile_classifier(model, learning_rate=args.lr)
        more = finetune_budget(train_ds) if args.epochs == "auto" else args.epochs
        new[stage] = _fit(
            model, train_ds, val_ds, stage, done, done + more, args, class_weight, settings
        )
    else:
        head_epochs = 0 if args.epochs == "auto" else args.epochs  # the head is fitted
        if _epochs(history, "finetune"):
            if not finetune_epochs:
                raise ValueError(
                    f"--init-from {args.init_from!r} ended in the fine-tuning stage; pass "
                    "--finetune-epochs N to fine-tune it for N more epochs."
                )
            print(f"Continuing the fine-tuning of {args.init_from} after epoch {done}.")
            head_epochs = 0
        if head_epochs:
            compile_classifier(model, optimizer, args.lr)
            new["head"] = _fit(
                model,
                train_ds,
                val_ds,
                "head",
                done,
                done + head_epochs,
                args,
                class_weight,
                settings,
            )
            done += head_epochs
        if finetune_epochs:
            if not _epochs(history, "finetune"):
                unfreeze_backbone(model, top_n=args.unfreeze_top_n)
            compile_classifier(model, optimizer, args.lr)
            learning_rate = learning_rate_value(model.optimizer) * FINETUNE_LR_FACTOR
            compile_classifier(model, optimizer, learning_rate)
            new["finetune"] = _fit(
                model,
                train_ds,
                val_ds,
                "finetune",
                done,
                done + finetune_epochs,
                args,
                class_weight,
                settings,
            )
    if _checkpoint_dir(args) is not None:
        clear_checkpoint(_checkpoint_dir(args))
    merged = {}
    for stage in dict.fromkeys([*history, *new]):
        values = {key: list(v) for key, v in (history.get(stage) or {}).items()}
        for key, v in (new[stage].history if stage in new else {}).items():
            values.setdefault(key, []).extend(v)
        merged[stage] = types.SimpleNamespace(history=values)
    return model, merged
