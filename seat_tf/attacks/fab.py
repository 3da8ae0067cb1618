"""FAB-T, L-inf: the targeted fast adaptive boundary attack of AutoAttack's standard protocol
(Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary
attack", ICML 2020).

FAB searches for the *smallest* L-inf perturbation that changes the prediction, instead of the
worst point of an eps-ball. From the iterate x_i it linearizes the boundary between the true
class y and a target t, g(z) = z_y - z_t ~ g(x_i) + <grad g(x_i), z - x_i> = 0, and projects
both x_i and the clean x onto that hyperplane intersected with the box [0, 1]
(`project_to_hyperplane`: the minimal L-inf step, exact after one sort). The next iterate
combines the two projections, biased toward x (weight alpha <= alpha_max) and overshot by eta;
whenever it is misclassified the closest such point so far is kept and the iterate is pulled
back toward x by beta. eps only decides the outcome: an example counts as broken if the
closest misclassified point lies within eps of x. Extra restarts start at a random point
within min(best norm, eps) / 2 of x, as in the paper; the first starts at x.

Same call as every attack, `attack(model_fn, x, y, eps, seed=None)`, pure TensorFlow.
"""

import dataclasses
from typing import Optional

import tensorflow as tf

from seat_tf.attacks import engine, randomness


def _linf(v):
    return tf.reduce_max(tf.abs(v), axis=1)


def project_to_hyperplane(points, normal, offset):
    """The smallest L-inf step delta [B, D] with <normal, points + delta> = offset and
    points + delta in [0, 1], per row (points, normal: [B, D]; offset: [B]).

    Each coordinate moves by min(r, room_j) in the direction sign(w_j) that closes the gap,
    where room_j is the box's room that way. The progress h(r) = sum_j |w_j| min(r, room_j)
    is piecewise linear and non-decreasing in r, so after sorting the rooms the smallest r
    with h(r) = |gap| is one linear solve on the right piece. Where even the box corner does
    not reach the hyperplane, the step goes to that corner (the closest the box gets).
    """
    gap = offset - tf.reduce_sum(normal * points, axis=1)
    direction = tf.sign(normal) * tf.sign(gap)[:, None]
    need = tf.abs(gap)
    room = tf.maximum(tf.where(direction > 0, 1.0 - points, points), 0.0)
    order = tf.argsort(room, axis=1)
    room_sorted = tf.gather(room, order, batch_dims=1)
    weight_sorted = tf.gather(tf.abs(normal), order, batch_dims=1)
    # With rooms sorted c_1 <= c_2 <= ...: saturated_k = sum_{i<k} a_i c_i, free_k = sum_{i>=k} a_i,
    # and h(c_k) = saturated_k + c_k free_k; on [c_{k-1}, c_k], h(r) = saturated_k + r free_k.
    saturated = tf.cumsum(weight_sorted * room_sorted, axis=1, exclusive=True)
    free = tf.cumsum(weight_sorted, axis=1, reverse=True)
    piece = tf.reduce_sum(tf.cast(saturated + room_sorted * free < need[:, None], tf.int32), axis=1)
    size = tf.shape(points)[1]
    index = tf.minimum(piece, size - 1)[:, None]
    r = tf.math.divide_no_nan(need - tf.gather(saturated, index, batch_dims=1)[:, 0],
                              tf.gather(free, index, batch_dims=1)[:, 0])
    r = tf.where(piece < size, r, 1.0)  # out of reach: every room (<= 1) fills, the box corner
    return direction * tf.minimum(r[:, None], room)


