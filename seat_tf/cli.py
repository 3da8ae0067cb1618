"""The `seat-tf` command line (absl).

    seat-tf train --config=configs/fashion_mnist_seat.py --workdir=runs/fmnist
    seat-tf train --config=configs/fashion_mnist_seat.py:quick --config.method.lam=0.3 --workdir=...
    seat-tf train --strategy=mirrored --config.mixed_precision=mixed_float16 --config=... --workdir=...
    seat-tf export --model=runs/fmnist/model.keras --out=exported/seat [--version=N] [--overwrite]
    seat-tf diagnose --model=runs/a/model.keras,runs/b/model.keras --dataset=fashion_mnist --eps=0.1 --workdir=out

train writes into --workdir: backup/ (BackupAndRestore: a killed run resumes from its last
finished epoch), tensorboard/, history.json, config.json, model.keras and report.json
(clean and robust test accuracy under config.eval_attacks); with the config's diagnostics
monitors on, also co_monitor.json and co_monitor.png.
diagnose writes diagnostics.json and PNGs (loss landscapes, decision-boundary distortion).

    seat-tf evaluate --model=runs/fmnist/model.keras --dataset=fashion_mnist --eps=0.1 \
        --attacks=fgsm,pgd20,pgd50x10@1000,standard@1000 --workdir=runs/fmnist/eval

evaluate writes report.json, report.md (a table like the paper's, sanity checks) and
robust_accuracy_vs_eps.png into --workdir, and each finished attack's per-example results
into <workdir>/attack_results/: a killed or extended run (same command, more attacks) loads
them instead of attacking again (--overwrite starts afresh). --strategy=mirrored or
multi_worker splits every batch over the replicas (same results as one device).

Errors are one line, `seat-tf: error: ...` (--debug adds the traceback). Exit codes: 0 success,
1 runtime failure, 2 usage or config error (nothing trained or written), 3 train finished but
diverged without recovering or failed a sanity check (--nostrict: 0); see seat_tf/errors.py.
train, tune and evaluate lock their folder (<folder>/.seat-tf.lock): a second run on the same
folder is refused; the lock of a killed run is taken over.
"""

import glob
import os
import sys
import time
import traceback

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from seat_tf import errors  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:variant]).")
flags.DEFINE_string("workdir", None, "Output folder of train.")
flags.DEFINE_integer("verbose", None, "Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch "
                     "(default: 1 on a terminal, 2 when the output goes to a file or CI log).")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker", "tpu"],
                  "tf.distribute strategy of train and evaluate: default (one device), mirrored (all local GPUs), "
                  "multi_worker (hosts from TF_CONFIG, see docs/distributed.md) or tpu (train only).")
flags.DEFINE_string("tpu", None, "TPU name or grpc:// address for --strategy=tpu (default: this TPU VM's chips).")

# Flags shared by the subcommands (each says which commands read it).
flags.DEFINE_string("model", None, "export, evaluate: a .keras archive; diagnose: comma-separated archives.")
flags.DEFINE_string("dataset", "fashion_mnist", "evaluate, diagnose: dataset name (seat_tf.data.DATASETS) or a .npz path.")
flags.DEFINE_string("data_dir", None, "evaluate: folder of the local dataset files.")
flags.DEFINE_float("eps", None, "evaluate, diagnose: L-inf radius in [0, 1] pixel units (e.g. 0.1, or 0.0313725 for 8/255).")
flags.DEFINE_integer("num_examples", 1000, "diagnose: test images to use (the first N).")
flags.DEFINE_string("out", None, "export: TF Serving's model base path; the SavedModel goes to <out>/<version>/.")
flags.DEFINE_integer("version", None, "export: version folder (default: one more than the largest existing one).")
flags.DEFINE_boolean("overwrite", False, "export: replace a non-empty version folder instead of refusing; tune: start "
                     "the search afresh instead of resuming it; evaluate: attack again instead of loading the attacks "
                     "finished by an earlier run from <workdir>/attack_results.")
flags.DEFINE_list("attacks", ["fgsm", "pgd20", "pgd50x10", "standard"],
                  "evaluate: attacks, 'name' or 'name@N' (first N examples), e.g. pgd20,pgd50x10@1000,standard@1000.")
