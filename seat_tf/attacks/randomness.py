"""Random draws that do not depend on how a batch is split over replicas.

Under a multi-replica tf.distribute strategy each replica holds a slice of the global
batch. An attack's random start (or Square's windows, a random target) for an example must
not depend on that split, so every replica draws the noise of the whole global batch from
the same stateless seed and keeps its own rows: distributed training steps and evaluations
then equal single-device ones. On one device the draws are plain `sampler(shape, seed)`.
"""

import contextlib
import threading

import tensorflow as tf

_ROWS = threading.local()


@contextlib.contextmanager
def global_batch_rows(start, size, total):
    """Declares, for attacks built (traced) inside the block on this thread, that their input
    is rows [start, start + size) of a global batch of `total` rows.

    A caller that splits a batch over replicas itself (the evaluation runner) knows the rows,
    so random draws need no all-reduce to find them; tf.distribute allows no all-reduce inside
    loops such as APGD-T's over targets or Square's over queries.
    """
    previous = getattr(_ROWS, "value", None)
    _ROWS.value = (start, size, total)
    try:
        yield
    finally:
        _ROWS.value = previous


def global_rows(local):
    """(start, total): where this replica's `local` rows sit in the global batch, or None on
    one replica (the batch is the global batch).

    Declared by `global_batch_rows`, else found by an all-reduce of every replica's batch size
    (replicas may hold different numbers of rows: a batch of 15 on 2 replicas is split 8/7).
    """
    declared = getattr(_ROWS, "value", None)
    if declared is not None:
        start, size, total = declared
        check = tf.debugging.assert_equal(
            local, size, message="An attack drew random numbers for part of its batch in a distributed evaluation; "
            "run it on one device.")
        with tf.control_dependencies([check]):
            return tf.identity(start), total
    context = tf.distribute.get_replica_context()
    replicas = 1 if context is None else context.num_replicas_in_sync
    if replicas == 1:
        return None
    replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
    # Batch size of every replica (float32: all-reduce support; exact below 2**24).
    sizes = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.one_hot(replica, replicas) * tf.cast(local, tf.float32))
    sizes = tf.cast(sizes, tf.int32)
    return tf.reduce_sum(sizes[:replica]), tf.reduce_sum(sizes)


def global_batch_noise(sampler, shape, seed, rows=None):
    """Noise `sampler(shape, seed)` for this replica's slice of the global batch.

    Under a multi-replica strategy each replica draws the noise of the whole global batch
    from the same seed and keeps its own rows (`rows`: from `global_rows`, looked up if
    None), so the perturbation of an example does not depend on how many devices share the
    batch (distributed and single-device steps and evaluations agree).
    """
    rows = global_rows(shape[0]) if rows is None else rows
    if rows is None:
        return sampler(shape, seed)
    start, total = rows
    noise = sampler(tf.concat([[total], shape[1:]], axis=0), seed)
    return noise[start : start + shape[0]]
