"""`keras-transfer --help`, `--version` and usage errors answer without TensorFlow / Keras."""

import json
import os
import shutil
import subprocess
import sys

from conftest import PROJECT

HEAVY = ("tensorflow", "keras", "keras_hub", "jax", "torch")

# Runs in a fresh interpreter: every help screen, --version and two usage errors through
# `cli.main`, then reports which heavy packages got imported.
SCRIPT = """
import contextlib, io, json, sys
from keras_transfer.cli.main import main

screens = [[], ["train"], ["train", "image"], ["train", "text"], ["evaluate"], ["predict"],
           ["export"], ["backbones"], ["demo"], ["explain"], ["tune"], ["tune", "image"]]
out = {"help": {}, "codes": {}}
for screen in screens:
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        try:
            main([*screen, "--help"])
        except SystemExit as exit:
            out["codes"][" ".join(screen) or "main"] = exit.code
    out["help"][" ".join(screen) or "main"] = text.getvalue()
for name, argv in {
    "version": ["--version"],
    "top_k": ["predict", "runs/x", "a.jpg", "--top-k", "0"],
    "split": ["train", "text", "--data", "a.csv", "--preset", "p", "--output", "o",
              "--validation-split", "1.5"],
    "missing": ["train", "image", "--data", "no/such/folder", "--backbone", "mobilenet",
                "--output", "o"],
    "freeze": ["train", "text", "--data", "a.csv", "--preset", "p", "--output", "o",
               "--freeze", "top"],
    "tune_batch": ["tune", "text", "--data", "a.csv", "--presets", "p", "--output", "o",
                   "--batch-size", "0"],
    "tune_epochs": ["tune", "image", "--data", "d", "--backbones", "mobilenet", "--output",
                    "o", "--finetune-epochs", "0"],
    "tune_time": ["tune", "image", "--data", "d", "--backbones", "mobilenet", "--output",
                  "o", "--max-time", "-5"],
    "weights_kwarg": ["train", "image", "--data", "d", "--backbone-kwargs", '{"weights": null}'],
}.items():
    text, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(errors):
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code
    out["codes"][name] = code
    out["help"][name] = text.getvalue() + errors.getvalue()
out["heavy"] = sorted(name for name in HEAVY_NAMES if name in sys.modules)
print(json.dumps(out))
""".replace("HEAVY_NAMES", repr(HEAVY))


def _run_script():
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(PROJECT), os.environ.get("PYTHONPATH", "")])
    )
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=PROJECT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_help_version_and_usage_errors_import_no_framework():
    out = _run_script()
    assert out["heavy"] == []
    for screen, text in out["help"].items():
        if screen in ("version", "top_k", "split", "freeze", "missing") or "_" in screen:
            continue
        assert out["codes"][screen] == 0, screen
        assert "usage: keras-transfer" in text and "example" in text, screen
    assert out["help"]["version"].strip() == "keras-transfer 0.1.0"
    assert out["codes"]["top_k"] == 2 and "--top-k: must be an int >= 1" in out["help"]["top_k"]
    assert out["codes"]["split"] == 2 and "between 0 and 1" in out["help"]["split"]
    assert out["codes"]["freeze"] == 2 and "--freeze" in out["help"]["freeze"]
    for name, said in (
        ("tune_batch", "--batch-size: must be an int >= 1, got '0'"),
        ("tune_epochs", "--finetune-epochs: must be an int >= 1, got '0'"),
        ("tune_time", "--max-time: must be a number of seconds > 0, got '-5'"),
        # was a traceback: "got multiple values for argument 'weights'"
        ("weights_kwarg", "--backbone-kwargs: 'weights' cannot be set here (use --weights)"),
    ):
        assert out["codes"][name] == 2 and said in out["help"][name], out["help"][name]
    assert out["codes"]["missing"] == 2
    assert "--data 'no/such/folder' not found" in out["help"]["missing"]


def test_every_option_with_a_default_shows_it():
    import argparse

    from keras_transfer.cli.parser import build_parser as _parser

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    for parser in parsers(_parser()):
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if action.dest in ("help", "version"):
                continue
            assert action.help, f"{parser.prog} {action.option_strings[0]}: no help text"
            if action.default not in (None, False) and not action.required:
                assert "default" in action.help, f"{parser.prog} {action.option_strings[0]}"
            assert "seed's" not in action.help


def test_the_backend_line_is_printed_once(tmp_path, capsys, backend):
    from keras_transfer.cli.main import main

    capsys.readouterr()
    code = main(["evaluate", str(tmp_path), "--data", str(tmp_path)])  # no model.keras there
    err = capsys.readouterr().err
    assert code == 2 and "model.keras" in err
    assert err.count(f"{backend} backend") == 1, err


def test_a_bad_class_names_file_beside_a_keras_file_is_named(tmp_path, capsys):
    import keras_transfer as kt
    from keras_transfer.cli.main import main

    model = kt.build_image_classifier(
        "mobilenet", 2, input_shape=(32, 32, 3), weights=None, backbone_kwargs={"alpha": 0.25}
    )
    model.save(tmp_path / "plain.keras")  # no class names inside
    image = tmp_path / "x.png"
    import PIL.Image

    PIL.Image.new("RGB", (40, 30)).save(image)
    assert main(["predict", str(tmp_path / "plain.keras"), str(image)]) == 2
    assert "saved without class names" in capsys.readouterr().err
    for bad, said in ((["ants"], "1 class names"), ({"0": "ants"}, "JSON list"), ("[", "")):
        (tmp_path / "class_names.json").write_text(json.dumps(bad) if bad != "[" else bad)
        assert main(["predict", str(tmp_path / "plain.keras"), str(image)]) == 2
        err = capsys.readouterr().err
        assert "class_names.json' does not give the model's class names" in err and said in err
    (tmp_path / "class_names.json").write_text('["ants", "bees"]')
    assert main(["predict", str(tmp_path / "plain.keras"), str(image)]) == 0
    assert "ants" in capsys.readouterr().out
    # A folder with a train run's and a tune run's model: which one is not guessed.
    shutil.copy(tmp_path / "plain.keras", tmp_path / "best_model.keras")
    assert main(["predict", str(tmp_path), str(image)]) == 0  # the tune folder's model
    shutil.copy(tmp_path / "plain.keras", tmp_path / "model.keras")
    assert main(["predict", str(tmp_path), str(image)]) == 2
    assert "holds both 'model.keras'" in capsys.readouterr().err
    # An ONNX export's folder: named as such, with where such exports run.
    (tmp_path / "onnx" / "1").mkdir(parents=True)
    (tmp_path / "onnx" / "1" / "model.onnx").write_bytes(b"")
    assert main(["predict", str(tmp_path / "onnx"), str(image)]) == 2
    err = capsys.readouterr().err
    assert "No 'model.keras'" in err and "model.onnx' is an ONNX / LiteRT export" in err
