"""Distributed training: MirroredStrategy equivalence, two workers on localhost (TF_CONFIG),
kill-and-resume, and the Keras multi-worker workarounds.

Logical CPU devices must be configured before TensorFlow starts and workers are separate
processes, so the distributed jobs run in subprocesses: `python tests/test_distribute.py
<job>` runs a job below and prints its measurements as JSON for the tests to check.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT, "KERAS_BACKEND": "tensorflow"}


def _run_job(name, timeout=600):
    result = subprocess.run([sys.executable, os.path.abspath(__file__), name], capture_output=True, text=True,
                            timeout=timeout, cwd=ROOT, env=dict(os.environ, **QUIET))
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- one SEAT step under MirroredStrategy == one single-device step ------------------------


def _mirrored_job():
    """Two logical CPUs. For SEAT settings and batch sizes (even and uneven splits), the max
    weight difference between a MirroredStrategy step and a single-device step on the same
    global batch, and (control) between single-device steps with different noise seeds."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    import seat_tf
    from seat_tf import distribute
    from tests.conftest import tiny_cnn

    rng = np.random.default_rng(0)
    initial = tiny_cnn().get_weights()
    single = tf.distribute.get_strategy()
    mirrored = distribute.make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])

    def step(strategy, x, y, seed=1, **kwargs):
        with strategy.scope():
            classifier = tiny_cnn()
            classifier.set_weights(initial)
            model = seat_tf.SEATModel.from_preset("default", classifier, epsilon=0.1, seed=seed, val_attack=None, **kwargs)
            model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9))
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(y))
        history = model.fit(dataset, epochs=1, verbose=0)
        return model.classifier.get_weights(), history.history["loss"][0]

    def max_diff(a, b):
        return float(max(np.abs(u - v).max() for u, v in zip(a, b)))

    # (setting, global batch): batch 15 splits 8/7 over the two replicas.
    cases = {
        "example_16": (dict(lam=0.5), 16),
        "batch_flooded_16": (dict(lam=0.5, reduction="batch", flood_level=2.0), 16),
        "uniform_ce_15": (dict(lam=0.3, init="uniform", attack_loss="ce", flood_level=0.1), 15),
    }
    out = {}
    for name, (kwargs, batch) in cases.items():
        x = rng.uniform(0, 1, (batch, 8, 8, 1)).astype(np.float32)
        y = rng.integers(0, 3, batch).astype(np.int32)
        w_single, loss_single = step(single, x, y, **kwargs)
        w_mirrored, loss_mirrored = step(mirrored, x, y, **kwargs)
        out[name] = dict(mirrored_vs_single=max_diff(w_single, w_mirrored), loss_diff=abs(loss_single - loss_mirrored))
        if name == "example_16":  # control: a different noise seed moves the weights
            out[name]["other_seed_vs_single"] = max_diff(w_single, step(single, x, y, seed=2, **kwargs)[0])
    return out


@pytest.fixture(scope="module")
def mirrored_results():
    return _run_job("mirrored")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["example_16", "batch_flooded_16", "uniform_ce_15"])
def test_mirrored_step_equals_single_device_step(mirrored_results, case):
    """Same global batch, same noise: same weights and loss, also for an uneven 8/7 split
    and for the |batch mean| and flooding reductions."""
    result = mirrored_results[case]
    assert result["mirrored_vs_single"] < 1e-5, result
    assert result["loss_diff"] < 1e-5, result


@pytest.mark.slow
def test_mirrored_comparison_is_sensitive_to_the_noise(mirrored_results):
    result = mirrored_results["example_16"]
    assert result["other_seed_vs_single"] > 1e-3 > 100 * result["mirrored_vs_single"], result


# -- two workers on localhost: identical weights, kill one, resume both -------------------

