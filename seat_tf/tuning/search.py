"""KerasTuner search over SEAT's lam and flood level, then a PGD-50-10 check of the winner.

    python -m tuning.search --config=configs/fashion_mnist_seat.py --project_dir=runs/tune \\
        --tuner=random --max_trials=8 --epochs_per_trial=3 --config.dataset.train_limit=10000
    seat-tf tune ...   # the same

Each trial trains a SEATModel built by `seat_tf.experiment` (lam, flood level and optional
warm-up / learning rate from `config.tuning`) and is scored by its best epoch's
`val_robust_accuracy` (config.val_attack, PGD-10 by default, on the first
config.dataset.val_limit test images). The search is resumable: the tuner's state lives in
<project_dir>/search and a rerun (without --overwrite) skips finished trials and retries
the one that was interrupted.

At the end the best trial's best-epoch weights are reloaded (`get_best_models`) and, with
--baseline, the config's own SEAT settings (paper default lam=0.5, no flooding) are trained
with the same budget and the same best-epoch rule. Both are evaluated with --final_eval_attack
(PGD-50 with 10 restarts) on --final_eval_examples test images held out from the validation
subset (dataset.test_limit becomes val_limit + final_eval_examples). Written to <project_dir>:
tuning_summary.json, trials.md, trials.png.

Distributed search (several processes or machines share one oracle; KerasTuner's
chief/worker protocol): start every process with the same flags and --project_dir on a
shared file system, and set

    KERASTUNER_ORACLE_IP=<chief's address>  KERASTUNER_ORACLE_PORT=<free port>
    KERASTUNER_TUNER_ID=chief      (one process: runs the oracle, trains nothing, and writes
                                    the summary when all trials are done)
    KERASTUNER_TUNER_ID=tuner0, tuner1, ...   (workers: ask the chief for trials, train them)
"""

import copy
import json
import os
import sys
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from seat_tf import fileio  # noqa: E402

FLAGS = flags.FLAGS


def define_shared_flags():
    """--config, --verbose and --overwrite, which `seat-tf tune` shares with the other commands
    of seat_tf/cli.py (defined there); `python -m tuning.search` defines them here. Kept out
    of import time so that importing this module and seat_tf.cli works in either order."""
    if "config" not in FLAGS:
        config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:variant]).")
    if "verbose" not in FLAGS:
        flags.DEFINE_integer("verbose", None, "Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch "
                             "(default: 1 on a terminal, 2 otherwise).")
    if "overwrite" not in FLAGS:
        flags.DEFINE_bool("overwrite", False, "Start the search afresh instead of resuming it.")


TUNERS = ("random", "bayesian", "hyperband")
flags.DEFINE_enum("tuner", "random", TUNERS, "KerasTuner algorithm: RandomSearch, BayesianOptimization, Hyperband.")
flags.DEFINE_integer("max_trials", 8, "Trials to run (RandomSearch, BayesianOptimization; Hyperband sizes its own).")
flags.DEFINE_integer("epochs_per_trial", None, "Epochs per trial (Hyperband: max_epochs); default config.epochs.")
flags.DEFINE_string("project_dir", None, "Tuner state (search/) and the summary files.")
flags.DEFINE_enum("trial_strategy", "none", ("none", "mirrored"),
                  "Distribution strategy each trial trains under: none, or tf.distribute.MirroredStrategy.")
flags.DEFINE_string("final_eval_attack", "pgd50x10",
                    "Attack of the final evaluation (a seat_tf.attacks.get_attack name).")
flags.DEFINE_integer("final_eval_examples", 1000,
                     "Test images of the final evaluation, taken after the validation subset.")
flags.DEFINE_bool("baseline", True, "Also train and evaluate the config's own lam/flood level with the same budget.")


def make_strategy(name):
    """None or a tf.distribute strategy for each trial's training."""
    if name in (None, "none"):
        return None
    if name == "mirrored":
        import tensorflow as tf

        return tf.distribute.MirroredStrategy()
    raise ValueError(f"Unknown trial strategy {name!r}; use 'none' or 'mirrored'.")