flags.DEFINE_integer("limit", None, "evaluate: use only the first N test examples.")
flags.DEFINE_integer("batch_size", 500, "evaluate: examples per batch.")
flags.DEFINE_integer("seed", 0, "evaluate: seed of the attacks (same seed, same result).")
flags.DEFINE_list("sweep_eps", None, "evaluate: eps values of the accuracy-vs-eps plot (default: 0 to 2 eps).")
flags.DEFINE_list("sweep_attacks", None, "evaluate: attacks of the plot (default: the L-inf attacks of --attacks).")
flags.DEFINE_integer("sweep_limit", 500, "evaluate: examples of the plot (the first N).")
flags.DEFINE_integer("sanity_limit", 500, "evaluate: examples of the sanity checks (the first N).")
flags.DEFINE_boolean("debug", False, "On an error, print the full traceback, not just one line.")
flags.DEFINE_boolean("strict", True, "train: exit with code 3 if training diverged without recovering or a final "
                     "sanity check failed (--nostrict: exit 0 and only warn).")
flags.DEFINE_boolean("unsafe_load", False, "evaluate, diagnose, export: allow loading a .keras file with Lambda "
                     "layers (Keras safe_mode=False), which runs code stored in the file. Only for files you trust.")

COMMANDS = {}


def command(function):
    """Registers a `seat-tf <name>` subcommand."""
    COMMANDS[function.__name__] = function
    return function


def verbosity():
    """--verbose, or 1 (live progress bars) on a terminal and 2 (a line per epoch) in logs."""
    if FLAGS.verbose is not None:
        return FLAGS.verbose
    return 1 if sys.stdout.isatty() else 2


def _require(flag_name):
    if getattr(FLAGS, flag_name) is None:
        raise app.UsageError(f"--{flag_name} is required.")


@command
def train(argv):
    """Trains config.method on config.dataset; writes checkpoints, history and a report."""
    from seat_tf import distribute, evaluation, experiment, fileio

    _require("config")
    _require("workdir")
    config = FLAGS.config
    # The strategy first: multi-worker collectives must be configured before any TF op runs,
    # and validate() builds the method on a stand-in classifier.
    strategy = distribute.make_strategy(FLAGS.strategy, tpu=FLAGS.tpu)
    with errors.usage_errors():
        experiment.validate(config)
        fileio.check_writable_dir(FLAGS.workdir)
    result = experiment.run(config, FLAGS.workdir, strategy=strategy, verbose=verbosity())
    if result["report"] is not None:
        _print_report(result["report"], config.method.epsilon)
        print("Saved " + ", ".join(result["paths"]))
    problems = []
    if not result["recovered"]:
        problems.append("training diverged and did not recover (see the divergence events above)")
    if result["report"] is not None and evaluation.failed_sanity_checks(result["report"]):
        problems.append("sanity checks failed: " + ", ".join(evaluation.failed_sanity_checks(result["report"])))
    if problems:
        print(f"seat-tf: {'error' if FLAGS.strict else 'warning'}: " + "; ".join(problems) + " (results written to "
              f"{FLAGS.workdir}{'; --nostrict exits 0' if FLAGS.strict else ''}).", file=sys.stderr)
        return errors.UNSOUND if FLAGS.strict else 0
    return 0


@command
def export(argv):
    """Exports the classifier of --model as a SavedModel for TF Serving (<out>/<version>/),
    checks it in a fresh process and prints its signatures."""
    from seat_tf import export as export_lib

    _require("model")
    _require("out")
    with errors.usage_errors():
        classifier = export_lib.load_classifier(FLAGS.model, safe_mode=not FLAGS.unsafe_load)
    export_lib.export_saved_model(classifier, FLAGS.out, version=FLAGS.version, overwrite=FLAGS.overwrite)
    return 0


def _print_report(result, eps):
    from seat_tf import evaluation

    print(f"\nRobustness report ({result['num_examples']} test images, eps={eps:.4g}):")
    print(evaluation.format_table(result))
    failed = evaluation.failed_sanity_checks(result)
    print("Sanity checks: " + ("all passed" if not failed else "FAILED: " + ", ".join(failed)))


