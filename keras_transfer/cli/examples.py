"""The examples at the foot of each `keras-transfer` help screen, and the sub-command parser
that shows them. Kept apart from `main.py`, which only imports the standard library at start,
so that `keras-transfer --help` answers without loading TensorFlow."""

import argparse

# One example per help screen (argparse epilogs), shown as written.
EXAMPLES = {
    "main": """examples:
  keras-transfer demo                      # the offline main job: about 90 s on a CPU
  keras-transfer backbones                 # the image backbones' registry names
  keras-transfer train image --help        # options of one command
set KERAS_BACKEND=tensorflow|jax|torch to choose the backend.""",
    "train": """examples:
  keras-transfer train image --data DIR --backbone mobilenet --output runs/bees
  keras-transfer train text --data train.csv --val test.csv --preset PRESET --output runs/spam""",
    "image": """example (DIR holds train/<class>/*.jpg and val/<class>/*.jpg):
  keras-transfer train image --data DIR --backbone mobilenet \\
      --backbone-kwargs '{"alpha": 0.25}' --image-size 224 --output runs/bees
Writes model.keras, class_names.json, report.json, report.txt, report.html and history.json
to --output.""",
    "text": """example (CSV files with text,label columns):
  keras-transfer train text --data train.csv --val test.csv \\
      --preset bert_tiny_en_uncased --sequence-length 64 --output runs/spam
--preset also takes a local preset folder or a Hugging Face BERT folder (offline use).""",
    "evaluate": """example:
  keras-transfer evaluate runs/bees --data DIR --output runs/bees/val-report""",
    "predict": """examples:
  keras-transfer predict runs/bees photo1.jpg photo2.jpg --top-k 2
  keras-transfer predict runs/spam "Text WIN to 80086 for a FREE prize" --json
  keras-transfer predict runs/bees-serving photo1.jpg      # an exported SavedModel""",
    "export": """example:
  keras-transfer export runs/bees --output runs/bees-serving   # writes runs/bees-serving/1
  keras-transfer export runs/bees --output runs/bees-onnx --format onnx""",
    "explain": """examples:
  keras-transfer explain runs/bees photo1.jpg photo2.jpg     # Grad-CAM overlays
  keras-transfer explain runs/spam "Text WIN to 80086 for a FREE prize"   # word scores""",
    "tune": """example:
  keras-transfer tune image --data DIR --backbones mobilenet_v2,efficientnet_b0 \\
      --max-trials 20 --max-time 900 --output runs/tune""",
    "backbones": """example:
  keras-transfer backbones | grep -i efficientnet""",
    "demo": """example:
  keras-transfer demo --output runs/demo --epochs 3
Fine-tunes MiniLM (the `text` extra) on short reviews it writes from templates, evaluates on
held-out reviews made from the same templates (a smoke test: expect about 100 % accuracy),
and exports a TF Serving SavedModel to OUTPUT/export/1.""",
}


def sub_parser(commands, name, help):
    """A sub-command parser with its example and the help layout of the others."""
    return commands.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog=EXAMPLES[name],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
