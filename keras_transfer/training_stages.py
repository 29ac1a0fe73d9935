"""The plumbing under `fine_tune`: argument checks, per-stage compiling, checkpoints,
per-epoch batch orders, text padding, feature caching and the linear probe."""

from __future__ import annotations

import math
import os
import warnings

import keras

from keras_transfer.checkpointing import (
    clear_checkpoint,
    fit_one_pass_per_epoch,
    resumable_fit,
)
from keras_transfer.compiling import compile_classifier, is_text_classifier, make_optimizer
from keras_transfer.feature_cache import split_for_caching
from keras_transfer.linear_probe import fit_linear_head, linear_head_layer
from keras_transfer.schedules import WarmupDecay
from keras_transfer.text_padding import pad_to_longest, without_preprocessor

FINETUNE_MIN_STEPS = 200  # stage-2 step budget on small data ("auto")
FINETUNE_MIN_EPOCHS = 3  # BERT's fine-tuning grid: 2-4 epochs
FINETUNE_MAX_EPOCHS = 30
FINETUNE_UNKNOWN_LENGTH_EPOCHS = 10  # "auto" epochs when the data's length is unknown
NO_DECAY = ["bias", "gamma", "beta"]  # AdamW: biases and normalisation scales not decayed
# Keras augmentation layers that resample every image (an affine transform): slow inside
# a model on torch and jax.
RESAMPLING_AUGMENTATION = ("RandomRotation", "RandomZoom", "RandomTranslation", "RandomShear")


def _epochs_ok(value):
    return value == "auto" or (
        not isinstance(value, bool) and isinstance(value, int) and value >= 0
    )


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
):
    """Raise ValueError (NotADirectoryError for a `feature_store` that is a file) for the
    arguments `fine_tune` refuses (see its docstring)."""
    for name, value in (("head_epochs", head_epochs), ("finetune_epochs", finetune_epochs)):
        if not _epochs_ok(value):
            raise ValueError(f"`{name}` must be 'auto' or an int >= 0, got {value!r}.")
    if unfreeze_top_n is not None and (
        isinstance(unfreeze_top_n, bool)
        or not isinstance(unfreeze_top_n, int)
        or unfreeze_top_n < 0
    ):
        raise ValueError(f"`unfreeze_top_n` must be None or an int >= 0, got {unfreeze_top_n!r}.")
    if unfreeze_top_n == 0 and finetune_epochs:
        raise ValueError(
            "`unfreeze_top_n=0` unfreezes no part of the backbone, so the fine-tuning stage "
            "would only train the head further; pass unfreeze_top_n >= 1 (None: the whole "
            "backbone), or finetune_epochs=0."
        )
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
    if feature_store is not None and not isinstance(feature_store, (str, bytes, os.PathLike)):
        raise ValueError(
            f"`feature_store` must be a folder path (str or path-like), got {feature_store!r}."
        )
    if feature_store is not None and os.path.isfile(feature_store):
        raise NotADirectoryError(
            f"feature_store={os.fsdecode(feature_store)!r} is a file; pass a folder (it is "
            "made when missing) to keep the cached features in."
        )
    for name, data in (("train_ds", train_ds), ("val_ds", val_ds)):
        if isinstance(data, (tuple, list, dict)) or hasattr(data, "__array__"):
            raise ValueError(
                f"`{name}` must be a tf.data.Dataset of (inputs, one_hot_labels) batches "
                f"(e.g. from image_folder_datasets), got a {type(data).__name__}; for NumPy "
                "arrays pass tf.data.Dataset.from_tensor_slices((x, y)).batch(32)."
            )


def data_length(data):
    """Batches per epoch of a tf.data pipeline, a `keras.utils.PyDataset` or a torch
    `DataLoader` (None when not known, e.g. for a generator)."""
    cardinality = getattr(data, "cardinality", None)
    if callable(cardinality):
        length = int(cardinality())
        return length if length >= 0 else None
    try:
        return int(len(data))
    except (TypeError, NotImplementedError):
        return None


def finetune_budget(train_ds):
    """Stage-2 epochs of `finetune_epochs="auto"`: enough for `FINETUNE_MIN_STEPS` steps,
    at least `FINETUNE_MIN_EPOCHS`, at most `FINETUNE_MAX_EPOCHS`."""
    steps = data_length(train_ds)
    if not steps:
        return FINETUNE_UNKNOWN_LENGTH_EPOCHS
    wanted = math.ceil(FINETUNE_MIN_STEPS / steps)
    return min(max(wanted, FINETUNE_MIN_EPOCHS), FINETUNE_MAX_EPOCHS)


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
    config = keras.saving.deserialize_keras_object(model.get_compile_config())
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


