"""The plumbing under `fine_tune`: its stages' `fit` calls with checkpoints, per-epoch
batch orders, text padding, feature caching and the linear probe."""

from __future__ import annotations

import math
import os
import warnings

import keras

from keras_transfer.data.fit_inputs import kind_of, readable_again
from keras_transfer.data.pipeline_augmentation import augmentation_in_pipeline
from keras_transfer.data.text_padding import pad_to_longest, without_preprocessor
from keras_transfer.features.feature_cache import split_for_caching
from keras_transfer.features.feature_passes import cached_feature_datasets
from keras_transfer.models.compiling import compile_arguments, is_text_classifier
from keras_transfer.models.freezing import freeze_backbone, unfreeze_backbone
from keras_transfer.training.checkpointing import clear_checkpoint, resumable_fit
from keras_transfer.training.epoch_passes import fit_one_pass_per_epoch
from keras_transfer.training.label_checks import keyed_names
from keras_transfer.training.linear_probe import fit_linear_head, linear_head_layer
from keras_transfer.training.stage_compiling import compile_stage, learning_rate_value

FINETUNE_MIN_STEPS = 200  # stage-2 step budget on small data ("auto")
FINETUNE_MIN_EPOCHS = 3  # BERT's fine-tuning grid: 2-4 epochs
FINETUNE_MAX_EPOCHS = 30
FINETUNE_UNKNOWN_LENGTH_EPOCHS = 10  # "auto" epochs when the data's length is unknown
FINETUNE_LR_FACTOR = 0.1  # images: stage 2 at 0.1x the compiled rate (1e-4 for Adam 1e-3)
AUTO_HEAD_EPOCHS = 20  # head epochs when the head cannot be fitted as a linear probe
PATIENCE_FRACTION = 0.2  # "auto" stages stop after a fifth of their epochs (at least 2)


