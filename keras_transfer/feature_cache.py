"""Frozen-feature caching: run the frozen backbone once, train the head on what it outputs.

With the backbone frozen, every epoch pushes the same images (or sentences) through the same
function. `split_for_caching(model)` cuts the classifier into that part and a head model made
of the classifier's own head layers; `FeatureSplit.cache` runs the frozen part once over the
training and validation data and gives datasets of `(features, labels)` batches. Training the
head model trains the classifier in place.

The cached features are looked up per example by a fingerprint of its input
(`tf.fingerprint`), so each epoch keeps the batches and order of the original pipeline
(including its reshuffling); the images or texts still flow through the input pipeline (from
its in-memory cache), but the backbone does not run again.

Exact when nothing below the head is random in training: no augmentation layers and no
dropout inside the backbone (MobileNet, ResNet, ... without augmentation). Otherwise the
features are those of inference mode (no augmentation, no dropout in the frozen part: what
the Keras transfer-learning guide gets by calling the base model with `training=False`).
"""

from __future__ import annotations

import numpy as np


class FeatureSplit:
    """A classifier cut into a frozen feature extractor and a trainable head.

    Attributes:
        head: `keras.Model` from features to probabilities, sharing the classifier's layers.
        random_layers: names of the layers below the head that are random in training
            (augmentation, dropout); empty when caching is exact.
    """

    def __init__(self, features, head, random_layers, preprocess=None):
        self._features = features
        self.head = head
        self.random_layers = random_layers
        self._preprocess = preprocess

    @property
    def exact(self):
        return not self.random_layers

    def _raw_and_inputs(self, dataset):
        """`(raw_inputs, model_inputs)` batches, from one pass (one iterator) of `dataset`."""
        preprocess = self._preprocess or (lambda x: x)
        return dataset.map(lambda x, *rest: (x, preprocess(x)))

    def cache(self, train_ds, val_ds=None):
        """Run the feature extractor once over both datasets; return feature datasets.

        Returns:
            `(train_features_ds, val_features_ds)`: the same batches as `train_ds` /
            `val_ds` (same order, labels and sample weights) with each input replaced by its
            features, float32 `(batch, *feature_shape)`; `val_features_ds` is None when
            `val_ds` is.
        """
        import tensorflow as tf

        keys, features = [], []
        for dataset in (train_ds, val_ds):
            if dataset is None:
                continue
            for raw, inputs in self._raw_and_inputs(dataset):
                keys.append(_fingerprints(raw).numpy())
                inputs = tf.nest.map_structure(lambda t: t.numpy(), inputs)
                batch = self._features(inputs)
                features.append(np.asarray(batch, dtype="float32"))
        keys = np.concatenate(keys)
        features = np.concatenate(features)
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
                "pipeline changes its inputs between epochs (random augmentation in "
                "tf.data?); train without feature caching (cache_features=False)",
            )
            with tf.control_dependencies([check]):
                index = tf.identity(index)
            return (tf.gather(store, index), *rest)

        def feature_dataset(dataset):
            if dataset is None:
                return None
            mapped = dataset.map(lambda *element: lookup(*element))
            mapped._kt_cache = (table, store)  # keep the resources alive with the dataset
            return mapped

        return feature_dataset(train_ds), feature_dataset(val_ds)


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
    features = keras.Input(shape=x.shape[1:], name="features")
    y = features
    for layer in layers[cut + 1 :]:
        y = layer(y)
    head = keras.Model(features, y, name=f"{model.name}_head")
    return FeatureSplit(extractor.predict_on_batch, head, _random_layers(layers[1 : cut + 1]))


def _text_split(model):
    import keras

    backbone = model.backbone
    dropout = getattr(model, "output_dropout", None)
    dense = getattr(model, "output_dense", None)
    if dropout is None or dense is None or model.preprocessor is None:
        return None
    hidden = backbone.output["pooled_output"].shape[-1]
    features = keras.Input(shape=(hidden,), name="pooled_output")
    head = keras.Model(features, dense(dropout(features)), name=f"{model.name}_head")

    def extract(inputs):
        return backbone.predict_on_batch(inputs)["pooled_output"]

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
