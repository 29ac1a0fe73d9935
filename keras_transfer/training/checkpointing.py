"""Resumable training: `resumable_fit` checkpoints every epoch and resumes after a crash.

A checkpoint folder holds `state.json` (the run's settings, the epochs done per stage and
their history) and one `<stage>-epoch<N>.weights.h5` file (model weights and optimizer
state, from `model.save_weights`). Each epoch writes the new weights file under a temporary
name, renames it into place, then replaces `state.json` the same way, then deletes the old
weights file: a kill at any moment leaves a complete earlier or later checkpoint.
`EarlyStopping` callbacks resume as well (`resumed_stopping`: the best epoch's weights are
kept in `<stage>-best.weights.h5`).
"""

from __future__ import annotations

import json
import os
import re

from keras_transfer.training.epoch_passes import (
    build_before_fit,
    dataset_fit_kwargs,
    one_pass_per_epoch,
    skip_epochs,
)
from keras_transfer.training.resumed_stopping import (
    directions,
    early_stoppers,
    finished_stage,
    keep_best_weights,
    read_best_weights,
    resumed_stopping,
)

STATE_FILE = "state.json"


def _write_json(path, value):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_checkpoint(directory, settings):
    """The saved state in `directory`, or None when it holds no checkpoint.

    Raises:
        ValueError: the checkpoint was written by a run with other `settings` (another
            model, epochs or learning rate), or `state.json` is unreadable.
        TypeError: `settings` is not a dict.
    """
    if not isinstance(settings, dict):
        raise TypeError(f"`settings` must be a dict, got {type(settings).__name__}.")
    path = os.path.join(directory, STATE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
        _check_state(state, directory)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"Cannot read the checkpoint {path!r} ({error}); delete the folder "
            f"{directory!r} to start training from the beginning."
        ) from None
    saved, settings = _flat(state["settings"]), _flat(settings)  # nested dicts' keys named
    changed = sorted(
        key
        for key in set(saved) | set(settings)
        if (key in saved) != (key in settings) or saved.get(key) != settings.get(key)
    )
    if changed:
        details = ", ".join(
            f"{_name(key)}: {_shown(saved, key)} then, {_shown(settings, key)} now"
            for key in changed
        )
        fix = "Re-run with the same settings to resume it"
        if all(key not in settings for key in changed):  # nothing this run could set again
            fix = (
                "This run records none of those settings (a checkpoint of an older "
                "keras-transfer?), so it cannot resume it"
            )
        raise ValueError(
            f"The checkpoint in {directory!r} is from a run with other settings ({details}). "
            f"{fix}; use another (or an empty) checkpoint folder to start over."
        )
    return state


def _flat(settings, prefix=()):
    """`{"a": {"b": 1}}` as `{("a", "b"): 1}`, for naming the settings that changed."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, (*prefix, str(key))))
        else:
            flat[(*prefix, str(key))] = value
    return flat


def _shown(settings, key):
    return repr(settings[key]) if key in settings else "unset"


def _name(path):
    """`a.b` for the key path `("a", "b")`; `['a.b']` where a key holds a dot."""
    if any("." in key for key in path):
        return "".join(f"[{key!r}]" for key in path)
    return ".".join(path)


def _check_state(state, directory):
    """Raise ValueError unless `state` is a complete state.json of ours."""
    if not isinstance(state, dict) or not isinstance(state.get("settings"), dict):
        raise ValueError("not a keras-transfer checkpoint state")
    stages = state.get("stages")
    if not isinstance(stages, dict) or not all(
        isinstance(r, dict)
        and isinstance(r.get("epochs_done"), int)
        and isinstance(r.get("history"), dict)
        for r in stages.values()
    ):
        raise ValueError("its 'stages' are incomplete")
    if stages:
        weights = state.get("weights")
        if not isinstance(weights, str) or not os.path.isfile(os.path.join(directory, weights)):
            raise ValueError(f"its weights file {weights!r} is missing")
        if not isinstance(state.get("seed_states"), list):
            raise ValueError("its 'seed_states' are missing")


def _check_writable(directory):
    """Create `directory` and make sure files can be written there, before any training."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"Checkpoint folder {directory!r} is a file; pass a folder.")
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, ".write-test.tmp")
        with open(probe, "w") as handle:
            handle.write("ok")
        os.remove(probe)
    except OSError as error:
        raise ValueError(
            f"Cannot write checkpoints to {directory!r} ({error.strerror}); pass a writable folder."
        ) from None


def clear_checkpoint(directory):
    """Delete the files `resumable_fit` wrote in `directory` (and the folder if left empty)."""
    if not os.path.isdir(directory):
        return
    ours = re.compile(r"(partial-)?.+-(epoch\d{4}|best\d*)\.weights\.h5|state\.json(\.tmp)?")
    for name in os.listdir(directory):  # only the names this module writes
        if ours.fullmatch(name) or name == ".write-test.tmp":
            os.remove(os.path.join(directory, name))
    if not os.listdir(directory):
        os.rmdir(directory)


