"""Training monitors (Keras callbacks for any `model.fit`, any training method):

    LinearityErrorMonitor            local linearity error of the loss on a fixed batch
    CatastrophicOverfittingMonitor   PGD vs FGSM accuracy on a fixed held-out batch; warns,
                                     stops, or restores the last good weights when PGD collapses
    collapse_reasons                 the library's one catastrophic-overfitting rule
"""

import json
import logging
import os

import keras
import numpy as np
import tensorflow as tf

from seat_tf import attacks, fileio, precision
from seat_tf.diagnostics.measure import as_images, check_eps, local_linearity_error, model_loss_fn

logger = logging.getLogger(__name__)

ACTIONS = ("warn", "stop", "restore")

# -- learning-rate / step-size control used by the CO monitor ----------------------------------------


@keras.saving.register_keras_serializable(package="seat_tf")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """factor * schedule(step): lowers a scheduled learning rate without changing its shape."""

    def __init__(self, schedule, factor):
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        self.schedule = schedule
        self.factor = float(factor)

    def __call__(self, step):
        return self.factor * self.schedule(step)

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "factor": self.factor}


def scale_learning_rate(optimizer, factor):
    """Multiplies an optimizer's learning rate (a number or a schedule) by factor."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    current = getattr(optimizer, "_learning_rate", None)
    if isinstance(current, keras.optimizers.schedules.LearningRateSchedule):
        if isinstance(current, ScaledSchedule):
            optimizer.learning_rate = ScaledSchedule(current.schedule, current.factor * factor)
        else:
            optimizer.learning_rate = ScaledSchedule(current, factor)
    else:
        current = optimizer.learning_rate
        optimizer.learning_rate = float(current.numpy() if hasattr(current, "numpy") else current) * factor


def scale_step_size(model, factor):
    """Multiplies the training attack's step size of a method that has one; returns the new
    value or None. SEATModel: its own `scale_attack_step`; FGSM-AT, RS-FGSM, N-FGSM, PGD-AT,
    TRADES: rel_step_size. GradAlign's FGSM step is eps by definition (no change)."""
    if hasattr(model, "scale_attack_step"):
        return model.scale_attack_step(factor)
    if getattr(model, "rel_step_size", None) is not None:
        model.rel_step_size = model.rel_step_size * factor
        return model.rel_step_size
    return None


# -- callbacks ---------------------------------------------------------------------------------------


class LinearityErrorMonitor(keras.callbacks.Callback):
    """Logs the mean local linearity error of the loss on a fixed batch.

    Each epoch the value goes into the logs as `name` (so History, and a TensorBoard callback
    listed after this one, record it); with every_n_steps, also every n training steps into
    `step_values` and, given log_dir, a TensorBoard scalar `batch_<name>`.

    Args:
      x, y: the fixed batch (images in [0, 1], integer labels); measured in inference mode.
      eps: L-inf radius of the linearization (usually the training eps).
      steps, step_size, init, seed: how the max over the ball is searched, see
        `local_linearity_error` (fixed seed: the same start points every time).
    """

    def __init__(self, x, y, eps, *, steps=5, step_size=None, init="uniform", every_n_steps=None, log_dir=None,
                 name="local_linearity_error", loss="ce", seed=0):
        super().__init__()
        check_eps(eps)
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or None, got {every_n_steps}.")
        self.x = as_images(x, "x")
        self.y = tf.reshape(tf.cast(y, tf.int32), [-1])
        if int(self.x.shape[0]) != int(self.y.shape[0]):
            raise ValueError(f"x holds {self.x.shape[0]} examples but y holds {self.y.shape[0]} labels.")
        self.eps, self.steps, self.step_size, self.init = eps, steps, step_size, init
        self.every_n_steps, self.log_dir, self.name, self.loss, self.seed = every_n_steps, log_dir, name, loss, seed
        self.step_values = []
        self._fn = None
        self._writer = None
        self._global_step = 0

    def measure(self):
        """Mean local linearity error on the fixed batch (a float)."""
        if self._fn is None:
            self._fn = tf.function(autograph=False, func=lambda x, y: tf.reduce_mean(local_linearity_error(
                model_loss_fn(self.model, y, self.loss), x, self.eps, steps=self.steps, step_size=self.step_size,
                init=self.init, seed=self.seed)))
        return float(self._fn(self.x, self.y))

    def set_model(self, model):
        super().set_model(model)
        self._fn = None

    def on_train_batch_end(self, batch, logs=None):
        self._global_step += 1
        if not self.every_n_steps or self._global_step % self.every_n_steps:
            return
        value = self.measure()
        self.step_values.append((self._global_step, value))
        if self.log_dir:
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(self.log_dir)
            with self._writer.as_default():
                tf.summary.scalar(f"batch_{self.name}", value, step=self._global_step)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[self.name] = self.measure()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()


