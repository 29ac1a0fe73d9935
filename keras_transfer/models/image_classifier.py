"""`build_image_classifier`: a pretrained image backbone with a new classification head."""

from __future__ import annotations

import os

import keras

from keras_transfer.models import backbones
from keras_transfer.models.compiling import compile_classifier
from keras_transfer.models.freezing import BACKBONE_LAYER_NAME, freeze_backbone
from keras_transfer.models.layers import ImagePreprocessing
from keras_transfer.models.precision import dtype_policy, mixed_precision_policy


def default_augmentation():
    """The default training-time augmentation, as a list of Keras layers.

    Random horizontal flip, rotation up to ±10 % of a full turn (±36°) and zoom up to ±10 %,
    the usual small augmentations of the Keras transfer-learning guide. Keras' random
    preprocessing layers are only active during training (`model.fit`), never in
    `predict` / `evaluate`.
    """
    return [
        keras.layers.RandomFlip("horizontal"),
        keras.layers.RandomRotation(0.1),
        keras.layers.RandomZoom(0.1),
    ]


def _augmentation_block(augmentation):
    if augmentation is None:
        return None
    if isinstance(augmentation, str):
        if augmentation != "default":
            raise ValueError(
                f"`augmentation` must be 'default', None or a list of Keras layers, "
                f"got {augmentation!r}."
            )
        augmentation = default_augmentation()
    layers = list(augmentation)
    for layer in layers:
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(
                f"`augmentation` must hold Keras layers, got {layer!r} ({type(layer).__name__})."
            )
    if not layers:
        return None
    return keras.Sequential(layers, name="augmentation")


def default_image_size(backbone):
    """The `(height, width)` in pixels that `backbone`'s pretrained weights were trained at.

    Args:
        backbone: a registry name (e.g. `"xception"` -> `(299, 299)`) or `"hub:<preset>"`
            (the preset's image converter size, 224x224 when it has none).

    Raises:
        ValueError: unknown backbone name or unloadable preset.
    """
    if isinstance(backbone, str) and backbone.startswith(backbones.HUB_PREFIX):
        import keras_hub

        preset = backbone[len(backbones.HUB_PREFIX) :]
        try:
            converter = keras_hub.layers.ImageConverter.from_preset(preset)
        except Exception as error:
            raise ValueError(
                f"Could not load the KerasHub image preset {preset!r}: {error}"
            ) from error
        return tuple(converter.image_size or (224, 224))
    size = backbones.get_backbone_spec(backbone).default_size
    return (size, size)


def _hub_backbone(preset, input_shape, weights, policy=None):
    """Backbone (with dtype policy `policy`, a name or None) and preprocessing layer
    (float32) from a KerasHub image preset."""
    import keras_hub

    looks_like_path = os.sep in preset or preset.startswith((".", "~"))
    if looks_like_path and not os.path.isdir(os.path.expanduser(preset)):
        raise FileNotFoundError(
            f"KerasHub image preset folder not found: {os.path.abspath(preset)!r}. Pass an "
            "existing preset folder or a KerasHub preset name."
        )
    try:
        dtype = {} if policy is None else {"dtype": policy}
        backbone = keras_hub.models.Backbone.from_preset(
            preset, load_weights=weights is not None, **dtype
        )
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except Exception as error:  # KerasHub raises many kinds for a bad preset
        where = "folder" if os.path.isdir(preset) else "preset name"
        raise ValueError(
            f"Could not load the KerasHub image preset {preset!r} ({where}): {error}. "
            "Pass a KerasHub preset name (downloads need internet) or a local preset "
            "folder with config.json and weights."
        ) from error
    size = tuple(converter.image_size or (224, 224))
    if input_shape is None:
        input_shape = (*size, 3)
    config = converter.get_config()
    config.update(image_size=tuple(input_shape[:2]), name="preprocessing")
    converter = type(converter).from_config(config)
    return backbone, converter, tuple(input_shape)


_SET_BY_THE_CLASSIFIER = {  # keras.applications arguments that build_image_classifier sets
    "weights": "pass weights=... to build_image_classifier",
    "input_shape": "pass input_shape=... to build_image_classifier",
    "pooling": "pass pooling='avg' or 'max' to build_image_classifier",
    "include_top": "the classifier's head replaces the ImageNet one",
    "input_tensor": "the classifier makes its own input",
}


def _check_backbone_kwargs(backbone_kwargs):
    """Refuse `backbone_kwargs` keys that `build_image_classifier` sets itself (they reached
    the Keras constructor twice: "got multiple values for argument 'weights'")."""
    for key, what_to_do in _SET_BY_THE_CLASSIFIER.items():
        if key in backbone_kwargs:
            raise ValueError(
                f"`backbone_kwargs` sets {key!r}, which the classifier sets: {what_to_do}."
            )


