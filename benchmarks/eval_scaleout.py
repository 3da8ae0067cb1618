"""Evaluation scale-out and resume: time ratios and equal results, on real test images.

1. Mirrored vs one device: the same attack on the same test images with the evaluation
   runner on one device and under MirroredStrategy (over all GPUs, else over
   --logical_devices logical CPUs). Rounds are interleaved (one, mirrored, one, mirrored,
   ...) after a first round that traces both (listed, not in the ratio); the median of the
   per-round time ratios is reported, and the per-example results (correctness and
   perturbation norm) of the two must be identical.
2. Resume: --resume_attacks evaluated afresh, and again after a run that was stopped once
   the first attack had finished (its results are in the checkpoint folder): the second run
   only runs the others, and the results are the same.

    python -m benchmarks.eval_scaleout --out=runs/eval_scaleout      # CPU: 2 logical devices

The model is a small CNN trained for --train_epochs on --train_examples images (plain
training: the numbers are about speed and equality, not robustness). Writes
<out>/eval_scaleout.json.
"""

import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "runs/eval_scaleout", "Output folder (eval_scaleout.json).")
flags.DEFINE_string("dataset", "fashion_mnist", "Dataset (seat_tf.data) of the model and the test images.")
flags.DEFINE_integer("num_examples", 500, "Test images evaluated (the first N).")
flags.DEFINE_integer("batch_size", 250, "Evaluation batch (the global batch under MirroredStrategy).")
flags.DEFINE_float("eps", 0.1, "L-inf radius.")
flags.DEFINE_string("attack", "pgd20", "Attack of the mirrored-vs-one-device timing.")
flags.DEFINE_list("resume_attacks", ["apgd-ce", "pgd20"], "Attacks of the resume measurement (the run is "
                  "stopped after the first).")
flags.DEFINE_integer("rounds", 3, "Interleaved timing rounds (median ratio kept).")
flags.DEFINE_integer("logical_devices", 2, "Split the CPU into this many logical devices (no GPU).")
flags.DEFINE_integer("train_examples", 10000, "Training images of the model.")
flags.DEFINE_integer("train_epochs", 2, "Training epochs of the model.")


def _devices():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and FLAGS.logical_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * FLAGS.logical_devices)
    return [d.name for d in (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU"))]


def _model(strategy):
    """A small CNN trained briefly (plain training), built under `strategy`'s scope."""
    import keras

    import seat_tf

    keras.utils.set_random_seed(0)
    train = seat_tf.load_dataset(FLAGS.dataset, "train", 128, limit=FLAGS.train_examples)
    with strategy.scope():
        model = seat_tf.models.small_cnn(width=16)
        model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(train, epochs=FLAGS.train_epochs, verbose=0)
    return model


def _per_example(folder):
    import numpy as np

    return {name: dict(np.load(os.path.join(folder, name))) for name in sorted(os.listdir(folder))
            if name.endswith(".npz")}


def _same(a, b):
    import numpy as np

    return sorted(a) == sorted(b) and all(
        np.array_equal(a[k]["correct"], b[k]["correct"]) and np.array_equal(a[k]["l2"], b[k]["l2"], equal_nan=True)
        for k in a)


def main(argv):
    del argv
    devices = _devices()
    import numpy as np
    import tensorflow as tf

    import seat_tf
    from seat_tf import distribute, fileio

    mirrored = distribute.make_strategy("mirrored", devices=devices)
    model = _model(mirrored)
    test = seat_tf.load_dataset(FLAGS.dataset, "test", FLAGS.batch_size, limit=FLAGS.num_examples, shuffle=False)
    work = tempfile.mkdtemp()

    def evaluate(attacks, strategy=None, folder=None):
        start = time.perf_counter()
        result = seat_tf.evaluate(model, test, attacks=attacks, eps=FLAGS.eps, verbose=0, sanity=False,
                                  strategy=strategy, checkpoint_dir=folder)
        return result, time.perf_counter() - start

    # 1. Mirrored vs one device, each with its own runner (traced in round 0, reused after).
    from seat_tf.evaluation.runner import Entry, Runner, parse_spec

    runners = {"one_device": Runner(model, 0), "mirrored": Runner(model, 0, strategy=mirrored)}
    seconds = {name: [] for name in runners}
    per_example = {}
    for round_index in range(FLAGS.rounds + 1):
        for name, runner in runners.items():
            entry = Entry(*parse_spec(FLAGS.attack)[:2], FLAGS.eps)
            start = time.perf_counter()
            clean = runner.run(test, [entry])
            seconds[name].append(time.perf_counter() - start)
            per_example.setdefault(name, (np.concatenate(entry.correct), np.concatenate(entry.l2)))
    ratios = [m / s for m, s in zip(seconds["mirrored"][1:], seconds["one_device"][1:])]
    one, two = per_example["one_device"], per_example["mirrored"]
    scaleout = {
        "attack": FLAGS.attack, "replicas": mirrored.num_replicas_in_sync, "devices": devices,
        "robust_accuracy": float(one[0].mean()), "clean_accuracy": float(clean.mean()),
        "identical_per_example": bool(np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1], equal_nan=True)),
        "time_ratio_mirrored_to_one_device": round(statistics.median(ratios), 3),
        "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
        "seconds": {name: [round(s, 2) for s in values] for name, values in seconds.items()},  # round 0 traces
    }
    print(scaleout)

    # 2. Resume: a fresh run of all attacks, and one whose first attack finished before.
    attacks = list(FLAGS.resume_attacks)
    fresh, fresh_seconds = evaluate(attacks, folder=os.path.join(work, "fresh"))
    stopped = os.path.join(work, "stopped")
    evaluate(attacks[:1], folder=stopped)  # the run that was stopped after its first attack
    resumed, resumed_seconds = evaluate(attacks, folder=stopped)

    def accuracies(result):
        return {k: v["robust_accuracy"] for k, v in result["attacks"].items()}

    resume = {
        "attacks": attacks, "fresh_seconds": round(fresh_seconds, 2), "resumed_seconds": round(resumed_seconds, 2),
        "first_attack_seconds": fresh["attacks"][attacks[0]]["seconds"],
        "time_ratio_resumed_to_fresh": round(resumed_seconds / fresh_seconds, 3),
        "first_attack_loaded": bool(resumed["attacks"][attacks[0]].get("loaded")),
        "same_results": accuracies(fresh) == accuracies(resumed)
        and _same(_per_example(os.path.join(work, "fresh")), _per_example(stopped)),
        "robust_accuracy": accuracies(fresh),
    }
    print(resume)
    report = {"dataset": FLAGS.dataset, "num_examples": FLAGS.num_examples, "batch_size": FLAGS.batch_size,
              "eps": FLAGS.eps, "rounds": FLAGS.rounds, "tensorflow": tf.__version__,
              "mirrored_vs_one_device": scaleout, "resume": resume}
    os.makedirs(FLAGS.out, exist_ok=True)
    fileio.write_json_atomic(report, os.path.join(FLAGS.out, "eval_scaleout.json"))
    print(f"Wrote {os.path.join(FLAGS.out, 'eval_scaleout.json')}")


if __name__ == "__main__":
    app.run(main)
