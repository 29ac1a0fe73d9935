"""Integrated gradients for KerasHub text classifiers, on tensorflow, jax and torch.

Integrated gradients (Sundararajan et al., 2017) attribute a prediction to the input features:
the gradient of the class probability is averaged along the straight path from a baseline to
the input and multiplied by (input - baseline). Here the features are the token embeddings; the
baseline replaces every word piece by the padding token (`[CLS]`, `[SEP]`, the positions and the
attention mask stay as they are). The attributions of an example add up to
f(input) - f(baseline) up to the error of the path integral (`steps`), which `delta` reports.
"""

from __future__ import annotations

import dataclasses
import html

import keras
import numpy as np

from keras_transfer.report.gradcam import _outer_output
from keras_transfer.report.gradients import value_and_gradient


@dataclasses.dataclass
class TextAttribution:
    """The attribution of one text's prediction.

    Attributes:
        text: the input string.
        target: the class explained (int).
        probability: f(x), the model's probability of `target` for the text.
        baseline_probability: f(baseline), the same for the all-padding baseline.
        tokens, token_scores: the word pieces (special tokens left out) and their scores.
        words, word_scores: word pieces merged to words (a `##` piece joins the word before
            it; its score is added).
        delta: `sum(token_scores) - (probability - baseline_probability)`, the integration
            error (0 for an exact integral).
    """

    text: str
    target: int
    probability: float
    baseline_probability: float
    tokens: list
    token_scores: list
    words: list
    word_scores: list
    delta: float


def _embedding_function(model):
    """`f(embeddings, other_inputs) -> probabilities` for a KerasHub TextClassifier."""
    backbone = getattr(model, "backbone", None)
    embedding = getattr(backbone, "token_embedding", None)
    inputs = getattr(backbone, "input", None)
    if embedding is None or not isinstance(inputs, dict) or "token_ids" not in inputs:
        raise ValueError(
            f"Integrated gradients needs a KerasHub TextClassifier whose backbone embeds "
            f"`token_ids` with a `token_embedding` layer (BERT family); got "
            f"{type(model).__name__} with backbone {type(backbone).__name__}."
        )
    embedded = _outer_output(backbone, embedding)
    others = [name for name in inputs if name != "token_ids"]
    encoder = keras.Model([embedded] + [inputs[name] for name in others], backbone.output)
    nodes = [
        node
        for index, node in enumerate(backbone._inbound_nodes)
        if f"{id(backbone)}_ib-{index}" in model._nodes
    ]
    # The head may read model inputs besides the encoder's outputs (mean pooling: the mask).
    head = keras.Model(list(nodes[0].outputs) + [inputs[name] for name in others], model.output)

    def probabilities(embeddings, features):
        """Probabilities `(batch, classes)` from embeddings and the other model inputs."""
        rest = [keras.ops.convert_to_tensor(features[name]) for name in others]
        encoded = encoder([keras.ops.convert_to_tensor(embeddings)] + rest, training=False)
        outputs = head(keras.tree.flatten(encoded) + rest, training=False)
        return keras.ops.cast(outputs, "float32")

    return embedding, probabilities


def _special_ids(tokenizer):
    ids = getattr(tokenizer, "special_token_ids", None)
    if ids is None:
        names = ("cls_token_id", "sep_token_id", "pad_token_id", "start_token_id", "end_token_id")
        ids = [getattr(tokenizer, name) for name in names if hasattr(tokenizer, name)]
    return set(int(i) for i in ids)


def _merge_word_pieces(tokens, scores):
    words, word_scores = [], []
    for token, score in zip(tokens, scores, strict=True):
        if token.startswith("##") and words:
            words[-1] += token[2:]
            word_scores[-1] += score
        else:
            words.append(token)
            word_scores.append(score)
    return words, word_scores