@dataclasses.dataclass(frozen=True)
class FAB:
    """FAB-T, L-inf: FAB against each of the `targets` most likely wrong classes in turn
    (AutoAttack's standard version: 9 targets, 1 restart, 100 steps each), keeping per example
    the closest misclassified point; later targets run while some example is still unbroken.

    Returns that point where its L-inf distance to x is <= eps, else x itself, so the result
    is always in the eps-ball and in [0, 1]. With restarts=1 it is deterministic (no random
    start); `seed` only draws the starts of further restarts.
    """

    steps: int = 100
    targets: int = 9
    restarts: int = 1
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9
    name: Optional[str] = None

    def __post_init__(self):
        if self.steps < 1 or self.restarts < 1 or self.targets < 1:
            raise ValueError(f"FAB-T needs steps >= 1, restarts >= 1 and targets >= 1; got {self}.")
        if not (0.0 <= self.alpha_max <= 1.0 and self.eta > 0 and 0.0 < self.beta < 1.0):
            raise ValueError(f"FAB-T needs 0 <= alpha_max <= 1, eta > 0 and 0 < beta < 1; got {self}.")

    @engine.no_autograph
    def __call__(self, model_fn, x, y, eps, seed=None):
        x = tf.cast(x, tf.float32)
        y = tf.cast(y, tf.int32)
        eps = tf.cast(eps, tf.float32)
        seed = engine.as_seed(seed)
        origin = tf.reshape(x, [tf.shape(x)[0], -1])  # the attack works on flat [B, D] images

        def logits_of(flat):
            return model_fn(tf.ensure_shape(tf.reshape(flat, tf.shape(x)), x.shape))

        clean_logits = logits_of(origin)
        num_classes = clean_logits.shape[-1]
        if num_classes is None or num_classes < 2:
            raise ValueError(f"FAB-T needs a known number of classes >= 2, got {num_classes}.")
        ranked = tf.math.top_k(clean_logits, k=num_classes).indices
        # Rank 0 is the prediction (the label, for the correctly classified examples attacked).
        predicted_correctly = ranked[:, 0] == y
        # Already misclassified: x itself is the closest misclassified point.
        best = (origin, tf.where(predicted_correctly, float("inf"), 0.0))

        def one_target(k, best_x, best_norm):
            target = tf.where(predicted_correctly, tf.gather(ranked, k, axis=1), tf.gather(ranked, k - 1, axis=1))

            def boundary(flat):  # g = z_y - z_t: > 0 on y's side of the boundary with t
                logits = logits_of(flat)
                return tf.gather(logits, y, batch_dims=1) - tf.gather(logits, target, batch_dims=1)

            best = (best_x, best_norm)
            for restart in range(self.restarts):
                start = origin
                if restart:
                    # Rows of the global batch's draw: the same start however replicas split it.
                    noise = randomness.global_batch_noise(
                        lambda shape, s: tf.random.stateless_uniform(shape, s, minval=-1.0, maxval=1.0),
                        tf.shape(origin), tf.random.experimental.stateless_fold_in(seed, k * self.restarts + restart))
                    radius = 0.5 * tf.minimum(best[1], eps)
                    start = tf.clip_by_value(origin + radius[:, None] * noise / _linf(noise)[:, None], 0.0, 1.0)
                best = self._descend(boundary, logits_of, origin, y, start, best)
            return (k + 1,) + best

        last = min(self.targets, num_classes - 1)
        _, best_x, best_norm = tf.while_loop(
            lambda k, _, norm: (k <= last) & tf.reduce_any(norm > eps), one_target, (tf.constant(1),) + best
        )
        x_adv = tf.where((best_norm <= eps)[:, None], best_x, origin)
        return tf.stop_gradient(tf.ensure_shape(tf.reshape(x_adv, tf.shape(x)), x.shape))

    def _descend(self, boundary, logits_of, origin, y, start, best):
        """`steps` FAB iterations from `start`; returns the updated (closest misclassified
        point [B, D], its L-inf distance to origin [B])."""

        def step(i, x_i, best_x, best_norm):
            g, _, w = engine.value_and_gradient(boundary, x_i)
            offset = tf.reduce_sum(w * x_i, axis=1) - g  # the linearized boundary: <w, z> = offset
            to_plane = project_to_hyperplane(x_i, w, offset)
            from_origin = project_to_hyperplane(origin, w, offset)
            near, far = _linf(to_plane), _linf(from_origin)
            alpha = tf.minimum(tf.math.divide_no_nan(near, near + far), self.alpha_max)[:, None]
            x_next = tf.clip_by_value(
                (1.0 - alpha) * (x_i + self.eta * to_plane) + alpha * (origin + self.eta * from_origin), 0.0, 1.0)
            fooled = engine.wrong_predictions(logits_of(x_next), y)
            norm = _linf(x_next - origin)
            closer = fooled & (norm < best_norm)
            best_x = tf.where(closer[:, None], x_next, best_x)
            best_norm = tf.where(closer, norm, best_norm)
            # Past the boundary: back toward the origin, to approach it from there.
            x_next = tf.where(fooled[:, None], origin + self.beta * (x_next - origin), x_next)
            return i + 1, tf.stop_gradient(x_next), best_x, best_norm

        _, _, best_x, best_norm = tf.while_loop(
            lambda i, *_: i < self.steps, step, (tf.constant(0), tf.stop_gradient(start)) + best
        )
        return best_x, best_norm
