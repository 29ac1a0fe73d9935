"""Global batches that split evenly over data-parallel replicas (`check_batches_divide`):
each device must get as many examples, and on several workers a worker given none waits
for the others for ever."""

from __future__ import annotations


def _first_batch_size(data):
    import tensorflow as tf

    if not isinstance(data, tf.data.Dataset):
        return None
    first = tf.nest.flatten(data.element_spec)[0].shape
    if first.rank and first[0] is not None:
        return int(first[0])
    for batch in data.take(1):
        return int(tf.shape(tf.nest.flatten(batch)[0])[0])
    return None


def _last_batch_size(data):
    """The size of the short last batch of a pipeline of yours whose batching step can be
    seen (`.batch(n)` over data of known length, then maps / prefetch); 0 when there is none
    or it cannot be told."""
    node = data
    while node is not None and not hasattr(node, "_batch_size"):
        if int(node.cardinality()) < 0:  # filter, repeat...: the count is not known
            return 0
        node = getattr(node, "_input_dataset", None)
    if node is None or bool(getattr(node, "_drop_remainder", True)):
        return 0
    count = int(node._input_dataset.cardinality())
    return count % int(node._batch_size) if count >= 0 else 0


def check_batches_divide(data, replicas, name="train_ds"):
    """Raise ValueError when the global batches of `data` (a tf.data.Dataset) cannot be
    split evenly over `replicas` devices: its first batch, and its last one when the
    number of examples is known (pipelines of `image_folder_datasets`, `text_csv_datasets`).
    Other data is not checked. Costs one batch of the pipeline."""
    if replicas <= 1 or data is None:
        return
    batch = _first_batch_size(data)
    if batch is None:
        return
    examples = getattr(getattr(data, "_kt_examples", None), "examples", None)
    last = len(examples) % batch if examples is not None else _last_batch_size(data)
    if batch % replicas or last % replicas:
        which = (
            f"the global batch size {batch}"
            if batch % replicas
            else f"the last batch ({len(examples)} examples in batches of {batch} leave {last})"
            if examples is not None
            else f"the last batch ({last} examples)"
        )
        raise ValueError(
            f"`{name}`: {which} does not divide by the {replicas} devices of data-parallel "
            f"training; each device must get as many examples. Pick a `batch_size` that is a "
            f"multiple of {replicas}, and a number of examples whose last batch divides by "
            f"{replicas} too (e.g. a multiple of the batch size: leave out or add a few "
            "examples); a tf.data pipeline of your own can drop its short last batch with "
            "`.batch(batch_size, drop_remainder=True)`."
        )
