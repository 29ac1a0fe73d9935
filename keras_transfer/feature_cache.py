"""Frozen-feature caching: run the frozen backbone once, train the head on what it outputs.

With the backbone frozen, every epoch pushes the same images (or sentences) through the same
function. `split_for_caching(model)` cuts the classifier into that part and a head model made
of the classifier's own head layers; `FeatureSplit.cache` runs the frozen part once over the
training and validation data and gives datasets of `(features, labels)` batches. Training the
head model trains the classifier in place.

The feature datasets keep the batches and order of the original pipelines, reshuffling
included, in one of two ways:
- Pipelines from `image_folder_datasets` and `text_csv_datasets` remember the examples they
  were made from (`ExampleSource`). The backbone runs once over those examples in file
  order, and the same pipeline (same seed, same shuffling) is made again over the cached
  features, and the images are not read again. Under `fine_tune` (`one_pass_per_epoch`)
  every epoch of either pipeline is made anew in the order `epoch_order` draws from the seed
  and the epoch, so epoch for epoch the head sees the batches of an uncached run.
- Any other `tf.data` pipeline is run once, and its inputs are looked up per example by a
  fingerprint (`tf.fingerprint`) in every epoch: the inputs still flow through the pipeline,
  the backbone does not. When one of the two datasets is of another kind, both go this way;
  a pipeline of ours is then still made anew for every epoch, in the same order.

On tensorflow and torch, images go through the frozen backbone made over for inference
(`_inference_extractor`): each BatchNormalization that follows a convolution is folded into
its kernel and bias (half the backbone's time on tensorflow, where the backbone's own graph
runs with the folded weights: `FoldedFunctional`), and on torch a copy of the backbone runs
channels-first where that gives the same features (Keras' torch convolutions transpose
channels-last inputs around every call, which took up to half the backbone's time), with
each convolution's bias and the ReLU after it inside one call (`FusedConv2D`).

Text is encoded in batches of similar length, each padded to its longest row (the encoder
masks padding: the same outputs up to float noise), which is faster than the fixed
`sequence_length` padding of training.

Exact when nothing below the head is random in training: no augmentation layers and no
dropout inside the backbone (MobileNet, ResNet, ... without augmentation). Otherwise the
features are those of inference mode (no augmentation, no dropout in the frozen part: what
the Keras transfer-learning guide gets by calling the base model with `training=False`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from keras_transfer.precision import dtype_policy
from keras_transfer.text_padding import PAD_MULTIPLE

DECODE_CHUNK = 256  # examples decoded before the backbone runs on them (150 MB at 224x224)
EXTRACT_BATCH = 32  # examples per backbone call
CHECK_BATCH = 4  # images (and 2 of noise) on which `_inference_extractor`'s copy is checked
VALIDATION_BATCH = 1024  # cached validation examples per batch (`FeatureSplit.cache`)


class ExampleSource(NamedTuple):
    """How a pipeline was made from its examples, so that it can be made again over others.

    Attributes:
        examples: the per-example sources, in file order (image paths or texts).
        load: tf function from one source to the model's input (e.g. decode an image).
        build: `build(examples, load, shuffle, epoch=None, in_memory=False)` gives the
            pipeline's batches of `(load(example), label)` for the same labels, batch size
            and seed; `shuffle=False` keeps file order; with `epoch` (an int64 scalar
            tensor) the batches of that epoch alone, in the order `epoch_order` gives; with
            `in_memory`, `load` takes each batch's vector of examples (one gather per batch
            instead of one per example: on 244 cached hymenoptera features, 10 epochs read
            in 0.08 s instead of 0.16 s).
        shuffle: whether the pipeline reshuffles every epoch.
        in_memory: whether `load` also takes a vector of examples and gives their batch
            straight from memory (e.g. decoded images taken by index); the caching pass
            then reads them without a pipeline.
    """

    examples: Any
    load: Callable
    build: Callable
    shuffle: bool
    in_memory: bool = False


def remember_examples(dataset, source):
    """Attach an `ExampleSource` to `dataset` (kept only by this dataset object)."""
    dataset._kt_examples = source
    return dataset


def remember_derivation(dataset, parent, transform):
    """Note that `dataset` is `transform(parent)` (a per-batch transformation), so that
    `epoch_pipeline` can make it for one epoch from `parent`'s pipeline of that epoch."""
    dataset._kt_derived = (parent, transform)
    return dataset


