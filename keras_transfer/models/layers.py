"""Keras layers that keras-transfer puts inside the models it builds, and four that its
feature caching uses in a temporary copy of a backbone.

`ImagePreprocessing` is a registered serializable layer (no `Lambda`), so saved models load
with `keras.saving.load_model(path, safe_mode=True)` once `keras_transfer` is imported.
"""

from __future__ import annotations

import importlib

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="keras_transfer")
class ImagePreprocessing(keras.layers.Layer):
    """A backbone's own `keras.applications.<module>.preprocess_input`, as a layer.

    Input: `(batch, height, width, 3)` RGB pixel values in [0, 255], any real or uint8
    dtype. Output: the same shape, float32, in the range the backbone was trained on
    (e.g. [-1, 1] for MobileNet, BGR mean-subtracted for ResNet50, unchanged for
    EfficientNet and ConvNeXt, which normalise inside the model).

    Args:
        module: the `keras.applications` module name, e.g. `"mobilenet"`.
    """

    def __init__(self, module, **kwargs):
        super().__init__(**kwargs)
        self.module = module
        self._preprocess_input = importlib.import_module(
            f"keras.applications.{module}"
        ).preprocess_input

    def call(self, inputs):
        return self._preprocess_input(keras.ops.cast(inputs, self.compute_dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "module": self.module}


class ShiftedDepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` computed as a sum of shifted, scaled input slices.

    Output `i, j, c * depth_multiplier + m` is the sum over kernel taps `(u, v)` of
    `input[i * stride + u * dilation, j * stride + v * dilation, c] * kernel[u, v, c, m]`
    (after the layer's own padding), plus the bias, then the activation: the same outputs
    as `DepthwiseConv2D` up to float rounding (the taps summed in another order). XLA on
    CPU runs grouped convolutions slowly: on jax, the 13 depthwise convolutions of
    MobileNet alpha=0.25 at 224x224 took 0.79 s per batch of 32 as `DepthwiseConv2D` and
    0.024 s as shifted slices, which XLA fuses into one loop per layer. Feature caching
    uses it on jax only, in its copy of a frozen backbone (`backbone_rewrites`); models keep
    their `DepthwiseConv2D` layers.

    Takes the config and weights of a channels-last `DepthwiseConv2D`. Input:
    `(batch, height, width, channels)` with height and width known when the layer is called;
    output as `DepthwiseConv2D`'s, `(batch, new_height, new_width, channels *
    depth_multiplier)` in the layer's compute dtype.

    Raises:
        ValueError: when called on channels-first data (`data_format="channels_first"`) or
            on inputs whose height or width is unknown (`None`), naming the shape.
    """

    def call(self, inputs):
        height, width, channels = inputs.shape[1:]
        if self.data_format != "channels_last" or height is None or width is None:
            raise ValueError(
                "ShiftedDepthwiseConv2D needs channels-last inputs of known height and "
                f"width, got shape {inputs.shape} ({self.data_format})."
            )
        if self.depth_multiplier > 1:  # output channel c * multiplier + m reads channel c
            inputs = keras.ops.repeat(inputs, self.depth_multiplier, axis=-1)
        kernel = keras.ops.reshape(
            keras.ops.cast(self.kernel, self.compute_dtype),
            (*self.kernel_size, channels * self.depth_multiplier),
        )
        spans, pads = [], [(0, 0)]
        for size, taps, stride, dilation in zip(
            (height, width), self.kernel_size, self.strides, self.dilation_rate, strict=True
        ):
            reach = (taps - 1) * dilation + 1
            if self.padding == "same":
                out = -(-size // stride)
                total = max((out - 1) * stride + reach - size, 0)
                pads.append((total // 2, total - total // 2))
            else:
                out = (size - reach) // stride + 1
                pads.append((0, 0))
            spans.append(((out - 1) * stride + 1, stride, dilation))
        padded = keras.ops.pad(inputs, [*pads, (0, 0)])
        (rows, row_step, row_dilation), (cols, col_step, col_dilation) = spans
        outputs = None
        for u in range(self.kernel_size[0]):
            for v in range(self.kernel_size[1]):
                top, left = u * row_dilation, v * col_dilation
                window = padded[:, top : top + rows : row_step, left : left + cols : col_step, :]
                term = window * kernel[u, v]
                outputs = term if outputs is None else outputs + term
        if self.use_bias:
            outputs = outputs + keras.ops.cast(self.bias, self.compute_dtype)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


class FusedConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` that on torch adds its bias inside the convolution and applies
    a ReLU in place.

    On torch, with channels-first data, one `torch.nn.functional.conv2d` call takes the
    bias, and a `"relu"` or `"relu6"` activation overwrites its output: no new tensor for
    the bias sum or the activation (Keras adds the bias and applies the activation as two
    more operations, each writing a new feature map). Elsewhere, and for "same" padding
    that Keras splits unevenly, `Conv2D`'s own `call`. The outputs are `Conv2D`'s up to
    float rounding. Feature caching uses it on torch only, in its channels-first copy of a
    frozen backbone (`backbone_rewrites`), where MobileNet alpha=0.25's pass over 12 batches of
    32 images took 1.17 s instead of 1.47 s; models keep their `Conv2D` layers.

    Takes a `Conv2D` config. Input and output as `Conv2D`'s: `(batch, channels, height,
    width)` channels-first (or `(batch, height, width, channels)` channels-last), in the
    layer's compute dtype.
    """

    def call(self, inputs):
        outputs = _torch_fused_convolution(self, inputs, groups=self.groups)
        return super().call(inputs) if outputs is None else outputs


class FusedDepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` with the bias and ReLU of `FusedConv2D` on torch
    (output channel `c * depth_multiplier + m` reads input channel `c`, as in
    `DepthwiseConv2D`).

    Takes a `DepthwiseConv2D` config. Input and output as `DepthwiseConv2D`'s.
    """

    def call(self, inputs):
        outputs = _torch_fused_convolution(self, inputs, groups=None)
        return super().call(inputs) if outputs is None else outputs


def _torch_fused_convolution(layer, inputs, groups):
    """`layer`'s outputs by one torch convolution with the bias and an in-place ReLU, or
    None (not torch, channels-last data, "same" padding split unevenly: Keras pads first).
    `groups` None: a depthwise convolution."""
    if keras.backend.backend() != "torch" or layer.data_format != "channels_first":
        return None
    import torch

    padding = []
    for size, taps, stride, dilation in zip(
        inputs.shape[2:], layer.kernel_size, layer.strides, layer.dilation_rate, strict=True
    ):
        total = 0
        if layer.padding == "same":
            total = max((-(-size // stride) - 1) * stride + (taps - 1) * dilation + 1 - size, 0)
        if total % 2:
            return None
        padding.append(total // 2)
    kernel = keras.ops.cast(layer.kernel, layer.compute_dtype)
    if groups is None:  # (h, w, in, multiplier) -> (h, w, 1, in * multiplier)
        height, width, channels, multiplier = kernel.shape
        kernel, groups = kernel.reshape(height, width, 1, channels * multiplier), channels
    bias = keras.ops.cast(layer.bias, layer.compute_dtype) if layer.use_bias else None
    outputs = torch.nn.functional.conv2d(
        inputs,
        kernel.permute(3, 2, 0, 1),  # (out, in / groups, h, w)
        bias,
        stride=tuple(layer.strides),
        padding=padding,
        dilation=tuple(layer.dilation_rate),
        groups=groups,
    )
    if layer.activation is keras.activations.relu:
        return outputs.relu_()
    if layer.activation is keras.activations.relu6:
        return outputs.clamp_(0, 6)
    return layer.activation(outputs)


class FoldedFunctional(keras.layers.Layer):
    """A functional model run with BatchNormalizations folded into their convolutions.

    Each convolution among the keys of `folded` computes with its folded weights (kernel
    and bias of the convolution followed by the BatchNormalization in inference mode,
    `folded_weights`), and the BatchNormalizations of `folded` are left
    out. Every other layer is the model's own, run by the model's graph: no layer is copied
    or rebuilt, so making this layer costs no more than computing the weights. Feature
    caching uses it on tensorflow for one pass over the data (`backbone_rewrites`); it is not
    saved with models.

    The folded weights are graph constants when they hold at most `constants_limit` bytes
    (then tensorflow's optimizer can prepare the convolutions once), otherwise
    non-trainable variables of this layer. On MobileNet alpha=0.25 at 224x224 (2 CPU cores,
    12 batches of 32), a copy of the model with folded layers took 0.87 s to make, trace and
    run; this layer took 0.61 s with constants and 0.76 s with variables.

    Args:
        model: a functional `keras.Model` with one input and one output; channels-last,
            float32 convolutions among the folded ones.
        folded: `{id(convolution): batchnorm}`, the pairs to fold (`Conv2D` or
            `DepthwiseConv2D`, each read alone by its BatchNormalization).
        constants_limit: int, bytes; default 64 MiB.

    Input and output: those of `model`.
    """

    def __init__(self, model, folded, constants_limit=64 * 2**20, **kwargs):
        kwargs.setdefault("dtype", model.dtype_policy)  # inputs cast as the model casts them
        super().__init__(trainable=False, name=f"{model.name}_folded", **kwargs)
        # The model's graph, as a method: not tracked as a sublayer, its weights its own.
        self._run_through_graph = model._run_through_graph
        self._output_shape = tuple(model.output.shape[1:])
        self.left_out = {id(batchnorm) for batchnorm in folded.values()}
        weights = {
            layer: folded_weights(layer, folded[id(layer)])
            for layer in model.layers
            if id(layer) in folded
        }
        size = sum(kernel.nbytes + bias.nbytes for kernel, bias in weights.values())
        self.convolutions = {}
        for layer, (kernel, bias) in weights.items():
            if size > constants_limit:
                kernel, bias = (
                    self.add_weight(
                        shape=value.shape,
                        initializer=keras.initializers.Constant(value),
                        trainable=False,
                        name=f"{layer.name}_{part}",
                    )
                    for value, part in ((kernel, "kernel"), (bias, "bias"))
                )
            self.convolutions[id(layer)] = _folded_convolution(layer, kernel, bias)

    def _operation(self, operation):
        if id(operation) in self.left_out:  # a BatchNormalization inside its convolution
            return lambda *args, **kwargs: _call_input(args, kwargs)
        return self.convolutions.get(id(operation), operation)

    def call(self, inputs):
        return self._run_through_graph(inputs, operation_fn=self._operation)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self._output_shape)


def _folded_convolution(layer, kernel, bias):
    """`layer`'s convolution (a channels-last `Conv2D` or `DepthwiseConv2D` without
    activation) with `kernel`, plus `bias`, as a function of the input."""

    def convolution(*args, **kwargs):
        x = _call_input(args, kwargs)
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            x = keras.ops.depthwise_conv(
                x,
                kernel,
                strides=layer.strides,
                padding=layer.padding,
                dilation_rate=layer.dilation_rate,
                data_format=layer.data_format,
            )
        else:
            x = layer.convolution_op(x, kernel)  # strides, padding, dilation, groups
        return keras.ops.add(x, bias)  # channels-last: over the last axis

    return convolution


def _call_input(args, kwargs):
    """The input of a layer call recorded in a functional graph: the first positional
    argument, or `inputs=` when the layer was called with the keyword."""
    return args[0] if args else kwargs["inputs"]


def folded_weights(conv, batchnorm):
    """`[kernel, bias]` of `conv` followed by `batchnorm` in inference mode, as one layer:
    `gamma * (conv(x) - mean) / sqrt(variance + epsilon) + beta`, computed in float64."""

    def values(variable):
        return np.asarray(keras.ops.convert_to_numpy(variable), dtype="float64")

    channels = batchnorm.moving_mean.shape[0]
    gamma = values(batchnorm.gamma) if batchnorm.scale else np.ones(channels)
    beta = values(batchnorm.beta) if batchnorm.center else np.zeros(channels)
    scale = gamma / np.sqrt(values(batchnorm.moving_variance) + batchnorm.epsilon)
    kernel = values(conv.kernel)
    if isinstance(conv, keras.layers.DepthwiseConv2D):  # (h, w, in, multiplier): in*mult + m
        kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    else:
        kernel = kernel * scale
    bias = beta - values(batchnorm.moving_mean) * scale
    if conv.use_bias:
        bias = bias + values(conv.bias) * scale
    return [kernel.astype("float32"), bias.astype("float32")]
