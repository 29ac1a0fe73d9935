"""Mixed precision: compute in bfloat16 or float16, keep the variables in float32.

`mixed_precision="bfloat16"` (CPUs with native bfloat16 support: AVX512-BF16 or AMX; TPUs;
recent GPUs) or `"float16"` (NVIDIA GPUs) builds the model under Keras' `"mixed_bfloat16"`
/ `"mixed_float16"` dtype policy (see the Keras mixed-precision guide): layers compute in
16 bits and keep float32 weights. With `"mixed_float16"`, `model.compile` wraps the
optimizer in a `keras.optimizers.LossScaleOptimizer` by itself. On a CPU without native
bfloat16 the arithmetic is emulated and slower than float32 (see `benchmarks/results.md`).
"""

from __future__ import annotations

import contextlib

MIXED_PRECISION_POLICIES = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def mixed_precision_policy(mixed_precision):
    """The Keras dtype policy name for a `mixed_precision` argument (None for float32).

    Raises:
        ValueError: a value other than None, "bfloat16" or "float16".
    """
    if mixed_precision is None:
        return None
    if mixed_precision not in MIXED_PRECISION_POLICIES:
        raise ValueError(
            f"`mixed_precision` must be None, 'bfloat16' or 'float16', got {mixed_precision!r}."
        )
    return MIXED_PRECISION_POLICIES[mixed_precision]


@contextlib.contextmanager
def dtype_policy(policy):
    """Within the block, layers are created with the Keras dtype policy `policy` (a name, or
    None to leave the global policy alone); the previous global policy is restored after."""
    import keras

    if policy is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
