"""Robust accuracy of any Keras classifier under a list of attacks.

    result = seat_tf.evaluate(model, test_ds, attacks=["fgsm", "pgd20"], eps=0.1)
    result["clean_accuracy"], result["attacks"]["pgd20"]["robust_accuracy"]
"""

import json
import os
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from seat_tf import attacks as attacks_lib
from seat_tf import precision
from seat_tf.training.base import check_batch


def _classifier(model):
    """The logits function of a model: AdversarialModel.call already runs the classifier.
    A float16 model gets float16-safe input gradients, so attacks do not stall on
    underflowed gradients (which would overstate robustness)."""
    if precision.computes_in_float16(model):
        return precision.float16_safe_logits(model, training=False)
    return lambda images: tf.cast(model(images, training=False), tf.float32)


def evaluate(model, dataset, attacks=("pgd20",), eps=8 / 255, seed=0, verbose=1):
    """Clean and robust accuracy of `model` (images in [0, 1] -> logits) on `dataset`.

    Args:
      model: any Keras classifier returning logits (an AdversarialModel works as is).
      dataset: tf.data.Dataset of (images, labels) batches.
      attacks: attack names or objects (see `seat_tf.attacks.get_attack`).
      eps: L-inf radius in [0, 1] units.
      seed: seed of the attacks' random starts (same seed, same result).
      verbose: 1 shows a progress bar over batches.

    Returns:
      dict with num_examples, clean_accuracy, attacks: {name: {robust_accuracy, seconds}},
      and worst_case_accuracy (an example counts as robust only if no attack fooled it).
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}.")
    named = [(a if isinstance(a, str) else getattr(a, "name", None) or repr(a), attacks_lib.get_attack(a)) for a in attacks]
    model_fn = _classifier(model)

    @tf.function
    def correct_under(attack, x, y, seed_tensor):
        x_adv = attack(model_fn, x, y, eps, seed=seed_tensor)
        return tf.argmax(model_fn(x_adv), axis=-1, output_type=tf.int32) == y

    @tf.function
    def correct_clean(x, y):
        return tf.argmax(model_fn(x), axis=-1, output_type=tf.int32) == y

    steps = int(dataset.cardinality()) if int(dataset.cardinality()) > 0 else None
    progress = keras.utils.Progbar(steps, unit_name="batch") if verbose else None
    clean, robust = [], {name: [] for name, _ in named}
    seconds = {name: 0.0 for name, _ in named}
    for index, (x, y) in enumerate(dataset):
        if index == 0:
            check_batch(x.numpy(), y.numpy())
        x = tf.cast(x, tf.float32)
        y = tf.reshape(tf.cast(y, tf.int32), [-1])
        clean.append(correct_clean(x, y).numpy())
        for name, attack in named:
            start = time.perf_counter()
            seed_tensor = tf.constant([seed, index], tf.int32)
            robust[name].append(correct_under(attack, x, y, seed_tensor).numpy())
            seconds[name] += time.perf_counter() - start
        if progress:
            progress.update(index + 1, [("clean_acc", float(np.mean(np.concatenate(clean))))])
    if not clean:
        raise ValueError("The dataset is empty.")
    clean = np.concatenate(clean)
    result = {"num_examples": int(clean.size), "eps": float(eps), "clean_accuracy": float(clean.mean()), "attacks": {}}
    worst = clean.copy()
    for name, _ in named:
        correct = np.concatenate(robust[name])
        worst &= correct
        result["attacks"][name] = {"robust_accuracy": float(correct.mean()), "seconds": round(seconds[name], 3)}
    result["worst_case_accuracy"] = float(worst.mean())
    return result


def write_json_atomic(obj, path):
    """Writes JSON to path via a temporary file and a rename: never a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def format_table(result):
    """A Markdown table of a result from `evaluate`."""
    lines = ["| attack | accuracy | seconds |", "|---|---|---|", f"| clean | {result['clean_accuracy']:.4f} | |"]
    for name, entry in result["attacks"].items():
        lines.append(f"| {name} | {entry['robust_accuracy']:.4f} | {entry['seconds']:.1f} |")
    lines.append(f"| worst case | {result['worst_case_accuracy']:.4f} | |")
    return "\n".join(lines)
