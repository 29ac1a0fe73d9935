import json

import numpy as np
import pytest
import tensorflow as tf

import keras_transfer as kt
from keras_transfer.report.evaluation import classification_report_from_predictions


def test_report_numbers_from_known_predictions():
    report = classification_report_from_predictions(
        [0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 1, 0], ["a", "b", "c"]
    )
    assert report.accuracy == pytest.approx(4 / 6)
    assert report.precision == pytest.approx([2 / 3, 2 / 3, 0.0])
    assert report.recall == pytest.approx([2 / 3, 1.0, 0.0])
    assert report.support == [3, 2, 1]
    assert report.confusion_matrix == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    data = json.loads(json.dumps(report.to_dict()))
    assert data["per_class"]["b"]["recall"] == 1.0
    text = str(report)
    assert "accuracy: 0.6667" in text and "confusion matrix" in text


class _Constant:
    """A stand-in classifier that predicts from the first pixel of each input."""

    def predict_on_batch(self, x):
        first = np.asarray(x)[:, 0]
        return np.stack([1 - first, first], -1)


def test_evaluate_classifier_single_pass_over_shuffled_data():
    x = np.array([[0.0], [1.0], [1.0], [0.0]] * 8, dtype="float32")
    y = np.eye(2, dtype="float32")[np.array([0, 1, 0, 0] * 8)]
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(32).batch(5)
    report = kt.evaluate_classifier(_Constant(), dataset, ["neg", "pos"])
    assert report.num_examples == 32
    assert report.accuracy == pytest.approx(0.75)
    assert report.confusion_matrix == [[16, 8], [0, 8]]


def test_evaluate_classifier_errors():
    empty = tf.data.Dataset.from_tensor_slices((np.zeros((0, 1)), np.zeros((0, 2)))).batch(2)
    with pytest.raises(ValueError, match="empty"):
        kt.evaluate_classifier(_Constant(), empty, ["a", "b"])
    data = tf.data.Dataset.from_tensor_slices((np.zeros((2, 1)), np.eye(2))).batch(2)
    with pytest.raises(ValueError, match="3 class names"):
        kt.evaluate_classifier(_Constant(), data, ["a", "b", "c"])


def test_evaluate_classifier_refuses_arrays_and_single_examples():
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    x, y = np.zeros((6, 4), "float32"), np.eye(2, dtype="float32")[[0, 1] * 3]
    # Was Keras' "expected shape=(None, 4), found shape=(4,)" in both cases.
    with pytest.raises(ValueError, match=r"`dataset` must be a tf.data.Dataset .*got a tuple"):
        kt.evaluate_classifier(model, (x, y), ["a", "b"])
    single = tf.data.Dataset.from_tensor_slices((x, y))
    with pytest.raises(ValueError, match=r"`dataset` gives single examples of shape \(4,\)"):
        kt.evaluate_classifier(model, single, ["a", "b"])
    report = kt.evaluate_classifier(model, single.batch(4), ["a", "b"])
    assert report.num_examples == 6
