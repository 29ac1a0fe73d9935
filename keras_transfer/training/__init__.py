"""Training: `fine_tune` and its stages, schedules, checkpoints, `lr_find`, and data-parallel
runs."""
