"""Every plot seat-tf draws (matplotlib, Agg backend, atomic PNG writes), in one place:

    plot_accuracy_vs_eps     robust accuracy against eps (evaluation reports)
    plot_training_history    loss, accuracies and linearity error per epoch (`seat-tf train`)
    plot_monitor_history     the catastrophic-overfitting monitor's curves
    write_plots              loss landscapes and decision-boundary distortion (`seat-tf diagnose`)
"""

import os

import numpy as np

from seat_tf import fileio


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


def plot_accuracy_vs_eps(sweep, path, eps=None, title=None):
    """Saves robust accuracy against eps (one line per attack) as a PNG (atomic write)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, accuracy in sweep["accuracy"].items():
        ax.plot(sweep["eps"], accuracy, marker="o", label=name)
    if eps is not None:
        ax.axvline(eps, color="gray", linestyle="--", linewidth=1, label=f"eps = {eps:g}")
    ax.set_xlabel("eps (L-inf, [0, 1] scale)")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"Robust accuracy vs eps (first {sweep['num_examples']} examples)")
    fig.tight_layout()
    fileio.save_figure_atomic(fig, path)
    plt.close(fig)
