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

The features of pipelines of ours are held in memory up to a budget and memory-mapped from a
file above it, and kept between runs in a feature store when one is given
(`keras_transfer.features.feature_store`); `FeatureSplit` (`feature_split`) does the pass.

Modules, in the direction data flows: `example_sources` (pipelines that can be remade) ->
`feature_split` (the pass, the feature datasets) -> `feature_store` (on disk); this module
cuts the model, `backbone_rewrites` speeds up the pass.

On tensorflow, torch and jax, images go through a faster copy of the frozen extractor made
for the pass (`backbone_rewrites.inference_extractor`: BatchNormalization folding, a
channels-first copy with fused convolutions, shifted depthwise convolutions).

Text is encoded in batches of similar length, each padded to its longest row (the encoder
masks padding: the same outputs up to float noise), which is faster than the fixed
`sequence_length` padding of training.

Exact when nothing below the head is random in training: no augmentation layers and no
dropout inside the backbone (MobileNet, ResNet, ... without augmentation). Otherwise the
features are those of inference mode (no augmentation, no dropout in the frozen part: what
the Keras transfer-learning guide gets by calling the base model with `training=False`).
"""

from __future__ import annotations

import numpy as np

from keras_transfer.data.example_sources import (  # noqa: F401  (names other modules import from here)
    ExampleSource,
    epoch_order,
    epoch_pipeline,
    remade_per_epoch,
    remember_derivation,
    remember_examples,
    shuffle_seed,
    shuffled_slices,
)
from keras_transfer.data.text_padding import PAD_MULTIPLE
from keras_transfer.features.backbone_rewrites import EXTRACT_BATCH
from keras_transfer.features.feature_split import DECODE_CHUNK, VALIDATION_BATCH, FeatureSplit  # noqa: F401
from keras_transfer.models.precision import dtype_policy


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

    from keras_transfer.models.freezing import get_backbone

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

    from keras_transfer.features import backbone_rewrites as rewrites

    def extract(batches):
        # predict_on_batch, not predict: Keras' torch predict loop took 1.7x as long here.
        chosen = None  # a copy of the current weights lives for this pass only
        for x in batches:
            if chosen is None:
                chosen = rewrites.inference_extractor(extractor, below, above, x) or extractor
                if chosen is not extractor:
                    try:  # the rewrite's graph is first built and run here
                        features = rewrites.predict_full_batch(chosen, x)
                    except Exception:  # a layer call the rewrite does not handle
                        chosen = extractor
                    else:
                        yield features
                        continue
            yield rewrites.predict_full_batch(chosen, x)
        if chosen is None:
            yield np.zeros((0, *extractor.output.shape[1:]), dtype="float32")

    random_layers = _random_layers(layers[1 : cut + 1])
    return FeatureSplit(extract, head, random_layers, layers=[extractor])


def _text_split(model):
    import keras

    backbone = model.backbone
    dropout = getattr(model, "output_dropout", None)
    dense = getattr(model, "output_dense", None)
    if dropout is None or dense is None or model.preprocessor is None:
        return None
    pooling = _text_pooling(model)
    if pooling is None:
        return None
    pool, hidden = pooling
    features = keras.Input(shape=(hidden,), name="pooled_output")
    with dtype_policy(model.dtype_policy.name):  # mixed_float16: compile scales the loss
        head = keras.Model(features, dense(dropout(features)), name=f"{model.name}_head")

    def extract(batches):
        yield _encode_by_length(
            backbone, batches, int(model.preprocessor.sequence_length), pool=pool, hidden=hidden
        )

    random_layers = _random_layers([backbone])
    return FeatureSplit(extract, head, random_layers, model.preprocessor, layers=[backbone])


def _text_pooling(model):
    """`(pool, hidden)`, `pool(backbone_outputs, padding_mask) -> (batch, hidden)` what the
    head of a text classifier reads (its `pooled_output`, or the masked mean of a
    `MeanPooledTextClassifier`, by the model's own pooling layer); None for a head that reads
    something else."""
    from keras_transfer.models.text_pooling import MeanPooledTextClassifier, sequence_output

    if isinstance(model, MeanPooledTextClassifier):
        layer = model.output_pooling
        hidden = sequence_output(model.backbone.output).shape[-1]
        return (lambda outputs, mask: layer(sequence_output(outputs), mask=mask)), hidden
    symbolic = model.backbone.output
    if not isinstance(symbolic, dict) or "pooled_output" not in symbolic:
        return None
    # KerasHub's BERT-style classifiers read `pooled_output`; so does this cache.
    return (lambda outputs, mask: outputs["pooled_output"]), symbolic["pooled_output"].shape[-1]


def split_for_caching(model):
    """Cut a classifier whose backbone is frozen into feature extractor and head.

    Args:
        model: a classifier from `build_image_classifier` (a chain of layers) or
            `build_text_classifier` (a KerasHub BERT-style `TextClassifier` whose head reads
            the backbone's `pooled_output`, or, with `pooling="mean"`, the masked mean of its
            `sequence_output`: the cache then holds that mean).

    Returns:
        A `FeatureSplit`, or None when the model has another structure (then train it
        without caching).
    """
    from keras_transfer.models.compiling import is_text_classifier

    if is_text_classifier(model):
        return _text_split(model)
    return _image_split(model)


def _encode_by_length(backbone, batches, sequence_length, batch_size=None, pool=None, hidden=None):
    """Pooled features float32 `(n, hidden)` of preprocessed text batches, in their order.

    `pool(outputs, padding_mask)` turns the backbone's outputs into one vector of `hidden`
    values per example (default: its `pooled_output`). The examples are encoded in batches
    of `batch_size` (default `EXTRACT_BATCH`) sorted by length, each cut to its longest row
    (rounded up to a multiple of `PAD_MULTIPLE`; BERT-style preprocessors pad on the right;
    the masked mean ignores padding). All token ids are held at once: 4 bytes per token.
    """
    import keras

    if pool is None:
        pool = lambda outputs, mask: outputs["pooled_output"]  # noqa: E731
    batch_size = batch_size or EXTRACT_BATCH
    batches = list(batches)
    if not batches:
        hidden = hidden or backbone.output["pooled_output"].shape[-1]
        return np.zeros((0, hidden), dtype="float32")
    inputs = {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]}
    lengths = inputs["padding_mask"].sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    features = None
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        longest = int(lengths[chosen].max())
        length = min(-(-longest // PAD_MULTIPLE) * PAD_MULTIPLE, sequence_length)
        batch = {k: v[chosen, :length] for k, v in inputs.items()}
        output = pool(backbone.predict_on_batch(batch), batch["padding_mask"])
        output = np.asarray(keras.ops.convert_to_numpy(output), dtype="float32")
        if features is None:
            features = np.empty((len(order), *output.shape[1:]), dtype="float32")
        features[chosen] = output
    return features
