"""Backbone rewrites for the feature-caching pass: a faster copy of a frozen extractor.

`inference_extractor` makes, for one caching pass (`feature_cache.FeatureSplit.cache`), a
copy of the frozen feature extractor that computes the same features faster: BatchNormalization
folded into the convolution before it (tensorflow, torch), the backbone in channels-first
layout with fused convolutions (torch), and shifted depthwise convolutions (jax). The layers
these copies are made of live beside this module, in `keras_transfer.models.layers`
(`FoldedFunctional`, `FusedConv2D`, `FusedDepthwiseConv2D`, `ShiftedDepthwiseConv2D`). The
model's own layers are never changed.
"""

from __future__ import annotations

import numpy as np

EXTRACT_BATCH = 32  # examples per backbone call (tensorflow and jax compile this batch shape)
CHECK_BATCH = 4  # images (and 2 of noise) on which `inference_extractor`'s copy is checked


def inference_extractor(extractor, below, above, images):
    """A faster copy of `extractor` for the caching pass, or None to use `extractor`.

    Three rewrites, each made only where it was measured to pay (2 CPU cores, MobileNet
    alpha=0.25 at 224x224, 396 images in batches of 32):
    - tensorflow and torch: every BatchNormalization that alone reads a linear `Conv2D` or
      `DepthwiseConv2D` is folded into it (`_foldable_batchnorms`, `layers.folded_weights`): in
      inference mode it is an affine map per channel, so the kernel is scaled and a bias
      added, and the BatchNormalization is left out, the conv-BN folding of inference
      converters (TF Lite, `torch.fx`). It is exact up to float rounding (on ImageNet
      MobileNet features in [0, 6], at most 2e-4 apart), and not checked at run time.
      Float32 models only: under mixed precision the folded bias is held in 16 bits, where
      it can cancel the scaled convolution's output less exactly than the BatchNormalization
      does in float32 (a bfloat16 test: 5x the model's own rounding error).
      The pass took 0.43 s instead of 0.88 s on tensorflow and 1.6 s instead of 2.7 s on
      torch (channels-last); jax's XLA already fuses the BatchNormalization (10.6 s either
      way), so jax keeps it. On tensorflow the model's own graph runs with the folded
      weights (`FoldedFunctional`), which is quicker to make and to trace than a copy of
      the model with folded layers (0.61 s instead of 0.87 s with the 12 batches); torch
      folds in its channels-first copy (below).
    - jax: every channels-last `DepthwiseConv2D` runs as `ShiftedDepthwiseConv2D` (a sum of
      shifted input slices times the kernel taps), which XLA on CPU computes far faster
      than its grouped convolution: the pass took 0.96 s instead of 10.8 s, the same
      features up to float rounding (not checked at run time; the layer is tested against
      `DepthwiseConv2D`). Float32 models only, as the folding (taps summed in 16 bits
      otherwise).
    - torch: every float32 `Conv2D` and `DepthwiseConv2D` runs as `FusedConv2D` /
      `FusedDepthwiseConv2D`: torch's convolution adds the bias, and a ReLU (or ReLU6) that
      alone reads the convolution (or its folded BatchNormalization) is applied in place
      (`_fusable_relus`) instead of as a layer: no new feature map for either. The pass
      took 1.17 s instead of 1.47 s over 12 batches of 32 images (medians of 5, after the
      folding and the layout below).
    - torch: the backbone and the layers above it run in `channels_first` layout. Keras' torch
      convolutions take channels-last inputs by transposing them to channels-first and back
      around every call (ResNet50 2.0x, EfficientNetB0 1.8x, MobileNet alpha=0.25 about 1.3x
      as fast without). The copies are made from the layers' configs
      (`_channels_first_config`), and used only when they give the extractor's own
      features of the first `CHECK_BATCH` images and two of uniform noise in [0, 255]
      (uniform images could hide a layer computed over another axis) up to float noise
      (1e-4 of the largest feature in float32, 5e-2 under mixed precision); otherwise
      (ConvNeXt's layouts, a layer without a channels-first form, ...) the extractor is used.
    On jax only the changed convolutions are copied, on torch every layer, and on
    tensorflow none (`FoldedFunctional` holds the folded weights), for one
    `FeatureSplit.cache` call; the model's own layers are not changed.

    Args:
        extractor: the feature extractor, a `keras.Model` taking `(batch, height, width, 3)`.
        below: the extractor's layers below the backbone (preprocessing), kept as they are.
        above: the backbone and the weight-free layers above it (pooling).
        images: the first batch, `(batch, height, width, 3)`.

    Returns:
        A `keras.Model` with the extractor's inputs and outputs, or None. If it fails on
        the first batch (a layer call that a rewrite does not handle), the caching pass
        uses `extractor` instead.
    """
    import keras

    backend = keras.backend.backend()
    channels_first = backend == "torch"
    try:  # each rewrite checks each layer's dtype (`_float32`)
        folded = _foldable_batchnorms(above) if backend != "jax" else {}
        shifted = _depthwise_convolutions(above) if backend == "jax" else set()
        relus = _fusable_relus(above, folded) if channels_first else {}
        if not above or not (folded or shifted or channels_first):
            return None
        inputs = keras.Input(shape=images.shape[1:], dtype="float32")
        x = inputs
        for layer in below:  # preprocessing: per-pixel, in the model's channels-last layout
            x = layer(x)
        if channels_first:
            x = keras.layers.Permute((3, 1, 2))(x)
        for layer in above:
            x = _inference_copy(layer, x, folded, shifted, relus, channels_first)
        fast = keras.Model(inputs, x, name="inference_features")
        if not channels_first:
            return fast
        float32 = all(_float32(layer) for layer in above)
        noise = np.random.default_rng(0).uniform(0, 255, (2, *images.shape[1:]))
        sample = np.concatenate([images[:CHECK_BATCH], noise.astype(images.dtype)])
        expected = predict_full_batch(extractor, sample)
        features = predict_full_batch(fast, sample)
    except Exception:  # an unexpected layer, one without a channels-first form: keep the extractor
        return None
    tolerance = 1e-4 if float32 else 5e-2  # of the largest feature: float noise
    scale = float(np.abs(expected).max()) or 1.0
    if features.shape != expected.shape or not (
        np.abs(features - expected).max() <= tolerance * scale
    ):
        return None
    return fast


