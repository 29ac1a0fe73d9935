"""`build_text_classifier(..., pooling="mean")`: the masked mean of the token outputs."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SENTIMENT_ROWS, serve, write_text_file

import keras_transfer as kt
from keras_transfer.features.feature_cache import split_for_caching
from keras_transfer.models.text_pooling import MeanPooledTextClassifier

TEXTS = [text for text, _ in SENTIMENT_ROWS] + ["a " * 20 + "good movie", "ok"]


def _numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value), dtype="float64")


def test_mean_pooling_is_the_masked_mean_of_the_token_outputs(tiny_bert_preset):
    model = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=32, pooling="mean")
    assert isinstance(model, MeanPooledTextClassifier)
    assert [layer.name for layer in model.layers[-3:]] == [
        "mean_pooling",
        "classifier_dropout",
        "logits",
    ]
    inputs = {k: _numpy(v).astype("int32") for k, v in model.preprocessor(TEXTS).items()}
    mask = inputs["padding_mask"].astype(bool)
    assert mask.sum(axis=1).min() >= 2 and not mask.all()  # rows of several lengths
    tokens = _numpy(model.backbone.predict_on_batch(inputs)["sequence_output"])
    expected = (tokens * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
    pooled = _numpy(model.output_pooling(tokens.astype("float32"), mask=inputs["padding_mask"]))
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-6)
    kernel, bias = (_numpy(w) for w in model.output_dense.weights)
    logits = expected @ kernel + bias
    softmax = np.exp(logits - logits.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    np.testing.assert_allclose(_numpy(model(inputs, training=False)), softmax, atol=1e-5)
    # Padding does not count: the same text alone, padded to the full length, pools the same.
    alone = {k: v[-1:] for k, v in inputs.items()}
    np.testing.assert_allclose(_numpy(model(alone)), softmax[-1:], atol=1e-5)
    with pytest.raises(ValueError, match="`pooling` must be one of auto, cls, mean"):
        kt.build_text_classifier(tiny_bert_preset, 2, pooling="max")


def test_auto_pooling_is_the_checkpoints_own(tiny_bert_preset, tmp_path):
    import shutil

    from keras_transfer.models.text_classifier import checkpoint_pooling

    default = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=16)
    assert not isinstance(default, MeanPooledTextClassifier)
    folder = tmp_path / "sentence_encoder"  # the preset with sentence-transformers' files
    shutil.copytree(tiny_bert_preset, folder)
    modules = [
        {"idx": 1, "name": "1", "path": "pool", "type": "sentence_transformers.models.Pooling"}
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "pool").mkdir()
    (folder / "pool" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    model = kt.build_text_classifier(folder, 2, sequence_length=16, pooling="auto")
    assert isinstance(model, MeanPooledTextClassifier)
    cls = kt.build_text_classifier(folder, 2, sequence_length=16, pooling="cls")
    assert not isinstance(cls, MeanPooledTextClassifier)
    (folder / "pool" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert checkpoint_pooling(folder) == "cls"
    (folder / "pool" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": "no"}))
    assert checkpoint_pooling(folder) == "cls"  # only true means the mean
    for odd in ({"a": 1}, ["1_Pooling"], [1, 2], "abc", [{**modules[0], "path": None}]):
        (folder / "modules.json").write_text(json.dumps(odd))  # malformed: 1_Pooling/
        assert checkpoint_pooling(folder) == "cls"
    (folder / "modules.json").write_text(json.dumps([{**modules[0], "path": "../outside"}]))
    assert checkpoint_pooling(folder) == "cls"  # never read outside the folder
    (folder / "modules.json").unlink()  # no modules list: 1_Pooling/, here missing
    assert checkpoint_pooling(folder) == "cls"
    assert checkpoint_pooling("bert_tiny_en_uncased") == "cls"  # a KerasHub name


def test_cached_features_are_the_pooled_means(tiny_bert_preset):
    model = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=64, pooling="mean")
    labels = np.eye(2, dtype="float32")[[i % 2 for i in range(len(TEXTS))]]
    data = tf.data.Dataset.from_tensor_slices((TEXTS, labels)).batch(4)
    kt.freeze_backbone(model)
    split = split_for_caching(model)
    (train, _) = split.cache(data, data)
    features = np.concatenate([batch[0] for batch in train.as_numpy_iterator()])
    inputs = {k: _numpy(v).astype("int32") for k, v in model.preprocessor(TEXTS).items()}
    outputs = model.backbone.predict_on_batch(inputs)
    expected = _numpy(model.output_pooling(outputs["sequence_output"], mask=inputs["padding_mask"]))
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
    assert split.head.input_shape == (None, expected.shape[1])


def test_save_load_and_saved_model_export_keep_the_mean_pooling(tiny_bert_preset, tmp_path):
    """A frozen mean-pooled model round-trips through `save_classifier` / `load_classifier`
    (frozen flags kept) and `export_saved_model` (raw strings in, a process with TensorFlow
    alone; on jax and torch the export loads the saved file in a tensorflow process)."""
    model = kt.build_text_classifier(
        tiny_bert_preset, 2, sequence_length=16, pooling="mean", freeze="backbone"
    )
    probe = np.array(TEXTS, dtype=object)
    expected = np.asarray(model.predict(probe, verbose=0))
    kt.save_classifier(model, tmp_path / "model.keras", ["neg", "pos"])
    loaded, names = kt.load_classifier(tmp_path / "model.keras")
    assert isinstance(loaded, MeanPooledTextClassifier) and names == ["neg", "pos"]
    assert not any(layer.trainable for layer in loaded.backbone.layers)
    np.testing.assert_allclose(np.asarray(loaded.predict(probe, verbose=0)), expected, atol=1e-6)
    path = kt.export_saved_model(loaded, tmp_path / "export")
    response = serve(path, "serving_default", {"input": "text", "texts": TEXTS}, tmp_path)
    np.testing.assert_allclose(response["probabilities"], expected, atol=1e-4)


def test_cli_pooling_option(tiny_bert_preset, tmp_path, capsys):
    from test_cli import _cli_in_process

    data = write_text_file(tmp_path / "train.csv", [*SENTIMENT_ROWS, ("great " * 20, "pos")])
    val = write_text_file(tmp_path / "val.csv", SENTIMENT_ROWS[:2] + SENTIMENT_ROWS[-2:])
    out = tmp_path / "out"
    args = ["train", "text", "--data", data, "--val", val]
    args += ["--preset", tiny_bert_preset, "--sequence-length", "16", "--pooling", "mean"]
    args += ["--freeze", "backbone", "--epochs", "1", "--batch-size", "4", "--output", out]
    result = _cli_in_process(capsys, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning: 1 of 9 training texts are longer than --sequence-length 16" in result.stderr
    model, _ = kt.load_classifier(out / "model.keras")
    assert isinstance(model, MeanPooledTextClassifier)
    assert json.loads((out / "history.json").read_text())["head"]["loss"]
    # `auto` takes the checkpoint's own pooling ([CLS] for this plain BERT folder); the
    # report names the one chosen (it showed "auto").
    auto = ["auto" if arg == "mean" else arg for arg in args[:-1]] + [tmp_path / "auto"]
    result = _cli_in_process(capsys, *auto)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "auto (cls)" in (tmp_path / "auto" / "report.html").read_text()
    unset = [arg for arg in args[:-1] if arg not in ("--pooling", "mean")] + [tmp_path / "unset"]
    assert _cli_in_process(capsys, *unset).returncode == 0
    assert "&quot;cls&quot;" in (tmp_path / "unset" / "report.html").read_text()  # was null
    wrong = _cli_in_process(capsys, *args[:-1], tmp_path / "other", "--pooling", "max")
    assert wrong.returncode == 2 and "invalid choice: 'max'" in wrong.stderr
    help_text = _cli_in_process(capsys, "train", "text", "--help").stdout
    assert "--pooling {auto,cls,mean}" in help_text
    assert "(cls, the default)" in " ".join(help_text.split())


def test_integrated_gradients_of_a_mean_pooled_model(tiny_bert_preset):
    """The head reads the padding mask besides the encoder's outputs; the attribution's
    probabilities are the model's and its scores add up to the change in probability."""
    from keras_transfer.report.integrated_gradients import integrated_gradients

    keras.utils.set_random_seed(3)
    model = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=16, pooling="mean")
    texts = ["good great movie", "a bad film, boring"]
    probabilities = np.asarray(model.predict(np.array(texts, dtype=object), verbose=0))
    for attribution, row in zip(
        integrated_gradients(model, texts, class_index=1), probabilities, strict=True
    ):
        change = attribution.probability - attribution.baseline_probability
        assert attribution.probability == pytest.approx(float(row[1]), abs=1e-4)
        assert sum(attribution.token_scores) == pytest.approx(change, rel=0.05, abs=1e-5)
