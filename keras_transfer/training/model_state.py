"""The state `fine_tune` changes in a model, put back when it fails.

`fine_tune` freezes and unfreezes the backbone and compiles the model anew for each stage
(a fresh optimizer, a warmup-then-decay schedule, label smoothing). When it raises (a
callback that raises, a `KeyboardInterrupt`, an error in the data), `restored_on_error`
puts back every layer's and weight's `trainable` flag and the compiled state the model
had before the call (the same optimizer object, the loss and metrics as compiled; not
compiled when it was not), then the exception goes on unchanged. The weights are not put
back: a `checkpoint_dir` resumes from them.
"""

from __future__ import annotations

import contextlib
import warnings


def trainable_flags(model):
    """`(layers, weights)`: every layer's `trainable` flag (each layer before its sublayers)
    and every weight's, as `(object, flag)` pairs for `restore_trainable_flags`."""
    layers = [(layer, layer.trainable) for layer in model._flatten_layers(include_self=True)]
    weights = [(weight, weight.trainable) for weight in model.weights]
    return layers, weights


def restore_trainable_flags(flags):
    """Set the flags `trainable_flags` recorded: a layer's flag also sets its sublayers',
    so each layer is set before its sublayers, and the weights last."""
    layers, weights = flags
    for layer, trainable in layers:
        layer.trainable = trainable
    for weight, trainable in weights:
        weight.trainable = trainable


def compiled_state(model):
    """`(compile arguments, optimizer)` of a compiled `model`, or `(None, None)`."""
    from keras_transfer.models.compiling import compile_arguments

    if not getattr(model, "compiled", False):
        return None, None
    return compile_arguments(model), model.optimizer


def restore_compiled_state(model, state):
    """Compile `model` as `compiled_state` recorded it, with the same optimizer object (its
    variables and step count kept); mark it not compiled when it was not."""
    config, optimizer = state
    if config is None:
        model.compiled = False  # as before the call: `fit` asks for `compile` again
        model.optimizer = None
        return
    config = dict(config, optimizer=optimizer)
    model.compile(**config)


@contextlib.contextmanager
def restored_on_error(model):
    """Within the block, an exception (any, `KeyboardInterrupt` included) first puts back
    `model`'s `trainable` flags and compiled state as they were when the block began, then
    goes on unchanged. Nothing is put back when the block ends normally.

    Raises:
        The block's own exception, unchanged. Should putting the state back fail, that is
        said in a `UserWarning` and the block's exception still goes on.
    """
    flags, state = trainable_flags(model), compiled_state(model)
    try:
        yield model
    except BaseException:
        try:
            restore_trainable_flags(flags)
            restore_compiled_state(model, state)
        except Exception as error:  # the caller's exception matters more than ours
            warnings.warn(
                f"Could not put back {model.name!r}'s trainable flags and compiled state "
                f"after the error below ({type(error).__name__}: {error}).",
                UserWarning,
                stacklevel=3,
            )
        raise
