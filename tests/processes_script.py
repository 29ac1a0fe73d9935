"""`fine_tune` in one of 2 processes on localhost, or in one process alone.

    python processes_script.py PROCESS_ID PORT DATA RESULT_JSON [CHECKPOINT [EPOCH BATCH]]

PROCESS_ID 0 or 1: the process joins the other and trains in `kt.data_parallel()` over
both, 1 CPU device each. jax: through `keras.distribution.initialize` (gloo CPU
collectives); tensorflow: as a worker of a `TF_CONFIG` of 2 (ports PORT and PORT + 1),
its `MultiWorkerMirroredStrategy` made by `kt.data_parallel()` before anything else.
PROCESS_ID -1: the same training in one process without a distribution (the reference).
Writes to RESULT_JSON the devices, the histories and the head's weights; process 0 (and
the single process) also saves the model next to RESULT_JSON. With CHECKPOINT, training
is checkpointed there; with EPOCH and BATCH, process 1 kills itself (SIGKILL) before that
batch of that epoch (0-based), as a lost machine would.
"""

import json
import os
import signal
import sys

process_id, port, data, result_path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
checkpoint = sys.argv[5] if len(sys.argv) > 5 else None
kill_at = tuple(int(a) for a in sys.argv[6:8]) if len(sys.argv) > 7 else None
JAX = os.environ.get("KERAS_BACKEND") == "jax"
if JAX:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
elif process_id >= 0:
    workers = [f"localhost:{port}", f"localhost:{int(port) + 1}"]
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": process_id}}
    )

import keras  # noqa: E402

if JAX and process_id >= 0:
    keras.distribution.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)

import contextlib  # noqa: E402

import keras_transfer as kt  # noqa: E402

run = kt.data_parallel() if process_id >= 0 else contextlib.nullcontext()


class KillAt(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == kill_at and process_id == 1:
            os.kill(os.getpid(), signal.SIGKILL)


keras.utils.set_random_seed(7)
train_ds, val_ds, names = kt.image_folder_datasets(data, image_size=32, batch_size=4, seed=7)
with run:
    model = kt.build_image_classifier(
        "mobilenet",
        2,
        input_shape=(32, 32, 3),
        weights=None,
        backbone_kwargs={"alpha": 0.25},
        augmentation=None,
        dropout=0.0,
    )
    histories = kt.fine_tune(
        model,
        train_ds,
        val_ds,
        head_epochs=2,
        finetune_epochs=2,
        cache_features="auto" if process_id >= 0 else False,  # several: off anyway
        checkpoint_dir=checkpoint,
        callbacks=[KillAt()] if kill_at else None,
        verbose=0,
    )
    report = kt.evaluate_classifier(model, val_ds, names)
    dense = model.get_layer("predictions")
    result = dict(
        devices=run.devices if process_id >= 0 else ["cpu:0"],
        histories={stage: h.history for stage, h in histories.items()},
        epochs={stage: h.epoch for stage, h in histories.items()},
        kernel=keras.ops.convert_to_numpy(dense.kernel).tolist(),
        accuracy=report.accuracy,
    )
    if process_id <= 0:
        folder = os.path.dirname(os.path.abspath(result_path))
        kt.save_classifier(model, os.path.join(folder, "model.keras"), names)
with open(result_path, "w") as handle:
    json.dump(result, handle)
