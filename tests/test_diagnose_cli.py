"""`seat-tf train` with the diagnostics monitors on, then `seat-tf diagnose` on its model."""

import json
import os


def test_train_with_monitors_then_diagnose(cli, tmp_path, fake_fmnist_npz):
    run = str(tmp_path / "run")
    result = cli("train", "--config=configs/fashion_mnist_co.py:smoke", f"--config.dataset.name={fake_fmnist_npz}",
                 f"--workdir={run}", "--verbose=0")
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.load(open(os.path.join(run, "history.json")))
    for key in ("local_linearity_error", "co_pgd_accuracy", "co_fgsm_accuracy", "co_linearity_error", "co_collapsed"):
        assert len(history[key]) == 2, key
    monitor = json.load(open(os.path.join(run, "co_monitor.json")))
    assert [r["epoch"] for r in monitor["records"]] == [1, 2]
    assert [r["pgd_accuracy"] for r in monitor["records"]] == history["co_pgd_accuracy"]
    assert os.path.exists(os.path.join(run, "co_monitor.png")) and "Catastrophic-overfitting monitor" in result.stdout

    out = str(tmp_path / "diag")
    model = os.path.join(run, "model.keras")
    result = cli("diagnose", f"--model={model},{model}", f"--dataset={fake_fmnist_npz}", "--eps=0.1",
                 "--num_examples=16", f"--workdir={out}", "--verbose=0")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.load(open(os.path.join(out, "diagnostics.json")))
    assert list(report["results"]) == ["run", "run'"]
    entry = report["results"]["run"]
    assert entry["num_examples"] == 16 and entry["eps"] == 0.1
    assert entry["lipschitz"]["lower"]["mean"] <= entry["lipschitz"]["upper"]["mean"]
    assert entry == report["results"]["run'"]  # deterministic: same model, same numbers
    for name in report["plots"].values():
        assert open(os.path.join(out, name), "rb").read(4) == b"\x89PNG"


def test_diagnose_rejects_bad_flags(cli, tmp_path):
    result = cli("diagnose", "--model=/nonexistent.keras", "--dataset=fashion_mnist", "--eps=0.1",
                 f"--workdir={tmp_path / 'x'}")
    assert result.returncode != 0 and "no such file" in result.stderr
    assert not os.path.exists(tmp_path / "x")


def test_train_rejects_a_bad_co_action(cli, tmp_path):
    workdir = str(tmp_path / "never")
    result = cli("train", "--config=configs/fashion_mnist_co.py:smoke", "--config.diagnostics.co_action=panic",
                 f"--workdir={workdir}")
    assert result.returncode != 0 and "co_action" in result.stderr
    assert not os.path.exists(workdir)
