"""Data-parallel runs over several processes (jax: processes joined by
`keras.distribution.initialize`; tensorflow: the workers of a
`MultiWorkerMirroredStrategy`, `keras_transfer.training.tf_workers`; docs/distributed.md).

Every process reads the same global batches (the same files, seed and per-epoch orders)
and feeds Keras its own slice of each: process i of P the rows `[i * B/P, (i+1) * B/P)` of
a global batch of B. Keras' jax trainer puts the slices together into one global batch
(`jax.make_array_from_process_local_data`), so the update is the one of a single process
on the whole batch. Keras' own sharding of a `tf.data` pipeline (`DataParallel`'s
`auto_shard_dataset`) is turned off while `fine_tune` runs: it needs the pipeline's batch
size, which the per-epoch pipelines hide, and shards whole batches apart in a way a last
partial batch breaks. On tensorflow, tf.distribute splits the batches over the workers
(`tf_workers.data_sharding`). Only process 0 (the chief) writes checkpoints; all read them.
"""

from __future__ import annotations

import contextlib
import os


def join_processes(devices):
    """`--devices N` of the command line: with `KERAS_DISTRIBUTION_NUM_PROCESSES` > 1 in the
    environment (jax), give this process N / P devices (virtual CPU devices on a machine
    without accelerators) and join the others through `keras.distribution.initialize()`,
    which reads `KERAS_DISTRIBUTION_JOB_ADDRESSES` and `KERAS_DISTRIBUTION_PROCESS_ID`.
    On tensorflow, with a `TF_CONFIG` naming several workers, make this worker's
    `MultiWorkerMirroredStrategy` (one device a worker: N must equal their number). Else N
    devices of this process. Call it before jax or TensorFlow start.

    Raises:
        ValueError: `KERAS_DISTRIBUTION_NUM_PROCESSES` > 1 on another backend than jax, or N
            that does not divide by the number of processes (tensorflow: differs from it).
    """
    from keras_transfer.training.distribution import make_virtual_cpu_devices
    from keras_transfer.training.tf_workers import configured_workers, multi_worker_strategy

    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    workers = configured_workers() if backend == "tensorflow" else 0
    if workers > 1:
        if devices != workers:
            raise ValueError(
                f"--devices {devices} with the {workers} workers of TF_CONFIG: on tensorflow "
                f"each worker trains on one device here; pass --devices {workers}."
            )
        multi_worker_strategy()
        return
    count = int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES") or 1)
    if count <= 1:
        make_virtual_cpu_devices(devices)
        return
    if backend != "jax":
        raise ValueError(
            f"KERAS_DISTRIBUTION_NUM_PROCESSES={count}: a command-line run of several jax "
            "processes needs KERAS_BACKEND=jax; tensorflow workers are set up with TF_CONFIG "
            "(docs/distributed.md)."
        )
    if devices % count:
        raise ValueError(
            f"--devices {devices} counts the devices of all {count} processes and must divide "
            f"by {count} (each process takes as many)."
        )
    if devices // count > 1:
        make_virtual_cpu_devices(devices // count)
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices
    import keras

    keras.distribution.initialize()


def _jax():
    import keras

    return keras.backend.backend() == "jax"


def process_count():
    """The number of processes of the current data-parallel run (1 without one): jax
    processes under a Keras distribution, or tensorflow workers of a
    `MultiWorkerMirroredStrategy`."""
    import keras

    if _jax():
        if keras.distribution.distribution() is None:
            return 1
        import jax

        return int(jax.process_count())
    from keras_transfer.training.tf_workers import worker_count

    return worker_count()


def process_index():
    """This process's index in the run, 0 to `process_count() - 1` (0 without a run)."""
    if process_count() == 1:
        return 0
    if not _jax():
        from keras_transfer.training.tf_workers import worker_index

        return worker_index()
    import jax

    return int(jax.process_index())


def is_chief():
    """True in the process that writes files (checkpoints, the saved model, reports)."""
    return process_index() == 0


def barrier(name):
    """Wait until every process of the run gets here (nothing in a run of one process)."""
    if process_count() == 1:
        return
    if not _jax():
        from keras_transfer.training.tf_workers import worker_barrier

        worker_barrier()
        return
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def shard_for_process(data):
    """`data` (a `tf.data.Dataset` of global batches) reduced to this process's slice of
    every batch; returned unchanged in a run of one process or for other data. Several
    tensorflow workers: `data` whole, split by tf.distribute (`tf_workers.data_sharding`)."""
    import tensorflow as tf

    count = process_count()
    if count == 1 or not isinstance(data, tf.data.Dataset):
        return data
    if not _jax():
        from keras_transfer.training.tf_workers import data_sharding

        return data_sharding(data)
    index = process_index()

    def part(tensor):
        size = tf.shape(tensor)[0] // count
        return tensor[index * size : (index + 1) * size]

    def take(*batch):
        structure = batch[0] if len(batch) == 1 else batch
        return tf.nest.map_structure(part, structure)

    return data.map(take, num_parallel_calls=tf.data.AUTOTUNE)


def shard_fit_kwargs(fit_kwargs):
    """`fit_kwargs` with its `validation_data` reduced to this process's slices."""
    if process_count() == 1 or fit_kwargs.get("validation_data") is None:
        return fit_kwargs
    return {**fit_kwargs, "validation_data": shard_for_process(fit_kwargs["validation_data"])}


@contextlib.contextmanager
def own_sharding():
    """Within the block, Keras does not shard `tf.data` pipelines over jax processes
    (`fine_tune` feeds each its slice itself, `shard_for_process`); Keras' tensorflow
    trainer runs under several workers (`tf_workers.keras_fixes`)."""
    import keras

    if not _jax():
        from keras_transfer.training.tf_workers import keras_fixes

        with keras_fixes():
            yield
        return
    distribution = keras.distribution.distribution() if process_count() > 1 else None
    if distribution is None or not hasattr(distribution, "auto_shard_dataset"):
        yield
        return
    before = distribution.auto_shard_dataset
    distribution.auto_shard_dataset = False
    try:
        yield
    finally:
        distribution.auto_shard_dataset = before


def predict_batch(model, inputs):
    """The model's outputs (numpy) for one global batch `inputs` that every process holds
    whole: each process runs its slice, and the outputs are gathered on all of them."""
    import jax
    import keras
    import numpy as np
    from jax.experimental import multihost_utils

    count, index = process_count(), process_index()
    distribution = keras.distribution.distribution()

    def to_global(value):
        value = np.asarray(value)
        size = value.shape[0] // count
        layout = distribution.get_data_layout(value.shape).backend_layout
        return jax.make_array_from_process_local_data(
            layout, value[index * size : (index + 1) * size]
        )

    outputs = model(keras.tree.map_structure(to_global, inputs), training=False)
    return keras.tree.map_structure(
        lambda value: np.asarray(multihost_utils.process_allgather(value, tiled=True)), outputs
    )


def check_processes(cache_features, feature_store):
    """Raise ValueError for `fine_tune` arguments a run of several processes cannot honour:
    `cache_features=True` or a `feature_store` (the caching pass runs per process; its
    features are not gathered yet). Returns the `cache_features` to use: False in a run of
    several processes (the head is then trained by gradient through the frozen backbone),
    else `cache_features` unchanged."""
    count = process_count()
    if count == 1:
        return cache_features
    if cache_features is True or feature_store is not None:
        raise ValueError(
            f"Feature caching is not available in a run of several processes ({count} here): "
            "pass cache_features='auto' or False and no feature_store (CLI: --feature-cache "
            "auto or off, no --feature-store); the head is then trained through the frozen "
            "backbone, on every process's slice of each batch."
        )
    return False


def predict_on_batch(model, inputs):
    """`model.predict_on_batch(inputs)`, also for a model of a tf.distribute strategy with
    several replicas: there Keras 3.15 runs every replica on the whole batch and returns
    their outputs end to end (2 replicas: twice as many rows as inputs), so the model is
    called directly instead. Returns what `predict_on_batch` returns (numpy)."""
    import keras

    from keras_transfer.training.distribution import num_replicas

    if process_count() > 1 and keras.backend.backend() == "jax":
        return predict_batch(model, inputs)
    if keras.backend.backend() == "tensorflow" and num_replicas(model) > 1:
        return keras.tree.map_structure(keras.ops.convert_to_numpy, model(inputs, training=False))
    return model.predict_on_batch(inputs)
