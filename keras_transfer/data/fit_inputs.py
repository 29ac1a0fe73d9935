"""Training data that is not a `tf.data.Dataset`: Python generators, `keras.utils.PyDataset`,
torch `DataLoader`s and grain datasets (`grain.MapDataset`, `grain.IterDataset`,
`grain.DataLoader`), as `model.fit` takes them.

`fine_tune`, `resumable_fit` and `evaluate_classifier` pass such data to Keras as it is.
Feature caching reads data that can be read again once (`feature_passes`); a one-shot
generator or iterator is trained on without it. Padding each text batch to its longest row
(done by the preprocessor inside `tf.data`) is left out, with one line that says so: the
model then preprocesses each batch itself. Checkpoints need data that can be read
again in every epoch: a `PyDataset` or a `DataLoader` (their order after a resume is the
one they give, not the uninterrupted run's), not a one-shot generator or iterator.
"""

from __future__ import annotations

import collections.abc
import sys

import numpy as np


def is_tf_dataset(data):
    """Whether `data` is a `tf.data.Dataset` (without importing TensorFlow for other data)."""
    if data is None or "tensorflow" not in type(data).__module__:
        return False
    import tensorflow as tf

    return isinstance(data, tf.data.Dataset)


def kind_of(data):
    """A short name of `data`'s kind for messages (`"Python generator"`, `"PyDataset"`, ...)."""
    import keras

    if isinstance(data, keras.utils.PyDataset):
        return "keras.utils.PyDataset"
    if type(data).__module__.startswith("torch.utils.data"):
        return "torch DataLoader"
    if type(data).__module__.split(".")[0] == "grain":  # its public class, not a subclass
        names = [cls.__name__ for cls in type(data).__mro__]
        public = [n for n in names if n in ("MapDataset", "IterDataset", "DataLoader")]
        return f"grain {(public or names)[0]}"
    if isinstance(data, collections.abc.Iterator):
        return "Python generator" if isinstance(data, collections.abc.Generator) else "iterator"
    return type(data).__name__


def fit_shuffles(data):
    """Whether `model.fit(data, shuffle=True)` shuffles `data` itself (arrays and
    `PyDataset`s); it ignores (and warns about) `shuffle` for the other kinds."""
    import keras

    if isinstance(data, keras.utils.PyDataset):
        return True
    return not (
        is_tf_dataset(data)
        or isinstance(data, collections.abc.Iterator)
        or type(data).__module__.startswith("torch.utils.data")
    )


def plan_for_inputs(model, cache_features, text_padding, train_ds, val_ds, verbose="auto"):
    """`(cache_features, text_padding)` for `fine_tune`: unchanged when `train_ds` and
    `val_ds` are `tf.data` datasets (or `val_ds` None). For other data, no per-batch text
    padding (None), and feature caching only for data that can be read again (a
    `PyDataset`, a torch `DataLoader`, grain: `feature_passes` reads it once for the
    cache; not a one-shot generator or iterator), with one line saying so when it leaves
    out something the model would have used."""
    from keras_transfer.models.compiling import is_text_classifier

    others = [data for data in (train_ds, val_ds) if data is not None and not is_tf_dataset(data)]
    if not others:
        return cache_features, text_padding
    one_shot = [data for data in others if not readable_again(data)]
    uses = (
        ("feature caching", bool(one_shot) and cache_features is not False),
        ("per-batch text padding", bool(text_padding) and is_text_classifier(model)),
    )
    left_out = [what for what, used in uses if used]
    if left_out and verbose != 0:
        shown = one_shot[0] if one_shot else others[0]
        print(
            f"Training without {' and '.join(left_out)}: the data is a {kind_of(shown)}, "
            "not a tf.data.Dataset (for them, pass a tf.data pipeline, e.g. "
            "tf.data.Dataset.from_generator, or image_folder_datasets / text_csv_datasets)."
        )
    return (False if one_shot else cache_features), None


def readable_again(data):
    """Whether one pass over `data` can be followed by more: not a one-shot generator or
    iterator, nor an infinite `PyDataset` (`num_batches` None)."""
    import keras

    if isinstance(data, keras.utils.PyDataset):
        return data.num_batches is not None
    return not isinstance(data, collections.abc.Iterator)