def feature_split(model, cache_features, verbose, feature_store=None):
    """The `FeatureSplit` to train stage 1 on, or None (uncached), saying why when relevant;
    with `feature_store` (a folder) its features are kept there."""
    if cache_features is False:
        return None
    split = split_for_caching(model)
    if split is None and feature_store is not None:
        warnings.warn(
            f"feature_store={os.fsdecode(feature_store)!r} is not used: {model.name!r} cannot "
            "be cut into a frozen backbone and a head (features are not cached).",
            UserWarning,
            stacklevel=3,
        )
    if split is None:
        if cache_features is True:
            raise ValueError(
                f"cache_features=True, but {model.name!r} is not a chain of layers with a "
                "backbone (as build_image_classifier makes) or a BERT-style text classifier; "
                "use cache_features='auto' or False."
            )
        return None
    if verbose != 0:
        if split.exact:
            print("Caching the frozen backbone's outputs: one pass over the data, then the head.")
        else:
            shown = ", ".join(split.random_layers[:4]) + (
                ", ..." if len(split.random_layers) > 4 else ""
            )
            print(
                f"Caching the frozen part's outputs in inference mode ({shown} inactive there, "
                "as the Keras guide's training=False); cache_features=False (CLI: "
                "--feature-cache off) trains the head through them instead."
            )
    if feature_store is not None:
        split.store = os.fsdecode(feature_store)
    return split


