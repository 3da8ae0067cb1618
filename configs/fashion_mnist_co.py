"""Catastrophic overfitting on Fashion-MNIST at eps = 0.2, watched by the diagnostics monitors.

    seat-tf train --config=configs/fashion_mnist_co.py:fgsm_at --workdir=runs/co_fgsm_at   # collapses
    seat-tf train --config=configs/fashion_mnist_co.py:seat --workdir=runs/co_seat         # does not
    seat-tf diagnose --model=runs/co_seat/model.keras,runs/co_fgsm_at/model.keras \
        --dataset=fashion_mnist --eps=0.2 --workdir=runs/co_diagnostics

The small CNN, Adam with a one-cycle schedule peaking at 2e-3, batch 128, the first 25,600
training images, 4 epochs. FGSM-AT (zero start, step eps) at this radius loses its PGD
robustness within a few epochs while its FGSM accuracy climbs; the CO monitor (PGD-20 vs
FGSM on 512 held-out test images, action "warn") reports the epoch, the linearity monitor
logs the local linearity error. The arg after ':' picks the method (any of METHODS below),
",benchmark" the CO benchmark's protocol (benchmarks/co_benchmark.py), "smoke" a seconds-long
variant for tests.
"""

import ml_collections

from seat_tf.experiment import fashion_mnist_adam_config, shrink_for_smoke


# Every method's settings in this comparison (each class's own defaults otherwise).
METHODS = {
    "fgsm_at": dict(rel_step_size=1.0),
    "rs_fgsm": dict(rel_step_size=1.25),
    "n_fgsm": dict(noise_factor=2.0, rel_step_size=1.0),
    "seat": dict(lam=0.5, flood_level=ml_collections.config_dict.placeholder(float), init="corner",
                 rel_step_size=1.0, attack_loss="margin", reduction="example"),
    "seat_paper": dict(preset="paper"),
    "pgd_at": dict(steps=10, rel_step_size=0.25),
    "pgd7_at": dict(steps=7),
    "trades": dict(beta=6.0, steps=10, rel_step_size=0.25),
    "grad_align": dict(lam=0.2),
    "elle": dict(lam=100.0),
    "elle_a": dict(lam=100.0),
}


def get_config(arg="fgsm_at"):
    """arg: "<method>[,benchmark|smoke]" (method from METHODS; "smoke" alone = "fgsm_at,smoke").
    ",benchmark" is benchmarks/co_benchmark.py's protocol: all 60k training images, 5 epochs,
    the schedule peaking at 30% of the steps, the monitor on the first 1000 test images with
    PGD-20, and PGD-50-10 on the first 1000 test images at the end."""
    method, _, option = (arg or "fgsm_at").partition(",")
    if method == "smoke":
        method, option = "fgsm_at", "smoke"
    if method not in METHODS:
        raise ValueError(f"Unknown variant {arg!r}; use one of {sorted(METHODS)}, optionally ',benchmark' or ',smoke'.")
    if option not in ("", "benchmark", "smoke"):
        raise ValueError(f"Unknown option {option!r}; use 'benchmark' or 'smoke'.")
    config = fashion_mnist_adam_config()
    config.epochs = 4
    config.dataset.train_limit = 25_600
    config.dataset.test_limit = 2000
    config.dataset.val_limit = 500
    config.val_attack = "pgd10"
    config.eval_attacks = ("fgsm", "pgd20")
    config.diagnostics.linearity_monitor = True
    config.diagnostics.co_monitor = True
    config.diagnostics.co_attack = "pgd20"
    config.diagnostics.co_action = "warn"
    name = {"seat_paper": "seat", "pgd7_at": "pgd_at"}.get(method, method)
    config.method = ml_collections.ConfigDict(dict(name=name, epsilon=0.2, **METHODS[method]))
    if option == "benchmark":
        config.epochs = 5
        config.dataset.train_limit = None
        config.dataset.test_limit = 1000
        config.optimizer.peak_fraction = 0.3
        config.val_attack = None
        config.eval_attacks = ("pgd50x10",)
        config.eval_sweep = False
        config.diagnostics.linearity_monitor = False
        config.diagnostics.examples = 1000
    elif option == "smoke":
        shrink_for_smoke(config, epochs=2, test_limit=64, eval_attacks=("fgsm", "pgd3"))
        config.diagnostics.examples = 32
        config.diagnostics.co_attack = "pgd3"
        config.diagnostics.linearity_steps = 2
    return config
