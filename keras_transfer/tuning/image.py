"""`tune_image_classifier`: search the cheap part of the recipe with KerasTuner.

Each trial draws a backbone, a head learning rate, a dropout rate, a label smoothing and an
unfreeze depth (KerasTuner's random search), trains the head with Adam and early stopping
on features the frozen backbone computed once (one pass per backbone over the data for the
whole search, not one per trial), and, when the unfreeze depth is above 0, fine-tunes the
top of the backbone with `fine_tune`'s stage 2 (kept only when it lowers the validation
loss). Trials are ranked by validation accuracy, ties by validation loss; the leaderboard
is written as JSON and Markdown and the best model is saved with `save_classifier`. The
search stops after `max_trials` trials or once `max_time` seconds have passed (no trial
starts after it, and a running one stops at the end of its current epoch).
"""

from __future__ import annotations

import math
import os
import time

from keras_transfer.tuning.leaderboard import (
    BEST_MODEL,
    COLUMNS,
    LEADERBOARD,
    rank_key,
    write_leaderboard,
)

DEFAULT_SEARCH_SPACE = {
    "learning_rate": [3e-4, 1e-3, 3e-3, 1e-2],  # Adam, the head's rate
    "dropout": [0.0, 0.2, 0.5],
    "label_smoothing": [0.0, 0.1],
    "unfreeze_top_n": [0, 20],  # 0: frozen backbone, the head alone on cached features
}
HEAD_EPOCHS = 50  # at most, on cached features
HEAD_PATIENCE = 5  # epochs without a lower val_loss before the head stops


def tune_image_classifier(
    data,
    backbones,
    *,
    directory,
    max_trials=10,
    max_time=None,
    search_space=None,
    image_size=None,
    batch_size=32,
    validation_split=None,
    weights="imagenet",
    backbone_kwargs=None,
    head_epochs=HEAD_EPOCHS,
    finetune_epochs="auto",
    seed=1337,
    verbose=1,
):
    """Search backbones and head settings for an image classifier; save the best model.

    Args:
        data: a folder for `image_folder_datasets` (`train/<class>/` and `val/<class>/`,
            or class folders with `validation_split`), or a tuple `(train_ds, val_ds,
            class_names)` of datasets as it returns (then every backbone gets their image
            size). Validation data is required: it ranks the trials.
        backbones: list of str, registry names (`list_backbones()`) or `"hub:<preset>"`.
        directory: folder for the results: `leaderboard.json`, `leaderboard.md`,
            `best_model.keras` and KerasTuner's trial records (`tuner/`); made if missing,
            earlier results in it are replaced.
        max_trials: int >= 1, default 10: trials at most (fewer when the search space is
            smaller: each combination is tried once).
        max_time: seconds (float > 0) or None (default: no limit). No trial starts after
            it, and a running trial stops at the end of its epoch.
        search_space: dict overriding `DEFAULT_SEARCH_SPACE` entries, each a list of
            values to choose from: `"learning_rate"` (Adam's rate for the head; default
            3e-4, 1e-3, 3e-3, 1e-2), `"dropout"` (0, 0.2, 0.5), `"label_smoothing"` (0,
            0.1), `"unfreeze_top_n"` (0: frozen backbone, or the number of top backbone
            layers fine-tuned after the head, `fine_tune`'s stage 2 at 0.1x the rate;
            default 0, 20).
        image_size: int or None (default: each backbone's own, for a folder `data`).
        batch_size: int, default 32 (folder `data`).
        validation_split: float or None, for a folder without `val/` (as in
            `image_folder_datasets`).
        weights: `"imagenet"` (default) or None (random; for tests), for every backbone.
        backbone_kwargs: dict `{backbone: {constructor kwargs}}`, e.g.
            `{"mobilenet": {"alpha": 0.25}}`; default none.
        head_epochs: int >= 1, epochs of the head at most (early stopping after
            `HEAD_PATIENCE` = 5 without a lower `val_loss`, best weights restored);
            default 50.
        finetune_epochs: `"auto"` (default: `fine_tune`'s step budget and early stopping)
            or an int >= 1, the fine-tuning epochs of trials with an unfreeze depth above 0.
        seed: int, seeds the data split, the search and the weights; default 1337.
        verbose: 0 silent, 1 (default) a line per trial.

    Returns:
        dict: `"leaderboard"` (list of dicts, best first: rank, trial, the five settings,
        `val_accuracy`, `val_loss`, `fine_tuning` ("none", "kept" or "reverted"),
        `head_epochs`, `seconds`), `"best_model"` (path of the saved best model),
        `"stopped_by"` ("max_trials", "max_time" or "search space"), `"seconds"` and
        `"class_names"`.

    Raises:
        ValueError: no backbones or an unknown one, bad `max_trials` / `max_time` /
            `search_space`, data without validation examples.
        ImportError: KerasTuner is missing (`pip install 'keras-transfer[tune]'`).

    Example:
    ```python
    result = kt.tune_image_classifier(
        "flowers/", ["mobilenet_v2", "efficientnet_b0"], max_trials=12, max_time=600,
        directory="runs/tune")
    model, class_names = kt.load_classifier(result["best_model"])
    ```
    """
    try:
        import keras_tuner
    except ImportError as error:
        raise ImportError(
            "tune_image_classifier needs KerasTuner: pip install 'keras-transfer[tune]' "
            "(or pip install keras-tuner)."
        ) from error
    import keras

    space = check_search(backbones, max_trials, max_time, search_space, head_epochs)
    check_finetune_epochs(finetune_epochs)
    unknown = sorted(set(backbone_kwargs or {}) - set(backbones))
    if unknown:
        raise ValueError(
            f"`backbone_kwargs` is keyed by backbone, e.g. {{'mobilenet': {{'alpha': 0.25}}}}; "
            f"{unknown} name none of the backbones {list(backbones)}."
        )
    started = time.monotonic()
    deadline = None if max_time is None else started + max_time
    keras.utils.set_random_seed(seed)
    search = Search(
        data,
        list(backbones),
        space,
        dict(
            image_size=image_size,
            batch_size=batch_size,
            validation_split=validation_split,
            weights=weights,
            backbone_kwargs=backbone_kwargs or {},
            head_epochs=head_epochs,
            finetune_epochs=finetune_epochs,
            seed=seed,
            verbose=verbose,
        ),
        directory,
        deadline,
    )
    search.class_names = list(search._datasets(backbones[0])[2])  # bad data fails here
    return run_search(keras_tuner, search, max_trials, seed, deadline, started)


