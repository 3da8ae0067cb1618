"""Diagnostics: why a model is, or is not, robust.

Callbacks (any `model.fit`, any training method):
    LinearityErrorMonitor            local linearity error of the loss on a fixed batch
    CatastrophicOverfittingMonitor   PGD vs FGSM accuracy on a fixed held-out batch; warns,
                                     stops, or restores the last good weights when PGD collapses
Measurements (functions of a per-example loss of the input, `loss_fn(images) -> [B]`, so they
apply to any model and can be checked on closed-form losses):
    local_linearity_error            max_{|d|<=eps} |l(x+d) - l(x) - d.grad l(x)|
    local_lipschitz                  min / max of |l(x') - l(x)| / |x' - x|_inf found in the eps-ball
    input_loss_landscape             l on a 2-D grid: adversarial direction x random direction
    weight_loss_landscape            l along filter-normalized random weight directions (1-D, 2-D)
    boundary_distortion              accuracy as the FGSM perturbation scales from 0 to 2 eps
`diagnose` runs them all on one model; `write_plots` draws the PNGs (matplotlib, Agg).

All projected steps run on the one attack engine, `seat_tf.attacks.linf_attack`.
"""

import logging
import math
import os

import keras
import numpy as np
import tensorflow as tf

from seat_tf import attacks, fileio, losses, precision

logger = logging.getLogger(__name__)

ACTIONS = ("warn", "stop", "restore")


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


def _check_eps(eps):
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0 or eps > 1:
        raise ValueError(f"eps must be a number in (0, 1] (pixel scale, e.g. 8/255), got {eps!r}.")


