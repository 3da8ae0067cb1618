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


# -- workdirs: writable, and used by one run at a time -----------------------------------------


def check_writable_dir(path, what="--workdir"):
    """Raises an OSError naming the problem unless `path` is (or can be made as) a folder this
    process can write to. Writes nothing when the folder does not exist yet."""
    path = os.path.abspath(path)
    existing = path
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"{what}={path} cannot be a folder: {existing} is a file.")
    if existing != path:
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(f"{what}={path} cannot be created: {existing} is not writable.")
        return
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise PermissionError(f"{what}={path} is not a readable and writable folder.")
    try:  # read-only file systems pass os.access for root
        fd, probe = tempfile.mkstemp(dir=path, prefix=".tmp-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as error:
        raise PermissionError(f"{what}={path} is not writable: {error.strerror}.") from None


class WorkdirLocked(RuntimeError):
    """Another live process holds the lock of a workdir."""


LOCK_NAME = ".seat-tf.lock"


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


class WorkdirLock:
    """`with WorkdirLock(workdir, "train"):` -- one seat-tf run per workdir at a time.

    Creates <workdir>/.seat-tf.lock (O_EXCL) holding this process's pid, host and command;
    removes it on exit. A second process finds the lock and raises WorkdirLocked naming the
    holder. A lock left by a killed process (its pid no longer runs on this host) is stale:
    it is taken over with a warning. A lock from another host cannot be checked and is
    refused; delete the file if that run is gone.
    """

    def __init__(self, workdir, command=""):
        self.path = os.path.join(workdir, LOCK_NAME)
        self.command = command
        self.took_over = None

    def _read(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def acquire(self):
        import socket

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_umask())
            except FileExistsError:
                holder = self._read()
                if holder is None:  # being written right now, or garbage: look again
                    holder = {"pid": None}
                same_host = holder.get("host") == me["host"]
                pid = holder.get("pid")
                if isinstance(pid, int) and same_host and not _pid_alive(pid):
                    self.took_over = holder
                    import logging

                    logging.getLogger(__name__).warning(
                        f"Taking over the stale lock {self.path} of process {pid} (no longer running).")
                    try:
                        os.remove(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                if pid is None and os.path.exists(self.path):
                    import time

                    time.sleep(0.2)
                    if self._read() is None:  # still unreadable: garbage
                        os.remove(self.path)
                    continue
                where = "" if same_host else f" on host {holder.get('host')}"
                raise WorkdirLocked(
                    f"{os.path.dirname(self.path)} is in use by process {pid}{where} "
                    f"(seat-tf {holder.get('command', '')}). Wait for it to finish or use another folder; if that "
                    f"process is gone, delete {self.path}.")
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return self
        raise WorkdirLocked(f"Could not take the lock {self.path}.")

    def release(self):
        holder = self._read()
        if holder is not None and holder.get("pid") == os.getpid():
            os.remove(self.path)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


# -- Keras archives ------------------------------------------------------------------------------


def load_keras_model(path, safe_mode=True, compile=True):
    """keras.models.load_model with clear errors for a missing file, a file that is not a
    .keras archive (Keras itself says "File not found") and a refused Lambda layer.

    safe_mode=True (the default, Keras' own) refuses to deserialize Lambda layers, whose
    Python bytecode would run on load: pass safe_mode=False only for files you trust."""
    import zipfile

    import keras

    # The seat_tf model classes are registered for deserialization by `import seat_tf`, which
    # any import of this module has already run (seat_tf/__init__.py imports seat_tf.training).

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such model file: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder, not a .keras archive (a SavedModel? load it with "
                                "tf.saved_model.load).")
    if not path.endswith(".keras"):
        raise ValueError(f"{path} is not a .keras archive: expected a file saved by model.save('name.keras').")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a valid .keras archive (a .keras file is a zip archive; this one is "
                         "truncated, corrupt or another format).")
    try:
        return keras.models.load_model(path, compile=compile, safe_mode=safe_mode)
    except Exception as error:  # noqa: BLE001 - re-raised with the file named
        text = str(error)
        if "Lambda" in text and ("safe_mode" in text or "unsafe" in text):
            raise ValueError(
                f"{path} holds a Lambda layer, whose Python code would run on loading; refused in safe mode. "
                "Load it only if you trust the file: safe_mode=False (seat-tf: --unsafe_load).") from None
        raise ValueError(f"Could not load {path} as a Keras model: {type(error).__name__}: {text.splitlines()[0] if text else ''}") from error
