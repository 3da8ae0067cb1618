"""The `seat-tf` command line (absl).

    seat-tf train --config=configs/fashion_mnist_seat.py --workdir=runs/fmnist
    seat-tf train --config=configs/fashion_mnist_seat.py:quick --config.method.lam=0.3 --workdir=...
    seat-tf export --model=runs/fmnist/model.keras --out=exported/seat [--version=N] [--overwrite]

train writes into --workdir: backup/ (BackupAndRestore: a killed run resumes from its last
finished epoch), tensorboard/, history.json, config.json, model.keras and report.json
(clean and robust test accuracy under config.eval_attacks).
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


flags.DEFINE_string("model", None, "export: the .keras archive to export.")
flags.DEFINE_string("out", None, "export: TF Serving's model base path; the SavedModel goes to <out>/<version>/.")
flags.DEFINE_integer("version", None, "export: version folder (default: one more than the largest existing one).")
flags.DEFINE_boolean("overwrite", False, "export: replace a non-empty version folder instead of refusing.")


@command
def export(argv):
    """Exports the classifier of --model as a SavedModel for TF Serving (<out>/<version>/),
    checks it in a fresh process and prints its signatures."""
    from seat_tf import export as export_lib

    _require("model")
    _require("out")
    export_lib.export_saved_model(FLAGS.model, FLAGS.out, version=FLAGS.version, overwrite=FLAGS.overwrite)
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
