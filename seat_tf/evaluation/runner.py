"""Parsing attack specs and running them over a dataset: attack after attack over all
batches (one traced function per attack, reused across batches and the eps sweep), on one
device or data-parallel under a tf.distribute strategy, saving each finished attack."""

import logging
import time

import keras
import numpy as np
import tensorflow as tf

from seat_tf import attacks as attacks_lib
from seat_tf import precision
from seat_tf.evaluation import store as store_lib
from seat_tf.validation import check_batch, check_labels, model_expectations


def attack_kind(attack):
    if isinstance(attack, attacks_lib.Composite):
        return "composite"
    return "l2" if getattr(attack, "threat_model", "linf") == "l2" else "linf"


def is_gradient_linf(attack):
    return isinstance(attack, (attacks_lib.LinfPGD, attacks_lib.APGD))


def is_untargeted_iterative(attack):
    if isinstance(attack, attacks_lib.LinfPGD):
        return attack.steps > 1 and attack.target is None
    return isinstance(attack, attacks_lib.APGD) and not attack.targets


class Entry:
    """One attack at one eps on the first `limit` examples, and what it measured."""

    def __init__(self, key, attack, eps, limit=None, role="main"):
        self.key, self.attack, self.eps, self.limit, self.role = key, attack, float(eps), limit, role
        self.kind = attack_kind(attack)
        self.stages = attack.stages() if self.kind == "composite" else [(key, attack)]
        self.correct, self.clean = [], []
        self.stage_correct = [[] for _ in self.stages]
        self.seconds = [0.0 for _ in self.stages]
        self.max_linf, self.outside_box = 0.0, 0
        self.l2 = []
        self.derived_from = None
        self.loaded = False  # some stage's results were loaded from a store, not computed

    def count_in(self, start, n):
        return n if self.limit is None else max(0, min(n, self.limit - start))


def parse_spec(spec):
    """(key, attack, limit) from "name", "name@N" or an attack object."""
    limit = None
    if isinstance(spec, str):
        name, _, count = spec.partition("@")
        if count:
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"Attack {spec!r}: write 'name@N' with N a positive number of examples.")
            limit = int(count)
        return name.strip(), attacks_lib.get_attack(name), limit
    attack = attacks_lib.get_attack(spec)
    if attack is None:
        raise ValueError("An attack of None cannot be evaluated.")
    return getattr(attack, "name", None) or repr(attack), attack, limit


class _IntendedTraces(logging.Filter):
    """Drops TensorFlow's "N out of the last N calls ... triggered tf.function retracing"
    warning while the evaluation runs: it traces one tf.function per attack on purpose (each
    traced once, then reused across batches and the eps sweep), which TF mistakes for
    retracing in a loop. Installed only around `Runner.run`, so a user's own retracing
    warnings are never hidden."""

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


