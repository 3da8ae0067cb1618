"""Config -> objects -> results: the one place that turns a ConfigDict (sections: see
seat_tf.defaults) into datasets, a model, an optimizer and callbacks (`build_*`), and
`run(config, workdir)`, the one training run (train, save, evaluate, report) that
`seat-tf train`, the tuner and the benchmarks call.
"""

import functools
import json
import logging
import os
import time

import keras
import numpy as np
import tensorflow as tf

from seat_tf import data, distribute, fileio, models, precision, validation
from seat_tf.defaults import (  # noqa: F401  (configs import these from here)
    CIFAR10_METHODS,
    base_config,
    cifar10_paper_config,
    diagnostics_config,
    fashion_mnist_adam_config,
    shrink_for_smoke,
)
from seat_tf.schedules import CyclicLR
from seat_tf.training import get_method


def to_dict(config):
    """Plain-dict (JSON-ready) copy of a ConfigDict."""
    return json.loads(config.to_json()) if hasattr(config, "to_json") else dict(config)


def _kwargs(section, drop=("name",)):
    return {k: v for k, v in to_dict(section).items() if k not in drop}


def validate(config):
    """Raises ValueError for configs that cannot work, before anything is written or trained."""
    data.dataset_info(config.dataset.name) if not str(config.dataset.name).endswith(".npz") else None
    method_constructor(config)
    if config.model.name not in models.MODELS:
        raise ValueError(f"Unknown model {config.model.name!r}; choose one of {sorted(models.MODELS)}.")
    if config.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {config.epochs}.")
    if config.optimizer.name not in ("sgd", "adam"):
        raise ValueError(f"Unknown optimizer {config.optimizer.name!r}; choose 'sgd' or 'adam'.")
    if config.optimizer.schedule not in ("cyclic", "constant"):
        raise ValueError(f"Unknown schedule {config.optimizer.schedule!r}; choose 'cyclic' or 'constant'.")
    precision.check_policy(config.get("mixed_precision"))
    epsilon = config.method.epsilon
    validation.check_eps(epsilon, "method.epsilon")
    _check_method_arguments(config)
    diag = config.get("diagnostics")
    if diag is not None and (diag.get("linearity_monitor") or diag.get("co_monitor")):
        from seat_tf import attacks, diagnostics

        if diag.examples < 1:
            raise ValueError(f"diagnostics.examples must be >= 1, got {diag.examples}.")
        if diag.co_action not in diagnostics.ACTIONS:
            raise ValueError(f"diagnostics.co_action must be one of {diagnostics.ACTIONS}, got {diag.co_action!r}.")
        if epsilon <= 0:
            raise ValueError("The diagnostics monitors need method.epsilon > 0.")
        attacks.get_attack(diag.co_attack)
        attacks.get_attack(diag.get("co_blackbox_attack"))


def method_constructor(config):
    """(constructor, keyword arguments) of config.method. SEAT is built by
    `SEATModel.from_preset(method.preset or "default", ...)`, so a config names its variant's
    fields flat (`method.clean_loss_gradient=True`), as the command line overrides them."""
    method, kwargs = get_method(config.method.name), _kwargs(config.method)
    preset = kwargs.pop("preset", None)
    if hasattr(method, "from_preset"):
        return functools.partial(method.from_preset, preset or "default"), kwargs
    if preset is not None:
        raise ValueError(f"method.preset is only known for SEAT; {config.method.name!r} has no presets.")
    return method, kwargs


def _check_method_arguments(config):
    """Builds the method on a 2-pixel stand-in classifier, so a bad method argument (lam < 0,
    an unknown keyword, an unknown val_attack) fails here, before any data is read."""
    from seat_tf import attacks

    for name in config.get("eval_attacks", ()):
        attacks.get_attack(str(name).partition("@")[0])
    attacks.get_attack(config.get("val_attack"))
    inputs = keras.Input((1, 2, 1))
    stand_in = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    method, kwargs = method_constructor(config)
    try:
        method(stand_in, val_attack=config.get("val_attack"), **kwargs)
    except TypeError as error:
        raise ValueError(f"method {config.method.name!r}: {error}") from None


