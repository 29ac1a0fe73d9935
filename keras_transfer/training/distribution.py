"""Data-parallel training on several devices, on Keras' own engines.

On jax, `keras.distribution.DataParallel` (the variables replicated on a 1-D device mesh,
each batch split along it); on tensorflow, `tf.distribute.MirroredStrategy` (one replica a
device, gradients summed across them). `data_parallel` picks the one of the backend in use;
`check_distributed_fit` is what `fine_tune` checks before training under either. Keras 3.15
has no data parallelism for torch.
"""

from __future__ import annotations

import os
import sys

from keras_transfer.training.replica_batches import check_batches_divide

# Keras is imported by the functions: `make_virtual_cpu_devices` runs before jax starts.
TORCH_MESSAGE = (
    "Data-parallel training is not available on the torch backend of Keras {version} "
    "(keras.distribution supports jax; tf.distribute is tensorflow's). Use "
    "KERAS_BACKEND=jax or KERAS_BACKEND=tensorflow for several devices, or train on one "
    "device (no distribution)."
)

_STRATEGIES = {}  # tensorflow: device names -> the MirroredStrategy made for them


class DataParallelRun:
    """A data-parallel setup of the backend in use; a context manager (see `data_parallel`).

    Attributes:
        engine: the Keras or TensorFlow object doing the work: a
            `keras.distribution.DataParallel` (jax) or a `tf.distribute.MirroredStrategy`
            (tensorflow).
        devices: list of device names, e.g. `["gpu:0", "gpu:1"]` (jax) or
            `["/device:GPU:0", "/device:GPU:1"]` (tensorflow).
        num_replicas: int, the number of devices each global batch is split over.
    """

    def __init__(self, engine, devices):
        self.engine, self.devices = engine, list(devices)
        self.num_replicas = len(self.devices)
        self._scope = None

    def __enter__(self):
        self._scope = self.engine.scope()
        self._scope.__enter__()
        return self

    def __exit__(self, *exc_info):
        scope, self._scope = self._scope, None
        return scope.__exit__(*exc_info)

    def __repr__(self):
        return f"DataParallelRun({type(self.engine).__name__}, devices={self.devices})"


