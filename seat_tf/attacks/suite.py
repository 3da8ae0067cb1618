"""The L-inf evaluation attacks beyond PGD: APGD-CE / APGD-T and Square (the
minimal-perturbation attacks are in fab.py and minimal_l2.py); their names, and composites
such as "standard" (APGD-CE -> APGD-T -> FAB-T -> Square), are parsed by
`seat_tf.attacks.registry`.

APGD (Croce & Hein, 2020) runs on the one L-inf engine, `seat_tf.attacks.linf_attack`: its
adaptive step size, momentum and restarts-from-the-best-point are a *step rule* (`APGDStep`)
plugged into the engine's loop, and the engine's `keep_best` returns the worst iterate for
the model. So projection, gradients, random starts, seeds and restarts are the engine's, as
for PGD. Square (score-based) needs no gradient, so it sits beside the engine, reusing its
projection (`project`).

Every attack is a callable `attack(model_fn, x, y, eps, seed=None) -> x_adv` on batches of
images in [0, 1] (`model_fn`: images -> logits), pure TensorFlow (runs inside `tf.function`),
and deterministic for a given seed.
"""

import dataclasses
import math
from typing import Optional

import tensorflow as tf

from seat_tf import losses
from seat_tf.attacks import engine, randomness


# -- APGD -----------------------------------------------------------------------------------


def apgd_checkpoints(steps):
    """Iterations at which APGD may halve its step size, from Croce & Hein (2020):
    w_j = ceil(p_j * N) with p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06).
    For N = 100: [22, 41, 57, 70, 80, 87, 93, 99]."""
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    points = sorted({math.ceil(round(q * steps, 6)) for q in p[1:]})
    return [w for w in points if 0 < w < steps]


class APGDStep:
    """APGD's step rule for `linf_attack` (Croce & Hein, 2020, Algorithm 1).

    From iterate x_k with gradient g_k: z = P(x_k + eta * sign(g_k)), then
    x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1})) (alpha = 1 at the first
    step). eta starts at 2 eps, per example. At each checkpoint w_j (`apgd_checkpoints`) eta
    is halved and the iterate restarts from the best point so far (the next step's momentum
    is x_max - x_{k-1}, as in the algorithm, where x^(k+1) <- x_max replaces the new iterate)
    where either (1) the objective increased in fewer than rho * (w_j - w_{j-1}) of the
    steps since w_{j-1}, or (2) eta was not halved at w_{j-1} and the best value has not
    improved since then.

    Written as a rule of the engine, not a loop of its own: the schedule is the only thing
    APGD changes about projected gradient ascent.
    """

    def __init__(self, eps, steps, rho=0.75, alpha=0.75):
        self.eps = tf.cast(eps, tf.float32)
        self.rho = float(rho)
        self.alpha = float(alpha)
        checkpoints = apgd_checkpoints(steps)
        interval = [0.0] * steps
        previous = 0
        for w in checkpoints:
            interval[w] = float(w - previous)
            previous = w
        self.checkpoints = checkpoints
        # interval[i] > 0 exactly at checkpoints: the length of the interval ending there.
        self.interval = tf.constant(interval + [0.0], tf.float32)

    def initial_state(self, x_adv):
        batch = tf.shape(x_adv)[0]
        minus_inf = tf.fill([batch], -float("inf"))
        return dict(
            x_prev=x_adv,
            eta=tf.fill([batch], 2.0 * self.eps),
            x_max=x_adv,
            g_max=tf.zeros_like(x_adv),
            f_max=minus_inf,
            f_prev=tf.fill([batch], float("inf")),  # no "increase" is counted at the first iterate
            increases=tf.zeros([batch]),
            f_checkpoint=minus_inf,
            reduced_last=tf.zeros([batch], tf.bool),
        )

    def __call__(self, i, x_adv, values, grad, state, constrain):
        s = dict(state)
        first = tf.equal(i, 0)
        # Best point so far (by objective value) and the count of increasing steps.
        improved = values > s["f_max"]
        s["x_max"] = tf.where(engine.per_example(improved, x_adv), x_adv, s["x_max"])
        s["g_max"] = tf.where(engine.per_example(improved, x_adv), grad, s["g_max"])
        s["f_max"] = tf.where(improved, values, s["f_max"])
        s["increases"] += tf.cast(values > s["f_prev"], tf.float32)
        s["f_prev"] = values
        s["f_checkpoint"] = tf.where(first, s["f_max"], s["f_checkpoint"])
        # Checkpoint: halve eta and go back to the best point where progress stalled.
        interval = tf.gather(self.interval, i)
        at_checkpoint = interval > 0
        oscillating = s["increases"] < self.rho * interval
        stalled = ~s["reduced_last"] & (s["f_max"] <= s["f_checkpoint"])
        reduce = at_checkpoint & (oscillating | stalled)
        s["eta"] = tf.where(reduce, 0.5 * s["eta"], s["eta"])
        to_best = engine.per_example(reduce, x_adv)
        x_adv = tf.where(to_best, s["x_max"], x_adv)
        grad = tf.where(to_best, s["g_max"], grad)
        x_prev = s["x_prev"]  # a restart keeps the momentum from the iterate before (Algorithm 1)
        s["reduced_last"] = tf.where(at_checkpoint, reduce, s["reduced_last"])
        s["f_checkpoint"] = tf.where(at_checkpoint, s["f_max"], s["f_checkpoint"])
        s["increases"] = tf.where(at_checkpoint, tf.zeros_like(s["increases"]), s["increases"])
        # The step with momentum.
        z = constrain(x_adv + engine.per_example(s["eta"], x_adv) * tf.sign(grad))
        alpha = tf.where(first, 1.0, self.alpha)
        x_next = constrain(x_adv + alpha * (z - x_adv) + (1.0 - alpha) * (x_adv - x_prev))
        s["x_prev"] = x_adv
        return x_next, s