def build_datasets(config, epoch=None):
    """(train, test, val) tf.data pipelines; val is a fixed subset of test for per-epoch
    robust accuracy (PGD on the full test set every epoch would dominate training time).
    With `epoch` (an int64 tf.Variable), the training order is a function of (seed, epoch)."""
    d = config.dataset
    common = dict(data_dir=d.data_dir, source=d.source, seed=config.seed)
    train = data.load_dataset(d.name, "train", d.batch_size, augment=d.augment, limit=d.train_limit, epoch=epoch,
                              **common)
    test = data.load_dataset(d.name, "test", d.batch_size, limit=d.test_limit, **common)
    val = data.load_dataset(d.name, "test", d.batch_size, limit=d.val_limit, **common) if d.val_limit else test
    return train, test, val


def steps_per_epoch(config, train_ds):
    steps = int(train_ds.cardinality())
    if steps < 0:
        raise ValueError("The training dataset has unknown length; set dataset.train_limit.")
    return steps


def build_classifier(config):
    """The classifier named by config.model, sized for config.dataset."""
    kwargs = _kwargs(config.model)
    name = config.dataset.name
    if name in data.DATASETS:
        shape, classes = data.dataset_info(name)
        kwargs.setdefault("input_shape", shape)
        kwargs.setdefault("num_classes", classes)
        stats = models.normalization.DATASET_STATS.get(name)
        if stats:
            kwargs.setdefault("mean", stats[0])
            kwargs.setdefault("std", stats[1])
    return models.get(config.model.name, **kwargs)


def build_optimizer(config, total_steps):
    """SGD (momentum, decoupled weight decay) or Adam, with the cyclic schedule by default."""
    o = config.optimizer
    lr = CyclicLR(o.learning_rate, total_steps, o.peak_fraction) if o.schedule == "cyclic" else o.learning_rate
    weight_decay = o.weight_decay or None
    if o.name == "sgd":
        return keras.optimizers.SGD(lr, momentum=o.momentum, weight_decay=weight_decay)
    return keras.optimizers.Adam(lr, weight_decay=weight_decay)


def build_model(config, total_steps, strategy=None):
    """Compiled adversarial-training model for config, created inside `strategy.scope()` when
    a strategy is given (its variables are then mirrored).

    Layers are built under config.mixed_precision; with mixed_float16, `compile` wraps the
    optimizer in Keras' LossScaleOptimizer. Weights are initialized from config.seed.
    """
    if strategy is not None:
        distribute.check_jit_compile(strategy, config.jit_compile)
        with strategy.scope():
            return build_model(config, total_steps)
    keras.utils.set_random_seed(config.seed)
    with precision.dtype_policy(config.get("mixed_precision")):
        method, method_kwargs = method_constructor(config)
        diag = config.get("diagnostics")
        guard = bool(diag.get("divergence_guard", True)) if diag is not None else True
        model = method(build_classifier(config), val_attack=config.val_attack, seed=config.seed,
                       divergence_guard=guard, **method_kwargs)
        model.compile(
            optimizer=build_optimizer(config, total_steps),
            jit_compile=config.jit_compile,
            steps_per_execution=config.steps_per_execution,
        )
    return model


def build_monitors(config, workdir=None):
    """The monitors the config's `diagnostics` section turns on, as Keras callbacks (list them
    before TensorBoard so their values reach it). With a workdir, the CO monitor writes its
    records to <workdir>/co_monitor.json and the linearity monitor's per-step values go to
    <workdir>/tensorboard/monitor."""
    diag = config.get("diagnostics")
    if diag is None:
        return []
    from seat_tf import diagnostics

    monitors = []
    if diag.get("divergence_guard"):
        monitors.append(diagnostics.DivergenceGuard(factor=diag.divergence_factor, action=diag.divergence_action,
                                                    on_drift=diag.get("on_drift", "warn")))
    if not (diag.linearity_monitor or diag.co_monitor):
        return monitors

    d = config.dataset
    held_out = data.load_dataset(d.name, "test", diag.examples, limit=diag.examples, shuffle=False,
                                 data_dir=d.data_dir, source=d.source, seed=config.seed)
    x, y = next(iter(held_out))
    eps = config.method.epsilon
    if diag.linearity_monitor:
        monitors.append(diagnostics.LinearityErrorMonitor(
            x, y, eps, steps=diag.linearity_steps, every_n_steps=diag.linearity_every_n_steps or None,
            log_dir=os.path.join(workdir, "tensorboard", "monitor") if workdir else None, seed=config.seed))
    if diag.co_monitor:
        monitors.append(diagnostics.CatastrophicOverfittingMonitor(
            x, y, eps, attack=diag.co_attack, action=diag.co_action, max_drop=diag.co_max_drop,
            max_gap=diag.co_max_gap, min_pgd_accuracy=diag.co_min_pgd_accuracy,
            max_train_gap=diag.co_max_train_gap, lr_factor=diag.co_lr_factor,
            step_factor=diag.co_step_factor, max_restores=diag.co_max_restores, linearity_steps=diag.linearity_steps,
            log_path=os.path.join(workdir, "co_monitor.json") if workdir else None, seed=config.seed,
            blackbox_attack=diag.get("co_blackbox_attack"), max_masking_gap=diag.get("co_max_masking_gap", 0.1)))
    return monitors


