"""What `fine_tune` settles before its stages: the arguments checked, the inputs planned
(generators, class weights, caching, text padding, MixUp / CutMix batches), and the
settings a checkpoint records."""

from __future__ import annotations

from typing import Any, NamedTuple

from keras_transfer.batch_augmentation import mix_batches
from keras_transfer.class_weighting import fit_class_weight
from keras_transfer.compiling import is_text_classifier
from keras_transfer.distribution import check_distributed_fit
from keras_transfer.fit_inputs import plan_for_inputs
from keras_transfer.processes import check_processes, process_count
from keras_transfer.training_stages import check_fine_tune_arguments, data_length


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


def plan_run(model, train_ds, val_ds, *, class_weight, batch_augmentation, verbose, **checked):
    """Check `fine_tune`'s arguments and plan its inputs (see `fine_tune` for the errors).

    Args:
        model, train_ds, val_ds, class_weight, batch_augmentation, verbose: `fine_tune`'s.
        **checked: the keyword arguments of `training_stages.check_fine_tune_arguments`
            (`head_epochs`, `finetune_epochs`, `unfreeze_top_n`, `optimizer`,
            `text_padding`, `cache_features`, `feature_store`, `learning_rate`,
            `finetune_rate`).

    Returns:
        A `RunPlan`.
    """
    check_fine_tune_arguments(train_ds, val_ds, **checked)
    cache_features, text_padding = checked["cache_features"], checked["text_padding"]
    check_distributed_fit(model, train_ds, val_ds)  # built in its scope; batches divide
    cache_features = check_processes(cache_features, checked["feature_store"])
    if cache_features is False and process_count() > 1:
        print(
            f"Feature caching is off in a run of {process_count()} processes: the head is "
            "trained through the frozen backbone."
        )
    class_weight = fit_class_weight(model, class_weight, train_ds)  # checked; names adopted
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
    `checkpoint_settings`; resuming with others raises."""
    settings = dict(
        arguments,
        cache_features=plan.cache_features,
        train_batches=data_length(train_ds),
        val_batches=data_length(val_ds),
        # The whole model in both stages (stage 1 may train the cached head model).
        model=f"{model.name}: {len(model.weights)} weights",
    )
    settings.update(checkpoint_settings or {})
    return settings
