import keras
import numpy as np
import pytest

from keras_transfer.layers import ShiftedDepthwiseConv2D

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
    layer.build(images.shape)
    shifted.build(images.shape)
    weights = [rng.normal(size=w.shape).astype("float32") for w in layer.weights]
    layer.set_weights(weights)
    shifted.set_weights(weights)
    expected = keras.ops.convert_to_numpy(layer(images))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(shifted(images)), expected, atol=1e-5)