def prepared_for_fine_tune(model, data, name="train_ds"):
    """`data` (the argument `name` of `fine_tune`) as `fine_tune` trains on it: unchanged,
    except text models' data that can be read again (a `PyDataset`, a `DataLoader`,
    grain), which becomes a `tf.data.Dataset` of the same batches (KerasHub's text models
    preprocess in `tf.data`; their `fit` cannot read a `PyDataset` or a `DataLoader` of
    strings). None stays None.

    Raises:
        ValueError: infinite data (`check_finite`): `fine_tune` has no `steps_per_epoch`,
            so an epoch would never end.
    """
    from keras_transfer.models.compiling import is_text_classifier

    check_finite(data, name)
    ours = (tuple, list, dict, np.ndarray)  # arrays: refused by `fine_tune` with a hint
    if data is None or is_tf_dataset(data) or isinstance(data, ours) or hasattr(data, "__array__"):
        return data
    return as_tf_dataset(data) if is_text_classifier(model) and readable_again(data) else data


def as_tf_dataset(data):
    """A `tf.data.Dataset` of the `(inputs, labels[, weights])` batches of `data` (any kind
    `iter_batches` reads), its element spec taken from the first batch (strings as
    tf.string); read again at each pass, as `data` allows. A `PyDataset`'s
    `on_epoch_begin` is called before each pass reads its first batch and `on_epoch_end`
    when the pass ends, cut short or not, as Keras' `fit` calls them (a PyDataset that
    reshuffles there reshuffles every epoch).

    Raises:
        ValueError: `data` gives no batch.
    """
    import itertools

    import keras
    import tensorflow as tf

    batches = iter_batches(data)
    first = next(batches, None)
    if first is None:
        raise ValueError(f"The {kind_of(data)} gave no batch.")

    def spec(value):
        value = np.asarray(value)
        dtype = tf.string if value.dtype.kind in "OUS" else tf.as_dtype(value.dtype)
        return tf.TensorSpec((None, *value.shape[1:]), dtype)

    spent = [False]  # the first pass goes on from the batches already started

    epochs = isinstance(data, keras.utils.PyDataset)

    def again():
        if epochs:  # each pass from its first batch, after the hook that may reshuffle
            data.on_epoch_begin()
            parts = iter_batches(data)
        else:
            parts = itertools.chain([first], batches) if not spent[0] else iter_batches(data)
        spent[0] = True
        try:
            for batch in parts:
                yield tuple(np.asarray(value) for value in batch)
        finally:  # a pass cut short too (Keras' fit ends such epochs the same way)
            if epochs:
                data.on_epoch_end()

    return tf.data.Dataset.from_generator(
        again, output_signature=tuple(spec(value) for value in first)
    )


def check_not_arrays(data, name="train_ds"):
    """Refuse arrays, tuples, lists and dicts where batches are expected (Keras' `fit(x, y)`
    style): read as an iterable they gave single examples, or a shape error deep in Keras.

    Raises:
        ValueError: as above; the message names `name` and shows `from_tensor_slices`.
    """
    if isinstance(data, (tuple, list, dict)) or hasattr(data, "__array__"):
        raise ValueError(
            f"`{name}` must be a tf.data.Dataset (or a PyDataset, torch DataLoader, grain "
            f"dataset) of (inputs, one_hot_labels) batches, got a {type(data).__name__}; for "
            "NumPy arrays pass tf.data.Dataset.from_tensor_slices((x, y)).batch(32)."
        )


