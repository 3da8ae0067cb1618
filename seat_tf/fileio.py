"""Atomic file writes: a temporary file in the same folder, then a rename.

Readers (TensorBoard, a person, TF Serving, a resumed run) never see a half-written file,
and an interrupted write leaves only the old file (or none). Files get the permissions the
umask gives ordinary files, not mkstemp's owner-only 0600: reports are for everyone to read.
"""

import json
import os
import tempfile


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write):
    """Calls write(tmp_path), then renames tmp_path to path; removes the temporary on failure."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(obj, path):
    """JSON (indented) to path, atomically."""

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)

    atomic_write(path, write)


def write_text_atomic(text, path):
    """Text to path, atomically."""

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)


def save_figure_atomic(figure, path, dpi=120):
    """A matplotlib figure as a PNG at path, atomically."""
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png"))


def make_public_dir(path):
    """Gives a folder made by mkdtemp (0700) the permissions the umask gives ordinary folders."""
    os.chmod(path, 0o777 & ~_umask())


def save_model_atomic(model, path):
    """model.save to a temporary name, then rename: no half-written .keras file."""
    tmp = path + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, path)
