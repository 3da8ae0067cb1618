"""Failing loudly: bad labels and images are refused on every path, divergence stops `fit`
for every user, the CLI speaks in one line with exit codes, sample weights are honoured,
workdirs are locked, untrusted archives load in safe mode."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import seat_tf
from seat_tf import data, diagnostics, fileio
from seat_tf.training import base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "--config=configs/fashion_mnist_seat.py:smoke"


def _last_line(stderr):
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# -- labels and images, on every path ---------------------------------------------------------


def test_fit_evaluate_and_seat_tf_evaluate_refuse_labels_outside_the_models_classes(make_tiny_cnn, toy_data):
    x, y = toy_data  # a 3-class model
    model = seat_tf.SEATModel(make_tiny_cnn(), epsilon=0.1)
    model.compile(optimizer="sgd")
    shifted = tf.data.Dataset.from_tensor_slices((x, y + 10)).batch(32)
    with pytest.raises(data.DataError, match=r"Labels must lie in \[0, 3\)"):
        model.fit(x, y + 10, epochs=1, verbose=0)
    with pytest.raises(data.DataError, match=r"Labels must lie in \[0, 3\)"):
        model.fit(shifted, epochs=1, verbose=0)
    with pytest.raises(data.DataError, match=r"Labels must lie in \[0, 3\)"):
        model.evaluate(x, y + 10, verbose=0)
    with pytest.raises(data.DataError, match=r"Labels must lie in \[0, 3\)"):
        seat_tf.evaluate(model, shifted, attacks=["fgsm"], eps=0.1, verbose=0)
    # A later batch out of range is caught too (labels are checked on every batch).
    late = tf.data.Dataset.from_tensor_slices((x, np.where(np.arange(len(y)) < 64, y, y + 3))).batch(32)
    with pytest.raises(data.DataError, match="Labels must lie in"):
        seat_tf.evaluate(model, late, attacks=["fgsm"], eps=0.1, verbose=0, sanity=False)
    with pytest.raises(data.DataError, match="expects images of shape"):
        model.fit(np.zeros((8, 6, 6, 1), np.float32), y[:8], epochs=1, verbose=0)
    # The boundary: label 3 is one past a 3-class model's last class; 0-2 pass.
    with pytest.raises(data.DataError, match=r"got values in \[0, 3\]"):
        data.check_labels(np.array([0, 1, 3]), 3)
    data.check_labels(np.array([0, 1, 2]), 3)


def test_loaders_check_labels_and_images_whole(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 6, 6), dtype=np.uint8)
    path = str(tmp_path / "half.npz")
    np.savez(path, x_train=images, y_train=np.full(20, 0.5), x_test=images, y_test=-(np.arange(20) % 3))
    with pytest.raises(data.DataError, match="non-integer"):
        data.load_dataset(path, "train")
    with pytest.raises(data.DataError, match=">= 0"):
        data.load_dataset(path, "test")
    ok = str(tmp_path / "ok.npz")
    np.savez(ok, x_train=images, y_train=np.arange(20) % 5, x_test=images, y_test=np.arange(20) % 5)
    with pytest.raises(data.DataError, match=r"Labels must lie in \[0, 3\)"):
        data.load_dataset(ok, "train", num_classes=3)
    assert data.load_dataset(ok, "train", num_classes=5) is not None
    assert base.check_batch is data.check_batch  # one implementation, re-exported


def test_evaluate_command_refuses_labels_10_to_19_for_a_10_class_model(cli, tmp_path):
    inputs = keras.Input((6, 6, 1))
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))
    model_path = str(tmp_path / "m.keras")
    model.save(model_path)
    images = np.random.default_rng(0).integers(0, 256, (16, 6, 6), dtype=np.uint8)
    npz = str(tmp_path / "labels.npz")
    np.savez(npz, x_train=images, y_train=np.arange(16) % 10, x_test=images, y_test=10 + np.arange(16) % 10)
    workdir = str(tmp_path / "eval")
    result = cli("evaluate", f"--model={model_path}", f"--dataset={npz}", "--eps=0.1", "--attacks=fgsm",
                 f"--workdir={workdir}", "--verbose=0")
    assert result.returncode == 2, result.stderr[-2000:]
    assert _last_line(result.stderr).startswith("seat-tf: error:") and "Labels must lie in [0, 10)" in result.stderr
    assert "Traceback" not in result.stderr and not os.path.exists(workdir)


# -- divergence is loud for every user ----------------------------------------------------------


def test_fit_stops_a_first_epoch_explosion_and_keeps_the_sound_weights(make_tiny_cnn, toy_data):
    x, y = toy_data
    model = seat_tf.SEATModel(make_tiny_cnn(), epsilon=0.1)
    model.compile(optimizer=keras.optimizers.SGD(1e6))
    start = [w.copy() for w in model.get_weights()]
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0).history
    guard = model.divergence_guard_callback
    assert isinstance(guard, diagnostics.DivergenceGuard) and guard.events
    assert guard.events[0]["action"] == "stopped" and not guard.recovered
    assert history["diverged"] == [1.0]  # stopped in the first epoch
    for now, before in zip(model.get_weights(), start):
        np.testing.assert_array_equal(now, before)


def test_divergence_guard_opt_out_and_user_guard(make_tiny_cnn, toy_data):
    x, y = toy_data
    model = seat_tf.FGSMATModel(make_tiny_cnn(), epsilon=0.1, divergence_guard=False)
    model.compile(optimizer=keras.optimizers.SGD(1e6))
    history = model.fit(x, y, epochs=1, batch_size=16, verbose=0).history
    assert model.divergence_guard_callback is None and "diverged" not in history
    assert model.get_config()["divergence_guard"] is False
    own = diagnostics.DivergenceGuard(action="restore", factor=5.0)
    model = seat_tf.FGSMATModel(make_tiny_cnn(), epsilon=0.1)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[own])
    assert model.divergence_guard_callback is own


def test_divergence_guard_catches_a_linearity_explosion_within_one_epoch():
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(10)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    guard = diagnostics.DivergenceGuard(action="stop")
    guard.set_model(model)
    guard.on_train_begin()
    guard.on_epoch_begin(0)
    guard.on_train_batch_end(0, {"loss": 2.3, "linearity_error": 0.79})
    guard.on_train_batch_end(1, {"loss": 2.2, "linearity_error": 3.0})  # below 10 x log(10): fine
    assert not guard.events
    guard.on_train_batch_end(2, {"loss": 2.2, "linearity_error": 6.6e9})
    assert model.stop_training and "linearity_error" in guard.events[0]["reason"] and not guard.recovered


def test_train_command_exits_3_when_training_diverges(cli, tmp_path, fake_fmnist_npz):
    workdir = str(tmp_path / "run")
    result = cli("train", SMOKE, f"--config.dataset.name={fake_fmnist_npz}", "--config.optimizer.learning_rate=1e6",
                 f"--workdir={workdir}", "--verbose=0")
    assert result.returncode == 3, result.stderr[-3000:]
    assert "diverged" in _last_line(result.stderr)
    report = json.load(open(os.path.join(workdir, "report.json")))
    assert report["diverged_unrecovered"] and report["divergence_events"]
    assert not os.path.exists(os.path.join(workdir, fileio.LOCK_NAME))


# -- the CLI: one line, exit codes ---------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.method.lam=-1.0", "lam must be >= 0"),
        ("--config.eval_attacks=('fgsm','pgd7x')", "attack"),
        ("--config.method.epsilon=-0.1", "epsilon"),
        ("--config.method.name=free_at", "Unknown training method"),
        ("--config.dataset.name=imagenet", "Unknown dataset"),
    ],
)
def test_config_errors_are_one_line_and_exit_2(cli, tmp_path, override, message):
    workdir = str(tmp_path / "never")
    result = cli("train", SMOKE, override, f"--workdir={workdir}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert _last_line(result.stderr).startswith("seat-tf: error:") and message in _last_line(result.stderr)
    assert "Traceback" not in result.stderr and not os.path.exists(workdir)


def test_debug_shows_the_traceback_and_usage_errors_exit_2(cli, tmp_path):
    result = cli("train", SMOKE, "--config.method.name=free_at", f"--workdir={tmp_path / 'w'}", "--debug")
    assert result.returncode == 2 and "Traceback" in result.stderr and "Unknown training method" in result.stderr
    result = cli("train", SMOKE, "--config.epochs=abc", f"--workdir={tmp_path / 'w'}")
    assert result.returncode == 2 and _last_line(result.stderr).startswith("seat-tf: error:")


def test_a_file_that_is_not_a_keras_archive_gets_a_clear_message(tmp_path):
    fake = tmp_path / "model.keras"
    fake.write_text("not a zip")
    with pytest.raises(ValueError, match="not a valid .keras archive"):
        fileio.load_keras_model(str(fake))
    (tmp_path / "x.h5").write_text("")
    with pytest.raises(ValueError, match="not a .keras archive"):
        fileio.load_keras_model(str(tmp_path / "x.h5"))
    with pytest.raises(FileNotFoundError, match="No such model file"):
        fileio.load_keras_model(str(tmp_path / "missing.keras"))


def test_workdir_that_cannot_be_a_folder_is_a_usage_error(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = cli("train", SMOKE, f"--workdir={blocker}/run")
    assert result.returncode == 2 and "is a file" in _last_line(result.stderr), result.stderr[-2000:]


def test_a_full_disk_fails_in_one_line_and_leaves_nothing_half_written(tmp_path, make_tiny_cnn):
    model_path = str(tmp_path / "m.keras")
    make_tiny_cnn(input_shape=(28, 28, 1), num_classes=10).save(model_path)
    images = np.random.default_rng(0).integers(0, 256, (32, 28, 28), dtype=np.uint8)
    npz = str(tmp_path / "d.npz")
    np.savez(npz, x_train=images, y_train=np.arange(32) % 10, x_test=images, y_test=np.arange(32) % 10)
    workdir = str(tmp_path / "eval")
    os.makedirs(workdir)

    def small_file_limit():  # writes beyond 2 kB fail with EFBIG, as on a full disk
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "seat_tf.cli", "evaluate", f"--model={model_path}", f"--dataset={npz}", "--eps=0.1",
         "--attacks=fgsm", "--sanity_limit=8", "--sweep_limit=8", f"--workdir={workdir}", "--verbose=0"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600, preexec_fn=small_file_limit)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "no space left (or file size limit reached)" in _last_line(result.stderr)
    left = os.listdir(workdir)
    assert not [name for name in left if name.startswith(".tmp")], left
    for name in left:  # whatever was written is complete
        if name.endswith(".json"):
            json.load(open(os.path.join(workdir, name)))


# -- untrusted archives: Keras' safe mode ---------------------------------------------------------


def test_a_lambda_layer_is_refused_unless_the_user_says_so(cli, tmp_path):
    inputs = keras.Input((4, 4, 1))
    h = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(h)))
    path = str(tmp_path / "lambda.keras")
    model.save(path)
    with pytest.raises(ValueError, match="Lambda layer.*safe mode"):
        fileio.load_keras_model(path)
    assert fileio.load_keras_model(path, safe_mode=False) is not None
    result = cli("export", f"--model={path}", f"--out={tmp_path / 'out'}")
    assert result.returncode == 2 and "--unsafe_load" in _last_line(result.stderr), result.stderr[-2000:]


# -- sample weights ---------------------------------------------------------------------------------

WEIGHTED_METHODS = {
    "seat": dict(lam=0.5), "fgsm_at": {}, "rs_fgsm": {}, "n_fgsm": {}, "pgd_at": dict(steps=2), "trades": dict(steps=2),
    "grad_align": dict(lam=0.2),
}


def _linear(make_linear, seed=0):
    rng = np.random.default_rng(seed)
    return make_linear(rng.normal(size=(16, 3)) * 0.5, rng.normal(size=3) * 0.1, (4, 4, 1))


def _cross_entropy(model, x, y):
    logits = model.classifier(x).numpy().astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    return np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(len(y)), y]


@pytest.mark.parametrize("method", sorted(WEIGHTED_METHODS))
def test_every_method_logs_the_weighted_mean_objective(method, make_linear):
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(12, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, 12).astype(np.int32)
    w = rng.uniform(0, 3, 12).astype(np.float32)
    # At eps = 0 every objective is the cross-entropy of x (linearity, KL and alignment terms vanish).
    model = seat_tf.get_method(method)(_linear(make_linear), epsilon=0.0, **WEIGHTED_METHODS[method])
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    ce = _cross_entropy(model, x, y)
    history = model.fit(x, y, sample_weight=w, batch_size=12, epochs=1, shuffle=False, verbose=0).history
    assert history["loss"][0] == pytest.approx(np.sum(w * ce) / np.sum(w), rel=1e-4)
    assert history["loss"][0] != pytest.approx(ce.mean(), rel=1e-3)
    predicted = np.argmax(model.classifier(x).numpy(), axis=1) == y
    accuracy = "clean_accuracy" if "clean_accuracy" in history else "adv_accuracy"
    assert history[accuracy][0] == pytest.approx(np.sum(w * predicted) / np.sum(w), rel=1e-5)


def test_integer_weights_train_like_repeated_examples_and_class_weight_works(make_linear):
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(6, 4, 4, 1)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2], np.int32)
    counts = np.array([1, 3, 2, 1, 1, 2])

    def one_step(xs, ys, **kwargs):
        model = seat_tf.FGSMATModel(_linear(make_linear), epsilon=0.1)  # deterministic attack
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        history = model.fit(xs, ys, batch_size=len(xs), epochs=1, shuffle=False, verbose=0, **kwargs).history
        return model.get_weights(), history["loss"][0]

    weighted, weighted_loss = one_step(x, y, sample_weight=counts.astype(np.float32))
    repeated, repeated_loss = one_step(np.repeat(x, counts, axis=0), np.repeat(y, counts))
    assert weighted_loss == pytest.approx(repeated_loss, rel=1e-5)
    for a, b in zip(weighted, repeated):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    unweighted, _ = one_step(x, y)
    assert not np.allclose(unweighted[0], weighted[0])
    class_weight = {0: 2.0, 1: 0.5, 2: 1.0}
    by_class, by_class_loss = one_step(x, y, class_weight=class_weight)
    as_samples, as_samples_loss = one_step(x, y, sample_weight=np.array([class_weight[c] for c in y], np.float32))
    assert by_class_loss == pytest.approx(as_samples_loss, rel=1e-6)


class _UnweightedObjective(seat_tf.FGSMATModel):
    def objective(self, x, y, x_adv, clean):
        adv_logits = self.classify(x_adv, training=True)
        return tf.reduce_mean(seat_tf.losses.cross_entropy(y, adv_logits)), {"adv_logits": adv_logits}


def test_an_objective_that_cannot_honour_weights_refuses_them(make_linear):
    x = np.random.default_rng(0).uniform(size=(8, 4, 4, 1)).astype(np.float32)
    y = np.arange(8) % 3
    model = _UnweightedObjective(_linear(make_linear), epsilon=0.1)
    model.compile(optimizer="sgd")
    model.fit(x, y, epochs=1, verbose=0)  # fine without weights
    with pytest.raises(ValueError, match="cannot honour sample_weight"):
        model.fit(x, y, sample_weight=np.ones(8), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="sample weights must be finite and >= 0"):
        seat_tf.FGSMATModel(_linear(make_linear)).fit(x, y, sample_weight=-np.ones(8), epochs=1, verbose=0)


# -- workdir lock -------------------------------------------------------------------------------------


def _write_lock(workdir, pid):
    import socket

    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, fileio.LOCK_NAME), "w") as f:
        json.dump({"pid": pid, "host": socket.gethostname(), "command": "train"}, f)


def test_workdir_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path):
    workdir = str(tmp_path / "w")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(workdir, sleeper.pid)
        with pytest.raises(fileio.WorkdirLocked, match=f"in use by process {sleeper.pid}"):
            fileio.WorkdirLock(workdir, "evaluate").acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    with fileio.WorkdirLock(workdir, "evaluate") as lock:  # the holder is gone: stale
        assert lock.took_over["pid"] == sleeper.pid
        with pytest.raises(fileio.WorkdirLocked, match=f"process {os.getpid()}"):
            fileio.WorkdirLock(workdir, "train").acquire()
    assert not os.path.exists(os.path.join(workdir, fileio.LOCK_NAME))


def test_second_train_on_a_busy_workdir_is_refused(cli, tmp_path, fake_fmnist_npz):
    workdir = str(tmp_path / "busy")
    _write_lock(workdir, os.getpid())  # this test process is alive
    result = cli("train", SMOKE, f"--config.dataset.name={fake_fmnist_npz}", f"--workdir={workdir}", "--verbose=0")
    assert result.returncode == 1 and "is in use by process" in _last_line(result.stderr), result.stderr[-2000:]
    assert sorted(os.listdir(workdir)) == [fileio.LOCK_NAME]


MIRRORED_WEIGHTED_JOB = r'''
import json, sys
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import seat_tf
from tests.conftest import linear_classifier

rng = np.random.default_rng(3)
W, b = rng.normal(size=(16, 3)) * 0.5, rng.normal(size=3) * 0.1
x = rng.uniform(size=(15, 4, 4, 1)).astype(np.float32)  # 15 splits 8 / 7 over two replicas
y = rng.integers(0, 3, 15).astype(np.int32)
w = rng.uniform(0, 3, 15).astype(np.float32)
w[8:11] = 0.0


def step(strategy, lr, method="seat", **kwargs):
    with strategy.scope():
        model = seat_tf.get_method(method)(linear_classifier(W, b, (4, 4, 1)), val_attack=None, seed=1, **kwargs)
        model.compile(optimizer=keras.optimizers.SGD(lr))
    data = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(15)
    history = model.fit(data, epochs=1, verbose=0).history
    return [v.tolist() for v in model.classifier.get_weights()], history["loss"][0]


single = tf.distribute.get_strategy()
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
out = {}
for name, kwargs in {"seat": dict(method="seat", epsilon=0.1, lam=0.5),
                     "seat_batch_flooded": dict(method="seat", epsilon=0.1, variant=dict(reduction="batch"), flood_level=2.0),
                     "trades": dict(method="trades", epsilon=0.1, steps=2)}.items():
    w1, l1 = step(single, 0.5, **kwargs)
    w2, l2 = step(mirrored, 0.5, **kwargs)
    out[name] = dict(weights=max(float(np.abs(np.array(a) - np.array(c)).max()) for a, c in zip(w1, w2)),
                     loss=abs(l1 - l2))
_, out["eps0_loss"] = step(mirrored, 0.0, method="fgsm_at", epsilon=0.0)
logits = x.reshape(15, -1) @ W + b
logits = logits - logits.max(1, keepdims=True)
ce = np.log(np.exp(logits).sum(1)) - logits[np.arange(15), y]
out["closed_form"] = float(np.sum(w * ce) / np.sum(w))
print(json.dumps(out))
'''


def test_weighted_objectives_are_global_batch_means_under_mirrored_strategy(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(MIRRORED_WEIGHTED_JOB)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["eps0_loss"] == pytest.approx(out["closed_form"], rel=1e-5)
    for name in ("seat", "seat_batch_flooded", "trades"):
        assert out[name]["weights"] < 1e-5 and out[name]["loss"] < 1e-5, (name, out[name])


def _uncentred_warnings(fit):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit()
    return [w for w in caught if issubclass(w.category, seat_tf.validation.UncenteredInputWarning)]


def test_fit_warns_once_when_the_classifiers_first_layer_sees_uncentred_images(toy_data):
    """A classifier without input centring trains measurably less robust (README, "SEAT on
    your own classifier"): fit says so once, with the measured channel mean and the fix."""
    from seat_tf.validation import first_layer_input_stats

    x, y = toy_data
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    plain = seat_tf.models.small_cnn(input_shape=(8, 8, 1), num_classes=3, mean=(0.0,), std=(1.0,), width=4)
    layer, mean, std = first_layer_input_stats(plain, x)
    assert layer.name == "conv1" and mean == pytest.approx([x.mean()], rel=1e-5) and std == pytest.approx([x.std()], rel=1e-4)
    model = seat_tf.SEATModel(plain, epsilon=0.05, first_layer_centring="off")  # SEAT's default centres instead
    model.compile(optimizer="sgd")
    (warning,) = _uncentred_warnings(lambda: model.fit(ds, epochs=1, verbose=0))
    assert "'conv1'" in str(warning.message) and f"{x.mean():.3f}"[:4] in str(warning.message)
    assert "seat_tf.models.standardize" in str(warning.message)
    assert not _uncentred_warnings(lambda: model.fit(ds, epochs=1, verbose=0))  # once per model

    # The same CNN standardized by the data's statistics, or with only the mean subtracted: silent.
    for std_used in (x.std(), 1.0):
        centred = seat_tf.models.small_cnn(input_shape=(8, 8, 1), num_classes=3, mean=(float(x.mean()),),
                                           std=(float(std_used),), width=4)
        model = seat_tf.FGSMATModel(centred, epsilon=0.05)
        model.compile(optimizer="sgd")
        assert not _uncentred_warnings(lambda: model.fit(x, y, batch_size=32, epochs=1, verbose=0))


def test_no_centring_warning_where_a_normalization_follows_the_first_layer_or_the_graph_is_hidden(toy_data):
    x, y = toy_data
    inputs = keras.Input(shape=(8, 8, 1))
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    h = keras.layers.BatchNormalization()(h)  # removes the channel means the input's offset put there
    h = keras.layers.Flatten()(keras.layers.ReLU()(h))
    batch_normed = keras.Model(inputs, keras.layers.Dense(3)(h))

    # A classifier nested in another's graph: the probe cannot reach its first layer, so
    # fit stays silent rather than guess.
    inner = keras.Sequential([keras.Input(shape=(8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    outer_inputs = keras.Input(shape=(8, 8, 1))
    nested = keras.Model(outer_inputs, inner(outer_inputs))

    for classifier in (batch_normed, nested):
        model = seat_tf.FGSMATModel(classifier, epsilon=0.05)
        model.compile(optimizer="sgd")
        assert not _uncentred_warnings(lambda: model.fit(x, y, batch_size=32, epochs=1, verbose=0))
