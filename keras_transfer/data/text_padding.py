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


def pad_to_longest(model, dataset, multiple=PAD_MULTIPLE, bucket_by_length=False):
    """Preprocess `(texts, labels)` batches and trim their padding to the longest row.

    Args:
        model: a classifier from `build_text_classifier` (a KerasHub `TextClassifier`).
        dataset: `tf.data.Dataset` of `(texts, labels)` or `(texts, labels, weights)`
            batches, texts a `tf.string` tensor `(batch,)`.
        multiple: int, default 16: lengths are rounded up to a multiple of it (and capped
            at `sequence_length`), so that jit-compiled steps see few distinct shapes.
        bucket_by_length: bool, default False. True regroups the examples into batches of
            similar length (buckets `multiple` word pieces wide, each batch as large as the
            input batches, from the examples in the order they come): less padding still,
            but other batches than the input's, so training is not step-for-step the same.

    Returns:
        A dataset of `(inputs, labels[, weights])`, inputs the preprocessor's dict
        (`token_ids`, `padding_mask`, ...) of int32 / bool tensors `(batch, length)`, with
        `length` <= `sequence_length`. Feed it to the model with `without_preprocessor`.
    """
    import tensorflow as tf

    from keras_transfer.data.example_sources import remember_derivation

    preprocessor = model.preprocessor
    limit = int(preprocessor.sequence_length)

    def trim(texts, *rest):
        inputs = preprocessor(texts)
        used = tf.reduce_max(tf.reduce_sum(tf.cast(inputs["padding_mask"], "int32"), axis=1))
        length = tf.minimum((used + multiple - 1) // multiple * multiple, limit)
        return ({key: value[:, :length] for key, value in inputs.items()}, *rest)

    if not bucket_by_length:

        def padded(batches):
            return batches.map(trim, num_parallel_calls=tf.data.AUTOTUNE)

        return remember_derivation(padded(dataset), dataset, padded)
    batch_size = int(tf.shape(next(iter(dataset))[0])[0])

    def trim_one(inputs, *rest):
        used = tf.reduce_sum(tf.cast(inputs["padding_mask"], "int32"))
        return ({key: value[:used] for key, value in inputs.items()}, *rest)

    examples = dataset.map(lambda texts, *rest: (preprocessor(texts), *rest)).unbatch()
    boundaries = list(range(multiple, limit, multiple))
    return (
        examples.map(trim_one)
        .bucket_by_sequence_length(
            lambda inputs, *rest: tf.reduce_sum(tf.cast(inputs["padding_mask"], "int32")),
            bucket_boundaries=[b + 1 for b in boundaries],
            bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
            pad_to_bucket_boundary=False,
        )
        .map(lambda inputs, *rest: (_round_up(inputs, multiple, limit), *rest))
        .prefetch(tf.data.AUTOTUNE)
    )


def _round_up(inputs, multiple, limit):
    """Pad a batch's columns to a multiple of `multiple` (few shapes for jit)."""
    import tensorflow as tf

    length = tf.shape(inputs["padding_mask"])[1]
    target = tf.minimum((length + multiple - 1) // multiple * multiple, limit)
    return {key: tf.pad(value, [[0, 0], [0, target - length]]) for key, value in inputs.items()}


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