def collapse_reasons(record, best, *, max_drop=0.2, max_gap=0.4, min_pgd_accuracy=None, max_train_gap=0.5,
                     max_masking_gap=0.1):
    """Why `record` (pgd_accuracy, fgsm_accuracy, optionally train_adv_accuracy and
    blackbox_accuracy) looks like catastrophic overfitting or gradient masking; [] if not.

    drop: PGD accuracy fell more than max_drop below `best`, the best PGD accuracy of the good
      epochs so far (None before the first; the rule of Wong et al.'s early stop, against the
      best rather than the previous epoch, so a two-epoch slide is caught too);
    gap: FGSM accuracy exceeds PGD accuracy by more than max_gap, CO's signature: the model
      has learned to defeat the one-step attack only;
    floor: PGD accuracy below min_pgd_accuracy;
    train gap: the epoch's accuracy against the training attack itself (train_adv_accuracy, the
      model's adv_accuracy log) exceeds PGD accuracy by more than max_train_gap: the model
      defeats the attack it trains on and no other. This catches a run that collapses in its
      first epoch, before any best exists, and whose clean accuracy fell with it so far that
      FGSM's lead over PGD stays small (2 margin steps of 0.75 eps at eps 0.3: 0.93-0.99 against
      its training attack, 0.00-0.02 PGD, FGSM 0.12-0.29). Healthy runs of this project's
      benchmarks stayed at or below 0.44 (single-step SEAT at eps 0.3).
    masking: a gradient-free attack (blackbox_accuracy, e.g. Square's) leaves more than
      max_masking_gap less accuracy than PGD: PGD's gradients no longer find the model's
      adversarial examples, so its accuracy (and every rule above) overstates robustness.
      The eps-0.3 stretch runs that reached PGD-50-10 0.56-0.61 (README, "Which method for my
      time budget?") held 0.70-0.72 against PGD-10 and 0.55-0.56 against 100 Square queries.
    A threshold of None turns its rule off.
    """
    reasons = []
    pgd, fgsm = record["pgd_accuracy"], record["fgsm_accuracy"]
    if max_drop is not None and best is not None and best - pgd > max_drop:
        reasons.append(f"PGD accuracy {pgd:.3f} fell {best - pgd:.3f} below the best {best:.3f} (> {max_drop})")
    if max_gap is not None and fgsm - pgd > max_gap:
        reasons.append(f"FGSM accuracy {fgsm:.3f} exceeds PGD accuracy {pgd:.3f} by {fgsm - pgd:.3f} (> {max_gap})")
    if min_pgd_accuracy is not None and pgd < min_pgd_accuracy:
        reasons.append(f"PGD accuracy {pgd:.3f} < {min_pgd_accuracy}")
    train = record.get("train_adv_accuracy")
    if max_train_gap is not None and train is not None and train - pgd > max_train_gap:
        reasons.append(f"accuracy against the training attack {train:.3f} exceeds PGD accuracy {pgd:.3f} "
                       f"by {train - pgd:.3f} (> {max_train_gap})")
    blackbox = record.get("blackbox_accuracy")
    if max_masking_gap is not None and blackbox is not None and pgd - blackbox > max_masking_gap:
        reasons.append(f"gradient masking: PGD accuracy {pgd:.3f} exceeds a gradient-free attack's {blackbox:.3f} "
                       f"by {pgd - blackbox:.3f} (> {max_masking_gap})")
    return reasons


