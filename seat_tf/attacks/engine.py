"""The attack engine: projected signed-gradient ascent in the L-inf ball.

`linf_attack` is the engine. It maximizes a per-example objective over the eps-ball around x
(intersected with the image box [0, 1]) by repeated signed-gradient steps, with a choice of
start (zero, uniform, random corner), optional momentum (MI-FGSM) and restarts that keep the
worst case per example. FGSM, RS-FGSM, N-FGSM, PGD, CW-inf and the training-time attacks of
every method are configurations of it: `LinfPGD` names such a configuration as data, so it
can be stored in a model's config and parsed from strings such as "pgd50x10".

All code is pure TensorFlow: it runs eagerly, inside `tf.function` and inside `train_step`
under any `tf.distribute` strategy. Images are float in [0, 1]; eps is in that scale.
"""

import dataclasses
from typing import Callable, Optional

import tensorflow as tf

from seat_tf import losses
from seat_tf.attacks.randomness import global_batch_noise

INITS = ("zero", "uniform", "corner", "normal")

# The attacks are written with explicit graph loops (tf.while_loop), so AutoGraph has nothing
# to convert in them; converting them anyway (inside any tf.function with autograph on, the
# default) re-parses the attack and the model it calls on every trace: 5 s of PGD-20's 5.7 s
# trace and 8 s of APGD-CE's 9.5 s on the small CNN. Attack entry points are marked with this.
no_autograph = tf.autograph.experimental.do_not_convert


def as_seed(seed):
    """A stateless-RNG seed (int32 tensor of shape [2]) from None (fresh random), an int or
    a [2] tensor. Stateless seeds make attacks reproducible and let restarts fold in an index."""
    if seed is None:
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
    if isinstance(seed, int):
        return tf.constant([seed, 0], tf.int32)
    return tf.cast(seed, tf.int32)


def _uniform(shape, seed):
    return tf.random.stateless_uniform(shape, seed, minval=-1.0, maxval=1.0)


def _normal(shape, seed):
    return tf.random.stateless_normal(shape, seed)


def random_start(x, radius, init, seed=None):
    """Initial perturbation delta of shape x.shape for the given start rule.

    zero: delta = 0. uniform: U(-radius, radius) per pixel. corner: radius * random sign, a
    vertex of the L-inf ball (the SEAT authors' start). normal: 0.001 * N(0, 1) (TRADES).
    """
    if init == "zero":
        return tf.zeros_like(x)
    shape, seed = tf.shape(x), as_seed(seed)
    if init == "uniform":
        return global_batch_noise(_uniform, shape, seed) * radius
    if init == "corner":
        return tf.sign(global_batch_noise(_uniform, shape, seed)) * radius
    if init == "normal":
        return 0.001 * global_batch_noise(_normal, shape, seed)
    raise ValueError(f"Unknown attack init {init!r}; choose one of {INITS}.")


def per_example(values, x):
    """Reshapes [B] values to broadcast against x [B, ...]."""
    return tf.reshape(values, tf.concat([[-1], tf.ones([tf.rank(x) - 1], tf.int32)], axis=0))


def project(x_adv, x, eps):
    """Projects x_adv onto the L-inf ball of radius eps around x, then onto [0, 1]."""
    x_adv = x + tf.clip_by_value(x_adv - x, -eps, eps)
    return tf.clip_by_value(x_adv, 0.0, 1.0)


def _values(objective, x_adv):
    """Per-example objective values [B] (float32) and, if the objective reports it, a [B]
    bool success mask (None otherwise)."""
    out = objective(x_adv)
    values, success = out if isinstance(out, (tuple, list)) else (out, None)
    return tf.cast(values, tf.float32), success


