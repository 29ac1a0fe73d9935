"""The validation examples a classifier gets most wrong (highest cross-entropy loss)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class TopLoss:
    """One example with a high loss.

    Attributes:
        index: position of the example in the dataset's order (int).
        loss: its categorical cross-entropy, `-log(p[true])` (float, nats).
        true, predicted: class ids (int).
        true_probability, predicted_probability: the model's probabilities of those classes.
        input: the example as the model takes it: an `(height, width, 3)` float32 image or a
            str.
    """

    index: int
    loss: float
    true: int
    predicted: int
    true_probability: float
    predicted_probability: float
    input: object


def _as_numpy(inputs):
    import tensorflow as tf

    if isinstance(inputs, tf.Tensor):
        if inputs.dtype == tf.string:
            return np.array([t.decode("utf-8", "replace") for t in inputs.numpy()], dtype=object)
        return inputs.numpy()
    return np.asarray(inputs)


def top_losses(model, dataset, k=8):
    """The `k` examples of `dataset` with the highest loss, highest first.

    Like fastai's `ClassificationInterpretation.top_losses`: one pass of `model` over the
    data; only the `k` worst inputs are kept in memory.

    Args:
        model: a classifier returning `(batch, num_classes)` probabilities.
        dataset: a `tf.data.Dataset` (or iterable) of `(inputs, labels)` batches, labels
            one-hot or int class ids, e.g. the validation dataset of `image_folder_datasets`
            or `text_csv_datasets`.
        k: how many examples to return (int >= 1), default 8.

    Returns:
        A list of at most `k` `TopLoss`, sorted by decreasing loss.

    Raises:
        ValueError: `k` < 1, arrays or a tuple as `dataset`
            (`fit_inputs.check_not_arrays`), or an empty dataset.
    """
    from keras_transfer.data.fit_inputs import check_not_arrays

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be an int >= 1, got {k!r}.")
    check_not_arrays(dataset, "dataset")
    kept, offset = [], 0
    for batch in dataset:
        inputs = _as_numpy(batch[0])
        labels = np.asarray(batch[1])
        labels = labels.argmax(-1) if labels.ndim == 2 else labels.astype(int)
        probabilities = np.asarray(model.predict_on_batch(inputs), dtype="float32")
        true_p = probabilities[np.arange(len(labels)), labels]
        losses = -np.log(np.clip(true_p, 1e-12, 1.0))
        predicted = probabilities.argmax(-1)
        for i in np.argsort(-losses)[:k]:
            item = inputs[i]
            kept.append(
                TopLoss(
                    index=offset + int(i),
                    loss=float(losses[i]),
                    true=int(labels[i]),
                    predicted=int(predicted[i]),
                    true_probability=float(true_p[i]),
                    predicted_probability=float(probabilities[i, predicted[i]]),
                    input=str(item) if inputs.dtype == object else np.array(item),
                )
            )
        kept = sorted(kept, key=lambda t: -t.loss)[:k]
        offset += len(labels)
    if offset == 0:
        raise ValueError("The dataset is empty: no losses to rank.")
    return kept
