"""L-inf attacks on one engine: projected signed-gradient ascent.

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
import re
from typing import Callable, Optional

import tensorflow as tf

from seat_tf import losses

INITS = ("zero", "uniform", "corner", "normal")


def as_seed(seed):
    """A stateless-RNG seed (int32 tensor of shape [2]) from None (fresh random), an int or
    a [2] tensor. Stateless seeds make attacks reproducible and let restarts fold in an index."""
    if seed is None:
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
    if isinstance(seed, int):
        return tf.constant([seed, 0], tf.int32)
    return tf.cast(seed, tf.int32)


def _global_batch_noise(sampler, shape, seed):
    """Noise for this replica's slice of the global batch.

    Under a multi-replica strategy each replica draws the noise of the whole global batch
    from the same seed and keeps its own rows, so the perturbation of an example does not
    depend on how many devices share the batch (distributed and single-device steps agree).
    Replicas may hold different numbers of rows (a batch of 15 on 2 replicas is split 8/7),
    so the rows' offset comes from an all-reduce of every replica's batch size.
    """
    context = tf.distribute.get_replica_context()
    replicas = 1 if context is None else context.num_replicas_in_sync
    if replicas == 1:
        return sampler(shape, seed)
    local = shape[0]
    replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
    # Batch size of every replica (float32: all-reduce support; exact below 2**24).
    sizes = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.one_hot(replica, replicas) * tf.cast(local, tf.float32))
    sizes = tf.cast(sizes, tf.int32)
    start = tf.reduce_sum(sizes[:replica])
    noise = sampler(tf.concat([[tf.reduce_sum(sizes)], shape[1:]], axis=0), seed)
    return noise[start : start + local]


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
        return _global_batch_noise(_uniform, shape, seed) * radius
    if init == "corner":
        return tf.sign(_global_batch_noise(_uniform, shape, seed)) * radius
    if init == "normal":
        return 0.001 * _global_batch_noise(_normal, shape, seed)
    raise ValueError(f"Unknown attack init {init!r}; choose one of {INITS}.")


def project(x_adv, x, eps):
    """Projects x_adv onto the L-inf ball of radius eps around x, then onto [0, 1]."""
    x_adv = x + tf.clip_by_value(x_adv - x, -eps, eps)
    return tf.clip_by_value(x_adv, 0.0, 1.0)


def _gradient(objective, x_adv):
    """Per-example objective values [B] and d sum(objective) / d x_adv (float32)."""
    with tf.GradientTape() as tape:
        tape.watch(x_adv)
        values = tf.cast(objective(x_adv), tf.float32)
    # A non-scalar target: the gradient of the sum, i.e. per-example gradients.
    return values, tf.cast(tape.gradient(values, x_adv), tf.float32)


def _l1_normalize(grad):
    axes = tf.range(1, tf.rank(grad))
    return grad / (tf.reduce_sum(tf.abs(grad), axis=axes, keepdims=True) + 1e-12)


def linf_attack(
    objective: Callable[[tf.Tensor], tf.Tensor],
    x,
    *,
    eps,
    step_size,
    steps: int = 1,
    init: str = "zero",
    init_radius=None,
    restarts: int = 1,
    momentum: float = 0.0,
    project_to_ball: bool = True,
    success: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
    seed=None,
    initial_gradient=None,
):
    """Maximizes `objective(x_adv) -> [B]` over the eps-ball by signed-gradient steps.

    Args:
      objective: per-example value to maximize (e.g. cross-entropy of the true class).
      x: clean images [B, ...] in [0, 1].
      eps: L-inf radius (scalar, may be a tensor so it can follow a schedule).
      step_size: size of each signed step.
      steps: number of steps (a Python int).
      init: start rule, see `random_start`; init_radius defaults to eps.
      restarts: independent runs; per example the engine keeps a run where `success` holds
        (e.g. misclassified), else the one with the highest final objective.
      momentum: MI-FGSM decay mu; 0 gives plain PGD.
      project_to_ball: False keeps only the [0, 1] clip (N-FGSM takes larger steps on purpose).
      seed: None, an int or a [2] int tensor (stateless RNG) for the random starts.
      initial_gradient: the objective's gradient at x, if the caller already has it (a
        training step that did a clean backward pass): with init="zero" the first step uses
        it instead of a forward/backward pass of its own.

    Returns:
      Adversarial images, same shape as x, with gradients stopped.
    """
    x = tf.stop_gradient(tf.cast(x, tf.float32))
    eps = tf.cast(eps, tf.float32)
    step_size = tf.cast(step_size, tf.float32)
    radius = eps if init_radius is None else tf.cast(init_radius, tf.float32)

    def constrain(x_adv):
        return project(x_adv, x, eps) if project_to_ball else tf.clip_by_value(x_adv, 0.0, 1.0)

    def step(x_adv, velocity):
        _, grad = _gradient(objective, x_adv)
        if momentum:
            velocity = momentum * velocity + _l1_normalize(grad)
            grad = velocity
        return tf.stop_gradient(constrain(x_adv + step_size * tf.sign(grad))), velocity

    seed = as_seed(seed) if init != "zero" else None

    def one_run(restart):
        run_seed = None if seed is None else tf.random.experimental.stateless_fold_in(seed, restart)
        state = (constrain(x + random_start(x, radius, init, run_seed)), tf.zeros_like(x))
        if initial_gradient is not None and init == "zero" and restart == 0:
            grad = tf.cast(initial_gradient, tf.float32)
            velocity = momentum * state[1] + _l1_normalize(grad) if momentum else state[1]
            grad = velocity if momentum else grad
            state = (tf.stop_gradient(constrain(x + step_size * tf.sign(grad))), velocity)
            if steps == 1:
                return state[0]
            return tf.while_loop(lambda i, *_: i < steps, lambda i, *s: (i + 1, *step(*s)), (1, *state))[1]
        if steps == 1:
            return step(*state)[0]
        # An explicit while_loop, not a Python loop: Keras traces train_step without autograph.
        _, x_adv, _ = tf.while_loop(lambda i, *_: i < steps, lambda i, *s: (i + 1, *step(*s)), (0, *state))
        return x_adv

    best = one_run(0)
    if restarts == 1:
        return best
    best_value = tf.cast(objective(best), tf.float32)
    best_success = success(best) if success is not None else tf.zeros_like(best_value, tf.bool)
    for restart in range(1, restarts):
        candidate = one_run(restart)
        value = tf.cast(objective(candidate), tf.float32)
        cand_success = success(candidate) if success is not None else tf.zeros_like(value, tf.bool)
        better = (cand_success & ~best_success) | ((cand_success == best_success) & (value > best_value))
        mask = tf.reshape(better, [-1] + [1] * (len(x.shape) - 1))
        best = tf.where(mask, candidate, best)
        best_value = tf.where(better, value, best_value)
        best_success = best_success | cand_success
    return best


def misclassified(model_fn, labels):
    """success(x_adv) -> [B] bool: the model's prediction differs from the label."""

    def success(x_adv):
        return tf.argmax(model_fn(x_adv), axis=-1, output_type=tf.int32) != tf.cast(labels, tf.int32)

    return success