def value_and_gradient(objective, x_adv):
    """Per-example objective values [B], success mask (or None) and d sum(objective) / d x_adv
    (float32). A model that cuts the gradient (e.g. a non-differentiable quantization layer)
    gives a zero gradient, not an error: the attack then stalls, which the sanity checks of
    `seat_tf.evaluate` are there to notice."""
    with tf.GradientTape() as tape:
        tape.watch(x_adv)
        values, success = _values(objective, x_adv)
    # A non-scalar target: the gradient of the sum, i.e. per-example gradients.
    grad = tape.gradient(values, x_adv, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return values, success, tf.cast(grad, tf.float32)


def keep_worst(best, candidate):
    """Per example, the worse case for the model of two attack results.

    Each result is (x_adv [B, ...], values [B], success [B] bool or None). A candidate wins
    where it succeeds and the incumbent does not, or where both agree on success and its
    objective value is higher. Restarts, best-iterate tracking and multi-target attacks all
    merge through this one rule.
    """
    x_best, v_best, s_best = best
    x_cand, v_cand, s_cand = candidate
    if s_best is None or s_cand is None:
        better = v_cand > v_best
        success = None
    else:
        better = (s_cand & ~s_best) | ((s_cand == s_best) & (v_cand > v_best))
        success = s_best | s_cand
    mask = tf.reshape(better, tf.concat([[-1], tf.ones([tf.rank(x_best) - 1], tf.int32)], axis=0))
    return tf.where(mask, x_cand, x_best), tf.where(better, v_cand, v_best), success


def _l1_normalize(grad):
    axes = tf.range(1, tf.rank(grad))
    return grad / (tf.reduce_sum(tf.abs(grad), axis=axes, keepdims=True) + 1e-12)


class SignedStep:
    """The default step rule: x <- constrain(x + step_size * sign(g)), where g is the
    gradient or, with momentum mu > 0, the MI-FGSM velocity mu * v + g / |g|_1.

    A step rule is the engine's one hook: `initial_state(x_adv)` gives a tuple of tensors
    carried through the loop, and `__call__(i, x_adv, values, grad, state, constrain)` returns
    (next x_adv, next state) from the objective values [B] and gradient at iterate i. The
    engine owns everything else (start, gradient, projection, best-iterate and restarts).
    """

    def __init__(self, step_size, momentum=0.0):
        self.step_size = step_size
        self.momentum = momentum

    def initial_state(self, x_adv):
        return (tf.zeros_like(x_adv),)

    def __call__(self, i, x_adv, values, grad, state, constrain):
        (velocity,) = state
        if self.momentum:
            velocity = self.momentum * velocity + _l1_normalize(grad)
            grad = velocity
        return constrain(x_adv + self.step_size * tf.sign(grad)), (velocity,)


@no_autograph
def linf_attack(
    objective: Callable[[tf.Tensor], tf.Tensor],
    x,
    *,
    eps,
    step_size=None,
    steps: int = 1,
    init: str = "zero",
    init_radius=None,
    restarts: int = 1,
    momentum: float = 0.0,
    project_to_ball: bool = True,
    success: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
    seed=None,
    step_rule=None,
    keep_best: bool = False,
    initial_gradient=None,
):
    """Maximizes `objective(x_adv) -> [B]` over the eps-ball by projected gradient steps.

    Args:
      objective: per-example value to maximize (e.g. cross-entropy of the true class). It may
        return (values [B], success [B] bool) to say which examples are already fooled; the
        engine then prefers successful points without extra forward passes.
      x: clean images [B, ...] in [0, 1].
      eps: L-inf radius (scalar, may be a tensor so it can follow a schedule).
      step_size: size of each signed step (used by the default step rule).
      steps: number of gradient evaluations (a Python int).
      init: start rule, see `random_start`; init_radius defaults to eps.
      restarts: independent runs; per example the engine keeps a run where `success` holds
        (e.g. misclassified), else the one with the highest final objective.
      momentum: MI-FGSM decay mu; 0 gives plain PGD.
      project_to_ball: False keeps only the [0, 1] clip (N-FGSM takes larger steps on purpose).
      success: optional `x_adv -> [B] bool` (one more forward pass per restart) when the
        objective does not report success itself.
      seed: None, an int or a [2] int tensor (stateless RNG) for the random starts.
      step_rule: how to move between iterates (see `SignedStep`, the default); APGD's
        adaptive step size is such a rule (`seat_tf.attacks.APGDStep`).
      keep_best: return, per run, the worst iterate for the model (success first, then the
        highest objective) instead of the last one.
      initial_gradient: the objective's gradient at x, if the caller already has it (a
        training step that did a clean backward pass): with init="zero" the first run's first
        step uses it instead of a forward/backward pass of its own.

    Returns:
      Adversarial images, same shape as x, with gradients stopped.
    """
    x = tf.stop_gradient(tf.cast(x, tf.float32))
    eps = tf.cast(eps, tf.float32)
    radius = eps if init_radius is None else tf.cast(init_radius, tf.float32)
    if step_rule is None:
        if step_size is None:
            raise ValueError("linf_attack needs step_size (or a step_rule).")
        step_rule = SignedStep(tf.cast(step_size, tf.float32), momentum)

    def constrain(x_adv):
        return project(x_adv, x, eps) if project_to_ball else tf.clip_by_value(x_adv, 0.0, 1.0)

    def with_success(values, succeeded, x_adv):
        if succeeded is None:
            succeeded = success(x_adv) if success is not None else tf.zeros_like(values, tf.bool)
        return succeeded

    def evaluate(x_adv):
        values, succeeded = _values(objective, x_adv)
        return x_adv, values, with_success(values, succeeded, x_adv)

    def merge(best, candidate, first):
        """keep_worst, except that the first candidate replaces the placeholder whatever its value."""
        return tuple(tf.where(first, c, b) for c, b in zip(candidate, keep_worst(best, candidate)))

    def step(i, x_adv, state, best):
        values, succeeded, grad = value_and_gradient(objective, x_adv)
        if keep_best:
            best = merge(best, (x_adv, values, with_success(values, succeeded, x_adv)), tf.equal(i, 0))
        x_next, state = step_rule(i, x_adv, values, grad, state, constrain)
        return i + 1, tf.stop_gradient(x_next), state, best

    seed = as_seed(seed) if init != "zero" else None
    # The caller's gradient at x stands in for the first run's first forward/backward pass.
    shortcut = initial_gradient is not None and init == "zero" and not keep_best

    def one_run(restart, use_shortcut=False):
        run_seed = None if seed is None else tf.random.experimental.stateless_fold_in(seed, restart)
        x_adv = constrain(x + random_start(x, radius, init, run_seed))
        state = step_rule.initial_state(x_adv)
        # keep_best: a placeholder best that iterate 0 replaces, so the loop has one traced body.
        best = _placeholder(x_adv) if keep_best else ()
        start = 0
        if use_shortcut:
            # x_adv == x here: the caller's gradient at x is this step's gradient.
            x_adv, state = step_rule(0, x_adv, None, tf.cast(initial_gradient, tf.float32), state, constrain)
            x_adv, start = tf.stop_gradient(x_adv), 1
        if steps - start == 1:
            _, x_adv, state, best = step(start, x_adv, state, best)
        elif steps - start > 1:
            # An explicit while_loop, not a Python loop: Keras traces train_step without autograph,
            # and one traced body keeps tracing cheap however many steps there are.
            _, x_adv, state, best = tf.while_loop(
                lambda i, *_: i < steps, lambda i, *s: step(i, *s), (tf.constant(start), x_adv, state, best)
            )
        if keep_best:
            return keep_worst(best, evaluate(x_adv))[0]
        return x_adv

    if restarts == 1:
        return one_run(0, shortcut)
    # Restarts run in a graph loop too: one traced run, not one per restart.
    first, best = (1, evaluate(one_run(0, True))) if shortcut else (0, _placeholder(x))

    def restart(r, best):
        return r + 1, merge(best, evaluate(one_run(r)), tf.equal(r, 0))

    _, best = tf.while_loop(lambda r, _: r < restarts, restart, (tf.constant(first), best))
    return best[0]


def _placeholder(x):
    """An empty (x_adv, values, success) best-so-far for `keep_worst` merges: any candidate beats it."""
    batch = tf.shape(x)[:1]
    return x, tf.fill(batch, -float("inf")), tf.zeros(batch, tf.bool)


def wrong_predictions(logits, labels):
    """[B] bool: the arg-max of the logits differs from the label."""
    return tf.argmax(logits, axis=-1, output_type=tf.int32) != tf.cast(labels, tf.int32)


def misclassified(model_fn, labels):
    """success(x_adv) -> [B] bool: the model's prediction differs from the label."""
    return lambda x_adv: wrong_predictions(model_fn(x_adv), labels)


TARGETS = ("random", "least_likely")


def choose_targets(logits, labels, rule, seed=None):
    """Target classes [B] for a targeted attack from the clean logits [B, K].

    random: uniform over the K - 1 wrong classes (stateless, from seed); least_likely: the
    class with the lowest clean logit (Kurakin et al.'s "least likely" target).
    """
    labels = tf.cast(labels, tf.int32)
    if rule == "least_likely":
        return tf.argmin(logits, axis=-1, output_type=tf.int32)
    if rule == "random":
        num_classes = tf.shape(logits)[-1]
        seed = tf.random.experimental.stateless_fold_in(as_seed(seed), 7919)  # independent of the starts
        shift = global_batch_noise(
            lambda shape, seed: tf.random.stateless_uniform(shape, seed, minval=1, maxval=num_classes, dtype=tf.int32),
            tf.shape(labels), seed)
        return (labels + shift) % num_classes
    raise ValueError(f"Unknown target rule {rule!r}; choose one of {TARGETS}.")


def targeted_objective(loss, targets, labels, logits):
    """Per-example value to maximize to push the prediction to `targets` [B]: -CE(t) for
    "ce", z_t - max_{j != t} z_j for "margin", the targeted DLR loss for "dlr"."""
    if loss == "dlr":
        return losses.targeted_dlr_loss(targets, labels, logits)
    return -losses.get(loss)(targets, logits)


@dataclasses.dataclass(frozen=True)
class LinfPGD:
    """A configuration of the engine against a classifier: FGSM, PGD, CW-inf, MI-FGSM,
    targeted PGD, ...

    step_size is absolute if given, else rel_step_size * eps. `loss` names a per-example
    loss from `seat_tf.losses` ("ce", "margin" for CW-inf, "dlr"). `target` makes the attack
    targeted ("random" or "least_likely" class, see `choose_targets`); success, and so the
    choice among restarts, is still "misclassified", the event robust accuracy counts.
    """

    steps: int = 10
    restarts: int = 1
    step_size: Optional[float] = None
    rel_step_size: float = 0.25
    init: str = "uniform"
    loss: str = "ce"
    momentum: float = 0.0
    name: Optional[str] = None
    target: Optional[str] = None

    def __post_init__(self):
        if self.steps < 1 or self.restarts < 1:
            raise ValueError(f"Attack needs steps >= 1 and restarts >= 1, got {self.steps}, {self.restarts}.")
        if self.init not in INITS:
            raise ValueError(f"Unknown attack init {self.init!r}; choose one of {INITS}.")
        if self.target is not None and self.target not in TARGETS:
            raise ValueError(f"Unknown target rule {self.target!r}; choose one of {TARGETS} or None.")
        losses.get(self.loss)

    def step_for(self, eps):
        return self.step_size if self.step_size is not None else self.rel_step_size * eps

    @no_autograph
    def __call__(self, model_fn, x, y, eps, seed=None):
        """Adversarial examples for classifier `model_fn` (images -> logits) at radius eps."""
        y = tf.cast(y, tf.int32)
        if self.target is None:
            loss_fn = losses.get(self.loss)
            value_fn = lambda logits: loss_fn(y, logits)  # noqa: E731
        else:
            targets = choose_targets(model_fn(x), y, self.target, seed)
            value_fn = lambda logits: targeted_objective(self.loss, targets, y, logits)  # noqa: E731

        def objective(x_adv):
            logits = model_fn(x_adv)
            if self.restarts == 1:
                return value_fn(logits)
            # Report success from the same forward pass: restarts keep fooled examples fooled.
            return value_fn(logits), tf.argmax(logits, axis=-1, output_type=tf.int32) != y

        return linf_attack(
            objective,
            x,
            eps=eps,
            step_size=self.step_for(eps),
            steps=self.steps,
            init=self.init,
            restarts=self.restarts,
            momentum=self.momentum,
            seed=seed,
        )

    def get_config(self):
        return dataclasses.asdict(self)


def fgsm(model_fn, x, y, eps, loss="ce"):
    """Fast gradient sign method: one step of size eps from x."""
    return LinfPGD(steps=1, rel_step_size=1.0, init="zero", loss=loss)(model_fn, x, y, eps)


def pgd(model_fn, x, y, eps, steps=10, restarts=1, rel_step_size=0.25, loss="ce", seed=None):
    """Projected gradient descent (Madry et al.) with a uniform random start."""
    spec = LinfPGD(steps=steps, restarts=restarts, rel_step_size=rel_step_size, loss=loss)
    return spec(model_fn, x, y, eps, seed=seed)

