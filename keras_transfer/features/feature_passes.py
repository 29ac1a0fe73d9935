"""Cached features of training data that is not a tf.data pipeline: one pass over it.

`FeatureSplit.cache` looks each example's features up inside tf.data. A
`keras.utils.PyDataset`, a torch `DataLoader` or a grain dataset is read once instead: each
batch's inputs go through the frozen part of the model (in inference mode) and its labels,
and sample weights when given, are kept beside the features, in memory (4 bytes per
feature: 5 KB an example for MobileNetV2's 1,280 features, 1.5 KB for MiniLM's 384). The
head then trains on datasets of those arrays. A loader that augments at random gives the
head the one draw of that pass.
"""

from __future__ import annotations

import numpy as np

from keras_transfer.data.fit_inputs import is_tf_dataset, iter_batches, keyed_by, kind_of
from keras_transfer.features.feature_split import VALIDATION_BATCH


def _arrays(split, data, progress, input_key):
    """`(batch size, features, labels, sample weights or None)` of one pass over `data`."""
    labels, weights, sizes = [], [], []

    def inputs():
        for index, batch in enumerate(iter_batches(data)):
            if not isinstance(batch, tuple) or len(batch) not in (2, 3):
                raise ValueError(
                    f"Batch {index} of the {kind_of(data)} is not an (inputs, labels) or "
                    "(inputs, labels, sample_weights) tuple; give batches of that form."
                )
            labels.append(np.asarray(batch[1]))
            if len(batch) == 3:
                weights.append(np.asarray(batch[2], dtype="float32").reshape(-1))
            sizes.append(len(labels[-1]))
            yield batch[0][input_key] if keyed_by(batch[0], input_key) else batch[0]

    features = list(split.features_of(inputs(), progress))
    if not sizes:
        raise ValueError(f"The {kind_of(data)} gave no batch to cache the features of.")
    if weights and len(weights) != len(labels):
        raise ValueError(f"Some batches of the {kind_of(data)} have sample weights, others not.")
    weight = np.concatenate(weights) if weights else None
    return sizes[0], np.concatenate(features), np.concatenate(labels), weight


def one_pass_feature_datasets(split, train_data, val_data=None, progress=False, input_key=None):
    """`(train_features_ds, val_features_ds)` for data that is not a tf.data pipeline.

    Args:
        split: the model's `FeatureSplit`.
        train_data, val_data: data `fit` takes (a `PyDataset`, a torch `DataLoader`, a grain
            dataset, or a `tf.data.Dataset`), each giving `(inputs, labels[, weights])`
            batches; `val_data` may be None. Each is read once.
        progress: bool, a progress bar of the examples.
        input_key: the model's input name, or None: inputs given as a dict of that one key
            (`{"image": x}`, as Keras takes them) are read out of it.

    Returns:
        `tf.data.Dataset`s of `(features float32 (batch, *feature_shape), labels[,
        weights])`: the training examples in their order, in batches of the size of the
        data's first batch (a `PyDataset`'s batches in a new order every epoch, as `fit`
        shuffles them), the validation examples in their order in batches of up to
        `VALIDATION_BATCH`; the second is None when `val_data` is.

    Raises:
        ValueError: a batch that is not such a tuple, no batch at all, or sample weights in
            some batches only.
    """
    import keras
    import tensorflow as tf

    if split.store is not None:
        import warnings

        warnings.warn(
            f"feature_store={split.store!r} is not used: it keeps the features of datasets "
            f"from image_folder_datasets and text_csv_datasets, not of a {kind_of(train_data)}.",
            UserWarning,
            stacklevel=3,
        )
    datasets = []
    for data in (train_data, val_data):
        if data is None:
            datasets.append(None)
            continue
        size, *arrays = _arrays(split, data, progress, input_key)
        dataset = tf.data.Dataset.from_tensor_slices(tuple(a for a in arrays if a is not None))
        if data is not train_data:
            dataset = dataset.batch(VALIDATION_BATCH)
        elif isinstance(data, keras.utils.PyDataset):  # its batches in a new order every epoch, as
            batches = -(-len(arrays[0]) // size)  # `fit` would give them
            dataset = dataset.batch(size).shuffle(batches, reshuffle_each_iteration=True)
        else:  # a DataLoader, grain: as read (their own sampler, if any, shuffled it)
            dataset = dataset.batch(size)
        datasets.append(dataset)
    return datasets[0], datasets[1]


def cached_feature_datasets(split, train_data, val_data=None, progress=False, input_key=None):
    """`split.cache(...)` for `tf.data` datasets, else `one_pass_feature_datasets(...)`:
    the `(train_features_ds, val_features_ds)` of any data `fit` takes. `input_key`: see
    `one_pass_feature_datasets` (`tf.data` batches are read out before, `keyed_batches`).

    Raises:
        ValueError: as `one_pass_feature_datasets` (data of other kinds only).
    """
    if all(is_tf_dataset(data) for data in (train_data, val_data) if data is not None):
        return split.cache(train_data, val_data, progress=progress)
    return one_pass_feature_datasets(split, train_data, val_data, progress, input_key)
