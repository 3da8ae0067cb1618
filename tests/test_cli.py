import json
import os

import pytest

def test_train_writes_model_history_and_report(cli, tmp_path, fake_fmnist_npz):
    workdir = str(tmp_path / "run")
    result = cli("train", "--config=configs/fashion_mnist_seat.py:smoke", f"--config.dataset.name={fake_fmnist_npz}",
                 "--config.epochs=2", f"--workdir={workdir}", "--verbose=0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"model.keras", "history.json", "report.json", "report.md", "config.json", "training_curves.png",
            "robust_accuracy_vs_eps.png"} <= set(os.listdir(workdir))
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
def test_bad_config_fails_before_writing_anything(cli, tmp_path, override, message):
    workdir = str(tmp_path / "never")
    result = cli("train", "--config=configs/fashion_mnist_seat.py:smoke", override, f"--workdir={workdir}")
    assert result.returncode != 0
    assert message in result.stderr
    assert not os.path.exists(workdir)


def test_unknown_command_prints_usage(cli):
    result = cli("fly")
    assert result.returncode != 0 and "commands:" in result.stderr
