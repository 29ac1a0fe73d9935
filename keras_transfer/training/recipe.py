"""`fine_tune`: the two-stage transfer-learning recipe on top of `model.fit`.

1. Freeze the backbone and fit the head: by default a converged linear probe on cached
   backbone features (`linear_probe.fit_linear_head`), or `head_epochs` epochs of `fit`.
2. Unfreeze the top of the backbone (BatchNorm stays frozen) and fine-tune the whole model
   with a warmup-then-decay learning rate (`schedules.WarmupDecay`); by default for a step
   budget, with early stopping on the validation loss, and kept only when it beats stage 1.
The plumbing is beside it: argument checks and input plans in `fine_tune_setup`, each
stage's compiling in `stage_compiling`, checkpoints, per-epoch batch orders, text padding
and caching in `stages`, augmentation in `tf.data` on torch and jax in
`pipeline_augmentation`.
"""

from __future__ import annotations

from keras_transfer.data.fit_inputs import prepared_for_fine_tune
from keras_transfer.data.pipeline_augmentation import warn_slow_augmentation
from keras_transfer.models.compiling import compile_arguments, compile_classifier
from keras_transfer.models.freezing import freeze_backbone
from keras_transfer.training.fine_tune_setup import plain_int, plan_run, run_settings
from keras_transfer.training.label_checks import keyed_batches
from keras_transfer.training.model_state import restored_on_error
from keras_transfer.training.processes import own_sharding
from keras_transfer.training.stage_compiling import compile_stage, learning_rate_value
from keras_transfer.training.stages import StageRunner, feature_split


