import json

import keras
import numpy as np
import pytest
from conftest import SENTIMENT_ROWS, minilm_folder, without_encoder_dropout, write_text_file

import keras_transfer as kt
from keras_transfer.models.text_classifier import count_truncated


def _texts_and_labels():
    texts = np.array([t for t, _ in SENTIMENT_ROWS], dtype=object)
    labels = keras.utils.to_categorical([int(label == "pos") for _, label in SENTIMENT_ROWS], 2)
    return texts, labels


def test_tiny_preset_fits_and_predicts_raw_strings(tiny_bert_preset):
    model = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=16)
    assert isinstance(model, keras.Model)
    assert isinstance(model.optimizer, keras.optimizers.AdamW)  # BERT's recipe
    assert float(model.optimizer.learning_rate) == pytest.approx(5e-5)
    assert float(model.optimizer.weight_decay) == pytest.approx(0.01)
    texts, labels = _texts_and_labels()
    kt.compile_classifier(model, learning_rate=1e-2)
    history = model.fit(texts, labels, batch_size=4, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    probabilities = np.asarray(model.predict(["a good movie", "awful"], verbose=0))
    assert probabilities.shape == (2, 2)
    np.testing.assert_allclose(probabilities.sum(-1), 1, atol=1e-5)


def test_csv_datasets_feed_fit_and_evaluate(tiny_bert_preset, tmp_path):
    train = write_text_file(tmp_path / "train.csv", SENTIMENT_ROWS)
    test = write_text_file(tmp_path / "test.csv", SENTIMENT_ROWS[:4] + SENTIMENT_ROWS[-2:])
    train_ds, val_ds, names = kt.text_csv_datasets(train, val_path=test, batch_size=4)
    assert names == ["neg", "pos"]
    texts, labels = next(iter(val_ds))
    assert texts.dtype.name == "string" and labels.shape == (4, 2)
    model = kt.build_text_classifier(tiny_bert_preset, len(names), sequence_length=16)
    model.fit(train_ds, validation_data=val_ds, epochs=1, verbose=0)
    report = kt.evaluate_classifier(model, val_ds, names)
    assert report.num_examples == 6 and report.support == [2, 4]


def test_freeze_n_freezes_embeddings_and_bottom_blocks(tiny_bert_preset):
    model = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=16, freeze=1)
    backbone = model.backbone
    assert not backbone.get_layer("token_embedding").trainable
    assert not backbone.get_layer("transformer_layer_0").trainable
    assert backbone.get_layer("transformer_layer_1").trainable
    assert backbone.get_layer("pooled_dense").trainable
    frozen = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=16, freeze="backbone")
    assert frozen.backbone.trainable_weights == []
    assert len(frozen.trainable_weights) == 2  # the output dense layer
    kt.unfreeze_backbone(frozen, top_n=1)
    assert frozen.backbone.get_layer("transformer_layer_1").trainable
    assert not frozen.backbone.get_layer("transformer_layer_0").trainable
    with pytest.raises(ValueError, match="2 transformer"):
        kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=16, freeze=5)


def test_frozen_layers_do_not_change_in_fit(tiny_bert_preset):
    model = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=16, freeze=1)
    kt.compile_classifier(model, learning_rate=1e-2)
    before = keras.ops.convert_to_numpy(model.backbone.get_layer("token_embedding").weights[0])
    top = keras.ops.convert_to_numpy(model.backbone.get_layer("pooled_dense").kernel).copy()
    texts, labels = _texts_and_labels()
    model.fit(texts, labels, batch_size=4, epochs=1, verbose=0)
    after = model.backbone.get_layer("token_embedding").weights[0]
    np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(after))
    assert not np.allclose(
        top, keras.ops.convert_to_numpy(model.backbone.get_layer("pooled_dense").kernel)
    )


def test_hugging_face_bert_folder():
    model = kt.build_text_classifier(minilm_folder(), 3, sequence_length=32)
    assert type(model.backbone).__name__ == "BertBackbone"
    assert len(model.backbone.transformer_layers) == 6
    assert np.asarray(model.predict(["hello there"], verbose=0)).shape == (1, 3)


def test_preset_resolution_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        kt.build_text_classifier(str(tmp_path / "nothing_here"), 2)
    with pytest.raises(ValueError, match="bert_tiny_en_uncased"):
        kt.build_text_classifier("bert_tiny_en_uncasd", 2)
    (tmp_path / "no_config").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        kt.build_text_classifier(str(tmp_path / "no_config"), 2)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (hf / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(ValueError, match="model.safetensors"):
        kt.build_text_classifier(str(hf), 2)


def test_preset_folder_with_a_missing_file(tiny_bert_preset, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bert_preset, broken)
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match="tokenizer.json"):
        kt.build_text_classifier(str(broken), 2)
    no_backbone = tmp_path / "no_backbone"
    shutil.copytree(tiny_bert_preset, no_backbone)
    (no_backbone / "model.weights.h5").unlink()
    assert (no_backbone / "task.weights.h5").exists()
    with pytest.raises(ValueError, match="missing model.weights.h5"):
        kt.build_text_classifier(str(no_backbone), 2)


