"""The command line's first lines: the backend and its devices, without TensorFlow's C++
start-up lines, and nothing else lost."""

import os
import subprocess
import sys

from keras_transfer.cli.start_up import is_start_up_line

# Lines as this TensorFlow build writes them at import (2.x on a CPU-only machine).
START_UP = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    "I0000 00:00:1796656565.346297    4314 port.cc:153] oneDNN custom operations are on.\n",
    "I0000 00:00:1796656565.346642    4314 cudart_stub.cc:31] Could not find cuda drivers\n",
    "I0000 00:00:1796656565.388687    4314 cpu_feature_guard.cc:227] This TensorFlow binary\n",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild\n",
    "E0000 00:00:1796656568.449804    4314 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n",
]
KEPT = [
    "W0000 00:00:1796656568.449804    4314 port.cc:99] a warning of another level\n",
    "E0000 00:00:1796656568.449804    4314 gpu_device.cc:2] a real device error\n",
    "UserWarning: something Python said\n",
    "port.cc:153] not a log line\n",
]


def test_start_up_lines_are_told_from_others():
    assert all(is_start_up_line(line) for line in START_UP)
    assert not any(is_start_up_line(line) for line in KEPT)


def test_tensorflow_is_imported_with_only_its_start_up_lines_left_out(tmp_path):
    """A stand-in `tensorflow` package writes to file descriptor 2 as the C++ runtime does:
    the start-up lines are left out, the others are printed in order; an import that
    fails still prints them, then raises."""
    package = tmp_path / "tensorflow"
    package.mkdir()
    lines = [START_UP[0], KEPT[0], START_UP[1], KEPT[1], START_UP[4]]
    (package / "__init__.py").write_text(
        "import os, types\n"
        f"os.write(2, {''.join(lines).encode()!r})\n"
        "if os.environ.get('FAIL'):\n"
        "    raise ImportError('no libtensorflow')\n"
        "config = types.SimpleNamespace(list_physical_devices=lambda: os.write(2, "
        f"{START_UP[5].encode()!r}))\n"
    )
    code = "from keras_transfer.cli.start_up import start_tensorflow_quietly as s; s(); s()\n"
    code += "import tensorflow  # already imported, or (TF_CPP_MIN_LOG_LEVEL=0) not quietly"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)

    def run(**extra):
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env={**env, **extra}
        )

    result = run()
    assert result.returncode == 0, result.stderr
    assert result.stderr == KEPT[0] + KEPT[1]
    failed = run(FAIL="1")
    assert failed.returncode == 1
    assert failed.stderr.startswith(KEPT[0] + KEPT[1])
    assert "ImportError: no libtensorflow" in failed.stderr
    everything = run(TF_CPP_MIN_LOG_LEVEL="0")  # TensorFlow's own knob shows them all
    assert everything.stderr == "".join(lines)


def test_a_command_starts_with_its_backend_and_devices(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "keras_transfer.cli.main", "predict", str(tmp_path), "x.jpg"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
        timeout=300,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines(keepends=True)
    assert not [line for line in lines if is_start_up_line(line)]
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    assert lines[0] == (
        f"keras-transfer: Keras {__import__('keras').__version__}, {backend} backend "
        "(KERAS_BACKEND chooses it) on CPU\n"
    )
    assert "No 'model.keras'" in lines[1]
