"""What `fine_tune` settles before its stages: the arguments checked, the inputs planned
(generators, class weights, caching, text padding, MixUp / CutMix batches), and the
settings a checkpoint records."""

from __future__ import annotations

import json
import math
import numbers
import os
from typing import Any, NamedTuple

import numpy as np

from keras_transfer.data.batch_augmentation import mix_batches
from keras_transfer.data.fit_inputs import (
    check_not_arrays,
    kind_of,
    plan_for_inputs,
    readable_again,
)
from keras_transfer.models.compiling import is_text_classifier
from keras_transfer.models.freezing import backbone_units, get_backbone
from keras_transfer.training.class_weighting import fit_class_weight
from keras_transfer.training.distribution import check_distributed_fit
from keras_transfer.training.label_checks import check_batches
from keras_transfer.training.processes import check_processes, process_count
from keras_transfer.training.stages import data_length


def _is_int(value):
    """An int of Python or NumPy (any `numbers.Integral`), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def plain_int(value):
    """`value` as a Python int when it is an integer of any kind (`np.int64(3)` -> 3; the
    checkpoint's JSON settings and Keras take these), else `value` itself."""
    return int(value) if _is_int(value) else value


def _epochs_ok(value):
    return (isinstance(value, str) and value == "auto") or (_is_int(value) and value >= 0)


def check_fine_tune_arguments(
    train_ds,
    val_ds,
    *,
    head_epochs,
    finetune_epochs,
    unfreeze_top_n,
    optimizer,
    text_padding,
    cache_features,
    feature_store=None,
    learning_rate=None,
    finetune_rate=None,
    verbose="auto",
    train_batchnorm=False,
    checkpoint_settings=None,
):
    """Raise ValueError (NotADirectoryError for a `feature_store` that is a file) for the
    arguments `fine_tune` refuses (see its docstring). Integers may be NumPy's."""
    for name, value in (("head_epochs", head_epochs), ("finetune_epochs", finetune_epochs)):
        if not _epochs_ok(value):
            raise ValueError(f"`{name}` must be 'auto' or an int >= 0, got {value!r}.")
    if unfreeze_top_n is not None and not (_is_int(unfreeze_top_n) and unfreeze_top_n >= 0):
        raise ValueError(f"`unfreeze_top_n` must be None or an int >= 0, got {unfreeze_top_n!r}.")
    if unfreeze_top_n == 0 and finetune_epochs:
        raise ValueError(
            "`unfreeze_top_n=0` unfreezes no part of the backbone, so the fine-tuning stage "
            "would only train the head further; pass unfreeze_top_n >= 1 (None: the whole "
            "backbone), or finetune_epochs=0."
        )
    for name, rate in (("learning_rate", learning_rate), ("finetune_learning_rate", finetune_rate)):
        if rate is not None and not (
            isinstance(rate, numbers.Real)
            and not isinstance(rate, bool)
            and math.isfinite(rate)
            and rate > 0
        ):
            raise ValueError(f"`{name}` must be None or a positive number, got {rate!r}.")
    if optimizer is not None and not isinstance(optimizer, str):
        raise ValueError(
            "`fine_tune` needs `optimizer` as a name ('sgd', 'adam' or 'adamw') so that each "
            "stage gets a fresh optimizer; to use an optimizer object, compile the model with "
            "it (compile_classifier(model, optimizer)) and leave `optimizer` None."
        )
    if text_padding not in ("longest", "bucket", None):
        raise ValueError(
            f"`text_padding` must be 'longest', 'bucket' or None, got {text_padding!r}."
        )
    if cache_features not in ("auto", True, False):
        raise ValueError(f"`cache_features` must be 'auto', True or False, got {cache_features!r}.")
    if feature_store is not None and cache_features is False:
        raise ValueError(
            "`feature_store` keeps cached backbone features, and cache_features=False caches "
            "none: pass cache_features='auto' (CLI: --feature-cache auto), or no feature_store."
        )
    if feature_store is not None and (
        not isinstance(feature_store, (str, bytes, os.PathLike))
        or not os.fsdecode(feature_store).strip()
    ):
        raise ValueError(
            "`feature_store` must be a folder path (str or path-like, not empty; made when "
            f"missing), or None for no store; got {feature_store!r}."
        )
    if feature_store is not None and os.path.isfile(feature_store):
        raise NotADirectoryError(
            f"feature_store={os.fsdecode(feature_store)!r} is a file; pass a folder (it is "
            "made when missing) to keep the cached features in."
        )
    for name, data in (("train_ds", train_ds), ("val_ds", val_ds)):
        check_not_arrays(data, name)
    _check_run_options(verbose, train_batchnorm, checkpoint_settings)


def _check_run_options(verbose, train_batchnorm, checkpoint_settings):
    """`verbose`, `train_batchnorm` and `checkpoint_settings` (ValueError)."""
    if not (
        (isinstance(verbose, str) and verbose == "auto")
        or (_is_int(verbose) and 0 <= verbose <= 2)
        or isinstance(verbose, (bool, np.bool_))  # Keras' fit takes them (True: 1)
    ):
        raise ValueError(
            f"`verbose` must be 'auto', 0 (silent), 1 (progress bar) or 2 (a line an epoch), "
            f"got {verbose!r}."
        )
    if not isinstance(train_batchnorm, (bool, np.bool_)):
        raise ValueError(f"`train_batchnorm` must be True or False, got {train_batchnorm!r}.")
    if checkpoint_settings is None:
        return
    if not isinstance(checkpoint_settings, dict):
        raise ValueError(
            "`checkpoint_settings` must be None or a dict of JSON values, got a "
            f"{type(checkpoint_settings).__name__}."
        )
    for key, value in checkpoint_settings.items():
        try:  # state.json holds them; NaN would never equal itself on resuming
            json.dumps({key: value}, allow_nan=False, default=_numpy_scalar)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"`checkpoint_settings`[{key!r}] = {value!r} cannot be written to the "
                f"checkpoint's JSON ({error}); pass str keys and values that are str, int, "
                "finite float, bool, None (NumPy's too), or lists and dicts of them (e.g. "
                "str(value))."
            ) from None


