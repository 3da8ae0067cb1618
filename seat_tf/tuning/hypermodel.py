"""A KerasTuner HyperModel for SEAT: searches lam and the flood level for robust accuracy.

    hypermodel = SEATHyperModel(config, steps_per_epoch=len(train_ds), epochs=3)
    tuner = keras_tuner.RandomSearch(hypermodel, objective=hypermodel.objective, max_trials=8)
    tuner.search(train_ds, validation_data=val_ds, epochs=3)

The search space comes from `config.tuning` (see `seat_tf.experiment.base_config`):

    lam           hp.Float in [lam_min, lam_max] on a grid of lam_step (paper: 0 ... 0.7)
    flood_level   hp.Float in [flood_min, flood_max] on a grid of flood_step; 0 = no flooding
    epsilon_warmup_epochs   hp.Choice over warmup_epochs (only if more than one choice)
    learning_rate hp.Float, log-uniform in [lr_min, lr_max] (only if both are set)

Every model is built by `seat_tf.experiment.build_model` from a copy of the config, so a
trial trains exactly as `seat-tf train` would with those values. The objective is what the
user cares about, robust accuracy under the config's PGD validation attack
(`val_robust_accuracy`), or with `clean_weight` / `clean_floor` a score that also asks for
clean accuracy (`val_tuning_score`, see `tuning_score`).
"""

import copy
import math

import keras
import keras_tuner

from seat_tf import experiment

ROBUST_OBJECTIVE = "val_robust_accuracy"
SCORE_OBJECTIVE = "val_tuning_score"
HYPERPARAMETERS = ("lam", "flood_level", "epsilon_warmup_epochs", "learning_rate")


def _number(space, name, minimum=None):
    value = space[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"tuning.{name} must be a finite number, got {value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"tuning.{name} must be >= {minimum}, got {value}.")
    return float(value)


def validate_search_space(space):
    """Raises ValueError naming the field if `space` (a config's `tuning` section) is not a
    search space SEAT can train with: lam and the flood level must be >= 0 (a negative lam
    rewards nonlinearity; a negative flood level is not a loss level), ranges ordered."""
    for name, what in (("lam", "lambda (the linearity-term weight)"), ("flood", "the flood level")):
        low, high = space[f"{name}_min"], space[f"{name}_max"]
        for field, value in ((f"{name}_min", low), (f"{name}_max", high)):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"tuning.{field}={value}: {what} cannot be negative; use a range within [0, inf).")
        low, high = _number(space, f"{name}_min", 0.0), _number(space, f"{name}_max", 0.0)
        if low > high:
            raise ValueError(f"tuning.{name}_min={low} is above tuning.{name}_max={high}.")
        step = space[f"{name}_step"]
        if step is not None and _number(space, f"{name}_step") <= 0:
            raise ValueError(f"tuning.{name}_step must be > 0 or None (continuous), got {step}.")
    choices = space.warmup_epochs
    if isinstance(choices, (int, float)):
        choices = (choices,)
    if not choices or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in choices):
        raise ValueError(f"tuning.warmup_epochs must be a non-empty tuple of integers >= 0, got {space.warmup_epochs!r}.")
    lr_min, lr_max = space.lr_min, space.lr_max
    if (lr_min is None) != (lr_max is None):
        raise ValueError("Set both tuning.lr_min and tuning.lr_max to tune the learning rate, or neither.")
    if lr_min is not None:
        if _number(space, "lr_min") <= 0 or _number(space, "lr_max") < lr_min:
            raise ValueError(f"Need 0 < tuning.lr_min <= tuning.lr_max, got [{lr_min}, {lr_max}].")
    weight = _number(space, "clean_weight")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"tuning.clean_weight must lie in [0, 1], got {weight}.")
    if space.clean_floor is not None and not 0.0 <= _number(space, "clean_floor") <= 1.0:
        raise ValueError(f"tuning.clean_floor must be an accuracy in [0, 1] or None, got {space.clean_floor}.")


def tuning_score(robust_accuracy, clean_accuracy, clean_weight=0.0, clean_floor=None):
    """(1 - w) * robust + w * clean, minus 1 if clean accuracy is below the floor: a trial
    that misses the floor ranks below every trial that meets it (scores in [-1, 0) vs [0, 1])."""
    score = (1.0 - clean_weight) * robust_accuracy + clean_weight * clean_accuracy
    if clean_floor is not None and clean_accuracy < clean_floor:
        score -= 1.0
    return score


class TuningScore(keras.callbacks.Callback):
    """Adds `val_tuning_score` to each epoch's logs. It must run before the tuner's callbacks,
    which read the same logs dict (`SEATHyperModel.fit` puts it first)."""

    def __init__(self, clean_weight, clean_floor):
        super().__init__()
        self.clean_weight = clean_weight
        self.clean_floor = clean_floor

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or ROBUST_OBJECTIVE not in logs:
            return
        logs[SCORE_OBJECTIVE] = tuning_score(
            logs[ROBUST_OBJECTIVE], logs["val_clean_accuracy"], self.clean_weight, self.clean_floor
        )