@dataclasses.dataclass(frozen=True)
class APGD:
    """Auto-PGD: APGD-CE (loss="ce"), APGD-DLR (loss="dlr") or, with targets > 0, APGD-T:
    the targeted DLR loss against each of the `targets` most likely wrong classes in turn
    (AutoAttack's standard version uses 9), keeping per example the first success.

    steps counts gradient evaluations per run (AutoAttack: 100); restarts are the engine's.
    """

    steps: int = 100
    restarts: int = 1
    loss: str = "ce"
    targets: int = 0
    rho: float = 0.75
    alpha: float = 0.75
    name: Optional[str] = None

    def __post_init__(self):
        if self.steps < 1 or self.restarts < 1 or self.targets < 0:
            raise ValueError(f"APGD needs steps >= 1, restarts >= 1, targets >= 0; got {self}.")
        if self.loss not in ("ce", "dlr"):
            raise ValueError(f"APGD loss must be 'ce' or 'dlr', got {self.loss!r}.")

    def _run(self, model_fn, x, y, eps, seed, value_fn):
        def objective(x_adv):
            logits = model_fn(x_adv)
            return value_fn(logits), engine.wrong_predictions(logits, y)

        return engine.linf_attack(
            objective, x, eps=eps, steps=self.steps, init="uniform", restarts=self.restarts, seed=seed,
            step_rule=APGDStep(eps, self.steps, self.rho, self.alpha), keep_best=True,
        )

    @engine.no_autograph
    def __call__(self, model_fn, x, y, eps, seed=None):
        x = tf.cast(x, tf.float32)
        y = tf.cast(y, tf.int32)
        seed = engine.as_seed(seed)
        if not self.targets:
            loss_fn = losses.get(self.loss)
            return self._run(model_fn, x, y, eps, seed, lambda logits: loss_fn(y, logits))
        clean_logits = model_fn(x)
        num_classes = clean_logits.shape[-1]
        if num_classes is None or num_classes < 4:
            raise ValueError(f"APGD-T needs a known number of classes >= 4 (targeted DLR), got {num_classes}.")
        ranked = tf.math.top_k(clean_logits, k=num_classes).indices
        # Rank 0 is the prediction (the label, for the correctly classified examples attacked).
        predicted_correctly = ranked[:, 0] == y

        def one_target(k, best):
            targets = tf.where(predicted_correctly, tf.gather(ranked, k, axis=1), tf.gather(ranked, k - 1, axis=1))
            x_adv = self._run(
                model_fn, x, y, eps, tf.random.experimental.stateless_fold_in(seed, k),
                lambda logits: losses.targeted_dlr_loss(targets, y, logits),
            )
            logits = model_fn(x_adv)
            result = (x_adv, losses.margin_loss(y, logits), engine.wrong_predictions(logits, y))
            return k + 1, engine.keep_worst(best, result)

        # A graph loop over targets: one trace of the APGD run, not one per target.
        logits = clean_logits
        start = (x, losses.margin_loss(y, logits), engine.wrong_predictions(logits, y))
        last = min(self.targets, num_classes - 1)
        _, best = tf.while_loop(lambda k, _: k <= last, one_target, (tf.constant(1), start))
        return best[0]


# -- Square ---------------------------------------------------------------------------------


def square_fraction(i, queries, p_init):
    """Square's schedule of the fraction p of pixels changed per query (Andriushchenko et
    al., 2020), on their 10,000-query scale: p_init, halved after 10, 50, 200, 500, 1000,
    2000, 4000, 6000 and 8000 (rescaled) queries."""
    scaled = tf.cast(tf.cast(i, tf.float32) / float(queries) * 10000.0, tf.int32)
    thresholds = tf.constant([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000], tf.int32)
    halvings = tf.reduce_sum(tf.cast(scaled > thresholds, tf.float32))
    return p_init / tf.pow(2.0, halvings)


