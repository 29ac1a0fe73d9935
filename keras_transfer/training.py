"""`fine_tune`: the two-stage transfer-learning recipe on top of `model.fit`."""

from __future__ import annotations

import keras

from keras_transfer.checkpointing import (
    clear_checkpoint,
    fit_one_pass_per_epoch,
    resumable_fit,
)
from keras_transfer.class_weighting import fit_class_weight
from keras_transfer.compiling import compile_classifier, is_text_classifier
from keras_transfer.feature_cache import split_for_caching
from keras_transfer.fit_inputs import plan_for_inputs
from keras_transfer.freezing import freeze_backbone, unfreeze_backbone
from keras_transfer.text_padding import pad_to_longest, without_preprocessor

FINETUNE_LR_FACTOR = 0.1


def fine_tune(
    model,
    train_ds,
    val_ds=None,
    *,
    head_epochs,
    finetune_epochs=0,
    unfreeze_top_n=None,
    optimizer=None,
    learning_rate=None,
    finetune_learning_rate=None,
    train_batchnorm=False,
    class_weight=None,
    callbacks=None,
    checkpoint_dir=None,
    checkpoint_settings=None,
    cache_features="auto",
    text_padding="longest",
    verbose="auto",
):
    """Train the head on a frozen backbone, then fine-tune the top of the backbone.

    Stage 1 ("head"): `freeze_backbone`, `compile_classifier(optimizer, learning_rate)`,
    `fit` for `head_epochs`, on cached backbone outputs where that is exact
    (`cache_features`). Stage 2 ("finetune", only if `finetune_epochs` > 0):
    `unfreeze_backbone(top_n=unfreeze_top_n)` (BatchNorm stays frozen), recompile at
    `finetune_learning_rate`, `fit` for `finetune_epochs` more epochs (epoch numbers go on
    from stage 1). This is the recipe of the Keras transfer-learning guide.

    Each epoch is one pass over `train_ds`. Pipelines from `image_folder_datasets` and
    `text_csv_datasets` are made anew for every epoch, shuffled in an order drawn from the
    dataset's seed and the epoch number (`checkpointing.one_pass_per_epoch`): the same
    batches with or without `checkpoint_dir` and `cache_features`, on every backend.

    Args:
        model: a classifier from `build_image_classifier` or `build_text_classifier`.
        train_ds: training data for `model.fit`: a `tf.data.Dataset` of `(inputs,
            one_hot_labels)` batches, e.g. from `image_folder_datasets`.
        val_ds: validation data in the same form, or None.
        head_epochs: int >= 0, epochs of stage 1.
        finetune_epochs: int >= 0, epochs of stage 2; default 0 (head only).
        unfreeze_top_n: units unfrozen in stage 2, counted from the top (see
            `unfreeze_backbone`); None (default) unfreezes the whole backbone.
        optimizer: `"sgd"`, `"adam"` or None for the model's default (see
            `compile_classifier`: SGD lr 1e-3 momentum 0.9 for images, Adam 2e-5 for text).
            Pass a name, not an optimizer object, so that each stage gets a fresh one.
        learning_rate: stage-1 learning rate; default the optimizer's (above).
        finetune_learning_rate: stage-2 learning rate; default a tenth of stage 1's.
        train_batchnorm: bool, default False: also train BatchNorm layers in stage 2.
        class_weight: dict `{class_id: weight}` for `fit`, e.g. from `class_weights`.
        callbacks: list of Keras callbacks, used in both stages.
        checkpoint_dir: folder or None (default: no checkpoints). With a folder, every
            epoch of either stage is checkpointed there (`resumable_fit`), and calling
            `fine_tune` again with the same arguments after a crash or a kill resumes from
            the last completed epoch, in the right stage with the right trainable flags.
            The folder's checkpoint files are deleted when training completes.
        checkpoint_settings: JSON-able dict, default None: more settings of the run (e.g.
            the data folder and batch size) recorded with the checkpoint; resuming with
            other values (or other arguments above, or data of another length) raises.
        cache_features: `"auto"` (default), True or False. Stage 1 can run the frozen
            backbone once over `train_ds` and `val_ds` (one forward pass) and train the
            head on its cached outputs (see `keras_transfer.feature_cache`): the head's
            layers are the model's own, so the model is trained in place, and its
            predictions are those of the same weights. `"auto"` caches when this is exact:
            nothing below the head is random in training (no augmentation layers, no dropout
            inside the backbone); otherwise it trains uncached and prints why. True also
            caches then, with the frozen part in inference mode (no augmentation, no
            dropout: what the Keras guide's `base_model(x, training=False)` does). False
            never caches. While cached, stage-1 callbacks see the head model (input:
            features), not the whole model, and validation of features cached from
            `image_folder_datasets` / `text_csv_datasets` pipelines runs in batches of up
            to 1,024 (the same `val_*` numbers up to float noise, in fewer steps).
        text_padding: text models only: `"longest"` (default) pads each batch to its
            longest row (`keras_transfer.text_padding.pad_to_longest`; the same results as
            fixed padding up to float noise, faster on short texts), `"bucket"` also
            regroups examples into batches of similar length (faster still; other batches),
            None pads to the preprocessor's `sequence_length` (KerasHub's default).
        verbose: `fit`'s verbosity ("auto", 0, 1 or 2).

    Returns:
        dict `{"head": History, "finetune": History}` of `keras.callbacks.History` objects
        (`"finetune"` only when `finetune_epochs` > 0).

    Raises:
        ValueError: data given as arrays or tuples (not a dataset), negative epochs,
            `unfreeze_top_n=0` with fine-tuning epochs (it would unfreeze nothing), an
            optimizer object (use a name), a checkpoint folder written by a run with other
            arguments, or `cache_features=True` for a model that cannot be cut into
            backbone and head.
    """
    for name, value in (("head_epochs", head_epochs), ("finetune_epochs", finetune_epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"`{name}` must be an int >= 0, got {value!r}.")
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
            "`fine_tune` needs `optimizer` as a name ('sgd' or 'adam') so that each stage "
            "gets a fresh optimizer; use compile_classifier + model.fit for a custom one."
        )
    if text_padding not in ("longest", "bucket", None):
        raise ValueError(
            f"`text_padding` must be 'longest', 'bucket' or None, got {text_padding!r}."
        )
    if cache_features not in ("auto", True, False):
        raise ValueError(f"`cache_features` must be 'auto', True or False, got {cache_features!r}.")
    for name, data in (("train_ds", train_ds), ("val_ds", val_ds)):
        if isinstance(data, (tuple, list, dict)) or hasattr(data, "__array__"):
            raise ValueError(
                f"`{name}` must be a tf.data.Dataset of (inputs, one_hot_labels) batches "
                f"(e.g. from image_folder_datasets), got a {type(data).__name__}; for NumPy "
                "arrays pass tf.data.Dataset.from_tensor_slices((x, y)).batch(32)."
            )
    class_weight = fit_class_weight(model, class_weight, train_ds)  # checked; names adopted
    cache_features, text_padding = plan_for_inputs(  # generators, PyDatasets, DataLoaders
        model, cache_features, text_padding, train_ds, val_ds, verbose
    )
    fit_kwargs = dict(class_weight=class_weight, callbacks=callbacks, verbose=verbose)
    freeze_backbone(model)
    compile_classifier(model, optimizer, learning_rate)
    split = _feature_split(model, cache_features, verbose) if head_epochs else None
    if checkpoint_dir is not None:
        settings = dict(
            head_epochs=head_epochs,
            finetune_epochs=finetune_epochs,
            unfreeze_top_n=unfreeze_top_n,
            optimizer=optimizer,
            learning_rate=learning_rate,
            finetune_learning_rate=finetune_learning_rate,
            train_batchnorm=train_batchnorm,
            cached_features=split is not None,
            train_batches=_length(train_ds),
            val_batches=_length(val_ds),
            # The whole model in both stages (stage 1 may train the cached head model).
            model=f"{model.name}: {len(model.weights)} weights",
        )
        settings.update(checkpoint_settings or {})

        def run_fit(trained, data, stage, **kwargs):
            return resumable_fit(
                trained,
                data,
                checkpoint_dir=checkpoint_dir,
                settings=settings,
                stage=stage,
                **kwargs,
                **fit_kwargs,
            )
    else:

        def run_fit(trained, data, stage, **kwargs):
            # The batches of a checkpointed run: one pass per epoch, in each epoch's order.
            return fit_one_pass_per_epoch(trained, data, **kwargs, **fit_kwargs)

    def fit(trained, data, stage, validation_data, **kwargs):
        if trained is not model or not text_padding or not is_text_classifier(model):
            return run_fit(trained, data, stage, validation_data=validation_data, **kwargs)
        # Text: batches padded to their longest row (or bucketed), preprocessed in tf.data.
        data = pad_to_longest(model, data, bucket_by_length=text_padding == "bucket")
        if validation_data is not None:
            validation_data = pad_to_longest(model, validation_data)
        with without_preprocessor(model):
            return run_fit(model, data, stage, validation_data=validation_data, **kwargs)

    histories = {}
    if split is not None:
        head = split.head
        head.compile(**keras.saving.deserialize_keras_object(model.get_compile_config()))
        train_features, val_features = split.cache(train_ds, val_ds)
        histories["head"] = fit(
            head, train_features, "head", epochs=head_epochs, validation_data=val_features
        )
    else:
        histories["head"] = fit(model, train_ds, "head", epochs=head_epochs, validation_data=val_ds)
    if finetune_epochs:
        unfreeze_backbone(model, top_n=unfreeze_top_n, train_batchnorm=train_batchnorm)
        if finetune_learning_rate is None:
            stage1_lr = float(model.optimizer.learning_rate)
            finetune_learning_rate = stage1_lr * FINETUNE_LR_FACTOR
        compile_classifier(model, optimizer, finetune_learning_rate)
        histories["finetune"] = fit(
            model,
            train_ds,
            "finetune",
            initial_epoch=head_epochs,
            epochs=head_epochs + finetune_epochs,
            validation_data=val_ds,
        )
    if checkpoint_dir is not None:
        clear_checkpoint(checkpoint_dir)
    return histories