def shuffle_seed(seed):
    """`seed` of a dataset function checked: an int in [0, 2**32), or None for one drawn
    from NumPy's global generator (which `keras.utils.set_random_seed` seeds).

    Raises:
        ValueError: `seed` is not such an int or None.
    """
    if seed is None:
        return int(np.random.randint(2**31 - 1))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"`seed` must be an int in [0, 2**32) or None, got {seed!r}.")
    return int(seed)


def epoch_order(count, seed, epoch):
    """The order of `count` examples in epoch `epoch`: a permutation drawn from `(seed,
    epoch)` alone (`tf.random.experimental.stateless_shuffle`), so it does not depend on how
    many iterators of the dataset were made before (by `fit`, a resume, feature caching).

    Returns:
        int64 tensor `(count,)`.
    """
    import tensorflow as tf

    seed = tf.stack([tf.constant(seed, "int64"), tf.cast(epoch, "int64")])
    return tf.random.experimental.stateless_shuffle(tf.range(count, dtype="int64"), seed)


def shuffled_slices(examples, labels, *, shuffle, seed, epoch=None):
    """`tf.data.Dataset.from_tensor_slices((examples, labels))` in the order a pipeline of
    ours gives them: file order without `shuffle`; with `shuffle`, the order of epoch
    `epoch` (an int64 scalar tensor, `epoch_order`), or without `epoch` a full reshuffle by
    every iterator (with `seed`).
    """
    import tensorflow as tf

    count = len(examples)
    if shuffle and epoch is not None:
        order = epoch_order(count, seed, epoch)
        examples, labels = tf.gather(examples, order), tf.gather(labels, order)
    dataset = tf.data.Dataset.from_tensor_slices((examples, labels))
    if shuffle and epoch is None:
        dataset = dataset.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    return dataset


def remade_per_epoch(dataset):
    """Whether `epoch_pipeline` can make `dataset`'s batches of any epoch."""
    if getattr(dataset, "_kt_examples", None) is not None:
        return True
    parent, _ = getattr(dataset, "_kt_derived", (None, None))
    return parent is not None and remade_per_epoch(parent)


def epoch_pipeline(dataset, epoch):
    """The batches `dataset` gives in epoch `epoch` (an int64 scalar tensor), or None.

    For pipelines from `image_folder_datasets` and `text_csv_datasets` (and those remade over
    cached features, and `pad_to_longest` of them): the same pipeline over the examples in
    `epoch_order` (file order without shuffling). None for any other dataset.
    """
    source = getattr(dataset, "_kt_examples", None)
    if source is not None:
        return source.build(source.examples, source.load, source.shuffle, epoch, source.in_memory)
    parent, transform = getattr(dataset, "_kt_derived", (None, None))
    if parent is None:
        return None
    parent_epoch = epoch_pipeline(parent, epoch)
    return None if parent_epoch is None else transform(parent_epoch)


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


def _random_layers(layers):
    """Names of layers (searched recursively) that draw random numbers in training."""
    import keras

    names = []
    for outer in layers:
        for layer in outer._flatten_layers(include_self=True, recursive=True):
            if getattr(layer, "rate", None) == 0:  # e.g. Dropout(0): a no-op
                continue
            if any(isinstance(v, keras.random.SeedGenerator) for v in vars(layer).values()):
                names.append(layer.name)
    return names