TINY_CONFIG = '''
from configs.fashion_mnist_seat import get_config as fashion_mnist_config

def get_config(arg=None):
    config = fashion_mnist_config("smoke")
    config.dataset.name = {npz!r}
    config.dataset.train_limit = 256
    config.dataset.batch_size = 32
    config.dataset.val_limit = 32
    config.dataset.test_limit = 32
    config.model.width = 4
    config.epochs = {epochs}
    config.val_attack = "pgd1"
    config.eval_attacks = ("fgsm",)
    return config
'''
EPOCHS, STEPS_PER_EPOCH = 5, 8


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(config_path, workdir, logs):
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        env = dict(os.environ, **QUIET, TF_CONFIG=tf_config)
        command = [sys.executable, "-m", "seat_tf.cli", "train", "--strategy=multi_worker", f"--config={config_path}",
                   f"--workdir={workdir}", "--verbose=2", "--nostrict"]  # resume, not soundness, is tested
        log = open(os.path.join(logs, f"worker{index}-{time.time():.0f}.log"), "w")
        workers.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    return workers


def _backup_epoch(workdir):
    path = os.path.join(workdir, "backup", "worker-0", "training_metadata.json")
    try:
        return json.load(open(path))["epoch"]
    except (OSError, ValueError):
        return 0


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """Two workers train; after >= 1 finished epoch worker 1 is killed (SIGKILL), and the
    chief stops; both restart on the same workdir and finish."""
    base = tmp_path_factory.mktemp("multi_worker")
    rng = np.random.default_rng(0)
    npz = str(base / "data.npz")
    np.savez(npz, x_train=rng.integers(0, 256, (256, 28, 28), dtype=np.uint8), y_train=np.arange(256) % 10,
             x_test=rng.integers(0, 256, (32, 28, 28), dtype=np.uint8), y_test=np.arange(32) % 10)
    config_path = str(base / "tiny_config.py")
    with open(config_path, "w") as f:
        f.write(TINY_CONFIG.format(npz=npz, epochs=EPOCHS))
    workdir, logs = str(base / "run"), str(base)
    workers = _start_workers(config_path, workdir, logs)
    deadline = time.time() + 400
    while _backup_epoch(workdir) < 1 and time.time() < deadline and workers[0].poll() is None:
        time.sleep(0.2)
    workers[1].send_signal(signal.SIGKILL)
    workers[1].wait()
    try:  # the chief notices the missing heartbeats and fails on its own
        chief_code = workers[0].wait(timeout=180)
    except subprocess.TimeoutExpired:
        chief_code = None
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait()
    resumed_from = _backup_epoch(workdir)
    epoch_logs_before = {folder: json.load(open(os.path.join(workdir, folder, "epoch_log.json")))
                         for folder in ("", "worker-1") if os.path.exists(os.path.join(workdir, folder, "epoch_log.json"))}
    workers = _start_workers(config_path, workdir, logs)
    codes = [worker.wait(timeout=600) for worker in workers]
    log_text = "".join(open(os.path.join(logs, name)).read()[-3000:] for name in sorted(os.listdir(logs))
                       if name.endswith(".log"))
    return dict(workdir=workdir, resumed_from=resumed_from, chief_code=chief_code, codes=codes, logs=log_text,
                epoch_logs_before=epoch_logs_before)


def _load(path):
    import keras

    import seat_tf  # noqa: F401 (registers the model classes)

    return keras.models.load_model(path)


