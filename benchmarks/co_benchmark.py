"""Catastrophic-overfitting (CO) benchmark: every method, same model, data, schedule and epochs.

Per epoch it records training wall time, clean accuracy, FGSM and PGD-20 accuracy on a fixed
test subset, and the mean local linearity error |l(x+d) - l(x) - d.grad l(x)| of the
cross-entropy along the PGD-20 perturbation d; after the last epoch, PGD-50-10 accuracy on
the test set. A run is flagged CO at the first epoch where PGD-20 accuracy falls below half
its best earlier value while FGSM accuracy stays at least 0.25 above it.

Runs are resumable: each (method, variant, eps, seed) is saved to <out>/runs/*.json and
skipped when present; the report (results.json, table.md, co_benchmark.png) is rebuilt from
all saved runs.

    python -m benchmarks.co_benchmark --out=runs/co --eps=0.2 --epochs=5 --seeds=0,1 \
        --methods=fgsm_at,rs_fgsm,seat,pgd_at
    python -m benchmarks.co_benchmark --out=runs/co --methods=seat \
        --variant=warmup --options=epsilon_warmup_steps=1000     # a variant of a method
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """Command-line flags; defined only when run as a script, so importing this module for
    its functions (tests) adds nothing to absl's global flag registry."""
    flags.DEFINE_string("out", "runs/co_benchmark", "Output folder.")
    flags.DEFINE_list("methods", ["fgsm_at", "rs_fgsm", "n_fgsm", "seat", "pgd_at", "trades", "grad_align"], "Methods.")
    flags.DEFINE_list("seeds", ["0", "1"], "Seeds.")
    flags.DEFINE_float("eps", 0.2, "L-inf radius in [0, 1] units.")
    flags.DEFINE_integer("epochs", 5, "Epochs.")
    flags.DEFINE_string("dataset", "fashion_mnist", "Dataset name (seat_tf.load_dataset).")
    flags.DEFINE_string("data_dir", None, "Folder of local dataset files.")
    flags.DEFINE_integer("train_limit", None, "Use the first N training images (default all).")
    flags.DEFINE_integer("eval_subset", 1000, "Fixed test subset for the per-epoch attacks.")
    flags.DEFINE_integer("final_limit", None, "Test images for the final attack (default all).")
    flags.DEFINE_string("final_attack", "pgd50x10", "Attack run once after training.")
    flags.DEFINE_integer("batch_size", 128, "Batch size.")
    flags.DEFINE_enum("optimizer", "adam", ["adam", "sgd"], "Optimizer (cyclic learning rate).")
    flags.DEFINE_float("lr", 2e-3, "Peak learning rate of the cyclic schedule.")
    flags.DEFINE_float("peak_fraction", 0.3, "Where the cyclic schedule peaks (fraction of all steps).")
    flags.DEFINE_string("variant", "default", "Name of the method variant (for --options).")
    flags.DEFINE_list("options", [], "Extra method kwargs, key=value (Python literals).")
    flags.DEFINE_boolean("report_only", False, "Only rebuild the report from saved runs.")


def parse_options(items):
    import ast

    options = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def co_epoch(records, min_gap=0.25):
    """First epoch (1-based) flagged as catastrophic overfitting, or None."""
    best = 0.0
    for index, record in enumerate(records):
        pgd, fgsm = record["pgd20_accuracy"], record["fgsm_accuracy"]
        if best > 0 and pgd < 0.5 * best and fgsm - pgd >= min_gap:
            return index + 1
        best = max(best, pgd)
    return None


