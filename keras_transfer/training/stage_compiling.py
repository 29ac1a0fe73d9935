"""Compiling a model for one stage of `fine_tune`: a fresh optimizer per stage (the named
one, else the model's compiled one), its learning rate, a warmup-then-decay schedule, and
label smoothing; the loss and metrics kept."""

from __future__ import annotations

import keras

from keras_transfer.models.compiling import (
    compile_arguments,
    compile_classifier,
    is_text_classifier,
    make_optimizer,
)
from keras_transfer.models.schedules import WarmupDecay

NO_DECAY = ["bias", "gamma", "beta"]  # AdamW: biases and normalisation scales not decayed


def base_optimizer(optimizer):
    """The optimizer itself, or the one inside a `LossScaleOptimizer` (mixed_float16: Keras
    wraps the compiled optimizer in one, and wraps the inner one again at `compile`)."""
    return getattr(optimizer, "inner_optimizer", None) or optimizer


def learning_rate_value(optimizer):
    """The base learning rate (float) of a Keras optimizer: a `WarmupDecay`'s peak, another
    schedule's rate at step 0, or the constant rate."""
    optimizer = base_optimizer(optimizer)
    schedule = getattr(optimizer, "_learning_rate", None)
    if isinstance(schedule, WarmupDecay):
        return schedule.peak_learning_rate
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return float(keras.ops.convert_to_numpy(schedule(0)))
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def compile_stage(
    model, optimizer=None, learning_rate=None, *, total_steps=None, text=False, label_smoothing=None
):
    """Compile `model` for one stage with a fresh optimizer and its loss and metrics kept.

    The optimizer: the named one (`make_optimizer`), else a fresh instance of the model's
    compiled optimizer (same class and settings), else `compile_classifier`'s default.
    `learning_rate` replaces its rate; with `total_steps` the rate becomes a
    `WarmupDecay` over that many steps (linear decay for text, cosine for images).
    `label_smoothing` replaces the loss by a categorical cross-entropy with that smoothing.
    """
    if optimizer is None and not getattr(model, "compiled", False):
        compile_classifier(model)
    config = compile_arguments(model)
    if optimizer is not None:
        fresh = make_optimizer(optimizer, learning_rate, text=is_text_classifier(model))
    else:
        compiled = base_optimizer(model.optimizer)
        fresh = compiled.__class__.from_config(compiled.get_config())
        if learning_rate is not None:
            fresh = _with_learning_rate(fresh, learning_rate)
    if total_steps:
        peak = learning_rate_value(fresh)
        decay = "linear" if text else "cosine"
        fresh = _with_learning_rate(fresh, WarmupDecay(peak, int(total_steps), decay=decay))
    if getattr(fresh, "weight_decay", None):
        fresh.exclude_from_weight_decay(var_names=NO_DECAY)
    config["optimizer"] = fresh
    if label_smoothing is not None:
        if not (isinstance(label_smoothing, (int, float)) and 0 <= label_smoothing < 1):
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing!r}.")
        config["loss"] = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    model.compile(**config)


def _with_learning_rate(optimizer, learning_rate):
    config = optimizer.get_config()
    config["learning_rate"] = learning_rate
    return optimizer.__class__.from_config(config)