def _quadrature(grid_values, steps):
    """Points and weights on [0, 1] for one path: Gauss-Legendre on each of the grid's
    segments, with more points where the probability changes more (it can jump in a small
    part of the path), about `steps` + 2 per segment in all."""
    segments = len(grid_values) - 1
    edges = np.linspace(0.0, 1.0, segments + 1)
    changes = np.abs(np.diff(grid_values))
    share = changes / changes.sum() if changes.sum() > 0 else np.full(segments, 1 / segments)
    alphas, weights = [], []
    for j in range(segments):
        nodes, node_weights = np.polynomial.legendre.leggauss(2 + int(round(steps * share[j])))
        width = edges[j + 1] - edges[j]
        alphas.append(edges[j] + (nodes + 1) / 2 * width)
        weights.append(node_weights / 2 * width)
    return np.concatenate(alphas).astype("float32"), np.concatenate(weights).astype("float32")


def _path_integrals(probabilities, inputs, baselines, features, targets, steps, batch_size):
    """Integrals of the gradient along the paths from baseline to input: `(texts, tokens)`."""
    num_classes = probabilities.num_classes
    segments = 16
    grid = np.linspace(0.0, 1.0, segments + 1, dtype="float32")
    text_index, alphas, weights = [], [], []
    for i in range(len(inputs)):
        path = baselines[i] + grid[:, None, None] * (inputs[i] - baselines[i])
        repeated = {
            name: np.repeat(value[i : i + 1], len(grid), 0) for name, value in features.items()
        }
        values = np.asarray(keras.ops.convert_to_numpy(probabilities(path, repeated)))
        a, w = _quadrature(values[:, targets[i]], steps)
        text_index.append(np.full(len(a), i))
        alphas.append(a)
        weights.append(w)
    text_index, alphas = np.concatenate(text_index), np.concatenate(alphas)
    weights = np.concatenate(weights)
    integrals = np.zeros_like(inputs)
    for start in range(0, len(text_index), batch_size):
        rows = text_index[start : start + batch_size]
        a = alphas[start : start + batch_size, None, None]
        path = baselines[rows] + a * (inputs[rows] - baselines[rows])
        chunk = {name: value[rows] for name, value in features.items()}
        one_hot = np.eye(num_classes, dtype="float32")[targets[rows]]
        _, gradients = value_and_gradient(probabilities.score, path, chunk, one_hot)
        np.add.at(integrals, rows, weights[start : start + batch_size, None, None] * gradients)
    return ((inputs - baselines) * integrals).sum(-1)


class _Probabilities:
    """The model as a function of the token embeddings (one object, so jax compiles once)."""

    def __init__(self, model):
        self.embedding, self.function = _embedding_function(model)
        self.num_classes = 0

        def score(embeddings, features, one_hot):  # a function: jax caches its compilation
            return keras.ops.sum(self.function(embeddings, features) * one_hot, axis=-1)

        self.score = score

    def __call__(self, embeddings, features):
        return self.function(embeddings, features)


