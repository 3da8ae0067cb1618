"""Workarounds for three Keras 3 bugs that break `fit` under tf.distribute multi-worker training.

Upstream: keras-team/keras#20585 (open at Keras 3.15.1; the TensorFlow multi-worker tutorial
fails the same way). Each fix is the smallest change that makes a 2-worker `fit` run; they
live here, and only here, so they are easy to delete once Keras fixes them.

1. `TensorFlowTrainer._maybe_symbolic_build` builds the model from the first batch reduced
   with `strategy.reduce("MEAN", batch)`. Under MultiWorkerMirroredStrategy that raises
   "Attempt to convert a value (PerReplica...) to a Tensor"; under MirroredStrategy it fails
   when the first batch splits unevenly over the replicas (AddN of [8, ...] and [7, ...]).
   Only the shapes are needed: we build from the first local replica's batch.
2. `reduce_per_replica(..., reduction="auto")` becomes `strategy.reduce("MEAN", v, axis=0)`
   for multi-worker collective strategies, which fails on the scalar logs every train step
   returns ("Invalid reduction dimension 0 for input with 0 dimensions"). Scalars are
   reduced with `axis=None` (the mean over replicas); everything else goes to Keras as is.
3. `keras.callbacks.BackupAndRestore` is not multi-worker aware: workers sharing one backup
   directory race (`FileExistsError`). `BackupAndRestore` below gives each worker its own
   folder inside backup_dir, restores every worker from the chief's copy when it can read
   it (shared storage) so all resume at the same epoch, and writes via temp file + rename.

`apply()` installs fixes 1 and 2 for Keras 3 (`AFFECTED`); `distribute.make_strategy` and
every `AdversarialModel.fit` call it (so a user's own MirroredStrategy works too); it is idempotent, returns the
names of the fixes it installed, and leaves other versions (and a Keras whose internals have
moved) untouched. Tested by tests/test_distribute.py: a 2-worker fit on localhost, an
uneven first batch under MirroredStrategy, and the backup folder rules.
"""

import json
import os

import keras
import tensorflow as tf

AFFECTED = ((3, 0), (4, 0))  # [first, last) Keras versions with keras-team/keras#20585
_APPLIED = set()


def _version(text):
    parts = []
    for part in text.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def affected(version=None):
    """True if this Keras version is one with the multi-worker bugs."""
    low, high = AFFECTED
    return low <= _version(version or keras.__version__) < high


def _first_local(strategy, value):
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def _fix_symbolic_build(trainer_module):
    original = trainer_module.TensorFlowTrainer._maybe_symbolic_build

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is not None and iterator is not None and data_batch is None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tf.nest.map_structure(lambda v: _first_local(self.distribute_strategy, v), batch)
                break
            iterator = None
        return original(self, iterator=iterator, data_batch=data_batch)

    trainer_module.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build


def _fix_reduce_per_replica(trainer_module):
    original = trainer_module.reduce_per_replica
    is_multi_worker = trainer_module._collective_all_reduce_multi_worker

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not is_multi_worker(strategy):
            return original(values, strategy, reduction)

        def reduce(value):
            if _first_local(strategy, value).shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return original(value, strategy, reduction)

        return tf.nest.map_structure(reduce, values)

    trainer_module.reduce_per_replica = reduce_per_replica


def apply():
    """Installs fixes 1 and 2 (see the module docstring) once; returns their names."""
    if not affected():
        return []
    try:
        from keras.src.backend.tensorflow import trainer as trainer_module
    except ImportError:  # internals moved: a newer Keras this module has not seen
        return []
    fixes = {"symbolic_build": _fix_symbolic_build, "reduce_per_replica": _fix_reduce_per_replica}
    needed = ("TensorFlowTrainer", "reduce_per_replica", "_collective_all_reduce_multi_worker")
    if not all(hasattr(trainer_module, name) for name in needed):
        return []
    installed = []
    for name, fix in fixes.items():
        if name not in _APPLIED:
            fix(trainer_module)
            _APPLIED.add(name)
            installed.append(name)
    return installed


# -- fix 3: a multi-worker-aware, atomic BackupAndRestore ----------------------------------


def worker_role(strategy):
    """(task_type, task_id, chief folder name) under a MultiWorkerMirroredStrategy with more
    than one task, else None. The chief is the "chief" task if the cluster has one, else
    worker 0 (TensorFlow's rule)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None
    resolver = strategy.cluster_resolver
    jobs = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if sum(len(tasks) for tasks in jobs.values()) < 2:
        return None
    chief = "chief-0" if "chief" in jobs else "worker-0"
    return resolver.task_type, int(resolver.task_id), chief


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` that works with several workers and writes atomically.

    On one worker it behaves like Keras' callback in `backup_dir`. Under a multi-worker
    strategy each task writes `backup_dir/<task_type>-<task_id>/` (no races), and on restart
    every task restores from the chief's folder if it can read it (a shared file system or
    bucket: all resume from the same epoch), else from its own. Weights and the epoch
    counter are written to temporary names and renamed, so a kill never leaves half a file.
    """

    def __init__(self, backup_dir, **kwargs):
        super().__init__(backup_dir, **kwargs)
        self._base_dir = backup_dir

    def on_train_begin(self, logs=None):
        role = worker_role(self.model.distribute_strategy)
        own = self._base_dir if role is None else os.path.join(self._base_dir, f"{role[0]}-{role[1]}")
        source = own
        if role is not None:
            chief_dir = os.path.join(self._base_dir, role[2])
            if tf.io.gfile.exists(os.path.join(chief_dir, "training_metadata.json")):
                source = chief_dir
        self._set_dir(source)
        super().on_train_begin(logs)
        self._set_dir(own)

    def _set_dir(self, directory):
        self.backup_dir = directory
        self._weights_path = os.path.join(directory, "latest.weights.h5")
        self._training_metadata_path = os.path.join(directory, "training_metadata.json")
        self._prev_weights_path = f"{self._weights_path}.bkp"
        self._prev_training_metadata_path = f"{self._training_metadata_path}.bkp"

    def _save_model(self):
        tf.io.gfile.makedirs(self.backup_dir)
        if self.double_checkpoint:
            for path in (self._weights_path, self._training_metadata_path):
                if tf.io.gfile.exists(path):
                    tf.io.gfile.copy(path, f"{path}.bkp", overwrite=True)
        tmp_weights = os.path.join(self.backup_dir, "saving.weights.h5")
        self.model.save_weights(tmp_weights, overwrite=True)
        tf.io.gfile.rename(tmp_weights, self._weights_path, overwrite=True)
        tmp_metadata = self._training_metadata_path + ".tmp"
        with tf.io.gfile.GFile(tmp_metadata, "w") as f:
            f.write(json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))
        tf.io.gfile.rename(tmp_metadata, self._training_metadata_path, overwrite=True)
