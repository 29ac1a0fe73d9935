"""Dynamic padding for text batches: pad each batch to its longest row, not to `sequence_length`.

A KerasHub text classifier pads every example to the preprocessor's `sequence_length` (128 by
default). Short texts (an SMS is ~20 word pieces) then spend most of the encoder's time on
padding. `pad_to_longest` preprocesses the batches in `tf.data` with the model's own
preprocessor and cuts the padding columns that no row of the batch uses; the encoder masks
padding, so the outputs are the same up to float noise (dropout draws differ with the shape).
"""

from __future__ import annotations

import contextlib

PAD_MULTIPLE = 16


def pad_to_longest(model, dataset, multiple=PAD_MULTIPLE):
    """Preprocess `(texts, labels)` batches and trim their padding to the longest row.

    Args:
        model: a classifier from `build_text_classifier` (a KerasHub `TextClassifier`).
        dataset: `tf.data.Dataset` of `(texts, labels)` or `(texts, labels, weights)`
            batches, texts a `tf.string` tensor `(batch,)`.
        multiple: int, default 16: lengths are rounded up to a multiple of it (and capped
            at `sequence_length`), so that jit-compiled steps see few distinct shapes.

    Returns:
        A dataset of `(inputs, labels[, weights])`, inputs the preprocessor's dict
        (`token_ids`, `padding_mask`, ...) of int32 / bool tensors `(batch, length)`, with
        `length` <= `sequence_length`. Feed it to the model with `without_preprocessor`.
    """
    import tensorflow as tf

    preprocessor = model.preprocessor
    limit = int(preprocessor.sequence_length)

    def trim(texts, *rest):
        inputs = preprocessor(texts)
        used = tf.reduce_max(tf.reduce_sum(tf.cast(inputs["padding_mask"], "int32"), axis=1))
        length = tf.minimum((used + multiple - 1) // multiple * multiple, limit)
        return ({key: value[:, :length] for key, value in inputs.items()}, *rest)

    return dataset.map(trim, num_parallel_calls=tf.data.AUTOTUNE)


@contextlib.contextmanager
def without_preprocessor(model):
    """Within the block, `model.fit` / `evaluate` take preprocessed inputs (KerasHub skips
    its own preprocessing when `task.preprocessor` is None)."""
    preprocessor = model.preprocessor
    model.preprocessor = None
    try:
        yield model
    finally:
        model.preprocessor = preprocessor
