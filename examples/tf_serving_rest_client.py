"""Build (and optionally send) TF Serving REST requests for exported keras-transfer models.

Image models take raw JPEG/PNG/GIF/BMP bytes; the input name ends in `_bytes`, so the REST API
accepts them base64-encoded as {"b64": ...}. Text models take raw strings.

    # print the request bodies
    python examples/tf_serving_rest_client.py image photo1.jpg photo2.png
    python examples/tf_serving_rest_client.py text "Text WIN to 80086 for a FREE prize" "hi"
    # serve an export (keras-transfer export ... --output /models/bees) with TF Serving:
    #   docker run -p 8501:8501 -v /models/bees:/models/bees -e MODEL_NAME=bees tensorflow/serving
    python examples/tf_serving_rest_client.py image photo.jpg \
        --url http://localhost:8501/v1/models/bees:predict

The response holds, for each instance, `probabilities`, `class_ids` and `class_names`.
"""

import argparse
import base64
import json
import urllib.request


def image_request(paths):
    """The REST body for the `serving_default` signature of an image model."""
    instances = []
    for path in paths:
        with open(path, "rb") as handle:
            encoded = base64.b64encode(handle.read()).decode("ascii")
        instances.append({"image_bytes": {"b64": encoded}})
    return {"signature_name": "serving_default", "instances": instances}


def text_request(texts):
    """The REST body for the `serving_default` signature of a text model."""
    return {"signature_name": "serving_default", "instances": [{"text": t} for t in texts]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["image", "text"])
    parser.add_argument("inputs", nargs="+", help="image files or texts")
    parser.add_argument("--url", help="POST the body here, e.g. .../v1/models/NAME:predict")
    args = parser.parse_args()
    body = image_request(args.inputs) if args.kind == "image" else text_request(args.inputs)
    if not args.url:
        print(json.dumps(body)[:2000])
        return
    request = urllib.request.Request(
        args.url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        print(json.dumps(json.load(response), indent=1))


if __name__ == "__main__":
    main()