def _foldable_batchnorms(layers):
    """`{id(convolution): batchnorm}` for the BatchNormalizations (over the last axis) inside
    the functional models among `layers` that alone read a linear, channels-last `Conv2D` or
    `DepthwiseConv2D`; each layer of a pair is called once."""
    import keras

    pairs = {}
    for nodes, readers in _nodes_and_readers(layers):
        for node in nodes:
            batchnorm = node.operation
            if type(batchnorm) is not keras.layers.BatchNormalization:
                continue
            if len(node.input_tensors) != 1 or any(  # a mask, or training=True (batch statistics)
                value not in (None, False) for value in node.arguments.kwargs.values()
            ):
                continue
            (tensor,) = node.input_tensors
            conv = tensor._keras_history.operation
            if (
                _linear_convolution(conv)
                and batchnorm.axis % len(tensor.shape) == len(tensor.shape) - 1
                and readers[id(tensor)] == 1
                and len(batchnorm._inbound_nodes) == 1
                and _float32(batchnorm)
            ):
                pairs[id(conv)] = batchnorm
    return pairs


def _fusable_relus(layers, folded):
    """`{id(convolution): (relu, "relu" or "relu6")}` for the ReLU layers (no slope,
    threshold, or a maximum other than 6) inside the functional models among `layers` that
    alone read a linear, channels-last `Conv2D` or `DepthwiseConv2D`, directly or through
    a BatchNormalization of `folded` (`_foldable_batchnorms`); each layer is called once.
    Float32 layers only."""
    import keras

    convolution_of = {id(batchnorm): conv for conv, batchnorm in folded.items()}
    fused = {}
    for nodes, readers in _nodes_and_readers(layers):
        for node in nodes:
            relu = node.operation
            if not (
                type(relu) is keras.layers.ReLU
                and relu.negative_slope == 0
                and relu.threshold == 0
                and relu.max_value in (None, 6)
                and len(node.input_tensors) == 1
                and len(relu._inbound_nodes) == 1
                and _float32(relu)
            ):
                continue
            (tensor,) = node.input_tensors
            source = tensor._keras_history.operation
            if readers[id(tensor)] != 1:
                continue
            if id(source) in convolution_of:
                conv = convolution_of[id(source)]
            elif _linear_convolution(source):
                conv = id(source)
            else:
                continue
            fused[conv] = (relu, "relu" if relu.max_value is None else "relu6")
    return fused


