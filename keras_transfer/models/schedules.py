"""Learning-rate schedules for fine-tuning: linear warmup, then linear or cosine decay.

BERT's fine-tuning recipe (Devlin et al., 2019) warms the learning rate up linearly over the
first 10 % of the steps and decays it linearly to 0; image fine-tuning recipes (timm, the
Keras examples) warm up and decay along a cosine. `WarmupDecay` is both, as one
`keras.optimizers.schedules.LearningRateSchedule` that saves with the model.
"""

from __future__ import annotations

import keras

WARMUP_FRACTION = 0.1  # BERT's: 10 % of the steps


@keras.saving.register_keras_serializable(package="keras_transfer")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak_learning_rate`, then linear or cosine decay to 0.

    Args:
        peak_learning_rate: positive float, the rate reached after warmup.
        total_steps: int >= 1, optimizer steps of the whole schedule; after it the rate
            stays at 0.
        warmup_steps: int >= 0, steps of the linear warmup; default None: 10 % of
            `total_steps` (BERT's), at least 1.
        decay: `"linear"` (default, BERT's) or `"cosine"`.

    Raises:
        ValueError: a non-positive rate, `total_steps` < 1, `warmup_steps` outside
            [0, total_steps], or another `decay`.

    Example:
    ```python
    schedule = WarmupDecay(5e-5, total_steps=200)  # 20 steps of warmup
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=0.01)
    ```
    """

    def __init__(self, peak_learning_rate, total_steps, warmup_steps=None, decay="linear"):
        if not (isinstance(peak_learning_rate, (int, float)) and peak_learning_rate > 0):
            raise ValueError(
                f"`peak_learning_rate` must be a positive number, got {peak_learning_rate!r}."
            )
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"`total_steps` must be an int >= 1, got {total_steps!r}.")
        if warmup_steps is None:
            warmup_steps = max(1, round(WARMUP_FRACTION * total_steps))
        if not (isinstance(warmup_steps, int) and 0 <= warmup_steps <= total_steps):
            raise ValueError(
                f"`warmup_steps` must be an int in [0, total_steps={total_steps}], "
                f"got {warmup_steps!r}."
            )
        if decay not in ("linear", "cosine"):
            raise ValueError(f"`decay` must be 'linear' or 'cosine', got {decay!r}.")
        self.peak_learning_rate = float(peak_learning_rate)
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.decay = decay

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        peak = self.peak_learning_rate
        warmup = float(max(self.warmup_steps, 1))
        # Step 0 is the first update: it already gets 1/warmup of the peak.
        warming = peak * ops.minimum(step + 1.0, warmup) / warmup
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        if self.decay == "linear":
            decayed = peak * (1.0 - progress)
        else:
            decayed = peak * 0.5 * (1.0 + ops.cos(3.141592653589793 * progress))
        return ops.where(step < self.warmup_steps, warming, decayed)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "decay": self.decay,
        }
