"""The gradient of a scalar score with respect to one tensor, on tensorflow, jax and torch.

Keras 3 has no backend-neutral gradient op, so each backend's own mechanism is used:
`tf.GradientTape`, `jax.grad` and torch autograd. The function differentiated may call Keras
layers and models (their weights are constants here; nothing is trained).
"""

from __future__ import annotations

import keras
import numpy as np


def value_and_gradient(function, x, *args):
    """Evaluate `function(x, *args)` and its gradient with respect to `x`.

    Args:
        function: maps a float32 tensor shaped like `x` (a backend tensor) and `args` to a
            tensor of per-example scores, shape `(batch,)`; the gradient is that of their
            sum, so each example's gradient is its own when examples do not interact (as in
            inference). On jax it is traced and compiled with `jax.jit` once per function
            object and input shapes, so pass what changes between calls in `args`.
        x: a float array or backend tensor, e.g. `(batch, h, w, channels)` feature maps or
            `(batch, tokens, dim)` embeddings.
        *args: further inputs (arrays or nested dicts / lists of arrays), not differentiated.

    Returns:
        `(values, gradients)`: NumPy float32 arrays shaped `(batch,)` and like `x`.

    Raises:
        NotImplementedError: a Keras backend other than tensorflow, jax and torch.
    """
    backend = keras.backend.backend()
    x = keras.ops.cast(keras.ops.convert_to_tensor(x), "float32")
    args = keras.tree.map_structure(keras.ops.convert_to_tensor, args)
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            values = tf.cast(function(x, *args), tf.float32)
            total = tf.reduce_sum(values)
        gradients = tape.gradient(total, x)
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        compiled = getattr(function, "_jax_value_and_grad", None)
        if compiled is None:

            def summed(inputs, *rest):
                scores = jnp.asarray(function(inputs, *rest), jnp.float32)
                return jnp.sum(scores), scores

            compiled = jax.jit(jax.value_and_grad(summed, has_aux=True))
            function._jax_value_and_grad = compiled
        (_, values), gradients = compiled(x, *args)
    elif backend == "torch":
        import torch

        x = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            values = function(x, *args).float()
            (gradients,) = torch.autograd.grad(values.sum(), x)
        values = values.detach()
    else:
        raise NotImplementedError(
            f"Gradients are implemented for tensorflow, jax and torch, not {backend!r}."
        )
    return (
        np.asarray(keras.ops.convert_to_numpy(values), dtype="float32"),
        np.asarray(keras.ops.convert_to_numpy(gradients), dtype="float32"),
    )
