import warnings

import keras
import numpy as np
import pytest

import keras_transfer as kt
from keras_transfer.report.gradcam import find_feature_layer, grad_cam, overlay

CORNERS = [(0, 0), (0, 24), (24, 0), (24, 24)]  # top-left pixel of the 8x8 patch


def corner_patch_images(count, seed=0, classes=3):
    """32x32 grey noise with an 8x8 patch in a random corner: red = class 0, blue = class 1;
    class 2 has no patch (so both patch classes need evidence found in the image)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(60, 160, (count, 32, 32, 1)).repeat(3, axis=-1)
    labels = rng.integers(0, classes, count)
    corners = rng.integers(0, 4, count)
    for image, label, corner in zip(images, labels, corners, strict=True):
        y, x = CORNERS[corner]
        if label < 2:
            image[y : y + 8, x : x + 8] = (230, 20, 20) if label == 0 else (20, 20, 230)
    return images.astype("float32"), labels, corners


def tiny_cnn_classifier():
    """The layout of `build_image_classifier` (preprocessing -> "backbone" -> pooling ->
    dense) with a two-convolution backbone: registry backbones end at 1x1 on 32x32 inputs."""
    backbone = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
        ],
        name="backbone",
    )
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 255, name="preprocessing")(inputs)
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="pooling")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    return model


def test_grad_cam_finds_the_corner_that_decides_the_class():
    images, labels, _ = corner_patch_images(384)
    model = tiny_cnn_classifier()
    model.fit(images, labels, batch_size=32, epochs=8, verbose=0)
    test_images, test_labels, corners = corner_patch_images(16, seed=1, classes=2)
    heatmaps, probabilities = grad_cam(model, test_images)
    assert (probabilities.argmax(-1) == test_labels).mean() >= 0.9
    assert heatmaps.shape == (16, 32, 32) and heatmaps.dtype == np.float32
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1
    fractions = []
    for heatmap, corner in zip(heatmaps, corners, strict=True):
        y, x = CORNERS[corner]
        quadrant = heatmap[min(y, 16) : min(y, 16) + 16, min(x, 16) : min(x, 16) + 16]
        fractions.append(quadrant.sum() / heatmap.sum())
    # The quadrant holding the patch is a quarter of the image; it holds most of the mass.
    assert np.median(fractions) > 0.8, fractions
    assert min(fractions) > 0.6, fractions
    blended = overlay(test_images[0], heatmaps[0])
    assert blended.shape == (32, 32, 3) and blended.dtype == np.uint8


def test_grad_cam_on_a_registry_backbone():
    model = kt.build_image_classifier(
        "mobilenet", 3, input_shape=(64, 64, 3), weights=None, backbone_kwargs={"alpha": 0.25}
    )
    layer, tensor = find_feature_layer(model)
    assert layer.name == "backbone" and tuple(tensor.shape[1:3]) == (2, 2)
    images = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        heatmaps, probabilities = grad_cam(model, images, class_index=[0, 1, 2])
    # Its sub-models take the image as the model does (no Keras input-structure warning).
    assert not [w for w in caught if "structure of `inputs`" in str(w.message)]
    assert heatmaps.shape == (3, 64, 64) and probabilities.shape == (3, 3)
    np.testing.assert_allclose(probabilities, model.predict(images, verbose=0), atol=1e-5)
    with pytest.raises(ValueError, match="class_index"):
        grad_cam(model, images, class_index=3)
    with pytest.raises(ValueError, match=r"\(batch, 64, 64, 3\)"):
        grad_cam(model, images[:, :32])


def test_grad_cam_on_a_keras_hub_image_preset():
    from conftest import require_shared

    preset = require_shared("weights", "keras_hub", "efficientnet_lite0_imagenet")
    model = kt.build_image_classifier(f"hub:{preset}", 2, input_shape=(64, 64, 3), weights=None)
    layer, tensor = find_feature_layer(model)
    assert type(layer).__name__ == "EfficientNetBackbone" and tuple(tensor.shape[1:3]) == (2, 2)
    heatmaps, _ = grad_cam(model, np.full((1, 64, 64, 3), 128.0))
    assert heatmaps.shape == (1, 64, 64)


def test_grad_cam_equals_the_analytic_heatmap_on_every_backend():
    """The same weights and images give the same heatmap on tensorflow, jax and torch: each
    backend's heatmap equals one computed here in NumPy (for a pooled softmax head the
    gradient is analytic: dp_c/dA_ijk = p_c (W_kc - sum_m p_m W_km) / (H W)), within 1e-4."""
    model = tiny_cnn_classifier()
    rng = np.random.default_rng(7)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in model.weights])
    images = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    heatmaps, probabilities = grad_cam(model, images, class_index=[0, 1, 2, 0])
    features = keras.ops.convert_to_numpy(
        model.get_layer("backbone")(keras.ops.convert_to_tensor(images / 255))
    )
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in model.get_layer("predictions").weights)
    logits = features.mean(axis=(1, 2)) @ kernel + bias
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(probabilities, p, atol=1e-5)
    expected = []
    for feature_map, probs, c in zip(features, p, [0, 1, 2, 0], strict=True):
        weights = probs[c] * (kernel[:, c] - kernel @ probs) / (8 * 8)  # mean of dp_c/dA
        cam = np.maximum((feature_map * weights).sum(-1), 0)[None, ..., None]
        cam = keras.ops.convert_to_numpy(keras.ops.image.resize(cam, (32, 32)))[0, ..., 0]
        expected.append(cam / cam.max() if cam.max() > 0 else cam)
    np.testing.assert_allclose(heatmaps, np.stack(expected), atol=1e-4)
