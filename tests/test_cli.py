import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "seat_tf.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


@pytest.fixture
def npz_dataset(tmp_path):
    rng = np.random.default_rng(0)
    path = str(tmp_path / "fake_fmnist.npz")
    np.savez(path, x_train=rng.integers(0, 256, (128, 28, 28), dtype=np.uint8), y_train=np.arange(128) % 10,
             x_test=rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), y_test=np.arange(64) % 10)
    return path


def test_train_writes_model_history_and_report(tmp_path, npz_dataset):
    workdir = str(tmp_path / "run")
    result = run_cli("train", "--config=configs/fashion_mnist_seat.py:smoke", f"--config.dataset.name={npz_dataset}",
                     "--config.epochs=2", f"--workdir={workdir}", "--verbose=0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"model.keras", "history.json", "report.json", "config.json"} <= set(os.listdir(workdir))
    history = json.load(open(os.path.join(workdir, "history.json")))
    assert len(history["loss"]) == 2 and "val_robust_accuracy" in history
    report = json.load(open(os.path.join(workdir, "report.json")))
    assert report["num_examples"] == 64 and set(report["attacks"]) == {"fgsm", "pgd5"}
    assert report["attacks"]["pgd5"]["robust_accuracy"] <= report["clean_accuracy"]
    assert "Robustness report" in result.stdout


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.method.epsilon=-0.1", "epsilon"),
        ("--config.method.name=free_at", "Unknown training method"),
        ("--config.dataset.name=imagenet", "Unknown dataset"),
    ],
)
def test_bad_config_fails_before_writing_anything(tmp_path, override, message):
    workdir = str(tmp_path / "never")
    result = run_cli("train", "--config=configs/fashion_mnist_seat.py:smoke", override, f"--workdir={workdir}")
    assert result.returncode != 0
    assert message in result.stderr
    assert not os.path.exists(workdir)


def test_unknown_command_prints_usage():
    result = run_cli("fly")
    assert result.returncode != 0 and "commands:" in result.stderr
