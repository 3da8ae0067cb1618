"""What every benchmark shares: load a config file's variant, train it through the one
experiment doorway (`seat_tf.experiment.run`), and save one JSON record per run, so a
benchmark is a loop over configs plus its own report.

A record is resumable at two levels: a finished run is skipped because its JSON exists; an
interrupted one resumes from its last finished epoch (Keras' BackupAndRestore state and this
module's per-epoch training clock live in the run's workdir).
"""

import ast
import importlib.util
import json
import os
import time

import keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timing_config(model="small_cnn", method="seat", epsilon=8 / 255, jit=False, policy=None, **method_options):
    """The config of the timing benchmarks (step cost, distribution speed): `model` sized for
    its dataset (small_cnn: Fashion-MNIST, preact_resnet18: CIFAR-10), SGD 0.01 with momentum
    0.9 at a constant rate, no validation attack; build it with `experiment.build_model`, so
    every method starts from the same weights (config.seed)."""
    import ml_collections

    from seat_tf import experiment

    config = experiment.base_config()
    config.dataset.name = "fashion_mnist" if model == "small_cnn" else "cifar10"
    config.model = ml_collections.ConfigDict(dict(name=model))
    config.method = ml_collections.ConfigDict(dict(name=method, epsilon=epsilon, **method_options))
    config.optimizer.update(dict(name="sgd", learning_rate=0.01, momentum=0.9, weight_decay=0.0, schedule="constant"))
    config.val_attack = None
    config.jit_compile = jit
    config.mixed_precision = policy or "float32"
    return config


def load_config_module(path):
    """A config file as a module (relative paths are taken from the repository root)."""
    path = path if os.path.isabs(path) else os.path.join(ROOT, path)
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(path, arg=None):
    """`get_config(arg)` of a config file (relative paths are taken from the repository root)."""
    return load_config_module(path).get_config(arg)


class TrainClock(keras.callbacks.Callback):
    """Keras callback: seconds of training per epoch, stopping the clock when validation
    starts (monitors run after it), kept in a JSON file so a resumed run keeps its earlier
    epochs' seconds. List it first."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.seconds = json.load(open(path)) if os.path.exists(path) else []

    def on_epoch_begin(self, epoch, logs=None):
        del self.seconds[epoch:]
        self.start, self.stop = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        if self.stop is None:
            self.stop = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        from seat_tf import fileio

        self.seconds.append((self.stop or time.perf_counter()) - self.start)
        fileio.write_json_atomic(self.seconds, self.path)


def record_of(config, history, report, seconds, divergence_events=()):
    """The JSON record of a finished run: config, per-epoch curves, final accuracies."""
    from seat_tf import experiment

    cumulative, total = [], 0.0
    for value in seconds:
        total += value
        cumulative.append(round(total, 1))
    return dict(
        method=config.method.name, eps=config.method.epsilon, seed=config.seed, epochs=config.epochs,
        config=experiment.to_dict(config), train_seconds=round(total, 1),
        epoch_train_seconds=[round(s, 2) for s in seconds], cumulative_train_seconds=cumulative,
        history={k: [round(float(v), 6) for v in values] for k, values in history.items()},
        co_epoch=next((i + 1 for i, c in enumerate(history.get("co_collapsed", [])) if c), None),
        diverged=bool(divergence_events) or exploded(history.get("loss", [])),
        clean=report["clean_accuracy"],
        robust={name: entry["robust_accuracy"] for name, entry in report["attacks"].items()},
        examples={name: entry["num_examples"] for name, entry in report["attacks"].items()},
        drift_epoch=report.get("drift_epoch"), switched_epoch=report.get("switched_epoch"),
        # The evaluation's own verdict: the per-example worst case over every attack it ran and
        # the sanity checks that failed (a black-box attack beating the gradient ones, ...).
        worst_case=report.get("worst_case_accuracy"),
        failed_checks=sorted(name for name, check in (report.get("sanity_checks") or {}).items()
                             if not check.get("passed", True)),
    )


def exploded(losses, factor=100.0):
    """A training loss that went non-finite or above `factor` times its smallest epoch value
    (with the divergence guard off, the run's own record of a blow-up)."""
    import math

    if not all(math.isfinite(v) for v in losses):
        return True
    return bool(losses) and max(losses) > factor * max(min(losses), 1e-3)


def run(config, workdir, record_path, **extra):
    """Trains and evaluates `config` in `workdir` (resuming it if interrupted) and writes its
    record (plus `extra` fields) to `record_path`; returns the record."""
    from seat_tf import experiment, fileio

    os.makedirs(workdir, exist_ok=True)
    clock = TrainClock(os.path.join(workdir, "train_seconds.json"))
    result = experiment.run(config, workdir, verbose=2, callbacks=[clock])
    record = record_of(config, result["history"], result["report"], clock.seconds, result["divergence_events"])
    record.update(extra)
    fileio.write_json_atomic(record, record_path)
    return record


def parse_options(items):
    """["key=value", ...] -> {key: value}: values as Python literals where they parse, else strings."""
    options = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def load_records(folder):
    if not os.path.isdir(folder):
        return []
    return [json.load(open(os.path.join(folder, n))) for n in sorted(os.listdir(folder)) if n.endswith(".json")]


def replace_readme_section(readme, name, text):
    """Rewrites the part of `readme` between `<!-- name:start -->` and `<!-- name:end -->`
    (generated tables are never typed by hand)."""
    from seat_tf import fileio

    start_marker, end_marker = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    content = open(readme).read()
    if start_marker not in content or end_marker not in content:
        raise ValueError(f"{readme} has no {start_marker} ... {end_marker} section.")
    start, end = content.index(start_marker) + len(start_marker), content.index(end_marker)
    fileio.write_text_atomic(content[:start] + "\n" + text.strip() + "\n" + content[end:], readme)


def publish(out, table, table_name, results, section, readme=None):
    """A benchmark's report from its records: the markdown table (`out/table_name`), the JSON
    results (`out/results.json`) and, with `readme`, the README's generated `section`."""
    from seat_tf import fileio

    fileio.write_text_atomic(table, os.path.join(out, table_name))
    fileio.write_json_atomic(results, os.path.join(out, "results.json"))
    if readme:
        replace_readme_section(readme, section, table)
    return table
