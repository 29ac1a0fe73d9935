"""The registry of image backbones: a name maps to a `keras.applications` constructor
and its pretrained configuration (default and minimum input size, preprocessing).

Modelled on timm's registry: `get_backbone_spec("resnet50")` says what the backbone needs,
`build_backbone(...)` builds it with Keras' own constructor and weight loader.
KerasHub image presets are reached with the `"hub:"` prefix (see `build_backbone`).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re

HUB_PREFIX = "hub:"
# keras.applications caches these downloads under other names than their URLs'.
_CACHE_NAMES = {
    "NASNet-mobile-no-top.h5": "nasnet_mobile_no_top.h5",
    "NASNet-large-no-top.h5": "nasnet_large_no_top.h5",
}


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What a registry name stands for.

    Attributes:
        name: the registry name, e.g. `"mobilenet_v2"`.
        constructor: the `keras.applications` constructor's name, e.g. `"MobileNetV2"`.
        module: the `keras.applications` module whose `preprocess_input` the backbone
            expects, e.g. `"mobilenet_v2"` (pixels in [0, 255] -> the backbone's range).
        default_size: the input side length (pixels) of the ImageNet weights.
        min_size: the smallest input side length (pixels) the architecture accepts.
    """

    name: str
    constructor: str
    module: str
    default_size: int
    min_size: int = 32


def _spec(name, constructor, module, default_size=224, min_size=32):
    return BackboneSpec(name, constructor, module, default_size, min_size)


_SPECS = [
    _spec("convnext_tiny", "ConvNeXtTiny", "convnext"),
    _spec("convnext_small", "ConvNeXtSmall", "convnext"),
    _spec("convnext_base", "ConvNeXtBase", "convnext"),
    _spec("convnext_large", "ConvNeXtLarge", "convnext"),
    _spec("convnext_xlarge", "ConvNeXtXLarge", "convnext"),
    _spec("densenet121", "DenseNet121", "densenet"),
    _spec("densenet169", "DenseNet169", "densenet"),
    _spec("densenet201", "DenseNet201", "densenet"),
    _spec("efficientnet_b0", "EfficientNetB0", "efficientnet", 224),
    _spec("efficientnet_b1", "EfficientNetB1", "efficientnet", 240),
    _spec("efficientnet_b2", "EfficientNetB2", "efficientnet", 260),
    _spec("efficientnet_b3", "EfficientNetB3", "efficientnet", 300),
    _spec("efficientnet_b4", "EfficientNetB4", "efficientnet", 380),
    _spec("efficientnet_b5", "EfficientNetB5", "efficientnet", 456),
    _spec("efficientnet_b6", "EfficientNetB6", "efficientnet", 528),
    _spec("efficientnet_b7", "EfficientNetB7", "efficientnet", 600),
    _spec("efficientnet_v2_b0", "EfficientNetV2B0", "efficientnet_v2", 224),
    _spec("efficientnet_v2_b1", "EfficientNetV2B1", "efficientnet_v2", 240),
    _spec("efficientnet_v2_b2", "EfficientNetV2B2", "efficientnet_v2", 260),
    _spec("efficientnet_v2_b3", "EfficientNetV2B3", "efficientnet_v2", 300),
    _spec("efficientnet_v2_s", "EfficientNetV2S", "efficientnet_v2", 384),
    _spec("efficientnet_v2_m", "EfficientNetV2M", "efficientnet_v2", 480),
    _spec("efficientnet_v2_l", "EfficientNetV2L", "efficientnet_v2", 480),
    _spec("inception_resnet_v2", "InceptionResNetV2", "inception_resnet_v2", 299, 75),
    _spec("inception_v3", "InceptionV3", "inception_v3", 299, 75),
    _spec("mobilenet", "MobileNet", "mobilenet"),
    _spec("mobilenet_v2", "MobileNetV2", "mobilenet_v2"),
    _spec("mobilenet_v3_large", "MobileNetV3Large", "mobilenet_v3"),
    _spec("mobilenet_v3_small", "MobileNetV3Small", "mobilenet_v3"),
    _spec("nasnet_large", "NASNetLarge", "nasnet", 331),
    _spec("nasnet_mobile", "NASNetMobile", "nasnet", 224),
    _spec("resnet50", "ResNet50", "resnet50"),
    _spec("resnet101", "ResNet101", "resnet"),
    _spec("resnet152", "ResNet152", "resnet"),
    _spec("resnet50_v2", "ResNet50V2", "resnet_v2"),
    _spec("resnet101_v2", "ResNet101V2", "resnet_v2"),
    _spec("resnet152_v2", "ResNet152V2", "resnet_v2"),
    _spec("vgg16", "VGG16", "vgg16"),
    _spec("vgg19", "VGG19", "vgg19"),
    _spec("xception", "Xception", "xception", 299, 71),
]
_REGISTRY = {spec.name: spec for spec in _SPECS}


def list_backbones():
    """Return the registry names of all `keras.applications` backbones, sorted.

    Returns:
        list of str, e.g. `["convnext_base", ..., "xception"]` (40 names).
    """
    return sorted(_REGISTRY)


def get_backbone_spec(name):
    """Return the `BackboneSpec` registered under `name`.

    Args:
        name: a registry name from `list_backbones()` (case-insensitive; `-` and `_`
            are interchangeable, so `"MobileNet-V2"` finds `"mobilenet_v2"`).

    Raises:
        ValueError: for an unknown name; the message lists the closest names.
    """
    if not isinstance(name, str):
        raise ValueError(f"`backbone` must be a string name, got {name!r}.")
    key = name.strip().lower().replace("-", "_")
    if key in _REGISTRY:
        return _REGISTRY[key]
    close = difflib.get_close_matches(key, _REGISTRY, n=5, cutoff=0.5)
    hint = f" Closest names: {', '.join(close)}." if close else ""
    raise ValueError(
        f"Unknown backbone {name!r}.{hint} See keras_transfer.list_backbones() (or "
        f"`keras-transfer backbones`) for all {len(_REGISTRY)} names, or pass a KerasHub "
        f"image preset as '{HUB_PREFIX}<preset name or folder>'."
    )