@dataclasses.dataclass(frozen=True)
class Square:
    """Square attack, L-inf (Andriushchenko et al., 2020): score-based, no gradients.

    Starts from vertical stripes of +-eps; each query redraws one random square window (side
    from `square_fraction`) to +-eps per channel, per example, and keeps it where the logit
    margin z_y - max_{j != y} z_j decreases. Examples stop once misclassified. A window whose
    new values equal the current ones is flipped instead (one query is never wasted).
    """

    queries: int = 5000
    p_init: float = 0.8
    name: Optional[str] = None

    def __post_init__(self):
        if self.queries < 1 or not 0 < self.p_init <= 1:
            raise ValueError(f"Square needs queries >= 1 and 0 < p_init <= 1, got {self}.")

    @engine.no_autograph
    def __call__(self, model_fn, x, y, eps, seed=None):
        return self.run(model_fn, x, y, eps, seed)[0]

    @engine.no_autograph
    def run(self, model_fn, x, y, eps, seed=None):
        """(x_adv, queries [B] int32): the adversarial images and the forward passes spent on
        each example (1 for the start, then 1 per query until it is misclassified)."""
        x = tf.cast(x, tf.float32)
        if x.shape.rank != 4:
            raise ValueError(f"Square needs images [batch, height, width, channels], got shape {x.shape}.")
        y = tf.cast(y, tf.int32)
        eps = tf.cast(eps, tf.float32)
        seed = engine.as_seed(seed)
        shape = tf.shape(x)
        batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]

        def margin(x_adv, labels):
            return -losses.margin_loss(labels, model_fn(x_adv))  # z_y - max_{j != y} z_j; < 0: fooled

        # Every draw is the global batch's (one lookup of this replica's rows, outside the loop).
        rows = randomness.global_rows(batch)

        def draw(shape, seed, low=0.0, high=1.0):
            sample = lambda shape, seed: tf.random.stateless_uniform(shape, seed, low, high)  # noqa: E731
            return randomness.global_batch_noise(sample, tf.stack(shape), seed, rows)

        stripes = tf.sign(draw([batch, 1, width, channels], seed, -1.0, 1.0))
        x_best = engine.project(x + eps * stripes, x, eps)
        m_best = margin(x_best, y)

        def body(i, x_best, m_best, spent):
            # Every example's draws come from the whole batch's, so an example's sequence of
            # squares does not depend on which others are still being attacked.
            step_seed = tf.random.experimental.stateless_fold_in(seed, i + 1)
            seeds = tf.random.experimental.stateless_split(step_seed, 3)
            p = square_fraction(i, self.queries, self.p_init)
            side = tf.cast(tf.round(tf.sqrt(p * tf.cast(height * width, tf.float32))), tf.int32)
            side = tf.clip_by_value(side, 1, tf.maximum(tf.minimum(height, width) - 1, 1))
            top = tf.cast(draw([batch], seeds[0]) * tf.cast(height - side + 1, tf.float32), tf.int32)
            left = tf.cast(draw([batch], seeds[1]) * tf.cast(width - side + 1, tf.float32), tf.int32)
            sign = tf.sign(draw([batch, 1, 1, channels], seeds[2], -1.0, 1.0))
            # Queries go to the examples not fooled yet only: a forward pass on the others is waste.
            active = tf.where(m_best >= 0)[:, 0]
            top, left, sign = tf.gather(top, active), tf.gather(left, active), tf.gather(sign, active)
            x_act, best_act, m_act = tf.gather(x, active), tf.gather(x_best, active), tf.gather(m_best, active)
            rows, cols = tf.range(height)[None, :], tf.range(width)[None, :]
            in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)
            in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)
            window = (in_rows[:, :, None] & in_cols[:, None, :])[..., None]  # [A, H, W, 1]
            candidate = engine.project(tf.where(window, x_act + eps * sign, best_act), x_act, eps)
            unchanged = tf.reduce_all(tf.abs(candidate - best_act) < 1e-7, axis=[1, 2, 3])
            sign = tf.where(engine.per_example(unchanged, sign), -sign, sign)
            candidate = engine.project(tf.where(window, x_act + eps * sign, best_act), x_act, eps)
            m_new = margin(candidate, tf.gather(y, active))
            accept = m_new < m_act
            rows_out = tf.where(engine.per_example(accept, candidate), candidate, best_act)
            x_best = tf.tensor_scatter_nd_update(x_best, active[:, None], rows_out)
            m_best = tf.tensor_scatter_nd_update(m_best, active[:, None], tf.where(accept, m_new, m_act))
            spent = tf.tensor_scatter_nd_add(spent, active[:, None], tf.ones_like(active, tf.int32))
            return i + 1, x_best, m_best, spent

        _, x_best, _, spent = tf.while_loop(
            lambda i, _, m, __: (i < self.queries - 1) & tf.reduce_any(m >= 0), body,
            (tf.constant(0), x_best, m_best, tf.ones([batch], tf.int32)),
        )
        return x_best, spent
