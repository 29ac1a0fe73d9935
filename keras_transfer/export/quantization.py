"""`quantize_classifier`: int8 weights for a classifier's Dense layers, with Keras' own
`model.quantize`.

Keras quantises `Dense`, `EinsumDense` and `Embedding` layers (weights int8 per output
channel, activations quantised on the fly); it does not quantise convolutions. So it pays
for text classifiers (a BERT encoder is almost all `EinsumDense` / `Dense`: attention and
feed-forward), hardly for image classifiers, whose only Dense layer is the head: for small
image models on CPUs and phones, use `export_litert(..., quantization="int8")` instead.
"""

from __future__ import annotations

MODES = ("int8",)
QUANTIZABLE = ("Dense", "EinsumDense", "Embedding", "ReversibleEmbedding")


def quantizable_layers(model):
    """The names of the layers of `model` (searched recursively) that Keras can quantise."""
    return [
        layer.name
        for layer in model._flatten_layers(include_self=False)
        if type(layer).__name__ in QUANTIZABLE
    ]


def quantize_classifier(model, mode="int8"):
    """Quantise the weights of a classifier's Dense / EinsumDense / Embedding layers in place.

    Calls Keras' `model.quantize(mode)`: each such layer then keeps int8 kernels with
    float32 per-channel scales and quantises its inputs on the fly; other layers (e.g.
    Conv2D, LayerNormalization) stay as they were. The model keeps its backend and its
    call signature, predicts and evaluates as before, and is meant for inference: training a
    quantised model is not supported. Build or call the model first (a text model: call it
    on a few texts). An image model saves and loads (`.keras`) as before; a quantised text
    model's `.keras` file does not load back with Keras 3.15 / KerasHub (the head's layer
    expects float variables), so quantise text models after loading, in the serving process.

    Args:
        model: a built classifier from `build_text_classifier` or `build_image_classifier`,
            on any backend.
        mode: `"int8"` (default; the only mode offered here).

    Returns:
        The same `model`, quantised.

    Raises:
        ValueError: an unknown `mode`, an unbuilt model, or a model without any Dense /
            EinsumDense / Embedding layer.

    Example:
    ```python
    model = keras_transfer.load_classifier("runs/spam/model.keras")
    keras_transfer.quantize_classifier(model)  # int8 attention and feed-forward kernels
    model.predict(texts)
    ```
    """
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
    if not model.built:
        raise ValueError("Build the model (call it on a batch, or fit it) before quantising it.")
    if not quantizable_layers(model):
        raise ValueError(
            f"Model {model.name!r} has no Dense, EinsumDense or Embedding layer to quantise "
            "(Keras does not quantise convolutions). For image models, use "
            "`export_litert(model, path, quantization='int8', representative_data=...)`."
        )
    model.quantize(mode)
    return model
