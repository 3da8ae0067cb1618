"""SEAT step throughput under distribution, mixed precision and XLA, as ratios to float32.

Every variant trains the same SEAT model (same classifier weights, same global batch) in one
process; timing rounds are interleaved (A B C ... A B C ...), each round's examples/s are
divided by that round's float32 number, and the median ratio is reported (with its range
over rounds), so load from other processes affects all variants alike and the ratios stay
meaningful where absolute numbers do not.

    python -m benchmarks.distribute_speed --out=runs/distribute_speed            # CPU, 2 logical devices
    python -m benchmarks.distribute_speed --out=runs/gpu --model=preact_resnet18 --batch_sizes=128,512 \\
        --variants=float32,mixed_float16,mixed_bfloat16,xla,xla_mixed_float16 --logical_devices=0 \\
        --epoch_examples=50000                                                    # one GPU, CIFAR-10 shapes

Variants: float32 (one device), mirrored (MirroredStrategy over all GPUs, else over
--logical_devices logical CPUs), mixed_float16, mixed_bfloat16, xla (jit_compile), and
xla_mixed_float16 / xla_mixed_bfloat16. Writes <out>/distribute_speed.json and .png.
"""

import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "runs/distribute_speed", "Output folder (distribute_speed.json and .png).")
flags.DEFINE_string("model", "small_cnn", "small_cnn (28x28x1) or preact_resnet18 (32x32x3).")
flags.DEFINE_list("batch_sizes", ["128"], "Global batch sizes to measure.")
flags.DEFINE_list("variants", ["float32", "mirrored", "mixed_float16", "mixed_bfloat16", "xla"], "Variants to time.")
flags.DEFINE_integer("logical_devices", 2, "Split the CPU into this many logical devices (0: leave it whole).")
flags.DEFINE_integer("steps", 10, "Timed SEAT steps per round.")
flags.DEFINE_integer("rounds", 3, "Interleaved timing rounds (median kept).")
flags.DEFINE_integer("epoch_examples", None, "Examples per epoch for the epoch-time projection "
                     "(default: 60000 for small_cnn, 50000 for preact_resnet18).")

VARIANTS = {
    "float32": dict(),
    "mirrored": dict(mirrored=True),
    "mixed_float16": dict(policy="mixed_float16"),
    "mixed_bfloat16": dict(policy="mixed_bfloat16"),
    "xla": dict(jit=True),
    "xla_mixed_float16": dict(jit=True, policy="mixed_float16"),
    "xla_mixed_bfloat16": dict(jit=True, policy="mixed_bfloat16"),
}


