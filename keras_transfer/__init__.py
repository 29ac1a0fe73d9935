"""keras-transfer: transfer learning for images and text on Keras 3 (TensorFlow, JAX, PyTorch).

Factory functions return plain `keras.Model`s: build, compile, `fit`, evaluate, save.
"""

from keras_transfer.backbones import BackboneSpec, get_backbone_spec, list_backbones
from keras_transfer.checkpointing import resumable_fit
from keras_transfer.compiling import compile_classifier
from keras_transfer.evaluation import ClassificationReport, evaluate_classifier
from keras_transfer.export import export_saved_model
from keras_transfer.freezing import freeze_backbone, get_backbone, unfreeze_backbone
from keras_transfer.image_classifier import (
    build_image_classifier,
    default_augmentation,
    default_image_size,
)
from keras_transfer.image_data import image_folder_datasets
from keras_transfer.layers import ImagePreprocessing
from keras_transfer.lr_finder import LRFinderResult, lr_find
from keras_transfer.saving import load_classifier, save_classifier
from keras_transfer.text_classifier import build_text_classifier
from keras_transfer.text_data import class_weights, read_labelled_text, text_csv_datasets
from keras_transfer.training import fine_tune
from keras_transfer.tuning import tune_image_classifier

__version__ = "0.1.0"

__all__ = [
    "BackboneSpec",
    "ClassificationReport",
    "ImagePreprocessing",
    "LRFinderResult",
    "build_image_classifier",
    "build_text_classifier",
    "class_weights",
    "compile_classifier",
    "default_augmentation",
    "default_image_size",
    "evaluate_classifier",
    "export_saved_model",
    "fine_tune",
    "freeze_backbone",
    "get_backbone",
    "get_backbone_spec",
    "image_folder_datasets",
    "list_backbones",
    "lr_find",
    "load_classifier",
    "read_labelled_text",
    "resumable_fit",
    "save_classifier",
    "text_csv_datasets",
    "tune_image_classifier",
    "unfreeze_backbone",
]
