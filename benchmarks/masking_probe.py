"""Calibration of the CO monitor's gradient-masking rule: PGD-10 (the monitor's attack) against
Square with 100 and 300 queries on the first test images, for trained models.

    python -m benchmarks.masking_probe --models=e3_s0=runs/a/model.keras:0.3,e2_s0=runs/b/model.keras:0.3 \\
        --out=docs/results/masking_probe.json

Each model is name=path:eps. The rule (diagnostics.collapse_reasons, max_masking_gap 0.1) flags
PGD accuracy above the gradient-free attack's by more than 0.1.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
ATTACKS = ("pgd10", "square100", "square300")


def define_flags():
    flags.DEFINE_list("models", [], "name=path/to/model.keras:eps, ...")
    flags.DEFINE_integer("examples", 500, "First test images.")
    flags.DEFINE_string("out", "runs/masking_probe.json", "JSON output path.")
    flags.DEFINE_string("note", "", "A note stored with the results.")


def probe(model, x, y, eps):
    """{clean, attack: accuracy, attack_seconds} of one model."""
    import tensorflow as tf

    from seat_tf import attacks, precision

    fn = precision.logits_fn(model)

    def accuracy(images):
        return float(tf.reduce_mean(tf.cast(tf.argmax(fn(images), -1, output_type=tf.int32) == y, tf.float32)))

    row = {"clean": accuracy(x)}
    for name in ATTACKS:
        start = time.time()
        row[name] = accuracy(attacks.get_attack(name)(fn, x, y, eps, seed=tf.constant([0, 0])))
        row[name + "_seconds"] = round(time.time() - start, 1)
    row["pgd10_minus_square100"] = row["pgd10"] - row["square100"]
    return row


def main(argv):
    del argv
    import keras
    import numpy as np
    import tensorflow as tf

    import seat_tf  # noqa: F401  (registers the model classes)
    from seat_tf import data, fileio

    x, y = data.first_examples("fashion_mnist", "test", FLAGS.examples)
    x, y = tf.constant(np.asarray(x, np.float32)), tf.constant(np.asarray(y, np.int32))
    results = {"examples": FLAGS.examples, "note": FLAGS.note, "models": {}}
    for spec in FLAGS.models:
        name, _, rest = spec.partition("=")
        path, _, eps = rest.rpartition(":")
        row = probe(keras.models.load_model(path), x, y, float(eps))
        results["models"][name] = dict(path=path, eps=float(eps), **row)
        print(name, row, flush=True)
    fileio.write_json_atomic(results, FLAGS.out)


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
