"""The text side of `export_onnx` / `export_litert`: the tokenizer stays outside the artifact.

ONNX and LiteRT graphs cannot hold KerasHub's tokenizers (string ops), so a text classifier is
exported from token ids on: the artifact takes the preprocessor's outputs, int32
`(batch, sequence_length)` arrays (`token_ids`, `segment_ids`, `padding_mask` for BERT), and
the preprocessor is saved beside it in `preprocessor/` (a KerasHub preset folder without
weights), which `runtimes.text_inputs` loads to turn raw strings into those arrays.
"""

from __future__ import annotations

import json
import os

import numpy as np

# A default check sample: short English sentences (any tokenizer maps unknown words to its
# unknown token, so they are valid input for every vocabulary).
CHECK_TEXTS = (
    "the film was wonderful and i would watch it again",
    "a dull plot, wooden acting and far too long",
    "call now to claim your free prize",
    "are we still meeting for lunch tomorrow?",
    "stocks fell sharply after the report",
    "the team won the final in extra time",
    "new phone chips promise longer battery life",
    "ok",
)


def token_inputs(model, texts):
    """The preprocessor's output for `texts` as numpy: dict of int32 `(n, sequence_length)`."""
    outputs = model.preprocessor(list(texts))
    return {key: np.asarray(value).astype("int32") for key, value in outputs.items()}


def check_texts(check_data):
    """`check_data` for a text model: a non-empty list of str (default `CHECK_TEXTS`)."""
    if check_data is None:
        return list(CHECK_TEXTS)
    texts = [check_data] if isinstance(check_data, str) else list(check_data)
    if not texts or not all(isinstance(text, str) for text in texts):
        raise ValueError(
            "`check_data` of a text classifier must be a non-empty list of str (raw texts), "
            f"got {type(check_data).__name__}."
        )
    return texts


def probabilities(model, inputs):
    """The model's probabilities on token inputs (the functional model, no preprocessor)."""
    import keras

    return np.asarray(keras.ops.convert_to_numpy(model(inputs, training=False)), "float32")


def save_preprocessor(model, folder):
    """Save the model's preprocessor as a weight-free KerasHub preset in `folder`: its own
    files (`preprocessor.json`, `tokenizer.json`, vocabulary assets) and the backbone's
    `config.json`, which KerasHub reads to pick the preprocessor class on load."""
    import keras

    model.preprocessor.save_to_preset(folder)
    config = keras.saving.serialize_keras_object(model.backbone)
    for key in ("compile_config", "build_config"):
        config.pop(key, None)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=1)