def _model_names(paths):
    """Short unique names for model paths: the parent folder of a model.keras, else the file stem."""
    names = []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        name = os.path.basename(os.path.dirname(os.path.abspath(path))) if stem == "model" else stem
        while name in names:
            name += "'"
        names.append(name)
    return names


@command
def diagnose(argv):
    """Linearity error, Lipschitz estimates, loss landscapes and boundary distortion of one or
    more saved models on the first --num_examples test images; writes diagnostics.json + PNGs."""
    for name in ("model", "dataset", "eps", "workdir"):
        _require(name)
    paths = [p for p in FLAGS.model.split(",") if p]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise app.UsageError(f"--model: no such file: {', '.join(missing)}")
    if not 0 < FLAGS.eps <= 1:
        raise app.UsageError(f"--eps must lie in (0, 1] (pixel scale, e.g. 8/255), got {FLAGS.eps}.")
    if FLAGS.num_examples < 1:
        raise app.UsageError(f"--num_examples must be >= 1, got {FLAGS.num_examples}.")
    import seat_tf  # noqa: F401  (after the flag checks: a usage error should not wait for TensorFlow)
    from seat_tf import data, diagnostics, fileio, reporting

    with errors.usage_errors():
        test = data.load_dataset(FLAGS.dataset, "test", FLAGS.num_examples, limit=FLAGS.num_examples, shuffle=False)
        x, y = (t.numpy() for t in next(iter(test)))
        models = [fileio.load_keras_model(p, safe_mode=not FLAGS.unsafe_load) for p in paths]
        for model in models:
            data.check_batch(x, y, *data.model_expectations(model), name=FLAGS.dataset)

    results = {}
    for name, model in zip(_model_names(paths), models):
        print(f"Diagnosing {name} on {len(x)} test images, eps={FLAGS.eps:.4g}...")
        results[name] = diagnostics.diagnose(model, x, y, FLAGS.eps, progress=verbosity() > 0)
        r = results[name]
        print(f"  clean {r['clean_accuracy']:.3f}  linearity error {r['linearity_error']['mean']:.4g}  "
              f"Lipschitz [{r['lipschitz']['lower']['mean']:.4g}, {r['lipschitz']['upper']['mean']:.4g}]  "
              f"boundary distortion {r['boundary']['distortion']:.3f}")
    os.makedirs(FLAGS.workdir, exist_ok=True)
    plots = reporting.write_plots(results, FLAGS.workdir)
    output = {"dataset": FLAGS.dataset, "eps": FLAGS.eps, "models": dict(zip(_model_names(paths), paths)),
              "results": results, "plots": {k: os.path.basename(v) for k, v in plots.items()}}
    fileio.write_json_atomic(output, os.path.join(FLAGS.workdir, "diagnostics.json"))
    print(f"Saved diagnostics.json and {len(plots)} PNGs to {FLAGS.workdir}")
    return 0


@command
def tune(argv):
    """KerasTuner search over SEAT's lam and flood level, then PGD-50-10 of the best trial."""
    from seat_tf.tuning import search  # its flags were defined when the command line was parsed

    return search.tune(argv)


