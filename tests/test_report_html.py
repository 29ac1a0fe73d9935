import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from test_report_gradcam import corner_patch_images, tiny_cnn_classifier

from keras_transfer.report.evaluation import evaluate_classifier
from keras_transfer.report.html import write_run_report

SECTIONS = ["settings", "metrics", "curves", "confusion", "per-class", "top-losses"]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A trained corner-patch classifier and the report.html of its run."""
    images, labels, _ = corner_patch_images(384)
    model = tiny_cnn_classifier()
    history = model.fit(images, labels, batch_size=32, epochs=3, verbose=0)
    val_images, val_labels, _ = corner_patch_images(24, seed=2)
    val_ds = tf.data.Dataset.from_tensor_slices(
        (val_images, np.eye(3, dtype="float32")[val_labels])
    ).batch(8)
    names = ["red", "blue", "none"]
    report = evaluate_classifier(model, val_ds, names)
    output = tmp_path_factory.mktemp("run")
    settings = {"backbone": "tiny", "epochs": 3, "lr": 0.01}
    path = write_run_report(output, model, names, report, {"head": history}, val_ds, settings, k=6)
    return path, report


def _pngs(page):
    return [
        Image.open(io.BytesIO(base64.b64decode(data)))
        for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    ]


def test_report_is_one_self_contained_page(image_run):
    path, report = image_run
    page = open(path, encoding="utf-8").read()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page, section
    assert not re.search(r"(src|href)=\"(https?:|//|file:)", page)  # nothing fetched
    assert "<script" not in page
    images = _pngs(page)
    assert len(images) == 3 + 6  # curves, confusion, per-class, six gallery cards
    assert all(image.format == "PNG" and min(image.size) > 30 for image in images)
    assert f"accuracy <b>{report.accuracy:.4f}</b>" in page
    assert page.count('class="card"') == 6 and "Grad-CAM of the predicted class" in page
    assert '<td class="name">backbone</td><td class="name">&quot;tiny&quot;</td>' in page


def _browser():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "no headless browser found (looked for chromium, chromium-browser, google-chrome); "
        "install one, e.g. `apt-get install chromium`, to check that report.html renders"
    )


def test_report_renders_in_a_headless_browser(image_run, tmp_path):
    browser = _browser()
    path, _ = image_run
    page = open(path, encoding="utf-8").read()
    # A copy with a probe that lists each image's decoded size once the page has loaded.
    probe = (
        "<script>addEventListener('load', () => { const p = document.createElement('pre');"
        " p.id = 'probe'; p.textContent = JSON.stringify({sections: [...document"
        ".querySelectorAll('section')].map(s => s.id), images: [...document.images].map(i =>"
        " [i.complete, i.naturalWidth, i.naturalHeight])}); document.body.append(p); });"
        "</script></body>"
    )
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", probe), encoding="utf-8")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", probed.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert match, dom.stdout[-2000:]
    state = json.loads(match.group(1).replace("&quot;", '"'))
    assert state["sections"] == SECTIONS
    expected = [image.size for image in _pngs(page)]
    assert [(w, h) for _, w, h in state["images"]] == expected  # every image decoded
    assert all(complete for complete, _, _ in state["images"])
    assert not re.search(r"CONSOLE\(\d+\)|Uncaught", dom.stderr), dom.stderr[-2000:]
    shot = tmp_path / "report.png"
    result = subprocess.run(
        [browser, *flags, "--window-size=1280,2400", f"--screenshot={shot}", path.__str__()],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2400, 1280)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # plots, not a blank page


def test_explain_command_writes_overlays(tmp_path, capsys):
    from keras_transfer.cli.main import main
    from keras_transfer.models.saving import save_classifier

    images, _, _ = corner_patch_images(2, seed=3)
    model = tiny_cnn_classifier()
    save_classifier(model, str(tmp_path / "model.keras"), ["red", "blue", "none"])
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"in_{i}.png")
        Image.fromarray(image.astype("uint8")).save(files[-1])
    assert main(["explain", str(tmp_path), *map(str, files), "--class", "red"]) == 0
    written = sorted((tmp_path / "explain").iterdir())
    assert [p.name for p in written] == ["000_in_0_gradcam.png", "001_in_1_gradcam.png"]
    with Image.open(written[0]) as picture:
        assert picture.size == (64, 32)  # the image and its overlay side by side
    assert "in_1.png: red (" in capsys.readouterr().out


def test_top_losses_are_the_highest_cross_entropies():
    from keras_transfer.report.top_losses import top_losses

    images, labels, _ = corner_patch_images(20, seed=4)
    model = tiny_cnn_classifier()
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(6)
    worst = top_losses(model, dataset, k=5)
    probabilities = model.predict(images, verbose=0)
    losses = -np.log(probabilities[np.arange(20), labels])
    assert [item.index for item in worst] == list(np.argsort(-losses)[:5])
    np.testing.assert_allclose([item.loss for item in worst], np.sort(losses)[::-1][:5], rtol=1e-4)
    first = worst[0]
    assert first.true == labels[first.index]
    assert first.predicted == probabilities[first.index].argmax()
    np.testing.assert_array_equal(first.input, images[first.index])
    with pytest.raises(ValueError, match="`k`"):
        top_losses(model, dataset, k=0)
    with pytest.raises(ValueError, match=r"`dataset` must be a tf.data.Dataset .*got a tuple"):
        top_losses(model, (images, labels))  # was per-image "batches" or a Keras shape error