def _numpy_scalar(value):
    """NumPy's ints, floats and bools as Python's, for `json.dumps(default=...)`."""
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def check_unfreeze_top_n(model, unfreeze_top_n):
    """Raise ValueError when `unfreeze_top_n` counts more units than `model`'s backbone has
    (`freezing.backbone_units`: its layers, or a text encoder's embeddings and blocks)."""
    if unfreeze_top_n is None:
        return
    backbone = get_backbone(model)
    units = len(backbone_units(backbone))
    if unfreeze_top_n <= units:
        return
    blocks = len(getattr(backbone, "transformer_layers", None) or [])
    what = f"{units} units (the embeddings, {blocks} blocks)" if blocks else f"{units} layers"
    raise ValueError(
        f"`unfreeze_top_n={unfreeze_top_n}` is more than the backbone {backbone.name!r} has: "
        f"{what}; pass at most {units}, or None to unfreeze the whole backbone."
    )


class RunPlan(NamedTuple):
    """The inputs of `fine_tune`'s stages.

    Attributes:
        class_weight: the checked `{class_id: weight}` dict, or None.
        cache_features: `"auto"`, True or False, as the inputs allow.
        text_padding: `"longest"`, `"bucket"` or None, as the inputs allow.
        finetune_ds: stage 2's training data (with MixUp / CutMix when asked).
        text: whether `model` is a text classifier.
    """

    class_weight: Any
    cache_features: Any
    text_padding: Any
    finetune_ds: Any
    text: bool


def _check_read_once(train_ds, val_ds, head_epochs, finetune_epochs):
    """Refuse epochs a one-shot generator cannot give: after its one pass, Keras' `fit`
    repeats the last epoch's numbers without training, or fails on the empty validation
    generator ("auto" stages take one pass: see `stages.StageRunner`).

    Raises:
        ValueError: `train_ds` or `val_ds` is read once and the epochs asked for read it
            more often.
    """
    passes = (1 if head_epochs == "auto" else head_epochs) + (
        0 if finetune_epochs == "auto" else finetune_epochs
    )
    for name, data in (("train_ds", train_ds), ("val_ds", val_ds)):
        if data is None or readable_again(data) or passes <= 1:
            continue
        raise ValueError(
            f"`{name}` is a {kind_of(data)}, read once, and head_epochs={head_epochs!r} "
            f"with finetune_epochs={finetune_epochs!r} read it {passes} times. Pass a "
            "tf.data.Dataset (e.g. tf.data.Dataset.from_generator), a keras.utils.PyDataset "
            "or a torch DataLoader, or train one pass in all (head_epochs=1, "
            "finetune_epochs=0)."
        )


