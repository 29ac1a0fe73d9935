"""`tune_text_classifier`: the search of `tune_image_classifier` for text presets.

Each trial draws a preset (a BERT-style encoder), a head learning rate, a dropout rate, a
label smoothing and an unfreeze depth, and trains the head with Adam and early stopping on
the features the frozen encoder computed once per preset (its pooled output, or the masked
mean of its tokens with `pooling="mean"`). A trial with an unfreeze depth above 0 then
fine-tunes that many top units of the encoder with `fine_tune`'s stage 2 at BERT's rate
(AdamW 5e-5, warmup and linear decay; kept only when it lowers the validation loss).
"""

from __future__ import annotations

import time
import warnings

from keras_transfer.tuning.image import (
    HEAD_EPOCHS,
    Search,
    check_finetune_epochs,
    check_search,
    run_search,
)

TEXT_SEARCH_SPACE = {
    "learning_rate": [3e-4, 1e-3, 3e-3, 1e-2],  # Adam, the head's rate on cached features
    "dropout": [0.0, 0.1, 0.3],
    "label_smoothing": [0.0, 0.1],
    "unfreeze_top_n": [0],  # 0: frozen encoder; e.g. 2: its top 2 blocks fine-tuned
}


def tune_text_classifier(
    data,
    presets,
    *,
    directory,
    max_trials=10,
    max_time=None,
    search_space=None,
    sequence_length=128,
    pooling="cls",
    text_column="text",
    label_column="label",
    val_path=None,
    validation_split=None,
    batch_size=32,
    max_rows=None,
    head_epochs=HEAD_EPOCHS,
    finetune_epochs="auto",
    seed=1337,
    verbose=1,
):
    """Search text presets and head settings for a text classifier; save the best model.

    Args:
        data: a labelled text file for `text_csv_datasets` (`.csv`, `.tsv` or `.jsonl`,
            with `val_path` or `validation_split`), or a tuple `(train_ds, val_ds,
            class_names)` as it returns. Validation data is required: it ranks the trials.
        presets: list of str, KerasHub BERT-style text presets or local preset / Hugging
            Face folders (as `build_text_classifier` takes).
        directory: folder for `leaderboard.json`, `leaderboard.md`, `best_model.keras`
            and KerasTuner's records (`tuner/`); made if missing, earlier results replaced.
        max_trials: int >= 1, default 10.
        max_time: seconds (float > 0) or None (default: no limit); no trial starts after
            it, and a running one stops at the end of its epoch.
        search_space: dict overriding `TEXT_SEARCH_SPACE` entries (lists of values):
            `"learning_rate"` (Adam's rate for the head; 3e-4, 1e-3, 3e-3, 1e-2),
            `"dropout"` (0, 0.1, 0.3), `"label_smoothing"` (0, 0.1), `"unfreeze_top_n"`
            (default only 0, the frozen encoder; e.g. `[0, 2]` also fine-tunes the top 2
            units, which costs encoder passes on every epoch).
        sequence_length: int, tokens per text, default 128 (`build_text_classifier`'s).
        pooling: `"cls"` (default), `"mean"` or `"auto"` (each preset's own), for every
            preset (`build_text_classifier`).
        text_column, label_column, val_path, validation_split, batch_size, max_rows: as in
            `text_csv_datasets`, for a file `data` (batch size default 32).
        head_epochs: int >= 1, epochs of the head at most (early stopping after 5 without a
            lower `val_loss`, best weights restored); default 50.
        finetune_epochs: `"auto"` (default) or an int >= 1, for trials that fine-tune.
        seed: int, seeds the data split, the search and the weights; default 1337.
        verbose: 0 silent, 1 (default) a line per trial.

    Returns:
        dict, as `tune_image_classifier` returns: `"leaderboard"` (best first; the preset
        in its `"backbone"` column), `"best_model"`, `"stopped_by"`, `"seconds"`,
        `"class_names"`.

    Raises:
        ValueError: no presets or one twice, bad `max_trials` / `max_time` /
            `search_space` / `finetune_epochs`, data without validation rows, or a preset
            KerasHub cannot load (`build_text_classifier`).
        ImportError: KerasTuner is missing (`pip install 'keras-transfer[tune]'`).

    Example:
    ```python
    result = kt.tune_text_classifier(
        "sms.csv", ["bert_tiny_en_uncased", "bert_small_en_uncased"],
        validation_split=0.2, max_trials=8, directory="runs/tune-text")
    model, class_names = kt.load_classifier(result["best_model"])
    ```
    """
    try:
        import keras_tuner
    except ImportError as error:
        raise ImportError(
            "tune_text_classifier needs KerasTuner: pip install 'keras-transfer[tune]' "
            "(or pip install keras-tuner)."
        ) from error
    import keras

    space = check_search(
        presets, max_trials, max_time, search_space, head_epochs, TEXT_SEARCH_SPACE, image=False
    )
    check_finetune_epochs(finetune_epochs)
    if pooling not in ("auto", "cls", "mean"):
        raise ValueError(f"`pooling` must be 'auto', 'cls' or 'mean', got {pooling!r}.")
    started = time.monotonic()
    deadline = None if max_time is None else started + max_time
    keras.utils.set_random_seed(seed)
    settings = dict(
        sequence_length=sequence_length,
        pooling=pooling,
        reading=dict(
            text_column=text_column,
            label_column=label_column,
            val_path=val_path,
            validation_split=validation_split,
            batch_size=batch_size,
            max_rows=max_rows,
            seed=seed,
        ),
        head_epochs=head_epochs,
        finetune_epochs=finetune_epochs,
        seed=seed,
        verbose=verbose,
    )
    search = TextSearch(data, list(presets), space, settings, directory, deadline)
    search.class_names = list(search._datasets(presets[0])[2])  # bad data fails here
    return run_search(keras_tuner, search, max_trials, seed, deadline, started)


class TextSearch(Search):
    """`Search` for text presets: one pair of datasets for all of them."""

    def _datasets(self, backbone):
        import keras_transfer as kt

        if isinstance(self.data, (tuple, list)):
            return super()._datasets(backbone)
        if "file" not in self.datasets:
            train_ds, val_ds, class_names = kt.text_csv_datasets(
                self.data, **self.settings["reading"]
            )
            if val_ds is None:
                raise ValueError(
                    f"{self.data!r} gives no validation rows: pass val_path or "
                    "validation_split so that the trials can be ranked."
                )
            self.datasets["file"] = (train_ds, val_ds, class_names)
        return self.datasets["file"]

    def _build(self, backbone, train_ds, class_names):
        import keras_transfer as kt
        from keras_transfer.models.text_classifier import truncation_message

        model = kt.build_text_classifier(
            backbone,
            len(class_names),
            sequence_length=self.settings["sequence_length"],
            pooling=self.settings["pooling"],
            freeze="backbone",
        )
        message = truncation_message(
            model, train_ds, "sequence_length", " (command line: --sequence-length)"
        )
        if message:
            warnings.warn(f"{backbone}: {message}", stacklevel=2)
        return model

    def _set_dropout(self, model, rate):
        model.output_dropout.rate = rate

    def _before_finetune(self, model, values):
        """BERT's fine-tuning rate (`compile_classifier`'s AdamW 5e-5), not the head's."""
        from keras_transfer.models.compiling import compile_classifier

        compile_classifier(model, label_smoothing=values["label_smoothing"])
