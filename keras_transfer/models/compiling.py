"""`compile_classifier`: categorical cross-entropy with the recipe's default optimizers."""

from __future__ import annotations

import keras

SGD_LEARNING_RATE = 1e-3  # the PyTorch transfer-learning tutorial's
SGD_MOMENTUM = 0.9
IMAGE_ADAM_LEARNING_RATE = 1e-3  # Keras' Adam default, the Keras guide's head optimizer
TEXT_ADAM_LEARNING_RATE = 5e-5  # BERT's fine-tuning grid: 5e-5, 3e-5, 2e-5
TEXT_WEIGHT_DECAY = 0.01  # BERT's AdamW weight decay


def is_text_classifier(model):
    """True for a KerasHub text classifier (as built by `build_text_classifier`)."""
    try:
        import keras_hub
    except ImportError:  # pragma: no cover - keras-hub is a dependency
        return False
    return isinstance(model, keras_hub.models.TextClassifier)


def make_optimizer(optimizer, learning_rate=None, momentum=SGD_MOMENTUM, *, text=False):
    """Make a Keras optimizer from a name (`"sgd"`, `"adam"`, `"adamw"`) or pass one through.

    Defaults: `"sgd"`: lr 1e-3, momentum 0.9 (the PyTorch transfer-learning tutorial's);
    `"adam"`: lr 1e-3 (Keras' default) for image models, 5e-5 for text models (BERT's
    fine-tuning grid); `"adamw"`: the same rates, weight decay 0.01 (BERT's).

    Raises:
        ValueError: an unknown name, or a `learning_rate` that is not a positive number.
    """
    if isinstance(optimizer, keras.optimizers.Optimizer):
        if learning_rate is not None:
            raise ValueError(
                "`learning_rate` is set on the optimizer object itself; pass one or the other."
            )
        return optimizer
    if learning_rate is not None and not (
        isinstance(learning_rate, (int, float)) and learning_rate > 0
    ):
        raise ValueError(f"`learning_rate` must be a positive number, got {learning_rate!r}.")
    name = str(optimizer).lower()
    if name == "sgd":
        return keras.optimizers.SGD(
            learning_rate=learning_rate or SGD_LEARNING_RATE, momentum=momentum
        )
    default = TEXT_ADAM_LEARNING_RATE if text else IMAGE_ADAM_LEARNING_RATE
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate or default)
    if name == "adamw":
        return keras.optimizers.AdamW(
            learning_rate=learning_rate or default, weight_decay=TEXT_WEIGHT_DECAY
        )
    raise ValueError(
        "`optimizer` must be 'sgd', 'adam', 'adamw' or a keras.optimizers.Optimizer, got "
        f"{optimizer!r}."
    )


def compile_classifier(
    model, optimizer=None, learning_rate=None, momentum=SGD_MOMENTUM, label_smoothing=0.0
):
    """Compile a classifier for one-hot labels: categorical cross-entropy and accuracy.

    The models of this package output softmax probabilities `(batch, num_classes)`, so the
    loss is `keras.losses.CategoricalCrossentropy(from_logits=False)` on one-hot labels
    `(batch, num_classes)` float32, and the metric is categorical accuracy named
    `"accuracy"`.

    Keras builds the optimizer for the variables that are trainable at compile time: after
    changing `trainable` flags by hand, call `compile_classifier` again
    (`freeze_backbone` / `unfreeze_backbone` recompile for you).

    Args:
        model: a `keras.Model` with softmax outputs, e.g. from `build_image_classifier`.
        optimizer: `"sgd"`, `"adam"`, `"adamw"` or a `keras.optimizers.Optimizer`.
            Default None: `"adam"` for image models (lr 1e-3: Keras' default and the Keras
            transfer-learning guide's), `"adamw"` for text models (lr 5e-5, weight decay
            0.01: BERT's fine-tuning recipe). `fine_tune` keeps this optimizer's class and
            settings for both stages.
        learning_rate: positive float; default depends on the optimizer (above).
        momentum: SGD momentum, default 0.9.
        label_smoothing: float in [0, 1), default 0.

    Returns:
        The same model, compiled.

    Raises:
        ValueError: unknown optimizer name, bad learning rate or label smoothing.
    """
    if not (isinstance(label_smoothing, (int, float)) and 0 <= label_smoothing < 1):
        raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing!r}.")
    text = is_text_classifier(model)
    if optimizer is None:
        optimizer = "adamw" if text else "adam"
    model.compile(
        optimizer=make_optimizer(optimizer, learning_rate, momentum, text=text),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    return model


def compile_arguments(model):
    """The keyword arguments `model` was compiled with, for compiling it (or its head) again.

    Fresh objects rebuilt from `model.get_compile_config()` (a fresh optimizer, loss and
    metrics); where Keras cannot rebuild one (a loss or metric that is a plain function or
    class not registered with `keras.saving.register_keras_serializable`), the objects the
    model was compiled with instead.

    Raises:
        TypeError, ValueError: the config cannot be rebuilt and the model does not hold the
            objects it was compiled with.
    """
    try:
        return keras.saving.deserialize_keras_object(model.get_compile_config())
    except (TypeError, ValueError):  # e.g. a functools.partial cannot even be serialised
        compiled = getattr(getattr(model, "_compile_config", None), "config", None)
        if not isinstance(compiled, dict):
            raise
        return dict(compiled)
