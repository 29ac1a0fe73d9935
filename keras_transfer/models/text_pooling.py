"""How a text classifier turns the encoder's outputs into one vector: `pooling="cls"` or `"mean"`.

`"cls"` (the default) is KerasHub's own classifier: the head reads the encoder's
`pooled_output`, BERT's pooler (a dense tanh layer) on the `[CLS]` token. `"mean"` is
`MeanPooledTextClassifier`: the head reads the mean of the encoder's `sequence_output` over the
non-padding tokens (`padding_mask`), as sentence-transformers pools. Checkpoints trained as
sentence encoders (all-MiniLM-L6-v2 and the other sentence-transformers models: their folder has
`modules.json` and `1_Pooling/config.json`) were trained through that mean; their pooler was not,
so its `[CLS]` vector is a weak frozen feature.

The masked mean is Keras' own `GlobalAveragePooling1D` called with `mask=padding_mask` (a sum
over the kept tokens divided by their count, the same on tensorflow, jax and torch).

`keras.saving.load_model` needs `MeanPooledTextClassifier` registered: `load_classifier`
imports this module; elsewhere `import keras_transfer.models.text_pooling` before loading.
"""

from __future__ import annotations

import keras
import keras_hub

POOLING_LAYER_NAME = "mean_pooling"


def sequence_output(outputs):
    """The `(batch, length, hidden)` token outputs of a KerasHub encoder's call (a dict with
    `sequence_output` for BERT, the tensor itself for encoders such as DistilBERT)."""
    return outputs["sequence_output"] if isinstance(outputs, dict) else outputs


@keras.saving.register_keras_serializable(package="keras_transfer")
class MeanPooledTextClassifier(keras_hub.models.TextClassifier):
    """A KerasHub text classifier whose head reads the masked mean of the token outputs.

    `mean_pooling(sequence_output, mask=padding_mask)` (a `GlobalAveragePooling1D`), then
    `output_dropout` and `output_dense`, the same head layers (names, initializer) as
    KerasHub's `BertTextClassifier`; `backbone` and `preprocessor` as in any KerasHub task.

    Args:
        backbone: a KerasHub encoder whose inputs include `padding_mask` (BERT family).
        num_classes: int >= 2.
        preprocessor: the task's `TextClassifierPreprocessor`, or None.
        activation: the output activation (`"softmax"` in `build_text_classifier`).
        dropout: dropout rate before the output layer.

    Raises:
        ValueError: a backbone without a `padding_mask` input.
    """

    def __init__(
        self, backbone, num_classes, preprocessor=None, activation=None, dropout=0.1, **kwargs
    ):
        inputs = backbone.input
        if not isinstance(inputs, dict) or "padding_mask" not in inputs:
            raise ValueError(
                f"pooling='mean' needs an encoder with a `padding_mask` input; "
                f"{type(backbone).__name__} takes {keras.tree.map_structure(str, inputs)}."
            )
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.output_pooling = keras.layers.GlobalAveragePooling1D(
            dtype=backbone.dtype_policy, name=POOLING_LAYER_NAME
        )
        self.output_dropout = keras.layers.Dropout(
            dropout, dtype=backbone.dtype_policy, name="classifier_dropout"
        )
        self.output_dense = keras.layers.Dense(
            num_classes,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            activation=activation,
            dtype=backbone.dtype_policy,
            name="logits",
        )
        sequence = sequence_output(backbone(inputs))
        pooled = self.output_pooling(sequence, mask=inputs["padding_mask"])
        outputs = self.output_dense(self.output_dropout(pooled))
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.num_classes = num_classes
        self.activation = keras.activations.get(activation)
        self.dropout = dropout

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "activation": keras.activations.serialize(self.activation),
            "dropout": self.dropout,
        }


def pooling_of(model):
    """`"mean"` for a `MeanPooledTextClassifier`, else `"cls"`."""
    return "mean" if isinstance(model, MeanPooledTextClassifier) else "cls"


def mean_pooled(model, num_classes, dropout):
    """A `MeanPooledTextClassifier` on `model`'s backbone and preprocessor (softmax output)."""
    return MeanPooledTextClassifier(
        backbone=model.backbone,
        num_classes=num_classes,
        preprocessor=model.preprocessor,
        activation="softmax",
        dropout=dropout,
        compile=False,
    )
