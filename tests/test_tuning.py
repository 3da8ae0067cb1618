"""KerasTuner search over SEAT's lam and flood level (tuning/)."""

import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import keras_tuner
import numpy as np
import pytest

from configs import fashion_mnist_seat
from seat_tf.training import SEATModel
from seat_tf.tuning import hypermodel as hm
from seat_tf.tuning import search

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def band_npz(tmp_path_factory):
    """28x28 images whose class k brightens rows 2k+2..2k+4: learnable in one tiny epoch,
    so trials with different lam / flood level get different robust accuracies."""
    rng = np.random.default_rng(0)

    def make(n):
        y = np.arange(n) % 10
        x = rng.integers(0, 80, (n, 28, 28)).astype(np.uint8)
        for k in range(10):
            x[y == k, 2 * k + 2 : 2 * k + 5, :] = 230
        return x, y

    (x_train, y_train), (x_test, y_test) = make(256), make(128)
    path = str(tmp_path_factory.mktemp("data") / "bands.npz")
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def smoke_config(npz, **tuning):
    config = fashion_mnist_seat.get_config("smoke")
    config.dataset.name = npz
    config.model.width = 8  # tiny CNN: seconds per trial
    config.dataset.val_limit = 64
    config.tuning.update(tuning)
    return config


def recorded_trials(project_dir):
    """The trials as KerasTuner wrote them to disk: {trial_id: trial.json contents}."""
    trials = {}
    for path in glob.glob(os.path.join(project_dir, "search", "trial_*", "trial.json")):
        try:
            with open(path) as f:
                state = json.load(f)
        except ValueError:  # caught mid-write by a poll
            continue
        trials[state["trial_id"]] = state
    return trials


def recorded_value(state, name):
    observations = state["metrics"]["metrics"][name]["observations"]
    return float(np.mean(observations[-1]["value"]))


# -- the search space -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(lam_min=-0.1), "lambda (the linearity-term weight) cannot be negative"),
        (dict(lam_max=-0.5), "tuning.lam_max=-0.5: lambda"),
        (dict(flood_min=-0.2), "the flood level cannot be negative"),
        (dict(lam_min=0.8, lam_max=0.2), "lam_min=0.8 is above tuning.lam_max=0.2"),
        (dict(flood_step=0.0), "flood_step must be > 0"),
        (dict(lr_min=0.01), "Set both tuning.lr_min and tuning.lr_max"),
        (dict(lr_min=0.1, lr_max=0.01), "0 < tuning.lr_min <= tuning.lr_max"),
        (dict(warmup_epochs=(0, -1)), "warmup_epochs must be a non-empty tuple of integers >= 0"),
        (dict(clean_weight=1.5), "clean_weight must lie in [0, 1]"),
        (dict(clean_floor=80.0), "clean_floor must be an accuracy in [0, 1]"),
    ],
)
def test_bad_search_spaces_are_rejected(override, message):
    config = fashion_mnist_seat.get_config("smoke")
    config.tuning.update(override)
    with pytest.raises(ValueError, match=re.escape(message)):
        hm.validate_search_space(config.tuning)
    with pytest.raises(ValueError, match="tuning."):
        hm.SEATHyperModel(config, steps_per_epoch=4, epochs=1)


def test_hypermodel_only_tunes_seat():
    config = fashion_mnist_seat.get_config("smoke")
    config.method = dict(name="pgd_at", epsilon=0.1)
    with pytest.raises(ValueError, match="SEAT's lam and flood_level"):
        hm.SEATHyperModel(config, steps_per_epoch=4, epochs=1)


@pytest.mark.parametrize(
    "robust, clean, weight, floor, expected",
    [
        (0.4, 0.8, 0.0, None, 0.4),  # plain robust accuracy
        (0.4, 0.8, 0.25, None, 0.75 * 0.4 + 0.25 * 0.8),  # weighted
        (0.4, 0.8, 0.0, 0.7, 0.4),  # floor met
        (0.5, 0.6, 0.0, 0.7, 0.5 - 1.0),  # floor missed: below every trial that meets it
    ],
)
def test_tuning_score_closed_form(robust, clean, weight, floor, expected):
    assert hm.tuning_score(robust, clean, weight, floor) == pytest.approx(expected)


