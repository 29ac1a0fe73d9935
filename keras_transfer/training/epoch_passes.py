"""Each epoch one pass over the data, in the order drawn for that epoch: what `fit` is
given under `fine_tune`, with or without checkpoints (`checkpointing.resumable_fit`)."""

from __future__ import annotations


def skip_epochs(data, epochs):
    """Move a tf.data pipeline's reshuffling on by `epochs`, as an uninterrupted run had.

    A `shuffle(..., reshuffle_each_iteration=True)` draws a new order for every iterator and
    `one_pass_per_epoch` makes one per epoch, so creating (not reading) `epochs` iterators
    makes the next epoch see the order it would have seen without the interruption.
    Pipelines that `one_pass_per_epoch` makes anew for every epoch need no skipping.
    """
    import tensorflow as tf

    from keras_transfer.data.example_sources import remade_per_epoch

    if isinstance(data, tf.data.Dataset) and not remade_per_epoch(data):
        for _ in range(epochs):
            iter(data)


def one_pass_per_epoch(data, first, last):
    """`(dataset, steps_per_epoch)` for `fit`: epochs `first` to `last - 1` of `data`, each
    one pass, whatever iterators `fit` makes.

    How many iterators `fit` itself makes per epoch depends on the backend (tensorflow makes
    a spare one at each epoch end, torch reads a batch before the first epoch), and a
    reshuffling `tf.data` pipeline draws a new order for each. Pipelines from
    `image_folder_datasets` and `text_csv_datasets` (and those remade over cached features)
    are made anew for every epoch, in the order `example_sources.epoch_order` draws from
    `(seed, epoch)`: epoch e sees the same batches with or without checkpoints, feature
    caching or a resume, on every backend. Other datasets of known length get one new
    iterator per epoch (`range(first, last).flat_map(lambda _: data)` with
    `steps_per_epoch`), so a resumed run can skip the epochs it does not repeat
    (`skip_epochs`). Data that is not a `tf.data.Dataset` of known length is returned as it
    is (with `steps_per_epoch` None).
    """
    import tensorflow as tf

    from keras_transfer.data.example_sources import epoch_pipeline

    if not isinstance(data, tf.data.Dataset):
        return data, None
    steps = int(data.cardinality())
    if steps <= 0 or last <= first:  # unknown or infinite; or no epochs (fit still builds)
        return data, None

    @tf.autograph.experimental.do_not_convert  # plain Python: builds one epoch's pipeline
    def epoch_data(epoch):
        remade = epoch_pipeline(data, epoch)
        return data if remade is None else remade

    epochs = tf.data.Dataset.range(first, last)
    return epochs.flat_map(epoch_data).prefetch(tf.data.AUTOTUNE), steps


def fit_one_pass_per_epoch(model, data, *, epochs, initial_epoch=0, **fit_kwargs):
    """`model.fit(data, ...)` with each epoch one pass of `data` (`one_pass_per_epoch`):
    the batches a checkpointed run (`resumable_fit`) sees, without checkpoints.

    Returns:
        The `keras.callbacks.History` of `fit`.
    """
    from keras_transfer.training.processes import shard_fit_kwargs, shard_for_process

    data, steps = one_pass_per_epoch(data, initial_epoch, epochs)
    data, fit_kwargs = shard_for_process(data), shard_fit_kwargs(fit_kwargs)
    build_before_fit(model, data)
    return model.fit(
        data,
        initial_epoch=initial_epoch,
        epochs=epochs,
        steps_per_epoch=steps,
        **dataset_fit_kwargs(data, fit_kwargs),
    )


def build_before_fit(model, data):
    """Build a compiled model, its optimizer and its metrics before `model.fit(data)`, on
    tensorflow, so that Keras traces the training step once instead of twice.

    Without a distribution strategy, Keras' tensorflow trainer leaves the optimizer's and
    the metrics' variables to the first trace of the training step, and `tf.function`
    traces a function that created variables a second time (to check that it creates
    none): the head's 10 epochs on cached hymenoptera features took 0.70 s instead of
    0.87 s (a Dense head; each trace costs about 0.15 s), and fine-tuning the whole of
    MobileNet alpha=0.25 for one epoch of 2 batches 2.6 s instead of 4.1 s (a trace of the
    backward pass saved). This runs the build Keras runs under a distribution strategy
    (`Trainer._symbolic_build`) on symbolic tensors of `data`'s element spec: the model is
    built, "accuracy" resolved from the labels' shape and dtype, the metrics and the
    optimizer built, as the first trace would. Nothing is done on jax and torch (which
    build these before their first step already), for data that is not a
    `tf.data.Dataset`, or on a Keras without that method; if the build fails, `fit`
    builds as it would have.
    """
    import keras
    import tensorflow as tf

    symbolic_build = getattr(model, "_symbolic_build", None)
    if (
        keras.backend.backend() != "tensorflow"
        or symbolic_build is None
        or not isinstance(data, tf.data.Dataset)
    ):
        return
    try:
        symbolic_build(data_batch=data.element_spec)
    except Exception:  # Keras builds in the first trace instead
        return


def dataset_fit_kwargs(data, fit_kwargs):
    """`fit_kwargs` with `shuffle=False` added for a `tf.data.Dataset`, a generator or a
    torch `DataLoader` (which shuffle themselves: Keras ignores `shuffle` for them, and
    warns when it is True, its default)."""
    from keras_transfer.data.fit_inputs import fit_shuffles

    if not fit_shuffles(data):
        return {"shuffle": False, **fit_kwargs}
    return fit_kwargs