def plan_run(
    model,
    train_ds,
    val_ds,
    *,
    class_weight,
    batch_augmentation,
    verbose,
    label_smoothing=None,
    **checked,
):
    """Check `fine_tune`'s arguments and plan its inputs (see `fine_tune` for the errors).

    Args:
        model, train_ds, val_ds, class_weight, batch_augmentation, verbose,
            label_smoothing: `fine_tune`'s (`train_ds` and `val_ds` finite:
            `fit_inputs.prepared_for_fine_tune` checked them).
        **checked: the keyword arguments of `check_fine_tune_arguments`
            (`head_epochs`, `finetune_epochs`, `unfreeze_top_n`, `optimizer`,
            `text_padding`, `cache_features`, `feature_store`, `learning_rate`,
            `finetune_rate`).

    Returns:
        A `RunPlan`.
    """
    check_fine_tune_arguments(train_ds, val_ds, verbose=verbose, **checked)
    _check_read_once(train_ds, val_ds, checked["head_epochs"], checked["finetune_epochs"])
    check_unfreeze_top_n(model, checked["unfreeze_top_n"])
    first = {}  # each one's first batch, read once
    for name, data in (("train_ds", train_ds), ("val_ds", val_ds)):
        first[name] = check_batches(model, data, name, label_smoothing)  # labels fit the loss
    cache_features, text_padding = checked["cache_features"], checked["text_padding"]
    check_distributed_fit(model, train_ds, val_ds)  # built in its scope; batches divide
    cache_features = check_processes(cache_features, checked["feature_store"])
    if cache_features is False and process_count() > 1:
        print(
            f"Feature caching is off in a run of {process_count()} processes: the head is "
            "trained through the frozen backbone."
        )
    # Checked (once its first batch is read), with the class names of train_ds adopted.
    class_weight = fit_class_weight(model, class_weight, train_ds, first["train_ds"])
    cache_features, text_padding = plan_for_inputs(  # generators, PyDatasets, DataLoaders
        model, cache_features, text_padding, train_ds, val_ds, verbose
    )
    text = is_text_classifier(model)
    if batch_augmentation is not None and text:
        raise ValueError("`batch_augmentation` (MixUp, CutMix) is for image models only.")
    if batch_augmentation is not None and not hasattr(train_ds, "map"):
        raise ValueError(
            "`batch_augmentation` mixes batches in tf.data; pass train_ds as a tf.data.Dataset "
            f"(e.g. tf.data.Dataset.from_generator), not a {type(train_ds).__name__}."
        )
    finetune_ds = train_ds
    if batch_augmentation is not None:
        finetune_ds = mix_batches(train_ds, batch_augmentation)
    return RunPlan(class_weight, cache_features, text_padding, finetune_ds, text)


def run_settings(model, train_ds, val_ds, plan, checkpoint_settings, **arguments):
    """The JSON-able settings a checkpoint of this run records: `arguments` (fine_tune's
    own), the planned caching, the data's lengths, the model's size and
    `checkpoint_settings` (under that key, NumPy scalars as Python's); resuming with
    others raises."""
    settings = dict(
        arguments,
        cache_features=plan.cache_features,
        train_batches=data_length(train_ds),
        val_batches=data_length(val_ds),
        # The whole model in both stages (stage 1 may train the cached head model).
        model=f"{model.name}: {len(model.weights)} weights",
    )
    if checkpoint_settings:  # the caller's, apart: they cannot replace fine_tune's own
        text = json.dumps(checkpoint_settings, allow_nan=False, default=_numpy_scalar)
        settings["checkpoint_settings"] = json.loads(text)
    return settings