def check_input_shape(spec, input_shape, weights):
    """Validate an `(height, width, channels)` input shape for the backbone `spec`.

    Raises:
        ValueError: if the shape is not 3 positive ints, a side is below the backbone's
            minimum, or the channels are not 3 while ImageNet weights are requested.
    """
    if len(input_shape) != 3 or not all(isinstance(d, int) and d > 0 for d in input_shape):
        raise ValueError(
            f"`input_shape` must be (height, width, channels) with positive ints, "
            f"got {input_shape!r}."
        )
    height, width, channels = input_shape
    if min(height, width) < spec.min_size:
        raise ValueError(
            f"`input_shape` {input_shape} is too small for backbone {spec.name!r}: "
            f"height and width must be at least {spec.min_size} pixels "
            f"(its ImageNet weights use {spec.default_size})."
        )
    if weights is not None and channels != 3:
        raise ValueError(
            f"`input_shape` {input_shape} has {channels} channel(s), but pretrained "
            f"weights ({weights!r}) need 3 (RGB). Use channels=3 (grayscale images are "
            "converted to RGB by the data pipeline) or weights=None."
        )


class _WouldDownload(Exception):
    pass


def _expected_file_hint(constructor, kwargs):
    """`: the file Keras uses for these arguments is X`, found by asking the constructor."""
    from keras.src.utils import file_utils

    def record(fname=None, origin=None, *args, **kw):
        raise _WouldDownload(fname or os.path.basename(origin or ""))

    original = file_utils.get_file
    file_utils.get_file = record
    try:
        constructor(**{**kwargs, "weights": "imagenet"})
    except _WouldDownload as found:
        return f": the ImageNet file Keras uses for these arguments is {found}"
    except Exception:  # noqa: BLE001 - only a hint; the caller's error stands
        return ""
    finally:
        file_utils.get_file = original
    return ""


def build_backbone(spec, input_shape, weights="imagenet", **backbone_kwargs):
    """Build the headless `keras.applications` model for `spec`.

    Args:
        spec: a `BackboneSpec` (see `get_backbone_spec`).
        input_shape: `(height, width, 3)`.
        weights: `"imagenet"` (Keras' own loader: it reads `$KERAS_HOME/models`, default
            `~/.keras/models`, before downloading), `None` (random init), or a path to a
            weights file (`.h5` / `.weights.h5`) for the headless model.
        **backbone_kwargs: passed to the Keras constructor, e.g. `alpha=0.25`.

    Returns:
        A `keras.Model` mapping preprocessed images `(batch, height, width, 3)` float32 to
        feature maps `(batch, h', w', channels)`, built with `include_top=False`.

    Raises:
        FileNotFoundError: `weights` is a path that does not exist.
        ValueError: the weights file does not fit this architecture (the message names the
            file Keras would download for this configuration), or a bad keyword argument.
    """
    import keras

    constructor = getattr(keras.applications, spec.constructor)
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"`weights` must be 'imagenet', None or a file path, got {weights!r}.")
    if weights not in (None, "imagenet"):
        weights = os.fspath(weights)
        if not os.path.isfile(weights):
            raise FileNotFoundError(
                f"Weights file not found: {weights!r}. Pass weights='imagenet' to use "
                "Keras' cache/download, None for random init, or an existing file."
            )
    kwargs = dict(backbone_kwargs)
    kwargs.update(include_top=False, weights=weights, input_shape=tuple(input_shape))
    try:
        return constructor(**kwargs)
    except TypeError as error:
        raise ValueError(
            f"Bad `backbone_kwargs` for {spec.constructor}: {backbone_kwargs!r} ({error})."
        ) from error
    except OSError as error:  # h5py: not an HDF5 file
        raise ValueError(
            f"The weights file {weights!r} could not be read as Keras weights ({error}); pass "
            "a .h5 / .weights.h5 file of the headless model."
        ) from error
    except ValueError as error:
        if isinstance(weights, str) and weights != "imagenet":
            raise ValueError(
                f"The weights file {weights!r} does not fit {spec.constructor}"
                f"(include_top=False, input_shape={tuple(input_shape)}, "
                f"{backbone_kwargs or 'default arguments'}): {error}. It must be the "
                "headless ('no_top') weights of the same architecture, input size and width "
                f"multiplier (alpha){_expected_file_hint(constructor, kwargs)}."
            ) from error
        raise
    except Exception as error:  # keras.utils.get_file: "URL fetch failure on ..."
        if weights == "imagenet" and "URL fetch failure" in str(error):
            found = re.search(r"URL fetch failure on (\S+?):? ", str(error))
            cache = os.path.join(
                os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras")),
                "models",
            )
            file = found.group(1).rsplit("/", 1)[-1] if found else ""
            where = os.path.join(cache, _CACHE_NAMES.get(file, file))
            raise ValueError(
                f"The ImageNet weights of {spec.constructor}({backbone_kwargs or ''}) are not "
                f"in the Keras cache and could not be downloaded: {error}. Connect to the "
                f"internet once, copy the file to {where} ($KERAS_HOME/models, default "
                "~/.keras/models), or pass weights=<path> or weights=None (on the command "
                "line --weights <file> or --weights none)."
            ) from error
        raise