@command
def evaluate(argv):
    """Robust accuracy of a saved model: report.json, report.md and robust_accuracy_vs_eps.png
    in --workdir, with the sanity checks of seat_tf.evaluation; finished attacks are kept in
    <workdir>/attack_results so that a rerun resumes."""
    from seat_tf import attacks, data, distribute, evaluation, fileio

    _require("model")
    _require("eps")
    _require("workdir")
    # Everything that can fail on bad input happens before anything is written.
    if not os.path.exists(FLAGS.model):
        raise app.UsageError(f"--model={FLAGS.model} is not a file.")
    eps = FLAGS.eps
    if not 0 <= eps <= 1:
        raise app.UsageError(f"--eps must be in [0, 1] (pixel scale, e.g. 8/255 = 0.0314), got {eps}.")
    if FLAGS.strategy == "tpu":
        raise app.UsageError("evaluate runs with --strategy=default, mirrored or multi_worker (the attacks' batches "
                             "change size from attack to attack, which TPUs would compile anew each time).")
    with errors.usage_errors():
        for spec in list(FLAGS.attacks) + list(FLAGS.sweep_attacks or []):
            attacks.get_attack(spec.partition("@")[0])  # ValueError names the bad attack
    if FLAGS.sweep_eps is not None:
        try:
            sweep_eps = [float(v) for v in FLAGS.sweep_eps]
        except ValueError:
            raise app.UsageError(f"--sweep_eps must be numbers, got {FLAGS.sweep_eps}.") from None
        if any(not 0 <= v <= 1 for v in sweep_eps):
            raise app.UsageError(f"--sweep_eps values must lie in [0, 1], got {sweep_eps}.")
    else:
        sweep_eps = [round(eps * f, 6) for f in (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0) if eps * f <= 1]
    # The strategy before any TF op runs (multi-worker collectives), as in train.
    strategy = distribute.make_strategy(FLAGS.strategy)
    with errors.usage_errors():
        with strategy.scope():  # the weights on every replica
            model = fileio.load_keras_model(FLAGS.model, safe_mode=not FLAGS.unsafe_load)
        num_classes, _ = data.model_expectations(model)
        dataset = data.load_dataset(FLAGS.dataset, "test", FLAGS.batch_size, data_dir=FLAGS.data_dir,
                                    limit=FLAGS.limit, num_classes=num_classes)
        fileio.check_writable_dir(FLAGS.workdir)
    if strategy.num_replicas_in_sync > 1:
        print(f"Evaluating on {strategy.num_replicas_in_sync} replicas (--strategy={FLAGS.strategy}).")
    worker = distribute.worker_info(strategy)
    outdir = distribute.output_dir(FLAGS.workdir, worker)
    checkpoints = os.path.join(FLAGS.workdir, "attack_results")

    start = time.time()
    with fileio.WorkdirLock(outdir, "evaluate"):
        if FLAGS.overwrite:  # this worker's finished attacks only
            for path in glob.glob(os.path.join(distribute.output_dir(checkpoints, worker), "*.npz")):
                os.remove(path)
        result = evaluation.evaluate(
            model, dataset, attacks=list(FLAGS.attacks), eps=eps, seed=FLAGS.seed, verbose=verbosity(),
            sanity_limit=FLAGS.sanity_limit, sweep_eps=sweep_eps, sweep_attacks=FLAGS.sweep_attacks,
            sweep_limit=FLAGS.sweep_limit, strategy=strategy, checkpoint_dir=checkpoints,
        )
        result.update(model=os.path.abspath(FLAGS.model), dataset=FLAGS.dataset,
                      total_seconds=round(time.time() - start, 1))
        paths = evaluation.write_report(result, outdir)
    _print_report(result, eps)
    print("Wrote " + ", ".join(paths.values()))
    return 0


def _fail(error, debug):
    """Prints `seat-tf: error: <one line>` (and the traceback with --debug); returns the exit code."""
    if debug:
        traceback.print_exception(error)
    hint = "" if debug else " (--debug shows the traceback)"
    code = errors.exit_code(error)
    print(f"seat-tf: error: {errors.message(error)}{hint if code == errors.RUNTIME else ''}", file=sys.stderr)
    return code


def main(argv):
    try:
        if len(argv) < 2 or argv[1] not in COMMANDS:
            names = ", ".join(sorted(COMMANDS))
            raise app.UsageError(f"Usage: seat-tf <command> [flags]; commands: {names}.")
        return COMMANDS[argv[1]](argv[2:])
    except KeyboardInterrupt:
        print("seat-tf: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the CLI's one place that turns errors into exit codes
        return _fail(error, FLAGS.debug)


def _parse_flags(argv):
    """absl's flag parsing, with flag and config-file errors as one line and exit code 2.
    `tune`'s own flags exist only on its command line (importing seat_tf.tuning.search
    defines them), so the other commands neither import the tuner nor list its flags."""
    if len(argv) > 1 and argv[1] == "tune":
        from seat_tf.tuning import search  # noqa: F401

    try:
        return FLAGS(argv)
    except Exception as error:  # noqa: BLE001 - flags.Error, or whatever a config file raised
        sys.exit(_fail(app.UsageError(errors.message(error)) if not isinstance(error, app.UsageError) else error,
                       "--debug" in argv))


def run():
    """Console-script entry point."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    sys.exit(run())