def make_tuner(kind, hypermodel, directory, max_trials, epochs, seed=0, overwrite=False, strategy=None):
    """A KerasTuner tuner over `hypermodel` whose state lives in directory/search."""
    import keras_tuner

    common = dict(
        objective=hypermodel.objective, seed=seed, directory=directory, project_name="search",
        overwrite=overwrite, distribution_strategy=strategy,
    )
    if kind == "random":
        return keras_tuner.RandomSearch(hypermodel, max_trials=max_trials, **common)
    if kind == "bayesian":
        return keras_tuner.BayesianOptimization(hypermodel, max_trials=max_trials, **common)
    if kind == "hyperband":
        return keras_tuner.Hyperband(hypermodel, max_epochs=epochs, factor=3, hyperband_iterations=1, **common)
    raise ValueError(f"Unknown tuner {kind!r}; choose one of {TUNERS}.")


def _held_out(test_ds, skip, count, batch_size):
    return test_ds.unbatch().skip(skip).take(count).batch(batch_size)


def trial_records(oracle, objective_name):
    """One dict per trial (in trial-id order): status, hyperparameters and the metrics the
    tuner recorded at the trial's best epoch."""
    records = []
    for trial_id in sorted(oracle.trials):
        trial = oracle.trials[trial_id]
        record = {"trial_id": trial_id, "status": trial.status, "best_epoch": trial.best_step, "score": trial.score}
        record["hyperparameters"] = {
            k: round(v, 6) if isinstance(v, float) else v  # grids give 0.30000000000000004
            for k, v in trial.hyperparameters.values.items() if not k.startswith("tuner/")
        }
        for name in ("val_robust_accuracy", "val_clean_accuracy", "val_loss", "loss", objective_name):
            if trial.metrics.exists(name):
                record[name] = float(trial.metrics.get_history(name)[-1].mean())
        records.append(record)
    return records


