"""The leaderboard of `tune_image_classifier`: trials ranked, written as JSON and Markdown."""

from __future__ import annotations

import json
import os

LEADERBOARD = "leaderboard"  # .json and .md
BEST_MODEL = "best_model.keras"  # the best trial's model, beside the leaderboard
COLUMNS = ["backbone", "learning_rate", "dropout", "label_smoothing", "unfreeze_top_n"]


def write_leaderboard(directory, rows, stopped_by, seconds, class_names, best_model):
    """Rank the trials' `rows` (dicts with COLUMNS, `val_accuracy`, `val_loss`,
    `fine_tuning`, `seconds`), write `leaderboard.json` and `leaderboard.md` into `directory`
    atomically, and return the result dict (`leaderboard`, `best_model`, `stopped_by`,
    `seconds`, `class_names`)."""
    rows = sorted(rows, key=rank_key)
    rows = [{"rank": rank, **row} for rank, row in enumerate(rows, start=1)]
    result = {
        "leaderboard": rows,
        "best_model": best_model if rows else None,
        "stopped_by": stopped_by,
        "seconds": round(seconds, 2),
        "class_names": class_names,
    }
    _write(os.path.join(directory, f"{LEADERBOARD}.json"), json.dumps(result, indent=1))
    _write(os.path.join(directory, f"{LEADERBOARD}.md"), leaderboard_markdown(result))
    return result


def rank_key(row):
    """Trials rank by validation accuracy, then by validation loss."""
    return (-row["val_accuracy"], row["val_loss"])


def leaderboard_markdown(result):
    """The leaderboard of a `tune_image_classifier` result as a Markdown table."""
    keys = ["rank", *COLUMNS, "val_accuracy", "val_loss", "fine_tuning", "head_epochs", "seconds"]
    lines = [
        "# Tuning leaderboard",
        "",
        f"{len(result['leaderboard'])} trials in {result['seconds']:.0f} s (stopped by "
        f"{result['stopped_by']}); ranked by validation accuracy. Best model: "
        f"`{result['best_model']}`.",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
    ]
    for row in result["leaderboard"]:
        cells = [f"{row[key]:.4f}" if key.startswith("val_") else str(row[key]) for key in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