def local_devices():
    """The accelerators of this process for the backend in use (GPUs or TPUs if any, else
    the CPUs, e.g. the virtual ones of `--xla_force_host_platform_device_count`), as names
    that `data_parallel(devices=...)` takes."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        found = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return [device.name for device in found]
    if backend == "jax":
        return keras.distribution.list_devices()
    return ["cpu:0"]


def data_parallel(devices=None):
    """Set up data-parallel training on this machine's devices, for the backend in use.

    Use it as a context manager around building the model and `fine_tune` (on tensorflow
    the variables must be made inside the strategy's scope, and Keras recommends the same
    for jax):

    ```python
    with kt.data_parallel() as run:  # every local GPU, else every CPU device
        model = kt.build_image_classifier("mobilenet_v2", len(class_names))
        kt.fine_tune(model, train_ds, val_ds)  # global batches, split over run.devices
    ```

    jax: `keras.distribution.DataParallel(devices=...)`, set as Keras' distribution inside
    the `with` block (what `keras.distribution.set_distribution` does). tensorflow:
    `tf.distribute.MirroredStrategy(devices)` (one per device set and process, made on the
    first call), its `scope()` entered. The batch size of
    the data is the global one: each device gets `batch_size / num_replicas` examples, so
    it must divide by the number of devices (`fine_tune` checks it).

    Several machines (docs/distributed.md): on jax, call `keras.distribution.initialize()`
    before this (then `devices=None` takes the devices of all processes); on tensorflow,
    with a `TF_CONFIG` naming several workers in the environment, this is the process's
    `tf.distribute.MultiWorkerMirroredStrategy` (`devices` None or its number of replicas).

    Args:
        devices: None (default: all of `local_devices()`), an int N >= 1 (the first N of
            them), or a list of device names (`"gpu:0"`, `"/gpu:1"`, ...).

    Returns:
        A `DataParallelRun`: enter it with `with` (it yields itself); `run.engine` is the
        Keras / TensorFlow object, `run.num_replicas` the number of devices.

    Raises:
        ValueError: on torch (Keras 3.15 has no data parallelism there; the message says
            what works), or `devices` asks for more devices than there are, or is not
            None, a positive int or a list of names, or the list names a device that
            is not among `local_devices()` or names one twice; tensorflow workers: a
            `TF_CONFIG` that is not JSON, or `devices` other than None or their number.
        RuntimeError: tensorflow workers, and TensorFlow already ran something (the
            strategy must be made first, before reading data).
    """
    import keras

    backend = keras.backend.backend()
    if backend not in ("jax", "tensorflow"):
        raise ValueError(TORCH_MESSAGE.format(version=keras.__version__))
    from keras_transfer.training.tf_workers import configured_workers, multi_worker_strategy

    if backend == "tensorflow" and configured_workers() > 1:  # TF_CONFIG's workers
        return _multi_worker_run(multi_worker_strategy(), devices)
    available = local_devices()
    if devices is None:
        chosen = available
    elif isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1:
        if devices > len(available):
            raise ValueError(
                f"`devices={devices}` asks for more devices than the {len(available)} found "
                f"({', '.join(available)}). {_more_devices_hint(backend)}"
            )
        chosen = available[:devices]
    elif (
        isinstance(devices, (list, tuple)) and devices and all(isinstance(d, str) for d in devices)
    ):
        chosen = _known_devices(list(devices), _every_device(backend, available))
    else:
        raise ValueError(
            f"`devices` must be None, an int >= 1 or a list of device names, got {devices!r}."
        )
    if backend == "jax":
        return DataParallelRun(keras.distribution.DataParallel(devices=chosen), chosen)
    import tensorflow as tf

    chosen = [name if name.startswith("/") else f"/{name}" for name in chosen]
    # One strategy per device set and process: the collectives of a second one over the
    # same devices can clash with the first's (a shape mismatch in CollectiveReduceV2).
    strategy = _STRATEGIES.get(tuple(chosen))
    if strategy is None:
        strategy = _STRATEGIES[tuple(chosen)] = tf.distribute.MirroredStrategy(chosen)
    return DataParallelRun(strategy, chosen)


def _multi_worker_run(strategy, devices):
    """The `DataParallelRun` of the `MultiWorkerMirroredStrategy` of `TF_CONFIG`'s workers;
    `devices` None or their number of replicas."""
    replicas = strategy.num_replicas_in_sync
    if devices is not None and devices != replicas:
        raise ValueError(
            f"`devices={devices!r}` with the {replicas} replicas of the tensorflow workers "
            f"TF_CONFIG names: pass devices=None (or {replicas})."
        )
    return DataParallelRun(strategy, [f"replica:{index}" for index in range(replicas)])


def _every_device(backend, available):
    """`available` and the other devices of this process the backend can run on (its CPUs
    beside its GPUs), as names."""
    import keras

    if backend == "tensorflow":
        import tensorflow as tf

        others = [device.name for device in tf.config.list_logical_devices()]
    else:
        others = keras.distribution.list_devices("cpu")
    return [*available, *(name for name in others if name not in available)]


def _device_key(name):
    """`"cpu:0"` for `"cpu:0"`, `"/CPU:0"`, `"/device:CPU:0"` or
    `"/job:localhost/replica:0/task:0/device:CPU:0"`: the type and index, lower case."""
    tail = name.strip().rsplit("/", 1)[-1].lower()
    return tail[len("device:") :] if tail.startswith("device:") else tail


def _known_devices(names, available):
    """`names` checked against `available` (both device names) before an engine gets them
    (an unknown name made tensorflow's MirroredStrategy hang, a repeated one fail an
    assert), as the names of `available` (`"/cpu:0"` -> `"cpu:0"` on jax).

    Raises:
        ValueError: a name is not among `available` (lists both), or appears twice.
    """
    known = {}
    for name in available:
        known.setdefault(_device_key(name), name)
    unknown = [name for name in names if _device_key(name) not in known]
    if unknown:
        raise ValueError(
            f"`devices`: {', '.join(map(repr, unknown))} not found among the devices of this "
            f"process ({', '.join(available)}); pass names from that list (or an int N for "
            "the first N)."
        )
    keys = [_device_key(name) for name in names]
    repeated = sorted({name for name in names if keys.count(_device_key(name)) > 1})
    if repeated:
        raise ValueError(
            f"`devices` names a device more than once ({', '.join(map(repr, repeated))}); "
            "list each device once."
        )
    return [known[key] for key in keys]


def _more_devices_hint(backend):
    if backend == "jax":
        return (
            "On a CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N before jax is "
            "imported to get N virtual devices (for testing: they share the cores)."
        )
    return (
        "On a CPU, split it into N logical devices with tf.config."
        "set_logical_device_configuration before TensorFlow runs anything."
    )


def make_virtual_cpu_devices(count):
    """Ask the backend in use for `count` CPU devices, for a run on a machine without
    accelerators (for testing; the devices share the cores). Call it before jax or
    TensorFlow runs anything: jax reads `XLA_FLAGS` when it starts, TensorFlow fixes its
    logical devices when it first runs. Without effect on GPUs and TPUs.

    Returns:
        True when the request could still be made; False when it came too late (the backend
        had started) or the backend is torch.
    """
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "jax":
        if "jax" in sys.modules:
            return False
        flag = f"--xla_force_host_platform_device_count={int(count)}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
        return True
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return True
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * int(count)
            )
        except RuntimeError:  # TensorFlow has run already
            return False
        return True
    return False


def num_replicas(model):
    """The number of devices a global batch is split over when `model` trains now: the
    replicas of its tf.distribute strategy (tensorflow) or of the batch axis of Keras'
    current distribution (jax); 1 without either."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        strategy = getattr(model, "distribute_strategy", None)
        return int(getattr(strategy, "num_replicas_in_sync", 1))
    if backend == "jax":
        distribution = keras.distribution.distribution()
        if distribution is None:
            return 1
        mesh = distribution.device_mesh
        axis = getattr(distribution, "batch_dim_name", None) or mesh.axis_names[0]
        return int(mesh.shape[mesh.axis_names.index(axis)])
    return 1


