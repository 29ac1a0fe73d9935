"""`stratified_split`: hold out a validation set in which every class keeps its share."""

from __future__ import annotations

import warnings

import numpy as np


def _per_class_counts(sizes, count):
    """Validation examples per class: `count` in all, shared in proportion to `sizes`
    (largest remainders), at least 1 and at most `size - 1` for each class of 2 or more,
    0 for the others."""
    splittable = sizes >= 2
    total = int(sizes.sum())
    quota = sizes * count / max(total, 1)
    take = np.where(splittable, np.clip(np.floor(quota), 1, np.maximum(sizes - 1, 1)), 0)
    take = take.astype("int64")
    remainder = quota - np.floor(quota)
    # Largest remainders first (ties: lower class id), while classes have room.
    for i in sorted(np.flatnonzero(splittable), key=lambda i: (-remainder[i], i)):
        if take.sum() >= count:
            break
        if take[i] < sizes[i] - 1:
            take[i] += 1
    # The minimum of 1 per class can overshoot `count`: take back from the largest shares.
    for i in sorted(np.flatnonzero(splittable), key=lambda i: (remainder[i], -take[i], i)):
        if take.sum() <= count:
            break
        if take[i] > 1:
            take[i] -= 1
    return take


def stratified_split(labels, count, seed, class_names, where):
    """Indices of a training and a validation part, stratified by class.

    Each class with 2 or more examples gives the validation part its share of `count`
    (rounded by largest remainders; at least one example, and it keeps at least one for
    training); a class with fewer than 2 examples stays in training, with a `UserWarning`
    that names it. Within a class, the examples held out are drawn from
    `np.random.default_rng(seed)`: the same split for the same seed.

    Args:
        labels: int class ids `(n,)`.
        count: int, the number of validation examples wanted in all (e.g. `int(0.2 * n)`).
        seed: int, the split seed.
        class_names: list of str, index = class id.
        where: the data's name for messages (a folder or file).

    Returns:
        `(train_indices, val_indices)`: sorted int64 arrays (file order).

    Raises:
        ValueError: no class has 2 examples, so nothing can be held out.
    """
    labels = np.asarray(labels, dtype="int64")
    sizes = np.bincount(labels, minlength=len(class_names))
    small = [name for name, size in zip(class_names, sizes, strict=True) if 0 < size < 2]
    if small:
        warnings.warn(
            f"{where}: class(es) {small} have fewer than 2 examples, too few to split; they "
            "are all kept for training and the validation data has none of them. Add "
            "examples, or give validation data of your own.",
            UserWarning,
            stacklevel=3,
        )
    take = _per_class_counts(sizes, count)
    if take.sum() == 0:
        raise ValueError(
            f"{where}: no class has 2 or more examples, so `validation_split` leaves no "
            "validation data; add examples or give validation data of your own."
        )
    rng = np.random.default_rng(seed)
    held_out = [
        rng.permutation(np.flatnonzero(labels == c))[: take[c]] for c in range(len(class_names))
    ]
    val = np.sort(np.concatenate(held_out))
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, val
