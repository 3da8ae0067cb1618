"""Every shipped config builds and trains; the CIFAR-10 path runs on generated data."""

import glob
import importlib.util
import os
import pickle

import numpy as np
import pytest

from seat_tf import data, experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def load_config(path, arg):
    spec = importlib.util.spec_from_file_location("config_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (16, 3072), dtype=np.uint8),
                         b"labels": list(rng.integers(0, 10, 16))}, f)
    return str(folder)


def _build(path, cifar_dir):
    config = load_config(path, "smoke")
    if config.dataset.name == "cifar10":
        config.dataset.data_dir = cifar_dir
    if config.dataset.name == "fashion_mnist" and not config.dataset.data_dir and data.idx_dir("fashion_mnist") is None:
        # Never fall through to a TFDS download from a test.
        pytest.skip("the real Fashion-MNIST IDX files are absent (apt-get install dataset-fashion-mnist, "
                    "or bash scripts/setup.sh)")
    experiment.validate(config)
    train, _, val = experiment.build_datasets(config)
    return config, train, val, experiment.build_model(config, total_steps=experiment.steps_per_epoch(config, train))


@pytest.mark.parametrize("name", ["fashion_mnist_seat.py", "cifar10_seat.py"])
def test_config_smoke_variant_trains_one_epoch(name, cifar_dir):
    """The full path: local files -> tf.data (CIFAR: augmentation) -> model -> fit with PGD validation."""
    _, train, val, model = _build(os.path.join(ROOT, "configs", name), cifar_dir)
    history = model.fit(train, validation_data=val, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])
    assert "val_robust_accuracy" in history


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_builds_its_method_and_model(path, cifar_dir):
    """Each config's method class and kwargs are accepted and its data loads (training of
    every method itself is covered on tiny models in test_training / test_baselines)."""
    config, train, _, model = _build(path, cifar_dir)
    assert type(model).__name__ == {
        "seat": "SEATModel", "fgsm_at": "FGSMATModel", "rs_fgsm": "RSFGSMModel", "n_fgsm": "NFGSMModel",
        "pgd_at": "PGDATModel", "trades": "TRADESModel", "grad_align": "GradAlignModel"}[config.method.name]
    x, y = next(iter(train))
    assert model(x).shape == (x.shape[0], 10)


def test_cifar10_configs_follow_the_paper_recipe():
    for path in CONFIGS:
        config = load_config(path, None)
        if config.dataset.name != "cifar10":
            continue
        assert config.method.epsilon == pytest.approx(8 / 255)
        assert config.model.name == "preact_resnet18" and config.epochs == 30
        assert (config.optimizer.name, config.optimizer.momentum, config.optimizer.weight_decay) == ("sgd", 0.9, 5e-4)
        assert config.dataset.batch_size == 128 and config.dataset.augment
        assert os.path.basename(path) == f"cifar10_{config.method.name}.py"


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="variant"):
        load_config(CONFIGS[0], "huge")
