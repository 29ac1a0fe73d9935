"""`report.html`: one self-contained page per run (images inlined as base64 PNGs, no network).

Sections: settings, metrics, training curves, confusion matrix, per-class metrics, and the
top-losses gallery with Grad-CAM overlays (images) or highlighted words (text).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os

import numpy as np

from keras_transfer.report import plots

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f3f3f3; } td.name, th.name { text-align: left; }
img { max-width: 100%; height: auto; }
.gallery { display: flex; flex-wrap: wrap; gap: 1em; }
.card { border: 1px solid #ddd; padding: .5em; width: 300px; font-size: .9em; }
.card.text { width: 560px; } .word { padding: 0 .15em; border-radius: 3px; }
.note { color: #777; }
"""


def _img(png, alt):
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _figure_img(figure, alt):
    return _img(plots.png_bytes(figure), alt)


def _array_png(pixels):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype="uint8")).save(buffer, format="PNG")
    return buffer.getvalue()


def _settings_table(settings):
    rows = "".join(
        f'<tr><td class="name">{html.escape(str(k))}</td>'
        f'<td class="name">{html.escape(json.dumps(v, default=str))}</td></tr>'
        for k, v in sorted(settings.items())
        if not callable(v)
    )
    return f'<table><tr><th class="name">setting</th><th class="name">value</th></tr>{rows}</table>'


def _metrics_table(data):
    names = data["class_names"]
    rows = [
        f'<tr><td class="name">{html.escape(n)}</td>'
        + "".join(f"<td>{data['per_class'][n][m]:.4f}</td>" for m in ("precision", "recall", "f1"))
        + f"<td>{data['per_class'][n]['support']}</td></tr>"
        for n in names
    ]
    head = (
        '<tr><th class="name">class</th><th>precision</th><th>recall</th><th>f1</th>'
        "<th>support</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _image_cards(model, losses, class_names, progress):
    from PIL import Image

    from keras_transfer.report.gradcam import grad_cam, overlay

    images = np.stack([item.input for item in losses]).astype("float32")
    try:
        heatmaps, _ = grad_cam(model, images, class_index=[item.predicted for item in losses])
        note = "Grad-CAM of the predicted class (red: strongest evidence)"
    except ValueError as error:
        heatmaps, note = None, f"no Grad-CAM: {error}"
    progress.update(len(losses))
    cards = []
    for i, item in enumerate(losses):
        picture = np.clip(images[i], 0, 255).astype("uint8")
        if heatmaps is not None:
            picture = np.concatenate([picture, overlay(images[i], heatmaps[i])], axis=1)
        scale = 140 / max(picture.shape[0], 1)
        size = (max(1, round(picture.shape[1] * scale)), 140)
        picture = np.asarray(Image.fromarray(picture).resize(size, Image.BILINEAR))
        cards.append(
            f'<div class="card">{_img(_array_png(picture), f"example {item.index}")}'
            + _caption(item, class_names)
            + "</div>"
        )
    return note, cards


def _text_cards(model, losses, class_names, progress):
    from keras_transfer.report.integrated_gradients import highlight_html, integrated_gradients

    cards = []
    note = "integrated gradients of the predicted class (green raises it, red lowers it)"
    for item in losses:
        try:
            (attribution,) = integrated_gradients(model, [item.input], class_index=item.predicted)
            body = highlight_html(attribution.words, attribution.word_scores)
        except ValueError as error:
            body = f'{html.escape(item.input)} <span class="note">({html.escape(str(error))})'
            body += "</span>"
        progress.add(1)
        cards.append(f'<div class="card text"><p>{body}</p>{_caption(item, class_names)}</div>')
    return note, cards


def _caption(item, class_names):
    true, predicted = class_names[item.true], class_names[item.predicted]
    return (
        f"<div>#{item.index} true <b>{html.escape(true)}</b> "
        f"({item.true_probability:.2f}), predicted <b>{html.escape(predicted)}</b> "
        f"({item.predicted_probability:.2f}), loss {item.loss:.3f}</div>"
    )


def render_report_html(
    title,
    settings=None,
    report=None,
    histories=None,
    gallery=None,
    gallery_note="",
):
    """The report page as a str.

    Args:
        title: page title.
        settings: dict of run settings (shown as JSON values), or None.
        report: a `ClassificationReport` or its report.json dict, or None.
        histories: anything `plots.normalize_histories` accepts, or None.
        gallery: list of HTML fragments (one card per top-loss example), or None.
        gallery_note: a line above the gallery.

    Returns:
        A complete HTML document; every image is a base64 `data:` URI, nothing is fetched.
    """
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if settings:
        parts += ['<section id="settings"><h2>Settings</h2>', _settings_table(settings)]
        parts += ["</section>"]
    if report is not None:
        data = report.to_dict() if hasattr(report, "to_dict") else report
        parts += [
            '<section id="metrics"><h2>Metrics</h2>',
            f"<p>accuracy <b>{data['accuracy']:.4f}</b> on {data['num_examples']} examples</p>",
            _metrics_table(data),
            "</section>",
        ]
    if histories and any(plots.normalize_histories(histories).values()):  # epochs to plot
        figure = plots.plot_training_curves(histories)
        parts += ['<section id="curves"><h2>Training curves</h2>']
        parts += [_figure_img(figure, "training curves"), "</section>"]
    if report is not None:
        parts += ['<section id="confusion"><h2>Confusion matrix</h2>']
        parts += [_figure_img(plots.plot_confusion_matrix(data), "confusion matrix"), "</section>"]
        parts += ['<section id="per-class"><h2>Per-class metrics</h2>']
        parts += [_figure_img(plots.plot_per_class_metrics(data), "per-class metrics")]
        parts += ["</section>"]
    if gallery:
        parts += ['<section id="top-losses"><h2>Top losses</h2>']
        parts += [f'<p class="note">{html.escape(gallery_note)}</p>']
        parts += ['<div class="gallery">', *gallery, "</div></section>"]
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def write_run_report(
    output, model, class_names, report=None, histories=None, dataset=None, settings=None, k=8
):
    """Write `report.html` for a run into the folder `output`.

    Args:
        output: the run's folder (created if missing).
        model: the trained classifier (an image model from `build_image_classifier` or a
            text model from `build_text_classifier`).
        class_names: list of str.
        report: the run's `ClassificationReport` (or report.json dict), or None.
        histories: `fine_tune`'s histories or history.json content, or None.
        dataset: the labelled validation dataset for the top-losses gallery, or None.
        settings: dict of the run's settings, or None.
        k: examples in the gallery, default 8.

    Returns:
        The path of the written `report.html`.
    """
    import keras

    from keras_transfer.models.compiling import is_text_classifier
    from keras_transfer.report.top_losses import top_losses

    gallery, note = None, ""
    if dataset is not None:
        losses = top_losses(model, dataset, k=k)
        progress = keras.utils.Progbar(len(losses), unit_name="explanation")
        explain = _text_cards if is_text_classifier(model) else _image_cards
        note, gallery = explain(model, losses, class_names, progress)
    title = f"keras-transfer report: {getattr(model, 'name', 'model')}"
    page = render_report_html(title, settings, report, histories, gallery, note)
    os.makedirs(output, exist_ok=True)
    path = os.path.join(output, "report.html")
    with open(f"{path}.tmp", "w", encoding="utf-8") as handle:
        handle.write(page)
    os.replace(f"{path}.tmp", path)
    return path
