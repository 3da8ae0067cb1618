"""Minimal-perturbation L2 attacks: DeepFool and Carlini-Wagner L2. They minimize an L2 norm
instead of searching an L-inf ball (eps is ignored): the evaluation reports their fooling
rate and perturbation norms. They reuse the engine's per-example gradient
(`value_and_gradient`); same call as every attack, `attack(model_fn, x, y, eps, seed=None)`.
"""

import dataclasses
from typing import Optional

import tensorflow as tf

from seat_tf import losses
from seat_tf.attacks import engine


def _l2(v):
    return tf.sqrt(tf.reduce_sum(tf.square(v), axis=tf.range(1, tf.rank(v))))


@dataclasses.dataclass(frozen=True)
class DeepFool:
    """DeepFool, L2 (Moosavi-Dezfooli et al., 2016): the smallest step onto the nearest
    linearized decision boundary, repeated until the label changes. eps is ignored (it is
    a minimal-perturbation attack; report its fooling rate and perturbation norms).

    Among the `candidates` classes with the highest clean logits, each step picks
    l = argmin_k |f_k| / ||w_k|| (f_k = z_k - z_y, w_k its input gradient) and adds
    r = (|f_l| + 1e-4) w_l / ||w_l||^2; the image is x + (1 + overshoot) * sum(r), in [0, 1].
    On an affine classifier the first step lands exactly on the nearest boundary.
    """

    steps: int = 50
    overshoot: float = 0.02
    candidates: int = 10
    name: Optional[str] = None
    threat_model = "l2"

    @engine.no_autograph
    def __call__(self, model_fn, x, y, eps=None, seed=None):
        x = tf.cast(x, tf.float32)
        y = tf.cast(y, tf.int32)
        clean_logits = model_fn(x)
        num_classes = clean_logits.shape[-1]
        k = min(self.candidates, num_classes)
        ranked = tf.math.top_k(clean_logits, k=k).indices
        # The other classes considered: the top k without y (or the top k - 1 if y is not among them).
        others = [
            tf.where(tf.reduce_any(ranked[:, : j + 1] == y[:, None], axis=1), ranked[:, j + 1], ranked[:, j])
            for j in range(k - 1)
        ]

        def step(i, total, x_adv, active):
            best_dist = tf.fill(tf.shape(y), float("inf"))
            best_r = tf.zeros_like(x)
            for other in others:
                def difference(images, other=other):
                    logits = model_fn(images)
                    return tf.gather(logits, other, batch_dims=1) - tf.gather(logits, y, batch_dims=1)

                f, _, w = engine.value_and_gradient(difference, x_adv)
                norm = _l2(w) + 1e-12
                dist = tf.abs(f) / norm
                closer = dist < best_dist
                r = engine.per_example((tf.abs(f) + 1e-4) / tf.square(norm), w) * w
                best_r = tf.where(engine.per_example(closer, x), r, best_r)
                best_dist = tf.where(closer, dist, best_dist)
            total = total + tf.where(engine.per_example(active, x), best_r, tf.zeros_like(x))
            x_adv = tf.clip_by_value(x + (1.0 + self.overshoot) * total, 0.0, 1.0)
            active = active & ~engine.wrong_predictions(model_fn(x_adv), y)
            return i + 1, total, x_adv, active

        active = ~engine.wrong_predictions(clean_logits, y)
        _, _, x_adv, _ = tf.while_loop(
            lambda i, _, __, active: (i < self.steps) & tf.reduce_any(active),
            step, (tf.constant(0), tf.zeros_like(x), x, active),
        )
        return tf.stop_gradient(x_adv)


@dataclasses.dataclass(frozen=True)
class CarliniWagnerL2:
    """Carlini-Wagner L2 (2017): minimize ||x' - x||^2 + c * max(z_y - max_{j != y} z_j, -kappa)
    over x' = (tanh(w) + 1) / 2 with Adam, and binary-search c per example (x10 until the
    first success, then bisection). Returns the smallest successful x' found (x itself where
    none is found). A minimal-perturbation attack: eps is ignored.
    """

    steps: int = 100
    search_steps: int = 5
    initial_const: float = 0.1
    learning_rate: float = 0.01
    confidence: float = 0.0
    name: Optional[str] = None
    threat_model = "l2"

    @engine.no_autograph
    def __call__(self, model_fn, x, y, eps=None, seed=None):
        x = tf.cast(x, tf.float32)
        y = tf.cast(y, tf.int32)
        w0 = tf.atanh(tf.clip_by_value(2.0 * x - 1.0, -1 + 1e-6, 1 - 1e-6))
        batch = tf.shape(y)
        const = tf.fill(batch, float(self.initial_const))
        lower, upper = tf.zeros(batch), tf.fill(batch, float("inf"))
        best_l2, best_x = tf.fill(batch, float("inf")), x
        beta1, beta2, lr = 0.9, 0.999, self.learning_rate

        for _ in range(self.search_steps):

            def loss(w, const=const):
                x_adv = (tf.tanh(w) + 1.0) / 2.0
                margin = -losses.margin_loss(y, model_fn(x_adv))
                return tf.reduce_sum(tf.square(x_adv - x), axis=tf.range(1, tf.rank(x))) + const * tf.maximum(
                    margin, -self.confidence
                )

            def adam(t, w, m, v, best_l2, best_x, found):
                _, _, grad = engine.value_and_gradient(loss, w)
                m = beta1 * m + (1 - beta1) * grad
                v = beta2 * v + (1 - beta2) * tf.square(grad)
                step = tf.cast(t + 1, tf.float32)
                w = w - lr * (m / (1 - beta1**step)) / (tf.sqrt(v / (1 - beta2**step)) + 1e-8)
                x_adv = (tf.tanh(w) + 1.0) / 2.0
                margin = -losses.margin_loss(y, model_fn(x_adv))
                l2 = _l2(x_adv - x)
                success = margin < -self.confidence  # z_y below the best other logit: misclassified
                better = success & (l2 < best_l2)
                best_x = tf.where(engine.per_example(better, x), x_adv, best_x)
                return t + 1, w, m, v, tf.where(better, l2, best_l2), best_x, found | success

            zeros = tf.zeros_like(x)
            start = (tf.constant(0), w0, zeros, zeros, best_l2, best_x, tf.zeros(batch, tf.bool))
            _, _, _, _, best_l2, best_x, found = tf.while_loop(lambda t, *_: t < self.steps, adam, start)
            upper = tf.where(found, tf.minimum(upper, const), upper)
            lower = tf.where(found, lower, tf.maximum(lower, const))
            const = tf.where(tf.math.is_inf(upper), const * 10.0, (lower + upper) / 2.0)
        return tf.stop_gradient(best_x)