def _image_split(model):
    import keras

    from keras_transfer.freezing import get_backbone

    try:
        backbone = get_backbone(model)
    except ValueError:
        return None
    layers = model.layers
    # Only a plain chain of layers (as build_image_classifier makes) can be cut in two.
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return None
    if model.outputs[0]._keras_history.operation is not layers[-1]:
        return None
    for previous, layer in zip(layers, layers[1:], strict=False):
        sources = [
            [t._keras_history.operation for t in node.input_tensors]
            for node in layer._inbound_nodes
        ]
        if [previous] not in sources:
            return None
    cut = layers.index(backbone)
    # Weight-free, deterministic layers just above the backbone (pooling) join the extractor:
    # the cache then holds vectors, not feature maps.
    while cut + 1 < len(layers) - 1 and not layers[cut + 1].weights:
        if _random_layers([layers[cut + 1]]):
            break
        cut += 1
    image = keras.Input(shape=model.input_shape[1:], dtype=model.inputs[0].dtype)
    x = image
    for layer in layers[1 : cut + 1]:
        x = layer(x)
    extractor = keras.Model(image, x, name=f"{model.name}_features")
    below, above = layers[1 : layers.index(backbone)], layers[layers.index(backbone) : cut + 1]
    features = keras.Input(shape=x.shape[1:], name="features")
    y = features
    for layer in layers[cut + 1 :]:
        y = layer(y)
    with dtype_policy(model.dtype_policy.name):  # mixed_float16: compile scales the loss
        head = keras.Model(features, y, name=f"{model.name}_head")

    def extract(batches):
        # predict_on_batch, not predict: Keras' torch predict loop took 1.7x as long here.
        outputs, chosen = [], None  # a copy of the current weights lives for this call only
        for x in batches:
            if chosen is None:
                chosen = _inference_extractor(extractor, below, above, x) or extractor
                if chosen is not extractor:
                    try:  # the rewrite's graph is first built and run here
                        outputs.append(_predict_full_batch(chosen, x))
                        continue
                    except Exception:  # a layer call the rewrite does not handle
                        chosen = extractor
            outputs.append(_predict_full_batch(chosen, x))
        if not outputs:
            return np.zeros((0, *extractor.output.shape[1:]), dtype="float32")
        return np.concatenate(outputs)

    return FeatureSplit(extract, head, _random_layers(layers[1 : cut + 1]))