def fine_tune(
    model,
    train_ds,
    val_ds=None,
    *,
    head_epochs="auto",
    finetune_epochs="auto",
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
    feature_store=None,
    text_padding="longest",
    label_smoothing=None,
    batch_augmentation=None,
    verbose="auto",
):
    """Fit the head on a frozen backbone, then fine-tune the top of the backbone.

    Stage 1 ("head"): `freeze_backbone`, then with `head_epochs="auto"` (default) the
    head's Dense layer is fitted to convergence as an L2 logistic regression on the cached
    backbone features, its strength picked by cross-validation on the training data (the
    tuned linear probe; `keras_transfer.training.linear_probe`); with an int, `fit` for that many
    epochs with the model's compiled optimizer (on cached features where possible).

    Stage 2 ("finetune"): `unfreeze_backbone(top_n=unfreeze_top_n)` (BatchNorm stays
    frozen) and `fit` with the compiled optimizer's class and settings (a fresh one), its
    learning rate warmed up linearly over the first 10 % of the steps and then decayed to 0
    (cosine for images, linear for text: BERT's recipe; `schedules.WarmupDecay`). With
    `finetune_epochs="auto"` (default) it runs when validation data is given: at least
    `max(3, ceil(200 / steps_per_epoch))` epochs (at most 30), early stopping after a
    fifth of them (at least 2) without a lower `val_loss`, the best epoch's weights
    restored, and the stage-1 model kept instead when stage 2 never beats its `val_loss`.
    Epoch numbers go on from stage 1 (a linear probe counts as one epoch). The model is
    left compiled as it was given (a fresh optimizer).

    When `fine_tune` raises (a callback's error, a `KeyboardInterrupt`, bad data), every
    layer's `trainable` flag and the model's compiled state (the same optimizer object, the
    loss and metrics; not compiled when it was not) are put back as they were before the
    call, then the exception goes on unchanged (`keras_transfer.training.model_state`); the weights
    stay as trained so far.

    On several devices, build the model and call `fine_tune` inside `data_parallel()` (or
    Keras' own `keras.distribution.set_distribution` on jax, `strategy.scope()` on
    tensorflow); the batches of `train_ds` are then global batches, split over the devices.

    On torch and jax, the model's augmentation block (Keras' random image layers, as
    `build_image_classifier` makes it) runs in `train_ds`'s `tf.data` pipeline while
    `fine_tune` trains, beside the training steps, instead of inside the model, where those
    backends are slow (`keras_transfer.data.pipeline_augmentation`); it is back in the model
    when `fine_tune` returns.

    Each epoch is one pass over `train_ds`. Pipelines from `image_folder_datasets` and
    `text_csv_datasets` are made anew for every epoch, shuffled in an order drawn from the
    dataset's seed and the epoch number: the same batches with or without `checkpoint_dir`
    and `cache_features`, on every backend.

    Args:
        model: a classifier from `build_image_classifier` or `build_text_classifier`,
            compiled (the factories compile it) or not (then `compile_classifier`'s
            defaults: Adam 1e-3 for images, AdamW 5e-5 for text).
        train_ds: training data for `model.fit`: a `tf.data.Dataset` of `(inputs,
            one_hot_labels)` batches, e.g. from `image_folder_datasets`.
        val_ds: validation data in the same form, or None (then no early stopping, and
            `finetune_epochs="auto"` skips stage 2).
        head_epochs: `"auto"` (default: the linear probe above; 20 epochs of `fit` with
            early stopping when the features cannot be cached or the head is not one Dense
            layer) or an int >= 0 (here and below, NumPy ints too).
        finetune_epochs: `"auto"` (default, above) or an int >= 0 (exactly that many
            epochs, no early stopping); 0 skips stage 2.
        unfreeze_top_n: units unfrozen in stage 2, counted from the top (see
            `unfreeze_backbone`: layers of a CNN backbone, transformer blocks of a text
            encoder), at most as many as the backbone has; None (default) unfreezes the
            whole backbone; 0 with `finetune_epochs="auto"`: no stage 2 (nothing to
            unfreeze).
        optimizer: None (default: keep the model's compiled optimizer, a fresh instance
            per stage), or `"sgd"` / `"adam"` / `"adamw"` to use that one instead.
        learning_rate: rate of gradient-trained head epochs; default the compiled one.
        finetune_learning_rate: peak rate of stage 2; default the compiled rate for text
            (5e-5, BERT's) and 0.1x it for images (1e-4 with Adam 1e-3).
        train_batchnorm: bool, default False: also train BatchNorm layers in stage 2.
        class_weight: None (default), a dict `{class id or class name: weight}` for `fit`
            and the probe, or "balanced": `n / (num_classes * n_c)` from the labels of
            `train_ds` (a tf.data.Dataset; scikit-learn's rule).
        callbacks: list of Keras callbacks, used in both stages.
        checkpoint_dir: folder or None (default: no checkpoints). With a folder, every
            epoch of either stage is checkpointed there (`resumable_fit`), and calling
            `fine_tune` again with the same arguments after a crash or a kill resumes from
            the last completed epoch (a linear probe is fitted again: it is deterministic;
            early stopping goes on with its patience and best weights). The checkpoint
            files are deleted when
            training completes.
        checkpoint_settings: dict of JSON values (str, int, finite float, bool, None, lists
            and dicts of them), default None: more settings of the run recorded with the
            checkpoint; resuming with other values raises.
        cache_features: `"auto"` (default), True or False. Stage 1 runs the frozen part
            (backbone, and augmentation or dropout below the head in inference mode: what
            the Keras guide's `base_model(x, training=False)` does) once over `train_ds` and
            `val_ds` and trains the head on its outputs (`keras_transfer.features.feature_cache`).
            `"auto"` and True cache whenever the model can be cut into backbone and head;
            False never caches (the head then sees augmented images, at the cost of a
            backbone pass per epoch). While cached, stage-1 callbacks see the head model.
            A `PyDataset`, torch `DataLoader` or grain dataset is read once for the cache
            (`keras_transfer.features.feature_passes`); a one-shot generator is not cached.
        feature_store: None (default), or a folder (str or path-like; made when missing)
            that keeps the cached backbone features on disk, keyed by everything they
            depend on (backbone and its weights, preprocessing, input size, the files with
            their sizes and modification times, TFDS images by their bytes, or the texts;
            `keras_transfer.features.feature_store`): a later run on the same data and backbone
            (another head, learning rate or number of epochs) reads them instead of
            decoding and running the backbone. A damaged entry is rebuilt with a
            `UserWarning`. For datasets from `image_folder_datasets`, `text_csv_datasets`
            and `tfds_datasets`; others are cached as usual.
        text_padding: text models only: `"longest"` (default) pads each batch to its
            longest row, `"bucket"` also groups examples of similar length, None pads to
            the preprocessor's `sequence_length`.
        label_smoothing: float in [0, 1) for the cross-entropy of both stages (the probe
            ignores it), or None (default) to keep the compiled loss.
        batch_augmentation: image models, stage 2 only: None (default), `"mixup"`
            (`keras.layers.MixUp`) or `"cutmix"` (`keras.layers.CutMix`), or such a layer:
            pairs of training images and their labels are mixed in `tf.data`.
        verbose: `fit`'s verbosity ("auto", 0, 1 or 2).

    Returns:
        dict `{"head": History, "finetune": History}` of `keras.callbacks.History` objects
        (`"finetune"` only when stage 2 ran). A linear probe's History has one epoch with
        `loss`, `accuracy` (and `val_loss`, `val_accuracy`) of the fitted head.

    Raises:
        ValueError: data given as arrays or tuples (not a dataset), epochs that are not
            "auto" or an int >= 0, learning rates that are not positive numbers, an
            infinite `PyDataset`, `tf.data` or grain dataset (`.repeat()`), labels of a `tf.data`
            dataset or a `PyDataset` that cannot meet the model's loss (class ids for a
            one-hot loss or with `label_smoothing`, one-hot labels of another width than
            the model's classes or for a sparse loss; `label_checks.check_label_shape`), a
            `tf.data` dataset that is not batched or gives dicts, not (inputs, labels)
            pairs, labels given as a dict of another key than the model's output name
            (`label_checks.check_not_keyed`), inputs given as a dict without the model's
            input name (`label_checks.check_inputs_keyed`), an empty `train_ds` or `val_ds`,
            more epochs than a one-shot generator gives (one pass in all), class ids
            beyond the model's classes (the linear probe), a model that carries other
            class names than the data's (`class_names.adopt_class_names`),
            `unfreeze_top_n=0` with an int of
            fine-tuning epochs or one above the number of the backbone's units, `verbose`
            not "auto", 0, 1 or 2, `train_batchnorm` not a bool, `checkpoint_settings` not
            a dict of JSON values, a `class_weight` key that is no class
            (`check_class_weight`) or a string but "balanced", an optimizer object (use a name, or
            compile the model with it), a checkpoint folder written by a run with other
            arguments, `cache_features=True` for a model that cannot be cut into backbone
            and head, `feature_store` with `cache_features=False` or not a path (or an
            empty one), or, on several devices (`data_parallel`, docs/distributed.md), a
            model built outside the distribution or a batch size that does not divide by
            the number of devices; `cache_features=True` or a `feature_store` in a run of
            several processes (jax processes or tensorflow workers: caching is off there,
            `keras_transfer.training.processes`).
        NotADirectoryError: `feature_store` is a file.

    Example:
    ```python
    train_ds, val_ds, class_names = kt.image_folder_datasets("flowers/", image_size=224)
    model = kt.build_image_classifier("mobilenet_v2", len(class_names))
    histories = kt.fine_tune(model, train_ds, val_ds)  # probe, then fine-tuning
    ```
    """
    head_epochs, finetune_epochs, unfreeze_top_n, verbose = (
        plain_int(value) for value in (head_epochs, finetune_epochs, unfreeze_top_n, verbose)
    )  # NumPy ints as Python's
    if unfreeze_top_n == 0 and finetune_epochs == "auto":
        finetune_epochs = 0  # nothing to unfreeze: stage 2 could not help
    train_ds, val_ds = (  # ({"image": x}, y), keyed by the input's name, read as (x, y)
        keyed_batches(model, prepared_for_fine_tune(model, data, name))
        for name, data in (("train_ds", train_ds), ("val_ds", val_ds))
    )
    plan = plan_run(
        model,
        train_ds,
        val_ds,
        head_epochs=head_epochs,
        finetune_epochs=finetune_epochs,
        unfreeze_top_n=unfreeze_top_n,
        optimizer=optimizer,
        text_padding=text_padding,
        cache_features=cache_features,
        feature_store=feature_store,
        learning_rate=learning_rate,
        finetune_rate=finetune_learning_rate,
        class_weight=class_weight,
        batch_augmentation=batch_augmentation,
        verbose=verbose,
        label_smoothing=label_smoothing,
        train_batchnorm=train_batchnorm,
        checkpoint_settings=checkpoint_settings,
    )
    train_batchnorm = bool(train_batchnorm)  # checked: Python's or NumPy's bool
    learning_rate, finetune_learning_rate = (  # checked: ints and NumPy floats as floats
        None if rate is None else float(rate) for rate in (learning_rate, finetune_learning_rate)
    )
    settings = None
    if checkpoint_dir is not None:
        settings = run_settings(
            model,
            train_ds,
            val_ds,
            plan,
            checkpoint_settings,
            head_epochs=head_epochs,
            finetune_epochs=finetune_epochs,
            unfreeze_top_n=unfreeze_top_n,
            optimizer=optimizer or _compiled_optimizer_name(model),
            learning_rate=learning_rate,
            finetune_learning_rate=finetune_learning_rate,
            train_batchnorm=train_batchnorm,
            label_smoothing=label_smoothing,
            batch_augmentation=str(batch_augmentation),
        )
    runner = StageRunner(
        model,
        train_ds,
        val_ds,
        fit_kwargs=dict(class_weight=plan.class_weight, callbacks=callbacks, verbose=verbose),
        checkpoint_dir=checkpoint_dir,
        settings=settings,
        text_padding=plan.text_padding,
        verbose=verbose,
    )
    with restored_on_error(model):  # an error: trainable flags and compiled state back
        if not getattr(model, "compiled", False):
            compile_classifier(model)
        compiled = compile_arguments(model)  # the user's: each stage gets a fresh copy
        if label_smoothing is not None:
            compile_stage(model, label_smoothing=label_smoothing)

        with own_sharding():  # several processes: each feeds its slice (processes.py)
            # Stage 1: the head on a frozen backbone, on cached backbone features where exact.
            freeze_backbone(model)
            compile_stage(model, optimizer, learning_rate)
            split = (
                feature_split(model, plan.cache_features, verbose, feature_store)
                if head_epochs
                else None
            )
            uncached_head = bool(head_epochs) and split is None and not plan.text
            finetunes = (
                finetune_epochs not in (0, "auto")
                or finetune_epochs == "auto"
                and val_ds is not None
            )
            stages = {"the head stage": uncached_head, "fine-tuning": finetunes}
            warn_slow_augmentation(model, [name for name, runs in stages.items() if runs], train_ds)
            head, head_epochs = runner.head_stage(split, head_epochs)
            histories = {"head": head}

            # Stage 2: fine-tune the top of the backbone (BatchNorm stays frozen).
            finetune = runner.finetune_stage(
                plan.finetune_ds,
                head,
                head_epochs,
                finetune_epochs,
                optimizer=optimizer,
                learning_rate=finetune_learning_rate,
                top_n=unfreeze_top_n,
                train_batchnorm=train_batchnorm,
            )
            if finetune is not None:
                histories["finetune"] = finetune
        runner.finish()
        model.compile(**compiled)  # as it was compiled
    return histories


def _compiled_optimizer_name(model):
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    return f"{type(optimizer).__name__} {learning_rate_value(optimizer):.3g}"