def _length(data):
    """Batches in a tf.data pipeline (None when not known or not a dataset)."""
    cardinality = getattr(data, "cardinality", None)
    return int(cardinality()) if callable(cardinality) else None


def _feature_split(model, cache_features, verbose):
    """The `FeatureSplit` to train stage 1 on, or None (uncached), saying why when relevant."""
    if cache_features is False:
        return None
    split = split_for_caching(model)
    if split is None:
        if cache_features is True:
            raise ValueError(
                f"cache_features=True, but {model.name!r} is not a chain of layers with a "
                "backbone (as build_image_classifier makes) or a BERT-style text classifier; "
                "use cache_features='auto' or False."
            )
        return None
    if not split.exact:
        shown = ", ".join(split.random_layers[:4]) + (
            ", ..." if len(split.random_layers) > 4 else ""
        )
        if cache_features == "auto":
            if verbose != 0:
                print(
                    f"Training the head without cached features: layers below it are random "
                    f"in training ({shown}). For the faster cached training, turn "
                    "augmentation off (augmentation=None, CLI --no-augmentation), or pass "
                    "cache_features=True (CLI --feature-cache on) to cache their "
                    "inference-mode output (no augmentation or dropout there)."
                )
            return None
        if verbose != 0:
            print(f"Caching features in inference mode ({shown} inactive).")
    elif verbose != 0:
        print("Caching the frozen backbone's outputs: one pass over the data, then the head.")
    return split