def _inference_extractor(extractor, below, above, images):
    """A faster copy of `extractor` for the caching pass, or None to use `extractor`.

    Three rewrites, each made only where it was measured to pay (2 CPU cores, MobileNet
    alpha=0.25 at 224x224, 396 images in batches of 32):
    - tensorflow and torch: every BatchNormalization that alone reads a linear `Conv2D` or
      `DepthwiseConv2D` is folded into it (`_foldable_batchnorms`, `_folded_weights`): in
      inference mode it is an affine map per channel, so the kernel is scaled and a bias
      added, and the BatchNormalization is left out, the conv-BN folding of inference
      converters (TF Lite, `torch.fx`). It is exact up to float rounding (on ImageNet
      MobileNet features in [0, 6], at most 2e-4 apart), and not checked at run time.
      Float32 models only: under mixed precision the folded bias is held in 16 bits, where
      it can cancel the scaled convolution's output less exactly than the BatchNormalization
      does in float32 (a bfloat16 test: 5x the model's own rounding error).
      The pass took 0.43 s instead of 0.88 s on tensorflow and 1.6 s instead of 2.7 s on
      torch (channels-last); jax's XLA already fuses the BatchNormalization (10.6 s either
      way), so jax keeps it. On tensorflow the model's own graph runs with the folded
      weights (`FoldedFunctional`), which is quicker to make and to trace than a copy of
      the model with folded layers (0.61 s instead of 0.87 s with the 12 batches); torch
      folds in its channels-first copy (below).
    - jax: every channels-last `DepthwiseConv2D` runs as `ShiftedDepthwiseConv2D` (a sum of
      shifted input slices times the kernel taps), which XLA on CPU computes far faster
      than its grouped convolution: the pass took 0.96 s instead of 10.8 s, the same
      features up to float rounding (not checked at run time; the layer is tested against
      `DepthwiseConv2D`). Float32 models only, as the folding (taps summed in 16 bits
      otherwise).
    - torch: every float32 `Conv2D` and `DepthwiseConv2D` runs as `FusedConv2D` /
      `FusedDepthwiseConv2D`: torch's convolution adds the bias, and a ReLU (or ReLU6) that
      alone reads the convolution (or its folded BatchNormalization) is applied in place
      (`_fusable_relus`) instead of as a layer: no new feature map for either. The pass
      took 1.17 s instead of 1.47 s over 12 batches of 32 images (medians of 5, after the
      folding and the layout below).
    - torch: the backbone and the layers above it run in `channels_first` layout. Keras' torch
      convolutions take channels-last inputs by transposing them to channels-first and back
      around every call (ResNet50 2.0x, EfficientNetB0 1.8x, MobileNet alpha=0.25 about 1.3x
      as fast without). The copies are made from the layers' configs
      (`_channels_first_config`), and used only when they give the extractor's own
      features of the first `CHECK_BATCH` images and two of uniform noise in [0, 255]
      (uniform images could hide a layer computed over another axis) up to float noise
      (1e-4 of the largest feature in float32, 5e-2 under mixed precision); otherwise
      (ConvNeXt's layouts, a layer without a channels-first form, ...) the extractor is used.
    On jax only the changed convolutions are copied, on torch every layer, and on
    tensorflow none (`FoldedFunctional` holds the folded weights), for one
    `FeatureSplit.cache` call; the model's own layers are not changed.

    Args:
        extractor: the feature extractor, a `keras.Model` taking `(batch, height, width, 3)`.
        below: the extractor's layers below the backbone (preprocessing), kept as they are.
        above: the backbone and the weight-free layers above it (pooling).
        images: the first batch, `(batch, height, width, 3)`.

    Returns:
        A `keras.Model` with the extractor's inputs and outputs, or None. If it fails on
        the first batch (a layer call that a rewrite does not handle), the caching pass
        uses `extractor` instead.
    """
    import keras

    backend = keras.backend.backend()
    channels_first = backend == "torch"
    try:  # each rewrite checks each layer's dtype (`_float32`)
        folded = _foldable_batchnorms(above) if backend != "jax" else {}
        shifted = _depthwise_convolutions(above) if backend == "jax" else set()
        relus = _fusable_relus(above, folded) if channels_first else {}
        if not above or not (folded or shifted or channels_first):
            return None
        inputs = keras.Input(shape=images.shape[1:], dtype="float32")
        x = inputs
        for layer in below:  # preprocessing: per-pixel, in the model's channels-last layout
            x = layer(x)
        if channels_first:
            x = keras.layers.Permute((3, 1, 2))(x)
        for layer in above:
            x = _inference_copy(layer, x, folded, shifted, relus, channels_first)
        fast = keras.Model(inputs, x, name="inference_features")
        if not channels_first:
            return fast
        float32 = all(_float32(layer) for layer in above)
        noise = np.random.default_rng(0).uniform(0, 255, (2, *images.shape[1:]))
        sample = np.concatenate([images[:CHECK_BATCH], noise.astype(images.dtype)])
        expected = _predict_full_batch(extractor, sample)
        features = _predict_full_batch(fast, sample)
    except Exception:  # an unexpected layer, one without a channels-first form: keep the extractor
        return None
    tolerance = 1e-4 if float32 else 5e-2  # of the largest feature: float noise
    scale = float(np.abs(expected).max()) or 1.0
    if features.shape != expected.shape or not (
        np.abs(features - expected).max() <= tolerance * scale
    ):
        return None
    return fast


def _foldable_batchnorms(layers):
    """`{id(convolution): batchnorm}` for the BatchNormalizations (over the last axis) inside
    the functional models among `layers` that alone read a linear, channels-last `Conv2D` or
    `DepthwiseConv2D`; each layer of a pair is called once."""
    import keras

    pairs = {}
    for nodes, readers in _nodes_and_readers(layers):
        for node in nodes:
            batchnorm = node.operation
            if type(batchnorm) is not keras.layers.BatchNormalization:
                continue
            if len(node.input_tensors) != 1 or any(  # a mask, or training=True (batch statistics)
                value not in (None, False) for value in node.arguments.kwargs.values()
            ):
                continue
            (tensor,) = node.input_tensors
            conv = tensor._keras_history.operation
            if (
                _linear_convolution(conv)
                and batchnorm.axis % len(tensor.shape) == len(tensor.shape) - 1
                and readers[id(tensor)] == 1
                and len(batchnorm._inbound_nodes) == 1
                and _float32(batchnorm)
            ):
                pairs[id(conv)] = batchnorm
    return pairs


