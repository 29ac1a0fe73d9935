"""`FeatureSplit`: the caching pass over a classifier cut into frozen extractor and head.

`feature_cache.split_for_caching` cuts a classifier; `FeatureSplit.cache` runs the frozen part
once over the training and validation data and gives datasets of `(features, labels)` batches
in the batches and order of the original pipelines (see `feature_cache` for how). The features
are held in memory up to the memory budget and memory-mapped from disk above it, and with a
feature store (`FeatureSplit.store`) read from and written to the store
(`keras_transfer.features.feature_store`).
"""

from __future__ import annotations

import numpy as np

from keras_transfer.data.example_sources import remade_per_epoch, remember_derivation
from keras_transfer.features import feature_store
from keras_transfer.features.backbone_rewrites import EXTRACT_BATCH

DECODE_CHUNK = 256  # examples decoded before the backbone runs on them (150 MB at 224x224)
VALIDATION_BATCH = 1024  # cached validation examples per batch (`FeatureSplit.cache`)


class FeatureSplit:
    """A classifier cut into a frozen feature extractor and a trainable head.

    Args:
        extract: function from an iterable of model-input batches (NumPy) to an iterable of
            float32 feature arrays `(rows, *feature_shape)`, in the same order.
        head: `keras.Model` from features to probabilities, sharing the classifier's layers.
        random_layers: names of the layers below the head that are random in training.
        preprocess: function applied to each input batch before `extract` (text), or None.
        layers: the Keras layers and models `extract` computes with (for the store's key).

    Attributes:
        head, random_layers: as given; empty `random_layers` means caching is exact.
        store: None (default), or a folder (str or path-like): the feature store that
            `cache` reads and writes for pipelines of ours
            (`keras_transfer.features.feature_store`).
        memory_budget: None (default: `feature_store.memory_budget()`, 2 GiB unless
            `$KERAS_TRANSFER_FEATURE_MEMORY` says otherwise) or bytes: cached features above
            it are memory-mapped from disk instead of held in memory.
        remade_pipelines: after `cache`, True when the feature datasets are remade
            pipelines (which never read the original datasets), False when they look the
            features up by fingerprint (each epoch reads the original dataset once).
        store_hit: after `cache` with a store, True when the features were read from it (the
            backbone did not run), False when they were computed and written to it.
    """

    def __init__(self, extract, head, random_layers, preprocess=None, layers=()):
        self._extract = extract
        self.head = head
        self.random_layers = random_layers
        self._preprocess = preprocess
        self.layers = list(layers)
        self._progress = False  # a progress bar in `cache` (its argument)
        self.store = None
        self.memory_budget = None
        self.remade_pipelines = None
        self.store_hit = None

    @property
    def exact(self):
        return not self.random_layers

    def _keyed_inputs(self, dataset):
        """numpy batches `(model_inputs, keys)` from one pass (one iterator) of `dataset`."""
        preprocess = self._preprocess or (lambda x: x)
        return dataset.map(lambda x, *rest: (preprocess(x), _fingerprints(x))).as_numpy_iterator()

    def cache(self, train_ds, val_ds=None, progress=False):
        """Run the feature extractor once over both datasets; return feature datasets.

        With `progress`, a Keras progress bar counts the examples of the pass. With a
        `store` and pipelines of ours, features already in the store are read from it (no
        decoding, no backbone pass), and computed ones are written to it; with other
        datasets the store is not used (a `UserWarning` says so).

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
            instead of 1.00 s (medians of 5 runs). Features above the memory budget are
            read from a memory-mapped file in the same batches and order.

        Raises:
            NotADirectoryError: `store` is a file.
            ValueError: a dataset (other than a pipeline of ours) that gives no batches.
        """
        datasets = [data for data in (train_ds, val_ds) if data is not None]
        self._progress = progress
        self.remade_pipelines = all(
            getattr(data, "_kt_examples", None) is not None for data in datasets
        )
        if self.remade_pipelines:
            cached = self._cache_examples([data._kt_examples for data in datasets])
        else:
            if self.store is not None:
                import warnings

                warnings.warn(
                    f"feature_store={self.store!r} is not used: it keeps the features of "
                    "datasets from image_folder_datasets and text_csv_datasets (not of a "
                    "dataset derived from them, or of another tf.data pipeline).",
                    UserWarning,
                    stacklevel=2,
                )
            cached = self._cache_by_fingerprint(datasets)
        return cached[0], (cached[1] if val_ds is not None else None)

    def features_of(self, inputs, progress=False):
        """The feature arrays of `inputs`, an iterable of model-input batches (NumPy), in
        their order: each batch preprocessed as the model does (text), then the frozen
        part in inference mode (`cache`'s pass, for data that is not a tf.data pipeline)."""
        import tensorflow as tf

        preprocess = self._preprocess
        if preprocess is not None:  # KerasHub preprocessors run inside tf.data
            inputs = (
                next(tf.data.Dataset.from_tensors(x).map(preprocess).as_numpy_iterator())
                for x in inputs
            )
        self._progress = progress
        return self._features(inputs)

    def _budget(self):
        return feature_store.memory_budget() if self.memory_budget is None else self.memory_budget

    def _features(self, batches, total=None):
        """`self._extract(batches)`'s arrays, with a progress bar of examples when asked for."""
        if not self._progress:
            yield from self._extract(batches)
            return
        import keras
        import tensorflow as tf

        bar = keras.utils.Progbar(total, unit_name="example")
        done = [0, 0]  # examples read, feature rows given

        def counted():
            for batch in batches:
                yield batch
                done[0] += len(tf.nest.flatten(batch)[0])
                bar.update(done[0])

        for features in self._extract(counted()):
            done[1] += len(features)
            yield features
        bar.update(done[1], finalize=True)

    def _cache_examples(self, sources):
        budget = self._budget()
        if self.store is None:
            features = _collect(self._pass_over(sources), _count(sources), budget)
            return self._feature_datasets(sources, features)
        store = feature_store.FeatureStore(self.store)
        key, description = feature_store.feature_key(self.layers, sources, self._preprocess)
        features = store.read(key, budget)
        self.store_hit = features is not None
        if features is None:
            folder, path = store.partial_path(key)
            try:
                features = _collect(self._pass_over(sources), _count(sources), budget, path)
                features = store.commit(key, description, folder, features, budget)
            except BaseException:
                import shutil

                shutil.rmtree(folder, ignore_errors=True)
                raise
        return self._feature_datasets(sources, features)

    def _pass_over(self, sources):
        """The feature arrays of all examples of `sources`, in order (the backbone pass)."""
        import tensorflow as tf

        preprocess = self._preprocess or (lambda x: x)
        total = _count(sources)
        if all(source.in_memory for source in sources):
            return self._features(
                (
                    tf.nest.map_structure(
                        np.asarray, preprocess(source.load(source.examples[i : i + EXTRACT_BATCH]))
                    )
                    for source in sources
                    for i in range(0, len(source.examples), EXTRACT_BATCH)
                ),
                total,
            )
        in_order = [source.build(source.examples, source.load, False) for source in sources]
        everything = in_order[0]
        for more in in_order[1:]:
            everything = everything.concatenate(more)
        # Decode a chunk, then run the backbone on it: decoding threads that run beside the
        # backbone slowed torch's compute 1.7x on 2 cores.
        chunks = everything.map(lambda x, *rest: preprocess(x)).unbatch().batch(DECODE_CHUNK)
        return self._features(
            (
                tf.nest.map_structure(lambda t, i=start: t[i : i + EXTRACT_BATCH], chunk)
                for chunk in chunks.as_numpy_iterator()
                for start in range(0, len(tf.nest.flatten(chunk)[0]), EXTRACT_BATCH)
            ),
            total,
        )

    @staticmethod
    def _feature_datasets(sources, features):
        """Each source's pipeline remade over its rows of `features` (in source order); the
        second source's (validation) rows in batches of `VALIDATION_BATCH`."""
        import tensorflow as tf

        datasets, start = [], 0
        for position, source in enumerate(sources):
            count = len(source.examples)
            rows = features[start : start + count]
            start += count
            if position == 1:
                datasets.append(_in_validation_batches(source, rows))
                continue
            if isinstance(rows, np.memmap):
                store, load = rows, _memory_mapped_load(rows)
            else:
                store = tf.Variable(rows, trainable=False)
                load = lambda index, store=store: tf.gather(store, index)  # noqa: E731
            indices = np.arange(count, dtype="int64")
            dataset = source.build(
                indices,
                load,
                source.shuffle,
                None,  # epoch: every epoch reshuffles
                True,  # in_memory: one gather per batch
            )
            dataset._kt_cache = store  # keep the variable (or memory map) alive with the dataset
            datasets.append(dataset)
        return datasets

    def _cache_by_fingerprint(self, datasets):
        import tensorflow as tf

        keys, counts = [], [0] * len(datasets)

        def batches(position, dataset):
            for inputs, batch_keys in self._keyed_inputs(dataset):
                keys.append(batch_keys)
                counts[position] += 1
                yield inputs

        features = list(
            self._features(batch for i, data in enumerate(datasets) for batch in batches(i, data))
        )
        for name, count in zip(("train_ds", "val_ds")[: len(counts)], counts, strict=True):
            if count == 0:  # an empty .filter(), ...: a lookup table of nothing, a head not fit
                fix = ", or val_ds=None to train without validation" if name == "val_ds" else ""
                raise ValueError(f"`{name}` gave no batches: pass data of at least one batch{fix}.")
        features, keys = np.concatenate(features), np.concatenate(keys)
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
    rows, in file order) as inputs, in batches of up to `VALIDATION_BATCH`.

    The labels (and any other elements) come from the pipeline made over example indices;
    features in memory are copied once, into the dataset (as the training rows are copied
    into a `tf.Variable`); memory-mapped ones are read batch by batch.
    """
    import tensorflow as tf

    indices = np.arange(len(source.examples), dtype="int64")
    batches = list(source.build(indices, lambda index: index, False).as_numpy_iterator())
    if not batches:
        return source.build(indices, lambda index: tf.gather(features, index), False)
    order, *rest = (np.concatenate(parts) for parts in zip(*batches, strict=True))
    if isinstance(features, np.memmap):
        load = _memory_mapped_load(features)
        dataset = tf.data.Dataset.from_tensor_slices((order, *rest)).batch(VALIDATION_BATCH)
        return dataset.map(lambda index, *others: (load(index), *others))
    if not np.array_equal(order, indices):  # file order is the features' order: no copy
        features = features[order]
    return tf.data.Dataset.from_tensor_slices((features, *rest)).batch(VALIDATION_BATCH)


def _memory_mapped_load(rows):
    """A `load` of feature rows by a vector of indices (int64) from `rows`, a memory map:
    float32 `(len(indices), *rows.shape[1:])`, read by NumPy inside the pipeline."""
    import tensorflow as tf

    def load(index):
        batch = tf.numpy_function(lambda i: np.asarray(rows[i]), [index], tf.float32)
        return tf.ensure_shape(batch, [None, *rows.shape[1:]])

    return load


def _count(sources):
    return sum(len(source.examples) for source in sources)


def _collect(chunks, total, budget, path=None):
    """The feature arrays of `chunks` (an iterable, `total` rows in all) in one float32
    array `(total, *feature_shape)`: written to the .npy file `path` when given (memory-mapped),
    else in memory when it holds at most `budget` bytes, else in a memory-mapped temporary
    file (`feature_store.spill_file`), removed with the array.

    Raises:
        RuntimeError: the chunks hold another number of rows than `total`.
    """
    features, spill, done, extra = None, None, 0, False
    for chunk in chunks:
        if features is None:
            shape = (total, *chunk.shape[1:])
            if path is None and 4 * int(np.prod(shape)) > budget:
                spill, path = feature_store.spill_file()
            if path is None:
                features = np.empty(shape, "float32")
            else:
                features = np.lib.format.open_memmap(path, "w+", "float32", shape)
        if done + len(chunk) > total:
            extra = True
            break
        features[done : done + len(chunk)] = chunk
        done += len(chunk)
    if features is None or done != total or extra:
        raise RuntimeError(
            f"the caching pass gave feature rows for other than the {total} examples: "
            "the pipeline gave more or fewer examples than it holds"
        )
    if spill is not None:
        features._kt_spill = spill  # the temporary folder lives as long as the memory map
    return features


def _fingerprints(inputs):
    """int64 fingerprint of each example of a batch (images or strings)."""
    import tensorflow as tf

    return tf.reshape(tf.bitcast(tf.fingerprint(inputs), tf.int64), [-1])
