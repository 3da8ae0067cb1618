"""DivergenceGuard: training that blows up is stopped or restored, never silent."""

import logging
import math

import keras
import numpy as np

from seat_tf.diagnostics.monitors import scale_learning_rate

logger = logging.getLogger(__name__)


class DivergenceGuard(keras.callbacks.Callback):
    """Never lets the training loss blow up silently.

    Detects, in the training logs: a non-finite `loss` after any batch (checked at once), or
    an epoch whose `monitor` value (default: SEAT's "linearity_error" if logged, else "loss")
    exceeds `factor` times its smallest value over the earlier good epochs (the divergence
    seen with SEAT-like training at eps 0.3: linearity term 0.24 -> 51 -> 773). A run that
    explodes before it has a good epoch (in its first epoch, or with one epoch) is caught by
    comparing the running value after each batch with `factor` times a reference taken from
    the untrained model: the larger of the first batch's value and log K (the cross-entropy of
    a uniform guess over K classes), e.g. the loss 1.4e25 of SGD at learning rate 1e6. An
    epoch becomes the "last good" checkpoint only if its value is within `good_factor` of the
    best: one that is merely suspect (between the two factors) is neither acted on nor kept,
    so a restore never returns to weights that were already drifting (seen with SEAT, lam 2,
    eps 0.3: 0.73 -> 12 (restore) -> 7.3 -> 29). Then:
      "stop":    restores the last good epoch's weights and stops training;
      "restore": restores them, multiplies the learning rate by lr_factor and goes on; after
                 max_restores restores it stops.
    Each event is logged as a warning and kept in `events`; the epoch logs get `diverged` (0/1).
    `recovered` is False after a divergence that training did not come back from (stopped,
    or ended on restored weights).

    Slow drift is warned about, not acted on: the first epoch whose value exceeds
    `drift_factor` times its best (but not `factor`) logs a warning and sets `drift_epoch`.
    With SEAT that is the signature of slow catastrophic overfitting: the linearity term
    climbing every epoch while PGD accuracy peaks and falls (issue 14: in 4 of 4 such runs it
    passed 3x its best, at epochs 4-6 of 10; one run passed it at epoch 7 with its PGD accuracy
    intact; no other run of the study went above 2.3x). The guard sees no robust accuracy, so
    it cannot tell; the warning names what can. `on_drift="double_backprop"` also acts, on a
    model that has `use_double_backprop` (SEATModel): from the next epoch the objective's
    gradient flows through grad_x l(x) (one more backward pass per step), the setting that
    held the linearity term flat in every eps-0.3 run of issue 14; `switched_epoch` says when.
    An experiment, not a cure: on a run that had collapsed before its term climbed, the term
    came back down while robust accuracy stayed near 0 (README, "SEAT on your own classifier").
    """

    def __init__(self, monitor=None, factor=10.0, action="restore", lr_factor=0.5, max_restores=2,
                 good_factor=2.0, drift_factor=3.0, on_drift="warn"):
        super().__init__()
        if action not in ("stop", "restore"):
            raise ValueError(f"action must be 'stop' or 'restore', got {action!r}.")
        if factor <= 1:
            raise ValueError(f"factor must be > 1, got {factor}.")
        if not 1 <= good_factor <= factor:
            raise ValueError(f"good_factor must lie in [1, factor], got {good_factor}.")
        if drift_factor is not None and drift_factor < good_factor:
            raise ValueError(f"drift_factor must be >= good_factor ({good_factor}) or None, got {drift_factor}.")
        if on_drift not in ("warn", "double_backprop"):
            raise ValueError(f"on_drift must be 'warn' or 'double_backprop', got {on_drift!r}.")
        if on_drift != "warn" and drift_factor is None:
            raise ValueError(f"on_drift={on_drift!r} needs a drift_factor (got None).")
        if not 0 < lr_factor <= 1:
            raise ValueError(f"lr_factor must lie in (0, 1], got {lr_factor}.")
        self.monitor, self.factor, self.action, self.good_factor = monitor, factor, action, good_factor
        self.lr_factor, self.max_restores, self.drift_factor = lr_factor, max_restores, drift_factor
        self.on_drift = on_drift
        self.drift_epoch = None  # the first epoch above drift_factor x the best (warned once)
        self.switched_epoch = None  # on_drift="double_backprop": the epoch after which it was switched on
        self.events, self.restores = [], 0
        self._good_weights, self._good_epoch, self._best = None, None, None
        self._reference = {}  # monitored key -> its value after the first batch of training
        self._epoch = 0
        self._acted = False
        self._trained_since_act = False

    def _key(self, logs):
        return self.monitor or ("linearity_error" if "linearity_error" in logs else "loss")

    def _floor(self):
        """log K for a K-class classifier (the loss of a uniform guess), else 1."""
        try:
            classes = int(self.model.outputs[0].shape[-1])
        except (AttributeError, IndexError, TypeError, ValueError):
            classes = getattr(self.model, "num_classes", None) or 0
        return math.log(classes) if classes and classes > 2 else 1.0

    def _early_limit(self, key):
        """factor x the untrained model's value of `key`, or None before it is known."""
        if key not in self._reference:
            return None
        return self.factor * max(self._reference[key], self._floor())

    def on_train_begin(self, logs=None):
        if self.on_drift == "double_backprop" and not hasattr(self.model, "use_double_backprop"):
            raise ValueError(f"DivergenceGuard(on_drift='double_backprop') needs a model with use_double_backprop "
                             f"(SEATModel); {type(self.model).__name__} has none: use on_drift='warn'.")
        if self._good_weights is None:
            self._good_weights = [np.copy(w) for w in self.model.get_weights()]

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1
        self._acted = False

    def _early_keys(self, logs):
        """The values compared with the untrained model's: `monitor`, else loss and
        linearity_error, and at an epoch's end val_loss (against the training loss's
        reference: the last step of an epoch can explode the weights unseen by the loss)."""
        if self.monitor:
            return [self.monitor]
        return [k for k in ("loss", "linearity_error", "val_loss") if k in logs]

    def _early_check(self, logs, where):
        """Acts on the first monitored value that is non-finite or above its early limit;
        records the reference values on first sight. Returns True if it acted."""
        for key in self._early_keys(logs):
            if logs.get(key) is None:
                continue
            value = float(logs[key])
            if not math.isfinite(value):
                self._act(f"non-finite {'training loss' if key == 'loss' else key} at {where}")
                return True
            reference = "loss" if key == "val_loss" else key
            if reference not in self._reference:
                if key != "val_loss":
                    self._reference[key] = value  # the running value after one batch: the untrained model's
            elif value > self._early_limit(reference):
                self._act(f"{key} {value:.4g} at {where} exceeds {self.factor}x the training {reference} of the "
                          f"untrained model ({max(self._reference[reference], self._floor()):.4g})")
                return True
        return False

    def _log_flag(self, logs, epoch, value):
        """Logs `diverged` (0/1) from the first event on, so a healthy run's progress line and
        history carry no internal 0; the history's earlier epochs are filled with 0 then, so
        history["diverged"][i] is epoch i's flag."""
        history = getattr(getattr(self.model, "history", None), "history", None)
        if isinstance(history, dict):
            flags = history.setdefault("diverged", [])
            flags.extend([0.0] * max(0, epoch - len(flags)))
        logs["diverged"] = value

    def on_train_batch_end(self, batch, logs=None):
        if not self._early_check(logs or {}, f"epoch {self._epoch}, batch {batch + 1}"):
            self._trained_since_act = True

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self._acted or self._early_check(logs, f"epoch {epoch + 1}"):
            self._log_flag(logs, epoch, 1.0)
            return
        key = self._key(logs)
        value = logs.get(key)
        diverged = value is not None and self._best is not None and float(value) > self.factor * self._best
        if diverged or self.events:
            self._log_flag(logs, epoch, float(diverged))
        if diverged:
            self._act(f"{key} {float(value):.4g} at epoch {epoch + 1} exceeds {self.factor}x its best {self._best:.4g}")
            return
        if (self.drift_factor is not None and self.drift_epoch is None and value is not None and self._best
                and float(value) > self.drift_factor * self._best):
            self.drift_epoch = epoch + 1
            drifting = (f"{key} {float(value):.4g} at epoch {epoch + 1} is {float(value) / self._best:.1f}x its best "
                        f"{self._best:.4g}: training may be drifting into catastrophic overfitting")
            if self.on_drift == "double_backprop" and self.model.use_double_backprop():
                self.model.make_train_function(force=True)
                self.switched_epoch = epoch + 1
                logger.warning(f"{drifting}; switched SEAT to double backprop for the epochs that follow.")
                return
            logger.warning(
                f"{drifting} (robust accuracy falling while training accuracy rises). Check robust accuracy per epoch "
                f"(seat_tf.diagnostics.CatastrophicOverfittingMonitor); for SEAT at large eps, "
                f"double_backprop=True holds the linearity term flat.")
        elif value is not None and math.isfinite(float(value)) and (
                self._best is None or float(value) <= self.good_factor * self._best):
            self._best = float(value) if self._best is None else min(self._best, float(value))
            self._good_weights = [np.copy(w) for w in self.model.get_weights()]
            self._good_epoch = epoch + 1

    def on_train_end(self, logs=None):
        # After a divergence, training ends on the last good weights unless a later epoch was good.
        # (Not if the weights are the restored ones already: no batch ran since the last event.)
        if self.events and self._good_epoch != self._epoch and self._trained_since_act:
            self.model.set_weights(self._good_weights)
            self.events.append({"epoch": self._epoch, "reason": f"epoch {self._epoch} is not back within "
                                f"{self.good_factor}x of the best after a divergence", "action": "restored at the end"})
            logger.warning(f"Training ended after a divergence without recovering; restored the weights of "
                           f"epoch {self.last_good_epoch}.")

    @property
    def recovered(self):
        """False if training diverged and did not come back: it stopped, or it ended on
        restored weights rather than on a good final epoch. True without a divergence."""
        if not self.events:
            return True
        return self.events[-1]["action"] == "restored" and self._good_epoch == self._epoch

    @property
    def last_good_epoch(self):
        """The epoch whose weights a restore returns to (0: the weights training started with)."""
        return self._good_epoch or 0

    def _act(self, reason):
        good = f"epoch {self._good_epoch}" if self._good_epoch else "the start of training"
        self._acted = True
        self._trained_since_act = False
        self.model.set_weights(self._good_weights)
        # The epoch's running metrics hold the exploded values: start them afresh, so the
        # per-batch check sees the restored weights' values.
        self.model.reset_metrics()
        if self.action == "stop" or self.restores >= self.max_restores:
            self.model.stop_training = True
            self.events.append({"epoch": self._epoch, "reason": reason, "action": "stopped"})
            logger.warning(f"Training diverged: {reason}. Restored the weights of {good} and stopped.")
            return
        self.restores += 1
        scale_learning_rate(self.model.optimizer, self.lr_factor)
        self.events.append({"epoch": self._epoch, "reason": reason, "action": "restored"})
        logger.warning(f"Training diverged: {reason}. Restored the weights of {good}, learning rate x{self.lr_factor}.")
