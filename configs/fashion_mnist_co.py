"""Catastrophic overfitting on Fashion-MNIST at eps = 0.2, watched by the diagnostics monitors.

    seat-tf train --config=configs/fashion_mnist_co.py:fgsm_at --workdir=runs/co_fgsm_at   # collapses
    seat-tf train --config=configs/fashion_mnist_co.py:seat --workdir=runs/co_seat         # does not
    seat-tf diagnose --model=runs/co_seat/model.keras,runs/co_fgsm_at/model.keras \
        --dataset=fashion_mnist --eps=0.2 --workdir=runs/co_diagnostics

The small CNN, Adam with a one-cycle schedule peaking at 2e-3, batch 128, the first 25,600
training images, 4 epochs. FGSM-AT (zero start, step eps) at this radius loses its PGD
robustness within a few epochs while its FGSM accuracy climbs; the CO monitor (PGD-20 vs
FGSM on 512 held-out test images, action "warn") reports the epoch, the linearity monitor
logs the local linearity error. The arg after ':' picks the method ("fgsm_at" or "seat");
"smoke" is a seconds-long variant for tests.
"""

import ml_collections

from seat_tf.experiment import base_config, shrink_for_smoke


def get_config(arg="fgsm_at"):
    config = base_config()
    config.epochs = 4
    config.dataset.name = "fashion_mnist"
    config.dataset.train_limit = 25_600
    config.dataset.test_limit = 2000
    config.dataset.val_limit = 500
    config.model = ml_collections.ConfigDict(dict(name="small_cnn"))
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 2e-3
    config.optimizer.weight_decay = 0.0
    config.optimizer.schedule = "cyclic"
    config.val_attack = "pgd10"
    config.eval_attacks = ("fgsm", "pgd20")
    config.diagnostics.linearity_monitor = True
    config.diagnostics.co_monitor = True
    config.diagnostics.co_attack = "pgd20"
    config.diagnostics.co_action = "warn"
    method = arg or "fgsm_at"
    if method == "smoke":
        method = "fgsm_at"
        shrink_for_smoke(config, epochs=2, test_limit=64, eval_attacks=("fgsm", "pgd3"))
        config.diagnostics.examples = 32
        config.diagnostics.co_attack = "pgd3"
        config.diagnostics.linearity_steps = 2
    if method == "fgsm_at":
        config.method = ml_collections.ConfigDict(dict(name="fgsm_at", epsilon=0.2, rel_step_size=1.0))
    elif method == "seat":
        config.method = ml_collections.ConfigDict(
            dict(name="seat", epsilon=0.2, lam=0.5, flood_level=ml_collections.config_dict.placeholder(float),
                 init="corner", rel_step_size=1.0, attack_loss="margin", reduction="example")
        )
    else:
        raise ValueError(f"Unknown variant {arg!r}; use 'fgsm_at', 'seat' or 'smoke'.")
    return config