class Runner:
    """Runs entries over a dataset, one attack (one composite stage) after the other over
    all batches; compiles each attack once (eps and seed are graph inputs, so the eps sweep
    reuses the traces).

    With a `strategy` of several replicas, each replica attacks its contiguous share of every
    batch and the results are gathered in the batch's order. The attacks' random draws are
    the whole batch's (`attacks.global_batch_rows`), so results equal one device's.
    With a `store` (`ResultStore`), finished attacks are saved and found again.
    """

    def __init__(self, model, seed, strategy=None, store=None):
        self.strategy = strategy if strategy is not None and strategy.num_replicas_in_sync > 1 else None
        if self.strategy is not None:
            model = on_every_replica(model, self.strategy)
        self.model_fn = precision.logits_fn(model)
        self.num_classes, self.input_shape = model_expectations(model)
        self.seed = int(seed)
        self.store = store
        self._compiled = {}
        self._clean = None
        self._loaded = None

    def _measure(self, attack):
        model_fn = self.model_fn

        def measure(x, y, eps, seed):
            x_adv = tf.cast(attack(model_fn, x, y, eps, seed=seed), tf.float32)
            correct = tf.argmax(model_fn(x_adv), axis=-1, output_type=tf.int32) == y
            delta = x_adv - x
            axes = tf.range(1, tf.rank(x))
            linf = tf.reduce_max(tf.abs(delta), axis=axes)
            l2 = tf.sqrt(tf.reduce_sum(tf.square(delta), axis=axes))
            outside = tf.reduce_any((x_adv < 0.0) | (x_adv > 1.0), axis=axes)
            return correct, linf, l2, outside

        return measure

    def _compile(self, attack, x_spec):
        measure, strategy = self._measure(attack), self.strategy
        signature = [x_spec, tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.float32),
                     tf.TensorSpec([2], tf.int32)]
        if strategy is None:
            # autograph=False: attacks are written with explicit graph loops; converting the attack
            # and the model anyway adds tracing time to every evaluation's first call.
            return tf.function(measure, input_signature=signature, autograph=False)

        def on_replica(x, y, eps, seed):
            context = tf.distribute.get_replica_context()
            total = tf.shape(y)[0]
            start, size = replica_slice(total, context.replica_id_in_sync_group, context.num_replicas_in_sync)
            # A replica whose share is empty (a last batch smaller than the replicas) attacks one
            # stand-in row and drops its result: backprop through an empty batch fails in
            # oneDNN's kernels on some CPUs (ReluGrad shape mismatch, seen on AVX-512 machines).
            rows = tf.maximum(size, 1)
            first = tf.minimum(start, total - rows)
            with attacks_lib.global_batch_rows(first, rows, total):
                parts = measure(x[first : first + rows], y[first : first + rows], eps, seed)
            parts = [p[:size] for p in parts]
            # Each replica's rows in their places of the batch: the sum over replicas gathers them in order.
            placed = tf.pad(tf.stack([tf.cast(p, tf.float32) for p in parts]), [[0, 0], [start, total - start - size]])
            return context.all_reduce(tf.distribute.ReduceOp.SUM, placed)

        @tf.function(input_signature=signature, autograph=False)
        def run(x, y, eps, seed):
            gathered = strategy.experimental_local_results(strategy.run(on_replica, args=(x, y, eps, seed)))[0]
            return gathered[0] > 0.5, gathered[1], gathered[2], gathered[3] > 0.5

        return run

    def compiled(self, attack, x_spec):
        key = attack if _hashable(attack) else id(attack)
        if key not in self._compiled:
            self._compiled[key] = self._compile(attack, x_spec)
        return self._compiled[key]

    def clean(self, x_spec):
        if self._clean is None:
            model_fn = self.model_fn

            @tf.function(input_signature=[x_spec, tf.TensorSpec([None], tf.int32)], autograph=False)
            def correct_clean(x, y):
                return tf.argmax(model_fn(x), axis=-1, output_type=tf.int32) == y

            self._clean = correct_clean
        return self._clean

    def load(self, dataset, limit=None):
        """(batches [(float32 images, int32 labels)], clean correctness per batch, x_spec,
        data fingerprint or None) of the first `limit` examples, checked. Held in memory:
        the attacks run over them one after the other."""
        if self._loaded is not None and self._loaded[0] is dataset and self._loaded[1] == limit:
            return self._loaded[2]
        batches, clean, seen, x_spec = [], [], 0, None
        for index, (x, y) in enumerate(dataset):
            if limit is not None and seen >= limit:
                break
            # Images of the first batch, every batch's labels (cheap) against the model's classes.
            if index == 0:
                check_batch(x.numpy(), y.numpy(), self.num_classes, self.input_shape, "evaluation data")
            else:
                check_labels(y.numpy(), self.num_classes, "evaluation data")
            x = tf.cast(x, tf.float32)
            y = tf.reshape(tf.cast(y, tf.int32), [-1])
            if limit is not None and seen + int(y.shape[0]) > limit:
                x, y = x[: limit - seen], y[: limit - seen]
            x_spec = x_spec or tf.TensorSpec([None] + list(x.shape[1:]), tf.float32)
            clean.append(self.clean(x_spec)(x, y).numpy())
            batches.append((x, y))
            seen += int(y.shape[0])
        if not batches:
            raise ValueError("The dataset is empty.")
        data = store_lib.data_fingerprint(batches) if self.store is not None else None
        self._loaded = (dataset, limit, (batches, clean, x_spec, data))
        return self._loaded[2]

    def run(self, dataset, entries, limit=None, verbose=0):
        """Fills each entry's per-example results; returns the clean correctness [N]."""
        tf_logger, quiet = logging.getLogger("tensorflow"), _IntendedTraces()
        tf_logger.addFilter(quiet)
        try:
            loaded = self.load(dataset, limit)
            for number, entry in enumerate(entries):
                self._run_entry(entry, loaded, f"{number + 1}/{len(entries)}", verbose)
            return np.concatenate(loaded[1])
        finally:
            tf_logger.removeFilter(quiet)

    def _run_entry(self, entry, loaded, number, verbose):
        batches, clean, x_spec, data = loaded
        counts, start = [], 0
        for _, y in batches:
            counts.append(entry.count_in(start, int(y.shape[0])))
            start += int(y.shape[0])
        entry.clean = [c[:m] for c, m in zip(clean, counts) if m]
        correct = [c.copy() for c in entry.clean]
        l2 = [np.full(c.shape, np.nan, np.float32) for c in correct]
        work = [(b, batches[b], m) for b, m in enumerate(counts) if m]
        for stage, (name, _) in enumerate(entry.stages):
            label = entry.key if len(entry.stages) == 1 else f"{entry.key} stage {stage + 1}/{len(entry.stages)} {name}"
            key = self._key(entry, stage, sum(counts), data)
            record = self._agreed(key and self.store.load(key, name))
            if record is None:
                record = self._attack_stage(entry, stage, work, correct, l2, x_spec, label, number, verbose)
                if key:
                    self.store.save(key, name, record)
            else:
                entry.loaded = True
                if verbose:
                    print(f"[{number}] {label} (eps {entry.eps:g}): finished before, results loaded from "
                          f"{self.store.path(key, name)}")
            splits = np.cumsum([c.size for c in correct])[:-1]
            correct = np.split(record["correct"].astype(bool), splits)
            l2 = np.split(record["l2"].astype(np.float32), splits)
            entry.seconds[stage] = float(record["seconds"])
            entry.max_linf = max(entry.max_linf, float(record["max_linf"]))
            entry.outside_box += int(record["outside_box"])
            entry.stage_correct[stage] = [c.copy() for c in correct]
        entry.correct, entry.l2 = correct, l2

    def _key(self, entry, stage, count, data):
        if self.store is None:
            return None
        return self.store.key([attack for _, attack in entry.stages[: stage + 1]], entry.eps, count, data)

    def _agreed(self, record):
        """`record` if every worker found its record, else None (all workers then run the
        attack: their collectives must match)."""
        if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return record
        missing = self.strategy.run(lambda: tf.constant(0.0 if record is not None else 1.0))
        return record if float(self.strategy.reduce(tf.distribute.ReduceOp.SUM, missing, axis=None)) == 0 else None

    def _attack_stage(self, entry, stage, work, correct, l2, x_spec, label, number, verbose):
        """Runs stage `stage` of `entry` on every batch's examples still correct; returns its
        record (per-example correctness and L2 norms after it, seconds, max |delta|, examples
        outside [0, 1]). `correct` and `l2` (per batch) are updated in place."""
        attack = entry.stages[stage][1]
        todo = [(i, item) for i, item in enumerate(work) if correct[i].any()]
        progress = None
        if verbose:
            print(f"[{number}] {label} (eps {entry.eps:g}): {sum(int(correct[i].sum()) for i, _ in todo)} examples")
        if verbose and todo:
            # The shown accuracy is a running value already (stateful): Progbar must not average it again.
            progress = keras.utils.Progbar(len(todo), unit_name="batch", verbose=verbose,
                                           stateful_metrics=["robust_accuracy"])
        seconds, max_linf, outside_box = 0.0, 0.0, 0
        for done, (i, (b, (x, y), m)) in enumerate(todo):
            index = np.flatnonzero(correct[i])
            batch_seed = tf.constant([self.seed, b], tf.int32)
            seed = batch_seed if stage == 0 else tf.random.experimental.stateless_fold_in(batch_seed, stage)
            start = time.perf_counter()
            ok, linf, norms, outside = self.compiled(attack, x_spec)(
                tf.gather(x[:m], index), tf.gather(y[:m], index), tf.constant(entry.eps, tf.float32), seed
            )
            ok, linf, norms, outside = ok.numpy(), linf.numpy(), norms.numpy(), outside.numpy()
            seconds += time.perf_counter() - start
            correct[i][index] = ok
            l2[i][index] = norms
            max_linf = max(max_linf, float(linf.max()))
            outside_box += int(outside.sum())
            if progress:
                progress.update(done + 1, [("robust_accuracy", float(np.mean(np.concatenate(correct[: i + 1]))))])
        return {"correct": np.concatenate(correct), "l2": np.concatenate(l2), "seconds": seconds,
                "max_linf": max_linf, "outside_box": outside_box}


def on_every_replica(model, strategy):
    """`model` with its weights on every replica of `strategy`: itself if it was built under
    `strategy.scope()`, else a clone made there (a replica cannot read another device's
    variables)."""
    if all(strategy.extended.variable_created_in_scope(w.value) for w in model.weights):
        return model
    try:
        with strategy.scope():
            clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
    except Exception as error:  # noqa: BLE001 - any failure to clone means the same to the user
        raise ValueError(f"Could not copy the model to the replicas of {type(strategy).__name__} ({error}); build or "
                         "load it under strategy.scope().") from error
    return clone


def replica_slice(total, replica, replicas):
    """(start, size) of replica `replica`'s contiguous share of `total` rows: as even as
    possible, the first `total % replicas` replicas one row more (15 rows: 8 and 7)."""
    replica = tf.cast(replica, tf.int32)
    base, extra = total // replicas, total % replicas
    start = replica * base + tf.minimum(replica, extra)
    return start, base + tf.cast(replica < extra, tf.int32)


def _hashable(obj):
    try:
        hash(obj)
        return True
    except TypeError:
        return False
