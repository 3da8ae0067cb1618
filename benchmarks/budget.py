"""Equal-time-budget benchmark: every method of configs/fashion_mnist_budget.py, trained for
the epochs that fit in PGD-10-AT's 5-epoch budget, through the one experiment doorway
(`seat_tf.experiment.run`), then attacked with PGD-50-10 and APGD-CE.

    python -m benchmarks.budget --out=runs/budget                       # all variants, eps 0.1 and 0.2, seed 0
    python -m benchmarks.budget --out=runs/budget --variants=seat,pgd_at --seeds=0,1 --eps=0.2
    python -m benchmarks.budget --out=runs/budget --epochs=5            # the equal-epochs table instead
    python -m benchmarks.budget --out=runs/budget --report_only --readme=README.md
    python -m benchmarks.budget --out=runs/budget --variants=seat --options=rel_step_size=2.0 --label=step2

Resumable at two levels: a finished (variant, eps, seed[, epochs]) is a JSON file in
<out>/runs/ and is skipped; an interrupted one resumes from its last finished epoch (the
run's workdir keeps Keras' BackupAndRestore state, and this benchmark's per-epoch timings).
The report (results.json, budget.md, budget.png, and with --readme the README section
between its budget-table markers) is rebuilt from all saved runs, never typed by hand.

Per run it records training seconds per epoch (training only: validation and the monitor
are excluded, so every variant's clock counts the same thing), the CO monitor's PGD-10 / FGSM
accuracy on 512 held-out test images after every epoch, and after training clean,
PGD-50-10 and APGD-CE accuracy on the first 1000 test images. CO = the monitor flagged a
collapse in some epoch (seat_tf.diagnostics.collapse_reasons: one rule for the library). The
last column is the evaluation's own verdict: the per-example worst case over every attack it
ran (Square among them) and the sanity checks that failed; a model whose gradients are masked
shows it there while its PGD-50-10 looks fine.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from benchmarks import runner  # noqa: E402

FLAGS = flags.FLAGS
CONFIG = "configs/fashion_mnist_budget.py"


def define_flags():
    """Flags, defined only when run as a script (importing the module for tests adds none)."""
    flags.DEFINE_string("out", "runs/budget", "Output folder.")
    flags.DEFINE_list("variants", ["seat", "pgd_at", "seat_steps3", "seat_steps3u", "seat_steps3u_lam0", "seat_steps4", "seat_paper", "elle", "fgsm_at", "rs_fgsm", "n_fgsm",
                                   "grad_align", "trades", "elle_a", "seat_fl"],
                      "Variants of configs/fashion_mnist_budget.py, run in this order.")
    flags.DEFINE_list("eps", ["0.2", "0.1"], "Radii (outer loop).")
    flags.DEFINE_list("seeds", ["0"], "Seeds.")
    flags.DEFINE_float("budget_scale", 1.0, "Multiplies the budget (every variant's epochs).")
    flags.DEFINE_integer("epochs", None, "Equal-epochs mode: every variant trains this many epochs.")
    flags.DEFINE_list("options", [], "Research rows: method overrides key=value (Python literals); needs --label.")
    flags.DEFINE_string("label", None, "Name of the --options change; its rows are '<variant>+<label>'.")
    flags.DEFINE_boolean("smoke", False, "Tiny data and one epoch (tests).")
    flags.DEFINE_string("data_dir", None, "Dataset folder override (tests: a fake .npz).")
    flags.DEFINE_string("dataset", None, "Dataset override (tests: a .npz path).")
    flags.DEFINE_boolean("report_only", False, "Only rebuild the report from saved runs.")
    flags.DEFINE_string("readme", None, "Also rewrite this README's section between the budget-table markers.")


def variant_name(variant, label=None):
    return f"{variant}+{label}" if label else variant


def run_key(variant, eps, seed, epochs=None, budget_scale=1.0):
    scale = f"_x{budget_scale:g}" if budget_scale != 1.0 and not epochs else ""
    return f"{variant}_eps{eps:g}_s{seed}" + (f"_e{epochs}" if epochs else scale)


def config_for(variant, eps, seed, epochs=None, smoke=False, dataset=None, data_dir=None, budget_scale=1.0,
               options=None):
    """The config of one run: the variant at `eps` and `seed`, with the method's `options`
    overridden (a research row: same budget as the variant)."""
    config = runner.load_config(CONFIG, variant + (",smoke" if smoke else ""))
    config.method.epsilon = eps
    for name, value in (options or {}).items():
        config.method[name] = value
    config.seed = seed
    config.budget_scale *= budget_scale
    if epochs:
        config.epochs = epochs
    if dataset:
        config.dataset.name = dataset
    if data_dir:
        config.dataset.data_dir = data_dir
    return config


def run_one(variant, eps, seed, out, epochs=None, smoke=False, dataset=None, data_dir=None, budget_scale=1.0,
            options=None, label=None):
    """Trains and evaluates one (variant, eps, seed) (with `options`, the row named `label`);
    returns the saved record."""
    if bool(options) != bool(label):
        raise ValueError("--options and --label go together: a changed method needs its own row name.")
    config = config_for(variant, eps, seed, epochs, smoke, dataset, data_dir, budget_scale, options)
    name = variant_name(variant, label)
    key = run_key(name, eps, seed, epochs, budget_scale)
    record = runner.run(config, os.path.join(out, "work", key), os.path.join(out, "runs", key + ".json"),
                        variant=name, equal_epochs=bool(epochs), budget_scale=budget_scale, options=options or {})
    return record


def load_runs(out):
    return runner.load_records(os.path.join(out, "runs"))


def _mean(values):
    return sum(values) / len(values) if values else float("nan")


def summarize(runs):
    """Rows per (mode, eps, variant): seeds, epochs, train seconds, clean, PGD-50-10, APGD-CE, CO."""
    groups = {}
    for run in runs:
        scale = run.get("budget_scale", 1.0)
        mode = f"epochs{run['epochs']}" if run.get("equal_epochs") else ("budget" if scale == 1.0 else f"budget x{scale:g}")
        groups.setdefault((mode, run["eps"], run["variant"]), []).append(run)
    # A budget run whose epochs equal an equal-epochs table's is that table's row too (PGD-10-AT's
    # 5-epoch budget run is its 5-epoch row): the same config, trained once.
    trained_for_epochs = {key for key in groups if key[0].startswith("epochs")}
    for mode, eps in {key[:2] for key in trained_for_epochs}:
        for run in runs:
            key = (mode, eps, run["variant"])
            if (not run.get("equal_epochs") and run.get("budget_scale", 1.0) == 1.0 and run["eps"] == eps
                    and f"epochs{run['epochs']}" == mode and key not in trained_for_epochs):
                groups.setdefault(key, []).append(run)
    rows = []
    for (mode, eps, variant), group in sorted(groups.items(), key=lambda item: (item[0][0], -item[0][1])):
        group.sort(key=lambda r: r["seed"])
        robust = lambda name: [r["robust"].get(name) for r in group if r["robust"].get(name) is not None]  # noqa
        rows.append(dict(
            mode=mode, eps=eps, variant=variant, seeds=[r["seed"] for r in group], epochs=group[0]["epochs"],
            train_seconds=[r["train_seconds"] for r in group], clean=[r["clean"] for r in group],
            pgd50x10=robust("pgd50x10"), apgd_ce=robust("apgd-ce"),
            co=[r["co_epoch"] for r in group], diverged=[r["diverged"] for r in group],
            worst_case=[r.get("worst_case") for r in group], failed_checks=[r.get("failed_checks") for r in group],
            notes=[f"seed {r['seed']}: {r['note']}" for r in group if r.get("note")],
            **diagnosis(group),
        ))
    return rows


def _last(run, name):
    values = run["history"].get(name) or []
    return values[-1] if values else None


def diagnosis(group):
    """Where robustness goes, from the last epoch of each run: accuracy against the method's own
    training attack (training batches), and the CO monitor's FGSM and PGD-10 accuracy and
    linearity error along PGD-10 (512 test images). A model whose own attack and FGSM leave it
    far more accurate than PGD-10 was trained against an adversary weaker than PGD."""
    fields = dict(train_adv_accuracy="adv_accuracy", monitor_fgsm="co_fgsm_accuracy",
                  monitor_pgd10="co_pgd_accuracy", monitor_linearity_error="co_linearity_error")
    rows = {key: [_last(r, name) for r in group] for key, name in fields.items()}
    rows["fgsm_minus_pgd10"] = [None if f is None or p is None else f - p
                                for f, p in zip(rows["monitor_fgsm"], rows["monitor_pgd10"])]
    return {key: [v for v in values if v is not None] for key, values in rows.items()}


# Short names of the evaluation's failed sanity checks (seat_tf.evaluation.sanity) for the tables.
CHECK_NAMES = {"black_box_not_stronger": "Square beats the gradient attacks",
               "large_eps_accuracy_near_zero": "eps-0.5 PGD leaves > 5%",
               "pgd_not_weaker_than_fgsm": "FGSM beats PGD", "more_iterations_not_weaker": "more steps help the model",
               "within_budget": "outside the ball"}


def evaluation_verdict(worst_case, failed_checks):
    """One seed's cell: the worst case over all attacks and the failed checks ("-": a record
    from before they were kept)."""
    if failed_checks is None:
        return "-"
    checks = "; ".join(CHECK_NAMES.get(name, name) for name in failed_checks) or "checks pass"
    return f"{worst_case:.3f}, {checks}" if worst_case is not None else checks


def markdown(rows):
    """The tables of the report (one per mode and eps), best PGD-50-10 first."""
    def fmt(values, digits=3):
        return " / ".join(f"{v:.{digits}f}" for v in values) if values else "-"

    lines = []
    for mode in sorted({row["mode"] for row in rows}):
        for eps in sorted({row["eps"] for row in rows if row["mode"] == mode}, reverse=True):
            title = (f"equal epochs ({mode[6:]})" if mode.startswith("epochs") else
                     f"equal time budget (PGD-10-AT's 5 epochs{mode[6:] and ', ' + mode[7:]})")
            lines += [f"**eps {eps:g}, {title}**", "",
                      "| method | seeds | epochs | train s | clean | PGD-50-10 | APGD-CE | CO | worst case, evaluation checks |",
                      "|---|---|---|---|---|---|---|---|---|"]
            selected = [row for row in rows if row["mode"] == mode and row["eps"] == eps]
            selected.sort(key=lambda row: -_mean(row["pgd50x10"]))
            notes = []
            for row in selected:
                co = ", ".join("no" if c is None else f"epoch {c}" for c in row["co"])
                marker = ""
                if row.get("notes"):  # a record's own caveat (e.g. seconds from a resumed run)
                    notes.append(f"({len(notes) + 1}) {row['variant']}, " + "; ".join(row["notes"]))
                    marker = f" ({len(notes)})"
                lines.append(f"| {row['variant']}{marker} | {','.join(map(str, row['seeds']))} | {row['epochs']} | "
                             f"{fmt(row['train_seconds'], 0)} | {fmt(row['clean'])} | {fmt(row['pgd50x10'])} | "
                             f"{fmt(row['apgd_ce'])} | {co} | "
                             + " / ".join(map(evaluation_verdict, row["worst_case"], row["failed_checks"])) + " |")
            lines += [""] + ([" ".join(notes), ""] if notes else [])
    lines += diagnosis_markdown(rows)
    return "\n".join(lines)


def diagnosis_markdown(rows):
    """One table over every run (a run in two tables listed once): how strong was the
    adversary each model was trained against, measured after its last epoch (`diagnosis`)."""
    def fmt(values):
        return " / ".join(f"{v:.2f}" for v in values) if values else "-"

    selected, seen = [], set()
    for row in sorted(rows, key=lambda row: (row["mode"] != "budget", -row["eps"], -_mean(row["pgd50x10"]))):
        key = (row["eps"], row["variant"], row["epochs"], tuple(row["seeds"]))
        if row.get("monitor_pgd10") and key not in seen and not row["mode"].startswith("budget x"):
            seen.add(key)
            selected.append(row)
    if not selected:
        return []
    lines = ["**Where the gap comes from (after the last epoch)**: accuracy against the method's own training "
             "attack (training batches), FGSM and PGD-10 accuracy and the linearity error along PGD-10 "
             "(CO monitor, 512 test images)", "",
             "| eps | method | epochs | own attack (train) | FGSM | PGD-10 | FGSM - PGD-10 | linearity error |",
             "|---|---|---|---|---|---|---|---|"]
    for row in selected:
        lines.append(f"| {row['eps']:g} | {row['variant']} | {row['epochs']} | {fmt(row['train_adv_accuracy'])} | "
                     f"{fmt(row['monitor_fgsm'])} | {fmt(row['monitor_pgd10'])} | {fmt(row['fgsm_minus_pgd10'])} | "
                     f"{fmt(row['monitor_linearity_error'])} |")
    return lines + [""]


def plot(runs, path):
    """Robust accuracy (PGD-10, 512 test images, after every epoch) against cumulative
    training seconds; one colour per method, one marker per seed, a star at the final
    PGD-50-10 accuracy. One panel per eps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from seat_tf import fileio

    runs = [r for r in runs if not r.get("equal_epochs") and r.get("budget_scale", 1.0) == 1.0]
    radii = sorted({r["eps"] for r in runs}, reverse=True)
    if not radii:
        return None
    variants = sorted({r["variant"] for r in runs})
    colours = {v: plt.cm.tab10(i % 10) for i, v in enumerate(variants)}
    markers = ["o", "s", "^", "D"]
    figure, axes = plt.subplots(1, len(radii), figsize=(6.5 * len(radii), 4.8), squeeze=False)
    for axis, eps in zip(axes[0], radii):
        for run in (r for r in runs if r["eps"] == eps):
            colour, marker = colours[run["variant"]], markers[run["seed"] % len(markers)]
            label = run["variant"] if run["seed"] == min(r["seed"] for r in runs if r["variant"] == run["variant"]) else None
            axis.plot(run["cumulative_train_seconds"], run["history"].get("co_pgd_accuracy", []), marker=marker, markersize=4,
                      color=colour, label=label, linewidth=1)
            if run["robust"].get("pgd50x10") is not None and run["cumulative_train_seconds"]:
                axis.plot(run["cumulative_train_seconds"][-1], run["robust"]["pgd50x10"], marker="*",
                          markersize=12, color=colour)
        axis.set_title(f"eps = {eps:g}: robust accuracy vs training time")
        axis.set_xlabel("cumulative training seconds (2 CPU cores)")
        axis.set_ylabel("PGD-10 accuracy, 512 test images (star: final PGD-50-10)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    fileio.save_figure_atomic(figure, path)
    plt.close(figure)
    return path


def write_report(out, readme=None):
    runs = load_runs(out)
    rows = summarize(runs)
    plot(runs, os.path.join(out, "budget.png"))
    return runner.publish(out, markdown(rows), "budget.md", {"runs": runs, "rows": rows}, "budget-table", readme)


def main(argv):
    del argv
    if not FLAGS.report_only:
        for eps in (float(e) for e in FLAGS.eps):
            for variant in FLAGS.variants:
                for seed in (int(s) for s in FLAGS.seeds):
                    key = run_key(variant_name(variant, FLAGS.label), eps, seed, FLAGS.epochs, FLAGS.budget_scale)
                    if os.path.exists(os.path.join(FLAGS.out, "runs", key + ".json")):
                        print(f"[budget] {key}: done, skipped")
                        continue
                    print(f"[budget] {key}: training", flush=True)
                    run_one(variant, eps, seed, FLAGS.out, epochs=FLAGS.epochs, smoke=FLAGS.smoke,
                            dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, budget_scale=FLAGS.budget_scale,
                            options=runner.parse_options(FLAGS.options), label=FLAGS.label)
                    write_report(FLAGS.out, FLAGS.readme)
    print(write_report(FLAGS.out, FLAGS.readme))


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
