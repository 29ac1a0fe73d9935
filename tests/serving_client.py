"""A TF-Serving-like client: loads an exported SavedModel with TensorFlow alone and calls it.

    python serving_client.py EXPORT_DIR SIGNATURE REQUEST.json OUTPUT.json

REQUEST.json: {"input": name, "files": [paths]} (raw bytes of each file), or
{"input": name, "texts": [...]}, or {"input": name, "npy": path} (a float32 array).
Writes {"probabilities": [[...]], "class_ids": [...], "class_names": [...]}. Imports only
tensorflow (and tensorflow_text, whose ops text exports need), never keras or keras_transfer.
"""

import json
import sys

import numpy as np
import tensorflow as tf

try:
    import tensorflow_text  # noqa: F401
except ImportError:
    pass


def main(export_dir, signature, request_path, output_path):
    with open(request_path, encoding="utf-8") as handle:
        request = json.load(handle)
    if "files" in request:
        values = []
        for path in request["files"]:
            with open(path, "rb") as image:
                values.append(image.read())
        tensor = tf.constant(values)
    elif "texts" in request:
        tensor = tf.constant(request["texts"])
    else:
        tensor = tf.constant(np.load(request["npy"]))
    function = tf.saved_model.load(export_dir).signatures[signature]
    outputs = function(**{request["input"]: tensor})
    result = {
        "probabilities": outputs["probabilities"].numpy().tolist(),
        "class_ids": outputs["class_ids"].numpy().tolist(),
        "class_names": [name.decode() for name in outputs["class_names"].numpy()],
        "dtypes": {key: value.dtype.name for key, value in outputs.items()},
        "imported": sorted(m for m in ("keras", "keras_transfer") if m in sys.modules),
    }
    with open(output_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main(*sys.argv[1:])
