"""Faults: real processes killed with SIGKILL at a chosen point (the README's fault table).

A small driver runs the command in a fresh process with one function wrapped so that the
process kills itself (SIGKILL, no cleanup of any kind) at the chosen point."""

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

import seat_tf  # noqa: F401  (registers the model classes for loading)
from seat_tf import fileio
from tests.conftest import without_keys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVER = '''
import os, signal, sys
from seat_tf import cli, export, keras_compat

point = os.environ["KILL_AT"]
if point.startswith("epoch_end:"):  # right after the backup of epoch N is written
    epoch_to_kill = int(point.split(":")[1])
    original = keras_compat.BackupAndRestore.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch + 1 == epoch_to_kill:
            os.kill(os.getpid(), signal.SIGKILL)

    keras_compat.BackupAndRestore.on_epoch_end = on_epoch_end
elif point.startswith("attack_saved:"):  # right after the N-th finished attack is saved
    from seat_tf.evaluation import store

    saves_to_kill, saved, original_save = int(point.split(":")[1]), [], store.ResultStore.save

    def save(self, *args):
        path = original_save(self, *args)
        saved.append(path)
        if len(saved) == saves_to_kill:
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    store.ResultStore.save = save
elif point == "export_check":  # SavedModel written to its temporary folder, not yet moved into place
    export.check_in_fresh_process = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
sys.argv = ["seat-tf"] + sys.argv[1:]
cli.run()
'''


def _run(tmp_path, args, kill_at=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    if kill_at is None:
        command = [sys.executable, "-m", "seat_tf.cli", *args]
    else:
        driver = tmp_path / "kill_driver.py"
        driver.write_text(DRIVER)
        command = [sys.executable, str(driver), *args]
        env["KILL_AT"] = kill_at
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)


@pytest.mark.slow
def test_train_killed_after_epoch_2_resumes_to_the_weights_of_an_unbroken_run(tmp_path, fake_fmnist_npz):
    args = ["train", "--config=configs/fashion_mnist_seat.py:smoke", f"--config.dataset.name={fake_fmnist_npz}",
            "--config.epochs=3", "--config.dataset.batch_size=32", "--verbose=0",
            "--config.diagnostics.co_monitor=True", "--config.diagnostics.examples=32",
            "--config.diagnostics.co_attack=pgd2"]
    unbroken, broken = str(tmp_path / "unbroken"), str(tmp_path / "broken")
    assert _run(tmp_path, args + [f"--workdir={unbroken}"]).returncode == 0
    killed = _run(tmp_path, args + [f"--workdir={broken}"], kill_at="epoch_end:2")
    assert killed.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(broken, "model.keras"))
    assert os.path.exists(os.path.join(broken, fileio.LOCK_NAME))  # left behind by the killed run
    before_resume = json.load(open(os.path.join(broken, "epoch_log.json")))
    assert len(before_resume["logs"]) == 2
    resumed = _run(tmp_path, args + [f"--workdir={broken}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stale lock" in resumed.stderr
    # Only epoch 3 was trained again (epochs 1-2 keep the killed run's own wall-clock seconds),
    # yet history.json, the CO monitor's log and train_seconds cover all three epochs, with the
    # values of the unbroken run.
    after_resume = json.load(open(os.path.join(broken, "epoch_log.json")))
    assert after_resume["seconds"][:2] == before_resume["seconds"]
    history = json.load(open(os.path.join(broken, "history.json")))
    expected = json.load(open(os.path.join(unbroken, "history.json")))
    assert sorted(history) == sorted(expected) and len(history["loss"]) == 3
    for key in expected:
        np.testing.assert_allclose(history[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)
    co_broken = json.load(open(os.path.join(broken, "co_monitor.json")))["records"]
    co_unbroken = json.load(open(os.path.join(unbroken, "co_monitor.json")))["records"]
    assert [r["epoch"] for r in co_broken] == [1, 2, 3]
    for a, b in zip(co_broken, co_unbroken):
        assert sorted(a) == sorted(b)
        for key in a:
            if isinstance(a[key], float):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
            else:
                assert a[key] == b[key], key
    report = json.load(open(os.path.join(broken, "report.json")))
    assert report["train_seconds"] == pytest.approx(sum(after_resume["seconds"]), abs=0.1)
    a = keras.models.load_model(os.path.join(unbroken, "model.keras"))
    b = keras.models.load_model(os.path.join(broken, "model.keras"))
    assert int(a.optimizer.iterations) == int(b.optimizer.iterations) == 3 * 4
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(x, y)
    assert not os.path.exists(os.path.join(broken, fileio.LOCK_NAME))


def test_export_killed_before_the_move_leaves_no_version_folder(tmp_path, make_tiny_cnn):
    model_path = str(tmp_path / "m.keras")
    make_tiny_cnn().save(model_path)
    out = str(tmp_path / "exported")
    killed = _run(tmp_path, ["export", f"--model={model_path}", f"--out={out}"], kill_at="export_check")
    assert killed.returncode == -signal.SIGKILL
    assert not [name for name in os.listdir(out) if name.isdigit()]  # TF Serving sees no version
    done = _run(tmp_path, ["export", f"--model={model_path}", f"--out={out}"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert [name for name in os.listdir(out) if name.isdigit()] == ["1"]


@pytest.mark.slow
def test_evaluate_killed_after_the_first_attack_resumes_without_attacking_it_again(tmp_path, make_tiny_cnn):
    rng = np.random.default_rng(0)
    model = make_tiny_cnn(input_shape=(8, 8, 1), num_classes=5)
    images = rng.integers(0, 256, (64, 8, 8), dtype=np.uint8)
    labels = np.argmax(model.predict(images[..., None] / 255.0, verbose=0), -1)
    labels[::5] = (labels[::5] + 1) % 5  # some examples wrong clean
    model_path, data_path = str(tmp_path / "model.keras"), str(tmp_path / "data.npz")
    model.save(model_path)
    np.savez(data_path, x_train=images, y_train=labels, x_test=images, y_test=labels)
    args = ["evaluate", f"--model={model_path}", f"--dataset={data_path}", "--eps=0.05", "--batch_size=32",
            "--attacks=pgd10,apgd-ce5+square20", "--sanity_limit=16", "--sweep_eps=0.05", "--sweep_limit=16",
            "--verbose=2"]
    unbroken, broken = str(tmp_path / "unbroken"), str(tmp_path / "broken")
    assert _run(tmp_path, args + [f"--workdir={unbroken}"]).returncode == 0
    killed = _run(tmp_path, args + [f"--workdir={broken}"], kill_at="attack_saved:1")
    assert killed.returncode == -signal.SIGKILL
    assert os.listdir(os.path.join(broken, "attack_results")) != [] and not os.path.exists(
        os.path.join(broken, "report.json"))
    resumed = _run(tmp_path, args + [f"--workdir={broken}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stale lock" in resumed.stderr
    assert "[1/" in resumed.stdout and "pgd10 (eps 0.05): finished before" in resumed.stdout
    reports = [json.load(open(os.path.join(folder, "report.json"))) for folder in (unbroken, broken)]
    assert reports[1]["attacks"]["pgd10"]["loaded"]  # pgd10 was not attacked again
    assert "loaded" not in reports[1]["attacks"]["apgd-ce5+square20"]
    assert without_keys(reports[0]) == without_keys(reports[1])
    assert not os.path.exists(os.path.join(broken, fileio.LOCK_NAME))
