"""Acceptance bars of the image classifier on the real data and weights in ../shared."""

import json
import os
import subprocess
import sys

import pytest
from conftest import PROJECT, require_shared

pytestmark = pytest.mark.slow


def _run_example(tmp_path, *args):
    report = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            str(PROJECT / "examples" / "image_folder_finetune.py"),
            "--data",
            str(require_shared("data", "hymenoptera")),
            "--report",
            str(report),
            *args,
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=1500,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    print(result.stdout[-2000:])
    return json.loads(report.read_text())


def test_hymenoptera_mobilenet_imagenet_reaches_80_percent(tmp_path):
    require_shared("weights", "keras", "mobilenet_2_5_224_tf_no_top.h5")
    report = _run_example(tmp_path, "--backbone", "mobilenet", "--alpha", "0.25")
    assert report["num_examples"] == 153
    assert report["accuracy"] >= 0.80


@pytest.mark.backends("tensorflow")
def test_hymenoptera_efficientnet_lite0_hub_preset_reaches_92_percent(tmp_path):
    preset = require_shared("weights", "keras_hub", "efficientnet_lite0_imagenet")
    report = _run_example(tmp_path, "--backbone", f"hub:{preset}")
    assert report["accuracy"] >= 0.92
