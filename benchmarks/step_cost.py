"""Step-cost benchmark: time per training step of every method, relative to FGSM-AT and PGD-10-AT.

All methods train the same classifier (same weights) on the same batch in one process.
Timing rounds are interleaved (A B C ... A B C ...) and the median per method is kept, so
load from other processes affects every method alike and the ratios stay meaningful.

    python -m benchmarks.step_cost --out=runs/step_cost.json [--jit=both] [--batch_size=128]
"""

import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """Command-line flags; defined only when run as a script, so importing this module for
    its functions (tests) adds nothing to absl's global flag registry."""
    flags.DEFINE_string("out", "runs/step_cost.json", "JSON output path.")
    flags.DEFINE_list("methods", ["plain", "fgsm_at", "rs_fgsm", "n_fgsm", "seat", "grad_align", "trades", "pgd_at"],
                      "Methods to time ('plain' is non-adversarial training); a variant is written "
                      "name:key=value:key=value, e.g. seat:init='zero'.")
    flags.DEFINE_enum("jit", "off", ["off", "on", "both"], "jit_compile setting(s) to measure.")
    flags.DEFINE_integer("batch_size", 128, "Batch size.")
    flags.DEFINE_integer("steps", 10, "Timed steps per round.")
    flags.DEFINE_integer("rounds", 3, "Interleaved timing rounds (median kept).")
    flags.DEFINE_float("epsilon", 0.2, "Attack radius (cost does not depend on it).")
    flags.DEFINE_string("model", "small_cnn", "small_cnn (28x28x1) or preact_resnet18 (32x32x3).")


def parse_method(spec):
    """'seat:init=\'zero\':lam=0.3' -> ('seat', {'init': 'zero', 'lam': 0.3})."""
    import ast

    name, *items = spec.split(":")
    options = {}
    for item in items:
        key, _, value = item.partition("=")
        options[key] = ast.literal_eval(value)
    return name, options


def build(spec, jit, epsilon):
    """The compiled model of a method spec, built through the experiment doorway (same initial
    weights for every method); "plain" is the classifier trained without attack."""
    import keras

    from benchmarks import runner
    from seat_tf import experiment

    name, options = parse_method(spec)
    config = runner.timing_config(FLAGS.model, "fgsm_at" if name == "plain" else name, epsilon, jit, **options)
    if name == "plain":
        experiment.set_seed(config.seed)
        classifier = experiment.build_classifier(config)
        classifier.compile(optimizer=experiment.build_optimizer(config, total_steps=1), jit_compile=jit,
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return classifier
    return experiment.build_model(config, total_steps=1)


def measure(methods, jit, batch_size, steps, rounds, epsilon):
    """ms per step of each method (median over interleaved rounds)."""
    import numpy as np

    shape = (28, 28, 1) if FLAGS.model == "small_cnn" else (32, 32, 3)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(batch_size,) + shape).astype("float32")
    y = rng.integers(0, 10, batch_size).astype("int32")
    models = {name: build(name, jit, epsilon) for name in methods}
    for model in models.values():  # trace and warm up
        for _ in range(3):
            model.train_on_batch(x, y)
    samples = {name: [] for name in methods}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(x, y)
            samples[name].append((time.perf_counter() - start) / steps * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv):
    del argv
    import tensorflow as tf

    results = {"batch_size": FLAGS.batch_size, "model": FLAGS.model, "cpu_threads": os.cpu_count(),
               "tensorflow": tf.__version__, "devices": [d.name for d in tf.config.list_physical_devices()],
               "settings": {}}
    for jit in ([False, True] if FLAGS.jit == "both" else [FLAGS.jit == "on"]):
        ms = measure(FLAGS.methods, jit, FLAGS.batch_size, FLAGS.steps, FLAGS.rounds, FLAGS.epsilon)
        entry = {"ms_per_step": {k: round(v, 2) for k, v in ms.items()}}
        for reference in ("fgsm_at", "pgd_at", "plain"):
            if reference in ms:
                entry[f"ratio_to_{reference}"] = {k: round(v / ms[reference], 3) for k, v in ms.items()}
        results["settings"][f"jit_{'on' if jit else 'off'}"] = entry
        print(f"jit_compile={jit}:")
        for name, value in ms.items():
            ratios = "  ".join(f"x{entry[f'ratio_to_{r}'][name]:.2f} {r}" for r in ("fgsm_at", "pgd_at") if f"ratio_to_{r}" in entry)
            print(f"  {name:12s} {value:8.1f} ms/step  {ratios}")
    if "jit_on" in results["settings"] and "jit_off" in results["settings"]:
        on, off = results["settings"]["jit_on"]["ms_per_step"], results["settings"]["jit_off"]["ms_per_step"]
        results["jit_speedup"] = {k: round(off[k] / on[k], 3) for k in on}
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out + ".tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(FLAGS.out + ".tmp", FLAGS.out)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
