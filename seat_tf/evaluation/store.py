"""Finished attacks on disk, so a killed evaluation resumes without redoing them.

Each finished attack (each stage of a composite) is saved atomically as one .npz of its
per-example results. A result is reused only under the same key: the model (architecture,
dtype policies and weights), the data (the examples, their order and batches), the attack
(its full configuration and, for a composite stage, every earlier stage's), eps, the number
of examples and the seed. A changed model, dataset or attack therefore never reuses a stale
result; attacks without a stable description (a plain object's repr names its address) are
never saved. Distributed runs give the same results as one device, so the strategy is not
part of the key.
"""

import hashlib
import json
import os
import re

import numpy as np

from seat_tf import fileio

FORMAT = 1


def model_fingerprint(model):
    """sha256 of a Keras model: its class, each layer's class and configuration (names aside)
    and every weight's shape, dtype and values."""
    digest = hashlib.sha256(type(model).__name__.encode())
    for layer in model._flatten_layers(include_self=False):
        try:
            config = {k: v for k, v in layer.get_config().items() if k != "name"}
        except (NotImplementedError, TypeError, AttributeError):
            config = None
        digest.update(f"{type(layer).__name__}:{json.dumps(config, sort_keys=True, default=str)}".encode())
    for weight in model.weights:
        value = np.ascontiguousarray(weight.numpy())
        digest.update(f"{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def data_fingerprint(batches):
    """sha256 of the evaluation batches [(images, labels)]: values, order and batch sizes
    (the attacks' seeds are per batch)."""
    digest = hashlib.sha256()
    for x, y in batches:
        for array in (np.asarray(x, np.float32), np.asarray(y, np.int32)):
            digest.update(f"{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _package_version():
    from importlib import metadata

    try:
        return metadata.version("seat-tf")
    except metadata.PackageNotFoundError:
        return None


class ResultStore:
    """The finished attacks of evaluations of one model with one seed, in `folder`."""

    def __init__(self, folder, model, seed):
        self.folder = folder
        self.model = model_fingerprint(model)
        self.seed = int(seed)
        self.version = _package_version()

    def key(self, attacks, eps, num_examples, data):
        """The key of the last of `attacks` (a composite's stages up to it) run at `eps` on the
        first `num_examples` examples of the data with fingerprint `data`; None if an attack
        has no stable description."""
        described = [repr(attack) for attack in attacks]
        if any(re.search(r" at 0x[0-9a-f]+", text) for text in described):
            return None
        return {"format": FORMAT, "seat_tf": self.version, "model": self.model, "data": data, "attacks": described,
                "eps": float(eps), "num_examples": int(num_examples), "seed": self.seed}

    def path(self, key, label):
        text = json.dumps(key, sort_keys=True)
        name = re.sub(r"[^A-Za-z0-9.+@=-]+", "_", label)[:60]
        return os.path.join(self.folder, f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.npz")

    def load(self, key, label):
        """The saved record under `key` (dict of arrays and numbers), or None."""
        path = self.path(key, label)
        if not os.path.exists(path):
            return None
        with np.load(path) as saved:
            if str(saved["key"]) != json.dumps(key, sort_keys=True):
                return None
            return {name: saved[name] for name in saved.files if name != "key"}

    def save(self, key, label, record):
        """Writes `record` (per-example arrays and numbers) under `key`, atomically; returns
        the path."""
        path = self.path(key, label)
        arrays = dict(record, key=np.array(json.dumps(key, sort_keys=True)))
        fileio.atomic_write(path, lambda tmp: np.savez(tmp, **arrays))
        return path