def _linear_convolution(layer):
    """Whether `layer` is a float32, channels-last `Conv2D` or `DepthwiseConv2D` without
    activation, called once: one that a BatchNormalization or ReLU after it can join."""
    import keras

    return (
        type(layer) in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
        and layer.get_config()["activation"] == "linear"
        and layer.data_format == "channels_last"
        and len(layer._inbound_nodes) == 1
        and _float32(layer)
    )


def _nodes_and_readers(layers):
    """For each functional model among `layers`: its layer calls (nodes), and
    `{id(tensor): number of nodes (and model outputs) that read it}`."""
    for model in _functional_models(layers):
        nodes = [node for level in model._nodes_by_depth.values() for node in level]
        readers = {}
        for tensor in [x for node in nodes for x in node.input_tensors] + list(model.outputs):
            readers[id(tensor)] = readers.get(id(tensor), 0) + 1
        yield nodes, readers


def _functional_models(layers):
    """The functional `keras.Model`s among `layers` (those with a graph of layer calls)."""
    import keras

    return [
        model
        for model in layers
        if isinstance(model, keras.Model) and getattr(model, "_nodes_by_depth", None) is not None
    ]


def _float32(layer):
    """Whether `layer` computes in float32 (a model's float32 policy can hold 16-bit layers)."""
    import keras

    return keras.backend.standardize_dtype(layer.compute_dtype) == "float32"


def _depthwise_convolutions(layers):
    """The ids of the channels-last `DepthwiseConv2D` layers among `layers` and inside the
    functional models among them (see `keras_transfer.models.layers.ShiftedDepthwiseConv2D`)."""
    import keras

    inside = [layer for model in _functional_models(layers) for layer in model.layers]
    return {
        id(layer)
        for layer in [*layers, *inside]
        if type(layer) is keras.layers.DepthwiseConv2D
        and layer.data_format == "channels_last"
        and _float32(layer)
    }


