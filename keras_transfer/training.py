"""`fine_tune`: the two-stage transfer-learning recipe on top of `model.fit`."""

from __future__ import annotations

from keras_transfer.checkpointing import clear_checkpoint, resumable_fit
from keras_transfer.compiling import compile_classifier
from keras_transfer.freezing import freeze_backbone, unfreeze_backbone

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
    verbose="auto",
):
    """Train the head on a frozen backbone, then fine-tune the top of the backbone.

    Stage 1 ("head"): `freeze_backbone`, `compile_classifier(optimizer, learning_rate)`,
    `fit` for `head_epochs`. Stage 2 ("finetune", only if `finetune_epochs` > 0):
    `unfreeze_backbone(top_n=unfreeze_top_n)` (BatchNorm stays frozen), recompile at
    `finetune_learning_rate`, `fit` for `finetune_epochs` more epochs (epoch numbers go on
    from stage 1). This is the recipe of the Keras transfer-learning guide.

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
        verbose: `fit`'s verbosity ("auto", 0, 1 or 2).

    Returns:
        dict `{"head": History, "finetune": History}` of `keras.callbacks.History` objects
        (`"finetune"` only when `finetune_epochs` > 0).

    Raises:
        ValueError: negative epochs, an optimizer object (use a name), or a checkpoint
            folder written by a run with other arguments.
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
    if optimizer is not None and not isinstance(optimizer, str):
        raise ValueError(
            "`fine_tune` needs `optimizer` as a name ('sgd' or 'adam') so that each stage "
            "gets a fresh optimizer; use compile_classifier + model.fit for a custom one."
        )
    fit_kwargs = dict(
        validation_data=val_ds, class_weight=class_weight, callbacks=callbacks, verbose=verbose
    )
    if checkpoint_dir is not None:
        settings = dict(
            head_epochs=head_epochs,
            finetune_epochs=finetune_epochs,
            unfreeze_top_n=unfreeze_top_n,
            optimizer=optimizer,
            learning_rate=learning_rate,
            finetune_learning_rate=finetune_learning_rate,
            train_batchnorm=train_batchnorm,
        )

        def fit(data, stage, **kwargs):
            return resumable_fit(
                model,
                data,
                checkpoint_dir=checkpoint_dir,
                settings=settings,
                stage=stage,
                **kwargs,
                **fit_kwargs,
            )
    else:

        def fit(data, stage, **kwargs):
            return model.fit(data, **kwargs, **fit_kwargs)

    histories = {}
    freeze_backbone(model)
    compile_classifier(model, optimizer, learning_rate)
    histories["head"] = fit(train_ds, "head", epochs=head_epochs)
    if finetune_epochs:
        unfreeze_backbone(model, top_n=unfreeze_top_n, train_batchnorm=train_batchnorm)
        if finetune_learning_rate is None:
            stage1_lr = float(model.optimizer.learning_rate)
            finetune_learning_rate = stage1_lr * FINETUNE_LR_FACTOR
        compile_classifier(model, optimizer, finetune_learning_rate)
        histories["finetune"] = fit(
            train_ds, "finetune", initial_epoch=head_epochs, epochs=head_epochs + finetune_epochs
        )
    if checkpoint_dir is not None:
        clear_checkpoint(checkpoint_dir)
    return histories
