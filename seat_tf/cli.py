"""The `seat-tf` command line (absl).

    seat-tf train --config=configs/fashion_mnist_seat.py --workdir=runs/fmnist
    seat-tf train --config=configs/fashion_mnist_seat.py:quick --config.method.lam=0.3 --workdir=...

train writes into --workdir: backup/ (BackupAndRestore: a killed run resumes from its last
finished epoch), tensorboard/, history.json, config.json, model.keras and report.json
(clean and robust test accuracy under config.eval_attacks).

    seat-tf evaluate --model=runs/fmnist/model.keras --dataset=fashion_mnist --eps=0.1 \
        --attacks=fgsm,pgd20,pgd50x10@1000,standard@1000 --workdir=runs/fmnist/eval

evaluate writes report.json, report.md (a table like the paper's, sanity checks) and
robust_accuracy_vs_eps.png into --workdir.
"""

import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:variant]).")
flags.DEFINE_string("workdir", None, "Output folder of train.")
flags.DEFINE_integer("verbose", 1, "Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch.")

COMMANDS = {}


def command(function):
    """Registers a `seat-tf <name>` subcommand."""
    COMMANDS[function.__name__] = function
    return function


def _require(flag_name):
    if getattr(FLAGS, flag_name) is None:
        raise app.UsageError(f"--{flag_name} is required.")


def save_model_atomic(model, path):
    """model.save to a temporary name, then rename: no half-written .keras file."""
    tmp = path + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, path)


@command
def train(argv):
    """Trains config.method on config.dataset; writes checkpoints, history and a report."""
    import keras

    from seat_tf import evaluation, experiment

    _require("config")
    _require("workdir")
    config = FLAGS.config
    experiment.validate(config)
    # Everything that can fail on bad input happens before anything is written.
    experiment.set_seed(config.seed)
    train_ds, test_ds, val_ds = experiment.build_datasets(config)
    total_steps = config.epochs * experiment.steps_per_epoch(config, train_ds)
    model = experiment.build_model(config, total_steps)

    workdir = FLAGS.workdir
    os.makedirs(workdir, exist_ok=True)
    evaluation.write_json_atomic(experiment.to_dict(config), os.path.join(workdir, "config.json"))
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(workdir, "backup")),
        keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard")),
    ]
    start = time.time()
    history = model.fit(
        train_ds, validation_data=val_ds, epochs=config.epochs, callbacks=callbacks, verbose=FLAGS.verbose,
        shuffle=False,  # the tf.data pipeline shuffles
    )
    train_seconds = time.time() - start
    history_dict = {k: [float(v) for v in values] for k, values in history.history.items()}
    evaluation.write_json_atomic(history_dict, os.path.join(workdir, "history.json"))
    save_model_atomic(model, os.path.join(workdir, "model.keras"))

    print(f"\nTrained {config.method.name} for {config.epochs} epochs in {train_seconds:.0f} s. Evaluating on the test set...")
    report = evaluation.evaluate(
        model, test_ds, attacks=list(config.eval_attacks), eps=config.method.epsilon, seed=config.seed,
        verbose=FLAGS.verbose,
    )
    report.update(method=config.method.name, dataset=config.dataset.name, epochs=config.epochs,
                  train_seconds=round(train_seconds, 1))
    evaluation.write_json_atomic(report, os.path.join(workdir, "report.json"))
    print(f"\nRobustness report ({report['num_examples']} test images, eps={config.method.epsilon:.4g}):")
    print(evaluation.format_table(report))
    print(f"Saved to {os.path.join(workdir, 'report.json')}")
    return 0


# Flags of `evaluate`. Defined only if absent, so another subcommand may share a name
# (--model, --dataset, --batch_size) without a DuplicateFlagError when branches merge.
def _define(kind, name, default, help_text):
    if name not in FLAGS:
        getattr(flags, f"DEFINE_{kind}")(name, default, help_text)


_define("string", "model", None, "evaluate: path of a .keras classifier (images in [0, 1] -> logits).")
_define("string", "dataset", "fashion_mnist", "evaluate: dataset name (seat_tf.data.DATASETS) or a .npz path.")
_define("string", "data_dir", None, "evaluate: folder of the local dataset files.")
_define("list", "attacks", ["fgsm", "pgd20", "pgd50x10", "standard"],
        "evaluate: attacks, 'name' or 'name@N' (first N examples), e.g. pgd20,pgd50x10@1000,standard@1000.")