def build_image_classifier(
    backbone,
    num_classes,
    *,
    input_shape=None,
    weights="imagenet",
    backbone_kwargs=None,
    pooling="avg",
    dropout=0.2,
    augmentation="default",
    freeze="backbone",
    mixed_precision=None,
):
    """Build an image classifier: pretrained backbone, new head, preprocessing inside.

    The model is a plain functional `keras.Model`:
    `inputs -> augmentation -> preprocessing -> backbone -> pooling -> dropout -> dense`.

    Args:
        backbone: a registry name from `list_backbones()` (`"mobilenet"`, `"resnet50"`,
            `"efficientnet_b0"`, ...), or `"hub:<preset>"` for a KerasHub image preset,
            by name (downloads) or local folder, e.g.
            `"hub:../shared/weights/keras_hub/efficientnet_lite0_imagenet"`.
        num_classes: number of classes, >= 2.
        input_shape: `(height, width, 3)`; default: the backbone's pretrained size,
            e.g. `(224, 224, 3)` (`(299, 299, 3)` for Xception), or the preset's size.
        weights: `"imagenet"` (default; Keras' loader reads `$KERAS_HOME/models` before
            downloading), `None` for random initialisation, or a path to a headless
            weights file. For `"hub:"` backbones, any non-None value loads the preset's
            weights.
        backbone_kwargs: dict passed to the Keras constructor, e.g. `{"alpha": 0.25}`.
        pooling: `"avg"` (default) or `"max"` global pooling of the feature map.
        dropout: dropout rate before the dense layer, in [0, 1); default 0.2.
        augmentation: `"default"` (see `default_augmentation`), `None`, or a list of
            Keras layers that keep the image size; active only in training.
        freeze: `"backbone"` (default: the whole backbone frozen, BatchNorm in inference
            mode) or `None` (everything trainable except BatchNorm statistics, see
            `unfreeze_backbone`).
        mixed_precision: None (default: float32), `"bfloat16"` or `"float16"`: the
            backbone, pooling and dropout compute in 16 bits with float32 weights (see
            `keras_transfer.models.precision`); augmentation, preprocessing and the output layer
            stay float32.

    Returns:
        A `keras.Model` taking `(batch, height, width, 3)` RGB pixels in [0, 255] (uint8
        or float32) and returning `(batch, num_classes)` float32 softmax probabilities.
        The backbone is the layer named `"backbone"`. Compiled with `compile_classifier`'s
        defaults (Adam lr 1e-3); compile again to change them (`fine_tune` keeps it).

    Raises:
        ValueError: unknown backbone (lists the closest names), `num_classes` < 2, an
            input shape below the backbone's minimum or without 3 channels while using
            pretrained weights, a bad `pooling` / `dropout` / `augmentation` / `freeze` /
            `mixed_precision`, augmentation that changes the image size, a weights file
            that does not fit the architecture, or `backbone_kwargs` that set what the
            classifier sets (`weights`, `input_shape`, `pooling`, `include_top`,
            `input_tensor`).
        FileNotFoundError: `weights` names a missing file.

    Example:
    ```python
    model = keras_transfer.build_image_classifier(
        "mobilenet", 2, input_shape=(224, 224, 3), backbone_kwargs={"alpha": 0.25})
    # Frozen backbone, compiled with Adam lr 1e-3.
    model.fit(train_ds, validation_data=val_ds, epochs=10)
    ```
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an int >= 2, got {num_classes!r}.")
    if pooling not in ("avg", "max"):
        raise ValueError(f"`pooling` must be 'avg' or 'max', got {pooling!r}.")
    if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
        raise ValueError(f"`dropout` must be a float in [0, 1), got {dropout!r}.")
    if freeze not in ("backbone", None):
        raise ValueError(f"`freeze` must be 'backbone' or None, got {freeze!r}.")
    backbone_kwargs = dict(backbone_kwargs or {})
    _check_backbone_kwargs(backbone_kwargs)
    policy = mixed_precision_policy(mixed_precision)
    base, preprocessing, input_shape = _backbone_and_preprocessing(
        backbone, input_shape, weights, backbone_kwargs, policy
    )
    model_name = f"{base.name}_classifier"
    base.name = BACKBONE_LAYER_NAME

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    block = _augmentation_block(augmentation)
    if block is not None:
        x = block(x)
        _check_augmented_shape(x.shape[1:], input_shape, block)
    x = preprocessing(x)
    with dtype_policy(policy):
        x = base(x)
        if pooling == "avg":
            x = keras.layers.GlobalAveragePooling2D(name="pooling")(x)
        else:
            x = keras.layers.GlobalMaxPooling2D(name="pooling")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name="dropout")(x)
        outputs = keras.layers.Dense(
            num_classes, activation="softmax", dtype="float32", name="predictions"
        )(x)
        model = keras.Model(inputs, outputs, name=model_name)  # its policy: loss scaling
    if freeze == "backbone":
        freeze_backbone(model)
    else:
        from keras_transfer.models.freezing import unfreeze_backbone

        unfreeze_backbone(model)
    compile_classifier(model)
    return model


def _check_augmented_shape(shape, input_shape, block):
    """The backbone is built for `input_shape`: augmentation must keep it."""
    if tuple(shape) == tuple(input_shape):
        return
    names = ", ".join(type(layer).__name__ for layer in block.layers)
    raise ValueError(
        f"`augmentation` ({names}) turns images of shape {tuple(input_shape)} into "
        f"{tuple(shape)}, but the backbone takes {tuple(input_shape)}: augmentation must keep "
        "the image size. For random crops, follow keras.layers.RandomCrop(h, w) with "
        f"keras.layers.Resizing({input_shape[0]}, {input_shape[1]}), or use "
        "keras.layers.RandomZoom instead."
    )


def _backbone_and_preprocessing(backbone, input_shape, weights, backbone_kwargs, policy):
    if isinstance(backbone, str) and backbone.startswith(backbones.HUB_PREFIX):
        if backbone_kwargs:
            raise ValueError("`backbone_kwargs` are not used with 'hub:' presets.")
        preset = backbone[len(backbones.HUB_PREFIX) :]
        base, preprocessing, input_shape = _hub_backbone(preset, input_shape, weights, policy)
    else:
        spec = backbones.get_backbone_spec(backbone)
        if input_shape is None:
            input_shape = (spec.default_size, spec.default_size, 3)
        input_shape = tuple(input_shape)
        backbones.check_input_shape(spec, input_shape, weights)
        with dtype_policy(policy):
            base = backbones.build_backbone(spec, input_shape, weights, **backbone_kwargs)
        preprocessing = ImagePreprocessing(spec.module, name="preprocessing")
    return base, preprocessing, input_shape
