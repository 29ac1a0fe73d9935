"""Save and load classifiers as `.keras` files that also carry their class names."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
import zipfile

CLASS_NAMES_ENTRY = "keras_transfer/class_names.json"
TRAINABLE_ENTRY = "keras_transfer/trainable.json"
WEIGHTS_ENTRY = "model.weights.h5"


def _trainable_flags(model):
    """`trainable` of the model's layers and of its backbone's layers, by (explicit) name."""
    from keras_transfer.models.freezing import get_backbone

    return {
        "model": {layer.name: bool(layer.trainable) for layer in model.layers},
        "backbone": {layer.name: bool(layer.trainable) for layer in get_backbone(model).layers},
    }


def _restore_trainable_flags(model, flags, path):
    """Re-apply saved flags: KerasHub backbones rebuild their blocks from constructor
    arguments, which drops per-block `trainable` flags (as tensorflow#40994 did)."""
    from keras_transfer.models.freezing import get_backbone

    for owner, saved in ((model, flags["model"]), (get_backbone(model), flags["backbone"])):
        layers = {layer.name: layer for layer in owner.layers}
        if set(layers) != set(saved):
            raise ValueError(
                f"{path}: the loaded model's layers differ from the saved ones "
                f"({sorted(set(layers) ^ set(saved))[:5]}); cannot restore trainable flags."
            )
        for name, trainable in saved.items():
            if layers[name].trainable != trainable:
                layers[name].trainable = trainable


def _drop_optimizer_state(path):
    """Rewrite the `.keras` archive at `path` without the optimizer's variables.

    Keras keeps them under `optimizer/vars` of `model.weights.h5`; the group is kept, empty,
    so that loading builds a fresh optimizer (Keras warns that it skips loading its
    variables). HDF5 does not give back the space of deleted datasets, so the weights file
    is copied into a new one rather than edited in place.
    """
    import io

    import h5py

    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info.filename)) for info in archive.infolist()]
    rewritten = f"{path}.tmp"
    with zipfile.ZipFile(rewritten, "w", zipfile.ZIP_DEFLATED) as out:
        for info, data in entries:
            if info.filename == WEIGHTS_ENTRY:
                kept = io.BytesIO()
                with h5py.File(io.BytesIO(data), "r") as src, h5py.File(kept, "w") as dst:
                    dst.attrs.update(src.attrs)
                    for name in src:
                        if name != "optimizer":
                            src.copy(src[name], dst, name=name)
                    if "optimizer" in src:
                        group = dst.create_group("optimizer")
                        group.attrs.update(src["optimizer"].attrs)
                        group.create_group("vars")
                data = kept.getvalue()
            out.writestr(info, data)
    os.replace(rewritten, path)


