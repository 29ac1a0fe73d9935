"""A `fine_tune` run for the checkpoint tests, run in its own process so it can be killed.

    python fine_tune_script.py DATA CHECKPOINT_DIR RESULT_JSON [KILL_EPOCH KILL_BATCH]

With the environment variable KT_TEST_CACHED=1 the model has no augmentation, so the head
stage trains on cached features. With KT_TEST_DEVICES=N (N > 1) the backend gets N virtual
CPU devices, and the model is built and trained in `kt.data_parallel(N)`.

Writes one JSON line per epoch boundary to RESULT_JSON.events (a fingerprint of the weights
and the optimizer's step count), and the histories, trainable flags and validation accuracy
to RESULT_JSON at the end. With KILL_EPOCH / KILL_BATCH it SIGKILLs itself mid-epoch.
"""

import contextlib
import json
import os
import signal
import sys

devices = int(os.environ.get("KT_TEST_DEVICES", "1"))
if devices > 1:
    from keras_transfer.training.distribution import make_virtual_cpu_devices

    assert make_virtual_cpu_devices(devices)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_transfer as kt  # noqa: E402

data, checkpoint_dir, result_path = sys.argv[1:4]
kill_at = tuple(map(int, sys.argv[4:6])) if len(sys.argv) > 4 else None


def fingerprint(model):
    return [float(np.sum(keras.ops.convert_to_numpy(w).astype("float64"))) for w in model.weights]


class Events(keras.callbacks.Callback):
    def _write(self, kind, epoch):
        event = dict(
            kind=kind,
            epoch=epoch,
            weights=fingerprint(self.model),
            step=int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)),
        )
        with open(result_path + ".events", "a") as handle:
            handle.write(json.dumps(event) + "\n")

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self._write("begin", epoch)

    def on_epoch_end(self, epoch, logs=None):
        self._write("end", epoch)

    def on_train_batch_end(self, batch, logs=None):
        if kill_at == (self.epoch, batch):
            os.kill(os.getpid(), signal.SIGKILL)


keras.utils.set_random_seed(7)
train_ds, val_ds, names = kt.image_folder_datasets(data, image_size=32, batch_size=4, seed=7)
# VGG16: its random (weights=None) features tell the classes apart; MobileNet's are ~0.
augmentation = None if os.environ.get("KT_TEST_CACHED") == "1" else "default"
scope = kt.data_parallel(devices) if devices > 1 else contextlib.nullcontext()
scope.__enter__()
model = kt.build_image_classifier(
    "vgg16", len(names), input_shape=(32, 32, 3), weights=None, augmentation=augmentation
)
histories = kt.fine_tune(
    model,
    train_ds,
    val_ds,
    head_epochs=3,
    finetune_epochs=2,
    unfreeze_top_n=6,
    optimizer="adam",
    learning_rate=1e-2,
    callbacks=[Events()],
    checkpoint_dir=checkpoint_dir,
    verbose=0,
)
backbone = model.get_layer("backbone")
result = dict(
    histories={stage: h.history for stage, h in histories.items()},
    epochs={stage: h.epoch for stage, h in histories.items()},
    trainable={layer.name: layer.trainable for layer in backbone.layers},
    val_accuracy=kt.evaluate_classifier(model, val_ds, names).accuracy,
)
with open(result_path, "w") as handle:
    json.dump(result, handle)
