"""`FeatureSplit`: the caching pass over a classifier cut into frozen extractor and head.

`feature_cache.split_for_caching` cuts a classifier; `FeatureSplit.cache` runs the frozen part
once over the training and validation data and gives datasets of `(features, labels)` batches
in the batches and order of the original pipelines (see `feature_cache` for how). The features
are held in memory.
"""

from __future__ import annotations

import numpy as np

from keras_transfer.backbone_rewrites import EXTRACT_BATCH
from keras_transfer.example_sources import remade_per_epoch, remember_derivation

DECODE_CHUNK = 256  # examples decoded before the backbone runs on them (150 MB at 224x224)
VALIDATION_BATCH = 1024  # cached validation examples per batch (`FeatureSplit.cache`)


class FeatureSplit:
    """A classifier cut into a frozen feature extractor and a trainable head.

    Attributes:
        head: `keras.Model` from features to probabilities, sharing the classifier's layers.
        random_layers: names of the layers below the head that are random in training
            (augmentation, dropout); empty when caching is exact.
        remade_pipelines: after `cache`, True when the feature datasets are remade
            pipelines (which never read the original datasets), False when they look the
            features up by fingerprint (each epoch reads the original dataset once).
    """

    def __init__(self, extract, head, random_layers, preprocess=None):
        # An iterable of model-input batches (numpy) -> float32 (n, ...).
        self._extract = extract
        self.head = head
        self.random_layers = random_layers
        self._preprocess = preprocess
        self._progress = False  # a progress bar in `cache` (its argument)
        self.remade_pipelines = None

    @property
    def exact(self):
        return not self.random_layers

    def _keyed_inputs(self, dataset):
        """numpy batches `(model_inputs, keys)` from one pass (one iterator) of `dataset`."""
        preprocess = self._preprocess or (lambda x: x)
        return dataset.map(lambda x, *rest: (preprocess(x), _fingerprints(x))).as_numpy_iterator()

    def cache(self, train_ds, val_ds=None, progress=False):
        """Run the feature extractor once over both datasets; return feature datasets.

        With `progress`, a Keras progress bar counts the examples of the pass.

        Returns:
            `(train_features_ds, val_features_ds)`: the same batches as `train_ds` /
            `val_ds` (same order, labels and sample weights) with each input replaced by its
            features, float32 `(batch, *feature_shape)`; `val_features_ds` is None when
            `val_ds` is. With remade pipelines (`remade_pipelines`) the validation features
            come from memory in batches of up to `VALIDATION_BATCH` (1,024) examples, in
            `val_ds`' order: Keras weights each batch's loss and metrics by its size, so
            `fit` validates to the same numbers (up to float noise) in fewer steps (and
            fewer `on_test_batch_*` callback calls). On hymenoptera (153 validation images,
            1 step per epoch instead of 5), 10 head epochs on tensorflow took 0.72 s
            instead of 1.00 s (medians of 5 runs).
        """
        datasets = [data for data in (train_ds, val_ds) if data is not None]
        self._progress = progress
        self.remade_pipelines = all(
            getattr(data, "_kt_examples", None) is not None for data in datasets
        )
        if self.remade_pipelines:
            cached = self._cache_examples([data._kt_examples for data in datasets])
        else:
            cached = self._cache_by_fingerprint(datasets)
        return cached[0], (cached[1] if val_ds is not None else None)

    def _extract_with_progress(self, batches, total=None):
        """`self._extract(batches)`, with a progress bar of examples when asked for."""
        if not self._progress:
            return self._extract(batches)
        import keras
        import tensorflow as tf

        bar = keras.utils.Progbar(total, unit_name="example")

        def counted():
            done = 0
            for batch in batches:
                yield batch
                done += len(tf.nest.flatten(batch)[0])
                bar.update(done)

        features = self._extract(counted())
        bar.update(len(features), finalize=True)
        return features

    def _cache_examples(self, sources):
        import tensorflow as tf

        preprocess = self._preprocess or (lambda x: x)
        total = sum(len(source.examples) for source in sources)
        if all(source.in_memory for source in sources):
            features = self._extract_with_progress(
                (
                    tf.nest.map_structure(
                        np.asarray, preprocess(source.load(source.examples[i : i + EXTRACT_BATCH]))
                    )
                    for source in sources
                    for i in range(0, len(source.examples), EXTRACT_BATCH)
                ),
                total,
            )
            return self._feature_datasets(sources, features)
        in_order = [source.build(source.examples, source.load, False) for source in sources]
        everything = in_order[0]
        for more in in_order[1:]:
            everything = everything.concatenate(more)
        # Decode a chunk, then run the backbone on it: decoding threads that run beside the
        # backbone slowed torch's compute 1.7x on 2 cores.
        chunks = everything.map(lambda x, *rest: preprocess(x)).unbatch().batch(DECODE_CHUNK)
        features = self._extract_with_progress(
            (
                tf.nest.map_structure(lambda t, i=start: t[i : i + EXTRACT_BATCH], chunk)
                for chunk in chunks.as_numpy_iterator()
                for start in range(0, len(tf.nest.flatten(chunk)[0]), EXTRACT_BATCH)
            ),
            total,
        )
        return self._feature_datasets(sources, features)

    @staticmethod
    def _feature_datasets(sources, features):
        """Each source's pipeline remade over its rows of `features` (in source order); the
        second source's (validation) rows from memory in batches of `VALIDATION_BATCH`."""
        import tensorflow as tf

        datasets, start = [], 0
        for position, source in enumerate(sources):
            count = len(source.examples)
            rows = features[start : start + count]
            start += count
            if position == 1:
                datasets.append(_in_validation_batches(source, rows))
                continue
            store = tf.Variable(rows, trainable=False)
            indices = np.arange(count, dtype="int64")
            dataset = source.build(
                indices,
                lambda index, store=store: tf.gather(store, index),
                source.shuffle,
                None,  # epoch: every epoch reshuffles
                True,  # in_memory: one gather per batch
            )
            dataset._kt_cache = store  # keep the variable alive with the dataset
            datasets.append(dataset)
        return datasets

    def _cache_by_fingerprint(self, datasets):
        import tensorflow as tf

        keys = []

        def batches(dataset):
            for inputs, batch_keys in self._keyed_inputs(dataset):
                keys.append(batch_keys)
                yield inputs

        features = self._extract_with_progress(
            batch for data in datasets for batch in batches(data)
        )
        keys = keys or [np.zeros([0], "int64")]
        keys = np.concatenate(keys)
        unique_keys, first = np.unique(keys, return_index=True)  # equal inputs, equal features
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(unique_keys, first.astype("int64")),
            default_value=-1,
        )
        store = tf.Variable(features, trainable=False, name="cached_features")

        def lookup(x, *rest):
            index = table.lookup(_fingerprints(x))
            check = tf.debugging.assert_non_negative(
                index,
                message="an input was not seen when the features were cached: the data "
                "pipeline gives other inputs in this epoch (a .take(), .skip() or .filter() "
                "after a reshuffle, random augmentation in tf.data, ...); train without "
                "feature caching (cache_features=False), or pass the whole pipeline",
            )
            with tf.control_dependencies([check]):
                index = tf.identity(index)
            return (tf.gather(store, index), *rest)

        def looked_up(dataset):
            return dataset.map(lambda *element: lookup(*element))

        def feature_dataset(dataset):
            mapped = looked_up(dataset)
            mapped._kt_cache = (table, store)  # keep the resources alive with the dataset
            if remade_per_epoch(dataset):  # each epoch's batches, as without caching
                remember_derivation(mapped, dataset, looked_up)
            return mapped

        return [feature_dataset(data) for data in datasets]


def _in_validation_batches(source, features):
    """`source`'s pipeline in file order (`shuffle=False`) with `features` (its examples'
    rows, in file order) as inputs, from memory in batches of up to `VALIDATION_BATCH`.

    The labels (and any other elements) come from the pipeline made over example indices;
    the features are copied once, into the dataset (as the training rows are copied into a
    `tf.Variable`).
    """
    import tensorflow as tf

    indices = np.arange(len(source.examples), dtype="int64")
    batches = list(source.build(indices, lambda index: index, False).as_numpy_iterator())
    if not batches:
        return source.build(indices, lambda index: tf.gather(features, index), False)
    order, *rest = (np.concatenate(parts) for parts in zip(*batches, strict=True))
    if not np.array_equal(order, indices):  # file order is the features' order: no copy
        features = features[order]
    return tf.data.Dataset.from_tensor_slices((features, *rest)).batch(VALIDATION_BATCH)


def _fingerprints(inputs):
    """int64 fingerprint of each example of a batch (images or strings)."""
    import tensorflow as tf

    return tf.reshape(tf.bitcast(tf.fingerprint(inputs), tf.int64), [-1])