def run_search(keras_tuner, search, max_trials, seed, deadline, started):
    """Run KerasTuner's random search over `search`'s trials; return the result dict
    (`Search.write_leaderboard`)."""
    oracle = _timed_oracle(keras_tuner)(
        objective=keras_tuner.Objective("val_accuracy", "max"),
        max_trials=max_trials,
        seed=seed,
        deadline=deadline,
    )
    tuner = _tuner(keras_tuner)(
        search, oracle=oracle, directory=search.directory, project_name="tuner"
    )
    tuner.search(verbose=search.settings["verbose"] > 1)
    if deadline is not None and time.monotonic() >= deadline:
        stopped_by = "max_time"
    elif len(search.rows) >= max_trials:
        stopped_by = "max_trials"
    else:
        stopped_by = "search space"
    return search.write_leaderboard(stopped_by, time.monotonic() - started)


def check_search(
    backbones, max_trials, max_time, search_space, head_epochs, defaults=None, image=True
):
    """The search space (`defaults`, default `DEFAULT_SEARCH_SPACE`, updated by
    `search_space`) after checking the arguments of a search; raises ValueError."""
    from keras_transfer.models.backbones import HUB_PREFIX, get_backbone_spec

    defaults = DEFAULT_SEARCH_SPACE if defaults is None else defaults
    if isinstance(backbones, str) or not backbones:
        raise ValueError(f"`backbones` must be a non-empty list of names, got {backbones!r}.")
    for name in backbones if image else ():
        if not str(name).startswith(HUB_PREFIX):
            get_backbone_spec(name)  # raises, naming the closest ones
    if len(set(backbones)) != len(backbones):
        raise ValueError(f"`backbones` lists a name twice: {backbones!r}.")
    for name, value, low in (("max_trials", max_trials, 1), ("head_epochs", head_epochs, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}.")
    if max_time is not None and not (isinstance(max_time, (int, float)) and max_time > 0):
        raise ValueError(f"`max_time` must be a number of seconds > 0 or None, got {max_time!r}.")
    space = dict(defaults)
    for key, values in (search_space or {}).items():
        if key not in defaults:
            raise ValueError(f"Unknown search_space entry {key!r}; known: {sorted(defaults)}.")
        if isinstance(values, (str, bytes)) or not values or len(set(values)) != len(values):
            raise ValueError(
                f"search_space[{key!r}] must be a non-empty list of distinct values, "
                f"got {values!r}."
            )
        space[key] = list(values)
    return space


def check_finetune_epochs(finetune_epochs):
    """Raise ValueError unless `finetune_epochs` is "auto" or an int >= 1."""
    if finetune_epochs != "auto" and (
        isinstance(finetune_epochs, bool)
        or not isinstance(finetune_epochs, int)
        or finetune_epochs < 1
    ):
        raise ValueError(
            f"`finetune_epochs` must be 'auto' or an int >= 1, got {finetune_epochs!r}."
        )


def _timed_oracle(keras_tuner):
    class TimedRandomSearch(keras_tuner.oracles.RandomSearchOracle):
        """Random search that creates no trial once the deadline has passed."""

        def __init__(self, deadline=None, **kwargs):
            super().__init__(**kwargs)
            self.deadline = deadline

        def populate_space(self, trial_id):
            if self.deadline is not None and time.monotonic() >= self.deadline:
                return {"status": keras_tuner.engine.trial.TrialStatus.STOPPED, "values": None}
            return super().populate_space(trial_id)

    return TimedRandomSearch


def _tuner(keras_tuner):
    class ClassifierTuner(keras_tuner.engine.base_tuner.BaseTuner):
        """A KerasTuner tuner whose trials are `Search.run_trial`."""

        def __init__(self, search, **kwargs):
            super().__init__(overwrite=True, **kwargs)
            self.search_state = search

        def run_trial(self, trial, *args, **kwargs):
            return self.search_state.run_trial(trial.hyperparameters, trial.trial_id)

    return ClassifierTuner


def _deadline_callback(deadline):
    """A Keras callback that stops `fit` at the end of an epoch once time is up."""
    import keras

    class Deadline(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if deadline is not None and time.monotonic() >= deadline:
                self.model.stop_training = True

    return Deadline()


class Search:
    """The trials' state: datasets per image size, models and cached features per backbone.
    Subclasses for other kinds of model replace `_datasets`, `_build`, `_set_dropout` and
    `_before_finetune`."""

    def __init__(self, data, backbones, space, settings, directory, deadline):
        self.data, self.backbones, self.space = data, backbones, space
        self.settings, self.directory, self.deadline = settings, os.fspath(directory), deadline
        self.datasets, self.models, self.rows = {}, {}, []
        self.class_names, self.best = None, (math.inf, math.inf)
        os.makedirs(self.directory, exist_ok=True)
        for name in (BEST_MODEL, f"{LEADERBOARD}.json", f"{LEADERBOARD}.md"):
            if os.path.exists(os.path.join(self.directory, name)):
                os.remove(os.path.join(self.directory, name))

    def _datasets(self, backbone):
        """`(train_ds, val_ds, class_names)` at the backbone's image size."""
        import keras_transfer as kt

        if isinstance(self.data, (tuple, list)):
            if len(self.data) != 3 or self.data[1] is None:
                raise ValueError(
                    "`data` must be a folder or (train_ds, val_ds, class_names) with "
                    "validation data: the trials are ranked on it."
                )
            return tuple(self.data)
        size = self.settings["image_size"] or kt.default_image_size(backbone)
        size = (size, size) if isinstance(size, int) else tuple(size)
        if size not in self.datasets:
            train_ds, val_ds, class_names = kt.image_folder_datasets(
                self.data,
                image_size=size,
                batch_size=self.settings["batch_size"],
                validation_split=self.settings["validation_split"],
                seed=self.settings["seed"],
            )
            if val_ds is None:
                raise ValueError(
                    f"{self.data!r} has no val/ folder: pass validation_split (CLI: "
                    "--validation-split) so that the trials can be ranked."
                )
            self.datasets[size] = (train_ds, val_ds, class_names)
        return self.datasets[size]

    def _model(self, backbone):
        """The backbone's classifier, its initial weights and cached features (made once)."""
        from keras_transfer.features.feature_cache import split_for_caching

        if backbone not in self.models:
            train_ds, val_ds, class_names = self._datasets(backbone)
            self.class_names = list(class_names)
            model = self._build(backbone, train_ds, class_names)
            split = split_for_caching(model)
            features = split.cache(train_ds, val_ds)
            self.models[backbone] = (model, model.get_weights(), split, features)
        return self.models[backbone]

    def _build(self, backbone, train_ds, class_names):
        import keras_transfer as kt

        return kt.build_image_classifier(
            backbone,
            len(class_names),
            input_shape=tuple(train_ds.element_spec[0].shape[1:]),
            weights=self.settings["weights"],
            backbone_kwargs=self.settings["backbone_kwargs"].get(backbone),
            dropout=0.5,  # a Dropout layer to set each trial's rate on
        )

    def _set_dropout(self, model, rate):
        model.get_layer("dropout").rate = rate

    def _before_finetune(self, model, values):
        """Fine-tuning takes the head's compiled rate (0.1x of it, `fine_tune`)."""

    def run_trial(self, hp, trial_id):
        import keras

        import keras_transfer as kt
        from keras_transfer.models.compiling import compile_arguments, compile_classifier

        start = time.monotonic()
        values = {"backbone": hp.Choice("backbone", self.backbones)}
        for key in COLUMNS[1:]:
            values[key] = hp.Choice(key, self.space[key])
        model, initial, split, (train_features, val_features) = self._model(values["backbone"])
        train_ds, val_ds, _ = self._datasets(values["backbone"])
        model.set_weights(initial)
        kt.freeze_backbone(model)
        self._set_dropout(model, float(values["dropout"]))
        compile_classifier(
            model, "adam", values["learning_rate"], label_smoothing=values["label_smoothing"]
        )
        split.head.compile(**compile_arguments(model))
        stop = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=HEAD_PATIENCE, restore_best_weights=True
        )
        history = split.head.fit(
            train_features,
            validation_data=val_features,
            epochs=self.settings["head_epochs"],
            callbacks=[stop, _deadline_callback(self.deadline)],
            verbose=0,
        )
        logs = split.head.evaluate(val_features, verbose=0, return_dict=True)
        fine_tuning = "none"
        if values["unfreeze_top_n"]:
            weights = model.get_weights()
            self._before_finetune(model, values)
            kt.fine_tune(
                model,
                train_ds,
                val_ds,
                head_epochs=0,
                finetune_epochs=self.settings["finetune_epochs"],
                unfreeze_top_n=int(values["unfreeze_top_n"]),
                callbacks=[_deadline_callback(self.deadline)],
                verbose=0,
            )
            tuned = model.evaluate(val_ds, verbose=0, return_dict=True)
            fine_tuning = "kept" if tuned["loss"] < logs["loss"] else "reverted"
            if fine_tuning == "kept":
                logs = tuned
            else:
                model.set_weights(weights)
            kt.freeze_backbone(model)
        row = dict(
            trial=trial_id,
            **values,
            val_accuracy=float(logs["accuracy"]),
            val_loss=float(logs["loss"]),
            fine_tuning=fine_tuning,
            head_epochs=len(history.epoch),
            seconds=round(time.monotonic() - start, 2),
        )
        self.rows.append(row)
        if rank_key(row) < self.best:  # the leaderboard's order: ties go to val_loss
            self.best = rank_key(row)
            kt.save_classifier(model, os.path.join(self.directory, BEST_MODEL), self.class_names)
        if self.settings["verbose"]:
            shown = ", ".join(f"{key}={row[key]}" for key in COLUMNS)
            print(
                f"Trial {trial_id}: val_accuracy {row['val_accuracy']:.4f}, val_loss "
                f"{row['val_loss']:.4f} ({shown}; fine-tuning: {fine_tuning}; "
                f"{row['seconds']:.1f} s)"
            )
        return {"val_accuracy": row["val_accuracy"], "val_loss": row["val_loss"]}

    def write_leaderboard(self, stopped_by, seconds):
        """Write `leaderboard.json` and `leaderboard.md`; return the result dict."""
        best_model = os.path.join(self.directory, BEST_MODEL)
        return write_leaderboard(
            self.directory, self.rows, stopped_by, seconds, self.class_names, best_model
        )
