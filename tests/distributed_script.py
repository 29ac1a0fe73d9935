"""`fine_tune` on 1 device and on 2 (virtual CPU) devices, in one process per backend.

    python distributed_script.py DATA RESULT_JSON

The backend (KERAS_BACKEND: jax or tensorflow) gets 2 CPU devices before it starts: jax
from XLA_FLAGS, tensorflow as 2 logical CPUs. For the head fitted on cached features (the
linear probe, then one epoch of stage 2) and by gradient without caching (stage 1 only),
the same seed and global batches train once without a distribution and once in
`kt.data_parallel(2)`. Writes to RESULT_JSON, per run, the head's weights, the histories,
the replicas the variables live on and (2 devices) the accuracy of `evaluate_classifier`;
for the cached 2-device model, whether it saves, loads and (tensorflow) exports as a
SavedModel; and the messages of the errors for a model built outside the distribution, one
trained after its distribution's `with` block, and a batch size that does not divide by 2.
"""

import contextlib
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from keras_transfer.training.distribution import make_virtual_cpu_devices  # noqa: E402

assert make_virtual_cpu_devices(2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_transfer as kt  # noqa: E402
from keras_transfer.training.distribution import num_replicas  # noqa: E402

data, result_path = sys.argv[1:3]


def build():
    # VGG16: its random (weights=None) features tell the classes apart; MobileNet's are ~0.
    # No dropout or augmentation: under tf.distribute each replica draws its own masks.
    return kt.build_image_classifier(
        "vgg16", 2, input_shape=(32, 32, 3), weights=None, augmentation=None, dropout=0.0
    )


def replicas_of(variable):
    value = variable.value
    if keras.backend.backend() == "jax":
        return len(value.sharding.device_set)
    return len(getattr(value, "values", [value]))


def run(devices, cached):
    keras.utils.set_random_seed(7)
    train_ds, val_ds, names = kt.image_folder_datasets(data, image_size=32, batch_size=4, seed=7)
    scope = kt.data_parallel(devices) if devices > 1 else contextlib.nullcontext()
    with scope:
        model = build()
        histories = kt.fine_tune(
            model,
            train_ds,
            val_ds,
            head_epochs="auto" if cached else 2,
            finetune_epochs=1 if cached else 0,  # stage 2 once per device count
            unfreeze_top_n=2,
            cache_features=cached,
            verbose=0,
        )
        dense = model.get_layer("predictions")
        report = kt.evaluate_classifier(model, val_ds, names) if devices > 1 else None
        saved = save_load_export(model, names) if devices > 1 and cached else {}
        return dict(
            kernel=keras.ops.convert_to_numpy(dense.kernel).tolist(),
            bias=keras.ops.convert_to_numpy(dense.bias).tolist(),
            histories={stage: h.history for stage, h in histories.items()},
            replicas=num_replicas(model),
            variable_replicas=replicas_of(dense.kernel),
            accuracy=None if report is None else report.accuracy,
            **saved,
        )


def save_load_export(model, names):
    """Save and load the distributed model (and export a SavedModel on tensorflow)."""
    folder = os.path.dirname(os.path.abspath(result_path))
    kt.save_classifier(model, os.path.join(folder, "model.keras"), names)
    loaded, loaded_names = kt.load_classifier(os.path.join(folder, "model.keras"))
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(images))
    exported = None
    if keras.backend.backend() == "tensorflow":
        path = kt.export_saved_model(model, os.path.join(folder, "export"), class_names=names)
        exported = os.path.isfile(os.path.join(path, "saved_model.pb"))
    return dict(
        loaded_names=loaded_names,
        loaded_max_diff=float(np.abs(loaded.predict(images, verbose=0) - expected).max()),
        exported=exported,
    )


def error_message(call):
    try:
        call()
    except ValueError as error:
        return str(error)
    return None


def outside():
    model = build()
    train_ds, val_ds, _ = kt.image_folder_datasets(data, image_size=32, batch_size=4, seed=7)
    with kt.data_parallel(2):
        kt.fine_tune(model, train_ds, val_ds, head_epochs=1, finetune_epochs=0, verbose=0)


def left_scope():
    train_ds, val_ds, _ = kt.image_folder_datasets(data, image_size=32, batch_size=4, seed=7)
    with kt.data_parallel(2):
        model = build()
    kt.fine_tune(model, train_ds, val_ds, head_epochs=1, finetune_epochs=0, verbose=0)


def odd_batch():
    train_ds, val_ds, _ = kt.image_folder_datasets(data, image_size=32, batch_size=3, seed=7)
    with kt.data_parallel(2):
        model = build()
        kt.fine_tune(model, train_ds, val_ds, head_epochs=1, finetune_epochs=0, verbose=0)


result = {
    f"{'cached' if cached else 'uncached'}_{devices}": run(devices, cached)
    for cached in (True, False)
    for devices in (1, 2)
}
result["errors"] = dict(
    outside=error_message(outside),
    left_scope=error_message(left_scope),
    odd_batch=error_message(odd_batch),
)
with open(result_path, "w") as handle:
    json.dump(result, handle)
