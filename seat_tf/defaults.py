"""The defaults every experiment config starts from (`base_config`), the paper's CIFAR-10
recipes, the smoke shrink tests use, and the `diagnostics` section. A config (configs/*.py)
has these sections:

    dataset:   name, source, data_dir, batch_size, augment, train_limit, test_limit, val_limit
    model:     name (seat_tf.models), plus keyword arguments of the builder
    method:    name (seat_tf.METHODS), epsilon, optionally preset (SEAT: "paper", "authors_code"),
               plus keyword arguments of the method class
    optimizer: name (sgd | adam), learning_rate (the peak of the cyclic schedule), momentum,
               weight_decay, schedule (cyclic | constant), peak_fraction
    epochs, seed, val_attack, eval_attacks, eval_sweep, jit_compile (XLA for the train step),
    mixed_precision (float32 | mixed_float16 | mixed_bfloat16)
    diagnostics (monitors off by default, divergence guard on): see `diagnostics_config`
"""

import ml_collections


def base_config():
    """Defaults every experiment config starts from."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.epochs = 10
    config.jit_compile = False
    config.mixed_precision = "float32"
    config.steps_per_execution = 1
    config.val_attack = "pgd10"
    config.eval_attacks = ("fgsm", "pgd20")
    config.dataset = ml_collections.ConfigDict(
        dict(
            name="fashion_mnist",
            source="auto",
            data_dir=ml_collections.config_dict.placeholder(str),
            batch_size=128,
            augment=False,
            train_limit=ml_collections.config_dict.placeholder(int),
            test_limit=ml_collections.config_dict.placeholder(int),
            val_limit=1000,
        )
    )
    config.model = ml_collections.ConfigDict(dict(name="small_cnn"))
    config.method = ml_collections.ConfigDict(dict(name="seat", epsilon=0.1))
    config.optimizer = ml_collections.ConfigDict(
        dict(name="sgd", learning_rate=0.05, momentum=0.9, weight_decay=5e-4, schedule="cyclic", peak_fraction=0.4)
    )
    # Search space of `seat-tf tune` (seat_tf/tuning/hypermodel.py). lam's grid holds the paper's
    # {0, 0.1, 0.3, 0.5, 0.7}; flood level 0 means no flooding. A min equal to its max fixes
    # the value; unset learning-rate bounds keep optimizer.learning_rate.
    config.tuning = ml_collections.ConfigDict(
        dict(
            lam_min=0.0, lam_max=1.0, lam_step=0.1,
            flood_min=0.0, flood_max=0.5, flood_step=0.05,
            warmup_epochs=(0,),  # choices of epsilon warm-up length, in epochs
            lr_min=ml_collections.config_dict.placeholder(float),
            lr_max=ml_collections.config_dict.placeholder(float),
            clean_weight=0.0,  # objective: (1 - w) * robust + w * clean accuracy ...
            clean_floor=ml_collections.config_dict.placeholder(float),  # ... - 1 below this clean accuracy
        )
    )
    config.diagnostics = diagnostics_config()
    return config


# Per-method settings of the paper's CIFAR-10 comparison (eps = 8/255, PreActResNet18).
CIFAR10_METHODS = {
    "seat": dict(lam=0.5, init="corner", rel_step_size=1.0, attack_loss="margin", reduction="example"),
    "fgsm_at": dict(rel_step_size=1.0),
    "rs_fgsm": dict(rel_step_size=1.25),
    "n_fgsm": dict(noise_factor=2.0, rel_step_size=1.0),
    "pgd_at": dict(steps=10, rel_step_size=0.25),
    "trades": dict(beta=6.0, steps=10, rel_step_size=0.25),
    "grad_align": dict(lam=0.2),
}


def cifar10_paper_config(method, arg=None):
    """The paper's CIFAR-10 recipe for `method`: PreActResNet18, eps 8/255, SGD momentum 0.9,
    weight decay 5e-4, batch 128, cyclic learning rate peaking at 0.2 two fifths into 30
    epochs, pad-crop-flip augmentation, PGD-10 validation on 1000 test images, final
    FGSM / PGD-20 / PGD-50-10. arg="smoke" shrinks everything for tests."""
    if method not in CIFAR10_METHODS:
        raise ValueError(f"No CIFAR-10 recipe for {method!r}; choose one of {sorted(CIFAR10_METHODS)}.")
    config = base_config()
    config.epochs = 30
    config.val_attack = "pgd10"
    config.eval_attacks = ("fgsm", "pgd20", "pgd50x10")
    config.dataset.name = "cifar10"
    config.dataset.augment = True
    config.model = ml_collections.ConfigDict(dict(name="preact_resnet18"))
    method_config = dict(name=method, epsilon=8 / 255, **CIFAR10_METHODS[method])
    if method == "seat":
        method_config["flood_level"] = ml_collections.config_dict.placeholder(float)
    config.method = ml_collections.ConfigDict(method_config)
    config.optimizer = ml_collections.ConfigDict(
        dict(name="sgd", learning_rate=0.2, momentum=0.9, weight_decay=5e-4, schedule="cyclic", peak_fraction=0.4)
    )
    if arg == "smoke":
        shrink_for_smoke(config, train_limit=64, test_limit=32, batch_size=32, eval_attacks=("fgsm",))
        config.model.width = 8
    elif arg:
        raise ValueError(f"Unknown variant {arg!r}; use 'smoke' or nothing.")
    return config


def fashion_mnist_adam_config():
    """base_config with the recipe the Fashion-MNIST studies share (CO benchmark, time budget,
    plain-CNN study): the small CNN, Adam with the one-cycle schedule peaking at 2e-3, no
    weight decay."""
    config = base_config()
    config.dataset.name = "fashion_mnist"
    config.model = ml_collections.ConfigDict(dict(name="small_cnn"))
    config.optimizer.update(dict(name="adam", learning_rate=2e-3, weight_decay=0.0, schedule="cyclic"))
    return config


def shrink_for_smoke(config, *, epochs=1, train_limit=256, test_limit=128, batch_size=64,
                     eval_attacks=("fgsm", "pgd5")):
    """Makes a config run in seconds (the ":smoke" variants tests use): tiny subsets, a
    2-step validation attack, cheap final attacks. Returns the config."""
    config.epochs = epochs
    config.dataset.train_limit = train_limit
    config.dataset.test_limit = test_limit
    config.dataset.val_limit = min(64, test_limit)
    config.dataset.batch_size = batch_size
    config.val_attack = "pgd2"
    config.eval_attacks = tuple(eval_attacks)
    return config


def diagnostics_config():
    """The optional `diagnostics` section: training monitors, all off by default.

    Both monitors measure on the first `examples` test images (held out from training):
      linearity_monitor: log the local linearity error each epoch (and every
        `linearity_every_n_steps` steps if > 0) with `linearity_steps` search steps;
      co_monitor: catastrophic-overfitting monitor, `co_attack` vs FGSM accuracy; `co_action`
        warn | stop | restore; rule thresholds co_max_drop, co_max_gap, co_min_pgd_accuracy,
        co_max_train_gap, co_max_masking_gap (None turns a rule off; `diagnostics.collapse_reasons`);
        co_blackbox_attack (e.g. "square100"; None: off) adds a gradient-free attack, and with
        it the gradient-masking rule; restore
        multiplies the learning rate by co_lr_factor and the attack step by co_step_factor;
      divergence_guard (on by default): `diagnostics.DivergenceGuard`, restores the last good
        weights (and lowers the learning rate) when the loss goes non-finite or the linearity
        error / loss jumps above divergence_factor times its best; divergence_action
        restore | stop; on_drift warn | double_backprop: what it does when the value passes
        3x its best (slow drift: warn, or for SEAT also switch double backprop on).
    """
    placeholder = ml_collections.config_dict.placeholder
    return ml_collections.ConfigDict(
        dict(
            linearity_monitor=False,
            co_monitor=False,
            examples=512,
            linearity_steps=5,
            linearity_every_n_steps=0,
            co_attack="pgd10",
            co_action="warn",
            co_max_drop=0.2,
            co_max_gap=0.4,
            co_min_pgd_accuracy=placeholder(float),
            co_max_train_gap=0.5,
            co_blackbox_attack=placeholder(str),
            co_max_masking_gap=0.1,
            co_lr_factor=0.5,
            co_step_factor=0.5,
            co_max_restores=3,
            divergence_guard=True,
            divergence_factor=10.0,
            divergence_action="restore",
            on_drift="warn",
        )
    )
