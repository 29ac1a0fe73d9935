"""The files of a labelled image folder: class folders, image files, and which files to skip.

Listing is cheap: no image is decoded here, except the few files whose first and last bytes
are not those of a whole JPEG, PNG, GIF or BMP file (`looks_whole`), which TensorFlow's
decoder then tries, to name each one that fails and why. A file whose start and end are
whole but whose inside is damaged is found when the pipeline decodes it (see
`image_data.image_folder_datasets`).
"""

from __future__ import annotations

import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
_SIGNATURES = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)
_TAIL_BYTES = 64  # read from the end of each file: where the format's end marker is
_THREADS = 8  # decoding threads (TF ops release the GIL)


def printable_name(name):
    """`name` as printable text: the bytes that are not valid UTF-8 as `\\xff` escapes."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # other lone surrogates (no file system name decodes to them)
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def quoted(path):
    """`path` in quotes for a message, as printable text (`printable_name`: one backslash
    per escape, where `repr` would double it)."""
    return f"'{printable_name(path)}'"


def file_system_paths(paths):
    """`paths` as the bytes the file system holds (`os.fsencode`), for TensorFlow: a `str`
    path goes into a `tf.string` tensor as UTF-8, which a name that is not valid UTF-8
    (Python keeps its bytes as surrogates) cannot be; its bytes open it as they are."""
    return [os.fsencode(path) for path in paths]


def decode_error_reason(error, path):
    """Why TensorFlow could not read or decode the file `path`, in one short line, from
    `error`: a `tf.errors.OpError` (its message without the path, which the caller names,
    and without TF's op details), or the `UnicodeDecodeError` TF raises when its message
    holds a path that is not UTF-8."""
    if isinstance(error, UnicodeDecodeError):
        return "cannot read or decode it" if os.path.exists(path) else "No such file or directory"
    message = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", error.message)
    # Keep TF's reason ("<path>; No such file or directory"), not its repeat of the path.
    message = message.replace(str(path), "").strip(" ;:\n")
    return (message.splitlines() or ["cannot decode"])[0][:80] or "cannot read"


def check_folder(path):
    """Raise a clear error unless `path` is an existing folder.

    Raises:
        NotADirectoryError: `path` is a file.
        FileNotFoundError: `path` does not exist.
    """
    if os.path.isfile(path):
        raise NotADirectoryError(
            f"{quoted(path)} is a file, not a folder of images: pass the folder that holds one "
            "subfolder per class (or train/ and val/ folders of them)."
        )
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Image folder not found: {quoted(path)}.")


def split_folders(root):
    """The training and validation folders of a data folder, as `image_folder_datasets`
    reads them: `(root/train, root/val or root/validation or None)`, or `(root, None)`
    when there is no `root/train/`.
    """
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        return root, None
    for name in ("val", "validation"):
        if os.path.isdir(os.path.join(root, name)):
            return train_dir, os.path.join(root, name)
    return train_dir, None


def _class_folders(directory):
    return sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def _files(folder):
    """The files below `folder` (recursively, as Keras indexes them; not hidden ones), sorted."""

    def unreadable(error):
        raise ValueError(
            f"Cannot read the folder {quoted(error.filename)} ({error.strerror}); fix its "
            "permissions."
        ) from None

    found, seen = [], {os.path.realpath(folder)}
    for parent, folders, names in os.walk(folder, onerror=unreadable, followlinks=True):
        kept = []
        for name in folders:
            real = os.path.realpath(os.path.join(parent, name))
            if not name.startswith(".") and real not in seen:  # a link loop or a repeat
                seen.add(real)
                kept.append(name)
        folders[:] = kept
        found += [os.path.join(parent, name) for name in names if not name.startswith(".")]
    return sorted(found)


def _text(name):
    """Whether a name from the file system is text (Python decoded all of its bytes, as
    UTF-8 in a UTF-8 locale; `os.walk` keeps other bytes as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def supported(path):
    """Whether `path` has the extension of a format TensorFlow decodes (`IMAGE_EXTENSIONS`)."""
    return path.lower().endswith(IMAGE_EXTENSIONS)


def class_files(directory, class_names=None):
    """`(class_names, {class_name: sorted file paths})` of a labelled folder, after checking
    its class folders (at least 2; with `class_names`, exactly those).

    Raises:
        ValueError: a class folder name that is not text, fewer than 2 class folders, or
            class folders other than `class_names`.
    """
    found = _class_folders(directory)
    misnamed = [printable_name(name) for name in found if not _text(name)]
    if misnamed:
        raise ValueError(
            f"{quoted(directory)} has class folders whose names are not text: "
            f"{', '.join(misnamed)} (not valid UTF-8, or this locale's encoding is not "
            "UTF-8: then set PYTHONUTF8=1). Class names label the model's outputs; rename "
            "the folders."
        )
    if class_names is None:
        if len(found) < 2:
            raise ValueError(
                f"{quoted(directory)} has {len(found)} class folder(s) ({found}); a classifier "
                "needs at least 2: lay the images out as <dir>/<class_name>/<image>."
            )
        class_names = found
    extra = sorted(set(found) - set(class_names))
    if extra:
        raise ValueError(
            f"{quoted(directory)} has class folders that the training data does not: {extra}. "
            f"Training classes: {class_names}. Rename or remove those folders."
        )
    missing = [name for name in class_names if name not in found]
    if missing:
        raise ValueError(
            f"{quoted(directory)} has no folder for the training class(es) {missing}; add "
            f"{printable_name(directory)}/<class>/ with at least one image for each of "
            f"{class_names}."
        )
    return class_names, {name: _files(os.path.join(directory, name)) for name in class_names}


def looks_whole(path):
    """Whether the file `path` starts with a JPEG, PNG, GIF or BMP signature and ends as a
    whole file of that format does (JPEG: an end-of-image marker, PNG: the IEND chunk, GIF:
    the trailer byte, in its last 64 bytes; BMP: at least the size its header gives).

    Reads at most 96 bytes; decodes nothing. False for a file that cannot be read, is
    empty, is of another format or is cut short; also for the rare whole file with more
    than 64 bytes after its end marker, which `check_files` then decodes to be sure.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(32)
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - _TAIL_BYTES))
            tail = handle.read()
    except OSError:
        return False
    kind = next((kind for signature, kind in _SIGNATURES if head.startswith(signature)), None)
    if kind == "jpeg":
        return b"\xff\xd9" in tail
    if kind == "png":
        return b"IEND" in tail
    if kind == "gif":
        return tail.rstrip(b"\0").endswith(b";")
    if kind == "bmp":
        return len(head) >= 6 and size >= int.from_bytes(head[2:6], "little")
    return False


def decode_failures(paths):
    """`{path: reason}` for the files among `paths` that TensorFlow cannot read or decode
    (each decoded once, in threads; the images are not kept)."""
    import tensorflow as tf

    def reason(path):
        try:
            encoded = tf.io.read_file(os.fsencode(path))  # see `file_system_paths`
            tf.io.decode_image(encoded, channels=3, expand_animations=False)
        except (tf.errors.OpError, UnicodeDecodeError) as error:  # undecodable, unreadable
            return decode_error_reason(error, path)
        return None

    with ThreadPoolExecutor(max_workers=min(_THREADS, os.cpu_count() or 1)) as pool:
        reasons = list(pool.map(reason, paths))  # TF ops release the GIL
    return {path: why for path, why in zip(paths, reasons, strict=True) if why}


def check_files(paths):
    """`{path: reason}` for the files among `paths` (all of a supported extension) that
    cannot be used: each file's first and last bytes are read (`looks_whole`), and only
    the files that do not look whole are decoded, to confirm and to give the reason.

    The bytes are read in one thread: 20,000 files (in the page cache) took 1.7 s, against
    7.4 s in 8 threads, which contend for the GIL on such short reads."""
    return decode_failures([path for path in paths if not looks_whole(path)])


def _warn_skipped(directory, skipped, total):
    shown = "\n  ".join(skipped[:20]) + ("\n  ..." if len(skipped) > 20 else "")
    warnings.warn(
        f"Skipped {len(skipped)} of {total} file(s) in {quoted(directory)}: not a decodable image "
        f"of a supported format ({', '.join(IMAGE_EXTENSIONS)}). Remove, convert or replace "
        f"them to use them:\n  {shown}",
        UserWarning,
        stacklevel=4,
    )


def list_folders(directories, class_names=None):
    """The class folders and files of labelled folders, checked (`class_files`): at least 2
    classes in the first folder unless `class_names` are given; in the others, exactly the
    first one's classes.

    Returns:
        list of `(directory, class_names, {class_name: sorted paths})`, one per folder.
    """
    listed = []
    for directory in directories:
        class_names, files = class_files(directory, class_names)
        listed.append((directory, class_names, files))
    return listed


def usable_images(listed, bad):
    """The usable images of `list_folders`' folders, without the files in `bad`
    (`{path: reason}`) or of an unsupported format: one `UserWarning` per folder counts and
    names the skipped files, with each one's reason.

    Returns:
        `(paths, labels, class_names)` per folder: lists of str and int, class by class in
        sorted file order.

    Raises:
        ValueError: a class is left without a usable image in a folder.
    """
    indexed = []
    for directory, class_names, files in listed:
        found = [path for paths in files.values() for path in paths]
        skipped = [
            f"{printable_name(os.path.relpath(path, directory))} "
            f"({bad[path] if path in bad else 'unsupported format'})"
            for path in found
            if path in bad or not supported(path)
        ]
        if skipped:
            _warn_skipped(directory, sorted(skipped), len(found))
        paths, labels = [], []
        for label, name in enumerate(class_names):
            usable = [path for path in files[name] if supported(path) and path not in bad]
            paths += usable
            labels += [label] * len(usable)
        present = set(labels)
        empty = [name for label, name in enumerate(class_names) if label not in present]
        if empty:
            raise ValueError(
                f"Class folder(s) {empty} in {quoted(directory)} hold no usable images "
                f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder(s)."
            )
        shown = printable_name(directory)
        print(f"Found {len(paths)} images belonging to {len(class_names)} classes in {shown}.")
        indexed.append((paths, labels, list(class_names)))
    return indexed
