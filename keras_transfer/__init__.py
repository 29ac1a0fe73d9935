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
    "attach_class_names": "models.class_names",
    "BackboneSpec": "models.backbones",
    "get_backbone_spec": "models.backbones",
    "list_backbones": "models.backbones",
    "resumable_fit": "training.checkpointing",
    "compile_classifier": "models.compiling",
    "DataParallelRun": "training.distribution",
    "data_parallel": "training.distribution",
    "ClassificationReport": "report.evaluation",
    "evaluate_classifier": "report.evaluation",
    "export_saved_model": "export.saved_model",
    "export_litert": "export.formats",
    "export_onnx": "export.formats",
    "quantize_classifier": "export.quantization",
    "freeze_backbone": "models.freezing",
    "get_backbone": "models.freezing",
    "unfreeze_backbone": "models.freezing",
    "build_image_classifier": "models.image_classifier",
    "default_augmentation": "models.image_classifier",
    "default_image_size": "models.image_classifier",
    "image_folder_datasets": "data.image_data",
    "ImagePreprocessing": "models.layers",
    "load_classifier": "models.saving",
    "save_classifier": "models.saving",
    "build_text_classifier": "models.text_classifier",
    "class_weights": "data.labels",
    "read_labelled_text": "data.text_data",
    "text_csv_datasets": "data.text_data",
    "tfds_datasets": "data.tfds_data",
    "fine_tune": "training.recipe",
    "LRFinderResult": "training.lr_finder",
    "lr_find": "training.lr_finder",
    "tune_image_classifier": "tuning.image",
    "tune_text_classifier": "tuning.text",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    """Import a public name's module on first use (and a wing, e.g. `kt.models`)."""
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


# `keras.saving.load_model(path, safe_mode=True)` needs the package's layer (and the schedule
# of a saved optimizer) registered.
# When Keras is loaded already, importing it costs nothing more, so register it now; otherwise
# any keras_transfer model function (e.g. `load_classifier`) or
# `import keras_transfer.models.layers` registers it.
if "keras" in sys.modules:
    importlib.import_module(f"{__name__}.models.layers")
    importlib.import_module(f"{__name__}.models.schedules")  # in a saved optimizer's config
# Likewise the mean-pooled text classifier (`text_pooling`) once KerasHub is loaded.
if "keras_hub" in sys.modules:
    importlib.import_module(f"{__name__}.models.text_pooling")
