"""keras-transfer: transfer learning for images and text on Keras 3 (TensorFlow, JAX, PyTorch).

Factory functions return plain `keras.Model`s: build, compile, `fit`, evaluate, save.

The public names below are imported on first use (PEP 562 module `__getattr__`), so that
`import keras_transfer` and `keras-transfer --help` do not load TensorFlow, Keras or KerasHub;
`from keras_transfer import fine_tune` and `keras_transfer.fine_tune` work as usual.
"""

import importlib
import sys

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "BackboneSpec": "backbones",
    "get_backbone_spec": "backbones",
    "list_backbones": "backbones",
    "resumable_fit": "checkpointing",
    "compile_classifier": "compiling",
    "DataParallelRun": "distribution",
    "data_parallel": "distribution",
    "ClassificationReport": "evaluation",
    "evaluate_classifier": "evaluation",
    "export_saved_model": "export",
    "export_litert": "export_formats",
    "export_onnx": "export_formats",
    "quantize_classifier": "quantization",
    "freeze_backbone": "freezing",
    "get_backbone": "freezing",
    "unfreeze_backbone": "freezing",
    "build_image_classifier": "image_classifier",
    "default_augmentation": "image_classifier",
    "default_image_size": "image_classifier",
    "image_folder_datasets": "image_data",
    "ImagePreprocessing": "layers",
    "load_classifier": "saving",
    "save_classifier": "saving",
    "build_text_classifier": "text_classifier",
    "class_weights": "text_data",
    "read_labelled_text": "text_data",
    "text_csv_datasets": "text_data",
    "tfds_datasets": "tfds_data",
    "fine_tune": "training",
    "LRFinderResult": "lr_finder",
    "lr_find": "lr_finder",
    "tune_image_classifier": "tuning",
    "tune_text_classifier": "tuning_text",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    """Import a public name's module on first use (and a submodule, e.g. `kt.compiling`)."""
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise  # a missing dependency of the submodule, not a missing submodule
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


# `keras.saving.load_model(path, safe_mode=True)` needs the package's one layer registered.
# When Keras is loaded already, importing it costs nothing more, so register it now; otherwise
# any keras_transfer model function (e.g. `load_classifier`) or `import keras_transfer.layers`
# registers it.
if "keras" in sys.modules:
    importlib.import_module(f"{__name__}.layers")
# Likewise the mean-pooled text classifier (`text_pooling`) once KerasHub is loaded.
if "keras_hub" in sys.modules:
    importlib.import_module(f"{__name__}.text_pooling")
