"""Cached backbone features on disk: the persistent feature store and the memory budget.

A feature store is a folder (`fine_tune(..., feature_store=DIR)`, CLI `--feature-store DIR`)
that keeps the frozen backbone's outputs of the caching pass, one entry per key:

    DIR/<key>/features.npy     float32 `(examples, *feature_shape)`, NumPy's .npy format
    DIR/<key>/manifest.json    the key's description, the row count and shape, the file's
                               size and sha256; written last

The key is the sha256 of everything the features depend on (`feature_key`): the
keras-transfer, Keras and backend versions; every layer of the feature extractor (class and
config, names aside: from the preprocessing layers and the backbone to the pooling, so the
input size too) and a sha256 of all its weights; the text preprocessor's config and
vocabulary; and each data set's examples in order: for images read from files, each path with
its size and modification time (ns); for encoded images held in memory (TFDS), their bytes;
for texts, the texts; for images decoded in memory, a fingerprint (`tf.fingerprint`) of the
decoded pixels (read from memory, not decoded again).
Anything changed gives another key, and so another entry; entries are never updated in place.

An entry is written into `DIR/.partial-<key>-<random>/` and renamed to `DIR/<key>` once its
manifest is written (an atomic rename: an interrupted run leaves a `.partial-*` folder,
never a `<key>` folder). Every read checks the manifest, the file's size and its sha256
(about 1 s per GB); an entry that fails is removed with a `UserWarning` naming it and
rebuilt, never read. Old entries are not removed: delete the folder to reclaim the space.

The memory budget (`memory_budget`): cached features that take more bytes than the budget
are not held in memory but read from a memory-mapped file (`numpy.lib.format.open_memmap`):
the store's entry, or without a store a file in a temporary folder (`tempfile.mkdtemp`, under
`$TMPDIR`), removed when the feature datasets are. The budget is
`KERAS_TRANSFER_FEATURE_MEMORY` (bytes, an int) when that environment variable is set, else
`DEFAULT_MEMORY_BUDGET`, 2 GiB (2,097,152 MobileNet alpha=0.25 feature vectors, 256 floats).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import warnings

import numpy as np

DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes
MEMORY_BUDGET_VARIABLE = "KERAS_TRANSFER_FEATURE_MEMORY"
FORMAT = 1  # the layout of an entry; a new layout gives new keys
_HASH_CHUNK = 2**24  # bytes hashed at a time


def memory_budget():
    """Bytes of cached features held in memory; above it they are memory-mapped from disk.

    Returns:
        int: `$KERAS_TRANSFER_FEATURE_MEMORY` when set, else `DEFAULT_MEMORY_BUDGET` (2 GiB).

    Raises:
        ValueError: the environment variable is not a non-negative int.
    """
    value = os.environ.get(MEMORY_BUDGET_VARIABLE)
    if value is None:
        return DEFAULT_MEMORY_BUDGET
    try:
        budget = int(value)
    except ValueError:
        budget = -1
    if budget < 0:
        raise ValueError(
            f"{MEMORY_BUDGET_VARIABLE}={value!r} is not a number of bytes: set it to a "
            "non-negative int (e.g. 4294967296 for 4 GiB), or unset it for the default 2 GiB."
        )
    return budget


def feature_key(layers, sources, preprocess=None):
    """The store key of the features of `sources` computed by `layers`.

    Args:
        layers: the Keras layers and models that compute the features (the extractor).
        sources: `example_sources.ExampleSource`s, in the order their features are stored.
        preprocess: the text preprocessor applied before `layers`, or None.

    Returns:
        `(key, description)`: a 64-character hex str and the JSON-able dict it hashes.
    """
    import keras

    from keras_transfer import __version__

    description = {
        "format": FORMAT,
        "keras_transfer": __version__,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "layers": [_layer_description(layer) for layer in layers],
        "weights": _weights_hash([*layers, *([preprocess] if preprocess is not None else [])]),
        "preprocess": None if preprocess is None else _layer_description(preprocess),
        "vocabulary": _vocabulary_hash(preprocess),
        "data": [_source_description(source) for source in sources],
    }
    text = json.dumps(description, sort_keys=True, default=lambda value: type(value).__name__)
    return hashlib.sha256(text.encode()).hexdigest(), description


def _layer_description(layer):
    """Class and config (without names and the functional graph's layer lists) of `layer`
    and of every layer inside it, in tracking order; input shapes of models."""
    import keras

    described = []
    for inner in layer._flatten_layers(include_self=True, recursive=True):
        try:
            config = dict(inner.get_config())
        except Exception:  # a layer without a config: its class and weights still count
            config = {}
        for key in ("name", "layers", "input_layers", "output_layers"):
            config.pop(key, None)
        kind = f"{type(inner).__module__}.{type(inner).__qualname__}"
        shape = None
        if isinstance(inner, keras.Model) and getattr(inner, "inputs", None):
            shape = [list(tensor.shape) for tensor in inner.inputs]
        described.append([kind, config, shape])
    return described


def _weights_hash(layers):
    """sha256 of every weight of `layers` (shape, dtype and values, in tracking order)."""
    import keras

    digest = hashlib.sha256()
    for layer in layers:
        for weight in layer.weights:
            value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight.value))
            digest.update(f"{value.shape}{value.dtype}".encode())
            digest.update(value.tobytes())
    return digest.hexdigest()


def _vocabulary_hash(preprocess):
    """sha256 of the vocabulary of `preprocess`' tokenizer, or None."""
    tokenizer = getattr(preprocess, "tokenizer", None)
    vocabulary = getattr(tokenizer, "get_vocabulary", None)
    if vocabulary is None:
        return None
    return hashlib.sha256("\n".join(map(str, vocabulary())).encode()).hexdigest()


def _source_description(source):
    """What a source's features depend on: how an example is loaded, and the examples."""
    load = source.load
    if isinstance(load, functools.partial):
        simple = (int, float, str, bool, tuple, type(None))
        loading = [
            _function_name(load.func),
            {key: value for key, value in load.keywords.items() if isinstance(value, simple)},
        ]
    else:
        loading = [_function_name(load), {}]
    examples = source.examples
    digest = hashlib.sha256()
    reads_files = getattr(getattr(load, "func", load), "reads_files", False)
    if len(examples) and reads_files and isinstance(examples[0], bytes):
        for path in examples:  # image files: path, size, modification time
            try:
                status = os.stat(path)
            except (OSError, ValueError):
                status = None
            info = None if status is None else (status.st_size, status.st_mtime_ns)
            digest.update(repr((path, info)).encode())
        kind = "files"
    elif len(examples) and isinstance(examples[0], str):
        for text in examples:
            digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
        kind = "texts"
    elif len(examples) and isinstance(examples[0], bytes):  # encoded images (TFDS): the bytes
        for data in examples:
            digest.update(len(data).to_bytes(8, "little") + data)
        kind = "encoded"
    elif source.in_memory:  # inputs held in memory (e.g. decoded images by index): their values
        import tensorflow as tf

        # A 64-bit fingerprint of each example (`tf.fingerprint`, as the caching pass keys
        # other pipelines' inputs): 0.03 s for hymenoptera's 398 decoded images (240 MB),
        # where a sha256 of their bytes took 0.4 s.
        for start in range(0, len(examples), 256):
            for part in tf.nest.flatten(source.load(examples[start : start + 256])):
                digest.update(tf.fingerprint(part).numpy().tobytes())
        kind = "values"
    else:  # other examples (e.g. ids that `load` reads): the examples themselves
        digest.update(np.ascontiguousarray(np.asarray(examples)).tobytes())
        kind = "examples"
    return [kind, len(examples), loading, digest.hexdigest()]


def _function_name(function):
    return f"{getattr(function, '__module__', '')}.{getattr(function, '__qualname__', '')}"


def file_sha256(path):
    """Hex sha256 of the file at `path`, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def open_features(path, budget):
    """The .npy file at `path`: in memory when it holds at most `budget` bytes, else
    memory-mapped read-only."""
    array = np.load(path, mmap_mode="r")
    if array.nbytes <= budget:
        return np.array(array)
    return array


class FeatureStore:
    """The entries of a feature store folder (see the module docstring).

    Args:
        directory: str or path-like; made (with its parents) when missing.

    Raises:
        NotADirectoryError: `directory` is a file.
    """

    def __init__(self, directory):
        self.directory = os.fsdecode(directory)
        if os.path.isfile(self.directory):
            raise NotADirectoryError(
                f"feature_store={self.directory!r} is a file; pass a folder (it is made when "
                "missing) that keeps the cached features."
            )
        os.makedirs(self.directory, exist_ok=True)

    def read(self, key, budget):
        """The features of entry `key` (memory-mapped above `budget` bytes), or None when
        there is none; a damaged entry is removed with a `UserWarning` and None returned."""
        entry = os.path.join(self.directory, key)
        if not os.path.exists(entry):
            return None
        try:
            with open(os.path.join(entry, "manifest.json"), encoding="utf-8") as file:
                manifest = json.load(file)
            path = os.path.join(entry, "features.npy")
            size = os.path.getsize(path)
            if size != manifest["bytes"]:
                raise ValueError(f"features.npy has {size} bytes, the manifest {manifest['bytes']}")
            if file_sha256(path) != manifest["sha256"]:
                raise ValueError("features.npy does not match the manifest's sha256")
            features = open_features(path, budget)
            if list(features.shape) != manifest["shape"] or manifest["key"] != key:
                raise ValueError("the features' shape or key differs from the manifest's")
        except (OSError, ValueError, KeyError, TypeError) as error:
            warnings.warn(
                f"The feature store entry {entry!r} is damaged ({error}); it is removed and "
                "the features are computed again.",
                UserWarning,
                stacklevel=3,
            )
            _remove(entry)
            return None
        return features

    def partial_path(self, key):
        """A new folder for entry `key` while it is written: `(folder, features.npy path)`."""
        folder = tempfile.mkdtemp(prefix=f".partial-{key[:16]}-", dir=self.directory)
        os.chmod(folder, os.stat(self.directory).st_mode & 0o777)  # as the store (mkdtemp: 0700)
        return folder, os.path.join(folder, "features.npy")

    def commit(self, key, description, folder, features, budget):
        """Finish entry `key` from `folder` (whose features.npy holds `features`): write the
        manifest, rename the folder to `<key>`, and return the features read from there."""
        path = os.path.join(folder, "features.npy")
        if isinstance(features, np.memmap):
            features.flush()
        manifest = {
            "key": key,
            "shape": list(features.shape),
            "dtype": "float32",
            "bytes": os.path.getsize(path),
            "sha256": file_sha256(path),
            "depends_on": description,
        }
        del features  # the memory map closes with the last reference
        with open(os.path.join(folder, "manifest.json"), "w", encoding="utf-8") as file:
            json.dump(manifest, file, sort_keys=True, default=lambda value: type(value).__name__)
            file.flush()
            os.fsync(file.fileno())
        entry = os.path.join(self.directory, key)
        try:
            os.rename(folder, entry)
        except OSError:  # written by another run meanwhile: keep that one
            shutil.rmtree(folder, ignore_errors=True)
        return open_features(os.path.join(entry, "features.npy"), budget)


def _remove(path):
    """Remove the file or folder at `path` (an entry may have been replaced by a file)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.remove(path)
        except OSError:
            pass


def spill_file():
    """A new .npy path in a temporary folder for features above the memory budget, and the
    `tempfile.TemporaryDirectory` that removes it (keep it alive as long as the file)."""
    folder = tempfile.TemporaryDirectory(prefix="keras-transfer-features-")
    return folder, os.path.join(folder.name, "features.npy")