def _configure_devices(count):
    """Logical CPU devices must be set before TensorFlow initializes; GPUs are left alone."""
    import tensorflow as tf

    if count > 1 and not tf.config.list_physical_devices("GPU"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def _shape():
    return (28, 28, 1) if FLAGS.model == "small_cnn" else (32, 32, 3)


def build(variant):
    """The SEAT model of a variant, compiled, built through the experiment doorway (same
    initial weights for every variant)."""
    import tensorflow as tf

    from benchmarks import runner
    from seat_tf import distribute, experiment

    options = VARIANTS[variant]
    if options.get("mirrored"):
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        strategy = distribute.make_strategy("mirrored", devices=devices)
    else:
        strategy = tf.distribute.get_strategy()
    config = runner.timing_config(FLAGS.model, "seat", 8 / 255, options.get("jit", False), options.get("policy"),
                                  lam=0.5)
    return experiment.build_model(config, total_steps=1, strategy=strategy), strategy.num_replicas_in_sync


def measure(batch_size, variants, steps, rounds):
    """Median examples/s of each variant over interleaved rounds."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(batch_size,) + _shape()).astype("float32")
    y = rng.integers(0, 10, batch_size).astype("int32")
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
    models, replicas = {}, {}
    for name in variants:
        models[name], replicas[name] = build(name)
        models[name].fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)  # trace and warm up
    samples = {name: [] for name in variants}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
            samples[name].append(steps * batch_size / (time.perf_counter() - start))
    return {name: dict(examples_per_s=round(statistics.median(v), 2), samples=[round(s, 2) for s in v],
                       replicas=replicas[name]) for name, v in samples.items()}


def plot(results, path):
    """Grouped bars: throughput of each variant relative to float32, per batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = list(results["ratios_to_float32"])
    variants = list(results["ratios_to_float32"][batches[0]])
    width = 0.8 / len(batches)
    fig, ax = plt.subplots(figsize=(1.2 * len(variants) + 2, 3.5))
    for i, batch in enumerate(batches):
        values = [results["ratios_to_float32"][batch][v] for v in variants]
        ax.bar([j + i * width for j in range(len(variants))], values, width, label=f"batch {batch}")
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_xticks([j + width * (len(batches) - 1) / 2 for j in range(len(variants))])
    ax.set_xticklabels(variants, rotation=20)
    ax.set_ylabel("examples/s relative to float32")
    ax.set_title(f"SEAT step, {results['model']} ({results['device_kind']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=120)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def main(argv):
    del argv
    unknown = [v for v in FLAGS.variants if v not in VARIANTS]
    if unknown:
        raise app.UsageError(f"Unknown variants {unknown}; choose from {sorted(VARIANTS)}.")
    _configure_devices(FLAGS.logical_devices)
    import keras
    import tensorflow as tf

    tf.get_logger().setLevel("WARNING")  # no per-trace all-reduce INFO lines

    gpus = tf.config.list_physical_devices("GPU")
    epoch_examples = FLAGS.epoch_examples or (60000 if FLAGS.model == "small_cnn" else 50000)
    results = {
        "model": FLAGS.model, "steps": FLAGS.steps, "rounds": FLAGS.rounds, "cpu_threads": os.cpu_count(),
        "device_kind": f"{len(gpus)} GPU" if gpus else f"CPU, {max(FLAGS.logical_devices, 1)} logical devices",
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "tensorflow": tf.__version__, "keras": keras.__version__, "epoch_examples": epoch_examples,
        "results": {}, "ratios_to_float32": {}, "epoch_seconds": {},
    }
    for batch in FLAGS.batch_sizes:
        measured = measure(int(batch), FLAGS.variants, FLAGS.steps, FLAGS.rounds)
        results["results"][batch] = measured
        results["epoch_seconds"][batch] = {k: round(epoch_examples / v["examples_per_s"], 1) for k, v in measured.items()}
        if "float32" in measured:
            # Ratio per round (variants timed back to back), then the median: robust to load drifting
            # between rounds on a shared machine. The per-round range is kept to show the noise.
            base = measured["float32"]["samples"]
            for name, entry in measured.items():
                per_round = [s / b for s, b in zip(entry["samples"], base)]
                entry["ratio_range"] = [round(min(per_round), 3), round(max(per_round), 3)]
                results["ratios_to_float32"].setdefault(batch, {})[name] = round(statistics.median(per_round), 3)
        print(f"batch {batch}:")
        for name, entry in measured.items():
            ratio = results["ratios_to_float32"].get(batch, {}).get(name)
            ratio_text = f"  x{ratio:.2f} float32 (rounds: {entry['ratio_range'][0]:.2f}-{entry['ratio_range'][1]:.2f})" if ratio is not None else ""
            print(f"  {name:20s} {entry['examples_per_s']:10.1f} examples/s  epoch {results['epoch_seconds'][batch][name]:8.1f} s{ratio_text}")
    os.makedirs(FLAGS.out, exist_ok=True)
    path = os.path.join(FLAGS.out, "distribute_speed.json")
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(path + ".tmp", path)
    if results["ratios_to_float32"]:
        plot(results, os.path.join(FLAGS.out, "distribute_speed.png"))
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(app.run(main))
