"""A converged linear head: logistic regression on cached backbone features.

On a frozen backbone, the classifier's head (dropout, then one `Dense` layer with softmax)
is a multinomial logistic regression of the backbone's features. `fit_linear_head` fits it
to convergence with scikit-learn (`LogisticRegressionCV`: L-BFGS, L2 strength picked by
stratified cross-validation on the training features, as linear-probe evaluations do) and
writes the solution into the `Dense` layer's kernel and bias. There is no learning rate and
no epoch count to get wrong: on data nobody tuned for, the head is the tuned linear probe.
Dropout is the identity at inference, so the model's predictions are the probe's.
"""

from __future__ import annotations

import warnings

import numpy as np

from keras_transfer.data.fit_inputs import labels_of

# Inverse L2 strengths tried (on standardised features): 1e-4 ... 1e2, 13 values.
C_GRID = np.logspace(-4, 2, 13)
MAX_FOLDS = 5
# C is searched on at most this many training examples (each class keeps its share, and at
# least MAX_FOLDS examples), then the probe is fitted once on all of them: the search is
# 13 Cs x 5 folds of fits (on 20,000 examples of 256 features, 10 classes, 2-core CPU: 651 s
# searched on all, 476 s on a draw; benchmarks/results.md), and scikit-learn's loss sums
# over the examples, so a C found on fewer suits more as well.
CV_EXAMPLES = 10_000
MAX_ITER = 1000
ABSENT_CLASS_BIAS = -30.0  # logit offset of a class with no training example
STD_FLOOR = 1e-3  # features are divided by at least this share of the largest feature std


def linear_head_layer(head):
    """The head's `Dense` classifier when the head is linear (else None).

    Linear: a chain of layers without weights (dropout, ...) and then one `Dense` layer
    with a bias and a softmax or linear activation, as `build_image_classifier` and
    KerasHub's text classifiers make.
    """
    import keras

    dense = head.layers[-1]
    if not isinstance(dense, keras.layers.Dense) or not dense.use_bias:
        return None
    activation = getattr(dense.activation, "__name__", "")
    if activation not in ("softmax", "linear"):
        return None
    for layer in head.layers[:-1]:
        if layer.weights and not isinstance(layer, keras.layers.InputLayer):
            return None
    return dense


def _features_and_labels(dataset):
    """numpy `(features (n, d) float32, class ids (n,) int64, weights (n,) or None)` from
    one pass over a dataset of `(features, labels[, sample_weights])` batches, the labels
    one-hot `(batch, num_classes)` or class ids `(batch,)` or `(batch, 1)`."""
    xs, ys, ws = [], [], []
    for batch in dataset.as_numpy_iterator():
        labels = np.asarray(batch[1])
        if labels.ndim not in (1, 2):
            raise ValueError(
                f"Labels must be one-hot, float32 (batch, num_classes), or class ids (batch,) "
                f"for a sparse loss; got shape {labels.shape}. Use keras.utils.to_categorical "
                "or our dataset functions."
            )
        xs.append(np.asarray(batch[0], dtype="float32").reshape(len(batch[0]), -1))
        ys.append(labels_of(labels))
        if len(batch) > 2:
            ws.append(np.asarray(batch[2], dtype="float64").reshape(-1))
    if not xs:
        raise ValueError("No training examples to fit the head on (the dataset is empty).")
    weights = np.concatenate(ws) if ws else None
    return np.concatenate(xs), np.concatenate(ys).astype("int64"), weights