def _inference_copy(layer, x, folded, shifted, relus, channels_first):
    """`layer` applied to `x` with the BatchNormalizations of `folded` folded into their
    convolutions, the depthwise convolutions of `shifted` (ids) as `ShiftedDepthwiseConv2D`
    and, with `channels_first`, in that layout, float32 convolutions as `FusedConv2D` /
    `FusedDepthwiseConv2D` with the ReLUs of `relus` (`_fusable_relus`) as their
    activations (see `inference_extractor`). Layers that need no change are shared, not
    copied; with the folding alone (tensorflow) nothing is copied: a functional model runs
    its own layers as `FoldedFunctional`, with the folded weights."""
    import keras

    from keras_transfer.models.layers import (
        FoldedFunctional,
        FusedConv2D,
        FusedDepthwiseConv2D,
        ShiftedDepthwiseConv2D,
        folded_weights,
    )

    fused_kinds = {
        keras.layers.Conv2D: FusedConv2D,
        keras.layers.DepthwiseConv2D: FusedDepthwiseConv2D,
    }
    originals = {}  # id(copy) -> (copy, original)
    batchnorms = {id(batchnorm) for batchnorm in folded.values()}  # left out, not copied
    left_out = batchnorms | {id(relu) for relu, _ in relus.values()}  # in the convolutions
    changed = set(folded) | shifted

    def copy_of(original):
        if id(original) in left_out or (id(original) not in changed and not channels_first):
            return original
        if id(original) in shifted:
            copy = ShiftedDepthwiseConv2D.from_config(original.get_config())
        else:  # channels_first
            config = keras.saving.serialize_keras_object(original)
            if id(original) in folded:
                config["config"]["use_bias"] = True
            if id(original) in relus:
                config["config"]["activation"] = relus[id(original)][1]
            config = _channels_first_config(config)
            fused = fused_kinds.get(type(original)) if _float32(original) else None
            if fused is not None:
                copy = fused.from_config(config["config"])
            else:
                copy = keras.saving.deserialize_keras_object(config)
        originals[id(copy)] = (copy, original)
        return copy

    def call(operation, *args, **kwargs):
        if id(operation) in left_out:
            return args[0]  # a BatchNormalization or ReLU in the convolution below it
        return operation(*args, **kwargs)

    inner = getattr(layer, "_nodes_by_depth", None) is not None and (
        channels_first or any(id(conv) in changed for conv in layer.layers)
    )
    if inner and not (channels_first or shifted):  # tensorflow: only the folding
        return FoldedFunctional(layer, folded)(x)
    if inner:  # a functional model with layers to change (on torch: all of them)
        shape = (None, *x.shape[1:])
        copy = keras.models.clone_model(
            layer,
            input_tensors=keras.Input(batch_shape=shape, dtype=layer.inputs[0].dtype),
            clone_function=copy_of,
            call_function=call,
        )
    else:
        copy = copy_of(layer)
    x = copy(x)
    for made, original in originals.values():
        if id(original) in folded:
            made.set_weights(folded_weights(original, folded[id(original)]))
        else:
            made.set_weights(original.get_weights())
    return x


def _channels_first_config(config):
    """A serialized layer's config (nested models too) with channels-last settings turned
    channels-first (see `inference_extractor`, which checks the result)."""
    if isinstance(config, list):
        return [_channels_first_config(item) for item in config]
    if not isinstance(config, dict):
        return config
    # Without the recorded (channels-last) build shapes: the copies build on their inputs.
    config = {
        key: _channels_first_config(value) for key, value in config.items() if key != "build_config"
    }
    if config.get("data_format") == "channels_last":
        config["data_format"] = "channels_first"
    inner = config.get("config")
    if isinstance(inner, dict):
        kind = config.get("class_name")
        shape = inner.get("batch_shape")
        if kind == "InputLayer" and shape is not None and len(shape) == 4:
            inner["batch_shape"] = [shape[0], shape[3], shape[1], shape[2]]
        axis_layers = ("BatchNormalization", "LayerNormalization", "Normalization", "Concatenate")
        axis = inner.get("axis")
        axis = list(axis) if isinstance(axis, (list, tuple)) else [axis]
        if kind in axis_layers and axis in ([-1], [3]):
            inner["axis"] = 1
        target = inner.get("target_shape")
        if kind == "Reshape" and len(target or ()) == 3 and list(target[:2]) == [1, 1]:
            inner["target_shape"] = [target[2], 1, 1]  # a per-channel vector as a 1x1 map
    return config


def predict_full_batch(extractor, images):
    """float32 outputs for `images`; on tensorflow and jax a short batch is padded to
    `EXTRACT_BATCH` rows, so that they compile the extractor for one batch shape only
    (torch runs any shape as it comes)."""
    import keras

    count = len(images)
    if count < EXTRACT_BATCH and keras.backend.backend() != "torch":
        images = np.concatenate(
            [images, np.zeros_like(images[:1]).repeat(EXTRACT_BATCH - count, 0)]
        )
    return np.asarray(extractor.predict_on_batch(images), dtype="float32")[:count]
