"""`keras-transfer explain`: Grad-CAM overlays for image files, word scores for texts."""

from __future__ import annotations

import html
import os

import numpy as np


def _class_index(class_name, class_names):
    if class_name is None:
        return None
    if class_name not in class_names:
        raise ValueError(f"--class {class_name!r} is not one of the model's classes {class_names}.")
    return class_names.index(class_name)


def explain_images(model, class_names, paths, images, output, class_name=None):
    """Write `<output>/NNN_<file stem>_gradcam.png` (the image beside its Grad-CAM overlay;
    NNN its place in `paths` from 000, so that two files of one name do not collide).

    Args:
        model: an image classifier from `build_image_classifier`.
        class_names: list of str.
        paths: the image files' paths (names the outputs).
        images: `(n, height, width, 3)` pixels in [0, 255], decoded as for training.
        output: folder to write into (created).
        class_name: the class to explain; default each image's predicted class.

    Returns:
        The written paths, one per image.
    """
    from PIL import Image

    from keras_transfer.report.gradcam import grad_cam, overlay

    index = _class_index(class_name, class_names)
    images = np.asarray(images, dtype="float32")
    heatmaps, probabilities = grad_cam(model, images, class_index=index)
    os.makedirs(output, exist_ok=True)
    written = []
    for number, (path, image, heatmap) in enumerate(zip(paths, images, heatmaps, strict=True)):
        target = index if index is not None else int(probabilities[number].argmax())
        stem = os.path.splitext(os.path.basename(path))[0]
        picture = np.concatenate(
            [np.clip(image, 0, 255).astype("uint8"), overlay(image, heatmap)], 1
        )
        destination = os.path.join(output, f"{number:03d}_{stem}_gradcam.png")
        Image.fromarray(picture).save(destination)
        written.append(destination)
        print(
            f"{path}: {class_names[target]} ({probabilities[number, target]:.3f}) -> {destination}"
        )
    return written


def explain_texts(model, class_names, texts, output, class_name=None):
    """Print each text's word scores and write `<output>/explain.html` with the words shaded.

    Args:
        model: a text classifier from `build_text_classifier`.
        class_names: list of str.
        texts: list of str.
        output: folder to write into (created).
        class_name: the class to explain; default each text's predicted class.

    Returns:
        The path of `explain.html`.
    """
    from keras_transfer.report.integrated_gradients import highlight_html, integrated_gradients

    attributions = integrated_gradients(
        model, texts, class_index=_class_index(class_name, class_names)
    )
    rows = []
    for item in attributions:
        words = " ".join(f"{w}:{s:+.3f}" for w, s in zip(item.words, item.word_scores, strict=True))
        print(f"{class_names[item.target]} ({item.probability:.3f}): {words}")
        rows.append(
            f"<p><b>{html.escape(class_names[item.target])}</b> ({item.probability:.3f}): "
            f"{highlight_html(item.words, item.word_scores)}</p>"
        )
    os.makedirs(output, exist_ok=True)
    path = os.path.join(output, "explain.html")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>explain</title>'
            "<style>body{font-family:sans-serif}.word{padding:0 .15em;border-radius:3px}"
            "</style></head><body>\n<p>Integrated gradients: green raises the class shown, red "
            "lowers it.</p>\n" + "\n".join(rows) + "\n</body></html>\n"
        )
    print(f"Wrote {path}")
    return path
