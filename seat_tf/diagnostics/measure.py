"""Measurements of why a model is, or is not, robust. Each is a function of a per-example
loss of the input (`loss_fn(images) -> [B]`), so it applies to any model and can be checked
on closed-form losses; all projected steps run on the one attack engine.

    local_linearity_error   max_{|d|<=eps} |l(x+d) - l(x) - d.grad l(x)|
    local_lipschitz         min / max of |l(x') - l(x)| / |x' - x|_inf found in the eps-ball
    input_loss_landscape    l on a 2-D grid: adversarial direction x random direction
    weight_loss_landscape   l along filter-normalized random weight directions (1-D, 2-D)
    boundary_distortion     accuracy as the FGSM perturbation scales from 0 to 2 eps
    diagnose                all of them on one model
"""


import keras
import numpy as np
import tensorflow as tf

from seat_tf import attacks, losses, precision, validation

# -- helpers --------------------------------------------------------------------------------


def model_loss_fn(model, labels, loss="ce"):
    """The per-example loss of `model` on fixed `labels` as a function of the images."""
    loss = losses.get(loss)
    logits_of = precision.logits_fn(model)
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    return lambda images: loss(labels, logits_of(images))


def _value_and_grad(loss_fn, x):
    """Per-example loss [B] at x and its input gradient (zeros if the loss ignores x)."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        values = tf.cast(loss_fn(x), tf.float32)
    grad = tape.gradient(values, x)
    return tf.stop_gradient(values), tf.zeros_like(x) if grad is None else tf.stop_gradient(grad)


def _sup_norm(delta):
    return tf.reduce_max(tf.abs(delta), axis=tf.range(1, tf.rank(delta)))


def check_eps(eps):
    """Measurements need a ball: eps in (0, 1] (seat_tf.validation.check_eps)."""
    validation.check_eps(eps, positive=True)


def as_images(x, name="x"):
    x = tf.convert_to_tensor(x)
    if x.shape.rank is None or x.shape.rank < 2:
        raise ValueError(f"{name} must be a batch of inputs [B, ...], got shape {x.shape}.")
    return tf.cast(x, tf.float32)


# -- measurements on a loss of the input ------------------------------------------------------


def local_linearity_error(loss_fn, x, eps, *, steps=5, step_size=None, init="uniform", seed=0):
    """Per-example local linearity error of `loss_fn` around x, shape [B].

    gamma(x) = max_{|d|_inf <= eps} |l(x+d) - l(x) - d . grad_x l(x)|  (Qin et al., 2019; the
    quantity SEAT penalizes). The max is searched with `steps` projected signed-gradient steps
    (default size 2.5 eps / steps) from `init`; steps=0 evaluates the start point only. Zero
    for a loss linear in x; |d^T H d| / 2 for a quadratic one.
    """
    check_eps(eps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    x = as_images(x)
    clean, grad = _value_and_grad(loss_fn, x)

    def error(x_adv):
        return losses.linearity_error(loss_fn(x_adv), clean, x_adv - x, grad)

    if steps == 0:
        x_adv = attacks.project(x + attacks.random_start(x, eps, init, seed), x, eps)
    else:
        step_size = 2.5 * eps / steps if step_size is None else step_size
        x_adv = attacks.linf_attack(error, x, eps=eps, step_size=step_size, steps=steps, init=init, seed=seed)
    return error(x_adv)


def local_lipschitz(loss_fn, x, eps, *, steps=10, step_size=None, restarts=1, init="uniform", seed=0):
    """Empirical local Lipschitz estimates of the loss around each x (the quantity of the SEAT
    paper's Table 3 as the project's issue describes it; not checked against the paper's text).

    Searches the eps-ball for the smallest and the largest ratio |l(x') - l(x)| / |x' - x|_inf
    with projected signed-gradient steps (the attack engine; restarts keep the best ratio).
    The denominator's gradient is not followed: signed steps ignore a positive per-example
    scale, and its subgradient at a vertex of the ball (all coordinates tied) only makes the
    iterates oscillate. Returns {"lower": [B], "upper": [B]}. For a loss linear in x,
    upper = the dual (L1) norm of its input gradient. Note that "upper" is the largest ratio
    found, hence itself a lower bound of the true local Lipschitz constant.
    """
    check_eps(eps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    x = as_images(x)
    clean = tf.stop_gradient(tf.cast(loss_fn(x), tf.float32))

    def ratio(x_adv):
        radius = tf.stop_gradient(_sup_norm(x_adv - x))
        return tf.abs(tf.cast(loss_fn(x_adv), tf.float32) - clean) / tf.maximum(radius, 1e-12)

    step_size = 2.5 * eps / steps if step_size is None else step_size
    common = dict(eps=eps, step_size=step_size, steps=steps, init=init, restarts=restarts, seed=seed)
    x_max = attacks.linf_attack(ratio, x, **common)
    x_min = attacks.linf_attack(lambda x_adv: -ratio(x_adv), x, **common)
    return {"lower": ratio(x_min), "upper": ratio(x_max)}


def input_loss_landscape(loss_fn, x, eps, *, grid=21, span=1.0, seed=0, clip=True):
    """Loss on the plane x + eps * (a * d_adv + b * d_rand), a, b in [-span, span].

    d_adv = sign grad_x l(x) (the FGSM direction), d_rand a random sign vector: the view of
    Moosavi-Dezfooli et al. (2019) and Kim et al. (2021). A robust model's surface is flat and
    close to a plane; a catastrophically overfitted one is curved along d_adv.

    Returns {"coords": [grid], "losses": [grid (a), grid (b), B], "adv_direction": x-shaped,
    "random_direction": x-shaped} as NumPy arrays. clip=True keeps images in [0, 1].
    """
    check_eps(eps)
    if grid < 2:
        raise ValueError(f"grid must be >= 2, got {grid}.")
    x = as_images(x)
    _, grad = _value_and_grad(loss_fn, x)
    adv_direction = tf.sign(grad)
    random_direction = tf.sign(tf.random.stateless_uniform(tf.shape(x), attacks.as_seed(seed), -1.0, 1.0))

    @tf.function(autograph=False)
    def loss_at(a, b):
        point = x + eps * (a * adv_direction + b * random_direction)
        return tf.cast(loss_fn(tf.clip_by_value(point, 0.0, 1.0) if clip else point), tf.float32)

    coords = np.linspace(-span, span, grid)
    values = np.stack([
        np.stack([loss_at(tf.constant(a, tf.float32), tf.constant(b, tf.float32)).numpy() for b in coords])
        for a in coords
    ])
    return {"coords": coords, "losses": values, "adv_direction": adv_direction.numpy(),
            "random_direction": random_direction.numpy()}


def boundary_distortion(model_fn, x, y, eps, *, num=21, max_scale=2.0, loss="ce", clip=True):
    """Accuracy along the FGSM direction, x + k * eps * sign grad l(x), for k in [0, max_scale].

    Kim et al. (2021): a catastrophically overfitted model is right at k = 1 (the point FGSM
    training saw) but wrong at some smaller k, a distorted decision boundary. Returns
    {"scales": [num], "accuracy": [num], "distortion": fraction of examples correct at k = 1
    but wrong at some grid k in (0, 1)} (floats and NumPy arrays).
    """
    check_eps(eps)
    if num < 2 or max_scale <= 0:
        raise ValueError(f"need num >= 2 and max_scale > 0, got num={num}, max_scale={max_scale}.")
    x = as_images(x)
    y = tf.reshape(tf.cast(y, tf.int32), [-1])
    loss = losses.get(loss)
    _, grad = _value_and_grad(lambda images: loss(y, model_fn(images)), x)
    direction = tf.sign(grad)

    @tf.function(autograph=False)
    def correct_at(scale):
        point = x + scale * eps * direction
        logits = model_fn(tf.clip_by_value(point, 0.0, 1.0) if clip else point)
        return tf.argmax(logits, axis=-1, output_type=tf.int32) == y

    scales = np.linspace(0.0, max_scale, num)
    correct = np.stack([correct_at(tf.constant(s, tf.float32)).numpy() for s in scales])
    at_eps = correct_at(tf.constant(1.0, tf.float32)).numpy()
    inside = (scales > 0) & (scales < 1)
    wrong_inside = (~correct[inside]).any(axis=0) if inside.any() else np.zeros_like(at_eps)
    return {"scales": scales, "accuracy": correct.mean(axis=1), "distortion": float(np.mean(at_eps & wrong_inside))}


# -- weight-space landscape ---------------------------------------------------------------------


def filter_normalized_direction(variables, seed=0):
    """A random direction in weight space, filter-normalized (Li et al., 2018).

    Gaussian per variable; each filter (a slice along the last axis: a conv kernel's output
    channel, a dense layer's output unit) is rescaled to the norm of the same filter of the
    weights, so the landscape is comparable across models whatever their weight scale.
    Biases and other 1-D parameters (batch-norm) get a zero direction. Returns NumPy arrays.
    """
    rng = np.random.default_rng(seed)
    directions = []
    for variable in variables:
        weights = np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable, np.float64)
        if weights.ndim <= 1:
            directions.append(np.zeros_like(weights, np.float32))
            continue
        direction = rng.standard_normal(weights.shape)
        axes = tuple(range(weights.ndim - 1))
        scale = np.sqrt((weights**2).sum(axis=axes)) / (np.sqrt((direction**2).sum(axis=axes)) + 1e-10)
        directions.append((direction * scale).astype(np.float32))
    return directions


def weight_loss_landscape(model, x, y, *, dims=1, grid=21, span=1.0, loss="ce", seed=0, batch_size=500):
    """Mean loss on (x, y) at weights w + a d1 (+ b d2), a, b in [-span, span].

    d1, d2 are filter-normalized random directions (seeds seed and seed + 1) over the model's
    trainable variables; the weights are restored afterwards, also on error. `loss` is a name
    from seat_tf.losses or `fn(labels, logits) -> [B]`. Returns {"coords": [grid], "losses":
    [grid] or [grid, grid]} as NumPy arrays.
    """
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims}.")
    if grid < 2:
        raise ValueError(f"grid must be >= 2, got {grid}.")
    loss = losses.get(loss)
    variables = list(model.trainable_variables)
    if not variables:
        raise ValueError("The model has no trainable variables to perturb.")
    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    originals = [v.numpy() for v in variables]
    directions = [filter_normalized_direction(variables, seed + i) for i in range(dims)]

    @tf.function(autograph=False)
    def batch_loss(images, labels):
        return tf.reduce_sum(tf.cast(loss(labels, tf.cast(model(images, training=False), tf.float32)), tf.float32))

    def mean_loss():
        starts = range(0, len(x), batch_size)
        return sum(float(batch_loss(x[i : i + batch_size], y[i : i + batch_size])) for i in starts) / len(x)

    def set_weights(a, b=0.0):
        for k, (variable, weights) in enumerate(zip(variables, originals)):
            moved = weights + a * directions[0][k]
            if dims == 2:
                moved = moved + b * directions[1][k]
            variable.assign(moved.astype(weights.dtype))

    coords = np.linspace(-span, span, grid)
    try:
        if dims == 1:
            values = []
            for a in coords:
                set_weights(a)
                values.append(mean_loss())
        else:
            values = []
            for a in coords:
                row = []
                for b in coords:
                    set_weights(a, b)
                    row.append(mean_loss())
                values.append(row)
    finally:
        for variable, weights in zip(variables, originals):
            variable.assign(weights)
    return {"coords": coords, "losses": np.asarray(values)}


# -- one call for everything ---------------------------------------------------------------------


def diagnose(model, x, y, eps, *, lipschitz_steps=10, linearity_steps=5, landscape_examples=8, landscape_grid=21,
             landscape_span=1.0, weight_examples=1000, weight_grid_1d=21, weight_grid_2d=11, weight_span=1.0,
             boundary_num=21, seed=0, chunk_size=250, progress=True):
    """All measurements for one classifier on test images x [N, ...] in [0, 1], labels y [N].

    Returns a JSON-ready dict (floats and lists). Weight landscapes use the first
    `weight_examples` images, input landscapes the first `landscape_examples`; the other
    measurements run over all of x in chunks of `chunk_size`.
    """
    check_eps(eps)
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int32).reshape(-1)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must hold the same non-zero number of examples, got {len(x)} and {len(y)}.")
    model_fn = precision.logits_fn(model)
    bar = keras.utils.Progbar(6, unit_name="measurement") if progress else None
    tick = (lambda name: bar.add(1, [])) if bar else (lambda name: None)
    result = {"num_examples": int(len(x)), "eps": float(eps)}

    chunks = [slice(i, i + chunk_size) for i in range(0, len(x), chunk_size)]  # bounds the tape's memory
    logits = np.concatenate([model_fn(x[c]).numpy() for c in chunks])
    result["clean_accuracy"] = float(np.mean(np.argmax(logits, -1) == y))
    lin = np.concatenate([
        local_linearity_error(model_loss_fn(model, y[c]), x[c], eps, steps=linearity_steps, seed=seed).numpy()
        for c in chunks])
    result["linearity_error"] = {"mean": float(lin.mean()), "median": float(np.median(lin)), "steps": linearity_steps}
    tick("linearity")
    lip = [local_lipschitz(model_loss_fn(model, y[c]), x[c], eps, steps=lipschitz_steps, seed=seed) for c in chunks]
    result["lipschitz"] = {"steps": lipschitz_steps}
    for key in ("lower", "upper"):
        values = np.concatenate([part[key].numpy() for part in lip])
        result["lipschitz"][key] = {"mean": float(values.mean()), "median": float(np.median(values))}
    tick("lipschitz")
    n = min(landscape_examples, len(x))
    land = input_loss_landscape(model_loss_fn(model, y[:n]), x[:n], eps, grid=landscape_grid, span=landscape_span,
                                seed=seed)
    result["input_landscape"] = {"coords": land["coords"].tolist(), "units": "eps",
                                 "first_example": land["losses"][:, :, 0].tolist(),
                                 "mean": land["losses"].mean(axis=-1).tolist(), "examples": n}
    tick("input landscape")
    m = min(weight_examples, len(x))
    w1 = weight_loss_landscape(model, x[:m], y[:m], dims=1, grid=weight_grid_1d, span=weight_span, seed=seed)
    tick("weight landscape 1-D")
    w2 = weight_loss_landscape(model, x[:m], y[:m], dims=2, grid=weight_grid_2d, span=weight_span, seed=seed)
    result["weight_landscape"] = {"examples": m, "coords_1d": w1["coords"].tolist(), "losses_1d": w1["losses"].tolist(),
                                  "coords_2d": w2["coords"].tolist(), "losses_2d": w2["losses"].tolist()}
    tick("weight landscape 2-D")
    parts = [(boundary_distortion(model_fn, x[c], y[c], eps, num=boundary_num), len(y[c])) for c in chunks]
    weights = np.array([n for _, n in parts], np.float64) / len(y)
    result["boundary"] = {"scales": parts[0][0]["scales"].tolist(),
                          "accuracy": sum(w * p["accuracy"] for (p, _), w in zip(parts, weights)).tolist(),
                          "distortion": float(sum(w * p["distortion"] for (p, _), w in zip(parts, weights)))}
    tick("boundary")
    return result