def fit_linear_head(head, train_features, class_weight=None, seed=0):
    """Fit the head's `Dense` layer as a cross-validated L2 logistic regression.

    Args:
        head: the head model of a `FeatureSplit` (features -> probabilities), whose
            layers are the classifier's own; it must be linear (`linear_head_layer`).
        train_features: `tf.data.Dataset` of `(features, one_hot_labels[, sample_weights])`
            batches, features float32 `(batch, d)`; read once, in any order.
        class_weight: dict `{class_id: weight}` or None; multiplies the examples' weights.
        seed: int, seeds the cross-validation folds; default 0.

    Returns:
        dict with `"C"` (the chosen inverse L2 strength on standardised features) and
        `"folds"` (the number of cross-validation folds; 0 when one class is all there is
        or a class has a single example, then `C` is 1.0 without a search) and
        `"searched"` (how many examples the search ran on: all up to `CV_EXAMPLES`, else a
        stratified draw of that many; the probe is then fitted on all with that `C`) of
        `"examples"` (the training examples).

    Raises:
        ValueError: the head is not linear, the dataset is empty, or a class id is not
            one of the head's classes.
    """
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    dense = linear_head_layer(head)
    if dense is None:
        raise ValueError(
            f"The head of {head.name!r} is not one Dense layer (after weight-free layers); "
            "train it by gradient descent instead (pass head_epochs=N)."
        )
    x, y, weights = _features_and_labels(train_features)
    num_classes = int(dense.units)
    outside = y[(y < 0) | (y >= num_classes)]
    if outside.size:
        raise ValueError(
            f"The training labels hold class id {int(outside[0])}, and the model has "
            f"{num_classes} classes (ids 0 to {num_classes - 1}): build it with as many "
            "classes as the data has."
        )
    if class_weight:
        per_class = np.array([float(class_weight.get(c, 1.0)) for c in range(num_classes)])
        weights = per_class[y] * (1.0 if weights is None else weights)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    # A near-constant feature is not scaled up (its weight would blow up once unscaled).
    scale = np.maximum(scale, STD_FLOOR * max(float(scale.max()), 1e-12))
    standardised = (x - mean) / scale
    present = np.unique(y)
    counts = np.bincount(y, minlength=num_classes)[present]
    folds = int(min(MAX_FOLDS, counts.min()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's ConvergenceWarning at the weakest Cs
        if len(present) < 2:
            coef, intercept, c_value, folds = np.zeros((1, x.shape[1])), np.zeros(1), 1.0, 0
        elif folds < 2:
            model = LogisticRegression(C=1.0, max_iter=MAX_ITER)
            model.fit(standardised, y, sample_weight=weights)
            coef, intercept, c_value, folds = model.coef_, model.intercept_, 1.0, 0
        else:
            rows = _search_rows(y, seed)
            folds = int(min(MAX_FOLDS, np.bincount(y[rows])[present].min()))
            model = LogisticRegressionCV(
                Cs=C_GRID,
                cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                scoring="neg_log_loss",
                max_iter=MAX_ITER,
                refit=len(rows) == len(y),
            )
            model.fit(
                standardised[rows],
                y[rows],
                sample_weight=None if weights is None else weights[rows],
            )
            # C_ is one C per class up to scikit-learn 1.9, one float from 1.10 on.
            c_value = float(np.ravel(model.C_)[0])
            if len(rows) < len(y):  # C found on a share of the examples: fit on all
                model = LogisticRegression(C=c_value, max_iter=MAX_ITER)
                model.fit(standardised, y, sample_weight=weights)
            coef, intercept = model.coef_, model.intercept_
    searched = len(y) if folds == 0 else len(rows)
    if len(present) == 2:  # sklearn's one row w: p(second) = sigmoid(w.x + b)
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    kernel = np.zeros((x.shape[1], num_classes))
    bias = np.full(num_classes, ABSENT_CLASS_BIAS)
    if len(present) == 1:
        bias[present] = 0.0
    else:
        # Undo the standardisation: w.(x - mean) / scale + b.
        kernel[:, present] = (coef / scale).T
        bias[present] = intercept - (coef / scale) @ mean
    dense.kernel.assign(kernel.reshape(dense.kernel.shape).astype(dense.kernel.dtype))
    dense.bias.assign(bias.astype(dense.bias.dtype))
    return {"C": c_value, "folds": folds, "searched": searched, "examples": len(y)}


def _search_rows(y, seed):
    """Indices of the examples C is searched on: all of them up to `CV_EXAMPLES`, else a
    draw (from `seed`) of each class's share of `CV_EXAMPLES`, at least `MAX_FOLDS` of
    each class (all of a class with fewer), in index order."""
    if len(y) <= CV_EXAMPLES:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    rows = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        keep = max(min(len(members), MAX_FOLDS), round(len(members) * CV_EXAMPLES / len(y)))
        rows.append(rng.choice(members, keep, replace=False))
    return np.sort(np.concatenate(rows))
