"""SEAT on CIFAR-10 with PreActResNet18: the paper's setting.

eps 8/255, lam 0.5, SGD momentum 0.9, weight decay 5e-4, batch 128, cyclic learning rate
peaking at 0.2 two fifths into 30 epochs, pad-crop-flip augmentation. Data from TFDS, or a
local cifar-10-batches-py folder (--config.dataset.data_dir=...). Meant for a GPU:

    seat-tf train --config=configs/cifar10_seat.py --workdir=runs/cifar10_seat
    seat-tf train --config=configs/cifar10_seat.py --config.method.flood_level=0.5 ...   # SEAT-FL
"""

import ml_collections

from seat_tf.experiment import base_config


def get_config(arg=None):
    config = base_config()
    config.epochs = 30
    config.val_attack = "pgd10"
    config.eval_attacks = ("fgsm", "pgd20", "pgd50x10")
    config.dataset.name = "cifar10"
    config.dataset.augment = True
    config.dataset.val_limit = 1000
    config.model = ml_collections.ConfigDict(dict(name="preact_resnet18"))
    config.method = ml_collections.ConfigDict(
        dict(
            name="seat",
            epsilon=8 / 255,
            lam=0.5,
            flood_level=ml_collections.config_dict.placeholder(float),
            init="corner",
            rel_step_size=1.0,
            attack_loss="margin",
            reduction="example",
        )
    )
    config.optimizer = ml_collections.ConfigDict(
        dict(name="sgd", learning_rate=0.2, momentum=0.9, weight_decay=5e-4, schedule="cyclic", peak_fraction=0.4)
    )
    if arg == "smoke":
        config.epochs = 1
        config.dataset.train_limit = 64
        config.dataset.test_limit = 32
        config.dataset.val_limit = 32
        config.dataset.batch_size = 32
        config.model.width = 8
        config.val_attack = "pgd2"
        config.eval_attacks = ("fgsm",)
    elif arg:
        raise ValueError(f"Unknown variant {arg!r}; use 'smoke' or nothing.")
    return config
