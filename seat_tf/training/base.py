"""The training skeleton every adversarial-training method shares.

`AdversarialModel` wraps a classifier (images in [0, 1] -> logits). Its `train_step` is
written once:

    1. (optional) clean pass: logits, per-example cross-entropy and its input gradient at x,
       recorded on the weights tape so objectives can use them (SEAT, TRADES, GradAlign);
    2. perturb(): the method's attack, outside the weights tape;
    3. objective(): the method's loss, a replica-local share of the global-batch objective;
    4. gradients, optimizer update, metrics.

A method subclass overrides only `perturb` and `objective` (and says whether it needs the
clean pass). Reductions go through `batch_mean` / `abs_of_batch_mean` / `flooded_mean`,
which average over the *global* batch, so the same code is correct on one device and under
`MirroredStrategy` / `MultiWorkerMirroredStrategy` (the optimizer sums replica gradients).
"""

import collections
import threading

import keras
import numpy as np
import tensorflow as tf

from seat_tf import attacks, keras_compat, losses, precision
from seat_tf.training.centring import FirstLayerCentring, centrable_layer, check_centring
from seat_tf.validation import (  # noqa: F401
    DataError,
    check_batch,
    check_dataset_head,
    check_eps,
    check_labels,
    first_layer_input_stats,
    first_weighted_layer,
    is_uncentred,
    model_expectations,
    warn_if_uncentred,
)

CleanPass = collections.namedtuple("CleanPass", ["logits", "loss", "grad", "attack_grad"], defaults=[None])
CLEAN_PASSES = (None, "value", "gradient", "differentiable_gradient")


