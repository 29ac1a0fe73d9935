"""Grad-CAM for image classifiers, on tensorflow, jax and torch.

Grad-CAM (Selvaraju et al., 2017) weighs the channels of a convolutional feature map by the
spatial mean of the class score's gradient, sums them and keeps the positive part: a coarse map
of where the evidence for the class lies. Here the model is split at its last 4-D feature map
(the backbone's output for `build_image_classifier` models, keras.applications or KerasHub
backbones alike), the head is differentiated with the backend's own autodiff (see
`gradients`), and the map is resized to the input resolution.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_transfer.report.gradients import value_and_gradient


def _outer_output(model, layer):
    """The tensor `layer` produces inside `model`'s graph (a nested model's `.output` is its
    own inner tensor, so the call node inside `model` is looked up)."""
    nodes = getattr(model, "_nodes", None)  # keys "<id(layer)>_ib-<node index>" in Keras 3
    for index, node in enumerate(getattr(layer, "_inbound_nodes", [])):
        if nodes is None or f"{id(layer)}_ib-{index}" in nodes:
            outputs = node.output_tensors
            return outputs[0] if len(outputs) == 1 else None
    return None


def find_feature_layer(model):
    """The layer of `model` whose output Grad-CAM explains, and that output tensor.

    The layer named `"backbone"` (as in `build_image_classifier`) when its output is a 4-D
    `(batch, height, width, channels)` map; otherwise the last top-level layer with a 4-D
    output that is not an input.

    Args:
        model: a functional `keras.Model` image classifier.

    Returns:
        `(layer, tensor)`: the layer and its symbolic output in `model`'s graph.

    Raises:
        ValueError: a model that is not functional, or has no 4-D feature map (e.g. a vision
            transformer backbone, whose output is a sequence of tokens).
    """
    if not hasattr(model, "_nodes"):
        raise ValueError(
            f"Grad-CAM needs a functional keras.Model (as from build_image_classifier); "
            f"got {type(model).__name__}."
        )
    layers = {layer.name: layer for layer in model.layers}
    if "backbone" in layers:
        tensor = _outer_output(model, layers["backbone"])
        if tensor is None or len(tensor.shape) != 4:
            shape = None if tensor is None else tuple(tensor.shape)
            raise ValueError(
                f"The backbone of {model.name!r} outputs {shape}, not a 4-D (batch, height, "
                "width, channels) feature map: Grad-CAM needs a convolutional backbone."
            )
        return layers["backbone"], tensor
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        tensor = _outer_output(model, layer)
        if tensor is not None and len(tensor.shape) == 4:
            return layer, tensor
    raise ValueError(f"{model.name!r} has no layer with a 4-D feature map to explain.")


def split_at_feature_map(model):
    """Split an image classifier into `features: images -> map` and `head: map -> outputs`.

    Returns:
        `(features, head, layer_name)`: two functional `keras.Model`s sharing `model`'s
        layers and weights, and the name of the layer split after.
    """
    layer, tensor = find_feature_layer(model)
    features = keras.Model(model.input, tensor, name=f"{model.name}_features")  # its structure
    head = keras.Model(tensor, model.outputs[0], name=f"{model.name}_head")
    return features, head, layer.name


def _check_images(model, images):
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    expected = tuple(model.input_shape[1:])
    shape = images.shape[1:]
    if len(shape) != 3 or any(e not in (None, s) for e, s in zip(expected, shape, strict=True)):
        raise ValueError(
            f"`images` must be shaped (batch, {', '.join(map(str, expected))}) like the "
            f"model's input; got {images.shape}."
        )
    return images.astype("float32")


def grad_cam(model, images, class_index=None, batch_size=16):
    """Grad-CAM heatmaps of an image classifier, at the input resolution.

    Args:
        model: an image classifier from `build_image_classifier` (or any functional model
            with a 4-D feature map, see `find_feature_layer`), returning probabilities.
        images: `(batch, height, width, 3)` or `(height, width, 3)` pixels as the model
            takes them ([0, 255] for `build_image_classifier` models), any numeric dtype.
        class_index: the class to explain: None (default: each image's predicted class), an
            int for all images, or a sequence of one int per image.
        batch_size: images per gradient computation, default 16.

    Returns:
        `(heatmaps, probabilities)`: `(batch, height, width)` float32 in [0, 1] (1 at the
        strongest evidence of each image; all 0 when the gradient gives no positive
        evidence) and the model's `(batch, num_classes)` float32 outputs.

    Raises:
        ValueError: images that do not match the model's input shape, a class index out of
            range, or a model without a 4-D feature map.

    Example:
    ```python
    heatmaps, probabilities = grad_cam(model, images)
    overlay_image = overlay(images[0], heatmaps[0])
    ```
    """
    images = _check_images(model, images)
    features_model, head, _ = split_at_feature_map(model)
    maps, probabilities = [], []
    for start in range(0, len(images), batch_size):
        features = features_model(images[start : start + batch_size], training=False)
        features = keras.ops.cast(features, "float32")
        outputs = keras.ops.convert_to_numpy(head(features, training=False))
        probabilities.append(np.asarray(outputs, dtype="float32"))
        maps.append(np.asarray(keras.ops.convert_to_numpy(features), dtype="float32"))
    probabilities = np.concatenate(probabilities)
    num_classes = probabilities.shape[-1]
    if class_index is None:
        classes = probabilities.argmax(-1)
    else:
        classes = np.broadcast_to(np.asarray(class_index, dtype=int), (len(images),))
    if classes.min() < 0 or classes.max() >= num_classes:
        raise ValueError(f"`class_index` must lie in [0, {num_classes}); got {class_index!r}.")

    def score(x, one_hot):
        outputs = keras.ops.cast(head(x, training=False), "float32")
        return keras.ops.sum(outputs * one_hot, axis=-1)

    heatmaps = []
    offset = 0
    for features in maps:
        chosen = classes[offset : offset + len(features)]
        offset += len(features)
        one_hot = np.eye(num_classes, dtype="float32")[chosen]
        _, gradients = value_and_gradient(score, features, one_hot)
        weights = gradients.mean(axis=(1, 2), keepdims=True)
        heatmaps.append(np.maximum((weights * features).sum(-1), 0))
    cams = np.concatenate(heatmaps)[..., None]
    resized = keras.ops.image.resize(cams, images.shape[1:3], interpolation="bilinear")
    resized = np.maximum(np.asarray(keras.ops.convert_to_numpy(resized))[..., 0], 0)
    peaks = resized.max(axis=(1, 2), keepdims=True)
    resized = np.divide(resized, peaks, out=np.zeros_like(resized), where=peaks > 0)
    return resized.astype("float32"), probabilities


def overlay(image, heatmap, alpha=0.45, colormap="jet"):
    """Blend a heatmap over an image.

    Args:
        image: `(height, width, 3)` pixels in [0, 255].
        heatmap: `(height, width)` values in [0, 1], e.g. one of `grad_cam`'s heatmaps.
        alpha: weight of the heatmap's colours, in [0, 1]; default 0.45.
        colormap: a matplotlib colormap name, default `"jet"` (red = strongest).

    Returns:
        `(height, width, 3)` uint8 RGB.
    """
    import matplotlib

    image = np.asarray(image, dtype="float32")
    heatmap = np.asarray(heatmap, dtype="float32")
    if image.shape[:2] != heatmap.shape or image.ndim != 3:
        raise ValueError(
            f"`image` {image.shape} and `heatmap` {heatmap.shape} must share height and width."
        )
    colours = matplotlib.colormaps[colormap](np.clip(heatmap, 0, 1))[..., :3] * 255
    blended = (1 - alpha) * image[..., :3] + alpha * colours
    return np.clip(blended, 0, 255).astype("uint8")