def _as_images(x, name="x"):
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
    _check_eps(eps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    x = _as_images(x)
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
    _check_eps(eps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    x = _as_images(x)
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
    _check_eps(eps)
    if grid < 2:
        raise ValueError(f"grid must be >= 2, got {grid}.")
    x = _as_images(x)
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
    _check_eps(eps)
    if num < 2 or max_scale <= 0:
        raise ValueError(f"need num >= 2 and max_scale > 0, got num={num}, max_scale={max_scale}.")
    x = _as_images(x)
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
    _check_eps(eps)
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


# -- plots ------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _surface_rows(results, key, coords_key, values_of, xlabel, ylabel, title, path):
    plt = _pyplot()
    names = list(results)
    figure = plt.figure(figsize=(12, 5 * len(names)))
    for row, name in enumerate(names):
        coords = np.asarray(results[name][key][coords_key])
        values = np.asarray(values_of(results[name][key]))
        a, b = np.meshgrid(coords, coords, indexing="ij")
        axis = figure.add_subplot(len(names), 2, 2 * row + 1, projection="3d")
        axis.plot_surface(b, a, values, cmap="viridis", linewidth=0, antialiased=True)
        axis.set_xlabel(ylabel, labelpad=8)
        axis.set_ylabel(xlabel, labelpad=8)
        axis.set_zlabel("loss", labelpad=4)
        axis.set_title(f"{name}: {title}")
        axis = figure.add_subplot(len(names), 2, 2 * row + 2)
        contour = axis.contourf(b, a, values, levels=20, cmap="viridis")
        axis.contour(b, a, values, levels=20, colors="k", linewidths=0.3)
        figure.colorbar(contour, ax=axis, label="loss")
        axis.set_xlabel(ylabel)
        axis.set_ylabel(xlabel)
        axis.set_title(f"{name}: contour")
    figure.tight_layout(h_pad=3.0, w_pad=3.0)
    fileio.save_figure_atomic(figure, path)
    plt.close(figure)


def write_plots(results, directory):
    """PNGs of `{name: diagnose(...) result}` in `directory`; returns their paths.

    input_landscape.png and weight_landscape_2d.png: one row per model (surface, contour);
    weight_landscape_1d.png and boundary_distortion.png: all models on one axis.
    """
    plt = _pyplot()
    paths = {}
    paths["input_landscape"] = os.path.join(directory, "input_landscape.png")
    _surface_rows(results, "input_landscape", "coords", lambda r: r["first_example"], "adversarial direction (x eps)",
                  "random direction (x eps)", "input loss landscape", paths["input_landscape"])
    paths["weight_landscape_2d"] = os.path.join(directory, "weight_landscape_2d.png")
    _surface_rows(results, "weight_landscape", "coords_2d", lambda r: r["losses_2d"], "direction 1", "direction 2",
                  "weight loss landscape", paths["weight_landscape_2d"])

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, result in results.items():
        axis.plot(result["weight_landscape"]["coords_1d"], result["weight_landscape"]["losses_1d"], label=name)
    axis.set_xlabel("step along a filter-normalized direction")
    axis.set_ylabel("clean loss")
    axis.set_title("weight loss landscape (1-D)")
    axis.legend()
    paths["weight_landscape_1d"] = os.path.join(directory, "weight_landscape_1d.png")
    fileio.save_figure_atomic(figure, paths["weight_landscape_1d"])
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, result in results.items():
        boundary = result["boundary"]
        axis.plot(boundary["scales"], boundary["accuracy"], marker="o", markersize=3,
                  label=f"{name} (distortion {boundary['distortion']:.3f})")
    axis.axvline(1.0, color="gray", linestyle="--", linewidth=0.8)
    axis.set_xlabel("FGSM perturbation scale k (x eps)")
    axis.set_ylabel("accuracy")
    axis.set_ylim(0, 1)
    axis.set_title("decision-boundary distortion")
    axis.legend()
    paths["boundary_distortion"] = os.path.join(directory, "boundary_distortion.png")
    fileio.save_figure_atomic(figure, paths["boundary_distortion"])
    plt.close(figure)
    return paths


def plot_monitor_history(records, path):
    """PNG of a CatastrophicOverfittingMonitor's records: clean / FGSM / PGD accuracy and the
    linearity error per epoch, collapses marked."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in records]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("clean_accuracy", "clean"), ("fgsm_accuracy", "FGSM"), ("pgd_accuracy", "PGD")):
        left.plot(epochs, [r[key] for r in records], marker="o", label=label)
    for r in records:
        if r["collapsed"]:
            left.axvline(r["epoch"], color="red", linestyle="--", linewidth=0.8)
    left.set_xlabel("epoch")
    left.set_ylabel("accuracy on the held-out batch")
    left.set_ylim(0, 1)
    left.legend()
    left.set_title("catastrophic-overfitting monitor (red: collapse)")
    right.plot(epochs, [r["linearity_error"] for r in records], marker="o", color="purple")
    right.set_xlabel("epoch")
    right.set_ylabel("local linearity error")
    right.set_yscale("log")
    right.set_title("local linearity error")
    from matplotlib.ticker import MaxNLocator

    for axis in (left, right):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    fileio.save_figure_atomic(figure, path)
    plt.close(figure)


def plot_training_history(history, path):
    """PNG of a fit's History (dict of per-epoch lists): loss, accuracies (clean, on the training
    perturbation, validation clean and robust) and, where the method logs it, the linearity error."""
    plt = _pyplot()
    epochs = list(range(1, len(history.get("loss", [])) + 1))
    panels = [("loss", ["loss", "val_loss", "adv_loss"]),
              ("accuracy", ["clean_accuracy", "adv_accuracy", "val_clean_accuracy", "val_robust_accuracy"])]
    if "linearity_error" in history:
        panels.append(("linearity error (training batches)", ["linearity_error"]))
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8))
    for axis, (title, keys) in zip(axes, panels):
        for key in keys:
            if key in history:
                axis.plot(epochs, history[key], marker="o", label=key)
        axis.set(xlabel="epoch", title=title)
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    fileio.save_figure_atomic(figure, path)
    plt.close(figure)


# -- learning-rate / step-size control used by the CO monitor ----------------------------------------


@keras.saving.register_keras_serializable(package="seat_tf")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """factor * schedule(step): lowers a scheduled learning rate without changing its shape."""

    def __init__(self, schedule, factor):
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        self.schedule = schedule
        self.factor = float(factor)

    def __call__(self, step):
        return self.factor * self.schedule(step)

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "factor": self.factor}


def scale_learning_rate(optimizer, factor):
    """Multiplies an optimizer's learning rate (a number or a schedule) by factor."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    current = getattr(optimizer, "_learning_rate", None)
    if isinstance(current, keras.optimizers.schedules.LearningRateSchedule):
        if isinstance(current, ScaledSchedule):
            optimizer.learning_rate = ScaledSchedule(current.schedule, current.factor * factor)
        else:
            optimizer.learning_rate = ScaledSchedule(current, factor)
    else:
        current = optimizer.learning_rate
        optimizer.learning_rate = float(current.numpy() if hasattr(current, "numpy") else current) * factor


def scale_step_size(model, factor):
    """Multiplies the training attack's step size of a method that has one; returns the new
    value or None. SEATModel: step_size if set, else rel_step_size; FGSM-AT, RS-FGSM, N-FGSM,
    PGD-AT, TRADES: rel_step_size. GradAlign's FGSM step is eps by definition (no change)."""
    if getattr(model, "step_size", None) is not None:
        model.step_size = model.step_size * factor
        return model.step_size
    if getattr(model, "rel_step_size", None) is not None:
        model.rel_step_size = model.rel_step_size * factor
        return model.rel_step_size
    return None


# -- callbacks ---------------------------------------------------------------------------------------


class LinearityErrorMonitor(keras.callbacks.Callback):
    """Logs the mean local linearity error of the loss on a fixed batch.

    Each epoch the value goes into the logs as `name` (so History, and a TensorBoard callback
    listed after this one, record it); with every_n_steps, also every n training steps into
    `step_values` and, given log_dir, a TensorBoard scalar `batch_<name>`.

    Args:
      x, y: the fixed batch (images in [0, 1], integer labels); measured in inference mode.
      eps: L-inf radius of the linearization (usually the training eps).
      steps, step_size, init, seed: how the max over the ball is searched, see
        `local_linearity_error` (fixed seed: the same start points every time).
    """

    def __init__(self, x, y, eps, *, steps=5, step_size=None, init="uniform", every_n_steps=None, log_dir=None,
                 name="local_linearity_error", loss="ce", seed=0):
        super().__init__()
        _check_eps(eps)
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or None, got {every_n_steps}.")
        self.x = _as_images(x, "x")
        self.y = tf.reshape(tf.cast(y, tf.int32), [-1])
        if int(self.x.shape[0]) != int(self.y.shape[0]):
            raise ValueError(f"x holds {self.x.shape[0]} examples but y holds {self.y.shape[0]} labels.")
        self.eps, self.steps, self.step_size, self.init = eps, steps, step_size, init
        self.every_n_steps, self.log_dir, self.name, self.loss, self.seed = every_n_steps, log_dir, name, loss, seed
        self.step_values = []
        self._fn = None
        self._writer = None
        self._global_step = 0

    def measure(self):
        """Mean local linearity error on the fixed batch (a float)."""
        if self._fn is None:
            self._fn = tf.function(autograph=False, func=lambda x, y: tf.reduce_mean(local_linearity_error(
                model_loss_fn(self.model, y, self.loss), x, self.eps, steps=self.steps, step_size=self.step_size,
                init=self.init, seed=self.seed)))
        return float(self._fn(self.x, self.y))

    def set_model(self, model):
        super().set_model(model)
        self._fn = None

    def on_train_batch_end(self, batch, logs=None):
        self._global_step += 1
        if not self.every_n_steps or self._global_step % self.every_n_steps:
            return
        value = self.measure()
        self.step_values.append((self._global_step, value))
        if self.log_dir:
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(self.log_dir)
            with self._writer.as_default():
                tf.summary.scalar(f"batch_{self.name}", value, step=self._global_step)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[self.name] = self.measure()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()


def collapse_reasons(record, best, *, max_drop=0.2, max_gap=0.4, min_pgd_accuracy=None):
    """Why `record` (pgd_accuracy, fgsm_accuracy) looks like catastrophic overfitting; [] if not.

    drop: PGD accuracy fell more than max_drop below `best`, the best PGD accuracy of the good
      epochs so far (None before the first; the rule of Wong et al.'s early stop, against the
      best rather than the previous epoch, so a two-epoch slide is caught too);
    gap: FGSM accuracy exceeds PGD accuracy by more than max_gap, CO's signature: the model
      has learned to defeat the one-step attack only;
    floor: PGD accuracy below min_pgd_accuracy.
    A threshold of None turns its rule off.
    """
    reasons = []
    pgd, fgsm = record["pgd_accuracy"], record["fgsm_accuracy"]
    if max_drop is not None and best is not None and best - pgd > max_drop:
        reasons.append(f"PGD accuracy {pgd:.3f} fell {best - pgd:.3f} below the best {best:.3f} (> {max_drop})")
    if max_gap is not None and fgsm - pgd > max_gap:
        reasons.append(f"FGSM accuracy {fgsm:.3f} exceeds PGD accuracy {pgd:.3f} by {fgsm - pgd:.3f} (> {max_gap})")
    if min_pgd_accuracy is not None and pgd < min_pgd_accuracy:
        reasons.append(f"PGD accuracy {pgd:.3f} < {min_pgd_accuracy}")
    return reasons


class CatastrophicOverfittingMonitor(keras.callbacks.Callback):
    """Watches PGD vs FGSM accuracy on a fixed held-out batch and acts on a collapse.

    After every epoch it measures, in inference mode, clean, FGSM and `attack` (PGD) accuracy
    and the local linearity error at eps, logs them as co_clean_accuracy, co_fgsm_accuracy,
    co_pgd_accuracy, co_linearity_error and co_collapsed (0/1), and checks `collapse_reasons`
    (or `rule(record, records) -> bool`). On a collapse, `action`:
      "warn":    logs a warning, training goes on;
      "stop":    stops training (with restore_on_stop, first restores the last good weights,
                 as the early stop of Wong et al. 2020 keeps the previous state);
      "restore": restores the weights of the last good epoch (the start of training if none),
                 multiplies the learning rate by lr_factor and, for methods with a step size,
                 the attack step by step_factor, and trains on; after max_restores restores it stops.
    Optimizer state (moments, step count) is kept: the schedule goes on from where it was.
    The collapsed epoch's own logs (loss, val_*) describe the weights before the restore.
    Works with any Keras classifier model, every training method included.

    `records` holds one dict per epoch; log_path, if given, receives them as JSON every epoch.
    """

    def __init__(self, x, y, eps, *, attack="pgd10", action="warn", max_drop=0.2, max_gap=0.4, min_pgd_accuracy=None,
                 rule=None, lr_factor=0.5, step_factor=0.5, max_restores=3, restore_on_stop=True, linearity_steps=5,
                 log_path=None, seed=0):
        super().__init__()
        _check_eps(eps)
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {action!r}.")
        if not 0 < lr_factor <= 1 or not 0 < step_factor <= 1:
            raise ValueError(f"lr_factor and step_factor must lie in (0, 1], got {lr_factor}, {step_factor}.")
        if rule is not None and not callable(rule):
            raise ValueError(f"rule must be callable(record, records) -> bool, got {rule!r}.")
        self.x = _as_images(x, "x")
        self.y = tf.reshape(tf.cast(y, tf.int32), [-1])
        if int(self.x.shape[0]) != int(self.y.shape[0]):
            raise ValueError(f"x holds {self.x.shape[0]} examples but y holds {self.y.shape[0]} labels.")
        self.eps = eps
        self.attack = attacks.get_attack(attack)
        self.fgsm = attacks.get_attack("fgsm")
        self.action = action
        self.thresholds = dict(max_drop=max_drop, max_gap=max_gap, min_pgd_accuracy=min_pgd_accuracy)
        self.rule = rule
        self.lr_factor, self.step_factor = lr_factor, step_factor
        self.max_restores, self.restore_on_stop = max_restores, restore_on_stop
        self.linearity_steps, self.log_path, self.seed = linearity_steps, log_path, seed
        self.records = []
        self.restores = 0
        self.collapsed_epoch = None
        self._fn = None
        self._good_weights = None
        self._good_epoch = None
        self._best_pgd = None

    def set_model(self, model):
        super().set_model(model)
        self._fn = None

    def measure(self):
        """{clean_accuracy, fgsm_accuracy, pgd_accuracy, linearity_error} on the fixed batch."""
        if self._fn is None:
            model_fn = precision.logits_fn(self.model)
            seed = tf.constant([self.seed, 0], tf.int32)

            def accuracy(x_eval, y):
                return tf.reduce_mean(tf.cast(tf.argmax(model_fn(x_eval), -1, output_type=tf.int32) == y, tf.float32))

            def measure(x, y):
                return {
                    "clean_accuracy": accuracy(x, y),
                    "fgsm_accuracy": accuracy(self.fgsm(model_fn, x, y, self.eps), y),
                    "pgd_accuracy": accuracy(self.attack(model_fn, x, y, self.eps, seed=seed), y),
                    "linearity_error": tf.reduce_mean(local_linearity_error(
                        model_loss_fn(self.model, y), x, self.eps, steps=self.linearity_steps, seed=self.seed)),
                }

            self._fn = tf.function(measure, autograph=False)
        return {k: float(v) for k, v in self._fn(self.x, self.y).items()}

    def on_train_begin(self, logs=None):
        # Until an epoch passes the check, "last good" is where this fit started.
        if self._good_weights is None:
            self._good_weights = [np.copy(w) for w in self.model.get_weights()]

    def on_epoch_end(self, epoch, logs=None):
        record = dict(epoch=epoch + 1, **self.measure())
        if self.rule is not None:
            collapsed = bool(self.rule(record, list(self.records)))
            reasons = ["custom rule"] if collapsed else []
        else:
            reasons = collapse_reasons(record, self._best_pgd, **self.thresholds)
            collapsed = bool(reasons)
        record.update(collapsed=collapsed, reasons=reasons, action=None)
        if logs is not None:
            for key in ("clean_accuracy", "fgsm_accuracy", "pgd_accuracy", "linearity_error"):
                logs[f"co_{key}"] = record[key]
            logs["co_collapsed"] = float(collapsed)
        if not collapsed:
            self._good_weights = [np.copy(w) for w in self.model.get_weights()]
            self._good_epoch = epoch + 1
            self._best_pgd = max(record["pgd_accuracy"], -1.0 if self._best_pgd is None else self._best_pgd)
        else:
            if self.collapsed_epoch is None:
                self.collapsed_epoch = epoch + 1
            record["action"] = self._act(record)
        self.records.append(record)
        if self.log_path:
            fileio.write_json_atomic({"records": self.records, "collapsed_epoch": self.collapsed_epoch,
                               "restores": self.restores}, self.log_path)

    def _act(self, record):
        good = f"epoch {self._good_epoch}" if self._good_epoch else "the start of training"
        message = (f"Catastrophic overfitting at epoch {record['epoch']}: " + "; ".join(record["reasons"])
                   + f" (clean {record['clean_accuracy']:.3f}, linearity error {record['linearity_error']:.4g}).")
        if self.action == "warn":
            logger.warning(message)
            return "warned"
        if self.action == "stop" or self.restores >= self.max_restores:
            if self.restore_on_stop:
                self.model.set_weights(self._good_weights)
            self.model.stop_training = True
            restored = f", restored the weights of {good}" if self.restore_on_stop else ""
            logger.warning(message + f" Stopping training{restored}.")
            return "stopped_restored" if self.restore_on_stop else "stopped"
        self.model.set_weights(self._good_weights)
        self.restores += 1
        scale_learning_rate(self.model.optimizer, self.lr_factor)
        step = scale_step_size(self.model, self.step_factor) if self.step_factor != 1 else None
        # The step size is a Python number baked into the traced train step: retrace.
        self.model.make_train_function(force=True)
        record["new_step_size"] = step
        logger.warning(message + f" Restored the weights of {good}; learning rate x{self.lr_factor}"
                       + (f", attack step -> {step:.4g}" if step is not None else "") + ".")
        return "restored"


class DivergenceGuard(keras.callbacks.Callback):
    """Never lets the training loss blow up silently.

    Detects, in the training logs: a non-finite `loss` after any batch (checked at once), or
    an epoch whose `monitor` value (default: SEAT's "linearity_error" if logged, else "loss")
    exceeds `factor` times its smallest value over the earlier good epochs (the divergence
    seen with SEAT-like training at eps 0.3: linearity term 0.24 -> 51 -> 773). A run that
    explodes before it has a good epoch (in its first epoch, or with one epoch) is caught by
    comparing the running value after each batch with `factor` times a reference taken from
    the untrained model: the larger of the first batch's value and log K (the cross-entropy of
    a uniform guess over K classes), e.g. the loss 1.4e25 of SGD at learning rate 1e6. An
    epoch becomes the "last good" checkpoint only if its value is within `good_factor` of the
    best: one that is merely suspect (between the two factors) is neither acted on nor kept,
    so a restore never returns to weights that were already drifting (seen with SEAT, lam 2,
    eps 0.3: 0.73 -> 12 (restore) -> 7.3 -> 29). Then:
      "stop":    restores the last good epoch's weights and stops training;
      "restore": restores them, multiplies the learning rate by lr_factor and goes on; after
                 max_restores restores it stops.
    Each event is logged as a warning and kept in `events`; the epoch logs get `diverged` (0/1).
    `recovered` is False after a divergence that training did not come back from (stopped,
    or ended on restored weights).
    """

    def __init__(self, monitor=None, factor=10.0, action="restore", lr_factor=0.5, max_restores=2,
                 good_factor=2.0):
        super().__init__()
        if action not in ("stop", "restore"):
            raise ValueError(f"action must be 'stop' or 'restore', got {action!r}.")
        if factor <= 1:
            raise ValueError(f"factor must be > 1, got {factor}.")
        if not 1 <= good_factor <= factor:
            raise ValueError(f"good_factor must lie in [1, factor], got {good_factor}.")
        if not 0 < lr_factor <= 1:
            raise ValueError(f"lr_factor must lie in (0, 1], got {lr_factor}.")
        self.monitor, self.factor, self.action, self.good_factor = monitor, factor, action, good_factor
        self.lr_factor, self.max_restores = lr_factor, max_restores
        self.events, self.restores = [], 0
        self._good_weights, self._good_epoch, self._best = None, None, None
        self._reference = {}  # monitored key -> its value after the first batch of training
        self._epoch = 0
        self._acted = False
        self._trained_since_act = False

    def _key(self, logs):
        return self.monitor or ("linearity_error" if "linearity_error" in logs else "loss")

    def _floor(self):
        """log K for a K-class classifier (the loss of a uniform guess), else 1."""
        try:
            classes = int(self.model.outputs[0].shape[-1])
        except (AttributeError, IndexError, TypeError, ValueError):
            classes = getattr(self.model, "num_classes", None) or 0
        return math.log(classes) if classes and classes > 2 else 1.0

    def _early_limit(self, key):
        """factor x the untrained model's value of `key`, or None before it is known."""
        if key not in self._reference:
            return None
        return self.factor * max(self._reference[key], self._floor())

    def on_train_begin(self, logs=None):
        if self._good_weights is None:
            self._good_weights = [np.copy(w) for w in self.model.get_weights()]

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1
        self._acted = False

    def _early_keys(self, logs):
        """The values compared with the untrained model's: `monitor`, else loss and
        linearity_error, and at an epoch's end val_loss (against the training loss's
        reference: the last step of an epoch can explode the weights unseen by the loss)."""
        if self.monitor:
            return [self.monitor]
        return [k for k in ("loss", "linearity_error", "val_loss") if k in logs]

    def _early_check(self, logs, where):
        """Acts on the first monitored value that is non-finite or above its early limit;
        records the reference values on first sight. Returns True if it acted."""
        for key in self._early_keys(logs):
            if logs.get(key) is None:
                continue
            value = float(logs[key])
            if not math.isfinite(value):
                self._act(f"non-finite {'training loss' if key == 'loss' else key} at {where}")
                return True
            reference = "loss" if key == "val_loss" else key
            if reference not in self._reference:
                if key != "val_loss":
                    self._reference[key] = value  # the running value after one batch: the untrained model's
            elif value > self._early_limit(reference):
                self._act(f"{key} {value:.4g} at {where} exceeds {self.factor}x the training {reference} of the "
                          f"untrained model ({max(self._reference[reference], self._floor()):.4g})")
                return True
        return False

    def _log_flag(self, logs, epoch, value):
        """Logs `diverged` (0/1) from the first event on, so a healthy run's progress line and
        history carry no internal 0; the history's earlier epochs are filled with 0 then, so
        history["diverged"][i] is epoch i's flag."""
        history = getattr(getattr(self.model, "history", None), "history", None)
        if isinstance(history, dict):
            flags = history.setdefault("diverged", [])
            flags.extend([0.0] * max(0, epoch - len(flags)))
        logs["diverged"] = value

    def on_train_batch_end(self, batch, logs=None):
        if not self._early_check(logs or {}, f"epoch {self._epoch}, batch {batch + 1}"):
            self._trained_since_act = True

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self._acted or self._early_check(logs, f"epoch {epoch + 1}"):
            self._log_flag(logs, epoch, 1.0)
            return
        key = self._key(logs)
        value = logs.get(key)
        diverged = value is not None and self._best is not None and float(value) > self.factor * self._best
        if diverged or self.events:
            self._log_flag(logs, epoch, float(diverged))
        if diverged:
            self._act(f"{key} {float(value):.4g} at epoch {epoch + 1} exceeds {self.factor}x its best {self._best:.4g}")
        elif value is not None and math.isfinite(float(value)) and (
                self._best is None or float(value) <= self.good_factor * self._best):
            self._best = float(value) if self._best is None else min(self._best, float(value))
            self._good_weights = [np.copy(w) for w in self.model.get_weights()]
            self._good_epoch = epoch + 1

    def on_train_end(self, logs=None):
        # After a divergence, training ends on the last good weights unless a later epoch was good.
        # (Not if the weights are the restored ones already: no batch ran since the last event.)
        if self.events and self._good_epoch != self._epoch and self._trained_since_act:
            self.model.set_weights(self._good_weights)
            self.events.append({"epoch": self._epoch, "reason": f"epoch {self._epoch} is not back within "
                                f"{self.good_factor}x of the best after a divergence", "action": "restored at the end"})
            logger.warning(f"Training ended after a divergence without recovering; restored the weights of "
                           f"epoch {self.last_good_epoch}.")

    @property
    def recovered(self):
        """False if training diverged and did not come back: it stopped, or it ended on
        restored weights rather than on a good final epoch. True without a divergence."""
        if not self.events:
            return True
        return self.events[-1]["action"] == "restored" and self._good_epoch == self._epoch

    @property
    def last_good_epoch(self):
        """The epoch whose weights a restore returns to (0: the weights training started with)."""
        return self._good_epoch or 0

    def _act(self, reason):
        good = f"epoch {self._good_epoch}" if self._good_epoch else "the start of training"
        self._acted = True
        self._trained_since_act = False
        self.model.set_weights(self._good_weights)
        # The epoch's running metrics hold the exploded values: start them afresh, so the
        # per-batch check sees the restored weights' values.
        self.model.reset_metrics()
        if self.action == "stop" or self.restores >= self.max_restores:
            self.model.stop_training = True
            self.events.append({"epoch": self._epoch, "reason": reason, "action": "stopped"})
            logger.warning(f"Training diverged: {reason}. Restored the weights of {good} and stopped.")
            return
        self.restores += 1
        scale_learning_rate(self.model.optimizer, self.lr_factor)
        self.events.append({"epoch": self._epoch, "reason": reason, "action": "restored"})
        logger.warning(f"Training diverged: {reason}. Restored the weights of {good}, learning rate x{self.lr_factor}.")
