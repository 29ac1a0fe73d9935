"""Keras layers that keras-transfer puts inside the models it builds.

They are registered serializable layers (no `Lambda`), so saved models load with
`keras.saving.load_model(path, safe_mode=True)` once `keras_transfer` is imported.
"""

from __future__ import annotations

import importlib

import keras


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
