"""Benchmark: the default head (`linear_probe.fit_linear_head`) on many examples.

    python benchmarks/linear_probe.py --sizes 20000 --features 256 --classes 10

For each size, features are drawn at random around one centre per class (`_features`:
float32, correlated and non-negative, 256 wide as MobileNet alpha=0.25's pooled features,
overlapping classes) and the probe is fitted twice in this
process: searching C on every example (`CV_EXAMPLES` unbounded, as before) and with the
default `CV_EXAMPLES` (C searched on a stratified draw, then one fit on all). Prints one
Markdown row per size: the seconds of each, the C each chose and their accuracy on 5,000
fresh examples of the same classes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _features(size, width, classes, separation, seed=0):
    """`size` examples: class centres plus noise, mixed by a random rotation after a
    decaying spectrum, then a ReLU: correlated, non-negative features like a CNN's pooled
    ones (isotropic noise alone converges in a dozen L-BFGS steps, real features do not)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, width))
    rotation, _ = np.linalg.qr(rng.normal(size=(width, width)))
    spectrum = 1.0 / (1.0 + np.arange(width))
    labels = rng.integers(0, classes, size)
    features = centres[labels] * separation + rng.normal(0, 1, (size, width))
    return np.maximum((features * spectrum) @ rotation, 0).astype("float32"), labels


def _fit(features, labels, held_out, classes, cv_examples):
    import keras
    import tensorflow as tf

    from keras_transfer.training import linear_probe

    linear_probe.CV_EXAMPLES = cv_examples
    inputs = keras.Input((features.shape[1],))
    head = keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(inputs))
    data = tf.data.Dataset.from_tensor_slices((features, np.eye(classes)[labels])).batch(1024)
    start = time.perf_counter()
    chosen = linear_probe.fit_linear_head(head, data)
    seconds = time.perf_counter() - start
    x, y = held_out
    accuracy = float((head.predict(x, verbose=0).argmax(1) == y).mean())
    return seconds, chosen["C"], accuracy


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000")
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument(
        "--separation", type=float, default=0.2, help="class centres' scale (noise std 1)"
    )
    args = parser.parse_args()
    from keras_transfer.training.linear_probe import CV_EXAMPLES

    print("| examples | C on all: s | C | acc | C on a draw: s | C | acc |")
    print("|---|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        features, labels = _features(size, args.features, args.classes, args.separation)
        held_out = _features(size + 5000, args.features, args.classes, args.separation)
        held_out = (held_out[0][size:], held_out[1][size:])  # the same centres, new draws
        every = _fit(features, labels, held_out, args.classes, float("inf"))
        drawn = _fit(features, labels, held_out, args.classes, CV_EXAMPLES)
        cells = [f"{every[0]:.1f}", f"{every[1]:.3g}", f"{every[2]:.3f}"]
        cells += [f"{drawn[0]:.1f}", f"{drawn[1]:.3g}", f"{drawn[2]:.3f}"]
        print(f"| {size:,} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