def _replica_sum(value):
    """Sum of a value over all replicas in sync (identity without a strategy)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


# The sample weights of the train / test step being traced, per thread: under
# MirroredStrategy each replica traces its step in its own thread.
_STEP = threading.local()


def _step_weights():
    return getattr(_STEP, "weights", None)


def _num_replicas():
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


@keras.saving.register_keras_serializable(package="seat_tf")
class AdversarialModel(keras.Model):
    """Base class: a Keras model that trains `classifier` adversarially with `fit()`.

    Args:
      classifier: a Keras model mapping images in [0, 1] to logits [B, num_classes].
      epsilon: L-inf radius of the training (and validation) perturbation, in [0, 1] units.
      val_attack: attack used by `evaluate` / validation to report `robust_accuracy`: a name
        such as "pgd10" (default), "pgd20", "fgsm", a `seat_tf.attacks.LinfPGD`, or None.
      epsilon_warmup_steps: ramp eps linearly from 0 over this many optimizer steps.
      attack_training: run the classifier in training mode in the attack's forward passes
        (batch-norm uses batch statistics, as in the SEAT authors' code) or in inference mode.
      seed: seed for the random starts of the attacks.
      divergence_guard: `fit` adds a `seat_tf.DivergenceGuard(action="stop")` callback unless
        `callbacks` already holds one: when the loss (or the linearity term) turns non-finite
        or explodes, training warns, goes back to the last sound weights and stops. False
        turns this off; pass your own DivergenceGuard to change its settings. The guard of
        the last `fit` is `model.divergence_guard_callback` (its `events` say what happened).
      first_layer_centring: "off" (this class's default), "auto" or per-channel means. With
        "auto", the first `fit` measures what the classifier's first convolution or dense
        layer receives on the first batch; if a channel's mean exceeds a quarter of its std,
        that layer trains as if its input were centred (`seat_tf.training.centring`: the
        optimizer sees the gradients of W (x - m) + c; the classifier's function is never
        changed). Means given explicitly are used as they are. "off" warns instead
        (`seat_tf.validation.UncenteredInputWarning`).

    Sample weights (`fit(..., sample_weight=...)`, `class_weight=...`, or a dataset of
    (x, y, w)) weight every method's objective and the logged metrics: global-batch
    reductions divide by the global sum of weights (`batch_mean`). An objective that does
    not reduce through `batch_mean` / `flooded_mean` / `abs_of_batch_mean` cannot honour
    them and raises instead of ignoring them. The attacks themselves are per example and
    unweighted.

    `call` runs the classifier, so `predict`, `save` and `export` see a plain classifier.
    """

    # Subclasses set these. clean_pass: None (no clean pass), "value" (logits and loss at x),
    # "gradient" (also grad_x l(x), a constant for the weights) or "differentiable_gradient"
    # (double backprop through it). logged_metrics: names of the extra per-example values
    # their objective logs (each gets a Mean metric).
    clean_pass = None
    logged_metrics = ()

    def __init__(
        self,
        classifier,
        epsilon=8 / 255,
        val_attack="pgd10",
        epsilon_warmup_steps=0,
        attack_training=True,
        seed=None,
        divergence_guard=True,
        first_layer_centring="off",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(classifier, keras.Model):
            raise ValueError(f"classifier must be a keras.Model mapping images to logits, got {type(classifier)}.")
        check_eps(epsilon, "epsilon")
        if epsilon_warmup_steps < 0:
            raise ValueError(f"epsilon_warmup_steps must be >= 0, got {epsilon_warmup_steps}.")
        self.classifier = classifier
        self.epsilon = float(epsilon)
        self.val_attack = attacks.get_attack(val_attack)
        self._val_attack_spec = val_attack if not isinstance(val_attack, attacks.LinfPGD) else val_attack.get_config()
        self.epsilon_warmup_steps = int(epsilon_warmup_steps)
        self.attack_training = bool(attack_training)
        self.seed = seed
        self.divergence_guard = bool(divergence_guard)
        self.divergence_guard_callback = None
        self.first_layer_centring = check_centring(first_layer_centring)
        # The FirstLayerCentring in use, if any: explicit means from the start (so train_on_batch
        # honours them too), "auto" from the first fit's data.
        self.centring = None if isinstance(self.first_layer_centring, str) else self._explicit_centring()
        self._centring_checked = False  # fit sets up centring (or warns) once per model
        # Stateless noise: seed (drawn from NumPy if None, so keras.utils.set_random_seed
        # makes runs reproducible) and the optimizer step; a resumed run replays the same noise.
        self._noise_seed = int(seed) if seed is not None else int(np.random.randint(0, 2**31 - 1))
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.clean_accuracy = keras.metrics.Mean(name="clean_accuracy")
        self.adv_accuracy = keras.metrics.Mean(name="adv_accuracy")
        self.robust_accuracy = keras.metrics.Mean(name="robust_accuracy")
        self.extra_trackers = {name: keras.metrics.Mean(name=name) for name in self.logged_metrics}
        if classifier.inputs:
            self.build(tuple(classifier.inputs[0].shape))

    # -- Keras plumbing -------------------------------------------------------------------

    def build(self, input_shape):
        if not self.classifier.built:
            self.classifier.build(input_shape)
        self.built = True

    def call(self, inputs, training=False):
        return self.classifier(inputs, training=training)

    @property
    def num_classes(self):
        return int(self.classifier.outputs[0].shape[-1]) if self.classifier.outputs else None

    @property
    def metrics(self):
        return [self.loss_tracker, self.clean_accuracy, self.adv_accuracy, self.robust_accuracy] + list(
            self.extra_trackers.values()
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            classifier=keras.saving.serialize_keras_object(self.classifier),
            epsilon=self.epsilon,
            val_attack=self._val_attack_spec,
            epsilon_warmup_steps=self.epsilon_warmup_steps,
            attack_training=self.attack_training,
            seed=self.seed,
            divergence_guard=self.divergence_guard,
            first_layer_centring=(self.first_layer_centring if isinstance(self.first_layer_centring, str)
                                  else list(self.first_layer_centring)),
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["classifier"] = keras.saving.deserialize_keras_object(config["classifier"])
        return cls(**config)

    # -- input validation -----------------------------------------------------------------

    def _check_data(self, x, y, sample_weight=None, name="training data"):
        """Images, labels (range against this model's classes), shapes and sample weights of
        the data entering fit / evaluate: a tf.data pipeline's first batch, arrays whole.
        Returns the images it checked (the first batch, or up to 256), None if it saw none."""
        num_classes, input_shape = model_expectations(self)
        if isinstance(x, tf.data.Dataset):
            return check_dataset_head(x, num_classes, input_shape, name)
        if x is None or isinstance(x, (dict, list)) or not hasattr(x, "shape"):
            return None  # generators and PyDatasets are checked by Keras
        head = x[:256]
        check_batch(head, None, num_classes, input_shape, name)
        if y is not None:
            check_labels(y, num_classes, name)
            if len(np.asarray(y)) != len(x):
                raise DataError(f"{name}: {len(x)} images but {len(np.asarray(y))} labels.")
        if sample_weight is not None:
            weights = np.asarray(sample_weight, dtype=np.float64)
            if weights.size and (not np.all(np.isfinite(weights)) or weights.min() < 0):
                raise ValueError(f"{name}: sample weights must be finite and >= 0.")
        return head

    def fit(self, x=None, y=None, *args, validation_data=None, callbacks=None, **kwargs):
        images = self._check_data(x, y, kwargs.get("sample_weight"))
        if not self._centring_checked:
            self._centring_checked = True
            self.centring = self._set_up_centring(images)
        if isinstance(validation_data, tf.data.Dataset):
            self._check_data(validation_data, None, name="validation data")
        elif isinstance(validation_data, (tuple, list)) and len(validation_data) >= 2:
            self._check_data(validation_data[0], validation_data[1], name="validation data")
        if len(args) >= 4:  # fit(x, y, batch_size, epochs, verbose, callbacks, ...)
            args = list(args)
            callbacks = args.pop(3)
        callbacks = list(callbacks or [])
        from seat_tf.diagnostics import DivergenceGuard

        guards = [c for c in callbacks if isinstance(c, DivergenceGuard)]
        if not guards and self.divergence_guard:
            guards = [DivergenceGuard(action="stop")]
            callbacks.insert(0, guards[0])
        self.divergence_guard_callback = guards[0] if guards else None
        # Keras 3 fit fails under a user's own MirroredStrategy when a batch splits unevenly
        # over the replicas (seat_tf.keras_compat, fix 1); idempotent, version-guarded.
        keras_compat.apply()
        return super().fit(x, y, *args, validation_data=validation_data, callbacks=callbacks, **kwargs)

    def _explicit_centring(self):
        """The FirstLayerCentring of explicit channel means: the user asked, so fail loudly."""
        layer, _ = first_weighted_layer(self.classifier)
        if layer is None or not centrable_layer(layer):
            raise ValueError(f"first_layer_centring={list(self.first_layer_centring)}: the classifier's first weighted "
                             f"layer {getattr(layer, 'name', None)!r} is not a trainable Dense or Conv layer with a "
                             "bias, so it cannot be trained centred.")
        return FirstLayerCentring(layer, self.first_layer_centring)

    def _set_up_centring(self, images):
        """The centring of the first fit: explicit means as given; for "auto", a
        FirstLayerCentring on the first batch's channel means where they are uncentred. "off",
        and "auto" on a layer it cannot reparametrize, warn instead
        (seat_tf.validation.warn_if_uncentred)."""
        if not isinstance(self.first_layer_centring, str):
            return self.centring
        if images is None:
            return None
        images = np.asarray(images)
        stats = first_layer_input_stats(self.classifier, images)  # read once: centring or the warning
        if (self.first_layer_centring == "auto" and stats is not None and is_uncentred(stats[1], stats[2])
                and centrable_layer(stats[0])):
            return FirstLayerCentring(stats[0], stats[1])
        if stats is not None:
            warn_if_uncentred(self.classifier, images, stats=stats)
        return None

    def evaluate(self, x=None, y=None, *args, **kwargs):
        self._check_data(x, y, kwargs.get("sample_weight"), name="evaluation data")
        return super().evaluate(x, y, *args, **kwargs)

    # -- reductions over the global batch (correct under any tf.distribute strategy) -----

    def _global_batch_size(self, values):
        return _replica_sum(tf.cast(tf.shape(values)[0], tf.float32))

    def batch_mean(self, values):
        """Replica-local share of the global-batch mean of per-example `values` [B]; in a
        step with sample weights w, of the weighted mean sum(w * values) / sum(w) over the
        global batch."""
        values = tf.cast(values, tf.float32)
        weights = _step_weights()
        if weights is None:
            return tf.reduce_sum(values) / self._global_batch_size(values)
        _STEP.weighted_reduction = True
        return tf.math.divide_no_nan(tf.reduce_sum(weights * values), _replica_sum(tf.reduce_sum(weights)))

    def global_mean(self, values):
        """Value of the global-batch mean of `values` [B] (all-reduced, no gradient): the same
        on every replica, as on one device."""
        return _replica_sum(tf.stop_gradient(self.batch_mean(values)))

    def abs_of_batch_mean(self, values, offset=0.0):
        """Share of |mean(values) - offset| over the global batch, with the right gradient.

        The value of the global mean needs an all-reduce; its gradient is
        sign(mean - offset) * d mean, which each replica contributes locally.
        """
        share = self.batch_mean(values)
        global_mean = _replica_sum(tf.stop_gradient(share))
        sign = tf.sign(global_mean - offset)
        value_share = tf.abs(global_mean - offset) / _num_replicas()
        return sign * share + tf.stop_gradient(value_share - sign * share)

    def flooded_mean(self, values, level):
        """Share of the flooded global mean |mean(values) - b| + b (plain mean if b is None)."""
        if level is None:
            return self.batch_mean(values)
        return self.abs_of_batch_mean(values, offset=level) + level / _num_replicas()

    # -- the step --------------------------------------------------------------------------

    def current_epsilon(self):
        """eps, ramped linearly from 0 over `epsilon_warmup_steps` optimizer steps."""
        if not self.epsilon_warmup_steps:
            return tf.constant(self.epsilon, tf.float32)
        progress = tf.cast(self.optimizer.iterations + 1, tf.float32) / float(self.epsilon_warmup_steps)
        return self.epsilon * tf.minimum(1.0, progress)

    def step_seed(self):
        """Stateless seed [2] for this training step's random starts."""
        step = tf.cast(self.optimizer.iterations, tf.int32)
        return tf.stack([tf.constant(self._noise_seed, tf.int32), step])

    def classify(self, x, training):
        """Logits as float32 (the classifier may compute in float16 under mixed precision)."""
        return tf.cast(self.classifier(x, training=training), tf.float32)

    def attack_logits(self, x):
        """Logits in the mode the training attack uses (see `attack_training`)."""
        return self.input_gradient_logits(training=self.attack_training)(x)

    def input_gradient_logits(self, training):
        """x -> float32 logits for computing gradients w.r.t. x (attacks). A float16
        classifier gets per-example rescaled backprop so confident examples' input
        gradients do not underflow to zero (see seat_tf.precision)."""
        return precision.logits_fn(self.classifier, training)

    def compute_clean_pass(self, x, y, weights_tape):
        """Logits, cross-entropy [B] and (per `clean_pass`) its input gradient at the clean x.

        The forward pass is recorded on the weights tape (objectives use l(x)); the input
        gradient is computed once and shared by the attack and the objective. Unless
        `clean_pass == "differentiable_gradient"` it is computed off the weights tape and is
        a constant there (no double backprop).
        """
        if self.clean_pass not in CLEAN_PASSES:
            raise ValueError(f"clean_pass must be one of {CLEAN_PASSES}, got {self.clean_pass!r}.")
        differentiable = self.clean_pass == "differentiable_gradient"
        attack_objective = self.clean_attack_objective()
        grad = attack_grad = None
        # float16: per-example rescaled input gradients (seat_tf.precision), which need the tape twice.
        float16 = precision.computes_in_float16(self.classifier)
        with weights_tape:
            with tf.GradientTape(persistent=attack_objective is not None or float16) as input_tape:
                input_tape.watch(x)
                logits = self.classify(x, training=True)
                loss = losses.cross_entropy(y, logits)
                attack_value = attack_objective(y, logits) if attack_objective else None
            if differentiable:
                grad = input_tape.gradient(loss, x)
        input_gradient = precision.scaled_input_gradient if float16 else precision.plain_input_gradient
        if self.clean_pass == "gradient":
            grad = tf.stop_gradient(input_gradient(input_tape, loss, logits, x))
        if attack_objective is not None:
            attack_grad = tf.stop_gradient(input_gradient(input_tape, attack_value, logits, x))
        return CleanPass(logits, loss, grad, attack_grad)

    def clean_attack_objective(self):
        """Optionally a per-example `fn(y, logits)` whose input gradient at the clean x the
        attack needs (an attack starting at x); the clean pass then computes it from the same
        forward pass, saving the attack one forward and backward pass. None by default."""
        return None

    def perturb(self, x, y, epsilon, clean):
        """Returns adversarial images for the batch. Override per method."""
        raise NotImplementedError

    def objective(self, x, y, x_adv, clean):
        """Returns (loss share, logs): the replica-local share of the global-batch objective
        (build it with batch_mean / flooded_mean / abs_of_batch_mean) and a dict of tensors to
        log: "adv_logits" [B, K] for adv_accuracy, other per-example [B] or scalar values."""
        raise NotImplementedError

    def train_step(self, data):
        x, y, weights = _unpack(data)
        epsilon = self.current_epsilon()
        variables = self.classifier.trainable_variables
        tape = tf.GradientTape()
        clean = self.compute_clean_pass(x, y, tape) if self.clean_pass else None
        # The attack runs off the weights tape: its passes cost no weight gradients.
        x_adv = tf.stop_gradient(self.perturb(x, y, epsilon, clean))
        _STEP.weights, _STEP.weighted_reduction = weights, False
        try:
            with tape:
                loss, logs = self.objective(x, y, x_adv, clean)
                scaled_loss = self.optimizer.scale_loss(loss)
            honoured = _STEP.weighted_reduction
        finally:
            _STEP.weights = None
        if weights is not None and not honoured:
            raise ValueError(
                f"{type(self).__name__}.objective does not reduce through batch_mean / flooded_mean / "
                "abs_of_batch_mean, so it cannot honour sample_weight or class_weight; train without them "
                "or build the objective with those reductions.")
        grads = tape.gradient(scaled_loss, variables)
        if self.centring is not None:  # the first layer trains as if centred (first_layer_centring)
            self.centring.apply(self.optimizer, grads, variables, self.distribute_strategy)
        else:
            self.optimizer.apply(grads, variables)
        return self._update_train_metrics(x, y, loss, clean, logs, weights)

    def _update_train_metrics(self, x, y, loss, clean, logs, weights=None):
        # The loss is this replica's share of the global objective: every replica logs the
        # global value (the sum of the shares), weighted by the global batch (sum of weights).
        local = tf.cast(tf.shape(y)[0], tf.float32) if weights is None else tf.reduce_sum(weights)
        self.loss_tracker.update_state(_replica_sum(loss), sample_weight=_replica_sum(local))
        results = {"loss": self.loss_tracker.result()}
        if clean is not None:
            self.clean_accuracy.update_state(_correct(clean.logits, y), sample_weight=weights)
            results["clean_accuracy"] = self.clean_accuracy.result()
        for name, value in logs.items():
            if name == "adv_logits":
                self.adv_accuracy.update_state(_correct(value, y), sample_weight=weights)
                results["adv_accuracy"] = self.adv_accuracy.result()
            elif name in self.extra_trackers:
                per_example = weights is not None and value.shape.rank == 1
                self.extra_trackers[name].update_state(value, sample_weight=weights if per_example else None)
                results[name] = self.extra_trackers[name].result()
            else:
                raise ValueError(f"{type(self).__name__}.objective logged {name!r}, which is not in logged_metrics.")
        return results

    def test_step(self, data):
        """Clean loss and accuracy, and accuracy under `val_attack` (inference mode)."""
        x, y, weights = _unpack(data)
        logits = self.classify(x, training=False)
        self.loss_tracker.update_state(losses.cross_entropy(y, logits), sample_weight=weights)
        self.clean_accuracy.update_state(_correct(logits, y), sample_weight=weights)
        results = {"loss": self.loss_tracker.result(), "clean_accuracy": self.clean_accuracy.result()}
        if self.val_attack is not None:
            model_fn = self.input_gradient_logits(training=False)
            x_adv = self.val_attack(model_fn, x, y, self.epsilon, seed=self._noise_seed)
            self.robust_accuracy.update_state(_correct(self.classify(x_adv, training=False), y), sample_weight=weights)
            results["robust_accuracy"] = self.robust_accuracy.result()
        return results


def _correct(logits, y):
    return tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y), tf.float32)


def _unpack(data):
    """(images float32, labels int32 [B], sample weights float32 [B] or None) of a batch."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    weights = None if sample_weight is None else tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
    return tf.cast(x, tf.float32), tf.reshape(tf.cast(y, tf.int32), [-1]), weights
