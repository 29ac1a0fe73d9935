"""Tuning: KerasTuner search over the cheap part of the recipe, and its leaderboard."""