def patience(epochs):
    """Epochs without a lower `val_loss` before an "auto" stage of `epochs` stops."""
    return max(2, math.ceil(PATIENCE_FRACTION * epochs))


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
        if trained is model and not is_text_classifier(model):
            with augmentation_in_pipeline(model, data) as data:  # torch, jax: in tf.data
                return self._run_fit(model, data, stage, validation_data=validation_data, **kwargs)
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
        split.head.compile(**compile_arguments(self.model))
        progress = self.verbose not in (0, 2)
        key = keyed_names(self.model)[0]  # ({"image": x}, y) batches of a PyDataset
        features = cached_feature_datasets(split, self.train_ds, self.val_ds, progress, key)
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
            how = f"up to {fallback_epochs} epochs"
            if self.read_once():
                how = f"1 epoch, the one pass a {kind_of(self.read_once()[0])} gives"
            self.say(f"The head cannot be fitted as a linear probe here; training it for {how}.")
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
            # A fresh test function: one traced on (batch, 1) class ids and then given
            # (batch,) ones is retraced at an unknown label rank, which the loss refuses.
            head.compile(**compile_arguments(self.model))
            val_logs = head.evaluate(val_features, verbose=0, return_dict=True)
            logs.update({f"val_{key}": value for key, value in val_logs.items()})
        history.epoch = [0]
        history.history = {key: [float(value)] for key, value in logs.items()}
        history.params = {"epochs": 1, "verbose": 0, "steps": None}
        shown = ", ".join(f"{key} {value:.4f}" for key, value in logs.items())
        how = f"{chosen['folds']}-fold cross-validated" if chosen["folds"] else "fixed"
        if chosen["searched"] < chosen["examples"]:
            how += f" on {chosen['searched']:,} of the {chosen['examples']:,} examples"
        self.say(f"Head fitted as a linear probe (L2, C={chosen['C']:.3g}, {how}): {shown}")
        return history, 1

    def read_once(self):
        """The data of this run that can be read only once (one-shot generators): one
        epoch is all it gives."""
        return [d for d in (self.train_ds, self.val_ds) if d is not None and not readable_again(d)]

    def empty_history(self):
        history = keras.callbacks.History()
        history.epoch, history.history = [], {}
        return history

    def compiled_learning_rate(self):
        return learning_rate_value(self.model.optimizer)

    def steps_per_epoch(self):
        return data_length(self.train_ds)

    def head_stage(self, split, epochs):
        """Stage 1 on the frozen backbone: `(History, epochs it counts)`; `epochs` "auto"
        (the linear probe), an int, or 0 (nothing trained)."""
        if epochs == "auto":
            epochs = 1 if self.read_once() else AUTO_HEAD_EPOCHS
            return self.fit_head_auto(split, epochs, patience(epochs))
        if not epochs:
            return self.empty_history(), 0
        return self.fit_head(split, epochs), epochs

    def finetune_stage(
        self, data, head, first_epoch, epochs, *, optimizer, learning_rate, **unfreeze
    ):
        """Stage 2: unfreeze (`unfreeze_backbone(**unfreeze)`), compile with a
        warmup-then-decay rate, fit `epochs` epochs ("auto": `finetune_budget` with early
        stopping, kept only when it beats stage 1's `head` History). Returns the History,
        or None when no epoch runs."""
        model, text = self.model, is_text_classifier(self.model)
        auto = epochs == "auto"
        if auto:
            once = self.read_once()
            epochs = finetune_budget(self.train_ds) if self.val_ds is not None and not once else 0
            if self.val_ds is None:
                self.say("No validation data: no fine-tuning stage (finetune_epochs='auto').")
            elif once:
                self.say(
                    f"The {kind_of(once[0])} was read once, by the head: no fine-tuning "
                    "stage (finetune_epochs='auto')."
                )
        if not epochs:
            return None
        before = self.snapshot(head) if auto else None
        if learning_rate is None:
            factor = 1.0 if text else FINETUNE_LR_FACTOR
            learning_rate = self.compiled_learning_rate() * factor
        unfreeze_backbone(model, **unfreeze)
        steps = self.steps_per_epoch()
        total_steps = steps * epochs if steps else None
        compile_stage(model, optimizer, learning_rate, total_steps=total_steps, text=text)
        history = self.fit(
            model,
            data,
            "finetune",
            self.val_ds,
            initial_epoch=first_epoch,
            epochs=first_epoch + epochs,
            **self._early_stopping(patience(epochs) if auto else None),
        )
        if auto:
            self.keep_if_better(before, history, freeze_backbone)
        return history

    def snapshot(self, head_history):
        """The model's weights and stage 1's best `val_loss` (inf when unknown).

        Raises:
            ValueError: `val_ds` gave no batches to stage 1 (an empty `.filter()`, ...).
        """
        if (
            self.val_ds is not None
            and head_history.epoch
            and "val_loss" not in head_history.history
        ):
            raise ValueError(
                "`val_ds` gave no batches: pass data of at least one batch, or val_ds=None "
                "to train without validation."
            )
        losses = head_history.history.get("val_loss") or [math.inf]
        return self.model.get_weights(), min(losses)

    def keep_if_better(self, snapshot, finetune_history, refreeze):
        """Put stage 1's weights back when stage 2 never had a lower `val_loss`."""
        weights, baseline = snapshot
        losses = finetune_history.history.get("val_loss") or [math.inf]
        best = min(losses)
        if best < baseline:
            epoch = finetune_history.epoch[losses.index(best)] + 1  # as Keras numbers it
            self.say(
                f"Fine-tuning lowered the validation loss to {best:.4f} ({baseline:.4f} after "
                f"the head): kept the weights of its best epoch, {epoch}."
            )
            return True
        self.model.set_weights(weights)
        refreeze(self.model)
        self.say(
            f"Fine-tuning did not lower the validation loss ({best:.4f} at best, "
            f"{baseline:.4f} after the head): kept the model with the frozen backbone."
        )
        return False

    def finish(self):
        from keras_transfer.training.processes import barrier, is_chief

        if self.checkpoint_dir is not None:
            barrier("checkpoint done")  # every process has read its last checkpoint
            if is_chief():
                clear_checkpoint(self.checkpoint_dir)