def save_classifier(model, path, class_names=None, include_optimizer=False):
    """Save `model` to a `.keras` file with its class names inside, atomically.

    The file is a normal Keras archive (`keras.saving.load_model` reads it) with two extra
    entries: `keras_transfer/class_names.json` and `keras_transfer/trainable.json`, every
    layer's `trainable` flag, which `load_classifier` re-applies (KerasHub backbones rebuild
    their transformer blocks from arguments and would come back all trainable), so frozen
    layers, frozen BatchNorm included, stay frozen after loading. It is written to
    `<path>.tmp.keras` and renamed into place, so `path` is always either the previous
    complete file or the new one.

    Args:
        model: a `keras.Model`.
        path: str or path-like ending in `.keras`.
        class_names: list of str, index = class id; its length must match the model
            output. Default None: the names the model carries (learnt by `fine_tune` from
            its data, or `attach_class_names`).
        include_optimizer: bool, default False: a file for serving and sharing does not
            need the optimizer's state (Adam keeps two values per weight: two thirds of a
            fine-tuned model's file). The compile settings stay, so `load_classifier`
            returns a compiled model with a fresh optimizer. Checkpoints
            (`resumable_fit`) keep the state; pass True to keep it here too.

    Raises:
        ValueError: `path` does not end in `.keras`, or `class_names` has the wrong length.
        TypeError: `include_optimizer` is not a bool.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"`path` must end in '.keras', got {path!r}.")
    if not isinstance(include_optimizer, bool):
        raise TypeError(
            f"`include_optimizer` must be True or False, got {include_optimizer!r} "
            f"({type(include_optimizer).__name__})."
        )
    from keras_transfer.models.class_names import attach_class_names, class_names_of

    if class_names is None:
        class_names = class_names_of(model)
        if class_names is None:
            raise ValueError(
                f"{model.name!r} carries no class names: pass class_names=[...] (index = class "
                "id; the list image_folder_datasets / text_csv_datasets return)."
            )
    class_names = [str(name) for name in class_names]
    if len(class_names) != int(model.output_shape[-1]):
        raise ValueError(
            f"{len(class_names)} class names for a model with {model.output_shape[-1]} outputs."
        )
    attach_class_names(model, class_names)  # a later plain `model.save` keeps them too
    tmp = f"{path}.tmp.keras"
    try:
        with local_scope():  # several processes: the chief saves alone
            model.save(tmp)
        if not include_optimizer:
            _drop_optimizer_state(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(CLASS_NAMES_ENTRY, json.dumps(class_names, ensure_ascii=False))
            archive.writestr(TRAINABLE_ENTRY, json.dumps(_trainable_flags(model)))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_classifier(path, safe_mode=True):
    """Load a `.keras` classifier and its class names.

    Args:
        path: a file written by `save_classifier`, or by `model.save` of a model that
            carries class names (`keras_transfer.models.class_names`), or any `.keras` file (then
            the class names are None).
        safe_mode: passed to `keras.saving.load_model`; default True (our models hold no
            Lambda layers or pickled code).

    Returns:
        `(model, class_names)`; `class_names` a list of str, or None when the file has none;
        the model carries them (`class_names.class_names_of`), also into its next save.
        The model is compiled: with its saved compile config, or (KerasHub tasks, which
        Keras does not recompile on load) with `compile_classifier`'s defaults.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a `.keras` archive, or the saved trainable flags name layers the
            loaded model does not have (a file from an incompatible version).
    """
    import keras

    import keras_transfer.models.layers  # noqa: F401  (registers ImagePreprocessing)
    import keras_transfer.models.schedules  # noqa: F401  (registers WarmupDecay)
    import keras_transfer.models.text_pooling  # noqa: F401  (registers MeanPooledTextClassifier)
    from keras_transfer.models.class_names import attach_class_names, read_archive_class_names
    from keras_transfer.models.compiling import compile_classifier
    from keras_transfer.models.freezing import _recompile

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Model file not found: {path!r}.")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path!r} is not a .keras file (a zip archive written by Keras).")
    with zipfile.ZipFile(path) as archive:
        entries = {
            name: json.loads(archive.read(name).decode("utf-8"))
            for name in (CLASS_NAMES_ENTRY, TRAINABLE_ENTRY)
            if name in archive.namelist()
        }
        saved_names = read_archive_class_names(archive)  # a plain `model.save` of a model
    with warnings.catch_warnings():
        # KerasHub tasks have a custom compile(), so Keras skips it on load; we compile below.
        warnings.filterwarnings("ignore", message=".*compile\\(\\)` was not called.*")
        # ... and the saved optimizer state is not restored into it (a fresh one is built).
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer.*")
        model = keras.saving.load_model(path, safe_mode=safe_mode)
    if TRAINABLE_ENTRY in entries:
        _restore_trainable_flags(model, entries[TRAINABLE_ENTRY], path)
    if getattr(model, "compiled", False):
        _recompile(model)  # the optimizer must be built for the restored flags
    else:
        compile_classifier(model)
    class_names = entries.get(CLASS_NAMES_ENTRY, saved_names)
    if class_names is not None:
        attach_class_names(model, class_names)
    return model, class_names


@contextlib.contextmanager
def local_scope():
    """Within the block, in a run of several jax processes, no Keras distribution is in
    effect: what one process does alone (the chief saving the model) makes its variables on
    its own devices. Under the distribution, Keras' saving makes an optimizer to list the
    attributes it skips, and a variable made there is placed on the devices of all
    processes, which waits for the others (`jax.device_put` compares the value across
    processes) while they do not save: the chief hangs (`model.save`, `save_weights`).
    Elsewhere (one process, tensorflow workers, torch) it does nothing."""
    import keras

    before = keras.distribution.distribution()
    if keras.backend.backend() != "jax" or before is None:
        yield
        return
    import jax

    if jax.process_count() == 1:
        yield
        return
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(before)
