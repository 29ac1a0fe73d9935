"""The learning-rate finder: an exponential sweep that leaves the model as it was."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_transfer as kt
from keras_transfer.training.lr_finder import suggest_learning_rates


def _separable(n=256, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, dim)).astype("float32")
    y = (x @ rng.normal(0, 1, dim) > 0).astype("int64")
    return tf.data.Dataset.from_tensor_slices((x, np.eye(2, dtype="float32")[y])).batch(16)


def _softmax_regression(dim=8):
    inputs = keras.Input((dim,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="categorical_crossentropy")
    return model


def test_sweep_is_exponential_diverges_and_suggests_a_sensible_rate():
    model = _softmax_regression()
    data = _separable()
    model.fit(data, epochs=1, verbose=0)  # the optimizer has state to keep
    optimizer, iterations = model.optimizer, int(model.optimizer.iterations)
    before = [w.copy() for w in model.get_weights()]

    result = kt.lr_find(model, data, start_lr=1e-4, end_lr=1e4, num_steps=80)

    rates = np.array(result.learning_rates)
    assert rates[0] == pytest.approx(1e-4)
    ratios = rates[1:] / rates[:-1]
    np.testing.assert_allclose(ratios, 10 ** (8 / 79), rtol=1e-6)  # 8 decades, 79 steps
    assert result.diverged and len(rates) < 80  # SGD on a softmax blows up well below 1e4
    assert len(result.losses) == len(result.raw_losses) == len(rates)
    assert result.trained == "whole model"
    assert set(result.suggestions) == {"steepest", "minimum/10", "valley"}
    assert result.suggested_lr == result.suggestions["steepest"]
    shown = repr(result)  # one line, not the per-step lists
    assert shown.startswith("LRFinderResult(suggested_lr=") and len(shown) < 300
    assert f"steps={len(rates)}" in shown and "trained='whole model'" in shown
    for rate in result.suggestions.values():
        assert rates[0] <= rate <= rates[-1]
    # Plain SGD on standardised, separable data learns fastest between 0.03 and 30.
    assert 3e-2 <= result.suggested_lr <= 30
    # Nothing changed: weights, the optimizer object and its step count.
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert model.optimizer is optimizer and int(model.optimizer.iterations) == iterations
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01)


class _Batches(keras.utils.PyDataset):
    """The batches of a tf.data dataset, as a PyDataset."""

    def __init__(self, dataset):
        super().__init__()
        self.batches = list(dataset.as_numpy_iterator())

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]


def test_a_pydataset_sweeps_as_its_tf_data_batches():
    data, runs = _separable(), []
    for source in (data, _Batches(data)):
        keras.utils.set_random_seed(0)  # the same initial weights
        runs.append(kt.lr_find(_softmax_regression(), source, end_lr=1e2, num_steps=40))
    assert runs[1].trained == "whole model"  # no backbone: the model trains on the batches
    np.testing.assert_allclose(runs[1].raw_losses, runs[0].raw_losses, rtol=1e-5)
    assert runs[1].suggested_lr == runs[0].suggested_lr
    ids = data.map(lambda x, y: (x, tf.argmax(y, -1)))  # class ids for a one-hot loss
    with pytest.raises(
        ValueError, match=r"class-id labels of shape \(16,\).*\(categorical_crossentropy\)"
    ):
        kt.lr_find(_softmax_regression(), _Batches(ids))


def test_suggestions_from_a_curve():
    rates = np.logspace(-5, 0, 51)
    losses = 1.0 / (1.0 + np.exp(4 * (np.log10(rates) + 2.5)))  # falls fastest at 10^-2.5
    losses[45:] = np.linspace(0.05, 3, 6)  # blows up above 0.3
    losses[:20] += np.random.default_rng(0).normal(0, 0.02, 20)  # batch noise
    chosen = suggest_learning_rates(rates, losses)
    assert 10**-2.75 < chosen["steepest"] < 10**-2.25
    assert 10**-2.5 < chosen["valley"] < rates[45]
    assert chosen["minimum/10"] == pytest.approx(rates[44] / 10)
    # A loss that only rises: the smallest rate.
    rising = suggest_learning_rates(rates[:12], np.linspace(1, 2, 12))
    assert rising["steepest"] == rising["valley"] == rates[0] == rising["minimum/10"]


def test_bad_arguments_are_refused():
    model, data = _softmax_regression(), _separable()
    for bad, match in [
        (dict(start_lr=1.0, end_lr=0.1), "start_lr"),
        (dict(num_steps=1), "num_steps"),
        (dict(method="fastest"), "method"),
        (dict(diverge_factor=1), "diverge_factor"),
    ]:
        with pytest.raises(ValueError, match=match):
            kt.lr_find(model, data, **bad)
    with pytest.raises(ValueError, match="tf.data.Dataset"):
        kt.lr_find(model, (np.zeros((4, 8)), np.zeros((4, 2))))


# jax: the sweep's train_on_batch is covered above and the cached features by test_tuning;
# compiling the backbone's extractor again would add ~40 s.
@pytest.mark.backends("tensorflow", "torch")
def test_image_classifier_head_on_cached_features(tmp_path):
    from conftest import write_image_folder

    write_image_folder(tmp_path / "train", per_class=8, size=(32, 32))
    train_ds, _, _ = kt.image_folder_datasets(
        tmp_path / "train", image_size=32, batch_size=4, validation_split=0.25, seed=1
    )
    model = kt.build_image_classifier(
        "mobilenet", 2, input_shape=(32, 32, 3), weights=None, backbone_kwargs={"alpha": 0.25}
    )
    before = [w.copy() for w in model.get_weights()]

    head = kt.lr_find(model, train_ds, num_steps=30, end_lr=1.0)
    assert head.trained == "head on cached features"
    assert head.learning_rates[0] == pytest.approx(1e-7)
    path = tmp_path / "lr.png"
    figure = head.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.axes[0].get_xscale() == "log"

    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    # A PyDataset of the same batches: its features cached in one pass, the head swept.
    from_pydataset = kt.lr_find(model, _Batches(train_ds), num_steps=30, end_lr=1.0)
    assert from_pydataset.trained == "head on cached features"
    assert len(from_pydataset.raw_losses) == len(head.raw_losses)

    # Infinite data: the features of the first num_steps batches, all the sweep reads
    # (was a feature pass that never ended).
    def forever():
        while True:
            yield from train_ds.as_numpy_iterator()

    for endless in (train_ds.repeat(), forever()):
        swept = kt.lr_find(model, endless, num_steps=30, end_lr=1.0)
        assert swept.trained == "head on cached features" and len(swept.raw_losses) > 2
    # class_weight as fine_tune takes it: "balanced" (was a str reaching Keras:
    # "'str' object has no attribute 'get'"), and keys checked against the classes.
    weighted = kt.lr_find(model, train_ds, num_steps=30, end_lr=1.0, class_weight="balanced")
    assert len(weighted.raw_losses) == len(head.raw_losses)
    # On infinite data "balanced" counts the labels of the num_steps batches the sweep reads
    # (was "`data` is an infinite tf.data.Dataset", a name lr_find does not have).
    endless = kt.lr_find(model, train_ds.repeat(), num_steps=30, class_weight="balanced")
    assert len(endless.raw_losses) > 2
    # Empty data (was "LookupTableImportV2: keys and values cannot be empty tensors").
    for nothing in (train_ds.take(0), train_ds.filter(lambda x, y: False)):
        with pytest.raises(ValueError, match="`train_ds` (is empty|gave no batches)"):
            kt.lr_find(model, nothing, num_steps=10)
    with pytest.raises(ValueError, match="key 'hornets' is not a class"):
        kt.lr_find(model, train_ds, num_steps=30, class_weight={"hornets": 2.0})


@pytest.mark.backends("tensorflow")
def test_text_classifier_frozen_and_whole_restored(tiny_bert_preset, tmp_path):
    from conftest import SENTIMENT_ROWS, write_text_file

    train = write_text_file(tmp_path / "train.csv", SENTIMENT_ROWS)
    train_ds, _, _ = kt.text_csv_datasets(train, batch_size=4)
    model = kt.build_text_classifier(tiny_bert_preset, 2, sequence_length=16, freeze="backbone")
    before = [w.copy() for w in model.get_weights()]
    head = kt.lr_find(model, train_ds, num_steps=12, start_lr=1e-4, end_lr=1.0)
    assert head.trained == "head on cached features" and len(head.learning_rates) >= 2
    kt.unfreeze_backbone(model, top_n=1)
    flags = [(layer.name, layer.trainable) for layer in model.backbone.layers]
    whole = kt.lr_find(model, train_ds, num_steps=4, start_lr=1e-5, end_lr=1e-3)
    assert whole.trained == "whole model" and len(whole.raw_losses) == 4
    assert [(layer.name, layer.trainable) for layer in model.backbone.layers] == flags
    assert model.preprocessor is not None  # put back: the model still takes raw strings
    assert model.predict(["a good movie"], verbose=0).shape == (1, 2)
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