class CatastrophicOverfittingMonitor(keras.callbacks.Callback):
    """Watches PGD vs FGSM accuracy on a fixed held-out batch and acts on a collapse.

    After every epoch it measures, in inference mode, clean, FGSM and `attack` (PGD) accuracy
    and the local linearity error at eps, logs them as co_clean_accuracy, co_fgsm_accuracy,
    co_pgd_accuracy, co_linearity_error and co_collapsed (0/1), and checks `collapse_reasons`
    (or `rule(record, records) -> bool`). With `blackbox_attack` (e.g. "square100": forward
    passes only) it also measures that attack's accuracy (co_blackbox_accuracy) and flags
    gradient masking, PGD accuracy above it by more than max_masking_gap, as a collapse: a
    model that masks PGD's gradients passes every gradient-based rule. On a collapse, `action`:
      "warn":    logs a warning, training goes on;
      "stop":    stops training (with restore_on_stop, first restores the last good weights,
                 as the early stop of Wong et al. 2020 keeps the previous state);
      "restore": restores the weights of the last good epoch (the start of training if none),
                 multiplies the learning rate by lr_factor and, for methods with a step size,
                 the attack step by step_factor, and trains on; after max_restores restores it stops.
    Optimizer state (moments, step count) is kept: the schedule goes on from where it was.
    The collapsed epoch's own logs (loss, val_*) describe the weights before the restore.
    Works with any Keras classifier model, every training method included.

    `records` holds one dict per epoch; log_path, if given, receives them as JSON every epoch.
    """

    def __init__(self, x, y, eps, *, attack="pgd10", action="warn", max_drop=0.2, max_gap=0.4, min_pgd_accuracy=None,
                 max_train_gap=0.5, rule=None, lr_factor=0.5, step_factor=0.5, max_restores=3, restore_on_stop=True, linearity_steps=5,
                 log_path=None, seed=0, blackbox_attack=None, max_masking_gap=0.1):
        super().__init__()
        check_eps(eps)
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {action!r}.")
        if not 0 < lr_factor <= 1 or not 0 < step_factor <= 1:
            raise ValueError(f"lr_factor and step_factor must lie in (0, 1], got {lr_factor}, {step_factor}.")
        if rule is not None and not callable(rule):
            raise ValueError(f"rule must be callable(record, records) -> bool, got {rule!r}.")
        self.x = as_images(x, "x")
        self.y = tf.reshape(tf.cast(y, tf.int32), [-1])
        if int(self.x.shape[0]) != int(self.y.shape[0]):
            raise ValueError(f"x holds {self.x.shape[0]} examples but y holds {self.y.shape[0]} labels.")
        self.eps = eps
        self.attack = attacks.get_attack(attack)
        self.fgsm = attacks.get_attack("fgsm")
        self.blackbox = attacks.get_attack(blackbox_attack)
        self.action = action
        self.thresholds = dict(max_drop=max_drop, max_gap=max_gap, min_pgd_accuracy=min_pgd_accuracy,
                               max_train_gap=max_train_gap, max_masking_gap=max_masking_gap)
        self.rule = rule
        self.lr_factor, self.step_factor = lr_factor, step_factor
        self.max_restores, self.restore_on_stop = max_restores, restore_on_stop
        self.linearity_steps, self.log_path, self.seed = linearity_steps, log_path, seed
        self.records = []
        self.restores = 0
        self.collapsed_epoch = None
        self._fn = None
        self._good_weights = None
        self._good_epoch = None
        self._best_pgd = None

    def set_model(self, model):
        super().set_model(model)
        self._fn = None

    def measure(self):
        """{clean_accuracy, fgsm_accuracy, pgd_accuracy, linearity_error} on the fixed batch."""
        if self._fn is None:
            model_fn = precision.logits_fn(self.model)
            seed = tf.constant([self.seed, 0], tf.int32)

            def accuracy(x_eval, y):
                return tf.reduce_mean(tf.cast(tf.argmax(model_fn(x_eval), -1, output_type=tf.int32) == y, tf.float32))

            def measure(x, y):
                return {
                    "clean_accuracy": accuracy(x, y),
                    "fgsm_accuracy": accuracy(self.fgsm(model_fn, x, y, self.eps), y),
                    "pgd_accuracy": accuracy(self.attack(model_fn, x, y, self.eps, seed=seed), y),
                    "linearity_error": tf.reduce_mean(local_linearity_error(
                        model_loss_fn(self.model, y), x, self.eps, steps=self.linearity_steps, seed=self.seed)),
                }

            self._fn = tf.function(measure, autograph=False)
            self._model_fn = model_fn
        record = {k: float(v) for k, v in self._fn(self.x, self.y).items()}
        if self.blackbox is not None:  # eagerly: query-based attacks loop in Python
            x_adv = self.blackbox(self._model_fn, self.x, self.y, self.eps, seed=tf.constant([self.seed, 1], tf.int32))
            predicted = tf.argmax(self._model_fn(x_adv), -1, output_type=tf.int32)
            record["blackbox_accuracy"] = float(tf.reduce_mean(tf.cast(predicted == self.y, tf.float32)))
        return record

    def on_train_begin(self, logs=None):
        # Until an epoch passes the check, "last good" is where this fit started.
        if self._good_weights is None:
            self._good_weights = [np.copy(w) for w in self.model.get_weights()]
        self._first_epoch_seen = False

    def on_epoch_begin(self, epoch, logs=None):
        """A fit resumed at `epoch` (BackupAndRestore) takes its earlier epochs' records from
        log_path, so the collapse rule still compares with them and the log stays whole."""
        if self._first_epoch_seen:
            return
        self._first_epoch_seen = True
        if epoch == 0 or self.records or not self.log_path or not os.path.exists(self.log_path):
            return
        with open(self.log_path) as f:
            saved = json.load(f)
        self.records = [r for r in saved.get("records", []) if r["epoch"] <= epoch]
        collapsed = [r["epoch"] for r in self.records if r["collapsed"]]
        self.collapsed_epoch = collapsed[0] if collapsed else None
        sound = [r["pgd_accuracy"] for r in self.records if not r["collapsed"]]
        self._best_pgd = max(sound) if sound else None
        self._good_epoch = max((r["epoch"] for r in self.records if not r["collapsed"]), default=None)
        # Restores before the kill lowered the learning rate and the attack step; neither is in
        # the backup (a rebuilt model starts from the config's values): lower them again.
        self.restores = sum(r.get("action") == "restored" for r in self.records)
        for _ in range(self.restores):
            scale_learning_rate(self.model.optimizer, self.lr_factor)
            if self.step_factor != 1:
                scale_step_size(self.model, self.step_factor)
        if self.restores:
            self.model.make_train_function(force=True)

    def on_epoch_end(self, epoch, logs=None):
        record = dict(epoch=epoch + 1, **self.measure())
        if logs and logs.get("adv_accuracy") is not None:  # adversarial training models log it
            record["train_adv_accuracy"] = float(logs["adv_accuracy"])
        if self.rule is not None:
            collapsed = bool(self.rule(record, list(self.records)))
            reasons = ["custom rule"] if collapsed else []
        else:
            reasons = collapse_reasons(record, self._best_pgd, **self.thresholds)
            collapsed = bool(reasons)
        record.update(collapsed=collapsed, reasons=reasons, action=None)
        if logs is not None:
            for key in ("clean_accuracy", "fgsm_accuracy", "pgd_accuracy", "linearity_error", "blackbox_accuracy"):
                if key in record:
                    logs[f"co_{key}"] = record[key]
            logs["co_collapsed"] = float(collapsed)
        if not collapsed:
            self._good_weights = [np.copy(w) for w in self.model.get_weights()]
            self._good_epoch = epoch + 1
            self._best_pgd = max(record["pgd_accuracy"], -1.0 if self._best_pgd is None else self._best_pgd)
        else:
            if self.collapsed_epoch is None:
                self.collapsed_epoch = epoch + 1
            record["action"] = self._act(record)
        self.records.append(record)
        if self.log_path:
            fileio.write_json_atomic({"records": self.records, "collapsed_epoch": self.collapsed_epoch,
                               "restores": self.restores}, self.log_path)

    def _act(self, record):
        good = f"epoch {self._good_epoch}" if self._good_epoch else "the start of training"
        message = (f"Catastrophic overfitting at epoch {record['epoch']}: " + "; ".join(record["reasons"])
                   + f" (clean {record['clean_accuracy']:.3f}, linearity error {record['linearity_error']:.4g}).")
        if self.action == "warn":
            logger.warning(message)
            return "warned"
        if self.action == "stop" or self.restores >= self.max_restores:
            if self.restore_on_stop:
                self.model.set_weights(self._good_weights)
            self.model.stop_training = True
            restored = f", restored the weights of {good}" if self.restore_on_stop else ""
            logger.warning(message + f" Stopping training{restored}.")
            return "stopped_restored" if self.restore_on_stop else "stopped"
        self.model.set_weights(self._good_weights)
        self.restores += 1
        scale_learning_rate(self.model.optimizer, self.lr_factor)
        step = scale_step_size(self.model, self.step_factor) if self.step_factor != 1 else None
        # The step size is a Python number baked into the traced train step: retrace.
        self.model.make_train_function(force=True)
        record["new_step_size"] = step
        logger.warning(message + f" Restored the weights of {good}; learning rate x{self.lr_factor}"
                       + (f", attack step -> {step:.4g}" if step is not None else "") + ".")
        return "restored"