def _fmt(value, spec=".4f"):
    """A table cell: '-' for missing values, `spec` for numbers."""
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def markdown_report(summary):
    """Markdown: the trial table (best first marked), then the final comparison."""
    names = [n for n in ("lam", "flood_level", "epsilon_warmup_epochs", "learning_rate")
             if any(n in t["hyperparameters"] for t in summary["trials"])]
    objective = summary["objective"]
    columns = ["trial", "status"] + names + ["best epoch", "val clean acc", "val robust acc"]
    if objective != "val_robust_accuracy":
        columns.append(objective)
    budget = f"up to {summary['epochs_per_trial']}" if summary["tuner"] == "hyperband" else summary["epochs_per_trial"]
    lines = [f"## Trials ({summary['tuner']}, {budget} epochs each, objective {objective})", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    best_id = (summary.get("best_trial") or {}).get("trial_id")
    for t in summary["trials"]:
        trial = f"**{t['trial_id']}** (best)" if t["trial_id"] == best_id else t["trial_id"]
        row = [trial, t["status"]] + [_fmt(t["hyperparameters"].get(n), "g") for n in names]
        row += [str(t["best_epoch"] + 1) if t.get("score") is not None else "-",
                _fmt(t.get("val_clean_accuracy")), _fmt(t.get("val_robust_accuracy"))]
        if objective != "val_robust_accuracy":
            row.append(_fmt(t.get(objective)))
        lines.append("| " + " | ".join(row) + " |")
    baseline = summary.get("baseline")
    if baseline:
        lines += ["", f"Baseline (config's own settings, same budget): lam={baseline['lam']}, "
                  f"flood_level={baseline['flood_level']}, best epoch {baseline['best_epoch'] + 1}, "
                  f"val clean {_fmt(baseline['val_clean_accuracy'])}, val robust {_fmt(baseline['val_robust_accuracy'])}."]
    final = summary.get("final_evaluation")
    if final:
        lines += ["", f"## Final evaluation: {final['attack']}, eps={final['eps']:g}, {final['subset']}", "",
                  "| model | lam | flood_level | clean acc | robust acc |", "|---|---|---|---|---|"]
        for name, entry in final["models"].items():
            lines.append(f"| {name} | {_fmt(entry['lam'], 'g')} | {_fmt(entry['flood_level'], 'g')} | {_fmt(entry['clean_accuracy'])} | "
                         f"{_fmt(entry['robust_accuracy'])} |")
    return "\n".join(lines) + "\n"


def scatter_plot(summary, path):
    """PNG: validation clean vs robust accuracy per trial (best starred, baseline marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    best_id = (summary.get("best_trial") or {}).get("trial_id")
    done = [t for t in summary["trials"] if "val_robust_accuracy" in t and "val_clean_accuracy" in t]
    lams = [t["hyperparameters"].get("lam", 0.0) for t in done]
    points = ax.scatter([t["val_clean_accuracy"] for t in done], [t["val_robust_accuracy"] for t in done],
                        c=lams, cmap="viridis", s=50, label="trials (colour: lam)")
    if done:
        fig.colorbar(points, ax=ax, label="lam")
    # One label per point (trials with equal results share it), on the side away from the edge.
    labels = {}
    for t in done:
        hp = t["hyperparameters"]
        key = (t["val_clean_accuracy"], t["val_robust_accuracy"])
        labels.setdefault(key, []).append(f"{t['trial_id']}: lam={hp.get('lam', 0):.2g}, b={hp.get('flood_level', 0):.2g}")
        if t["trial_id"] == best_id:
            ax.scatter([key[0]], [key[1]], marker="*", s=250, facecolors="none", edgecolors="red", label="best trial")
    middle = (min(k[0] for k in labels) + max(k[0] for k in labels)) / 2 if labels else 0.0
    for (clean, robust), texts in labels.items():
        right = clean <= middle
        ax.annotate("\n".join(texts), (clean, robust), fontsize=7, xytext=(5 if right else -5, 3),
                    textcoords="offset points", ha="left" if right else "right")
    baseline = summary.get("baseline")
    if baseline:
        ax.scatter([baseline["val_clean_accuracy"]], [baseline["val_robust_accuracy"]], marker="X", s=90,
                   color="black", label=f"baseline lam={baseline['lam']}")
    ax.set_xlabel("validation clean accuracy")
    ax.set_ylabel(f"validation robust accuracy ({summary['val_attack']})")
    ax.set_title(f"SEAT tuning: {len(done)} trials, eps={summary['eps']:g}")
    ax.margins(x=0.1, y=0.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fileio.save_figure_atomic(fig, path)
    plt.close(fig)


def train_baseline(hypermodel, config, train_ds, val_ds, epochs, directory, strategy=None, verbose=1):
    """Trains the config's own lam / flood level with the trials' budget and keeps the best
    epoch by the same objective. Resumable: a finished baseline in `directory` is reloaded."""
    import contextlib

    import keras

    weights = os.path.join(directory, "best.weights.h5")
    record_path = os.path.join(directory, "baseline.json")
    lam, flood = config.method.lam, config.method.get("flood_level")
    scope = strategy.scope() if strategy else contextlib.nullcontext()
    with scope:
        model = hypermodel.make_model(lam, flood)
    if os.path.exists(record_path) and os.path.exists(weights):
        print(f"Reloading the finished baseline from {directory}")
        model.load_weights(weights)
        with open(record_path) as f:
            return model, json.load(f)
    os.makedirs(directory, exist_ok=True)
    objective = hypermodel.objective_name
    checkpoint = keras.callbacks.ModelCheckpoint(weights, monitor=objective, mode="max", save_best_only=True,
                                                 save_weights_only=True)
    history = hypermodel.fit(None, model, train_ds, validation_data=val_ds, epochs=epochs,
                             callbacks=[checkpoint], verbose=verbose).history
    best = max(range(len(history[objective])), key=lambda i: history[objective][i])
    record = {"lam": lam, "flood_level": flood, "best_epoch": best,
              "history": {k: [float(v) for v in values] for k, values in history.items()}}
    for name in ("val_robust_accuracy", "val_clean_accuracy", objective):
        record[name] = float(history[name][best])
    model.load_weights(weights)
    fileio.write_json_atomic(record, record_path)
    return model, record


def prepare_search(config, project_dir, tuner, max_trials, epochs_per_trial, final_attack, final_examples):
    """Checks the search's arguments (ValueError for bad ones, before anything is written);
    returns (the trials' config, epochs per trial, validation subset size)."""
    from seat_tf import attacks, experiment
    from seat_tf.tuning import hypermodel as hypermodel_lib

    config = copy.deepcopy(config)  # the caller's config stays as it was
    epochs = int(epochs_per_trial or config.epochs)
    if max_trials < 1:
        raise ValueError(f"max_trials must be >= 1, got {max_trials}.")
    if final_examples < 1:
        raise ValueError(f"final_examples must be >= 1, got {final_examples}.")
    if tuner not in TUNERS:
        raise ValueError(f"Unknown tuner {tuner!r}; choose one of {TUNERS}.")
    if not project_dir:
        raise ValueError("project_dir is required.")
    attacks.get_attack(final_attack)
    with config.unlocked():
        config.epochs = epochs
        val_limit = config.dataset.val_limit
        # The test split serves the validation subset and, after it, the final held-out subset.
        config.dataset.test_limit = (val_limit or 0) + final_examples
    experiment.validate(config)
    hypermodel_lib.validate_search_space(config.tuning)
    fileio.check_writable_dir(project_dir, "project_dir")
    return config, epochs, val_limit


def run_search(config, project_dir, tuner="random", max_trials=8, epochs_per_trial=None, overwrite=False,
               strategy=None, final_attack="pgd50x10", final_examples=1000, baseline=True, verbose=1):
    """Runs (or resumes) the search and, on the chief or a single process, writes the summary.

    Returns the summary dict (None on a distributed-search worker)."""
    import keras_tuner  # noqa: F401  (fails early, before anything is written, if missing)

    config, epochs, val_limit = prepare_search(config, project_dir, tuner, max_trials, epochs_per_trial,
                                               final_attack, final_examples)
    distributed = "KERASTUNER_ORACLE_IP" in os.environ
    is_worker = distributed and "chief" not in os.environ.get("KERASTUNER_TUNER_ID", "")

    # One search per project_dir at a time (a distributed search shares it by design).
    lock = None if distributed else fileio.WorkdirLock(project_dir, "tune").acquire()
    try:
        return _search(config, project_dir, tuner, max_trials, epochs, overwrite, strategy, final_attack,
                       final_examples, baseline, verbose, is_worker, val_limit)
    finally:
        if lock is not None:
            lock.release()


def _search(config, project_dir, tuner, max_trials, epochs, overwrite, strategy, final_attack, final_examples,
            baseline, verbose, is_worker, val_limit):
    from seat_tf import evaluation, experiment
    from seat_tf.tuning import hypermodel as hypermodel_lib

    experiment.set_seed(config.seed)
    train_ds, test_ds, val_ds = experiment.build_datasets(config)
    steps = experiment.steps_per_epoch(config, train_ds)
    # Each trial (and the baseline) gets a freshly built training set: the same example order.
    hypermodel = hypermodel_lib.SEATHyperModel(config, steps_per_epoch=steps, epochs=epochs,
                                               make_train_data=lambda: experiment.build_datasets(config)[0])
    tuner_obj = make_tuner(tuner, hypermodel, project_dir, max_trials, epochs, seed=config.seed,
                           overwrite=overwrite and not is_worker, strategy=strategy)

    start = time.time()
    tuner_obj.search(train_ds, validation_data=val_ds, epochs=epochs, verbose=verbose)
    search_seconds = time.time() - start
    if is_worker:
        print(f"Worker {os.environ.get('KERASTUNER_TUNER_ID')} finished; the chief writes the summary.")
        return None

    objective = hypermodel.objective_name
    summary = {
        "tuner": tuner, "max_trials": max_trials, "epochs_per_trial": epochs, "objective": objective,
        "eps": config.method.epsilon, "val_attack": config.val_attack,
        "train_subset": f"train[:{config.dataset.train_limit}]" if config.dataset.train_limit else "train (all)",
        "val_subset": f"test[:{val_limit}]" if val_limit else "test (all)",
        "search_space": experiment.to_dict(config.tuning), "config": experiment.to_dict(config),
        "search_seconds_this_run": round(search_seconds, 1),
        "trials": trial_records(tuner_obj.oracle, objective),
    }
    best_trials = tuner_obj.oracle.get_best_trials(1)
    if not best_trials:
        raise RuntimeError(f"No trial finished; see the trial messages under {project_dir}/search.")
    best = next(t for t in summary["trials"] if t["trial_id"] == best_trials[0].trial_id)
    summary["best_trial"] = best

    final_ds = _held_out(test_ds, val_limit or 0, final_examples, config.dataset.batch_size)
    subset = f"test[{val_limit or 0}:{(val_limit or 0) + final_examples}]"
    if not val_limit:
        subset += " (overlaps the validation set: dataset.val_limit is unset)"
    models = {}
    print(f"\nBest trial {best['trial_id']}: {best['hyperparameters']}; evaluating with {final_attack} on {subset}...")
    with warnings.catch_warnings():
        # The checkpoint holds the optimizer's slots too; evaluation needs the weights only.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        best_model = tuner_obj.get_best_models(1)[0]
    models["best trial " + best["trial_id"]] = (best_model, best["hyperparameters"].get("lam"),
                                                best["hyperparameters"].get("flood_level"))
    if baseline:
        print(f"\nTraining the baseline (lam={config.method.lam}, flood_level={config.method.get('flood_level')}) "
              f"for {epochs} epochs...")
        baseline_model, summary["baseline"] = train_baseline(
            hypermodel, config, train_ds, val_ds, epochs, os.path.join(project_dir, "baseline"), strategy, verbose)
        models[f"baseline lam={config.method.lam}"] = (baseline_model, config.method.lam, config.method.get("flood_level"))
    final = {"attack": final_attack, "eps": config.method.epsilon, "subset": subset, "models": {}}
    for name, (model, lam, flood) in models.items():
        start = time.time()
        result = evaluation.evaluate(model, final_ds, attacks=[final_attack], eps=config.method.epsilon,
                                     seed=config.seed, verbose=verbose)
        final["num_examples"] = result["num_examples"]
        final["models"][name] = {"lam": lam, "flood_level": flood or 0.0, "clean_accuracy": result["clean_accuracy"],
                                 "robust_accuracy": result["attacks"][final_attack]["robust_accuracy"],
                                 "seconds": round(time.time() - start, 1)}
    final["subset"] = f"{subset}, {final['num_examples']} images"
    summary["final_evaluation"] = final

    fileio.write_json_atomic(summary, os.path.join(project_dir, "tuning_summary.json"))
    report = markdown_report(summary)
    fileio.write_text_atomic(report, os.path.join(project_dir, "trials.md"))
    scatter_plot(summary, os.path.join(project_dir, "trials.png"))
    print("\n" + report)
    print(f"Wrote {project_dir}/tuning_summary.json, trials.md and trials.png")
    return summary


def tune(argv):
    """`seat-tf tune`: the search from flags."""
    if argv and any(not a.startswith("-") for a in argv):
        raise app.UsageError(f"Unexpected arguments: {argv}")
    if FLAGS.config is None:
        raise app.UsageError("--config is required.")
    if FLAGS.project_dir is None:
        raise app.UsageError("--project_dir is required.")
    from seat_tf import errors

    with errors.usage_errors():  # bad arguments: one line, exit 2 (seat-tf tune)
        prepare_search(FLAGS.config, FLAGS.project_dir, FLAGS.tuner, FLAGS.max_trials, FLAGS.epochs_per_trial,
                       FLAGS.final_eval_attack, FLAGS.final_eval_examples)
    run_search(
        FLAGS.config, FLAGS.project_dir, tuner=FLAGS.tuner, max_trials=FLAGS.max_trials,
        epochs_per_trial=FLAGS.epochs_per_trial, overwrite=FLAGS.overwrite,
        strategy=make_strategy(FLAGS.trial_strategy), final_attack=FLAGS.final_eval_attack,
        final_examples=FLAGS.final_eval_examples, baseline=FLAGS.baseline,
        verbose=FLAGS.verbose if FLAGS.verbose is not None else (1 if sys.stdout.isatty() else 2),
    )
    return 0


def main(argv):
    return tune(argv[1:])


if __name__ == "__main__":
    define_shared_flags()
    sys.exit(app.run(main))