@dataclasses.dataclass(frozen=True)
class LinfPGD:
    """A configuration of the engine against a classifier: FGSM, PGD, CW-inf, MI-FGSM, ...

    step_size is absolute if given, else rel_step_size * eps. `loss` names a per-example
    loss from `seat_tf.losses` ("ce", "margin" for CW-inf, "dlr").
    """

    steps: int = 10
    restarts: int = 1
    step_size: Optional[float] = None
    rel_step_size: float = 0.25
    init: str = "uniform"
    loss: str = "ce"
    momentum: float = 0.0
    name: Optional[str] = None

    def __post_init__(self):
        if self.steps < 1 or self.restarts < 1:
            raise ValueError(f"Attack needs steps >= 1 and restarts >= 1, got {self.steps}, {self.restarts}.")
        if self.init not in INITS:
            raise ValueError(f"Unknown attack init {self.init!r}; choose one of {INITS}.")
        losses.get(self.loss)

    def step_for(self, eps):
        return self.step_size if self.step_size is not None else self.rel_step_size * eps

    def __call__(self, model_fn, x, y, eps, seed=None):
        """Adversarial examples for classifier `model_fn` (images -> logits) at radius eps."""
        loss_fn = losses.get(self.loss)
        return linf_attack(
            lambda x_adv: loss_fn(y, model_fn(x_adv)),
            x,
            eps=eps,
            step_size=self.step_for(eps),
            steps=self.steps,
            init=self.init,
            restarts=self.restarts,
            momentum=self.momentum,
            success=misclassified(model_fn, y) if self.restarts > 1 else None,
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


_PATTERN = re.compile(r"^(pgd|cw|mifgsm)(\d+)(?:x(\d+))?$")


def get_attack(spec):
    """An attack from a name ("fgsm", "pgd20", "pgd50x10", "cw20", "mifgsm10"), a dict of
    `LinfPGD` fields, or an attack object (returned as is)."""
    if spec is None or callable(spec):
        return spec
    if isinstance(spec, dict):
        return LinfPGD(**spec)
    if not isinstance(spec, str):
        raise ValueError(f"Cannot make an attack from {spec!r}.")
    name = spec.lower()
    if name == "fgsm":
        return LinfPGD(steps=1, rel_step_size=1.0, init="zero", name=name)
    match = _PATTERN.match(name)
    if not match:
        raise ValueError(f"Unknown attack {spec!r}; use 'fgsm', 'pgdK', 'pgdKxR', 'cwK' or 'mifgsmK'.")
    kind, steps, restarts = match.group(1), int(match.group(2)), int(match.group(3) or 1)
    if kind == "pgd":
        return LinfPGD(steps=steps, restarts=restarts, name=name)
    if kind == "cw":
        return LinfPGD(steps=steps, restarts=restarts, loss="margin", name=name)
    return LinfPGD(steps=steps, restarts=restarts, init="zero", momentum=1.0, rel_step_size=1.0 / steps, name=name)
