"""Catastrophic-overfitting (CO) benchmark: every method, same model, data, schedule and
epochs, as variants of one config (configs/fashion_mnist_co.py, option ",benchmark"),
trained through the experiment doorway (`benchmarks.runner`, `seat_tf.experiment.run`).

After every epoch the config's CO monitor measures clean, FGSM and PGD-20 accuracy and the
local linearity error along PGD-20 on the first 1000 test images and flags a collapse by the
library's one rule (`seat_tf.diagnostics.collapse_reasons`); after the last epoch, PGD-50-10
on the first 1000 test images. Runs are resumable (one JSON record per (method, eps, seed) in
<out>/runs/); the report (results.json, table.md, co_benchmark.png) is rebuilt from them.

    python -m benchmarks.co_benchmark --out=runs/co --eps=0.2 --seeds=0,1 --methods=fgsm_at,rs_fgsm,seat,pgd_at
    python -m benchmarks.co_benchmark --out=runs/co --methods=seat --options=epsilon_warmup_steps=1000 --variant=warmup
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from benchmarks import runner  # noqa: E402

FLAGS = flags.FLAGS
CONFIG = "configs/fashion_mnist_co.py"


def define_flags():
    """Flags, defined only when run as a script (importing the module for tests adds none)."""
    flags.DEFINE_string("out", "runs/co_benchmark", "Output folder.")
    flags.DEFINE_list("methods", ["fgsm_at", "rs_fgsm", "n_fgsm", "seat", "pgd_at", "trades", "grad_align"],
                      "Methods (variants of configs/fashion_mnist_co.py).")
    flags.DEFINE_list("seeds", ["0", "1"], "Seeds.")
    flags.DEFINE_float("eps", 0.2, "L-inf radius in [0, 1] units.")
    flags.DEFINE_integer("epochs", None, "Epochs (default: the config's 5).")
    flags.DEFINE_string("variant", "default", "Name of a method variant made by --options.")
    flags.DEFINE_list("options", [], "Method keyword overrides, key=value (Python literals).")
    flags.DEFINE_boolean("smoke", False, "The config's seconds-long smoke protocol (tests).")
    flags.DEFINE_string("dataset", None, "Dataset override (tests: a .npz path).")
    flags.DEFINE_boolean("report_only", False, "Only rebuild the report from saved runs.")


def run_name(method, variant, eps, seed):
    return f"{method}__{variant}__eps{eps:g}__seed{seed}"


def run_one(method, seed, eps, out, variant="default", options=None, epochs=None, smoke=False, dataset=None):
    config = runner.load_config(CONFIG, f"{method},{'smoke' if smoke else 'benchmark'}")
    config.method.epsilon, config.seed = eps, seed
    for key, value in (options or {}).items():
        config.method[key] = value
    if epochs:
        config.epochs = epochs
    if dataset:
        config.dataset.name = dataset
    name = run_name(method, variant, eps, seed)
    return runner.run(config, os.path.join(out, "work", name), os.path.join(out, "runs", name + ".json"),
                      variant=variant, options=options or {})


def summarize(runs):
    rows = []
    for run in runs:
        history = run["history"]
        final_attack, final = next(iter(run["robust"].items()))
        rows.append({
            "method": run["method"], "variant": run.get("variant", "default"), "eps": run["eps"], "seed": run["seed"],
            "sec_per_epoch": round(run["train_seconds"] / max(1, run["epochs"]), 1),
            "clean": history["co_clean_accuracy"][-1], "fgsm": history["co_fgsm_accuracy"][-1],
            "pgd20_per_epoch": [round(p, 3) for p in history["co_pgd_accuracy"]],
            "linearity_error_per_epoch": [round(v, 3) for v in history["co_linearity_error"]],
            "final_attack": final_attack, "final_robust": final, "final_examples": run["examples"][final_attack],
            "co": run["co_epoch"] is not None, "co_epoch": run["co_epoch"], "diverged": run["diverged"],
        })
    return rows


def write_report(out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from seat_tf import fileio

    runs = runner.load_records(os.path.join(out, "runs"))
    if not runs:
        print("no runs yet")
        return None
    rows = summarize(runs)
    fileio.write_json_atomic({"rows": rows, "runs": runs}, os.path.join(out, "results.json"))
    lines = ["| method | variant | eps | seed | s/epoch | clean | FGSM | PGD-20 per epoch | final attack (n) | CO |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['variant']} | {r['eps']:g} | {r['seed']} | {r['sec_per_epoch']} | {r['clean']:.3f} | "
            f"{r['fgsm']:.3f} | {' '.join(f'{p:.2f}' for p in r['pgd20_per_epoch'])} | "
            f"{r['final_robust']:.3f} {r['final_attack']} ({r['final_examples']}) | "
            f"{'yes, epoch ' + str(r['co_epoch']) if r['co'] else 'no'}{' (diverged)' if r['diverged'] else ''} |")
    table = "\n".join(lines) + "\n"
    fileio.write_text_atomic(table, os.path.join(out, "table.md"))
    fig, (ax_pgd, ax_lin) = plt.subplots(1, 2, figsize=(13, 4.8))
    for row in rows:
        epochs = range(1, len(row["pgd20_per_epoch"]) + 1)
        label = f"{row['method']}/{row['variant']} eps={row['eps']:g} s{row['seed']}"
        line, = ax_pgd.plot(epochs, row["pgd20_per_epoch"], marker="o", label=label)
        ax_lin.plot(epochs, row["linearity_error_per_epoch"], marker="o", color=line.get_color())
    ax_pgd.set(xlabel="epoch", ylabel="PGD-20 accuracy (test subset)", title="Robust accuracy per epoch")
    ax_lin.set(xlabel="epoch", ylabel="mean linearity error along PGD-20", yscale="log", title="Local linearity error")
    ax_pgd.legend(fontsize=7)
    fig.tight_layout()
    fileio.save_figure_atomic(fig, os.path.join(out, "co_benchmark.png"))
    plt.close(fig)
    return table


def main(argv):
    del argv
    if not FLAGS.report_only:
        options = runner.parse_options(FLAGS.options)
        for seed in (int(s) for s in FLAGS.seeds):
            for method in FLAGS.methods:
                name = run_name(method, FLAGS.variant, FLAGS.eps, seed)
                if os.path.exists(os.path.join(FLAGS.out, "runs", name + ".json")):
                    print(f"skip {name} (done)")
                    continue
                print(f"== {name}", flush=True)
                run_one(method, seed, FLAGS.eps, FLAGS.out, FLAGS.variant, options, FLAGS.epochs, FLAGS.smoke,
                        FLAGS.dataset)
                write_report(FLAGS.out)
    print(write_report(FLAGS.out) or "")


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