def test_text_reading_formats_and_errors(tmp_path):
    rows = [("hello, world\nsecond line", "a"), ("plain", "b")]
    texts, labels = kt.read_labelled_text(write_text_file(tmp_path / "q.csv", rows))
    assert texts == ["hello, world\nsecond line", "plain"] and labels == ["a", "b"]
    tsv = write_text_file(tmp_path / "d.tsv", rows, delimiter="\t")
    assert kt.read_labelled_text(tsv)[1] == ["a", "b"]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "x", "label": 1}\n{"text": "y", "label": 0}\n')
    assert kt.read_labelled_text(jsonl)[1] == ["1", "0"]
    # Integer labels are ordered by value: class id 2 is label "2" (was "10", sorted as text).
    numbers = write_text_file(tmp_path / "n.csv", [(f"t{i}", str(i)) for i in range(11, -1, -1)])
    _, _, names = kt.text_csv_datasets(numbers)
    assert names == [str(i) for i in range(12)]
    mixed = write_text_file(tmp_path / "m.csv", [("x", "10"), ("y", "2"), ("z", "b")])
    assert kt.text_csv_datasets(mixed)[2] == ["10", "2", "b"]  # not all integers: as text

    with pytest.raises(ValueError, match="missing column.*TSV"):
        kt.read_labelled_text(write_text_file(tmp_path / "tab.csv", rows, delimiter="\t"))
    with pytest.raises(ValueError, match="empty 'text'.*lines 3"):
        kt.read_labelled_text(write_text_file(tmp_path / "e.csv", [("ok", "a"), ("  ", "b")]))
    with pytest.raises(ValueError, match="no 'label'"):
        kt.read_labelled_text(write_text_file(tmp_path / "l.csv", [("ok", "")]))
    (tmp_path / "latin.csv").write_bytes(b"text,label\nok,a\ncaf\xe9,b\n")
    with pytest.raises(ValueError, match="line 3.*not UTF-8"):
        kt.read_labelled_text(tmp_path / "latin.csv")
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        kt.read_labelled_text(tmp_path / "empty.csv")
    with pytest.raises(FileNotFoundError):
        kt.read_labelled_text(tmp_path / "missing.csv")
    (tmp_path / "spaced.csv").write_text("text , label\nhi,a\n\nyo,b\n")  # blank line skipped
    assert kt.read_labelled_text(tmp_path / "spaced.csv") == (["hi", "yo"], ["a", "b"])
    (tmp_path / "twice.csv").write_text("text,label,text\nhi,a,yo\n")
    with pytest.raises(ValueError, match="twice.csv: line 1.*\\['text'\\] more than once"):
        kt.read_labelled_text(tmp_path / "twice.csv")
    (tmp_path / "comma.csv").write_text("text,label\nok,a\nHello, world,b\n")
    with pytest.raises(ValueError, match="comma.csv: line 3: 3 fields for 2 columns.*Quote"):
        kt.read_labelled_text(tmp_path / "comma.csv")
    (tmp_path / "blank_first.csv").write_text("\ntext,label\nhi,a\n")
    assert kt.read_labelled_text(tmp_path / "blank_first.csv") == (["hi"], ["a"])
    (tmp_path / "short.csv").write_text("text,label\nhi\nyo,b\n")
    with pytest.raises(ValueError, match="no 'label' \\(lines 2\\)"):
        kt.read_labelled_text(tmp_path / "short.csv")
    lines = ['{"text": "a\u2028b", "label": "x"}', '{"text": "c", "label": "y"}']
    (tmp_path / "sep.jsonl").write_text("\n".join(lines), encoding="utf-8")
    assert kt.read_labelled_text(tmp_path / "sep.jsonl")[0] == ["a\u2028b", "c"]
    (tmp_path / "num.jsonl").write_text('{"text": 5, "label": "x"}\n')
    with pytest.raises(ValueError, match="line 1: 'text' is 5, not a string"):
        kt.read_labelled_text(tmp_path / "num.jsonl")
    mixed = '{"text": "a", "label": 1}\n{"text": "b", "label": "1"}\n'
    (tmp_path / "mixed.jsonl").write_text(mixed)
    with pytest.raises(ValueError, match="labels mix numbers \\(line 1\\) and strings"):
        kt.read_labelled_text(tmp_path / "mixed.jsonl")
    with pytest.raises(ValueError, match="both 'text'"):
        kt.read_labelled_text(tmp_path / "spaced.csv", label_column="text")


def test_unseen_validation_label_and_one_class(tmp_path):
    train = write_text_file(tmp_path / "t.csv", SENTIMENT_ROWS)
    test = write_text_file(tmp_path / "v.csv", [("meh", "neutral")])
    with pytest.raises(ValueError, match="neutral"):
        kt.text_csv_datasets(train, val_path=test)
    with pytest.raises(ValueError, match="at least 2"):
        kt.text_csv_datasets(write_text_file(tmp_path / "o.csv", [("x", "a"), ("y", "a")]))