def test_build_maps_hyperparameters_onto_the_model():
    config = fashion_mnist_seat.get_config("smoke")
    config.model.width = 4
    config.tuning.update(warmup_epochs=(0, 2), lr_min=0.01, lr_max=0.1)
    hypermodel = hm.SEATHyperModel(config, steps_per_epoch=5, epochs=3)
    assert hypermodel.objective_name == "val_robust_accuracy"

    hp = keras_tuner.HyperParameters()
    hp.Fixed("lam", 0.3)
    hp.Fixed("flood_level", 0.2)
    hp.Fixed("epsilon_warmup_epochs", 2)
    hp.Fixed("learning_rate", 0.02)
    model = hypermodel.build(hp)
    assert isinstance(model, SEATModel) and model.built
    assert (model.lam, model.flood_level, model.epsilon_warmup_steps) == (0.3, 0.2, 2 * 5)
    schedule = model.optimizer._learning_rate  # the CyclicLR object (learning_rate reads its value)
    assert schedule.peak_lr == pytest.approx(0.02) and schedule.total_steps == 3 * 5

    # Flood level 0 is "no flooding"; the space declares exactly the tuned knobs.
    hp = keras_tuner.HyperParameters()
    hp.Fixed("flood_level", 0.0)
    model = hypermodel.build(hp)
    assert model.flood_level is None
    assert set(hp.values) == {"lam", "flood_level", "epsilon_warmup_epochs", "learning_rate"}
    assert hp.values["lam"] == 0.0  # the lower end of the default [0, 1] grid

    # A range whose ends meet fixes the value; with a clean weight the objective is the score.
    config.tuning.update(lam_min=0.5, lam_max=0.5, warmup_epochs=(0,), lr_min=None, lr_max=None, clean_weight=0.2)
    hypermodel = hm.SEATHyperModel(config, steps_per_epoch=5, epochs=3)
    hp = keras_tuner.HyperParameters()
    assert hypermodel.build(hp).lam == 0.5
    assert set(hp.values) == {"lam", "flood_level"} and hp.get("lam") == 0.5
    assert hypermodel.objective.name == "val_tuning_score"


def test_trials_with_the_same_hyperparameters_train_identically(band_npz):
    """Fresh training data per fit: no trial inherits another's place in the shuffle sequence."""
    from seat_tf import experiment

    config = smoke_config(band_npz)
    config.dataset.train_limit = 128
    shared = experiment.build_datasets(config)[0]
    hypermodel = hm.SEATHyperModel(config, steps_per_epoch=2, epochs=2,
                                   make_train_data=lambda: experiment.build_datasets(config)[0])
    weights = []
    for _ in range(2):
        model = hypermodel.make_model(0.5, 0.0)
        hypermodel.fit(None, model, shared, epochs=2, verbose=0)
        weights.append(np.concatenate([w.ravel() for w in model.get_weights()]))
    np.testing.assert_array_equal(weights[0], weights[1])
    # Without it the second fit continues the shared dataset's shuffle sequence.
    plain = hm.SEATHyperModel(config, steps_per_epoch=2, epochs=2)
    for _ in range(2):
        model = plain.make_model(0.5, 0.0)
        plain.fit(None, model, shared, epochs=2, verbose=0)
        weights.append(np.concatenate([w.ravel() for w in model.get_weights()]))
    assert np.abs(weights[2] - weights[3]).max() > 0


# -- searches ---------------------------------------------------------------------------------


