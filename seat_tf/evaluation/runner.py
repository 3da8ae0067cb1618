"""Parsing attack specs and running them over a dataset in one pass (one traced
function per attack, reused across batches and the eps sweep)."""

import logging
import time

import keras
import numpy as np
import tensorflow as tf

from seat_tf import attacks as attacks_lib
from seat_tf import precision
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
    """Runs entries over a dataset in one pass; compiles each attack once (eps and seed are
    graph inputs, so the eps sweep reuses the traces)."""

    def __init__(self, model, seed):
        self.model_fn = precision.logits_fn(model)
        self.num_classes, self.input_shape = model_expectations(model)
        self.seed = int(seed)
        self._compiled = {}
        self._clean = None

    def _compile(self, attack, x_spec):
        model_fn = self.model_fn
        signature = [x_spec, tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.float32),
                     tf.TensorSpec([2], tf.int32)]

        # autograph=False: attacks are written with explicit graph loops; converting the attack
        # and the model anyway adds tracing time to every evaluation's first call.
        @tf.function(input_signature=signature, autograph=False)
        def run(x, y, eps, seed):
            x_adv = tf.cast(attack(model_fn, x, y, eps, seed=seed), tf.float32)
            correct = tf.argmax(model_fn(x_adv), axis=-1, output_type=tf.int32) == y
            delta = x_adv - x
            axes = tf.range(1, tf.rank(x))
            linf = tf.reduce_max(tf.abs(delta), axis=axes)
            l2 = tf.sqrt(tf.reduce_sum(tf.square(delta), axis=axes))
            outside = tf.reduce_any((x_adv < 0.0) | (x_adv > 1.0), axis=axes)
            return correct, linf, l2, outside

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

    def run(self, dataset, entries, limit=None, verbose=0):
        """Fills each entry's per-example results; returns the clean correctness [N]."""
        tf_logger, quiet = logging.getLogger("tensorflow"), _IntendedTraces()
        tf_logger.addFilter(quiet)
        try:
            return self._run(dataset, entries, limit, verbose)
        finally:
            tf_logger.removeFilter(quiet)

    def _run(self, dataset, entries, limit, verbose):
        cardinality = int(dataset.cardinality())
        batches = cardinality if cardinality > 0 else None
        # The shown values are running accuracies already: stateful, so Progbar does not average them
        # again; verbose=2 (logs, not a terminal) prints one line at the end instead of every batch.
        shown_keys = ["clean_acc"] + [e.key for e in entries]
        progress = keras.utils.Progbar(batches, unit_name="batch", verbose=verbose, stateful_metrics=shown_keys) \
            if verbose else None
        clean_all, seen = [], 0
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
            x_spec = tf.TensorSpec([None] + list(x.shape[1:]), tf.float32)
            clean = self.clean(x_spec)(x, y).numpy()
            clean_all.append(clean)
            start, n = seen, int(y.shape[0])
            seen += n
            batch_seed = tf.constant([self.seed, index], tf.int32)
            for entry in entries:
                m = entry.count_in(start, n)
                if m:
                    self._run_entry(entry, x[:m], y[:m], clean[:m], batch_seed, x_spec)
            if progress:
                shown = [("clean_acc", float(np.mean(np.concatenate(clean_all))))]
                shown += [(e.key, float(np.mean(np.concatenate(e.correct)))) for e in entries
                          if e.role == "main" and e.kind != "l2" and e.correct]
                progress.update(index + 1, shown)
        if not clean_all:
            raise ValueError("The dataset is empty.")
        if progress and batches is None:
            progress.update(index + 1, finalize=True)
        return np.concatenate(clean_all)

    def _run_entry(self, entry, x, y, clean, batch_seed, x_spec):
        entry.clean.append(clean)
        correct = clean.copy()
        l2 = np.full(clean.shape, np.nan, np.float32)
        for stage, (_, attack) in enumerate(entry.stages):
            index = np.flatnonzero(correct)
            if index.size:
                seed = batch_seed if stage == 0 else tf.random.experimental.stateless_fold_in(batch_seed, stage)
                start = time.perf_counter()
                ok, linf, norms, outside = self.compiled(attack, x_spec)(
                    tf.gather(x, index), tf.gather(y, index), tf.constant(entry.eps, tf.float32), seed
                )
                ok, linf, norms, outside = ok.numpy(), linf.numpy(), norms.numpy(), outside.numpy()
                entry.seconds[stage] += time.perf_counter() - start
                correct[index] = ok
                l2[index] = norms
                entry.max_linf = max(entry.max_linf, float(linf.max()))
                entry.outside_box += int(outside.sum())
            entry.stage_correct[stage].append(correct.copy())
        entry.correct.append(correct)
        entry.l2.append(l2)


def _hashable(obj):
    try:
        hash(obj)
        return True
    except TypeError:
        return False
