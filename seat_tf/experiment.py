"""Config -> objects: the one place that turns a ConfigDict into datasets, a model, an
optimizer and callbacks. The CLI, the tuner and the benchmarks all build through here.

A config (see configs/*.py) has these sections:

    dataset:   name, source, data_dir, batch_size, augment, train_limit, test_limit, val_limit
    model:     name (seat_tf.models), plus keyword arguments of the builder
    method:    name (seat_tf.METHODS), epsilon, plus keyword arguments of the method class
    optimizer: name (sgd | adam), learning_rate (the peak of the cyclic schedule), momentum,
               weight_decay, schedule (cyclic | constant), peak_fraction
    epochs, seed, val_attack, eval_attacks, jit_compile
"""

import json
import math

import keras
import ml_collections
import numpy as np

from seat_tf import data, models
from seat_tf.schedules import CyclicLR
from seat_tf.training import get_method


def base_config():
    """Defaults every experiment config starts from."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.epochs = 10
    config.jit_compile = False
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
    # Search space of `seat-tf tune` (tuning/hypermodel.py). lam's grid holds the paper's
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
    return config


def to_dict(config):
    """Plain-dict (JSON-ready) copy of a ConfigDict."""
    return json.loads(config.to_json()) if hasattr(config, "to_json") else dict(config)


def _kwargs(section, drop=("name",)):
    return {k: v for k, v in to_dict(section).items() if k not in drop}


def validate(config):
    """Raises ValueError for configs that cannot work, before anything is written or trained."""
    data.dataset_info(config.dataset.name) if not str(config.dataset.name).endswith(".npz") else None
    get_method(config.method.name)
    if config.model.name not in models.MODELS:
        raise ValueError(f"Unknown model {config.model.name!r}; choose one of {sorted(models.MODELS)}.")
    if config.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {config.epochs}.")
    if config.optimizer.name not in ("sgd", "adam"):
        raise ValueError(f"Unknown optimizer {config.optimizer.name!r}; choose 'sgd' or 'adam'.")
    if config.optimizer.schedule not in ("cyclic", "constant"):
        raise ValueError(f"Unknown schedule {config.optimizer.schedule!r}; choose 'cyclic' or 'constant'.")
    epsilon = config.method.epsilon
    if not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon) or epsilon < 0 or epsilon > 1:
        raise ValueError(f"method.epsilon must be a number in [0, 1] (pixel scale), got {epsilon!r}.")


def build_datasets(config):
    """(train, test, val) tf.data pipelines; val is a fixed subset of test for per-epoch
    robust accuracy (PGD on the full test set every epoch would dominate training time)."""
    d = config.dataset
    common = dict(data_dir=d.data_dir, source=d.source, seed=config.seed)
    train = data.load_dataset(d.name, "train", d.batch_size, augment=d.augment, limit=d.train_limit, **common)
    test = data.load_dataset(d.name, "test", d.batch_size, limit=d.test_limit, **common)
    val = data.load_dataset(d.name, "test", d.batch_size, limit=d.val_limit, **common) if d.val_limit else test
    return train, test, val


def steps_per_epoch(config, train_ds):
    steps = int(train_ds.cardinality())
    if steps < 0:
        raise ValueError("The training dataset has unknown length; set dataset.train_limit.")
    return steps


def build_classifier(config):
    """The classifier named by config.model, sized for config.dataset."""
    kwargs = _kwargs(config.model)
    name = config.dataset.name
    if name in data.DATASETS:
        shape, classes = data.dataset_info(name)
        kwargs.setdefault("input_shape", shape)
        kwargs.setdefault("num_classes", classes)
        stats = models.normalization.DATASET_STATS.get(name)
        if stats:
            kwargs.setdefault("mean", stats[0])
            kwargs.setdefault("std", stats[1])
    return models.get(config.model.name, **kwargs)


def build_optimizer(config, total_steps):
    """SGD (momentum, decoupled weight decay) or Adam, with the cyclic schedule by default."""
    o = config.optimizer
    lr = CyclicLR(o.learning_rate, total_steps, o.peak_fraction) if o.schedule == "cyclic" else o.learning_rate
    weight_decay = o.weight_decay or None
    if o.name == "sgd":
        return keras.optimizers.SGD(lr, momentum=o.momentum, weight_decay=weight_decay)
    return keras.optimizers.Adam(lr, weight_decay=weight_decay)


def build_model(config, total_steps):
    """Compiled adversarial-training model for config (call inside a strategy scope)."""
    keras.utils.set_random_seed(config.seed)
    method_kwargs = _kwargs(config.method)
    model = get_method(config.method.name)(
        build_classifier(config), val_attack=config.val_attack, seed=config.seed, **method_kwargs
    )
    model.compile(
        optimizer=build_optimizer(config, total_steps),
        jit_compile=config.jit_compile,
        steps_per_execution=config.steps_per_execution,
    )
    return model


def set_seed(seed):
    keras.utils.set_random_seed(seed)
    np.random.seed(seed)