def _fusable_relus(layers, folded):
    """`{id(convolution): (relu, "relu" or "relu6")}` for the ReLU layers (no slope,
    threshold, or a maximum other than 6) inside the functional models among `layers` that
    alone read a linear, channels-last `Conv2D` or `DepthwiseConv2D`, directly or through
    a BatchNormalization of `folded` (`_foldable_batchnorms`); each layer is called once.
    Float32 layers only."""
    import keras

    convolution_of = {id(batchnorm): conv for conv, batchnorm in folded.items()}
    fused = {}
    for nodes, readers in _nodes_and_readers(layers):
        for node in nodes:
            relu = node.operation
            if not (
                type(relu) is keras.layers.ReLU
                and relu.negative_slope == 0
                and relu.threshold == 0
                and relu.max_value in (None, 6)
                and len(node.input_tensors) == 1
                and len(relu._inbound_nodes) == 1
                and _float32(relu)
            ):
                continue
            (tensor,) = node.input_tensors
            source = tensor._keras_history.operation
            if readers[id(tensor)] != 1:
                continue
            if id(source) in convolution_of:
                conv = convolution_of[id(source)]
            elif _linear_convolution(source):
                conv = id(source)
            else:
                continue
            fused[conv] = (relu, "relu" if relu.max_value is None else "relu6")
    return fused


def _linear_convolution(layer):
    """Whether `layer` is a float32, channels-last `Conv2D` or `DepthwiseConv2D` without
    activation, called once: one that a BatchNormalization or ReLU after it can join."""
    import keras

    return (
        type(layer) in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
        and layer.get_config()["activation"] == "linear"
        and layer.data_format == "channels_last"
        and len(layer._inbound_nodes) == 1
        and _float32(layer)
    )


def _nodes_and_readers(layers):
    """For each functional model among `layers`: its layer calls (nodes), and
    `{id(tensor): number of nodes (and model outputs) that read it}`."""
    for model in _functional_models(layers):
        nodes = [node for level in model._nodes_by_depth.values() for node in level]
        readers = {}
        for tensor in [x for node in nodes for x in node.input_tensors] + list(model.outputs):
            readers[id(tensor)] = readers.get(id(tensor), 0) + 1
        yield nodes, readers


def _functional_models(layers):
    """The functional `keras.Model`s among `layers` (those with a graph of layer calls)."""
    import keras

    return [
        model
        for model in layers
        if isinstance(model, keras.Model) and getattr(model, "_nodes_by_depth", None) is not None
    ]


def _float32(layer):
    """Whether `layer` computes in float32 (a model's float32 policy can hold 16-bit layers)."""
    import keras

    return keras.backend.standardize_dtype(layer.compute_dtype) == "float32"


def _depthwise_convolutions(layers):
    """The ids of the channels-last `DepthwiseConv2D` layers among `layers` and inside the
    functional models among them (see `keras_transfer.layers.ShiftedDepthwiseConv2D`)."""
    import keras

    inside = [layer for model in _functional_models(layers) for layer in model.layers]
    return {
        id(layer)
        for layer in [*layers, *inside]
        if type(layer) is keras.layers.DepthwiseConv2D
        and layer.data_format == "channels_last"
        and _float32(layer)
    }