def _seed_states(model):
    """The model's random-number states (dropout, augmentation): `save_weights` omits them."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def _torch_random_state():
    """On torch, the global torch random state as a list of ints, else None: Keras' torch
    dropout without a seed (the default `Dropout`) draws from it, not from a seed state."""
    import keras

    if keras.backend.backend() != "torch":
        return None
    import torch

    return torch.get_rng_state().tolist()


def _restore_torch_random_state(value):
    import keras

    if value is not None and keras.backend.backend() == "torch":
        import torch

        torch.set_rng_state(torch.tensor(value, dtype=torch.uint8))


def _torch_random_state_at_first_batch(value):
    """A callback that restores torch's global random state just before the first training
    step: Keras' torch `fit` draws from it when it starts reading the data, which an
    uninterrupted run did once at the start of the stage, not at the resumed epoch."""
    import keras

    class RestoreTorchRandomState(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.value = value

        def on_train_batch_begin(self, batch, logs=None):
            if self.value is not None:
                _restore_torch_random_state(self.value)
                self.value = None

    return RestoreTorchRandomState()


def _make_callback(directory, stage, state, stoppers=()):
    import keras
    import numpy as np

    from keras_transfer.models.saving import local_scope
    from keras_transfer.training.processes import barrier, is_chief

    class EpochCheckpoint(keras.callbacks.Callback):
        """Write the weights, optimizer state and history at the end of every epoch (in a
        run of several processes, the chief writes, and the others wait for it)."""

        def on_epoch_end(self, epoch, logs=None):
            self._record(epoch, logs)
            barrier(f"checkpoint {stage} {epoch}")

        def _record(self, epoch, logs):
            name = f"{stage}-epoch{epoch + 1:04d}.weights.h5"
            if is_chief():
                os.makedirs(directory, exist_ok=True)
                tmp = os.path.join(directory, f"partial-{name}")
                with local_scope():  # the chief saves alone (saving.local_scope)
                    self.model.save_weights(tmp)
                os.replace(tmp, os.path.join(directory, name))
            record = state["stages"].setdefault(stage, {"epochs_done": 0, "history": {}})
            for key, value in (logs or {}).items():  # per-class metrics (F1Score) as lists
                record["history"].setdefault(key, []).append(np.asarray(value).tolist())
            record["epochs_done"] = epoch + 1
            if stoppers:
                record["directions"] = directions(stoppers)
            state["seed_states"] = [
                keras.ops.convert_to_numpy(v).tolist() for v in _seed_states(self.model)
            ]
            state["torch_random_state"] = _torch_random_state()
            previous, state["weights"] = state.get("weights"), name
            if not is_chief():
                return
            keep_best_weights(os.path.join(directory, name), stage, stoppers, epoch)
            _write_json(os.path.join(directory, STATE_FILE), state)
            if previous and previous != name:
                os.remove(os.path.join(directory, previous))

    return EpochCheckpoint()


def _history(model, record, first_epoch, fitted):
    import keras

    history = fitted if fitted is not None else keras.callbacks.History()
    history.set_model(model)
    history.history = {key: list(values) for key, values in record["history"].items()}
    history.epoch = list(range(first_epoch, record["epochs_done"]))
    return history


def resumable_fit(
    model,
    train_ds,
    *,
    epochs,
    checkpoint_dir,
    settings=None,
    stage="fit",
    initial_epoch=0,
    callbacks=None,
    **fit_kwargs,
):
    """`model.fit` that saves a checkpoint after every epoch and resumes from the last one.

    Run the same code again after a crash or a kill (SIGKILL included) and training goes on
    from the last completed epoch: the weights and the optimizer state (momentum, Adam
    moments, step count) are restored, with the random states of dropout and augmentation
    layers (on torch also torch's global random state, which Keras' unseeded dropout draws
    from) and (for a `tf.data.Dataset`) the reshuffling, so the resumed run trains on the
    same batches as an uninterrupted one and ends with the same weights up to float noise
    (see the determinism notes in docs/reliability.md; NumPy inputs are reshuffled by
    `fit` and do not resume the same order). Several `resumable_fit` calls with different
    `stage` names can share one folder (as `fine_tune`'s two stages do): a stage already
    done is skipped.

    Args:
        model: a compiled `keras.Model`, compiled the same way as in the interrupted run
            (trainable flags included).
        train_ds: training data for `model.fit` that can be read in every epoch: a
            `tf.data.Dataset`, a `keras.utils.PyDataset` or a torch `DataLoader` (these two
            resume in the order they give, not the uninterrupted run's).
        epochs: int, the epoch number to stop at (as in `fit`).
        checkpoint_dir: folder for the checkpoint; created if missing.
        settings: JSON-able dict describing the run (e.g. epochs, learning rate); a
            checkpoint written with other settings raises instead of resuming.
        stage: str, a name for this call within the folder; default `"fit"`.
        initial_epoch: int, the epoch to start at when nothing is saved (as in `fit`).
        callbacks: list of Keras callbacks for `fit`. `keras.callbacks.EarlyStopping`
            callbacks resume with their wait, best value and best weights (replayed from
            the recorded history; `resumed_stopping`); one that had already stopped ends
            the stage with its best weights.
        **fit_kwargs: other `fit` arguments (`validation_data`, `class_weight`, `verbose`);
            `class_weight` is checked first (`class_weighting.check_class_weight`: class
            ids or names of the model's classes, weights > 0; missing classes get 1.0), or
            "balanced" (from the labels of `train_ds`). Not `steps_per_epoch`: an epoch is
            one pass over `train_ds`.

    Returns:
        `keras.callbacks.History` of the whole stage: `history.history` maps each metric to
        one float per epoch from `initial_epoch` to `epochs`.

    Raises:
        ValueError: the checkpoint has other `settings`, is unreadable or incomplete, the
            folder is not writable, `train_ds` is infinite, `steps_per_epoch` is given, or
            `class_weight` names no class of the model (checked before training).
        TypeError: `settings` is neither None nor a dict.
    """
    from keras_transfer.data.fit_inputs import check_resumable_data
    from keras_transfer.training.class_weighting import check_model_class_weight

    check_resumable_data(train_ds)  # a generator is read once: it cannot resume
    if "steps_per_epoch" in fit_kwargs:
        raise ValueError(
            "resumable_fit trains one pass over `train_ds` an epoch (so that a resumed epoch "
            "goes on where it stopped): drop `steps_per_epoch` (and any `.repeat()`), or "
            "`.take(n)` the batches an epoch should have."
        )
    fit_kwargs["class_weight"] = check_model_class_weight(
        model, fit_kwargs.get("class_weight"), train_ds
    )
    from keras_transfer.training.processes import (
        barrier,
        is_chief,
        shard_fit_kwargs,
        shard_for_process,
    )

    directory = os.fspath(checkpoint_dir)
    if is_chief():
        _check_writable(directory)
    barrier("checkpoint folder")
    if settings is not None and not isinstance(settings, dict):
        raise TypeError(f"`settings` must be a dict, got {type(settings).__name__}.")
    settings = json.loads(json.dumps(settings or {}, default=str))  # as state.json holds it
    settings.setdefault("model", f"{model.name}: {len(model.weights)} weights")
    state = read_checkpoint(directory, settings) or {"settings": settings, "stages": {}}
    record = state["stages"].get(stage)
    resumed_random_state = None
    stoppers, resumed = early_stoppers(callbacks), []
    if record is not None and state.get("weights", "").startswith(f"{stage}-"):
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        weights = os.path.join(directory, state["weights"])
        try:
            best_weights = read_best_weights(model, directory, stage, stoppers)
            model.load_weights(weights)
            for variable, value in zip(_seed_states(model), state["seed_states"], strict=True):
                variable.assign(value)
        except (OSError, ValueError) as error:
            raise ValueError(
                f"Cannot load the checkpoint {weights!r} ({str(error)[:200]}); delete the "
                f"folder {directory!r} to start training from the beginning."
            ) from None
        resumed_random_state = state.get("torch_random_state")
        skip_epochs(train_ds, record["epochs_done"])
        print(f"Resuming {stage!r} from {directory} after epoch {record['epochs_done']}.")
        if stoppers:  # their patience and best weights go on
            if finished_stage(model, stoppers, record, epochs, best_weights):
                return _history(model, record, initial_epoch, None)
            resumed = [resumed_stopping(stoppers, record, best_weights)]
    start = initial_epoch if record is None else record["epochs_done"]
    fitted = None
    if start < epochs:
        callback = _make_callback(directory, stage, state, stoppers)
        callbacks = list(callbacks or [])
        first = min((callbacks.index(s) for s in stoppers), default=len(callbacks))
        callbacks[first:first] = resumed  # before the stoppers: replayed, then this epoch
        data, steps_per_epoch = one_pass_per_epoch(train_ds, start, epochs)
        data, fit_kwargs = shard_for_process(data), shard_fit_kwargs(fit_kwargs)
        restore = _torch_random_state_at_first_batch(resumed_random_state)
        build_before_fit(model, data)
        fitted = model.fit(
            data,
            steps_per_epoch=steps_per_epoch,
            initial_epoch=start,
            epochs=epochs,
            callbacks=[restore, *callbacks, callback],
            **dataset_fit_kwargs(data, fit_kwargs),
        )
    else:  # this stage is done; the next one starts from its random state
        _restore_torch_random_state(resumed_random_state)
    record = state["stages"].get(stage, {"epochs_done": start, "history": {}})
    return _history(model, record, initial_epoch, fitted)
