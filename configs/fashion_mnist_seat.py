"""SEAT on Fashion-MNIST (60k/10k) with the small CNN, eps = 0.1.

    seat-tf train --config=configs/fashion_mnist_seat.py --workdir=runs/fmnist_seat
    seat-tf train --config=configs/fashion_mnist_seat.py:quick --workdir=runs/quick   # README's main job
    seat-tf train --config=configs/fashion_mnist_seat.py --config.method.lam=0.3 ...  # override a field

The arg after ':' picks a variant: "quick" (3 epochs, a few minutes on 2 CPU cores) or
"smoke" (tiny subsets, seconds; used by tests).
"""

import ml_collections

from seat_tf.experiment import base_config, shrink_for_smoke


def get_config(arg=None):
    config = base_config()
    config.epochs = 10
    config.dataset.name = "fashion_mnist"
    config.model = ml_collections.ConfigDict(dict(name="small_cnn"))
    config.method = ml_collections.ConfigDict(
        dict(
            name="seat",
            epsilon=0.1,
            lam=0.5,
            flood_level=ml_collections.config_dict.placeholder(float),
            init="corner",
            rel_step_size=1.0,
            attack_loss="margin",
            reduction="example",
        )
    )
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.05
    if arg == "quick":
        config.epochs = 3
    elif arg == "smoke":
        shrink_for_smoke(config)
    elif arg:
        raise ValueError(f"Unknown variant {arg!r}; use 'quick', 'smoke' or nothing.")
    return config