def _inference_copy(layer, x, folded, shifted, relus, channels_first):
    """`layer` applied to `x` with the BatchNormalizations of `folded` folded into their
    convolutions, the depthwise convolutions of `shifted` (ids) as `ShiftedDepthwiseConv2D`
    and, with `channels_first`, in that layout, float32 convolutions as `FusedConv2D` /
    `FusedDepthwiseConv2D` with the ReLUs of `relus` (`_fusable_relus`) as their
    activations (see `_inference_extractor`). Layers that need no change are shared, not
    copied; with the folding alone (tensorflow) nothing is copied: a functional model runs
    its own layers as `FoldedFunctional`, with the folded weights."""
    import keras

    from keras_transfer.layers import (
        FoldedFunctional,
        FusedConv2D,
        FusedDepthwiseConv2D,
        ShiftedDepthwiseConv2D,
    )

    fused_kinds = {
        keras.layers.Conv2D: FusedConv2D,
        keras.layers.DepthwiseConv2D: FusedDepthwiseConv2D,
    }
    originals = {}  # id(copy) -> (copy, original)
    batchnorms = {id(batchnorm) for batchnorm in folded.values()}  # left out, not copied
    left_out = batchnorms | {id(relu) for relu, _ in relus.values()}  # in the convolutions
    changed = set(folded) | shifted

    def copy_of(original):
        if id(original) in left_out or (id(original) not in changed and not channels_first):
            return original
        if id(original) in shifted:
            copy = ShiftedDepthwiseConv2D.from_config(original.get_config())
        else:  # channels_first
            config = keras.saving.serialize_keras_object(original)
            if id(original) in folded:
                config["config"]["use_bias"] = True
            if id(original) in relus:
                config["config"]["activation"] = relus[id(original)][1]
            config = _channels_first_config(config)
            fused = fused_kinds.get(type(original)) if _float32(original) else None
            if fused is not None:
                copy = fused.from_config(config["config"])
            else:
                copy = keras.saving.deserialize_keras_object(config)
        originals[id(copy)] = (copy, original)
        return copy

    def call(operation, *args, **kwargs):
        if id(operation) in left_out:
            return args[0]  # a BatchNormalization or ReLU in the convolution below it
        return operation(*args, **kwargs)

    inner = getattr(layer, "_nodes_by_depth", None) is not None and (
        channels_first or any(id(conv) in changed for conv in layer.layers)
    )
    if inner and not (channels_first or shifted):  # tensorflow: only the folding
        return FoldedFunctional(layer, folded)(x)
    if inner:  # a functional model with layers to change (on torch: all of them)
        shape = (None, *x.shape[1:])
        copy = keras.models.clone_model(
            layer,
            input_tensors=keras.Input(batch_shape=shape, dtype=layer.inputs[0].dtype),
            clone_function=copy_of,
            call_function=call,
        )
    else:
        copy = copy_of(layer)
    x = copy(x)
    for made, original in originals.values():
        if id(original) in folded:
            made.set_weights(_folded_weights(original, folded[id(original)]))
        else:
            made.set_weights(original.get_weights())
    return x


def _folded_weights(conv, batchnorm):
    """`[kernel, bias]` of `conv` followed by `batchnorm` in inference mode, as one layer:
    `gamma * (conv(x) - mean) / sqrt(variance + epsilon) + beta`, computed in float64."""
    import keras

    def values(variable):
        return np.asarray(keras.ops.convert_to_numpy(variable), dtype="float64")

    channels = batchnorm.moving_mean.shape[0]
    gamma = values(batchnorm.gamma) if batchnorm.scale else np.ones(channels)
    beta = values(batchnorm.beta) if batchnorm.center else np.zeros(channels)
    scale = gamma / np.sqrt(values(batchnorm.moving_variance) + batchnorm.epsilon)
    kernel = values(conv.kernel)
    if isinstance(conv, keras.layers.DepthwiseConv2D):  # (h, w, in, multiplier): in*mult + m
        kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    else:
        kernel = kernel * scale
    bias = beta - values(batchnorm.moving_mean) * scale
    if conv.use_bias:
        bias = bias + values(conv.bias) * scale
    return [kernel.astype("float32"), bias.astype("float32")]


