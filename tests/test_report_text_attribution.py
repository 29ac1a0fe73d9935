import keras
import numpy as np
import pytest
from conftest import save_tiny_bert, without_encoder_dropout

import keras_transfer as kt
from keras_transfer.report.integrated_gradients import highlight_html, integrated_gradients

NEUTRAL = "the a movie film hello friend meeting lunch tomorrow ok thanks call now".split()


def keyword_rows(count, seed=0):
    """Short texts of neutral words; class 1 exactly when the word "prize" is in them."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(count):
        words = list(rng.choice(NEUTRAL, size=rng.integers(3, 6)))
        if i % 2:
            words.insert(int(rng.integers(0, len(words) + 1)), "prize")
        texts.append(" ".join(words))
        labels.append(i % 2)
    return np.array(texts, dtype=object), keras.utils.to_categorical(labels, 2)


def _tiny_bert(folder):
    """A 2-layer BERT text classifier (hidden 16) saved to `folder` and built from it."""
    save_tiny_bert(folder)
    return kt.build_text_classifier(folder, 2, sequence_length=16)


@pytest.fixture(scope="module")
def keyword_model(tmp_path_factory):
    """A tiny BERT (its own seeded weights, whatever ran before) trained to key on "prize"."""
    keras.utils.set_random_seed(7)
    model = _tiny_bert(str(tmp_path_factory.mktemp("keyword_bert")))
    without_encoder_dropout(model)
    kt.compile_classifier(model, learning_rate=5e-3)
    texts, labels = keyword_rows(96)
    model.fit(texts, labels, batch_size=16, epochs=8, verbose=0)
    return model


def test_scores_add_up_to_the_change_in_probability(keyword_model):
    texts = ["hello friend prize tomorrow", "the movie ok thanks", "call now for a prize"]
    attributions = integrated_gradients(keyword_model, texts, class_index=1, steps=64)
    probabilities = keyword_model.predict(np.array(texts, dtype=object), verbose=0)
    changes = []
    for attribution, row in zip(attributions, probabilities, strict=True):
        change = attribution.probability - attribution.baseline_probability
        changes.append(change)
        assert attribution.probability == pytest.approx(float(row[1]), abs=1e-4)
        assert sum(attribution.token_scores) == pytest.approx(change, rel=0.05, abs=1e-5)
        assert abs(attribution.delta) <= 0.05 * abs(change) + 1e-5
    # With "prize" the probability of class 1 rises well above the baseline's; without, not.
    assert changes[0] > 0.3 and changes[2] > 0.3 and abs(changes[1]) < 0.05, changes
    assert attributions[0].words == ["hello", "friend", "prize", "tomorrow"]


def test_the_key_word_scores_highest(keyword_model):
    texts, labels = keyword_rows(8, seed=1)
    with_prize = [t for t, y in zip(texts, labels.argmax(-1), strict=True) if y == 1]
    for attribution in integrated_gradients(keyword_model, with_prize):
        assert attribution.target == 1
        best = attribution.words[int(np.argmax(attribution.word_scores))]
        assert best == "prize", (attribution.words, attribution.word_scores)


def test_word_pieces_merge_and_highlight(keyword_model):
    (attribution,) = integrated_gradients(keyword_model, "lunch zzz", class_index=0, steps=8)
    assert attribution.tokens == ["lunch", "[UNK]"]
    fragment = highlight_html(["a<b", "c"], [0.5, -1.0])
    assert "a&lt;b" in fragment and "rgba(210,50,50,0.85)" in fragment
    with pytest.raises(ValueError, match="class_index"):
        integrated_gradients(keyword_model, "ok", class_index=2)


def test_explain_command_scores_the_words_of_texts(keyword_model, tmp_path, capsys):
    from keras_transfer.cli.main import main
    from keras_transfer.models.saving import save_classifier

    save_classifier(keyword_model, str(tmp_path / "model.keras"), ["other", "prize"])
    assert main(["explain", str(tmp_path), "ok call now prize", "--class", "prize"]) == 0
    out = capsys.readouterr().out
    assert "prize (" in out and "prize:+" in out
    page = (tmp_path / "explain" / "explain.html").read_text(encoding="utf-8")
    assert page.count('class="word"') == 4
    assert main(["explain", str(tmp_path), "ok", "--class", "nope"]) == 2
    assert "not one of the model's classes" in capsys.readouterr().err


def test_the_same_weights_give_the_same_scores_on_every_backend(tmp_path):
    """A tiny BERT whose weights are drawn with NumPy (the same on every backend): its word
    scores equal the numbers below, measured once on tensorflow, within 1e-3 (jax and torch
    agreed to 1e-5)."""
    model = _tiny_bert(str(tmp_path))
    rng = np.random.default_rng(3)
    model.set_weights(
        [
            np.ones(w.shape, "float32")
            if "gamma" in w.path
            else rng.normal(0, 0.5, w.shape).astype("float32")
            for w in model.weights
        ]
    )
    texts = ["hello friend prize tomorrow", "call now for a prize"]
    expected = [
        (["hello", "friend", "prize", "tomorrow"], [-0.05292, -0.04019, 0.06017, -0.10263]),
        (["call", "now", "[UNK]", "a", "prize"], [0.06051, -0.19613, 0.03441, 0.03093, 0.02572]),
    ]
    attributions = integrated_gradients(model, texts, class_index=1, steps=64)
    for attribution, (words, scores) in zip(attributions, expected, strict=True):
        assert attribution.words == words
        np.testing.assert_allclose(attribution.word_scores, scores, atol=1e-3)
    assert attributions[0].probability == pytest.approx(0.78785, abs=1e-4)
