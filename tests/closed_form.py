"""Float64 NumPy references for the maths tests: softmax cross-entropy, margins and their
gradients on a linear classifier z = flatten(x) @ W + b (built with conftest.linear_classifier).

Nothing here calls seat_tf: the tests compare the library against these formulas.
Shapes: x [B, ...] images, W [D, K], b [K], y [B] ints. "Per example" values have shape [B].
"""

import numpy as np


def linear_problem(shape, classes, seed=0, batch=16, scale=2.0):
    """Weights [D, K], bias, images well inside the box (0.5 +- 0.1, so x +- 3 eps stays in
    [0, 1] for eps 0.1 and x +- eps for eps 0.2) and labels of a random linear model."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(int(np.prod(shape)), classes)) * scale
    b = rng.normal(size=classes) * 0.5
    x = 0.5 + rng.uniform(-0.1, 0.1, (batch,) + tuple(shape))
    y = rng.integers(0, classes, batch)
    return W, b, x, y


def flat(x):
    return np.asarray(x, np.float64).reshape(len(x), -1)


def logits(W, b, x):
    return flat(x) @ W + b


def softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def onehot(y, k):
    return np.eye(k)[np.asarray(y)]


def ce(W, b, x, y):
    """Cross-entropy per example: logsumexp(z) - z_y."""
    return -log_softmax(logits(W, b, x))[np.arange(len(y)), y]


def ce_logit_grad(W, b, x, y):
    """d CE / d z = p - e_y, [B, K]."""
    return softmax(logits(W, b, x)) - onehot(y, W.shape[1])


def ce_grad_x(W, b, x, y):
    """d CE / d x = W (p - e_y), shaped like x."""
    return (ce_logit_grad(W, b, x, y) @ W.T).reshape(np.shape(x))


def runner_up(W, b, x, y):
    """argmax_{j != y} z_j per example."""
    z = logits(W, b, x).copy()
    z[np.arange(len(y)), y] = -np.inf
    return z.argmax(-1)


def margin(W, b, x, y, on="logits"):
    """max_{j != y} s_j - s_y with s the logits or the softmax probabilities."""
    s = logits(W, b, x)
    if on == "probs":
        s = softmax(s)
    j, rows = runner_up(W, b, x, y), np.arange(len(y))
    return s[rows, j] - s[rows, y]


def margin_grad_x(W, b, x, y, on="logits"):
    k, rows = W.shape[1], np.arange(len(y))
    j = runner_up(W, b, x, y)
    if on == "logits":
        dz = onehot(j, k) - onehot(y, k)
    else:  # d p_c / d z = p_c (e_c - p)
        p = softmax(logits(W, b, x))
        dz = p[rows, j][:, None] * (onehot(j, k) - p) - p[rows, y][:, None] * (onehot(y, k) - p)
    return (dz @ W.T).reshape(np.shape(x))


def weight_grad(x, dz):
    """(dW, db) of sum_i f_i for per-example logit gradients dz [B, K] at inputs x."""
    return flat(x).T @ dz, dz.sum(0)


def kl(p_logits, q_logits):
    """KL(softmax(p_logits) || softmax(q_logits)) per example."""
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def signed_steps(grad_fn, x, start, eps, step, steps, project=True):
    """`steps` signed-gradient ascent steps from x + start, each followed by the projection
    onto the eps-ball (if project) and the [0, 1] box (the start is constrained too)."""

    def constrain(v):
        if project:
            v = x + np.clip(v - x, -eps, eps)
        return np.clip(v, 0.0, 1.0)

    x_adv = constrain(x + start)
    for _ in range(steps):
        g = grad_fn(x_adv)
        x_adv = constrain(x_adv + step * np.sign(g))
    return x_adv


def numeric_gradient(f, params, h=1e-6):
    """Central finite differences of a scalar f(*params) w.r.t. each array in params."""
    grads = []
    for index, p in enumerate(params):
        g = np.zeros_like(p)
        for pos in np.ndindex(p.shape):
            plus = [q.copy() for q in params]
            minus = [q.copy() for q in params]
            plus[index][pos] += h
            minus[index][pos] -= h
            g[pos] = (f(*plus) - f(*minus)) / (2 * h)
        grads.append(g)
    return grads
