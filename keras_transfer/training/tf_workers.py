"""Several tensorflow workers: `tf.distribute.MultiWorkerMirroredStrategy` (docs/distributed.md).

Every worker process gets a `TF_CONFIG` naming the cluster and its own index, makes the
strategy and builds and trains the model inside its `scope()`. tf.distribute splits every
global batch over the replicas of all workers itself (`AutoShardPolicy.DATA`: each worker
reads the whole pipeline and keeps its part of each batch).

Keras 3.15's tensorflow trainer fails under several workers in two places
(tensorflow/tensorflow#72388, keras-team/keras#20329): the symbolic build before `fit`
all-reduces the first data batch ("Attempt to convert a value (PerReplica...)"), and every
step reduces its scalar logs along an axis they do not have ("Invalid reduction dimension
0 for input with 0 dimensions"). `keras_fixes()` mends both while `fine_tune` runs: the
build takes this worker's part of the batch (only its shapes matter) and the logs are
averaged over the replicas of all workers. It also makes Keras' saving make its reference
objects on every worker at once, so that the chief can save checkpoints alone.
"""

from __future__ import annotations

import contextlib
import json
import os

_STRATEGY = []  # the MultiWorkerMirroredStrategy of this process, once made
_BARRIERS = {}  # id(strategy) -> its all-reduce of one number (a tf.function)


def configured_workers():
    """The number of tasks `TF_CONFIG` names (chief and workers), 0 without one.

    Raises:
        ValueError: `TF_CONFIG` is not a JSON object with a "cluster" of lists.
    """
    text = os.environ.get("TF_CONFIG")
    if text is None:
        return 0
    try:
        cluster = json.loads(text).get("cluster", {})
        jobs = [cluster.get(job, []) for job in ("chief", "worker")]
        if not all(isinstance(tasks, list) for tasks in jobs):
            raise ValueError("a job's tasks must be a list of 'host:port' strings")
        return sum(len(tasks) for tasks in jobs)
    except (ValueError, AttributeError, TypeError) as error:
        raise ValueError(
            f"TF_CONFIG is not the JSON tf.distribute expects ({error}): "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", '
            '"index": 0}}; unset it to train in one process.'
        ) from None


def multi_worker_strategy():
    """This process's `tf.distribute.MultiWorkerMirroredStrategy` (made on the first call
    from `TF_CONFIG`; TensorFlow allows one per process).

    Raises:
        RuntimeError: TensorFlow has already run an operation (read data, say): the
            strategy must be made first, when the program starts.
    """
    if not _STRATEGY:
        import tensorflow as tf

        current = tf.distribute.get_strategy()  # made by the caller, its scope entered
        if isinstance(current, tf.distribute.MultiWorkerMirroredStrategy):
            return current
        try:
            _STRATEGY.append(tf.distribute.MultiWorkerMirroredStrategy())
        except RuntimeError as error:
            raise RuntimeError(
                "The tensorflow workers of TF_CONFIG must be joined before TensorFlow runs "
                "anything: call kt.data_parallel() (or make the "
                "MultiWorkerMirroredStrategy) first, before reading data or building "
                f"models ({error})."
            ) from None
    return _STRATEGY[0]


def _strategy():
    """The current strategy if it is a multi-worker one of several workers, else None."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None
    return strategy if strategy.extended._num_workers > 1 else None


def worker_count():
    """The number of workers of the current `MultiWorkerMirroredStrategy` (1 without one)."""
    strategy = _strategy()
    return 1 if strategy is None else int(strategy.extended._num_workers)


def worker_index():
    """This worker's index, 0 to `worker_count() - 1`; the chief is 0."""
    strategy = _strategy()
    if strategy is None:
        return 0
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return 0
    has_chief = "chief" in resolver.cluster_spec().jobs
    return int(resolver.task_id) + (1 if has_chief else 0)


def worker_barrier():
    """Wait until every worker gets here: an all-reduce of one number over them."""
    strategy = _strategy()
    if strategy is None:
        return
    if id(strategy) not in _BARRIERS:  # traced once: eager collectives are slow
        import tensorflow as tf

        @tf.function
        def all_reduce():
            one = strategy.run(lambda: tf.constant(1.0))
            return strategy.reduce("SUM", one, axis=None)

        _BARRIERS[id(strategy)] = all_reduce
    _BARRIERS[id(strategy)]()


def data_sharding(data):
    """`data` (a `tf.data.Dataset` of global batches) told to be split by batch parts over
    the workers (`AutoShardPolicy.DATA`; tf.distribute's default AUTO would split the
    files of a TFRecord source, giving workers different numbers of batches)."""
    import tensorflow as tf

    if _strategy() is None or not isinstance(data, tf.data.Dataset):
        return data
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.with_options(options)


def _warm_saving():
    """Make Keras' saving lists of attributes to skip now, on every worker at once: making
    them creates an optimizer, whose variables the strategy initialises by a broadcast
    from the chief, so a chief making them alone later (saving a checkpoint) waits on the
    others or mismatches their collectives. Keras 3.15 keeps them under one key and looks
    them up under another (`saving_attr_skipset_*` / `saving_attr_skiplist_*`), so they
    are stored under both here."""
    from keras.src.backend.common import global_state
    from keras.src.saving import saving_lib

    if not hasattr(saving_lib, "get_attr_skipset"):
        return
    for kind in ("Operation", "Layer", "Functional", "Sequential", "Metric", "Optimizer", "Loss"):
        skipset = saving_lib.get_attr_skipset(kind)
        global_state.set_global_attribute(f"saving_attr_skiplist_{kind}", skipset)


@contextlib.contextmanager
def keras_fixes():
    """Within the block, Keras' tensorflow trainer runs under several workers (see the
    module's text); nothing changes without them or in Keras versions without the two
    functions mended."""
    if _strategy() is None:
        yield
        return
    from keras.src.backend.tensorflow import trainer

    if not (
        hasattr(trainer, "reduce_per_replica")
        and hasattr(trainer.TensorFlowTrainer, "_maybe_symbolic_build")
    ):
        yield
        return
    _warm_saving()
    reduce_before = trainer.reduce_per_replica
    build_before = trainer.TensorFlowTrainer._maybe_symbolic_build

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or _strategy() is None:
            return reduce_before(values, strategy, reduction)
        import keras

        def mean(value):
            if not trainer._is_per_replica_instance(value):
                return value
            return strategy.reduce("MEAN", value, axis=None)

        return keras.tree.map_structure(mean, values)

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None or iterator is None:
            return build_before(self, iterator=iterator, data_batch=data_batch)
        import keras
        import tensorflow as tf

        def local(value):
            if isinstance(value, tf.distribute.DistributedValues):
                return self.distribute_strategy.experimental_local_results(value)[0]
            return value

        for _, _, batches in iterator:
            data_batch = keras.tree.map_structure(local, next(batches))
            break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    trainer.reduce_per_replica = reduce_per_replica
    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    try:
        yield
    finally:
        trainer.reduce_per_replica = reduce_before
        trainer.TensorFlowTrainer._maybe_symbolic_build = build_before
