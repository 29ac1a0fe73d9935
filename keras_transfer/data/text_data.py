"""Labelled text files (CSV, TSV, JSON Lines) as `tf.data` pipelines of raw strings."""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np

csv.field_size_limit(2**31 - 1)  # long texts are fine; the tokenizer truncates them

TEXT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _decode(path):
    with open(path, "rb") as handle:
        raw = handle.read()
    if not raw.strip():
        raise ValueError(f"{path}: the file is empty; expected a header row and labelled rows.")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise ValueError(
            f"{path}: line {line}: bytes {raw[error.start : error.end]!r} are not UTF-8. "
            "Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
        ) from None


def _rows(path, text, fmt):
    """Yield (line_number, dict) for each data row."""
    if fmt == "jsonl":
        for number, line in enumerate(text.split("\n"), 1):  # not U+2028 etc.: JSON allows them
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {number}: not valid JSON ({error}).") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line {number}: expected a JSON object per line.")
            yield number, row
        return
    delimiter = "," if fmt == "csv" else "\t"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = None
    for fields in reader:
        if header is None:
            if not fields:
                continue  # blank lines before the header
            header = [name.strip() for name in fields]  # " label" in a header means "label"
            repeated = sorted({name for name in header if header.count(name) > 1})
            if repeated:
                raise ValueError(
                    f"{path}: line {reader.line_num}: the header names column(s) {repeated} "
                    "more than once; rename them so that each column has its own name."
                )
            continue
        if not fields:
            continue  # a blank line, as csv.DictReader skips them
        if len(fields) > len(header):
            raise ValueError(
                f"{path}: line {reader.line_num}: {len(fields)} fields for {len(header)} "
                f"columns {header}. Quote texts that contain {'commas' if fmt == 'csv' else 'tabs'}"
                ' ("like, this"), as spreadsheet programs do when they save CSV.'
            )
        fields += [None] * (len(header) - len(fields))  # a short row misses its last values
        yield reader.line_num, dict(zip(header, fields, strict=True))


