"""What the command line prints as it starts: the backend and its devices, without
TensorFlow's C++ start-up lines.

TensorFlow's C++ runtime logs a few lines when it is imported and when it first looks for
devices (oneDNN, CUDA drivers, CPU instructions), before its log level is read: on these
builds `TF_CPP_MIN_LOG_LEVEL` does not silence them, and every command printed them. The
command line imports TensorFlow with its standard error captured, leaves those lines out,
and prints everything else. What they said that matters (which devices run the model)
is in the command's own first line. `TF_CPP_MIN_LOG_LEVEL=0` shows them all.
"""

from __future__ import annotations

import os
import re
import sys

# The start-up lines left out: absl's note, then INFO and CUDA-probe lines by source file.
START_UP_LINES = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "To enable the following instructions:",
)
START_UP_SOURCES = re.compile(
    r"[IE]\d{4} [\d:.]+ +\d+ (port|cudart_stub|cpu_feature_guard|cuda_platform)\.cc:\d+\] "
)


def is_start_up_line(line):
    """Whether `line` (str, one line of standard error) is one of TensorFlow's C++ start-up
    lines: absl's note, a CPU-instructions note, or an `I`/`E` line of the oneDNN, CUDA stub,
    CPU feature or CUDA platform probes."""
    return line.startswith(START_UP_LINES) or START_UP_SOURCES.match(line) is not None


def start_tensorflow_quietly():
    """Import TensorFlow and let it find its devices, with its C++ start-up lines
    (`is_start_up_line`) left out of standard error; every other line it wrote is printed
    after, in order. Nothing happens when TensorFlow is imported already or not installed,
    or when `TF_CPP_MIN_LOG_LEVEL` is "0".

    Raises:
        what importing TensorFlow raises (the captured lines are printed first).
    """
    import importlib.util
    import tempfile

    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        return
    if importlib.util.find_spec("tensorflow") is None:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA probe logs here, once
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not is_start_up_line(line)))
            sys.stderr.flush()


def device_summary():
    """Where the backend in use runs the model: `"CPU"`, `"1 GPU"`, `"2 GPUs"`, ..."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # Physical, not logical devices (`distribution.local_devices`): listing those
        # starts TensorFlow's runtime, and `--devices N` may still set up virtual CPUs.
        count, kind = len(tf.config.list_physical_devices("GPU")), "GPU"
    elif backend == "jax":
        import jax

        accelerators = [device for device in jax.devices() if device.platform != "cpu"]
        count = len(accelerators)
        kind = accelerators[0].platform.upper() if accelerators else "GPU"
    elif backend == "torch":
        import torch

        count, kind = torch.cuda.device_count(), "GPU"
    else:
        count, kind = 0, "GPU"
    if not count:
        return "CPU"
    return f"{count} {kind}" + ("s" if count > 1 else "")
