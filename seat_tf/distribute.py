"""Distributed training with tf.distribute: one GPU, several GPUs, several hosts, TPUs.

    strategy = seat_tf.distribute.make_strategy("mirrored")      # all local GPUs
    model = seat_tf.experiment.build_model(config, total_steps, strategy)
    model.fit(seat_tf.distribute.shard(train_ds, strategy), ...)  # global batch = config's

The model, its optimizer and its metrics are created inside `strategy.scope()`, and Keras
then runs every `train_step` once per replica on that replica's slice of the global batch.
`AdversarialModel` reduces over the global batch (an all-reduce of the batch size and of
the stopped values that |.| and flooding need), and the optimizer sums replica gradients,
so one distributed step equals one single-device step on the same global batch, random
starts included (`attacks.random_start` draws the global batch's noise and keeps its rows).

Multi-worker (`"multi_worker"`) reads the cluster from the `TF_CONFIG` environment variable
(docs/distributed.md has per-host examples and a Kubeflow TFJob manifest). It installs the
Keras workarounds of `seat_tf.keras_compat` and its `BackupAndRestore` keeps one backup per
worker.
"""

import collections
import json
import os

import tensorflow as tf

from seat_tf import keras_compat

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")

WorkerInfo = collections.namedtuple("WorkerInfo", ["is_chief", "task_type", "task_id", "num_workers"])


def make_strategy(name="default", tpu=None, devices=None):
    """A tf.distribute strategy by name.

    Args:
      name: "default" (no distribution: one device), "mirrored" (all local GPUs, or
        `devices`), "multi_worker" (MultiWorkerMirroredStrategy over the hosts named in
        TF_CONFIG) or "tpu" (TPUStrategy).
      tpu: TPU name or grpc:// address for "tpu"; None or "local" means a TPU VM's own chips.
      devices: device names for "mirrored" (e.g. ["/gpu:0", "/gpu:1"]); None uses all GPUs.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; choose one of {STRATEGIES}.")
    if name == "default":
        return tf.distribute.get_strategy()
    keras_compat.apply()  # Keras 3 fit fixes; MirroredStrategy needs the first one too
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        if _tf_config_cluster() is None:
            raise ValueError(
                "strategy 'multi_worker' needs the TF_CONFIG environment variable, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}} '
                "on each host (see docs/distributed.md)."
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    return _tpu_strategy(tpu)


def _tf_config_cluster():
    """The cluster dict of TF_CONFIG, None if unset; ValueError if it is malformed."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return None
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}): {text!r}") from None
    cluster, task = tf_config.get("cluster"), tf_config.get("task")
    if not isinstance(cluster, dict) or not cluster or not isinstance(task, dict):
        raise ValueError(f'TF_CONFIG needs a "cluster" dict and a "task" dict, got {text!r}.')
    if task.get("type") not in cluster or not 0 <= int(task.get("index", -1)) < len(cluster[task.get("type")]):
        raise ValueError(f"TF_CONFIG task {task} is not a member of its cluster {cluster}.")
    return cluster


def _tpu_strategy(tpu):
    """TPUStrategy for a TPU name/address, or the local TPU; ValueError if none is reachable."""
    address = None if tpu in (None, "", "local") else tpu
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address or "local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"strategy 'tpu': no TPU found at {tpu or 'local'!r} ({reason}).") from None
    return tf.distribute.TPUStrategy(resolver)


def worker_info(strategy):
    """Who this process is: chief (writes the outputs) or another worker."""
    role = keras_compat.worker_role(strategy)
    if role is None:
        return WorkerInfo(True, None, 0, 1)
    task_type, task_id, chief = role
    jobs = strategy.cluster_resolver.cluster_spec().as_dict()
    return WorkerInfo(f"{task_type}-{task_id}" == chief, task_type, task_id, sum(len(t) for t in jobs.values()))


def output_dir(workdir, info):
    """Where this process writes: the workdir for the chief, `<workdir>/<task>-<id>` for the
    others (so workers sharing a file system never write the same file)."""
    return workdir if info.is_chief else os.path.join(workdir, f"{info.task_type}-{info.task_id}")


def shard(dataset, strategy):
    """The dataset ready for `fit` under `strategy`: its batches are global batches.

    Multi-worker: every worker reads the same pipeline (same shuffle seed) and keeps its
    share of each batch (auto-shard by DATA; by FILE would need many input files).
    """
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        dataset = dataset.with_options(options)
    return dataset


def check_jit_compile(strategy, jit_compile):
    """XLA (`jit_compile`) works on one device and on TPUs. Keras 3 compiles the whole
    multi-replica step into one XLA program, which fails under MirroredStrategy with several
    devices (each replica's variables live on another device) and, on CPUs, under
    MultiWorkerMirroredStrategy (XLA has no CPU collectives); so it is refused up front."""
    if jit_compile and strategy.num_replicas_in_sync > 1 and not isinstance(strategy, tf.distribute.TPUStrategy):
        raise ValueError(
            f"jit_compile=True is not supported with {type(strategy).__name__} over "
            f"{strategy.num_replicas_in_sync} replicas (Keras 3 compiles all replicas into one XLA program). "
            "Use one device or a TPU for XLA, or set --config.jit_compile=False."
        )


def backup_callback(backup_dir):
    """A BackupAndRestore callback that is safe with several workers (seat_tf.keras_compat)."""
    return keras_compat.BackupAndRestore(backup_dir)