@pytest.mark.slow
def test_two_workers_end_with_identical_weights(killed_and_resumed):
    run = killed_and_resumed
    assert run["codes"] == [0, 0], run["logs"]
    chief = _load(os.path.join(run["workdir"], "model.keras"))
    other = _load(os.path.join(run["workdir"], "worker-1", "model.keras"))
    for a, b in zip(chief.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert os.path.exists(os.path.join(run["workdir"], "report.json"))  # the chief evaluated
    assert not os.path.exists(os.path.join(run["workdir"], "worker-1", "report.json"))


@pytest.mark.slow
def test_restarted_workers_resume_without_repeating_epochs(killed_and_resumed):
    run = killed_and_resumed
    assert run["codes"] == [0, 0], run["logs"]
    assert 1 <= run["resumed_from"] < EPOCHS, "the kill must land mid-run"
    assert run["chief_code"] not in (None, 0), "the chief should stop with an error when a worker dies"
    # The epochs before the resume were not trained again (their logged seconds are the first
    # run's), and history.json still covers every epoch of the run.
    before = run["epoch_logs_before"][""]
    assert len(before["seconds"]) >= run["resumed_from"]
    for folder in ("", "worker-1"):
        after = json.load(open(os.path.join(run["workdir"], folder, "epoch_log.json")))
        logged = run["epoch_logs_before"].get(folder, {"seconds": []})["seconds"]
        if len(logged) >= run["resumed_from"]:
            assert len(after["seconds"]) == EPOCHS
        else:  # worker 1 was killed before logging an epoch the chief had backed up
            assert len(after["seconds"]) < EPOCHS
        kept = min(run["resumed_from"], len(logged))
        assert after["seconds"][:kept] == logged[:kept]
    history = json.load(open(os.path.join(run["workdir"], "history.json")))
    assert len(history["loss"]) == EPOCHS
    # The optimizer state came back too: exactly EPOCHS epochs of steps in total.
    assert int(_load(os.path.join(run["workdir"], "model.keras")).optimizer.iterations) == EPOCHS * STEPS_PER_EPOCH
    assert not os.path.exists(os.path.join(run["workdir"], "backup", "worker-0"))  # removed after success


# -- the workarounds module in-process ------------------------------------------------------


def test_keras_compat_is_version_guarded_and_idempotent(monkeypatch):
    import keras

    from seat_tf import keras_compat

    assert keras_compat.affected("3.15.1") and keras_compat.affected("3.0.0")
    assert not keras_compat.affected("2.15.0") and not keras_compat.affected("4.0.0")
    keras_compat.apply()
    from keras.src.backend.tensorflow import trainer

    patched = trainer.reduce_per_replica
    assert keras_compat.apply() == []  # second call changes nothing
    assert trainer.reduce_per_replica is patched
    monkeypatch.setattr(keras, "__version__", "4.0.0")
    monkeypatch.setattr(keras_compat, "_APPLIED", set())
    assert keras_compat.apply() == []


class _FakeResolver:
    def __init__(self, jobs, task_type, task_id):
        self._jobs, self.task_type, self.task_id = jobs, task_type, task_id

    def cluster_spec(self):
        import tensorflow as tf

        return tf.train.ClusterSpec(self._jobs)


def _fake_multi_worker(monkeypatch, jobs, task_type, task_id):
    """A MultiWorkerMirroredStrategy whose cluster_resolver reports the given task."""
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    monkeypatch.setattr(type(strategy), "cluster_resolver", property(lambda self: _FakeResolver(jobs, task_type, task_id)))
    return strategy


@pytest.mark.parametrize(
    "jobs, task_type, task_id, chief, is_chief",
    [
        ({"worker": ["a:1", "b:1"]}, "worker", 0, "worker-0", True),
        ({"worker": ["a:1", "b:1"]}, "worker", 1, "worker-0", False),
        ({"chief": ["c:1"], "worker": ["a:1"]}, "worker", 0, "chief-0", False),
        ({"chief": ["c:1"], "worker": ["a:1"]}, "chief", 0, "chief-0", True),
    ],
)
def test_worker_roles_and_output_dirs(monkeypatch, jobs, task_type, task_id, chief, is_chief):
    from seat_tf import distribute, keras_compat

    strategy = _fake_multi_worker(monkeypatch, jobs, task_type, task_id)
    assert keras_compat.worker_role(strategy) == (task_type, task_id, chief)
    info = distribute.worker_info(strategy)
    assert info.is_chief == is_chief and info.num_workers == 2
    expected = "w" if is_chief else os.path.join("w", f"{task_type}-{task_id}")
    assert distribute.output_dir("w", info) == expected


def test_single_process_strategies_have_no_worker_role():
    import tensorflow as tf

    from seat_tf import distribute, keras_compat

    assert keras_compat.worker_role(tf.distribute.get_strategy()) is None
    assert distribute.worker_info(tf.distribute.MirroredStrategy()).is_chief


def _trained_tiny_model(make_tiny_cnn, strategy=None, seed=0):
    import keras
    import tensorflow as tf

    import seat_tf

    with (strategy or tf.distribute.get_strategy()).scope():
        model = seat_tf.FGSMATModel(make_tiny_cnn(seed=seed), epsilon=0.05, val_attack=None)
        model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model


def test_backup_writes_per_worker_and_restores_from_the_chief(monkeypatch, tmp_path, make_tiny_cnn, toy_data):
    from seat_tf import keras_compat

    x, y = toy_data
    backup = str(tmp_path / "backup")
    jobs = {"worker": ["a:1", "b:1"]}

    class Stop(Exception):
        pass

    class StopAfterTwoEpochs(keras_compat.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise Stop

    # The chief (worker 0) trains 2 epochs and is interrupted: its backup is in worker-0/.
    strategy = _fake_multi_worker(monkeypatch, jobs, "worker", 0)
    chief_model = _trained_tiny_model(make_tiny_cnn, strategy)
    with pytest.raises(Stop):
        chief_model.fit(x, y, batch_size=32, epochs=5, verbose=0,
                        callbacks=[keras_compat.BackupAndRestore(backup), StopAfterTwoEpochs()])
    assert sorted(os.listdir(backup)) == ["worker-0"]
    assert sorted(os.listdir(os.path.join(backup, "worker-0"))) == ["latest.weights.h5", "training_metadata.json"]

    # Worker 1 (no backup of its own) restarts from the chief's copy: epoch and weights.
    strategy = _fake_multi_worker(monkeypatch, jobs, "worker", 1)
    worker_model = _trained_tiny_model(make_tiny_cnn, strategy, seed=1)
    assert not np.array_equal(worker_model.get_weights()[0], chief_model.get_weights()[0])
    callback = keras_compat.BackupAndRestore(backup)
    callback.set_model(worker_model)
    callback.on_train_begin()
    assert worker_model._initial_epoch == 2
    for a, b in zip(worker_model.get_weights(), chief_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert callback.backup_dir == os.path.join(backup, "worker-1")  # it writes its own folder
    callback.on_epoch_end(2)
    assert sorted(os.listdir(backup)) == ["worker-0", "worker-1"]


def test_backup_on_one_worker_is_keras_layout_and_resumes(tmp_path, make_tiny_cnn, toy_data):
    from seat_tf import keras_compat

    x, y = toy_data
    backup = str(tmp_path / "backup")

    class Stop(Exception):
        pass

    class StopAtEpoch(keras_compat.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise Stop

    model = _trained_tiny_model(make_tiny_cnn)
    with pytest.raises(Stop):
        model.fit(x, y, batch_size=32, epochs=4, verbose=0, callbacks=[keras_compat.BackupAndRestore(backup), StopAtEpoch()])
    assert sorted(os.listdir(backup)) == ["latest.weights.h5", "training_metadata.json"]  # no temp files left
    resumed = _trained_tiny_model(make_tiny_cnn)
    history = resumed.fit(x, y, batch_size=32, epochs=4, verbose=0, callbacks=[keras_compat.BackupAndRestore(backup)])
    assert len(history.history["loss"]) == 2  # epochs 3 and 4 only
    assert int(resumed.optimizer.iterations) == 4 * 3
    assert not os.path.exists(backup)


# -- strategy and TF_CONFIG errors ----------------------------------------------------------


@pytest.mark.parametrize(
    "tf_config, message",
    [
        (None, "needs the TF_CONFIG"),
        ("{not json", "not valid JSON"),
        ('{"cluster": {"worker": ["a:1"]}}', '"task" dict'),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "not a member"),
    ],
)
def test_multi_worker_without_a_valid_tf_config_raises(monkeypatch, tf_config, message):
    from seat_tf import distribute

    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=message):
        distribute.make_strategy("multi_worker")


def test_unknown_strategy_and_missing_tpu_raise():
    from seat_tf import distribute

    with pytest.raises(ValueError, match="Unknown strategy"):
        distribute.make_strategy("horovod")
    with pytest.raises(ValueError, match="no TPU found"):
        distribute.make_strategy("tpu")


def test_cli_multi_worker_without_tf_config_fails_before_writing(tmp_path):
    workdir = str(tmp_path / "never")
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    result = subprocess.run(
        [sys.executable, "-m", "seat_tf.cli", "train", "--strategy=multi_worker",
         "--config=configs/fashion_mnist_seat.py:smoke", f"--workdir={workdir}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=dict(env, **QUIET))
    assert result.returncode != 0 and "needs the TF_CONFIG" in result.stderr
    assert not os.path.exists(workdir)


# -- the cluster docs stay runnable ---------------------------------------------------------


def test_tfjob_manifest_runs_the_multi_worker_train_command():
    import yaml

    manifest = yaml.safe_load(open(os.path.join(ROOT, "docs", "tfjob.yaml")))
    assert manifest["apiVersion"] == "kubeflow.org/v1" and manifest["kind"] == "TFJob"
    workers = manifest["spec"]["tfReplicaSpecs"]["Worker"]
    assert workers["replicas"] >= 2 and workers["restartPolicy"] == "OnFailure"
    container = workers["template"]["spec"]["containers"][0]
    assert container["name"] == "tensorflow"  # the operator's required name
    command = container["command"]
    assert command[:2] == ["seat-tf", "train"] and "--strategy=multi_worker" in command
    config = next(arg.split("=", 1)[1] for arg in command if arg.startswith("--config="))
    assert os.path.exists(os.path.join(ROOT, config))
    workdir = next(arg.split("=", 1)[1] for arg in command if arg.startswith("--workdir="))
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert any(workdir.startswith(m + "/") for m in mounts)  # the workdir is on the shared volume


def test_tf_config_examples_in_the_docs_are_valid(monkeypatch):
    import re

    from seat_tf import distribute

    text = open(os.path.join(ROOT, "docs", "distributed.md")).read()
    examples = re.findall(r"export TF_CONFIG='(.*?)'", text)
    assert len(examples) == 2
    clusters = []
    for example in examples:
        monkeypatch.setenv("TF_CONFIG", example)
        clusters.append(distribute._tf_config_cluster())
    assert clusters[0] == clusters[1]  # same cluster everywhere, only the task differs
    assert sorted(json.loads(e)["task"]["index"] for e in examples) == [0, 1]


# -- the benchmark runs end to end ----------------------------------------------------------


@pytest.mark.slow
def test_distribute_speed_benchmark_writes_ratios_and_plot(tmp_path):
    out = str(tmp_path / "bench")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.distribute_speed", f"--out={out}", "--steps=1", "--rounds=1",
         "--batch_sizes=16", "--variants=float32,mirrored,xla"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=dict(os.environ, **QUIET))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.load(open(os.path.join(out, "distribute_speed.json")))
    assert report["results"]["16"]["mirrored"]["replicas"] == 2  # two logical CPU devices
    assert report["results"]["16"]["float32"]["replicas"] == 1
    ratios = report["ratios_to_float32"]["16"]
    assert ratios["float32"] == 1.0 and set(ratios) == {"float32", "mirrored", "xla"}
    assert all(value > 0 for value in ratios.values())
    assert os.path.getsize(os.path.join(out, "distribute_speed.png")) > 1000


# -- SEAT's |batch mean| attack under MirroredStrategy uses the global batch's sign -----------


def _batch_attack_job():
    """Two logical CPUs. SEAT's reduction="batch" attack, once on one device and once split
    over two replicas, on a batch whose halves have linearity residuals of opposite mean sign
    (a clean-loss offset per example; any clean pass is an input of perturb). Returns the max
    difference of the adversarial images and the per-half residual means."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    import seat_tf
    from seat_tf import losses
    from seat_tf.training.base import CleanPass
    from tests.conftest import linear_classifier

    rng = np.random.default_rng(5)
    W, b = rng.normal(size=(16, 3)) * 2.0, np.zeros(3)
    x = rng.uniform(0.3, 0.7, (8, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, 8).astype(np.int32)
    offset = np.array([-3.0] * 4 + [1.0] * 4, np.float32)  # half 0: residuals > 0, half 1: < 0

    def build():
        model = seat_tf.SEATModel.from_preset("default", linear_classifier(W, b, (4, 4, 1)), epsilon=0.1, lam=5.0, reduction="batch",
                                  rel_step_size=2.0, val_attack=None, seed=3)
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        return model

    def attack(model, x_r, y_r, offset_r):
        x_r = tf.convert_to_tensor(x_r)
        with tf.GradientTape() as tape:
            tape.watch(x_r)
            logits = model.classify(x_r, training=True)
            loss = losses.cross_entropy(y_r, logits)
        clean = CleanPass(logits, loss + offset_r, tape.gradient(loss, x_r))
        x_adv = model.perturb(x_r, y_r, tf.constant(0.1), clean)
        start_residual = losses.linearity_residual(losses.cross_entropy(y_r, model.classify(x_adv, training=True)),
                                                   clean.loss, x_adv - x_r, clean.grad)
        return x_adv, start_residual

    single_adv, residual = attack(build(), x, y, offset)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = build()

    def part(context, array):
        i = context.replica_id_in_sync_group
        return tf.constant(array[i * 4:(i + 1) * 4])

    inputs = [strategy.experimental_distribute_values_from_function(lambda c, a=a: part(c, a)) for a in (x, y, offset)]
    results = strategy.run(lambda *args: attack(model, *args)[0], args=tuple(inputs))
    mirrored_adv = np.concatenate([t.numpy() for t in strategy.experimental_local_results(results)])
    residual = residual.numpy()
    return dict(max_diff=float(np.abs(mirrored_adv - single_adv.numpy()).max()),
                half_means=[float(residual[:4].mean()), float(residual[4:].mean())])


def test_batch_reduction_attack_takes_the_global_batch_sign_under_two_replicas():
    result = _run_job("batch_attack")
    # The halves' residual means (at the adversarial points) differ in sign, so a replica-local
    # sign moves some pixels the other way (0.2 = two steps of eps apart under the old code).
    assert result["half_means"][0] * result["half_means"][1] < 0, result
    assert result["max_diff"] < 1e-6, result


# -- seat_tf.evaluate / seat-tf evaluate under MirroredStrategy == one device ----------------

EVAL_ATTACKS = ["pgd10", "apgd-ce10", "apgd-ce5+apgd-t3+square30"]  # random starts, APGD-T's loop, Square's


def _eval_problem(tf):
    """A random 5-class CNN and 49 images in batches of 16 (the last batch of 1 leaves one
    replica empty; the examples still correct split unevenly); labels are the model's own
    predictions, every 7th changed, so some examples are wrong clean and attacks fool part."""
    from tests.conftest import tiny_cnn

    model = tiny_cnn(input_shape=(8, 8, 1), num_classes=5)
    x = np.random.default_rng(0).uniform(0, 1, (49, 8, 8, 1)).astype(np.float32)
    y = np.argmax(model.predict(x, verbose=0), -1).astype(np.int32)
    y[::7] = (y[::7] + 1) % 5
    return model, x, y, tf.data.Dataset.from_tensor_slices((x, y)).batch(16)


def _evaluate_mirrored_job():
    """Two logical CPUs. seat_tf.evaluate on one device and under MirroredStrategy: the
    results, and per attack (per composite stage) the number of examples whose correctness
    differs and the largest difference of an example's perturbation norm (it depends on the
    random start even where the outcome does not), read from the checkpoint folders;
    control: PGD with another seed."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import tempfile

    import seat_tf
    from tests.conftest import without_keys

    model, _, _, dataset = _eval_problem(tf)
    base = tempfile.mkdtemp()

    def run(name, strategy=None, seed=3, attacks=EVAL_ATTACKS):
        folder = os.path.join(base, name)
        result = seat_tf.evaluate(model, dataset, attacks=attacks, eps=0.05, seed=seed, verbose=0, sanity=False,
                                  strategy=strategy, checkpoint_dir=folder)
        saved = {f: dict(np.load(os.path.join(folder, f))) for f in os.listdir(folder) if f.endswith(".npz")}
        return without_keys(result), saved

    def differences(a, b):
        return dict(examples=int((a["correct"] != b["correct"]).sum()),
                    max_l2=float(np.nanmax(np.abs(a["l2"] - b["l2"]))),
                    same_nans=bool(np.array_equal(np.isnan(a["l2"]), np.isnan(b["l2"]))))

    single, single_saved = run("single")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    mirrored, mirrored_saved = run("mirrored", strategy)
    _, other_seed = run("other_seed", seed=4, attacks=["pgd10"])
    pgd10 = [name for name in single_saved if name.startswith("pgd10-")][0]
    return dict(replicas=strategy.num_replicas_in_sync, same_result=single == mirrored,
                accuracies={k: v["robust_accuracy"] for k, v in single["attacks"].items()},
                clean_accuracy=single["clean_accuracy"], files=sorted(single_saved) == sorted(mirrored_saved),
                differing={name: differences(single_saved[name], mirrored_saved[name]) for name in single_saved},
                other_seed_differing=differences(list(other_seed.values())[0], single_saved[pgd10]))


@pytest.mark.slow
def test_mirrored_evaluation_equals_single_device_per_example():
    result = _run_job("evaluate_mirrored")
    assert result["replicas"] == 2 and result["files"], result
    assert len(result["differing"]) == 5, result  # pgd10, apgd-ce10 and the composite's three stages
    for difference in result["differing"].values():
        assert difference["examples"] == 0 and difference["same_nans"] and difference["max_l2"] < 1e-5, result
    assert result["same_result"], result
    # Not vacuous: the attacks fool some examples but not all, and the random starts matter.
    assert all(0.1 < acc < result["clean_accuracy"] for acc in result["accuracies"].values()), result
    assert result["other_seed_differing"]["max_l2"] > 1e-2, result


def _cli_on_two_cpus(args):
    """`seat-tf <args>` with two logical CPUs, which --strategy=mirrored then uses."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from seat_tf import cli, distribute

    make_strategy = distribute.make_strategy
    distribute.make_strategy = lambda name="default", tpu=None, devices=None: make_strategy(
        name, tpu, devices or (["/cpu:0", "/cpu:1"] if name == "mirrored" else None))
    sys.argv = ["seat-tf"] + args
    cli.run()


@pytest.mark.slow
def test_evaluate_command_under_mirrored_and_multi_worker_strategies_writes_the_single_device_report(tmp_path):
    """seat-tf evaluate on one device, with --strategy=mirrored on two logical CPUs, and with
    --strategy=multi_worker as two workers on localhost (TF_CONFIG): the same report."""
    import tensorflow as tf

    from tests.conftest import without_keys

    model, x, y, _ = _eval_problem(tf)
    model_path, data_path = str(tmp_path / "model.keras"), str(tmp_path / "data.npz")
    model.save(model_path)
    images = np.round(x * 255).astype(np.uint8)[..., 0]
    y = np.argmax(model.predict(images[..., None] / 255.0, verbose=0), -1)  # labels for the images as stored
    y[::7] = (y[::7] + 1) % 5
    np.savez(data_path, x_train=images, y_train=y, x_test=images, y_test=y)
    common = ["evaluate", f"--model={model_path}", f"--dataset={data_path}", "--eps=0.05", "--batch_size=16",
              "--verbose=2", "--attacks=pgd10,apgd-ce5+apgd-t3+square30", "--sanity_limit=8", "--sweep_eps=0.05",
              "--sweep_limit=16"]
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    runs = {"multi_worker": []}
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        runs["multi_worker"].append(subprocess.Popen(
            [sys.executable, "-m", "seat_tf.cli", *common, "--strategy=multi_worker", f"--workdir={tmp_path / 'multi'}"],
            cwd=ROOT, env=dict(os.environ, **QUIET, TF_CONFIG=tf_config), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    for worker in runs["multi_worker"]:
        output = worker.communicate(timeout=900)[0]
        assert worker.returncode == 0, output[-3000:]
        assert "Evaluating on 2 replicas (--strategy=multi_worker)" in output
    command = {"mirrored": [sys.executable, os.path.abspath(__file__), "cli_two_cpus", *common, "--strategy=mirrored"],
               "single": [sys.executable, "-m", "seat_tf.cli", *common]}
    for name in ("mirrored", "single"):
        runs[name] = subprocess.run(command[name] + [f"--workdir={tmp_path / name}"], capture_output=True, text=True,
                                    cwd=ROOT, env=dict(os.environ, **QUIET), timeout=900)
        assert runs[name].returncode == 0, runs[name].stderr[-3000:]
    assert "Evaluating on 2 replicas (--strategy=mirrored)" in runs["mirrored"].stdout
    reports = {name: without_keys(json.load(open(tmp_path / name / "report.json")))
               for name in ("multi", "mirrored", "single")}
    assert reports["multi"] == reports["single"] and reports["mirrored"] == reports["single"]
    assert 0 < reports["single"]["attacks"]["pgd10"]["robust_accuracy"] < reports["single"]["clean_accuracy"]
    # The second worker wrote only below its own folder.
    assert os.path.exists(tmp_path / "multi" / "worker-1" / "report.json")


JOBS = {"mirrored": _mirrored_job, "batch_attack": _batch_attack_job, "evaluate_mirrored": _evaluate_mirrored_job}

if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    if sys.argv[1] == "cli_two_cpus":
        _cli_on_two_cpus(sys.argv[2:])
    else:
        print(json.dumps(JOBS[sys.argv[1]]()))
