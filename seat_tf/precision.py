"""Mixed precision: dtype policies and float16-safe input gradients for attacks.

Under `mixed_float16` a classifier computes in float16 and its last layer in float32
(both bundled models keep the logits layer in float32, and `AdversarialModel.classify` casts
logits to float32), so losses, the linearity residual and the attack arithmetic (steps,
projection) are float32. Weight gradients are protected by Keras' `LossScaleOptimizer`
(`compile` wraps the optimizer; `train_step` calls `optimizer.scale_loss`).

Input gradients need their own care. The gradient of a confident example's cross-entropy
at the logits, softmax(z) - onehot(y), can be 1e-7 or smaller; cast to float16 on its way
back through the network it underflows, and the attack's step sign(grad) is 0: no
perturbation at all for exactly the examples that most need one. A single global scale
cannot fix it (what rescues one example overflows another). `float16_safe_logits` rescales
the backward pass *per example* by a power of two chosen from the upstream gradient at the
logits, and undoes it exactly in float32 at the input. bfloat16 has float32's exponent
range and needs none of this.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def check_policy(name):
    """Returns a policy name from POLICIES (None means float32) or raises ValueError."""
    name = "float32" if name in (None, "", "none") else name
    if name not in POLICIES:
        raise ValueError(f"Unknown mixed-precision policy {name!r}; choose one of {POLICIES}.")
    return name


@contextlib.contextmanager
def dtype_policy(name):
    """Builds layers (and models) created inside the block with the Keras dtype policy
    `name`, then restores the previous global policy: no process-wide side effect."""
    name = check_policy(name)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def computes_in_float16(model):
    """True if any layer of `model` computes in float16 (its input gradients can underflow)."""
    return any(layer.dtype_policy.compute_dtype == "float16" for layer in model._flatten_layers())


def per_example_scale(upstream):
    """A power of two per example [B] that brings max_k |upstream[b, k]| into [1, 2).

    Powers of two make the rescaling exact; examples with an all-zero gradient get 1.
    """
    upstream = tf.cast(upstream, tf.float32)
    peak = tf.reduce_max(tf.abs(tf.reshape(upstream, [tf.shape(upstream)[0], -1])), axis=-1)
    exponent = tf.where(peak > 0, -tf.floor(tf.math.log(tf.maximum(peak, 1e-37)) / np.log(2.0)), 0.0)
    return tf.pow(2.0, tf.clip_by_value(exponent, -100.0, 100.0))


def _broadcast(scale, like):
    return tf.reshape(scale, tf.concat([[-1], tf.ones([tf.rank(like) - 1], tf.int32)], axis=0))


def float16_safe_logits(classifier, training):
    """A logits function x -> float32 logits of `classifier` whose gradient w.r.t. x is
    back-propagated with a per-example scale (see the module docstring).

    Use it for input gradients (attacks). Gradients w.r.t. the weights are unscaled and
    correct too, but second derivatives do not flow through it: double backprop must use
    the classifier directly.
    """

    @tf.custom_gradient
    def logits_fn(x):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            logits = tf.cast(classifier(x, training=training), tf.float32)

        def grad(upstream, variables=None):
            scale = per_example_scale(upstream)
            x_grad = tape.gradient(logits, x, output_gradients=upstream * _broadcast(scale, upstream))
            x_grad = tf.cast(x_grad, tf.float32) / _broadcast(scale, x)
            if not variables:
                return x_grad
            var_grads = tape.gradient(logits, variables, output_gradients=upstream)
            return x_grad, [g if g is not None else tf.zeros_like(v) for g, v in zip(var_grads, variables)]

        return logits, grad

    return logits_fn


def logits_fn(model, training=False):
    """The one way from a Keras model to an `images -> float32 logits` function, used by
    training, evaluation, diagnostics and benchmarks. A model that computes in float16 gets
    per-example rescaled backprop (`float16_safe_logits`), so input gradients do not
    underflow to zero and attacks do not stall (which would overstate robustness)."""
    if computes_in_float16(model):
        return float16_safe_logits(model, training)
    return lambda images: tf.cast(model(images, training=training), tf.float32)


def plain_input_gradient(tape, values, logits, x):
    """d sum(values) / d x from a tape that recorded x -> logits -> values [B]."""
    return tape.gradient(values, x)


def scaled_input_gradient(tape, values, logits, x):
    """d values_b / d x per example, float16-safe, from a persistent tape that recorded
    x -> logits -> values [B] (values_b a function of logits_b only, e.g. a per-example
    loss): each example's backward pass is scaled by a power of two chosen from its
    gradient at the logits (a cheap first call) and unscaled in float32."""
    scale = tf.stop_gradient(per_example_scale(tape.gradient(values, logits)))
    grad = tape.gradient(values, x, output_gradients=scale)
    return tf.cast(grad, tf.float32) / _broadcast(scale, x)