def test_search_picks_the_trial_with_the_best_recorded_robust_accuracy(tmp_path, band_npz):
    project = str(tmp_path / "tune")
    summary = search.run_search(smoke_config(band_npz), project, max_trials=3, epochs_per_trial=1,
                                final_attack="pgd2", final_examples=32, verbose=0)
    recorded = recorded_trials(project)
    assert len(recorded) == 3 and all(t["status"] == "COMPLETED" for t in recorded.values())
    values = {tid: recorded_value(t, "val_robust_accuracy") for tid, t in recorded.items()}
    hps = {tid: (t["hyperparameters"]["values"]["lam"], t["hyperparameters"]["values"]["flood_level"])
           for tid, t in recorded.items()}
    assert len(set(hps.values())) == 3, hps  # three different points of the space
    best = summary["best_trial"]
    assert best["val_robust_accuracy"] == pytest.approx(max(values.values()))
    assert values[best["trial_id"]] == pytest.approx(max(values.values()))

    # The reloaded best model and the baseline were evaluated on held-out test images.
    final = summary["final_evaluation"]
    assert final["num_examples"] == 32 and "test[64:96]" in final["subset"]
    assert set(final["models"]) == {f"best trial {best['trial_id']}", "baseline lam=0.5"}
    for entry in final["models"].values():
        assert 0.0 <= entry["robust_accuracy"] <= entry["clean_accuracy"] <= 1.0
    assert summary["baseline"]["lam"] == 0.5 and summary["baseline"]["flood_level"] is None

    with open(os.path.join(project, "tuning_summary.json")) as f:
        assert json.load(f)["best_trial"]["trial_id"] == best["trial_id"]
    table = open(os.path.join(project, "trials.md")).read()
    assert f"| **{best['trial_id']}** (best) |" in table and table.count("| COMPLETED |") == 3
    with open(os.path.join(project, "trials.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not glob.glob(os.path.join(project, "*.tmp*"))


def test_weighted_objective_bayesian_tuner_and_mirrored_strategy(tmp_path, band_npz):
    project = str(tmp_path / "tune")
    config = smoke_config(band_npz, clean_weight=0.5)
    strategy = search.make_strategy("mirrored")  # one replica on a CPU: checks the plumbing
    summary = search.run_search(config, project, tuner="bayesian", max_trials=2, epochs_per_trial=1,
                                final_attack="pgd1", final_examples=16, baseline=False, strategy=strategy,
                                verbose=0)
    assert summary["objective"] == "val_tuning_score"
    for state in recorded_trials(project).values():
        score = recorded_value(state, "val_tuning_score")
        robust, clean = recorded_value(state, "val_robust_accuracy"), recorded_value(state, "val_clean_accuracy")
        assert score == pytest.approx(0.5 * robust + 0.5 * clean) and state["score"] == pytest.approx(score)


def run_tuner_cli(args, env=None, module="tuning.search", **kwargs):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT, **(env or {}))
    command = [sys.executable, "-m", module] + (["tune"] if module == "seat_tf.cli" else []) + args
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def cli_args(npz, project, trials):
    return ["--config=configs/fashion_mnist_seat.py:smoke", f"--config.dataset.name={npz}",
            "--config.dataset.train_limit=128", "--config.dataset.val_limit=32", f"--project_dir={project}", f"--max_trials={trials}",
            "--epochs_per_trial=1", "--final_eval_attack=pgd1", "--final_eval_examples=16", "--nobaseline", "--verbose=0"]


@pytest.mark.parametrize("module", ["tuning.search", "seat_tf.cli"])
def test_cli_rejects_a_bad_space_before_writing(tmp_path, band_npz, module):
    project = str(tmp_path / "never")
    process = run_tuner_cli(cli_args(band_npz, project, 3) + ["--config.tuning.flood_min=-0.1"], module=module)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode != 0 and "the flood level cannot be negative" in stderr
    assert not os.path.exists(project)


def _ongoing_trials(project_dir):
    try:
        with open(os.path.join(project_dir, "search", "oracle.json")) as f:
            return set(json.load(f)["ongoing_trials"].values())
    except (OSError, ValueError):
        return {"unknown"} | set(recorded_trials(project_dir))


@pytest.mark.slow
def test_killed_search_resumes_without_rerunning_finished_trials(tmp_path, band_npz):
    project = str(tmp_path / "tune")
    process = run_tuner_cli(cli_args(band_npz, project, 2), start_new_session=True)
    first = None
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        done = [tid for tid, t in recorded_trials(project).items() if t["status"] == "COMPLETED"]
        # Wait until the oracle's own state file has the trial off its "ongoing" list too
        # (KerasTuner writes trial.json a moment before), as it is once the next trial runs.
        if done and done[0] not in _ongoing_trials(project):
            first = done[0]
            break
        time.sleep(0.1)
    assert first is not None, process.communicate()[1][-3000:]
    checkpoint = glob.glob(os.path.join(project, "search", f"trial_{first}", "checkpoint*"))[0]
    stamp = os.stat(checkpoint).st_mtime_ns
    os.killpg(process.pid, signal.SIGKILL)  # the process group we started: no clean shutdown
    process.wait()
    assert len([t for t in recorded_trials(project).values() if t["status"] == "COMPLETED"]) < 2

    rerun = run_tuner_cli(cli_args(band_npz, project, 2))
    stdout, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr[-3000:]
    assert "Reloading Tuner" in stdout
    recorded = recorded_trials(project)
    assert sorted(recorded) == ["0", "1"] and all(t["status"] == "COMPLETED" for t in recorded.values())
    assert os.stat(checkpoint).st_mtime_ns == stamp  # the finished trial was not trained again
    summary = json.load(open(os.path.join(project, "tuning_summary.json")))
    assert len(summary["trials"]) == 2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_distributed_search_with_a_chief_and_one_worker(tmp_path, band_npz):
    project = str(tmp_path / "tune")
    oracle = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(_free_port())}
    chief = run_tuner_cli(cli_args(band_npz, project, 1), env=dict(oracle, KERASTUNER_TUNER_ID="chief"))
    worker = run_tuner_cli(cli_args(band_npz, project, 1), env=dict(oracle, KERASTUNER_TUNER_ID="tuner0"))
    worker_out, worker_err = worker.communicate(timeout=600)
    chief_out, chief_err = chief.communicate(timeout=300)
    assert worker.returncode == 0, worker_err[-3000:]
    assert chief.returncode == 0, chief_err[-3000:]
    assert "Worker tuner0 finished" in worker_out
    summary = json.load(open(os.path.join(project, "tuning_summary.json")))  # written by the chief
    assert [t["status"] for t in summary["trials"]] == ["COMPLETED"]
    assert "best trial " + summary["best_trial"]["trial_id"] in summary["final_evaluation"]["models"]
