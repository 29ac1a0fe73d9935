"""Freeze and unfreeze the backbone of a classifier through Keras `trainable` flags.

BatchNorm guarantee: Keras 3 runs a `BatchNormalization` layer in inference mode (moving
statistics used, never updated) exactly when its `trainable` flag is False, whatever
`training=` the backbone was called with (keras-team/keras#20285: a base model called with
`training=False` and later set `trainable=True` still updates its statistics). So these
functions keep every BatchNorm layer of the backbone at `trainable=False` unless
`unfreeze_backbone(..., train_batchnorm=True)` is asked for: after any sequence of freeze /
unfreeze / compile / fit, the moving mean and variance do not change. Setting
`model.trainable = True` by hand bypasses this, as it does in Keras.
"""

from __future__ import annotations

import keras

BACKBONE_LAYER_NAME = "backbone"


def get_backbone(model):
    """Return the backbone of a classifier built by keras-transfer.

    Args:
        model: a model from `build_image_classifier` (the layer named `"backbone"`) or
            `build_text_classifier` / any KerasHub task (its `.backbone`).

    Raises:
        ValueError: the model has no backbone layer.
    """
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, keras.layers.Layer):
        return backbone
    try:
        return model.get_layer(BACKBONE_LAYER_NAME)
    except ValueError:
        raise ValueError(
            f"Model {model.name!r} has no layer named {BACKBONE_LAYER_NAME!r} and no "
            "`.backbone`: pass a model from build_image_classifier or "
            "build_text_classifier."
        ) from None


def backbone_units(backbone):
    """The backbone's freezable units, bottom to top, each a list of layers.

    For a transformer encoder (a KerasHub backbone with `transformer_layers`) the units are
    the embeddings (everything below the first block) and then one unit per transformer
    block (layers above the last block, such as BERT's pooler, join the top block). For a
    CNN they are the entries of `backbone.layers`, as in the Keras transfer-learning guide.
    """
    blocks = list(getattr(backbone, "transformer_layers", None) or [])
    if not blocks:
        return [[layer] for layer in backbone.layers]
    block_ids = {id(block) for block in blocks}
    embeddings, above = [], []
    seen_block = False
    for layer in backbone.layers:
        if id(layer) in block_ids:
            seen_block = True
        elif seen_block:
            above.append(layer)
        else:
            embeddings.append(layer)
    units = [embeddings] + [[block] for block in blocks]
    units[-1] = units[-1] + above
    return units


def _batchnorm_layers(layer):
    return [
        sub
        for sub in layer._flatten_layers(include_self=True, recursive=True)
        if isinstance(sub, keras.layers.BatchNormalization)
    ]


def _recompile(model):
    """Recompile with the same compile config so that new `trainable` flags take effect.

    Keras collects the trainable variables when the optimizer is built (compile / first
    fit), so a compiled model is recompiled: same loss and metrics, a fresh optimizer of
    the same class and configuration (its slot variables start from zero).
    """
    if not getattr(model, "compiled", False):
        return
    from keras_transfer.models.compiling import compile_arguments

    model.compile(**compile_arguments(model))


def freeze_backbone(model):
    """Freeze the whole backbone (`trainable=False`); the head stays trainable.

    BatchNorm layers run in inference mode. A compiled model is recompiled with the same
    loss, metrics and optimizer configuration, so the change takes effect in the next `fit`.

    Args:
        model: a classifier from `build_image_classifier` or `build_text_classifier`.

    Returns:
        The same model (changed in place).

    Raises:
        ValueError: the model has no backbone.
    """
    get_backbone(model).trainable = False
    _recompile(model)
    return model


def unfreeze_backbone(model, top_n=None, train_batchnorm=False):
    """Make the top `top_n` units of the backbone trainable (all when `top_n` is None).

    Units are counted from the top: for a CNN they are the entries of `backbone.layers`
    (as in the Keras fine-tuning guide: `base_model.layers[-top_n:]`); for a transformer
    encoder they are the transformer blocks, then the embeddings (so `top_n=2` trains the
    last two blocks and the pooler, `top_n=num_layers + 1` everything).
    Units below stay frozen. BatchNorm layers stay frozen and in inference mode (their
    moving mean and variance never change) unless `train_batchnorm=True`.
    A compiled model is recompiled with the same loss, metrics and optimizer configuration.

    Args:
        model: a classifier from `build_image_classifier` or `build_text_classifier`.
        top_n: int >= 0 or None (default: the whole backbone).
        train_batchnorm: bool, default False: also train BatchNorm layers (their gamma /
            beta and moving statistics) in the unfrozen units.

    Returns:
        The same model (changed in place).

    Raises:
        ValueError: the model has no backbone, or `top_n` is not None or an int >= 0.
    """
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0):
        raise ValueError(f"`top_n` must be None or an int >= 0, got {top_n!r}.")
    backbone = get_backbone(model)
    # Each layer by itself: on tensorflow, setting `trainable = True` on a model that is
    # already trainable does not reach sublayers frozen one by one.
    for layer in backbone._flatten_layers(include_self=True, recursive=True):
        layer.trainable = True
    if top_n is not None:
        units = backbone_units(backbone)
        for unit in units[: max(len(units) - top_n, 0)]:
            for layer in unit:
                layer.trainable = False
    if not train_batchnorm:
        for layer in _batchnorm_layers(backbone):
            layer.trainable = False
    _recompile(model)
    return model