def check_built_in_scope(model):
    """Raise ValueError when `model`'s variables were made outside the distribution it is
    trained under (keras-team/keras#22256: Keras fails later, deep in the training step),
    or made inside one that is not in effect now (the `with` block left before `fine_tune`:
    Keras fails in the optimizer, or on devices that do not match)."""
    import keras

    backend = keras.backend.backend()
    if not model.weights:
        return
    if backend == "tensorflow":
        import tensorflow as tf

        made_in = getattr(model, "_distribute_strategy", None)
        if not tf.distribute.has_strategy():
            if made_in is not None and made_in.num_replicas_in_sync > 1:
                _raise_left_scope(model, f"tf.distribute {type(made_in).__name__}")
            return
        strategy = tf.distribute.get_strategy()
        inside = made_in is strategy
        where = f"tf.distribute {type(strategy).__name__}"
    elif backend == "jax":
        placed = getattr(model.weights[0].value, "sharding", None)
        names = {f"{d.platform.lower()}:{d.id}" for d in getattr(placed, "device_set", ())}
        distribution = keras.distribution.distribution()
        if distribution is None:
            if len(names) > 1:
                _raise_left_scope(model, "keras.distribution")
            return
        mesh_devices = {str(d).lower() for d in distribution.device_mesh.devices.flatten()}
        inside = placed is None or names == mesh_devices
        where = f"keras.distribution {type(distribution).__name__}"
    else:
        return
    if not inside:
        raise ValueError(
            f"The model {model.name!r} was built outside the {where} it is trained under: "
            "its variables live on other devices. Build it inside: "
            "`with kt.data_parallel(): model = kt.build_image_classifier(...); "
            "kt.fine_tune(model, ...)` (or build after keras.distribution.set_distribution "
            "on jax, inside strategy.scope() on tensorflow)."
        )


def _raise_left_scope(model, where):
    raise ValueError(
        f"The model {model.name!r} was built inside a {where} distribution that is not in "
        "effect now: train it inside the same `with kt.data_parallel(...)` block (or "
        "strategy.scope() on tensorflow, keras.distribution.set_distribution on jax) that "
        "built it."
    )


def check_distributed_fit(model, train_ds, val_ds=None):
    """The checks `fine_tune` runs when `model` trains on several devices (see
    `check_built_in_scope` and `check_batches_divide`); nothing on one device.

    Raises:
        ValueError: the model was built outside the distribution, a batch of `train_ds`
            or `val_ds` does not divide by the number of devices.
    """
    check_built_in_scope(model)
    replicas = num_replicas(model)
    _check_text_on_tensorflow(model, replicas)
    check_batches_divide(train_ds, replicas, "train_ds")
    check_batches_divide(val_ds, replicas, "val_ds")


def _check_text_on_tensorflow(model, replicas):
    """Raise ValueError for a text classifier on several tensorflow replicas: under
    tf.distribute its caching pass, its string-input `fit` and its evaluation fail in Keras
    3.15 and KerasHub (shapes, bool tensors, the preprocessor skipped)."""
    import keras

    from keras_transfer.models.compiling import is_text_classifier

    if replicas > 1 and keras.backend.backend() == "tensorflow" and is_text_classifier(model):
        raise ValueError(
            "Text classifiers do not train on several tensorflow devices or workers yet "
            f"({replicas} replicas here): train them in one process without a distribution, "
            "or on jax (docs/distributed.md)."
        )