def test_validation_split_and_class_weights(tmp_path):
    rows = [(f"text {i}", "spam" if i % 4 == 0 else "ham") for i in range(40)]
    train_ds, val_ds, names = kt.text_csv_datasets(
        write_text_file(tmp_path / "s.csv", rows), validation_split=0.25, batch_size=8
    )
    assert sum(int(x.shape[0]) for x, _ in train_ds) == 30
    val_texts = [t.decode() for x, _ in val_ds.as_numpy_iterator() for t in x]
    assert len(val_texts) == 10
    assert val_texts == sorted(val_texts, key=lambda t: int(t.split()[1]))  # file order
    train_texts = {t.decode() for x, _ in train_ds.as_numpy_iterator() for t in x}
    assert len(train_texts | set(val_texts)) == 40
    weights = kt.class_weights(np.array([0, 0, 0, 1]))
    assert weights == pytest.approx({0: 4 / 6, 1: 2.0})
    # Sparse ids as a column were read as one-hot rows of one class: "[1] have no examples".
    assert kt.class_weights(np.array([[0], [0], [0], [1]])) == pytest.approx(weights)
    from_ds = kt.class_weights(train_ds)
    assert from_ds[names.index("spam")] > from_ds[names.index("ham")]
    with pytest.raises(ValueError, match="no examples"):
        kt.class_weights(np.array([0, 0]), num_classes=2)


def test_more_text_argument_errors(tiny_bert_preset, tmp_path):
    with pytest.raises(ValueError, match="exceeds the 64 positions"):
        kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=200)
    rows = write_text_file(tmp_path / "r.csv", SENTIMENT_ROWS[:3])
    with pytest.raises(ValueError, match="no training rows"):
        kt.text_csv_datasets(rows, validation_split=0.9, class_names=["neg", "pos"])
    with pytest.raises(ValueError, match="duplicates"):
        kt.text_csv_datasets(rows, class_names=["pos", "neg", "pos"])
    with pytest.raises(ValueError, match="int class ids"):
        kt.class_weights(np.array([0, -1, 1]))
    with pytest.raises(ValueError, match="out of range"):
        kt.class_weights(np.array([0, 1, 2]), num_classes=2)
    long_row = write_text_file(tmp_path / "long.csv", [("word " * 40000, "a"), ("b", "b")])
    assert len(kt.read_labelled_text(long_row)[0][0]) == 200000
    model = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=16)
    train_ds, _, _ = kt.text_csv_datasets(long_row, batch_size=1)
    assert count_truncated(model, train_ds) == (1, 2)
    import tensorflow as tf

    weighted = train_ds.map(lambda texts, labels: (texts, labels, tf.ones_like(labels[:, 0])))
    assert count_truncated(model, weighted) == (1, 2)
    (tmp_path / "x.keras").write_text("not a zip")
    with pytest.raises(ValueError, match="not a .keras file"):
        kt.load_classifier(tmp_path / "x.keras")


def test_padding_to_the_longest_row_gives_the_same_results(tiny_bert_preset):
    import tensorflow as tf

    from keras_transfer.data.text_padding import pad_to_longest, without_preprocessor

    texts = [text for text, _ in SENTIMENT_ROWS]
    labels = np.array([[label == "neg", label == "pos"] for _, label in SENTIMENT_ROWS], "float32")
    data = tf.data.Dataset.from_tensor_slices((texts, labels)).batch(4)  # fixed batches
    runs = {}
    for padding in (None, "longest"):
        keras.utils.set_random_seed(9)
        model = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=48)
        without_encoder_dropout(model)  # dropout draws depend on the shape; the rest must not
        history = kt.fine_tune(
            model,
            data,
            data,
            head_epochs=0,
            finetune_epochs=2,
            learning_rate=1e-2,
            text_padding=padding,
            verbose=0,
        )["finetune"].history
        runs[padding] = model, history
    (fixed, fixed_history), (longest, history) = runs[None], runs["longest"]
    for metric in ("loss", "val_loss"):
        np.testing.assert_allclose(history[metric], fixed_history[metric], rtol=1e-4)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(longest.output_dense.kernel),
        keras.ops.convert_to_numpy(fixed.output_dense.kernel),
        rtol=1e-4,
        atol=1e-5,
    )
    assert longest.preprocessor is not None  # restored after fit
    padded = list(pad_to_longest(longest, data).as_numpy_iterator())
    assert all(x["token_ids"].shape[1] == 16 for x, _ in padded)  # short texts: 16, not 48
    padded_data = pad_to_longest(longest, data)
    with without_preprocessor(longest):
        padded_loss = longest.evaluate(padded_data, verbose=0)[0]
    np.testing.assert_allclose(padded_loss, longest.evaluate(data, verbose=0)[0], rtol=1e-5)
    bucketed = list(pad_to_longest(longest, data, bucket_by_length=True).as_numpy_iterator())
    assert sum(len(y) for _, y in bucketed) == len(texts)
