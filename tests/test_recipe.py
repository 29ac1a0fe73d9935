"""The default recipe: warmup schedules, the linear-probe head, the compiled optimizer kept,
and the validation-decided fine-tuning stage."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.linear_model import LogisticRegression

import keras_transfer as kt
from keras_transfer.models.schedules import WarmupDecay
from keras_transfer.training.linear_probe import fit_linear_head
from keras_transfer.training.stage_compiling import learning_rate_value
from keras_transfer.training.stages import finetune_budget


def _rates(schedule, steps):
    return np.array([float(keras.ops.convert_to_numpy(schedule(s))) for s in steps])


def test_warmup_decay_warms_up_linearly_then_decays_to_zero():
    linear = WarmupDecay(1.0, total_steps=100)  # 10 steps of warmup (10 %)
    np.testing.assert_allclose(_rates(linear, [0, 4, 9]), [0.1, 0.5, 1.0], rtol=1e-6)
    np.testing.assert_allclose(_rates(linear, [10, 55, 100, 150]), [1.0, 0.5, 0, 0], atol=1e-6)
    cosine = WarmupDecay(2.0, total_steps=20, warmup_steps=0, decay="cosine")
    np.testing.assert_allclose(_rates(cosine, [0, 10, 20]), [2.0, 1.0, 0.0], atol=1e-6)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(cosine))
    assert again.get_config() == cosine.get_config()
    for bad in (dict(peak_learning_rate=0), dict(total_steps=0), dict(warmup_steps=200)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            WarmupDecay(**{"peak_learning_rate": 1.0, "total_steps": 100, **bad})
    with pytest.raises(ValueError, match="decay"):
        WarmupDecay(1.0, 10, decay="step")


def _head(num_classes, dim):
    features = keras.Input((dim,))
    dropped = keras.layers.Dropout(0.5)(features)
    return keras.Model(features, keras.layers.Dense(num_classes, activation="softmax")(dropped))


@pytest.mark.parametrize("num_classes", [2, 3])
def test_linear_probe_is_sklearns_cross_validated_logistic_regression(num_classes):
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 2, (num_classes, 5))
    y = np.repeat(np.arange(num_classes), 30)
    x = (centers[y] + rng.normal(0, 2, (len(y), 5))).astype("float32") * [1, 10, 0.1, 1, 3]
    data = tf.data.Dataset.from_tensor_slices((x, np.eye(num_classes)[y])).shuffle(90).batch(8)
    head = _head(num_classes, 5)
    chosen = fit_linear_head(head, data)
    assert chosen["folds"] == 5
    mean, scale = x.mean(0), x.std(0)
    reference = LogisticRegression(C=chosen["C"], max_iter=1000).fit((x - mean) / scale, y)
    np.testing.assert_allclose(
        head.predict(x, verbose=0), reference.predict_proba((x - mean) / scale), atol=2e-3
    )


def test_linear_probe_searches_c_on_a_stratified_draw_of_many_examples(monkeypatch):
    """Above `CV_EXAMPLES` examples, C is searched on a draw that keeps every class (the
    rare one with at least MAX_FOLDS examples), then the probe is fitted on all of them."""
    from keras_transfer.training import linear_probe

    monkeypatch.setattr(linear_probe, "CV_EXAMPLES", 60)
    rng = np.random.default_rng(2)
    y = np.concatenate([np.zeros(150, "int64"), np.ones(100, "int64"), np.full(6, 2)])
    x = (rng.normal(0, 1.5, (3, 4))[y] + rng.normal(0, 1, (len(y), 4))).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, np.eye(3)[y])).shuffle(256, seed=1).batch(32)
    head = _head(3, 4)
    chosen = fit_linear_head(head, data)
    assert chosen["examples"] == 256 and 60 <= chosen["searched"] <= 64
    assert chosen["folds"] == 5  # the class of 6 kept 5 of them at least
    mean, scale = x.mean(0), x.std(0)
    reference = LogisticRegression(C=chosen["C"], max_iter=1000).fit((x - mean) / scale, y)
    np.testing.assert_allclose(  # fitted on all 256 examples with the C found
        head.predict(x, verbose=0), reference.predict_proba((x - mean) / scale), atol=2e-3
    )


def test_linear_probe_weights_classes_and_handles_an_absent_class():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (40, 3)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")  # classes 0 and 1; class 2 has no example
    data = tf.data.Dataset.from_tensor_slices((x, np.eye(3)[y])).batch(16)
    head = _head(3, 3)
    fit_linear_head(head, data)
    probabilities = head.predict(x, verbose=0)
    assert probabilities[:, 2].max() < 1e-9 and (probabilities.argmax(1) == y).mean() > 0.9
    weighted = _head(3, 3)
    fit_linear_head(weighted, data, class_weight={0: 1.0, 1: 20.0})
    assert (weighted.predict(x, verbose=0).argmax(1) == 1).sum() > (
        probabilities.argmax(1) == 1
    ).sum()


def _images(tmp_path):
    from conftest import write_image_folder

    write_image_folder(tmp_path / "train", per_class=6, size=(32, 32))
    write_image_folder(tmp_path / "val", per_class=3, size=(32, 32))
    return kt.image_folder_datasets(tmp_path, image_size=32, batch_size=4, seed=3)


def _model(**kwargs):
    return kt.build_image_classifier(
        "mobilenet", 2, input_shape=(32, 32, 3), weights=None, backbone_kwargs={"alpha": 0.25},
        **kwargs,
    )  # fmt: skip


class _StageOptimizer(keras.callbacks.Callback):
    """Remembers the optimizer, loss and weights of the last `fit` at its start."""

    def on_train_begin(self, logs=None):
        self.optimizer, self.loss = self.model.optimizer, self.model.loss
        self.weights = [np.copy(w) for w in self.model.get_weights()]


@pytest.mark.backends("tensorflow", "torch")  # jax: minutes of CPU; test_recipe_edge_cases
def test_default_fine_tune_probes_the_head_then_fine_tunes_with_validation_deciding(
    tmp_path, capsys
):
    train_ds, val_ds, _ = _images(tmp_path)
    model = _model()  # default augmentation: the head is probed on inference-mode features
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    stage_2 = _StageOptimizer()
    histories = kt.fine_tune(model, train_ds, val_ds, callbacks=[stage_2], verbose=2)
    head = histories["head"].history
    assert histories["head"].epoch == [0] and set(head) >= {"loss", "val_loss", "val_accuracy"}
    finetune = histories["finetune"]
    budget = finetune_budget(train_ds)  # 3 batches an epoch: 67 epochs wanted, 30 at most
    assert budget == 30 and 1 <= len(finetune.epoch) <= budget and finetune.epoch[0] == 1
    # The stage-2 optimizer: the compiled Adam, peaking at 0.1x its rate, warmed up; the
    # model is left compiled as it was.
    schedule = stage_2.optimizer._learning_rate
    assert isinstance(stage_2.optimizer, keras.optimizers.Adam)
    assert isinstance(schedule, WarmupDecay) and schedule.total_steps == 3 * budget
    assert learning_rate_value(model.optimizer) == pytest.approx(1e-3)
    assert schedule.peak_learning_rate == pytest.approx(1e-4) and schedule.decay == "cosine"
    # Validation decided: the model kept is the one with the lowest val_loss seen.
    best = min(head["val_loss"] + finetune.history["val_loss"])
    assert model.evaluate(val_ds, verbose=0, return_dict=True)["loss"] == pytest.approx(
        best, rel=1e-4, abs=1e-5
    )
    out, losses = capsys.readouterr().out, finetune.history["val_loss"]
    if min(losses) < head["val_loss"][0]:  # and the outcome is said, either way
        epoch = finetune.epoch[losses.index(min(losses))] + 1
        assert f"kept the weights of its best epoch, {epoch}." in out
    else:
        assert "kept the model with the frozen backbone" in out
    assert kt.fine_tune(_model(), train_ds, verbose=0).keys() == {"head"}  # no val: no stage 2


@pytest.mark.backends("tensorflow", "torch")  # jax: minutes of CPU; test_recipe_edge_cases
def test_fine_tune_keeps_the_compiled_optimizer_and_reverts_a_worse_stage_2(tmp_path, capsys):
    train_ds, val_ds, _ = _images(tmp_path)
    model = _model(augmentation=None)
    kt.compile_classifier(model, keras.optimizers.SGD(learning_rate=0.05, momentum=0.5))
    stage_2 = _StageOptimizer()
    kt.fine_tune(
        model, train_ds, val_ds, finetune_learning_rate=1e4, callbacks=[stage_2], verbose=1
    )  # a rate that wrecks the backbone: stage 2 is undone
    assert "kept the model with the frozen backbone" in capsys.readouterr().out
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert float(model.optimizer.momentum) == 0.5
    assert model.get_layer("backbone").trainable is False
    for kept, before in zip(model.get_weights(), stage_2.weights, strict=True):
        np.testing.assert_array_equal(kept, before)
    kt.fine_tune(
        model, train_ds, val_ds, head_epochs=1, finetune_epochs=1, callbacks=[stage_2], verbose=0
    )
    assert isinstance(stage_2.optimizer, keras.optimizers.SGD)
    assert learning_rate_value(stage_2.optimizer) == pytest.approx(0.05 * 0.1)
    assert learning_rate_value(model.optimizer) == pytest.approx(0.05)


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_batch_augmentation_mixes_images_and_labels_in_stage_2(tmp_path, kind):
    from keras_transfer.data.batch_augmentation import mix_batches
    from keras_transfer.features.feature_cache import epoch_pipeline

    train_ds, val_ds, _ = _images(tmp_path)
    mixed = mix_batches(train_ds, kind, seed=1)
    epoch = tf.constant(0, "int64")
    changed = []
    for (images, labels), (plain, _) in zip(
        epoch_pipeline(mixed, epoch), epoch_pipeline(train_ds, epoch), strict=True
    ):  # the same epoch's batches, mixed and not
        assert images.dtype == tf.float32 and labels.shape == (4, 2)
        np.testing.assert_allclose(labels.numpy().sum(1), 1.0, rtol=1e-5)
        assert labels.numpy().min() >= 0 and labels.numpy().max() <= 1
        changed.append(not np.allclose(images.numpy(), plain.numpy()))
    assert any(changed)  # pairs of images mixed (their labels too, when of two classes)
    stage_2 = _StageOptimizer()
    kt.fine_tune(
        _model(augmentation=None), train_ds, val_ds, head_epochs=0, finetune_epochs=1,
        batch_augmentation=kind, label_smoothing=0.1, callbacks=[stage_2], verbose=0,
    )  # fmt: skip
    assert stage_2.loss.get_config()["label_smoothing"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="batch_augmentation"):
        mix_batches(train_ds, "rotate")


def test_recipe_edge_cases(tmp_path):
    train_ds, val_ds, _ = _images(tmp_path)
    # mixed_float16 wraps the optimizer in a LossScaleOptimizer: stage 2 rebuilds the inner one.
    model = _model(augmentation=None, mixed_precision="float16")
    kt.fine_tune(model, train_ds, val_ds, finetune_epochs=1, verbose=0)
    assert learning_rate_value(model.optimizer) == pytest.approx(1e-3)
    # A checkpoint folder keeps the files that are not the checkpoint's.
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "mine.weights.h5").write_bytes(b"x")
    (folder / "notes.txt").write_text("x")
    kt.fine_tune(_model(), train_ds, val_ds, finetune_epochs=1, checkpoint_dir=folder, verbose=0)
    assert sorted(p.name for p in folder.iterdir()) == ["mine.weights.h5", "notes.txt"]
    with pytest.raises(ValueError, match="`batch_augmentation` mixes batches in tf.data"):
        kt.fine_tune(_model(), iter([]), batch_augmentation="mixup", verbose=0)
    ids = train_ds.map(lambda x, y: (x, tf.argmax(y, -1)))
    for head_epochs in ("auto", 1):  # before the probe, and before Keras' rank mismatch
        ids_error = r"`train_ds` has class-id labels .*to_categorical.*label_mode='categorical'"
        with pytest.raises(ValueError, match=ids_error):
            kt.fine_tune(_model(), ids, head_epochs=head_epochs, finetune_epochs=0, verbose=0)
    wide = val_ds.map(lambda x, y: (x, tf.concat([y, y], -1)))
    with pytest.raises(ValueError, match="`val_ds` has one-hot labels of 4 columns, and the "):
        kt.fine_tune(_model(), train_ds, wide, verbose=0)
    column = train_ds.map(lambda x, y: (x, tf.argmax(y, -1)[:, None]))  # ids (batch, 1)
    with pytest.raises(ValueError, match=r"class-id labels of shape \(None, 1\).*y\[:, 0\]"):
        kt.fine_tune(_model(), column, verbose=0)
    with pytest.raises(ValueError, match="`val_ds` is an infinite tf.data.Dataset"):
        kt.fine_tune(_model(), train_ds, val_ds.repeat(), verbose=0)  # was a hang
    # Empty validation data (was a fine-tuning stage with nothing to compare on tensorflow,
    # "The input 'features' is not optional" on torch, a StopIteration on jax).
    empty = r"`val_ds` (is empty \(a tf.data.Dataset of 0 batches\)|gave no batches).*val_ds=None"
    for nothing in (val_ds.take(0), val_ds.filter(lambda x, y: False)):  # cardinality 0, unknown
        for cache in ("auto", False):
            with pytest.raises(ValueError, match=empty):
                kt.fine_tune(_model(), train_ds, nothing, head_epochs=1, cache_features=cache)
    with pytest.raises(ValueError, match=r"gives single examples .* train_ds.batch\(32\)"):
        kt.fine_tune(_model(), train_ds.unbatch(), verbose=0)
    # Class ids train a model compiled with a sparse loss (a name, a function): the probe
    # and the gradient head, ids (batch,) or (batch, 1) alike.
    val_ids = val_ds.map(lambda x, y: (x, tf.argmax(y, -1)))
    val_column = val_ds.map(lambda x, y: (x, tf.argmax(y, -1)[:, None]))
    heads = []
    for loss, data, val, head_epochs in (
        ("sparse_categorical_crossentropy", ids, val_ids, "auto"),
        ("sparse_categorical_crossentropy", column, val_column, "auto"),
        ("sparse_categorical_crossentropy", column, val_ids, "auto"),  # the two forms mixed
        (keras.losses.sparse_categorical_crossentropy, ids, val_ids, 1),
    ):
        keras.utils.set_random_seed(1)
        model = _model()
        model.compile("adam", loss, metrics=["accuracy"])
        kt.fine_tune(model, data, val, head_epochs=head_epochs, finetune_epochs=0, verbose=0)
        assert model.loss is loss
        heads.append(model.predict(val_ds, verbose=0))
    np.testing.assert_allclose(heads[1], heads[0], atol=5e-3)  # (batch, 1): the same probe
    np.testing.assert_allclose(heads[2], heads[0], atol=5e-3)
    sparse = _model()
    sparse.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="`label_smoothing` makes the loss a categorical"):
        kt.fine_tune(sparse, ids, label_smoothing=0.1, verbose=0)
    with pytest.raises(ValueError, match=r"one-hot labels of 2 columns.*tf.argmax\(y, -1\)"):
        kt.fine_tune(sparse, train_ds, verbose=0)
    with pytest.raises(ValueError, match="labels hold class id 2, and the model has 2 classes"):
        kt.fine_tune(sparse, ids.map(lambda x, y: (x, y + 1)), finetune_epochs=0, verbose=0)