def make_probe(x, y, eps):
    """tf.function: (clean, FGSM, PGD-20 accuracy, mean linearity error along PGD-20) of a model."""
    import tensorflow as tf

    from seat_tf import attacks, losses, precision

    fgsm, pgd20 = attacks.get_attack("fgsm"), attacks.get_attack("pgd20")

    def probe(model):
        logits_fn = precision.logits_fn(model)

        @tf.function
        def batch_stats(xb, yb):
            with tf.GradientTape() as tape:
                tape.watch(xb)
                clean_logits = logits_fn(xb)
                clean_loss = losses.cross_entropy(yb, clean_logits)
            grad = tape.gradient(clean_loss, xb)
            x_fgsm = fgsm(logits_fn, xb, yb, eps)
            x_pgd = pgd20(logits_fn, xb, yb, eps, seed=0)
            pgd_logits = logits_fn(x_pgd)
            correct = lambda logits: tf.cast(tf.argmax(logits, -1, output_type=tf.int32) == yb, tf.float32)  # noqa
            error = losses.linearity_error(losses.cross_entropy(yb, pgd_logits), clean_loss, x_pgd - xb, grad)
            return tf.stack([tf.reduce_sum(correct(clean_logits)), tf.reduce_sum(correct(logits_fn(x_fgsm))),
                             tf.reduce_sum(correct(pgd_logits)), tf.reduce_sum(error)])

        totals = sum(batch_stats(x[i : i + 250], y[i : i + 250]).numpy() for i in range(0, len(y), 250))
        names = ("clean_accuracy", "fgsm_accuracy", "pgd20_accuracy", "linearity_error")
        return {name: float(value) / len(y) for name, value in zip(names, totals)}

    return probe