def _channels_first_config(config):
    """A serialized layer's config (nested models too) with channels-last settings turned
    channels-first (see `_inference_extractor`, which checks the result)."""
    if isinstance(config, list):
        return [_channels_first_config(item) for item in config]
    if not isinstance(config, dict):
        return config
    # Without the recorded (channels-last) build shapes: the copies build on their inputs.
    config = {
        key: _channels_first_config(value) for key, value in config.items() if key != "build_config"
    }
    if config.get("data_format") == "channels_last":
        config["data_format"] = "channels_first"
    inner = config.get("config")
    if isinstance(inner, dict):
        kind = config.get("class_name")
        shape = inner.get("batch_shape")
        if kind == "InputLayer" and shape is not None and len(shape) == 4:
            inner["batch_shape"] = [shape[0], shape[3], shape[1], shape[2]]
        axis_layers = ("BatchNormalization", "LayerNormalization", "Normalization", "Concatenate")
        axis = inner.get("axis")
        axis = list(axis) if isinstance(axis, (list, tuple)) else [axis]
        if kind in axis_layers and axis in ([-1], [3]):
            inner["axis"] = 1
        target = inner.get("target_shape")
        if kind == "Reshape" and len(target or ()) == 3 and list(target[:2]) == [1, 1]:
            inner["target_shape"] = [target[2], 1, 1]  # a per-channel vector as a 1x1 map
    return config


def _predict_full_batch(extractor, images):
    """float32 outputs for `images`; on tensorflow and jax a short batch is padded to
    `EXTRACT_BATCH` rows, so that they compile the extractor for one batch shape only
    (torch runs any shape as it comes)."""
    import keras

    count = len(images)
    if count < EXTRACT_BATCH and keras.backend.backend() != "torch":
        images = np.concatenate(
            [images, np.zeros_like(images[:1]).repeat(EXTRACT_BATCH - count, 0)]
        )
    return np.asarray(extractor.predict_on_batch(images), dtype="float32")[:count]


def _text_split(model):
    import keras

    backbone = model.backbone
    dropout = getattr(model, "output_dropout", None)
    dense = getattr(model, "output_dense", None)
    if dropout is None or dense is None or model.preprocessor is None:
        return None
    hidden = backbone.output["pooled_output"].shape[-1]
    features = keras.Input(shape=(hidden,), name="pooled_output")
    with dtype_policy(model.dtype_policy.name):  # mixed_float16: compile scales the loss
        head = keras.Model(features, dense(dropout(features)), name=f"{model.name}_head")

    def extract(batches):
        return _encode_by_length(backbone, batches, int(model.preprocessor.sequence_length))

    return FeatureSplit(extract, head, _random_layers([backbone]), model.preprocessor)


def split_for_caching(model):
    """Cut a classifier whose backbone is frozen into feature extractor and head.

    Args:
        model: a classifier from `build_image_classifier` (a chain of layers) or
            `build_text_classifier` (a KerasHub BERT-style `TextClassifier` whose head reads
            the backbone's `pooled_output`).

    Returns:
        A `FeatureSplit`, or None when the model has another structure (then train it
        without caching).
    """
    from keras_transfer.compiling import is_text_classifier

    if is_text_classifier(model):
        return _text_split(model)
    return _image_split(model)


def _encode_by_length(backbone, batches, sequence_length, batch_size=None):
    """`pooled_output` float32 `(n, hidden)` of preprocessed text batches, in their order.

    The examples are encoded in batches of `batch_size` (default `EXTRACT_BATCH`) sorted by
    length, each cut to its longest row (rounded up to a multiple of `PAD_MULTIPLE`; BERT-style
    preprocessors pad on the right). All token ids are held at once: 4 bytes per token.
    """
    batch_size = batch_size or EXTRACT_BATCH
    batches = list(batches)
    if not batches:
        hidden = backbone.output["pooled_output"].shape[-1]
        return np.zeros((0, hidden), dtype="float32")
    inputs = {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]}
    lengths = inputs["padding_mask"].sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    features = None
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        longest = int(lengths[chosen].max())
        length = min(-(-longest // PAD_MULTIPLE) * PAD_MULTIPLE, sequence_length)
        output = backbone.predict_on_batch({k: v[chosen, :length] for k, v in inputs.items()})
        output = np.asarray(output["pooled_output"], dtype="float32")
        if features is None:
            features = np.empty((len(order), *output.shape[1:]), dtype="float32")
        features[chosen] = output
    return features