class SEATHyperModel(keras_tuner.HyperModel):
    """Builds a compiled SEATModel from `config` with lam, flood_level (and optionally the
    epsilon warm-up and learning rate) drawn from `config.tuning`.

    Args:
      config: an experiment ConfigDict whose method is "seat" (configs/fashion_mnist_seat.py).
      steps_per_epoch: optimizer steps per epoch (sizes the learning-rate schedule and warm-up).
      epochs: epochs per trial (the schedule spans them; Hyperband's max_epochs).
      make_train_data: optional callable returning a fresh training dataset, used by `fit`
        in place of the one the tuner passes. A shuffled tf.data object reshuffles on every
        iteration, so trials sharing one would each see a different example order (on Fashion-
        MNIST that alone moved validation robust accuracy by ~2 points); a fresh dataset per
        trial gives every trial the same order, and with the same seed the same
        initialization, so trials differ only by their hyperparameters.
    """

    def __init__(self, config, steps_per_epoch, epochs, name="seat", tunable=True, make_train_data=None):
        super().__init__(name=name, tunable=tunable)
        if config.method.name != "seat":
            raise ValueError(
                f"The tuner searches SEAT's lam and flood_level, but config.method.name is "
                f"{config.method.name!r}; use a SEAT config (configs/fashion_mnist_seat.py)."
            )
        if not config.get("val_attack"):
            raise ValueError("config.val_attack is unset: the objective needs a validation attack (e.g. 'pgd10').")
        if steps_per_epoch < 1 or epochs < 1:
            raise ValueError(f"steps_per_epoch and epochs must be >= 1, got {steps_per_epoch} and {epochs}.")
        validate_search_space(config.tuning)
        self.config = config
        self.space = config.tuning
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.make_train_data = make_train_data

    @property
    def objective_name(self):
        """val_robust_accuracy, or val_tuning_score if clean accuracy enters the objective."""
        if self.space.clean_weight or self.space.clean_floor is not None:
            return SCORE_OBJECTIVE
        return ROBUST_OBJECTIVE

    @property
    def objective(self):
        return keras_tuner.Objective(self.objective_name, direction="max")

    def _float(self, hp, name, low, high, step, sampling="linear"):
        if low == high:
            return hp.Fixed(name, float(low))
        return hp.Float(name, float(low), float(high), step=step, sampling=sampling)

    def build(self, hp):
        s = self.space
        lam = self._float(hp, "lam", s.lam_min, s.lam_max, s.lam_step)
        flood = self._float(hp, "flood_level", s.flood_min, s.flood_max, s.flood_step)
        choices = tuple(s.warmup_epochs) if not isinstance(s.warmup_epochs, int) else (s.warmup_epochs,)
        warmup = hp.Choice("epsilon_warmup_epochs", list(choices)) if len(set(choices)) > 1 else choices[0]
        learning_rate = None
        if s.lr_min is not None:
            learning_rate = self._float(hp, "learning_rate", s.lr_min, s.lr_max, None, sampling="log")
        return self.make_model(lam, flood, warmup, learning_rate)

    def make_model(self, lam, flood_level=None, warmup_epochs=0, learning_rate=None):
        """The compiled SEATModel for these values (no hp needed: used for the baseline too).
        flood_level 0 or None means no flooding (|L - 0| + 0 = L for a loss L >= 0)."""
        config = copy.deepcopy(self.config)
        with config.unlocked():
            # Float grids give 0.30000000000000004; round to what a person would type.
            config.method.lam = round(float(lam), 6)
            config.method.flood_level = round(float(flood_level), 6) if flood_level else None
            config.method.epsilon_warmup_steps = int(warmup_epochs) * self.steps_per_epoch
            if learning_rate is not None:
                config.optimizer.learning_rate = float(learning_rate)
            config.epochs = self.epochs
        return experiment.build_model(config, total_steps=self.epochs * self.steps_per_epoch)

    def fit(self, hp, model, x=None, *args, callbacks=None, **kwargs):
        """model.fit with the config's monitors (as `seat-tf train` uses them) and the
        objective's score callback ahead of the tuner's callbacks; returns the History (the
        tuner records the best epoch's metrics and checkpoints that epoch's weights)."""
        if self.make_train_data is not None:
            x = self.make_train_data()
        first = experiment.build_monitors(self.config)
        if self.objective_name == SCORE_OBJECTIVE:
            first.append(TuningScore(self.space.clean_weight, self.space.clean_floor))
        callbacks = first + list(callbacks or [])
        kwargs.setdefault("shuffle", False)  # the tf.data pipeline shuffles
        return model.fit(x, *args, callbacks=callbacks, **kwargs)
