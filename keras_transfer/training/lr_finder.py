"""`lr_find`: the learning-rate range test (Smith, 2017; fastai's `Learner.lr_find`).

Train for up to `num_steps` batches while the learning rate grows exponentially from
`start_lr` to `end_lr`, record the loss of each batch, and stop once the (smoothed) loss
diverges. The loss falls fastest a little below the rate where training blows up: that
rate, or the rate of the lowest loss divided by 10, is a good peak learning rate. The model
is left exactly as it was given: weights, trainable flags and compiled optimizer (with its
state) are restored after the sweep.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from keras_transfer.data.fit_inputs import (
    check_not_arrays,
    first_batches,
    infinite_kind,
    is_tf_dataset,
    iter_batches,
)
from keras_transfer.training.class_weighting import check_model_class_weight
from keras_transfer.training.label_checks import (
    check_batches,
    check_label_shape,
    check_not_keyed,
    keyed_batches,
    keyed_names,
)

SMOOTHING = 0.9  # EMA factor of the plotted loss (fastai: 0.98 for its 100-step default)
DIVERGE_FACTOR = 4.0  # stop once the smoothed loss exceeds 4x its minimum (fastai's)
METHODS = ("steepest", "minimum/10", "valley")
SKIP_START = 10  # early steps the suggestions ignore: the average is still noisy (fastai's)


@dataclasses.dataclass
class LRFinderResult:
    """What `lr_find` measured.

    Attributes:
        learning_rates: list of float, the rate of each step taken (exponential in the step).
        losses: list of float, the bias-corrected exponential moving average of the batch
            losses (factor `smoothing`), one per step.
        raw_losses: list of float, each batch's training loss (before its update).
        suggested_lr: float, the rate chosen by `method`.
        suggestions: dict of every rule's rate: `"steepest"` (where the smoothed loss
            falls fastest per decade of learning rate), `"minimum/10"` (a tenth of the rate
            of the lowest smoothed loss) and `"valley"` (fastai's); see
            `suggest_learning_rates`.
        method: the rule behind `suggested_lr`.
        diverged: bool, True when the sweep stopped early because the loss diverged.
        trained: str, `"head on cached features"` or `"whole model"`.
    """

    learning_rates: list
    losses: list
    raw_losses: list
    suggested_lr: float
    suggestions: dict
    method: str
    diverged: bool
    trained: str

    def __repr__(self):
        """One line: the suggestion and the sweep's extent (not its per-step lists)."""
        rates = self.learning_rates
        swept = f"({rates[0]:.3g}, {rates[-1]:.3g})" if rates else "()"
        return (
            f"LRFinderResult(suggested_lr={self.suggested_lr:.3g}, method={self.method!r}, "
            f"suggestions={ {k: float(f'{v:.3g}') for k, v in self.suggestions.items()} }, "
            f"steps={len(rates)}, rate_range={swept}, diverged={self.diverged}, "
            f"trained={self.trained!r})"
        )

    def plot(self, path=None):
        """Plot the smoothed loss against the learning rate (log scale), the suggestion
        marked; with `path`, also save it (PNG by its extension). Uses matplotlib's Agg
        canvas (no display needed).

        Args:
            path: str or path-like, or None (default: do not save).

        Returns:
            The `matplotlib.figure.Figure`.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        axes.plot(self.learning_rates, self.raw_losses, color="0.8", lw=1, label="batch loss")
        axes.plot(self.learning_rates, self.losses, lw=2, label="smoothed loss")
        rate = self.suggested_lr
        loss = float(np.interp(math.log(rate), np.log(self.learning_rates), self.losses))
        axes.plot([rate], [loss], "o", color="C3", label=f"{self.method}: {rate:.2g}")
        axes.set_xscale("log")
        axes.set_xlabel("learning rate")
        axes.set_ylabel("loss")
        axes.set_title(f"Learning-rate finder ({self.trained})")
        top = min(max(self.losses), 4 * min(self.losses) + 1e-12)
        axes.set_ylim(min(min(self.raw_losses), min(self.losses)) * 0.95, top * 1.05)
        axes.legend()
        figure.tight_layout()
        if path is not None:
            figure.savefig(path)
        return figure


def lr_find(
    model,
    train_ds,
    *,
    start_lr=1e-7,
    end_lr=10.0,
    num_steps=100,
    smoothing=SMOOTHING,
    diverge_factor=DIVERGE_FACTOR,
    method="steepest",
    cache_features="auto",
    class_weight=None,
):
    """Sweep the learning rate exponentially over training batches and suggest one.

    Step `i` (from 0) trains one batch at rate `start_lr * (end_lr / start_lr) **
    (i / (num_steps - 1))` with a fresh copy of the model's compiled optimizer (same class
    and settings; a schedule is replaced by the swept rate), and records the batch's loss.
    The sweep stops after `num_steps` steps or once the smoothed loss exceeds
    `diverge_factor` times its minimum. Afterwards the model's weights, trainable flags and
    compiled optimizer (the same object, its state untouched), loss and metrics are put back:
    the call changes nothing.

    With a frozen backbone (e.g. straight from `build_image_classifier`), the sweep trains
    the head on features the backbone computes once (`feature_cache.split_for_caching`, in
    inference mode, as `fine_tune` does): a few seconds. With an unfrozen backbone it trains
    the whole model, so call it after `unfreeze_backbone` to pick a fine-tuning rate.

    Args:
        model: a compiled classifier (from `build_image_classifier` /
            `build_text_classifier`, or any `keras.Model` compiled with a loss); uncompiled
            models get `compile_classifier`'s defaults for the sweep.
        train_ds: `tf.data.Dataset` of `(inputs, one_hot_labels[, sample_weights])` batches
            (or a `keras.utils.PyDataset`, torch `DataLoader` or grain dataset of them; read
            once for the cached features); passed over again when it has fewer than
            `num_steps` batches.
        start_lr: float > 0, the first rate; default 1e-7 (fastai's).
        end_lr: float > `start_lr`, the rate of step `num_steps - 1`; default 10 (fastai's).
        num_steps: int >= 2, steps of the full sweep; default 100 (fastai's).
        smoothing: float in [0, 1), EMA factor of the loss curve; default 0.9 (fastai uses
            0.98, which lags the curve by about 50 steps of a 100-step sweep).
        diverge_factor: float > 1, default 4 (fastai's): stop when the smoothed loss
            exceeds this multiple of its minimum.
        method: `"steepest"` (default: the steepest descent of the smoothed loss, on the part
            of the curve before its minimum), `"minimum/10"` (a tenth of the rate of the
            lowest smoothed loss) or `"valley"` (fastai's default); all three are returned
            in `suggestions`.
        cache_features: `"auto"` (default: on the cached features of the first `num_steps`
            batches, so infinite data too, when every trainable weight is in the head) or
            False (always the whole model, the frozen part run every step).
        class_weight: None, a dict `{class id or class name: weight}` or "balanced", as
            for `fine_tune` (checked against the model's classes); "balanced" on infinite
            data counts the labels of the first `num_steps` batches, those the sweep reads.

    Returns:
        An `LRFinderResult`; `result.plot("lr.png")` draws and saves the curve.

    Raises:
        ValueError: arrays as `train_ds`, a bad range, `num_steps`, `smoothing`,
            `diverge_factor`, `method` or `cache_features`, a model with nothing trainable,
            a dataset without a single batch, labels that cannot meet the model's loss
            (class ids for a one-hot loss, another width than its classes), dict elements
            of a `tf.data` dataset, labels given as a dict of another key than the
            model's output name (`label_checks.check_not_keyed`), or inputs given as a dict
            without the model's input name (`label_checks.check_inputs_keyed`).

    Example:
    ```python
    model = kt.build_image_classifier("mobilenet_v2", len(class_names))
    result = kt.lr_find(model, train_ds)  # the head's rate, on cached features
    result.plot("lr_find.png")
    kt.compile_classifier(model, "adam", learning_rate=result.suggested_lr)
    ```
    """

    from keras_transfer.models.compiling import compile_arguments, compile_classifier

    _check_arguments(
        train_ds, start_lr, end_lr, num_steps, smoothing, diverge_factor, method, cache_features
    )
    if not getattr(model, "compiled", False):
        compile_classifier(model)
    if not model.trainable_weights:
        raise ValueError(
            f"{model.name!r} has no trainable weights: unfreeze something (e.g. "
            "unfreeze_backbone(model)) before looking for its learning rate."
        )
    train_ds = keyed_batches(model, train_ds)  # ({"image": x}, y) as (x, y), then checked
    first = check_batches(model, train_ds)  # a tf.data spec or a PyDataset's first batch
    counted = first_batches(train_ds, num_steps) if infinite_kind(train_ds) else train_ds
    class_weight = check_model_class_weight(model, class_weight, counted, first)  # "balanced"
    rates = start_lr * (end_lr / start_lr) ** (np.arange(num_steps) / (num_steps - 1))
    weights = model.get_weights()
    flags = [(layer, layer.trainable) for layer in model._flatten_layers(include_self=True)]
    optimizer = model.optimizer
    compiled = compile_arguments(model)
    trained, data, trained_name, restore_inputs = _what_to_train(
        model, train_ds, cache_features, num_steps
    )
    try:
        config = dict(compiled)
        inner = getattr(optimizer, "inner_optimizer", None) or optimizer  # mixed_float16
        opt_config = inner.get_config()
        opt_config["learning_rate"] = float(rates[0])
        config["optimizer"] = inner.__class__.from_config(opt_config)
        trained.compile(**config)
        raw, smoothed, diverged = _sweep(
            trained, data, rates, smoothing, diverge_factor, class_weight
        )
    finally:
        restore_inputs()
        for layer, flag in flags:
            if layer.trainable != flag:
                layer.trainable = flag
        model.set_weights(weights)
        config = dict(compiled)
        config["optimizer"] = optimizer  # the same object: its state is kept
        model.compile(**config)
    rates = [float(r) for r in rates[: len(raw)]]
    suggestions = suggest_learning_rates(rates, smoothed)
    return LRFinderResult(
        learning_rates=rates,
        losses=smoothed,
        raw_losses=raw,
        suggested_lr=suggestions[method],
        suggestions=suggestions,
        method=method,
        diverged=diverged,
        trained=trained_name,
    )


def suggest_learning_rates(rates, losses):
    """The suggestions of `lr_find` from a sweep's (exponential) rates and smoothed losses.

    `"steepest"`: the rate where the loss falls fastest per decade of learning rate, each
    slope taken across half a decade (a quarter on either side: single steps are noisy),
    on the curve up to its minimum. `"minimum/10"`: a tenth of the rate of the lowest loss.
    `"valley"`: fastai's default since 2.5: the point two thirds of the way down the
    longest decreasing stretch of the curve. The first `SKIP_START` (10) steps, at most a
    quarter of them, are left out of `"steepest"` and `"valley"`: the moving average is
    still settling there (fastai's `skip_start`).

    Returns:
        dict `{"steepest": float, "minimum/10": float, "valley": float}`, each within
        `[min(rates), max(rates)]` (`"minimum/10"` is clipped to it).
    """
    rates, losses = np.asarray(rates, dtype="float64"), np.asarray(losses, dtype="float64")
    lowest = int(np.argmin(losses))
    skip = min(SKIP_START, max(lowest - 2, 0), len(rates) // 4)
    minimum = max(float(rates[lowest]) / 10.0, float(rates[0]))
    rates, losses, lowest = rates[skip:], losses[skip:], lowest - skip
    decades = np.log10(rates)
    per_decade = (len(rates) - 1) / max(decades[-1] - decades[0], 1e-12)
    reach = max(1, round(per_decade / 4))
    best_slope, steepest = 0.0, float(rates[0])
    for i in range(lowest + 1):
        low, high = max(0, i - reach), min(lowest, i + reach)
        if high > low:
            slope = (losses[high] - losses[low]) / (decades[high] - decades[low])
            if slope < best_slope:
                best_slope, steepest = slope, float(rates[i])
    return {
        "steepest": steepest,  # the first rate considered when the loss never falls
        "minimum/10": minimum,
        "valley": float(rates[_valley(losses)]),
    }


def _valley(losses):
    """fastai's `valley`: 2/3 of the way along the longest decreasing subsequence."""
    run = [1] * len(losses)
    start = end = 0
    for i in range(1, len(losses)):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[end] < run[i]:
            end, start = i, i - run[i]
    third = (end - start) / 3
    return min(max(start + int(third) + int(third / 2), 0), len(losses) - 1)


def _check_arguments(
    train_ds, start_lr, end_lr, num_steps, smoothing, diverge_factor, method, cache_features
):
    check_not_arrays(train_ds)
    if not (
        isinstance(start_lr, (int, float))
        and isinstance(end_lr, (int, float))
        and 0 < start_lr < end_lr
    ):
        raise ValueError(
            f"Need 0 < start_lr < end_lr, got start_lr={start_lr!r}, end_lr={end_lr!r}."
        )
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"`num_steps` must be an int >= 2, got {num_steps!r}.")
    if not (isinstance(smoothing, (int, float)) and 0 <= smoothing < 1):
        raise ValueError(f"`smoothing` must be in [0, 1), got {smoothing!r}.")
    if not (isinstance(diverge_factor, (int, float)) and diverge_factor > 1):
        raise ValueError(f"`diverge_factor` must be a number > 1, got {diverge_factor!r}.")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    if cache_features not in ("auto", False):
        raise ValueError(f"`cache_features` must be 'auto' or False, got {cache_features!r}.")


def _what_to_train(model, train_ds, cache_features, num_steps):
    """`(trained model, data, description, undo)`: the head on the cached features of the
    first `num_steps` batches (all the sweep reads) when every trainable weight is in it,
    else the whole model (text: preprocessed in tf.data)."""
    from keras_transfer.features.feature_cache import split_for_caching
    from keras_transfer.features.feature_passes import cached_feature_datasets
    from keras_transfer.models.compiling import is_text_classifier

    if cache_features == "auto":
        split = split_for_caching(model)
        if split is not None and len(split.head.trainable_weights) == len(model.trainable_weights):
            first = first_batches(train_ds, num_steps)  # an infinite .repeat() too
            features, _ = cached_feature_datasets(split, first, input_key=keyed_names(model)[0])
            return split.head, features, "head on cached features", lambda: None
    if is_tf_dataset(train_ds) and is_text_classifier(model) and model.preprocessor is not None:
        from keras_transfer.data.text_padding import pad_to_longest

        data = pad_to_longest(model, train_ds)
        preprocessor = model.preprocessor
        model.preprocessor = None  # train_on_batch takes the preprocessed inputs

        def undo():
            model.preprocessor = preprocessor

        return model, data, "whole model", undo
    return model, train_ds, "whole model", lambda: None


def _batches(data):
    """Batches of `data` as numpy, over and over (each pass a new iterator)."""
    for _ in itertools.count():
        empty = True
        for batch in data.as_numpy_iterator() if is_tf_dataset(data) else iter_batches(data):
            empty = False
            yield batch
        if empty:
            raise ValueError("`train_ds` gave no batches: the learning-rate finder needs data.")


def _sweep(model, data, rates, smoothing, diverge_factor, class_weight):
    """Train one batch per rate; returns `(raw losses, smoothed losses, diverged)`."""
    raw, smoothed = [], []
    average, best = 0.0, math.inf
    for step, (rate, batch) in enumerate(zip(rates, _batches(data), strict=False)):
        # Assigning the optimizer's rate variable works on every backend: train_on_batch
        # reads the optimizer's variables at each call (jax passes them into its jit).
        model.optimizer.learning_rate = float(rate)
        x, y = batch[0], batch[1]
        if step == 0:
            check_not_keyed(model, y, "train_ds", tf_data=False)  # generators, ...
            check_label_shape(model, np.shape(y))
        sample_weight = batch[2] if len(batch) > 2 else None
        logs = model.train_on_batch(
            x, y, sample_weight=sample_weight, class_weight=class_weight, return_dict=True
        )
        loss = float(logs["loss"])
        raw.append(loss)
        average = smoothing * average + (1 - smoothing) * loss
        value = average / (1 - smoothing ** (step + 1))
        smoothed.append(value)
        if not math.isfinite(value):
            smoothed[-1] = raw[-1] = math.inf
            return _finite(raw), _finite(smoothed), True
        best = min(best, value)
        if step > 0 and value > diverge_factor * best:
            return raw, smoothed, True
    return raw, smoothed, False


def _finite(values):
    """A diverged last step's loss (inf / nan) as a large finite number, for plotting."""
    finite = [v for v in values if math.isfinite(v)]
    ceiling = 10 * max(finite) if finite else 1e9
    return [v if math.isfinite(v) else ceiling for v in values]
