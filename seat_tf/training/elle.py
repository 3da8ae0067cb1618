"""ELLE and ELLE-A (Abad Rocamora et al., "Efficient local linearity regularization to
overcome catastrophic overfitting", ICLR 2024).

Single-step adversarial training (FGSM by default) plus a local-linearity term that needs
only forward passes: for x_a, x_b drawn uniformly from the eps-ball around x and
a ~ U(0, 1) per example, x_c = (1 - a) x_a + a x_b, penalize

    (l(x_c) - (1 - a) l(x_a) - a l(x_b))^2,

the gap between the loss and its chord. It is zero for every chord of the ball exactly when
the loss is linear (affine) in the ball, the property whose loss causes catastrophic
overfitting. The three points go through the classifier as one stacked batch and the term
is backpropagated once; unlike SEAT's and GradAlign's terms it involves no input gradient.

ELLE-A (`adaptive=True`) starts with lambda = 0 and sets it to `lam` whenever the term
exceeds the running mean of all its earlier values by `sensitivity` standard deviations (a
spike that announces catastrophic overfitting); otherwise lambda decays by `decay` per step.
"""

import keras
import tensorflow as tf

from seat_tf import attacks, losses
from seat_tf.training.base import _replica_sum
from seat_tf.training.baselines import _SignedGradientAT


def _per_example_uniform(x, seed):
    """U(0, 1) of shape [B, 1, ..., 1] (broadcasts against x), drawn over the global batch."""
    rank = len(x.shape)
    probe = tf.zeros(tf.concat([tf.shape(x)[:1], tf.ones([rank - 1], tf.int32)], axis=0))
    return 0.5 * (attacks.random_start(probe, 1.0, "uniform", seed=seed) + 1.0)


@keras.saving.register_keras_serializable(package="seat_tf")
class ELLEModel(_SignedGradientAT):
    """ELLE: single-step AT + lam * mean chord gap^2 over a random chord of the eps-ball.

    Args:
      classifier, epsilon: as for every method.
      lam: weight of the linearity term (ELLE-A: its maximum). The authors use 1000-10000 on
        CIFAR-10 at eps 2/255-26/255; the term grows about as eps^4 for a curved loss, so
        larger radii need smaller values (see configs/fashion_mnist_budget.py).
      adaptive: ELLE-A's schedule of lambda (see the module docstring).
      sensitivity, decay: ELLE-A's spike threshold (in standard deviations) and per-step decay.
      rel_step_size, init: the single-step attack (default FGSM: zero start, step eps).
    """

    logged_metrics = ("elle_error", "elle_lambda")

    def __init__(self, classifier, epsilon=8 / 255, lam=1000.0, adaptive=False, sensitivity=2.0, decay=0.99,
                 rel_step_size=1.0, init="zero", **kwargs):
        super().__init__(classifier, epsilon, steps=1, rel_step_size=rel_step_size, init=init, **kwargs)
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}.")
        if not 0 < decay <= 1:
            raise ValueError(f"decay must lie in (0, 1], got {decay}.")
        self.lam, self.adaptive = float(lam), bool(adaptive)
        self.sensitivity, self.decay = float(sensitivity), float(decay)
        # ELLE-A's state: current lambda and the running count / mean / sum of squared
        # deviations of the term (Welford). Every replica computes the same global values.
        state = dict(trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.current_lam = tf.Variable(0.0 if self.adaptive else self.lam, name="elle_lambda", **state)
        self.error_count = tf.Variable(0.0, name="elle_count", **state)
        self.error_mean = tf.Variable(0.0, name="elle_mean", **state)
        self.error_m2 = tf.Variable(0.0, name="elle_m2", **state)

    def get_config(self):
        config = super().get_config()
        config.update(lam=self.lam, adaptive=self.adaptive, sensitivity=self.sensitivity, decay=self.decay,
                      init=self.init)
        return config

    def chord_gap(self, x, y):
        """Per-example l(x_c) - (1 - a) l(x_a) - a l(x_b) for a random chord [x_a, x_b]."""
        epsilon = self.current_epsilon()
        seed = self.step_seed()
        x_a = tf.clip_by_value(x + attacks.random_start(x, epsilon, "uniform", seed=seed + [1, 0]), 0.0, 1.0)
        x_b = tf.clip_by_value(x + attacks.random_start(x, epsilon, "uniform", seed=seed + [2, 0]), 0.0, 1.0)
        a = _per_example_uniform(x, seed + [3, 0])
        x_c = (1.0 - a) * x_a + a * x_b
        logits = self.classify(tf.concat([x_a, x_b, x_c], axis=0), training=True)
        loss_a, loss_b, loss_c = tf.split(losses.cross_entropy(tf.tile(y, [3]), logits), 3)
        a = tf.reshape(a, [-1])
        return loss_c - (1.0 - a) * loss_a - a * loss_b

    def _next_lambda(self, error):
        """ELLE-A: lam after a spike of `error` (global batch mean) above mean + k std, else decayed."""
        count = self.error_count + 1.0
        delta = error - self.error_mean
        mean = self.error_mean + delta / count
        m2 = self.error_m2 + delta * (error - mean)
        std = tf.sqrt(m2 / count)
        spike = tf.logical_and(count > 2.0, error > mean + self.sensitivity * std)
        new_lam = tf.where(spike, self.lam, self.current_lam * self.decay)
        self.error_count.assign(count)
        self.error_mean.assign(mean)
        self.error_m2.assign(m2)
        self.current_lam.assign(new_lam)
        return new_lam

    def objective(self, x, y, x_adv, clean):
        adv_logits = self.classify(x_adv, training=True)
        squared_gap = tf.square(self.chord_gap(x, y))
        linearity = self.batch_mean(squared_gap)
        lam = self.current_lam
        if self.adaptive:
            lam = self._next_lambda(_replica_sum(tf.stop_gradient(linearity)))
        loss = self.batch_mean(losses.cross_entropy(y, adv_logits)) + tf.stop_gradient(lam) * linearity
        return loss, {"adv_logits": adv_logits, "elle_error": squared_gap, "elle_lambda": lam}


@keras.saving.register_keras_serializable(package="seat_tf")
class ELLEAModel(ELLEModel):
    """ELLE-A: ELLE with the adaptive lambda (0 until the term spikes, then `lam`, decaying)."""

    def __init__(self, classifier, epsilon=8 / 255, lam=1000.0, adaptive=True, **kwargs):
        super().__init__(classifier, epsilon, lam=lam, adaptive=adaptive, **kwargs)
