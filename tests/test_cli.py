import json
import os


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
    assert report["divergence_events"] == [] and "diverged" not in result.stdout  # a healthy run
    assert "diverged" not in json.load(open(os.path.join(workdir, "history.json")))  # no internal 0 logged
    assert "Robustness report" in result.stdout


def test_train_survives_a_divergence_and_ends_on_the_last_good_weights(cli, tmp_path, fake_fmnist_npz):
    """A learning rate of 1e30 makes the loss non-finite at the second batch of every epoch:
    the DivergenceGuard restores the weights training started with each time, reports the
    events in report.json and on stdout, and the saved model holds those weights."""
    import keras
    import numpy as np

    from configs.fashion_mnist_seat import get_config
    from seat_tf import experiment

    workdir = str(tmp_path / "run")
    overrides = {"dataset.name": fake_fmnist_npz, "epochs": 2, "optimizer.learning_rate": 1e30,
                 "optimizer.schedule": "constant"}
    result = cli("train", "--config=configs/fashion_mnist_seat.py:smoke", f"--workdir={workdir}", "--verbose=0",
                 *[f"--config.{k}={v}" for k, v in overrides.items()])
    # Results are written, and the exit code says the run did not recover (3; --nostrict: 0).
    assert result.returncode == 3, result.stderr[-3000:]
    assert "did not recover" in result.stderr
    report = json.load(open(os.path.join(workdir, "report.json")))
    events = report["divergence_events"]
    assert [e["epoch"] for e in events] == [1, 2] and {e["action"] for e in events} == {"restored"}
    assert all("non-finite training loss" in e["reason"] for e in events)
    assert "WARNING: training diverged" in result.stdout and "weights of epoch 0" in result.stdout
    history = json.load(open(os.path.join(workdir, "history.json")))
    assert history["diverged"] == [1.0, 1.0]
    # The weights training started with: the same config built here (same seed).
    config = get_config("smoke")
    config.dataset.name = fake_fmnist_npz
    initial = experiment.build_model(config, total_steps=4).classifier.get_weights()
    saved = keras.models.load_model(os.path.join(workdir, "model.keras")).classifier.get_weights()
    assert len(saved) == len(initial)
    for restored, start in zip(saved, initial):
        assert np.all(np.isfinite(restored))
        np.testing.assert_array_equal(restored, start)


def test_unknown_command_prints_usage(cli):
    result = cli("fly")
    assert result.returncode != 0 and "commands:" in result.stderr
