"""The fenced shell and Python blocks of README.md, CONTRIBUTING.md and docs/ run as written.

Every ```bash / ```python block is preceded by an HTML comment that says what happens to it:

    <!-- not-runnable: REASON -->     never run here (the reason says why, or what runs it)
    <!-- runnable -->                 run on every backend, as written
    <!-- runnable: OPTION | OPTION | ... -->

OPTIONs: backend names (`tensorflow`, or `tensorflow, jax`) restrict the backends;
`OLD => NEW` replaces text before the run, to point a quickstart at small inputs. NEW may
name `{images}` (a tiny ants / bees image folder with train/ and val/), `{text_train}`,
`{text_test}` (tiny spam / ham CSVs) and `{tiny_bert}` (a tiny random BERT preset folder).

Python blocks run in this test's process, in a temporary working folder. Shell blocks run in
bash from the project root, except those that train: a block with replacements runs in a
temporary folder, and its `keras-transfer ...` commands (bash expands their arguments) go
through `keras_transfer.cli.main.main` in this test's process, in order, without a new
interpreter's start-up each.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
from conftest import PROJECT, write_image_folder, write_text_file

DOCS = [
    PROJECT / "README.md",
    PROJECT / "CONTRIBUTING.md",
    *sorted((PROJECT / "docs").glob("*.md")),
]
BLOCK = re.compile(
    r"(?:<!--[ \t]*(?P<marker>[^\n]*?)[ \t]*-->\n)?```(?P<lang>[a-z]*)\n(?P<code>.*?)```",
    re.DOTALL,
)
SPAM = ["WIN a FREE prize now", "Claim your cash reward, call now", "URGENT you won a prize"]
HAM = ["see you at lunch", "are we still on for tonight", "thanks, that works for me"]


def _blocks():
    """(file, line, language, marker, code) for every fenced block of the documentation."""
    for path in DOCS:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start("code"))
            yield path.relative_to(PROJECT), line, match["lang"], match["marker"], match["code"]


def _parse(marker):
    """A `runnable` marker's (backends, replacements)."""
    options = marker.partition(":")[2].strip()
    backends, replacements = None, []
    for option in filter(None, (o.strip() for o in options.split(" | "))):
        if " => " in option:
            replacements.append(tuple(option.split(" => ", 1)))
        else:
            backends = [name.strip() for name in option.split(",")]
    return backends, replacements


def _runnable():
    for path, line, lang, marker, code in _blocks():
        if marker and marker.startswith("runnable"):
            backends, replacements = _parse(marker)
            marks = [pytest.mark.backends(*backends)] if backends else []
            yield pytest.param(lang, code, replacements, id=f"{path}:{line}", marks=marks)


RUNNABLE = list(_runnable())


def test_every_block_says_whether_it_runs():
    for path, line, lang, marker, _ in _blocks():
        where = f"{path}:{line}"
        if lang not in ("bash", "sh", "python"):
            continue
        assert marker, f"{where}: a {lang} block without <!-- runnable --> / <!-- not-runnable -->"
        assert marker.startswith("runnable") or re.match(r"not-runnable: \S", marker), where
    assert len(RUNNABLE) >= 6


@pytest.fixture
def inputs(tmp_path_factory, tiny_bert_preset):
    root = tmp_path_factory.mktemp("doc_inputs")
    write_image_folder(root / "images" / "train", classes=("ants", "bees"), per_class=4)
    write_image_folder(root / "images" / "val", classes=("ants", "bees"), per_class=2)
    rows = [(text, "spam") for text in SPAM] + [(text, "ham") for text in HAM]
    write_text_file(root / "train.csv", rows * 2)
    write_text_file(root / "test.csv", rows)
    return {
        "images": str(root / "images"),
        "text_train": str(root / "train.csv"),
        "text_test": str(root / "test.csv"),
        "tiny_bert": tiny_bert_preset,
    }


@pytest.mark.parametrize("lang, code, replacements", RUNNABLE)
def test_block_runs(lang, code, replacements, tmp_path, monkeypatch, capsys, request):
    inputs = request.getfixturevalue("inputs") if replacements else {}
    for old, new in replacements:
        assert old in code, f"{old!r} is not in the block"
        code = code.replace(old, new.format(**inputs))
    if lang == "python":
        monkeypatch.chdir(tmp_path)
        exec(compile(code, "<doc block>", "exec"), {"__name__": "__doc_block__"})
        return
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(PROJECT), os.environ.get("PYTHONPATH", "")])
    )
    env["PATH"] = os.pathsep.join([str(pathlib.Path(sys.executable).parent), env["PATH"]])
    if not replacements:  # read-only commands, from the project root
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", code],
            capture_output=True,
            text=True,
            env=env,
            cwd=PROJECT,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        return
    # Record each `keras-transfer` call's arguments as bash expands them, then run them here.
    calls = tmp_path / "calls.jsonl"
    record = (
        "keras-transfer() { python -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "
        f'"$@" >> {calls}; }}\n'
    )
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", record + code],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    from keras_transfer.cli.main import main

    monkeypatch.chdir(tmp_path)
    argvs = [json.loads(line) for line in calls.read_text().splitlines()]
    assert argvs, "the block calls no keras-transfer command"
    for argv in argvs:
        code = main(argv)
        assert code == 0, (
            f"keras-transfer {' '.join(argv)}: exit {code}\n{capsys.readouterr().err[-3000:]}"
        )
