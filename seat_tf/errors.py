"""How the `seat-tf` command line reports failures: one line, and an exit code.

    exit 0   success
    exit 1   a runtime failure (training crashed, a disk filled up, the workdir is in use)
    exit 2   a usage or config error: a bad flag, config value, input file or data, found
             before anything was trained or written
    exit 3   `train` finished and wrote its results, but training diverged without
             recovering or a final sanity check failed (--nostrict: exit 0)

The message is one line, `seat-tf: error: ...`; `--debug` adds the traceback.
"""

import contextlib
import errno

from absl import app

USAGE, RUNTIME, UNSOUND = 2, 1, 3

# Errors of bad input: raised while reading flags, configs, files and data.
INPUT_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                PermissionError)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def usage_errors():
    """Within the block, bad-input errors become app.UsageError (exit 2)."""
    try:
        yield
    except app.UsageError:
        raise
    except INPUT_ERRORS as error:
        raise app.UsageError(message(error)) from error


def message(error):
    """One line describing an exception."""
    if isinstance(error, OSError) and error.errno in DISK_FULL:
        where = f" while writing {error.filename}" if error.filename else ""
        return (f"no space left (or file size limit reached){where}: {error.strerror}. Files are written "
                "atomically: no result file was left half-written.")
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if isinstance(error, OSError) and error.strerror and not text.startswith("["):
        text = text or error.strerror
    elif isinstance(error, OSError) and error.strerror:
        text = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    first = " ".join(line.strip() for line in text.strip().splitlines()[:1]) or type(error).__name__
    return first if isinstance(error, (app.UsageError, ValueError, OSError)) else f"{type(error).__name__}: {first}"


def exit_code(error):
    from seat_tf.validation import DataError

    if isinstance(error, (app.UsageError, DataError)):
        return USAGE
    try:
        from absl import flags

        if isinstance(error, flags.Error):
            return USAGE
    except ImportError:  # pragma: no cover
        pass
    return RUNTIME
