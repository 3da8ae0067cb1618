"""Per-example losses used by attacks and training objectives.

Every function takes integer labels of shape [B] and logits of shape [B, K] and returns a
float32 tensor of shape [B] (one value per example), so callers choose the reduction. That
is what makes the training objectives correct under `tf.distribute`: per-example values are
averaged over the *global* batch by the training skeleton, never by the loss.
Logits are cast to float32 first, so the losses stay accurate under mixed precision.
"""

import tensorflow as tf


def _as_float32(logits):
    return tf.cast(logits, tf.float32)


def cross_entropy(labels, logits):
    """Softmax cross-entropy per example: -log softmax(z)_y. Shape [B]."""
    labels = tf.cast(labels, tf.int32)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=_as_float32(logits))


def _true_and_best_other(labels, scores):
    """Score of the true class and the largest score among the other classes, each [B]."""
    num_classes = tf.shape(scores)[-1]
    true_mask = tf.one_hot(tf.cast(labels, tf.int32), num_classes) > 0.5
    true_score = tf.reduce_sum(tf.where(true_mask, scores, tf.zeros_like(scores)), axis=-1)
    best_other = tf.reduce_max(tf.where(true_mask, tf.fill(tf.shape(scores), -float("inf")), scores), axis=-1)
    return true_score, best_other


def margin_loss(labels, logits, on="logits"):
    """Max-margin loss max_{j != y} s_j - s_y per example, shape [B].

    Positive exactly when the example is misclassified. `on="logits"` uses the logits z (the
    paper's formula; its gradient does not vanish on confident examples); `on="probs"` uses
    softmax probabilities, as the authors' PyTorch code does (bounded in [-1, 1], but its
    gradient vanishes where the softmax saturates).
    """
    scores = _as_float32(logits)
    if on == "probs":
        scores = tf.nn.softmax(scores, axis=-1)
    elif on != "logits":
        raise ValueError(f"margin_loss: on must be 'logits' or 'probs', got {on!r}")
    true_score, best_other = _true_and_best_other(labels, scores)
    return best_other - true_score


def dlr_loss(labels, logits):
    """Difference-of-logits-ratio loss of Croce & Hein (2020), per example, shape [B].

    -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12), with pi the descending order of z:
    invariant to shifting and rescaling the logits, so it is robust to logit-scale masking.
    """
    z = _as_float32(logits)
    true_score, best_other = _true_and_best_other(labels, z)
    top3 = tf.math.top_k(z, k=3).values
    return -(true_score - best_other) / (top3[:, 0] - top3[:, 2] + 1e-12)


def targeted_dlr_loss(target_labels, labels, logits):
    """Targeted DLR loss: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), per example."""
    z = _as_float32(logits)
    num_classes = tf.shape(z)[-1]
    z_true = tf.reduce_sum(z * tf.one_hot(tf.cast(labels, tf.int32), num_classes), axis=-1)
    z_target = tf.reduce_sum(z * tf.one_hot(tf.cast(target_labels, tf.int32), num_classes), axis=-1)
    top4 = tf.math.top_k(z, k=4).values
    return -(z_true - z_target) / (top4[:, 0] - 0.5 * (top4[:, 2] + top4[:, 3]) + 1e-12)


def flood(mean_loss, level):
    """Flooding (Ishida et al., 2020): |L - b| + b on a *batch-mean* loss L.

    Above the flood level b this is L (ordinary descent); below it the sign of the gradient
    flips (ascent), so training hovers around b instead of driving the loss to zero.
    """
    if level is None:
        return mean_loss
    return tf.abs(mean_loss - level) + level


def linearity_residual(loss_perturbed, loss_clean, delta, grad_clean):
    """Signed first-order Taylor residual l(x+d) - l(x) - d . grad_x l(x), per example [B]."""
    delta = tf.cast(delta, tf.float32)
    grad_clean = tf.cast(grad_clean, tf.float32)
    axes = tf.range(1, tf.rank(delta))
    directional = tf.reduce_sum(delta * grad_clean, axis=axes)
    return tf.cast(loss_perturbed, tf.float32) - tf.cast(loss_clean, tf.float32) - directional


def linearity_error(loss_perturbed, loss_clean, delta, grad_clean):
    """Local linearity approximation error |l(x+d) - l(x) - d . grad_x l(x)| per example [B].

    Zero when the loss is linear in the input along d; for a quadratic loss it equals the
    exact second-order term |d^T H d| / 2.
    """
    return tf.abs(linearity_residual(loss_perturbed, loss_clean, delta, grad_clean))


LOSSES = {
    "ce": cross_entropy,
    "cross_entropy": cross_entropy,
    "margin": margin_loss,
    "margin_probs": lambda labels, logits: margin_loss(labels, logits, on="probs"),
    "dlr": dlr_loss,
}


def get(name_or_fn):
    """Returns a per-example loss `fn(labels, logits) -> [B]` from a name or a callable."""
    if callable(name_or_fn):
        return name_or_fn
    try:
        return LOSSES[name_or_fn]
    except KeyError:
        raise ValueError(f"Unknown loss {name_or_fn!r}; choose one of {sorted(LOSSES)} or pass a callable.") from None