def integrated_gradients(
    model, texts, class_index=None, steps=64, batch_size=128, rtol=0.01, max_steps=512
):
    """Integrated-gradients scores of each word piece and word of texts.

    Args:
        model: a KerasHub BERT-family `TextClassifier` with its preprocessor, as from
            `build_text_classifier`, returning probabilities.
        texts: a str or a list of str.
        class_index: the class to explain: None (default: the predicted class of each text),
            an int for all texts or a list of one int per text.
        steps: about how many points on the path from the baseline to the input, default 64:
            Gauss-Legendre quadrature (as in Captum) on 16 segments of the path, the points
            shared out by how much the probability changes along each segment (a model can
            jump from 0 to 1 in a hundredth of the path), plus 2 per segment.
        batch_size: path points per gradient computation, default 128.
        rtol: a text whose scores miss f(x) - f(baseline) by more than `rtol` times that
            change (default 0.01) is integrated again with twice the steps, up to
            `max_steps` (default 512); a model whose probability jumps along the path needs
            more points.

    Returns:
        A list of `TextAttribution`, one per text; a positive score pushes the probability
        of the class up, a negative one down; `delta` is the remaining integration error.

    Raises:
        ValueError: a model without a preprocessor or token embedding, a class index out of
            range, or `steps` < 1.

    Example:
    ```python
    (attribution,) = integrated_gradients(model, ["free prize, call now"])
    print(list(zip(attribution.words, attribution.word_scores)))
    ```
    """
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an int >= 1, got {steps!r}.")
    preprocessor = getattr(model, "preprocessor", None)
    if preprocessor is None:
        raise ValueError("The model has no preprocessor: pass a model from build_text_classifier.")
    probabilities = _Probabilities(model)
    tokenizer = preprocessor.tokenizer
    special = _special_ids(tokenizer)
    pad_id = int(getattr(tokenizer, "pad_token_id", 0))
    features = {
        name: np.asarray(keras.ops.convert_to_numpy(value))
        for name, value in preprocessor(list(texts)).items()
    }
    token_ids = features["token_ids"]
    others = {name: value for name, value in features.items() if name != "token_ids"}
    baseline_ids = np.where(np.isin(token_ids, list(special)), token_ids, pad_id)
    embed = probabilities.embedding
    inputs = np.asarray(keras.ops.convert_to_numpy(embed(token_ids)), dtype="float32")
    baselines = np.asarray(keras.ops.convert_to_numpy(embed(baseline_ids)), dtype="float32")
    outputs = np.asarray(keras.ops.convert_to_numpy(probabilities(inputs, others)))
    base_outputs = np.asarray(keras.ops.convert_to_numpy(probabilities(baselines, others)))
    num_classes = probabilities.num_classes = outputs.shape[-1]
    if class_index is None:
        targets = outputs.argmax(-1)
    else:
        targets = np.broadcast_to(np.asarray(class_index, dtype=int), (len(texts),)).copy()
    if targets.min() < 0 or targets.max() >= num_classes:
        raise ValueError(f"`class_index` must lie in [0, {num_classes}); got {class_index!r}.")
    rows = np.arange(len(texts))
    change = outputs[rows, targets] - base_outputs[rows, targets]
    scores = np.zeros(token_ids.shape, dtype="float32")
    todo = rows
    while todo.size:
        scores[todo] = _path_integrals(
            probabilities,
            inputs[todo],
            baselines[todo],
            {name: value[todo] for name, value in others.items()},
            targets[todo],
            steps,
            batch_size,
        )
        error = np.abs(scores[todo].sum(-1) - change[todo])
        todo = todo[error > rtol * np.abs(change[todo]) + 1e-6]
        steps *= 2
        if steps > max_steps:
            break
    results = []
    for i, text in enumerate(texts):
        keep = [
            p
            for p in range(token_ids.shape[1])
            if bool(features["padding_mask"][i, p]) and int(token_ids[i, p]) not in special
        ]
        tokens = [str(tokenizer.id_to_token(int(token_ids[i, p]))) for p in keep]
        token_scores = [float(scores[i, p]) for p in keep]
        words, word_scores = _merge_word_pieces(tokens, token_scores)
        results.append(
            TextAttribution(
                text=text,
                target=int(targets[i]),
                probability=float(outputs[i, targets[i]]),
                baseline_probability=float(base_outputs[i, targets[i]]),
                tokens=tokens,
                token_scores=token_scores,
                words=words,
                word_scores=word_scores,
                delta=float(scores[i].sum() - change[i]),
            )
        )
    return results


def highlight_html(words, scores):
    """Words as HTML spans shaded by score: green pushes the class up, red down.

    Args:
        words: list of str; scores: list of floats, one per word.

    Returns:
        An HTML fragment (str); the strongest score is fully shaded, each span's `title`
        holds its score.
    """
    peak = max((abs(s) for s in scores), default=0.0) or 1.0
    spans = []
    for word, score in zip(words, scores, strict=True):
        strength = min(abs(score) / peak, 1.0)
        colour = "40,160,60" if score >= 0 else "210,50,50"
        spans.append(
            f'<span class="word" title="{score:+.4f}" style="background:rgba({colour},'
            f'{0.85 * strength:.2f})">{html.escape(word)}</span>'
        )
    return " ".join(spans)