_define("float", "eps", None, "evaluate: L-inf radius in [0, 1] units (e.g. 0.1, or 0.0313725 for 8/255).")
_define("integer", "limit", None, "evaluate: use only the first N test examples.")
_define("integer", "batch_size", 500, "evaluate: examples per batch.")
_define("integer", "seed", 0, "evaluate: seed of the attacks (same seed, same result).")
_define("list", "sweep_eps", None, "evaluate: eps values of the accuracy-vs-eps plot (default: 0 to 2 eps).")
_define("list", "sweep_attacks", None, "evaluate: attacks of the plot (default: the L-inf attacks of --attacks).")
_define("integer", "sweep_limit", 500, "evaluate: examples of the plot (the first N).")
_define("integer", "sanity_limit", 500, "evaluate: examples of the sanity checks (the first N).")


@command
def evaluate(argv):
    """Robust accuracy of a saved model: report.json, report.md and robust_accuracy_vs_eps.png
    in --workdir, with the sanity checks of seat_tf.evaluation."""
    import keras

    from seat_tf import attack_suite, data, evaluation

    _require("model")
    _require("eps")
    _require("workdir")
    # Everything that can fail on bad input happens before anything is written.
    if not os.path.isfile(FLAGS.model):
        raise app.UsageError(f"--model={FLAGS.model} is not a file.")
    eps = FLAGS.eps
    if not 0 <= eps <= 1:
        raise app.UsageError(f"--eps must be in [0, 1] (pixel scale, e.g. 8/255 = 0.0314), got {eps}.")
    for spec in list(FLAGS.attacks) + list(FLAGS.sweep_attacks or []):
        attack_suite.get_attack(spec.partition("@")[0])  # ValueError names the bad attack
    if FLAGS.sweep_eps is not None:
        try:
            sweep_eps = [float(v) for v in FLAGS.sweep_eps]
        except ValueError:
            raise app.UsageError(f"--sweep_eps must be numbers, got {FLAGS.sweep_eps}.") from None
        if any(not 0 <= v <= 1 for v in sweep_eps):
            raise app.UsageError(f"--sweep_eps values must lie in [0, 1], got {sweep_eps}.")
    else:
        sweep_eps = [round(eps * f, 6) for f in (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0) if eps * f <= 1]
    dataset = data.load_dataset(FLAGS.dataset, "test", FLAGS.batch_size, data_dir=FLAGS.data_dir, limit=FLAGS.limit)
    model = keras.models.load_model(FLAGS.model)

    start = time.time()
    result = evaluation.evaluate(
        model, dataset, attacks=list(FLAGS.attacks), eps=eps, seed=FLAGS.seed, verbose=FLAGS.verbose,
        sanity_limit=FLAGS.sanity_limit, sweep_eps=sweep_eps, sweep_attacks=FLAGS.sweep_attacks,
        sweep_limit=FLAGS.sweep_limit,
    )
    result.update(model=os.path.abspath(FLAGS.model), dataset=FLAGS.dataset,
                  total_seconds=round(time.time() - start, 1))
    paths = evaluation.write_report(result, FLAGS.workdir)
    print(f"\nRobustness report ({result['num_examples']} test images, eps={eps:.4g}):")
    print(evaluation.format_table(result))
    failed = [name for name, check in result["sanity_checks"].items() if check["passed"] is False]
    print("Sanity checks: " + ("all passed" if not failed else "FAILED: " + ", ".join(failed)))
    print("Wrote " + ", ".join(paths.values()))
    return 0


def main(argv):
    if len(argv) < 2 or argv[1] not in COMMANDS:
        names = ", ".join(sorted(COMMANDS))
        raise app.UsageError(f"Usage: seat-tf <command> [flags]; commands: {names}.")
    return COMMANDS[argv[1]](argv[2:])


def run():
    """Console-script entry point."""
    app.run(main)


if __name__ == "__main__":
    sys.exit(run())
