"""`EarlyStopping` across a resumed checkpoint (`checkpointing.resumable_fit`).

An uninterrupted `fit` ends where its `EarlyStopping` callbacks say: after `patience`
epochs without a better value of their monitor, with the best epoch's weights put back
(`restore_best_weights=True`). A resumed stage must end the same way, so the checkpoint
keeps the best epoch's weights of each such callback (`<stage>-best.weights.h5`, then
`-best1`, ... for a second and later one), and on resuming, each callback's recorded
monitor values are replayed through its own `on_epoch_end` (its wait and best value come
back), with the kept weights as its best weights. The direction each one resolved for
`mode="auto"` is recorded too (`directions`), as a metric's direction is known only once
the model's metrics are built.
"""

from __future__ import annotations

import os


def early_stoppers(callbacks):
    """The `keras.callbacks.EarlyStopping` callbacks among `callbacks`, in order."""
    import keras

    return [c for c in callbacks or [] if isinstance(c, keras.callbacks.EarlyStopping)]


def best_file(directory, stage, index):
    suffix = "" if index == 0 else str(index)
    return os.path.join(directory, f"{stage}-best{suffix}.weights.h5")


def directions(stoppers):
    """`{monitor: "max" or "min"}` for the stoppers whose direction is resolved, as the
    record keeps it."""
    import keras

    return {
        s.monitor: "max" if s.monitor_op is keras.ops.greater else "min"
        for s in stoppers
        if s.monitor_op is not None
    }


def keep_best_weights(weights_file, stage, stoppers, epoch):
    """Keep the epoch's checkpoint `weights_file` as the best weights of each stopper whose
    best epoch is `epoch` (a hard link where the file system has them, else a copy)."""
    import shutil

    directory = os.path.dirname(weights_file)
    for index, stopper in enumerate(stoppers):
        if stopper.restore_best_weights and stopper.best_epoch == epoch:
            tmp = os.path.join(directory, f"partial-{stage}-best{index}.weights.h5")
            if os.path.exists(tmp):
                os.remove(tmp)
            try:
                os.link(weights_file, tmp)
            except OSError:
                shutil.copyfile(weights_file, tmp)
            os.replace(tmp, best_file(directory, stage, index))


def read_best_weights(model, directory, stage, stoppers):
    """Each stopper's kept best weights (a list of arrays), or None; loads them into
    `model` one after the other, so load the weights to resume from afterwards."""
    kept = []
    for index, stopper in enumerate(stoppers):
        path = best_file(directory, stage, index)
        if stopper.restore_best_weights and os.path.isfile(path):
            model.load_weights(path)
            kept.append(model.get_weights())
        else:
            kept.append(None)
    return kept


def replay(model, stopper, record, best_weights):
    """Feed `stopper` the recorded values of its monitor (epochs `record["epochs_done"] -
    len(values)` on); its best weights become `best_weights` when it restores them.
    Returns whether it asked to stop."""
    values = record["history"].get(stopper.monitor) or []
    if not values:
        return False  # never logged: it never acted, as in the uninterrupted run
    verbose, stopper.verbose = stopper.verbose, 0
    stop_training, model.stop_training = model.stop_training, False
    first = record["epochs_done"] - len(values)
    for index, value in enumerate(values):
        stopper.on_epoch_end(first + index, {stopper.monitor: value})
    stopper.verbose = verbose
    stopped, model.stop_training = bool(model.stop_training), stop_training
    if stopper.restore_best_weights and best_weights is not None:
        stopper.best_weights = best_weights
    return stopped


def finished_stage(model, stoppers, record, epochs, best_weights):
    """Before resuming: True when the stage is over (all its epochs done, or a stopper
    had stopped it), the model then holding the weights an uninterrupted run ends with
    (the last restoring stopper's best, as `on_train_end` leaves them)."""
    stopped = record["epochs_done"] >= epochs
    if not stopped:
        recorded = record.get("directions")
        recorded = recorded if isinstance(recorded, dict) else {}
        try:  # the direction of a metric other than a loss is known once metrics are built
            for stopper in stoppers:
                stopper.set_model(model)
                stopper.on_train_begin()
                if stopper.monitor_op is None:
                    _set_direction(stopper, recorded.get(stopper.monitor))
        except ValueError:
            return False  # replayed in `fit` instead (ResumedStopping)
        stopped = any(
            replay(model, stopper, record, best)
            for stopper, best in zip(stoppers, best_weights, strict=True)
        )
    if stopped:
        for stopper, best in zip(stoppers, best_weights, strict=True):
            if stopper.restore_best_weights and best is not None:
                model.set_weights(best)
    return stopped


def _set_direction(stopper, recorded):
    """Resolve `stopper`'s direction: for `mode="auto"`, the `recorded` one ("max" or
    "min") when there is one; else as Keras does (ValueError until metrics are built)."""
    mode = stopper.mode
    if mode == "auto" and recorded in ("max", "min"):
        stopper.mode = recorded  # what "auto" resolved to in the run
    try:
        stopper._set_monitor_op()
    finally:
        stopper.mode = mode


def resumed_stopping(stoppers, record, best_weights):
    """A callback to put before the stoppers in `fit`'s callbacks: at the end of the first
    resumed epoch (the model's metrics built by then), it replays the record into them."""
    import keras

    class ResumedStopping(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.done = False

        def on_epoch_end(self, epoch, logs=None):
            if self.done:
                return
            self.done = True
            for stopper, best in zip(stoppers, best_weights, strict=True):
                if replay(self.model, stopper, record, best):
                    self.model.stop_training = True  # it had stopped: no later epoch

    return ResumedStopping()
