"""One of 2 jax processes on localhost joined by `keras.distribution.initialize`.

    python jax_processes_script.py PROCESS_ID PORT DATA RESULT_JSON

Each process has 1 CPU device; the two talk through jax's distributed runtime (gloo CPU
collectives). Writes to RESULT_JSON the devices `kt.data_parallel()` spans and the message
of the ValueError that `fine_tune` raises for a run of several processes.
"""

import json
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import keras  # noqa: E402

process_id, port, data, result_path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
keras.distribution.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)

import keras_transfer as kt  # noqa: E402

keras.utils.set_random_seed(7)
train_ds, val_ds, _ = kt.image_folder_datasets(data, image_size=32, batch_size=4, seed=7)
message = None
with kt.data_parallel() as run:
    model = kt.build_image_classifier(
        "mobilenet",
        2,
        input_shape=(32, 32, 3),
        weights=None,
        backbone_kwargs={"alpha": 0.25},
        augmentation=None,
    )
    try:
        kt.fine_tune(model, train_ds, val_ds, head_epochs=1, finetune_epochs=0, verbose=0)
    except ValueError as error:
        message = str(error)
result = dict(devices=run.devices, local=len(jax.local_devices()), error=message)
with open(result_path, "w") as handle:
    json.dump(result, handle)