def warn_slow_augmentation(model, stages):
    """Warn, as a run starts, when the model's augmentation will make its epochs slow.

    On torch and jax, Keras' resampling augmentation layers (`RESAMPLING_AUGMENTATION`)
    inside the model take most of each training step's time on CPU: the CLI's image
    quickstart (hymenoptera, 10 epochs) took 16 min 47 s on torch with the default
    augmentation against 47 s with `--no-augmentation`. Nothing is said on tensorflow, for
    a model without such layers (in a block named "augmentation", as
    `build_image_classifier` makes), or when no epoch runs through them.

    Args:
        model: the classifier.
        stages: the names of the stages whose epochs run through the whole model (the
            head stage when it is not cached, the fine-tuning stage), possibly empty.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow" or not stages:
        return
    try:
        block = model.get_layer("augmentation")
    except ValueError:
        return
    slow = [
        type(layer).__name__
        for layer in getattr(block, "layers", [block])
        if type(layer).__name__ in RESAMPLING_AUGMENTATION
    ]
    if slow:
        warnings.warn(
            f"On {backend}, the model's augmentation layers {', '.join(slow)} resample every "
            f"image inside the model, which makes each epoch of {' and '.join(stages)} "
            "several times slower than on tensorflow (the CLI image quickstart on torch: "
            "16 min 47 s, against 47 s without them). To avoid it: the CLI's "
            "--no-augmentation, build_image_classifier(..., augmentation=None) or "
            "augmentation=[keras.layers.RandomFlip('horizontal')], or KERAS_BACKEND=tensorflow.",
            UserWarning,
            stacklevel=3,
        )


class StageRunner:
    """Runs `fit` for `fine_tune`'s stages: checkpointed or not, text padded, cached."""

    def __init__(
        self,
        model,
        train_ds,
        val_ds,
        *,
        fit_kwargs,
        checkpoint_dir,
        settings,
        text_padding,
        verbose,
    ):
        self.model, self.train_ds, self.val_ds = model, train_ds, val_ds
        self.fit_kwargs = fit_kwargs
        self.checkpoint_dir, self.settings = checkpoint_dir, settings
        self.text_padding, self.verbose = text_padding, verbose

    def say(self, message):
        if self.verbose != 0:
            print(message)

    def _run_fit(self, trained, data, stage, **kwargs):
        kwargs = {**self.fit_kwargs, **kwargs}
        if self.checkpoint_dir is None:
            # The batches of a checkpointed run: one pass per epoch, in each epoch's order.
            return fit_one_pass_per_epoch(trained, data, **kwargs)
        return resumable_fit(
            trained,
            data,
            checkpoint_dir=self.checkpoint_dir,
            settings=self.settings,
            stage=stage,
            **kwargs,
        )

    def fit(self, trained, data, stage, validation_data, **kwargs):
        model = self.model
        if trained is not model or not self.text_padding or not is_text_classifier(model):
            return self._run_fit(trained, data, stage, validation_data=validation_data, **kwargs)
        # Text: batches padded to their longest row (or bucketed), preprocessed in tf.data.
        data = pad_to_longest(model, data, bucket_by_length=self.text_padding == "bucket")
        if validation_data is not None:
            validation_data = pad_to_longest(model, validation_data)
        with without_preprocessor(model):
            return self._run_fit(model, data, stage, validation_data=validation_data, **kwargs)

    def _early_stopping(self, patience):
        if patience is None or self.val_ds is None:
            return {}
        stop = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=patience, restore_best_weights=True
        )
        return {"callbacks": [*(self.fit_kwargs.get("callbacks") or []), stop]}

    def _cached_features(self, split):
        """Compile `split.head` as the model is compiled; the feature datasets of the data."""
        split.head.compile(**keras.saving.deserialize_keras_object(self.model.get_compile_config()))
        features = split.cache(self.train_ds, self.val_ds, progress=self.verbose not in (0, 2))
        if split.store_hit:
            self.say(f"Backbone features read from the feature store {split.store}.")
        elif split.store_hit is False:
            self.say(f"Backbone features written to the feature store {split.store}.")
        return features

    def fit_head(self, split, epochs, patience=None):
        """Stage 1 by `fit`: on cached features when `split` is given."""
        stopping = self._early_stopping(patience)
        if split is None:
            return self.fit(
                self.model, self.train_ds, "head", self.val_ds, epochs=epochs, **stopping
            )
        head = split.head
        train_features, val_features = self._cached_features(split)
        return self.fit(head, train_features, "head", val_features, epochs=epochs, **stopping)

    def fit_head_auto(self, split, fallback_epochs, patience):
        """Stage 1 of `head_epochs="auto"`: the linear probe on cached features, else
        `fallback_epochs` of `fit` with early stopping. Returns `(History, epochs)`."""
        if split is None or linear_head_layer(split.head) is None:
            self.say(
                f"The head cannot be fitted as a linear probe here; training it for up to "
                f"{fallback_epochs} epochs instead."
            )
            history = self.fit_head(split, fallback_epochs, patience)
            return history, len(history.epoch)
        head = split.head
        train_features, val_features = self._cached_features(split)
        chosen = fit_linear_head(
            head, train_features, class_weight=self.fit_kwargs.get("class_weight")
        )
        history = keras.callbacks.History()
        history.set_model(head)
        logs = head.evaluate(train_features, verbose=0, return_dict=True)
        if val_features is not None:
            val_logs = head.evaluate(val_features, verbose=0, return_dict=True)
            logs.update({f"val_{key}": value for key, value in val_logs.items()})
        history.epoch = [0]
        history.history = {key: [float(value)] for key, value in logs.items()}
        history.params = {"epochs": 1, "verbose": 0, "steps": None}
        shown = ", ".join(f"{key} {value:.4f}" for key, value in logs.items())
        how = f"{chosen['folds']}-fold cross-validated" if chosen["folds"] else "fixed"
        self.say(f"Head fitted as a linear probe (L2, C={chosen['C']:.3g}, {how}): {shown}")
        return history, 1

    def empty_history(self):
        history = keras.callbacks.History()
        history.epoch, history.history = [], {}
        return history

    def compiled_learning_rate(self):
        return learning_rate_value(self.model.optimizer)

    def steps_per_epoch(self):
        return data_length(self.train_ds)

    def fit_finetune(self, data, first_epoch, epochs, patience=None):
        return self.fit(
            self.model,
            data,
            "finetune",
            self.val_ds,
            initial_epoch=first_epoch,
            epochs=first_epoch + epochs,
            **self._early_stopping(patience),
        )

    def snapshot(self, head_history):
        """The model's weights and stage 1's best `val_loss` (inf when unknown)."""
        losses = head_history.history.get("val_loss") or [math.inf]
        return self.model.get_weights(), min(losses)

    def keep_if_better(self, snapshot, finetune_history, refreeze):
        """Put stage 1's weights back when stage 2 never had a lower `val_loss`."""
        weights, baseline = snapshot
        best = min(finetune_history.history.get("val_loss") or [math.inf])
        if best < baseline:
            return True
        self.model.set_weights(weights)
        refreeze(self.model)
        self.say(
            f"Fine-tuning did not lower the validation loss ({best:.4f} at best, "
            f"{baseline:.4f} after the head): kept the model with the frozen backbone."
        )
        return False

    def finish(self):
        from keras_transfer.processes import barrier, is_chief

        if self.checkpoint_dir is not None:
            barrier("checkpoint done")  # every process has read its last checkpoint
            if is_chief():
                clear_checkpoint(self.checkpoint_dir)
