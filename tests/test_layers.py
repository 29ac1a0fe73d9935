import keras
import numpy as np
import pytest

from keras_transfer.models.layers import ShiftedDepthwiseConv2D

# (kernel_size, strides, padding, dilation_rate, depth_multiplier); 11 rows by 10 columns,
# so that "same" padding with stride 2 is split over an odd and an even size.
SETTINGS = [
    ((3, 3), (1, 1), "same", 1, 1),
    ((3, 3), (2, 2), "same", 1, 1),
    ((3, 3), (2, 2), "valid", 1, 2),
    ((3, 3), (1, 1), "valid", 1, 1),
    ((3, 3), (1, 1), "same", 2, 1),
    ((5, 5), (2, 2), "same", 1, 1),
    ((5, 5), (1, 1), "valid", 1, 1),
    ((5, 5), (2, 1), "valid", 1, 1),
    ((5, 3), (1, 1), "valid", 2, 2),
    ((3, 1), (2, 1), "same", 1, 2),
]


@pytest.mark.parametrize("kernel, strides, padding, dilation, multiplier", SETTINGS)
def test_shifted_depthwise_convolution_is_the_depthwise_convolution(
    kernel, strides, padding, dilation, multiplier
):
    """`ShiftedDepthwiseConv2D` gives `DepthwiseConv2D`'s outputs with the same weights."""
    settings = dict(
        kernel_size=kernel,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        depth_multiplier=multiplier,
        activation="relu",
    )
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 11, 10, 3)).astype("float32")
    layer, shifted = keras.layers.DepthwiseConv2D(**settings), ShiftedDepthwiseConv2D(**settings)
    _assert_same_outputs(layer, shifted, images, rng)


def _assert_same_outputs(layer, other, images, rng):
    """`other`, given `layer`'s (random) weights, gives `layer`'s outputs on `images`."""
    layer.build(images.shape)
    other.build(images.shape)
    weights = [rng.normal(size=w.shape).astype("float32") for w in layer.weights]
    layer.set_weights(weights)
    other.set_weights(weights)
    expected = keras.ops.convert_to_numpy(layer(images))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(other(images)), expected, atol=1e-5)


# (kernel_size, strides, padding, dilation_rate, groups or depth_multiplier, activation);
# "same" with stride 2 over 11 rows and 10 columns splits unevenly: Keras' own call.
FUSED_SETTINGS = [
    ((3, 3), (1, 1), "same", 1, 1, "relu6"),
    ((3, 3), (2, 2), "same", 1, 1, "relu"),
    ((3, 3), (2, 2), "valid", 1, 2, "linear"),
    ((1, 1), (1, 1), "valid", 1, 1, "relu"),
    ((3, 3), (1, 1), "same", 2, 1, "sigmoid"),
    ((5, 3), (1, 2), "same", 1, 2, "relu6"),
]


@pytest.mark.parametrize("kernel, strides, padding, dilation, groups, activation", FUSED_SETTINGS)
@pytest.mark.parametrize("depthwise", [False, True])
def test_fused_convolutions_are_keras_convolutions(
    kernel, strides, padding, dilation, groups, activation, depthwise
):
    """`FusedConv2D` / `FusedDepthwiseConv2D` give `Conv2D` / `DepthwiseConv2D`'s outputs
    with the same weights: on torch channels-first (their own torch call), elsewhere
    channels-last (Keras' call; TF on CPU has no channels-first convolution)."""
    from keras_transfer.models.layers import FusedConv2D, FusedDepthwiseConv2D

    data_format = "channels_first" if keras.backend.backend() == "torch" else "channels_last"
    settings = dict(
        kernel_size=kernel,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        activation=activation,
        data_format=data_format,
    )
    if depthwise:
        layer = keras.layers.DepthwiseConv2D(depth_multiplier=groups, **settings)
        fused = FusedDepthwiseConv2D(depth_multiplier=groups, **settings)
    else:
        layer = keras.layers.Conv2D(6, groups=groups, **settings)
        fused = FusedConv2D(6, groups=groups, **settings)
    rng = np.random.default_rng(1)
    shape = (2, 4, 11, 10) if data_format == "channels_first" else (2, 11, 10, 4)
    images = rng.normal(size=shape).astype("float32") * 3
    _assert_same_outputs(layer, fused, images, rng)