def read_labelled_text(path, *, text_column="text", label_column="label", require_labels=True):
    """Read texts and labels from a CSV, TSV or JSON Lines file.

    The format comes from the extension: `.csv` (RFC-4180 quoting, so quoted commas and
    newlines are fine), `.tsv` / `.tab`, `.jsonl` / `.ndjson` (one JSON object per line).
    The file must be UTF-8 (a BOM is allowed) with a header row (CSV / TSV); spaces around
    header names are ignored; blank lines are skipped.

    Returns:
        `(texts, labels)`: two lists of str of the same length (labels as text, stripped).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown extension, an empty file, bytes that are not UTF-8 (names the
            line), a missing column (lists the columns found; hints at a TSV read as CSV),
            empty or whitespace-only texts or missing labels (names the lines), a row with
            more fields than the header (an unquoted comma; names the line), a header that
            repeats a column name, `text_column == label_column`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Text data file not found: {path!r}.")
    if text_column == label_column:
        raise ValueError(
            f"`text_column` and `label_column` are both {text_column!r}; they must name "
            "two different columns."
        )
    fmt = TEXT_FORMATS.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise ValueError(
            f"{path}: unknown extension; use .csv, .tsv or .jsonl (one JSON object a line)."
        )
    texts, labels, empty, unlabelled, label_types = [], [], [], [], {}
    columns_checked = False
    for line, row in _rows(path, _decode(path), fmt):
        if not columns_checked:
            found = [key for key in row if key is not None]
            missing = [
                c
                for c in (text_column, label_column if require_labels else None)
                if c and c not in row
            ]
            if missing:
                hint = ""
                if fmt == "csv" and len(found) == 1 and "\t" in found[0]:
                    hint = " The header holds tabs: is this a TSV file? Name it .tsv."
                raise ValueError(
                    f"{path}: missing column(s) {missing}; found {found}.{hint} Pass "
                    "`text_column=` / `label_column=` (CLI: --text-column / --label-column)."
                )
            columns_checked = True
        text, label = row.get(text_column), row.get(label_column)
        if text is not None and not isinstance(text, str):
            raise ValueError(
                f"{path}: line {line}: {text_column!r} is {json.dumps(text)[:40]}, not a string."
            )
        if label is not None and (isinstance(label, bool) or not isinstance(label, (str, int))):
            raise ValueError(
                f"{path}: line {line}: {label_column!r} is {json.dumps(label)[:40]}; labels are "
                "strings or integers."
            )
        label_types.setdefault(type(label), line)
        if len(label_types.keys() - {type(None)}) > 1:
            raise ValueError(
                f"{path}: labels mix numbers (line {label_types[int]}) and strings (line "
                f'{label_types[str]}), e.g. 1 and "1"; use one type so classes do not merge.'
            )
        text = "" if text is None else text
        if not text.strip():
            empty.append(line)
        label = "" if label is None else str(label).strip()
        if require_labels and not label:
            unlabelled.append(line)
        texts.append(text)
        labels.append(label)
    if not texts:
        raise ValueError(f"{path}: no data rows after the header.")
    for lines, what in ((empty, f"empty {text_column!r}"), (unlabelled, f"no {label_column!r}")):
        if lines:
            shown = ", ".join(map(str, lines[:10])) + (" ..." if len(lines) > 10 else "")
            raise ValueError(
                f"{path}: {len(lines)} row(s) with {what} (lines {shown}). Fix or remove them; "
                "nothing is dropped silently."
            )
    return texts, labels


def _label_ids(path, labels, class_names):
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({label for label in labels if label not in index})
    if unknown:
        raise ValueError(
            f"{path}: label(s) {unknown[:10]} are not among the classes {list(class_names)} "
            "(taken from the training data or `class_names`)."
        )
    return np.array([index[label] for label in labels], dtype="int64")


def _dataset(
    sources, ids, num_classes, batch_size, shuffle, seed, load=None, epoch=None, in_memory=False
):
    """`(texts, one_hot)` batches (or `(load(source), one_hot)`, with `load` applied to each
    batch of sources when `in_memory`), reshuffled by every iterator; with `epoch` (an int64
    scalar tensor) the batches of that epoch alone, in `example_sources.epoch_order`. Remembers
    how it was made (`example_sources.ExampleSource`), so that feature caching can make the same
    pipeline over cached features, and `fine_tune` the pipeline of each epoch."""
    import tensorflow as tf

    from keras_transfer.data.example_sources import (
        ExampleSource,
        remember_examples,
        shuffled_slices,
    )

    one_hot = np.eye(num_classes, dtype="float32")[ids]
    if not isinstance(sources, np.ndarray):
        sources = np.array(sources, dtype=object)
    dataset = shuffled_slices(sources, one_hot, shuffle=shuffle, seed=seed, epoch=epoch)

    @tf.autograph.experimental.do_not_convert  # plain TF ops (see image_data._dataset)
    def loaded(source, label):
        return load(source), label

    if load is not None and in_memory:  # one gather per batch: the same batches
        dataset = dataset.batch(batch_size).map(loaded)
    elif load is not None:
        dataset = dataset.map(loaded).batch(batch_size)
    else:
        dataset = dataset.batch(batch_size)

    def build(other_sources, other_load, other_shuffle, other_epoch=None, other_in_memory=False):
        options = dict(seed=seed, load=other_load, epoch=other_epoch, in_memory=other_in_memory)
        return _dataset(other_sources, ids, num_classes, batch_size, other_shuffle, **options)

    return remember_examples(
        dataset.prefetch(tf.data.AUTOTUNE),
        ExampleSource(sources, load or (lambda text: text), build, shuffle, in_memory, ids),
    )


def sorted_labels(labels):
    """The distinct `labels` (str) sorted: by value when all are integers ("2" before
    "10"; ties such as "1" and "01" by their text), else as text."""
    import re

    distinct = set(labels)
    if all(re.fullmatch(r"[+-]?[0-9]+", label) for label in distinct):
        return sorted(distinct, key=lambda label: (int(label), label))
    return sorted(distinct)


def text_csv_datasets(
    path,
    *,
    text_column="text",
    label_column="label",
    val_path=None,
    validation_split=None,
    batch_size=32,
    class_names=None,
    seed=1337,
    max_rows=None,
):
    """Read labelled text files into training and validation `tf.data.Dataset`s.

    Args:
        path: training file, `.csv`, `.tsv` or `.jsonl` (see `read_labelled_text`).
        text_column, label_column: column (or JSON key) names; default `"text"`, `"label"`.
        val_path: validation / test file in the same form, or None.
        validation_split: float in (0, 1) or None: the fraction of `path` held out when
            there is no `val_path`, stratified by class (each class keeps its share, at
            least one row on each side; a class of fewer than 2 rows stays in training,
            with a warning that names it; `stratified_split`), drawn with `seed`.
        batch_size: int, default 32.
        class_names: list of str, or None (default: the sorted distinct training labels;
            integer labels by value, "2" before "10", so that class id 2 is label "2" in
            0-based label sets).
        seed: int in [0, 2**32), default 1337: shuffle and split seed (None: drawn from
            NumPy's global generator).
        max_rows: int or None: use only the first `max_rows` rows of `path` (before any
            split), e.g. to train on a small budget.

    Returns:
        `(train_ds, val_ds, class_names)`: datasets of `(texts, labels)` batches, texts
        `(batch,)` tf.string (raw; the model's preprocessor tokenises them inside `tf.data`,
        so they feed `fit` on every backend), labels `(batch, num_classes)` float32 one-hot;
        training data reshuffled every epoch (under `fine_tune`, epoch e in an order drawn
        from `(seed, e)`); validation data in file order; `val_ds` None without
        validation data.
        Each dataset remembers its texts, so that `fine_tune`'s feature caching can remake
        the same pipeline over the cached encoder outputs.

    Raises:
        FileNotFoundError, ValueError: see `read_labelled_text`; also labels outside
        `class_names` or a validation label training never saw (names the file), fewer than
        2 classes, both `val_path` and `validation_split`.
    """
    from keras_transfer.data.example_sources import shuffle_seed
    from keras_transfer.data.stratified_split import stratified_split
    from keras_transfer.models.class_names import remember_class_names

    seed = shuffle_seed(seed)
    if val_path is not None and validation_split is not None:
        raise ValueError("Pass either `val_path` or `validation_split`, not both.")
    if validation_split is not None and not (
        isinstance(validation_split, (int, float))
        and not isinstance(validation_split, bool)
        and 0 < validation_split < 1
    ):
        raise ValueError(f"`validation_split` must be a float in (0, 1), got {validation_split!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    columns = dict(text_column=text_column, label_column=label_column)
    texts, labels = read_labelled_text(path, **columns)
    if max_rows is not None:
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"`max_rows` must be a positive int, got {max_rows!r}.")
        texts, labels = texts[:max_rows], labels[:max_rows]
    if class_names is None:
        class_names = sorted_labels(labels)
    class_names = [str(name) for name in class_names]
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"`class_names` has duplicates: {class_names}.")
    if len(class_names) < 2:
        raise ValueError(
            f"{path}: {len(class_names)} class(es) {class_names}; a classifier needs at least 2."
        )
    ids = _label_ids(path, labels, class_names)
    val = None
    if val_path is not None:
        val_texts, val_labels = read_labelled_text(val_path, **columns)
        val = (val_texts, _label_ids(val_path, val_labels, class_names))
    elif validation_split is not None:
        count = max(1, int(round(len(texts) * validation_split)))
        if count >= len(texts):
            raise ValueError(
                f"{path}: `validation_split`={validation_split} of {len(texts)} rows leaves "
                "no training rows; use a smaller split or more data."
            )
        # In file order, as a val_path file is read; every class keeps a training row.
        kept, held_out = stratified_split(ids, count, seed, class_names, path)
        val = ([texts[i] for i in held_out], ids[held_out])
        texts, ids = [texts[i] for i in kept], ids[kept]
    train_ds = _dataset(texts, ids, len(class_names), batch_size, True, seed)
    val_ds = None if val is None else _dataset(*val, len(class_names), batch_size, False, seed)
    remember_class_names(train_ds, class_names)
    remember_class_names(val_ds, class_names)
    return train_ds, val_ds, class_names