def set_seed(seed):
    keras.utils.set_random_seed(seed)
    np.random.seed(seed)


def run(config, workdir, strategy=None, verbose=2, evaluate=True, callbacks=()):
    """Trains config.method on config.dataset and writes its results into `workdir`.

    Writes config.json, history.json, model.keras, training_curves.png and (chief only, with
    `evaluate`) report.json / report.md / robust_accuracy_vs_eps.png; backup/ lets a killed
    run resume from its last finished epoch. Returns a dict: model, history (lists per
    metric), train_seconds, divergence_events, recovered (False if training diverged and did
    not come back), report and paths (None without evaluation or on a non-chief worker).
    The output folder is locked while the run writes it (fileio.WorkdirLock): a second run on
    the same workdir is refused with WorkdirLocked.
    """
    validate(config)
    # Everything that can fail on bad input happens before anything is written.
    strategy = strategy or distribute.make_strategy("default")
    worker = distribute.worker_info(strategy)
    set_seed(config.seed)
    # On one device the training order is a function of (seed, epoch), so a run killed and
    # resumed at epoch k trains on the same batches as an unbroken run (same final weights).
    # (Multi-worker pipelines are cloned per worker and keep the plain reshuffle.)
    single = strategy.num_replicas_in_sync == 1 and not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False) if single else None
    train_ds, test_ds, val_ds = build_datasets(config, epoch=epoch)
    total_steps = config.epochs * steps_per_epoch(config, train_ds)
    model = build_model(config, total_steps, strategy)

    # The chief writes the workdir; other workers write only <workdir>/<task>-<id>/.
    outdir = distribute.output_dir(workdir, worker)
    monitors = build_monitors(config, outdir)  # on every worker: same weights, same decisions
    if epoch is not None:
        monitors = monitors + [keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: epoch.assign(e))]
    with fileio.WorkdirLock(outdir, "train"):  # one run per workdir; a killed run's lock is taken over
        return _run_locked(config, workdir, outdir, worker, model, list(callbacks) + monitors,
                           datasets=(train_ds, test_ds, val_ds), strategy=strategy, verbose=verbose, evaluate=evaluate)


def _run_locked(config, workdir, outdir, worker, model, monitors, datasets, strategy, verbose, evaluate):
    from seat_tf import evaluation, reporting

    train_ds, test_ds, val_ds = datasets
    os.makedirs(outdir, exist_ok=True)
    fileio.write_json_atomic(to_dict(config), os.path.join(outdir, "config.json"))
    # Monitors first: their values enter the epoch logs before TensorBoard and History read them.
    epoch_log = EpochLog(os.path.join(outdir, "epoch_log.json"))
    callbacks = monitors + [epoch_log, distribute.backup_callback(os.path.join(workdir, "backup"))]
    if worker.is_chief:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard")))
    model.fit(
        distribute.shard(train_ds, strategy), validation_data=distribute.shard(val_ds, strategy),
        epochs=config.epochs, callbacks=callbacks, verbose=verbose,
        shuffle=False,  # the tf.data pipeline shuffles
    )
    # Every epoch of the run, also those trained before a kill and resume (Keras' History
    # holds only this process's epochs).
    history_dict, train_seconds = epoch_log.history(), sum(epoch_log.seconds)
    fileio.write_json_atomic(history_dict, os.path.join(outdir, "history.json"))
    fileio.save_model_atomic(model, os.path.join(outdir, "model.keras"))
    divergence = report_monitors(monitors, outdir)
    guard = model.divergence_guard_callback
    recovered = guard is None or guard.recovered
    result = dict(model=model, history=history_dict, train_seconds=train_seconds, divergence_events=divergence,
                  recovered=recovered, report=None, paths=None, is_chief=worker.is_chief)
    if not worker.is_chief:
        print(f"Worker {worker.task_type}-{worker.task_id} done; the chief evaluates and writes the report.")
        return result
    reporting.plot_training_history(history_dict, os.path.join(workdir, "training_curves.png"))
    if not evaluate:
        return result

    print(f"\nTrained {config.method.name} for {config.epochs} epochs in {train_seconds:.0f} s. "
          "Evaluating on the test set...")
    eps = config.method.epsilon
    report = evaluation.evaluate(
        model, test_ds, attacks=list(config.eval_attacks), eps=eps, seed=config.seed, verbose=verbose,
        sweep_eps=[round(eps * f, 6) for f in (0.0, 0.5, 1.0, 1.5, 2.0) if eps * f <= 1] if config.get("eval_sweep", True)
        else None,
    )
    report.update(method=config.method.name, dataset=config.dataset.name, epochs=config.epochs,
                  train_seconds=round(train_seconds, 1), divergence_events=divergence, diverged_unrecovered=not recovered,
                  drift_epoch=guard.drift_epoch if guard is not None else None,
                  switched_epoch=guard.switched_epoch if guard is not None else None)
    paths = evaluation.write_report(report, workdir, title=f"{config.method.name} on {config.dataset.name}")
    result.update(report=report, paths=list(paths.values()) + [os.path.join(workdir, "training_curves.png")])
    return result