def run_one(method, seed, eps, options, variant, out_dir):
    import keras
    import numpy as np

    import seat_tf
    from seat_tf import experiment
    from seat_tf.schedules import CyclicLR

    keras.utils.set_random_seed(seed)
    train = seat_tf.load_dataset(FLAGS.dataset, "train", FLAGS.batch_size, data_dir=FLAGS.data_dir,
                                 limit=FLAGS.train_limit, seed=seed)
    test_x, test_y = seat_tf.data.load_arrays(FLAGS.dataset, "test", FLAGS.data_dir)
    probe_x = seat_tf.data.to_unit_range(test_x[: FLAGS.eval_subset])
    probe_y = test_y[: FLAGS.eval_subset].astype("int32")
    probe = make_probe(probe_x, probe_y, eps)

    config = experiment.base_config()
    config.dataset.name = FLAGS.dataset
    classifier = experiment.build_classifier(config)
    model = seat_tf.get_method(method)(classifier, epsilon=eps, val_attack=None, seed=seed, **options)
    steps = int(train.cardinality()) * FLAGS.epochs
    schedule = CyclicLR(FLAGS.lr, steps, peak_fraction=FLAGS.peak_fraction)
    optimizer = (keras.optimizers.Adam(schedule) if FLAGS.optimizer == "adam"
                 else keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=5e-4))
    model.compile(optimizer=optimizer)

    records = []

    class Recorder(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.time()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.time() - self.start
            record = {"epoch": epoch + 1, "train_seconds": round(seconds, 1), "train_loss": float(logs["loss"])}
            record.update(probe(model))
            record["finite"] = bool(np.isfinite(logs["loss"]))
            records.append(record)
            print(f"  {method}/{variant} seed {seed} epoch {epoch + 1}: " + ", ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items() if k != "epoch"),
                flush=True)

    model.fit(train, epochs=FLAGS.epochs, callbacks=[Recorder()], verbose=0, shuffle=False)
    final_ds = seat_tf.load_dataset(FLAGS.dataset, "test", 500, data_dir=FLAGS.data_dir, limit=FLAGS.final_limit)
    start = time.time()
    final = seat_tf.evaluate(model, final_ds, attacks=[FLAGS.final_attack], eps=eps, seed=seed, verbose=0)
    result = {
        "method": method, "variant": variant, "options": options, "seed": seed, "eps": eps, "epochs": FLAGS.epochs,
        "train_images": FLAGS.train_limit or 60000, "optimizer": FLAGS.optimizer, "lr": FLAGS.lr,
        "records": records, "co_epoch": co_epoch(records),
        "train_seconds": round(sum(r["train_seconds"] for r in records), 1),
        "final": {"attack": FLAGS.final_attack, "num_examples": final["num_examples"],
                  "clean_accuracy": final["clean_accuracy"],
                  "robust_accuracy": final["attacks"][FLAGS.final_attack]["robust_accuracy"],
                  "seconds": round(time.time() - start, 1)},
    }
    path = os.path.join(out_dir, "runs", run_name(method, variant, eps, seed) + ".json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=2)
    os.replace(path + ".tmp", path)
    return result


def run_name(method, variant, eps, seed):
    return f"{method}__{variant}__eps{eps:g}__seed{seed}"


def load_runs(out_dir):
    folder = os.path.join(out_dir, "runs")
    runs = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                runs.append(json.load(f))
    return runs


def summarize(runs):
    rows = []
    for run in runs:
        pgd = [r["pgd20_accuracy"] for r in run["records"]]
        rows.append({
            "method": run["method"], "variant": run["variant"], "eps": run["eps"], "seed": run["seed"],
            "sec_per_epoch": round(run["train_seconds"] / max(1, len(run["records"])), 1),
            "clean": run["records"][-1]["clean_accuracy"], "fgsm": run["records"][-1]["fgsm_accuracy"],
            "pgd20_per_epoch": [round(p, 3) for p in pgd], "pgd20_last": pgd[-1],
            "linearity_error_per_epoch": [round(r["linearity_error"], 3) for r in run["records"]],
            "final_attack": run["final"]["attack"], "final_robust": run["final"]["robust_accuracy"],
            "final_examples": run["final"]["num_examples"],
            "co": run["co_epoch"] is not None, "co_epoch": run["co_epoch"],
            "diverged": not all(r.get("finite", True) for r in run["records"]),
        })
    return rows


def write_report(out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_runs(out_dir)
    if not runs:
        print("no runs yet")
        return
    rows = summarize(runs)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"rows": rows, "runs": runs}, f, indent=2)
    lines = ["| method | variant | eps | seed | s/epoch | clean | FGSM | PGD-20 per epoch | final attack (n) | CO |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['variant']} | {r['eps']:g} | {r['seed']} | {r['sec_per_epoch']} | {r['clean']:.3f} | "
            f"{r['fgsm']:.3f} | {' '.join(f'{p:.2f}' for p in r['pgd20_per_epoch'])} | "
            f"{r['final_robust']:.3f} {r['final_attack']} ({r['final_examples']}) | "
            f"{'yes, epoch ' + str(r['co_epoch']) if r['co'] else 'no'}{' (diverged)' if r['diverged'] else ''} |")
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    fig, (ax_pgd, ax_lin) = plt.subplots(1, 2, figsize=(13, 4.8))
    for run in runs:
        epochs = [r["epoch"] for r in run["records"]]
        label = f"{run['method']}/{run['variant']} eps={run['eps']:g} s{run['seed']}"
        line, = ax_pgd.plot(epochs, [r["pgd20_accuracy"] for r in run["records"]], marker="o", label=label)
        ax_lin.plot(epochs, [r["linearity_error"] for r in run["records"]], marker="o", color=line.get_color())
    ax_pgd.set(xlabel="epoch", ylabel="PGD-20 accuracy (test subset)", title="Robust accuracy per epoch")
    ax_lin.set(xlabel="epoch", ylabel="mean linearity error along PGD-20", yscale="log", title="Local linearity error")
    ax_pgd.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "co_benchmark.png"), dpi=120)
    print("\n".join(lines))


def main(argv):
    del argv
    os.makedirs(os.path.join(FLAGS.out, "runs"), exist_ok=True)
    if not FLAGS.report_only:
        options = parse_options(FLAGS.options)
        for seed in [int(s) for s in FLAGS.seeds]:
            for method in FLAGS.methods:
                path = os.path.join(FLAGS.out, "runs", run_name(method, FLAGS.variant, FLAGS.eps, seed) + ".json")
                if os.path.exists(path):
                    print(f"skip {path} (done)")
                    continue
                print(f"== {method} ({FLAGS.variant}) eps={FLAGS.eps} seed={seed}", flush=True)
                run_one(method, seed, FLAGS.eps, options, FLAGS.variant, FLAGS.out)
                write_report(FLAGS.out)
    write_report(FLAGS.out)


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