def infinite_kind(data):
    """What infinite data `data` is (e.g. "an infinite tf.data.Dataset"), or None: a
    `tf.data.Dataset` or grain `MapDataset` after `.repeat()` without a count, or a
    `keras.utils.PyDataset` whose `num_batches` is None (Keras' "infinite"). Other data
    (generators, grain `IterDataset`s) cannot tell: None."""
    if is_tf_dataset(data):
        import tensorflow as tf

        if int(data.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
            return "an infinite tf.data.Dataset (a .repeat() without a count?)"
    elif kind_of(data) == "grain MapDataset":
        if len(data) >= sys.maxsize:  # grain's length of a .repeat() without a count
            return "an infinite grain MapDataset (a .repeat() without a count?)"
    elif kind_of(data) == "keras.utils.PyDataset" and _num_batches(data) is None:
        return "an infinite keras.utils.PyDataset (its num_batches is None)"
    return None


def check_finite(data, name="train_ds"):
    """Refuse infinite data (`infinite_kind`), which an epoch that is one pass over the data
    would never finish reading; other data is read as it comes.

    Raises:
        ValueError: `data` is infinite; the message names `name` and the fix.
    """
    what = infinite_kind(data)
    if what is None:
        return
    drop = "Drop the .repeat() (epochs repeat it), or"
    if is_tf_dataset(data):
        fix = f"{drop} {name}.take(n) the batches an epoch should have."
    elif kind_of(data) == "grain MapDataset":
        fix = f"{drop} slice the batches an epoch should have: {name}[:n]."
    else:  # a PyDataset
        fix = "Give it a __len__ (or num_batches): the number of batches in one pass."
    raise ValueError(f"`{name}` is {what}: an epoch here is one pass over the data. {fix}")


def first_batches(data, count):
    """The first `count` batches of `data`, where it can be cut without reading it: a
    `tf.data.Dataset` (`.take`), a grain `MapDataset` (a slice), an iterator or generator
    (`itertools.islice`); other data (a `PyDataset`, a `DataLoader`) as it is."""
    import itertools

    if is_tf_dataset(data):
        return data.take(count)
    if kind_of(data) == "grain MapDataset":
        return data[:count]
    if isinstance(data, collections.abc.Iterator):
        return itertools.islice(data, count)
    return data


def _num_batches(data):
    """A `PyDataset`'s `num_batches` (None: infinite); 0 when it has neither that nor a
    `__len__` (Keras' `fit` names what is missing)."""
    try:
        return data.num_batches
    except NotImplementedError:
        return 0


def check_resumable_data(data):
    """Refuse data that `resumable_fit` cannot read again after a resume.

    Raises:
        ValueError: `data` is a one-shot Python generator or iterator, or an infinite
            `tf.data.Dataset` (`check_finite`).
    """
    check_finite(data)
    if isinstance(data, collections.abc.Iterator) and not is_tf_dataset(data):
        raise ValueError(
            f"Checkpoints need training data that can be read again in every epoch and after "
            f"a resume; a {kind_of(data)} is read once. Pass a tf.data.Dataset (e.g. "
            "tf.data.Dataset.from_generator), a keras.utils.PyDataset or a torch DataLoader, "
            "or train without checkpoint_dir."
        )


def _numpy(value):
    """A torch tensor as a NumPy array; anything else as it is."""
    if type(value).__module__.startswith("torch"):
        return value.detach().cpu().numpy()
    return value


def iter_batches(data):
    """The batches of one pass over `data`: a `tf.data.Dataset`, a `PyDataset` (by index,
    `num_batches` of them), a torch `DataLoader` (tensors as NumPy arrays), a generator or
    any iterable of `(inputs, labels[, weights])` batches.

    Raises:
        ValueError: an infinite `PyDataset` (no `num_batches`).
    """
    import keras

    if isinstance(data, keras.utils.PyDataset):
        count = data.num_batches
        if count is None:
            raise ValueError(
                "The PyDataset is infinite (num_batches is None); pass a finite one (with a "
                "__len__)."
            )
        batches = (data[index] for index in range(count))
    else:
        batches = iter(data)
    for batch in batches:
        if type(batch).__module__.startswith("torch") or isinstance(batch, (list, tuple)):
            yield tuple(_numpy(part) for part in batch)
        else:
            yield batch


def labels_of(targets):
    """int class ids `(batch,)` of one-hot `(batch, num_classes)` or id `(batch,)` /
    `(batch, 1)` labels."""
    targets = np.asarray(_numpy(targets))
    if targets.ndim == 2 and targets.shape[1] > 1:
        return targets.argmax(-1)
    return targets.reshape(-1).astype(int)


def keyed_by(part, key):
    """Whether `part` (a batch's inputs or labels, or their element spec) is a dict of the
    one key `key` (not None): the name of the model's one input or output, by which Keras
    takes them. Such a part is read out to `part[key]` before caching or the probe."""
    return key is not None and isinstance(part, dict) and list(part) == [key]


# The first batch of data not read yet (`first_batch` may return None: nothing to read).
UNREAD = object()


def first_batch(data):
    """The first batch of data that can be read again, read without drawing from its
    sampler or the global random generators: a `PyDataset` (`data[0]`), a grain `MapDataset`
    (`data[0]`), or a torch `DataLoader` over a map-style dataset with the default
    sequential or random sampler (its `collate_fn` over examples `0..batch_size-1`, in this
    process; torch's, NumPy's and Python's random states are put back after). None for
    other data (generators, iterable datasets, custom samplers, `batch_size=None`).
    """
    import keras

    kind = kind_of(data)
    if isinstance(data, keras.utils.PyDataset):
        return data[0] if data.num_batches else None
    if kind == "grain MapDataset":
        return data[0] if len(data) else None
    if kind != "torch DataLoader" or data.batch_size is None:
        return None
    import random

    import torch

    examples = data.dataset
    plain = (torch.utils.data.SequentialSampler, torch.utils.data.RandomSampler)
    if isinstance(examples, torch.utils.data.IterableDataset) or type(data.sampler) not in plain:
        return None  # read as it trains (its indices may not be 0..n-1)
    count = min(data.batch_size, len(examples))
    if not count:
        return None
    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):  # an augmenting __getitem__ draws from these
        try:
            return data.collate_fn([examples[i] for i in range(count)])
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