class EpochLog(keras.callbacks.Callback):
    """Each finished epoch's logs and seconds, kept in a JSON file so that a run resumed at
    epoch k (BackupAndRestore) still reports epochs 1..k: history.json, training curves and
    train_seconds cover the whole run. List it after the monitors (their values are in the logs)."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.logs, self.seconds = [], []
        self._first = True

    def on_epoch_begin(self, epoch, logs=None):
        if self._first:
            self._first = False
            if epoch > 0 and os.path.exists(self.path):  # resumed: the epochs before `epoch`
                with open(self.path) as f:
                    saved = json.load(f)
                self.logs, self.seconds = saved["logs"][:epoch], saved["seconds"][:epoch]
            if len(self.logs) != epoch:  # a workdir from before this log existed
                logging.warning("%s holds %d epochs but training resumes at epoch %d: history.json will "
                                "lack the missing ones.", self.path, len(self.logs), epoch + 1)
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        self.logs.append({k: float(v) for k, v in (logs or {}).items()})
        self.seconds.append(time.time() - self._start)
        fileio.write_json_atomic({"logs": self.logs, "seconds": self.seconds}, self.path)

    def history(self):
        """{metric: [value per epoch]}, like keras.callbacks.History.history."""
        keys = list(dict.fromkeys(k for logs in self.logs for k in logs))
        return {k: [logs.get(k, float("nan")) for logs in self.logs] for k in keys}


def report_monitors(monitors, workdir):
    """Prints (and plots) what the monitors saw; returns the DivergenceGuard's events."""
    from seat_tf import diagnostics, reporting

    divergence = []
    for monitor in monitors:
        if isinstance(monitor, diagnostics.CatastrophicOverfittingMonitor) and monitor.records:
            reporting.plot_monitor_history(monitor.records, os.path.join(workdir, "co_monitor.png"))
            when = f"at epoch {monitor.collapsed_epoch}" if monitor.collapsed_epoch else "in no epoch"
            print(f"Catastrophic-overfitting monitor: collapse {when}; see {os.path.join(workdir, 'co_monitor.json')}")
        if isinstance(monitor, diagnostics.DivergenceGuard) and monitor.events:
            divergence += monitor.events
            events = "; ".join(f"{e['reason']} -> {e['action']}" for e in monitor.events)
            print(f"\nWARNING: training diverged ({events}). The model holds the weights of epoch "
                  f"{monitor.last_good_epoch}.")
        if isinstance(monitor, diagnostics.DivergenceGuard) and monitor.switched_epoch:
            print(f"\nThe monitored training value grew past {monitor.drift_factor}x its best at epoch "
                  f"{monitor.switched_epoch} (a sign of slow catastrophic overfitting); SEAT trained with double "
                  f"backprop from then on (config.diagnostics.on_drift='double_backprop').")
        elif isinstance(monitor, diagnostics.DivergenceGuard) and monitor.drift_epoch:
            print(f"\nWARNING: the monitored training value grew past {monitor.drift_factor}x its best at epoch "
                  f"{monitor.drift_epoch} (a sign of slow catastrophic overfitting); check the robust accuracy "
                  f"per epoch (config.diagnostics.co_monitor=True) before trusting this model.")
    return divergence
