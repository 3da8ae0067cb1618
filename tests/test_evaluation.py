"""seat_tf.evaluate: attack orderings on a small trained model, composites, determinism,
sanity checks that catch masked gradients and broken attacks, reports and the CLI."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import seat_tf
from seat_tf import evaluation
from tests.conftest import linear_classifier, without_keys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = 0.1  # the trained toy model below keeps about half its accuracy under PGD at this radius


def _toy(n=240, seed=0, classes=5):
    """Class k brightens rows k+1..k+2 of an 8x8 image (x float32 [n, 8, 8, 1], y int32 [n])."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n).astype(np.int32)
    x = rng.uniform(0, 0.4, (n, 8, 8, 1)).astype(np.float32)
    for k in range(classes):
        x[y == k, k + 1 : k + 3, 1:7, 0] += 0.35
    return np.clip(x, 0, 1), y


def _train(x, y, quantize=False):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = inputs
    if quantize:  # a non-differentiable input quantization: gradients are exactly zero
        h = keras.layers.Lambda(lambda t: tf.stop_gradient(tf.round(t * 4) / 4))(h)
    h = keras.layers.Conv2D(8, 3, activation="relu", padding="same")(h)
    h = keras.layers.Dense(32, activation="relu")(keras.layers.Flatten()(h))
    model = keras.Model(inputs, keras.layers.Dense(5)(h))
    model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=30, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def trained():
    x, y = _toy()
    return _train(x, y), tf.data.Dataset.from_tensor_slices((x, y)).batch(120)


def _accuracies(result):
    return {name: entry["robust_accuracy"] for name, entry in result["attacks"].items()}


def _tolerance(result, a, b):
    n = min(result["attacks"][a]["num_examples"], result["attacks"][b]["num_examples"])
    acc = _accuracies(result)
    return evaluation.noise_tolerance(acc[a], acc[b], n)


def test_attack_orderings_on_a_trained_model(trained):
    model, dataset = trained
    composite = "apgd-ce20+apgd-t20+fab-t20+square200"  # square200 runs only inside the composite
    result = seat_tf.evaluate(
        model, dataset, attacks=["fgsm", "pgd20", "apgd-ce20", "apgd-t20", "fab-t20", "targeted_pgd20", composite],
        eps=EPS, verbose=0, sanity_limit=120,
    )
    acc = _accuracies(result)
    assert result["clean_accuracy"] > 0.95 and 0.1 < acc["pgd20"] < 0.9  # the orderings below are not vacuous
    assert acc["pgd20"] <= acc["fgsm"] + _tolerance(result, "pgd20", "fgsm")
    assert acc["apgd-ce20"] <= acc["pgd20"] + _tolerance(result, "apgd-ce20", "pgd20")
    assert acc["targeted_pgd20"] >= acc["pgd20"] - _tolerance(result, "targeted_pgd20", "pgd20")
    for member in ("apgd-ce20", "apgd-t20"):
        assert acc[composite] <= acc[member] + _tolerance(result, composite, member)
    # FAB-T is deterministic and per example (one restart): alone or as a stage, it breaks the same.
    assert acc[composite] <= acc["fab-t20"]
    stages = [s["robust_accuracy"] for s in result["attacks"][composite]["stages"]]
    assert stages == sorted(stages, reverse=True) and stages[-1] == acc[composite]
    assert result["worst_case_accuracy"] <= min(acc.values())
    # A sound model and sound attacks raise no false alarm.
    assert result["sanity_passed"], result["sanity_checks"]
    assert {"within_budget", "pgd_not_weaker_than_fgsm", "more_iterations_not_weaker",
            "large_eps_accuracy_near_zero", "black_box_not_stronger"} <= set(result["sanity_checks"])
    assert all(entry["max_linf"] <= EPS + 1e-5 for entry in result["attacks"].values())


def test_composite_of_attacks_already_run_is_their_conjunction(trained):
    model, dataset = trained
    result = seat_tf.evaluate(model, dataset, attacks=["fgsm", "pgd5", "fgsm+pgd5"], eps=EPS, verbose=0, sanity=False)
    entry = result["attacks"]["fgsm+pgd5"]
    assert entry["derived_from"] == ["fgsm", "pgd5"]
    assert entry["robust_accuracy"] == result["worst_case_accuracy"]
    assert entry["stages"][0]["robust_accuracy"] == result["attacks"]["fgsm"]["robust_accuracy"]
    assert entry["robust_accuracy"] <= min(result["attacks"][k]["robust_accuracy"] for k in ("fgsm", "pgd5"))


class _Vertex:
    """An exact attack on a binary linear classifier: its margin z_y - z_other is linear, so the
    vertex x + eps * sign(w_other - w_y) of the eps-ball minimizes it. side="low" / "high"
    attacks only the examples whose first pixel is below / not below 0.5 (the others come back
    unchanged); helpful=True steps toward the label instead (a broken attack that helps)."""

    def __init__(self, w, name, side=None, helpful=False):
        self.toward_1 = tf.constant(np.sign(w[:, 1] - w[:, 0]).reshape(1, 4, 4, 1), tf.float32)
        self.name, self.side, self.helpful = name, side, helpful

    def __call__(self, model_fn, x, y, eps, seed=None):
        away = tf.where(tf.equal(y, 0), 1.0, -1.0)[:, None, None, None] * self.toward_1
        moved = tf.clip_by_value(x + eps * (-away if self.helpful else away), 0.0, 1.0)
        if self.side is None:
            return moved
        low = x[:, 0, 0, 0] < 0.5
        chosen = low if self.side == "low" else ~low
        return tf.where(chosen[:, None, None, None], moved, x)


@pytest.fixture(scope="module")
def linear_binary():
    """A binary linear classifier on 4x4 images in [0.2, 0.8] (so x +- 0.1 never clips), a
    quarter of the labels wrong, and the closed form of every example's margin."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(16, 2))
    b = -0.5 * w.sum(0)  # centred: both classes predicted
    x = rng.uniform(0.2, 0.8, (80, 4, 4, 1)).astype(np.float32)
    z = x.reshape(80, -1).astype(np.float64) @ w + b
    y = z.argmax(1)
    y[::4] = 1 - y[::4]
    margin = z[np.arange(80), y] - z[np.arange(80), 1 - y]  # > 0: correct
    slope = np.abs(w[:, 1] - w[:, 0]).sum()  # the vertex lowers the margin by eps * slope
    model = linear_classifier(w, b, (4, 4, 1))
    dataset = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32))).batch(32)  # 32, 32, 16
    return model, dataset, w, x, margin, slope


def test_robust_accuracy_is_the_per_example_worst_case_over_attacks(linear_binary):
    """Two exact attacks that each break a different part of the examples: each one's robust
    accuracy, the worst case over attacks (per example: robust only if no attack breaks it)
    and the composite (run stage by stage, or derived from its members) against the closed
    form; examples wrong on the clean image never count as robust, even under an attack
    that would fix them."""
    model, dataset, w, x, margin, slope = linear_binary
    eps = 0.05
    assert np.abs(margin).min() > 1e-3 and np.abs(margin - eps * slope).min() > 1e-3  # no ties to round
    clean = margin > 0
    broken = clean & (margin < eps * slope)
    low = x[:, 0, 0, 0] < 0.5
    robust_low, robust_high, worst = clean & ~(broken & low), clean & ~(broken & ~low), clean & ~broken
    assert 0.6 < clean.mean() < 0.9 and (broken & low).any() and (broken & ~low).any()
    low_attack, high_attack = _Vertex(w, "low", side="low"), _Vertex(w, "high", side="high")
    composite = seat_tf.attacks.Composite((low_attack, high_attack), name="low+high")
    result = seat_tf.evaluate(model, dataset, attacks=[low_attack, high_attack, _Vertex(w, "helpful", helpful=True),
                                                       composite], eps=eps, verbose=0, sanity=False)
    acc = _accuracies(result)
    assert result["clean_accuracy"] == pytest.approx(clean.mean())
    assert acc["low"] == pytest.approx(robust_low.mean()) and acc["high"] == pytest.approx(robust_high.mean())
    assert acc["helpful"] == pytest.approx(clean.mean())
    assert result["worst_case_accuracy"] == pytest.approx(worst.mean()) and result["worst_case_num_examples"] == 80
    entry = result["attacks"]["low+high"]
    assert entry["derived_from"] == ["low", "high"] and entry["robust_accuracy"] == pytest.approx(worst.mean())
    assert [s["robust_accuracy"] for s in entry["stages"]] == pytest.approx([robust_low.mean(), worst.mean()])
    # Run stage by stage: the second member attacks only what the first left, fooled stays fooled.
    alone = seat_tf.evaluate(model, dataset, attacks=[composite], eps=eps, verbose=0, sanity=False)
    stages = alone["attacks"]["low+high"]["stages"]
    assert [s["robust_accuracy"] for s in stages] == pytest.approx([robust_low.mean(), worst.mean()])


def test_eps_sweep_is_the_closed_form_accuracy_at_each_eps(linear_binary):
    """The sweep's accuracy at each eps: correct examples whose margin exceeds eps * |w_1 - w_0|_1."""
    model, dataset, w, x, margin, slope = linear_binary
    sweep_eps = [0.1, 0.0, 0.02, 0.05]  # unsorted on purpose
    assert min(np.abs(margin - eps * slope).min() for eps in sweep_eps) > 1e-3  # no ties to round
    result = seat_tf.evaluate(model, dataset, attacks=[_Vertex(w, "vertex")], eps=0.05, verbose=0, sanity=False,
                              sweep_eps=sweep_eps, sweep_limit=64)
    sweep = result["sweep"]
    assert sweep["eps"] == sorted(sweep_eps) and sweep["num_examples"] == 64
    expected = [np.mean((margin > eps * slope)[:64]) for eps in sorted(sweep_eps)]
    assert len(set(expected)) == 4  # every eps gives its own accuracy
    assert sweep["accuracy"]["vertex"] == pytest.approx(expected)
    assert sweep["clean_accuracy"] == pytest.approx(np.mean(margin[:64] > 0))


def test_report_table_shows_the_per_example_worst_case():
    """Hand-made result: attacks a and b each fool half of four examples, different halves,
    so the worst case over them is 0.0 while neither attack goes below 0.5."""
    result = {"num_examples": 4, "clean_accuracy": 1.0, "eps": 0.1, "seed": 0, "worst_case_accuracy": 0.0,
              "attacks": {name: {"robust_accuracy": 0.5, "seconds": 1.0, "num_examples": 4, "clean_accuracy": 1.0}
                          for name in ("a", "b")}}
    table = evaluation.format_table(result).splitlines()
    assert table[-1] == "| worst case | 4 | | 0.0000 | |"
    assert "| a | 4 | 1.0000 | 0.5000 | 1.0 |" in table
    assert "| 100.00 | 50.00 | 50.00 |" in evaluation.format_report(result)


def test_same_seed_gives_identical_results(trained):
    model, dataset = trained
    attacks = ["pgd5x2", "apgd-ce10", "apgd-t5", "square100", "targeted_pgd5", "deepfool@40"]

    def run(seed):
        result = seat_tf.evaluate(model, dataset, attacks=attacks, eps=EPS, seed=seed, verbose=0, sanity=False)
        for entry in list(result["attacks"].values()) + list(result["minimal_perturbation"].values()):
            entry.pop("seconds")
            for stage in entry.get("stages", []):
                stage.pop("seconds")
        return result

    assert run(3) == run(3)


def test_masked_gradients_are_flagged(tmp_path):
    x, y = _toy(n=200)
    model = _train(x, y, quantize=True)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(100)
    result = seat_tf.evaluate(model, dataset, attacks=["fgsm", "pgd20", "square300"], eps=0.15, verbose=0,
                              sanity_limit=100)
    acc = _accuracies(result)
    # Zero gradients: FGSM and PGD do nothing, the score-based Square attack is unaffected.
    assert acc["fgsm"] == result["clean_accuracy"] and acc["pgd20"] > 0.8
    assert acc["square300"] < acc["pgd20"] - 0.3
    checks = result["sanity_checks"]
    assert checks["black_box_not_stronger"]["passed"] is False
    assert checks["large_eps_accuracy_near_zero"]["passed"] is False
    assert not result["sanity_passed"]
    evaluation.write_report(result, str(tmp_path))
    report = open(tmp_path / "report.md").read()
    assert "**FAIL** `black_box_not_stronger`" in report and "WARNING" in report


class _OverBudget:
    """A broken attack: steps twice as far as allowed."""

    name = "over_budget"

    def __call__(self, model_fn, x, y, eps, seed=None):
        return tf.clip_by_value(x + 2 * eps, 0.0, 1.0)


def test_attacks_leaving_the_threat_model_are_flagged(trained):
    model, dataset = trained
    result = seat_tf.evaluate(model, dataset, attacks=["fgsm", _OverBudget()], eps=0.05, verbose=0, sanity_limit=60)
    check = result["sanity_checks"]["within_budget"]
    assert check["passed"] is False and "over_budget" in check["detail"]
    assert result["attacks"]["over_budget"]["max_linf"] == pytest.approx(0.1, abs=1e-5)


def test_any_keras_classifier_and_the_adversarial_wrapper_agree(trained):
    model, dataset = trained
    wrapped = seat_tf.SEATModel(model, epsilon=EPS)
    kwargs = dict(attacks=["fgsm", "pgd5"], eps=EPS, verbose=0, sanity=False)
    plain, ours = seat_tf.evaluate(model, dataset, **kwargs), seat_tf.evaluate(wrapped, dataset, **kwargs)
    assert _accuracies(plain) == _accuracies(ours)
    assert plain["clean_accuracy"] == ours["clean_accuracy"]


def test_subsets_limits_and_bad_input(trained):
    model, dataset = trained
    result = seat_tf.evaluate(model, dataset, attacks=["fgsm", "pgd5@50", "deepfool@30"], eps=EPS, verbose=0,
                              limit=200, sanity=False)
    assert result["num_examples"] == 200
    assert result["attacks"]["fgsm"]["num_examples"] == 200 and result["attacks"]["pgd5"]["num_examples"] == 50
    assert result["worst_case_num_examples"] == 50
    deepfool = result["minimal_perturbation"]["deepfool"]
    assert deepfool["num_examples"] == 30 and deepfool["fooling_rate"] == 1.0 and deepfool["median_l2"] > 0
    for bad, message in [(dict(attacks=["pgd5@x"]), "name@N"), (dict(attacks=["pgd5", "pgd5"]), "twice"),
                         (dict(attacks=["pgd"]), "Unknown attack"), (dict(eps=8), "eps")]:
        kwargs = dict(attacks=["fgsm"], eps=EPS, verbose=0)
        kwargs.update(bad)
        with pytest.raises(ValueError, match=message):
            seat_tf.evaluate(model, dataset, **kwargs)


def test_report_files_with_eps_sweep(trained, tmp_path):
    model, dataset = trained
    result = seat_tf.evaluate(model, dataset, attacks=["fgsm", "pgd5"], eps=EPS, verbose=0, sanity_limit=60,
                              sweep_eps=[0.0, 0.05, 0.1, 0.3], sweep_limit=100)
    sweep = result["sweep"]
    assert sweep["num_examples"] == 100 and sweep["eps"] == [0.0, 0.05, 0.1, 0.3]
    for accuracy in sweep["accuracy"].values():
        assert accuracy[0] == sweep["clean_accuracy"] and accuracy[-1] < accuracy[0]
    paths = evaluation.write_report(result, str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path / "out")) == ["report.json", "report.md", "robust_accuracy_vs_eps.png"]
    assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    saved = json.load(open(paths["json"]))
    assert saved["attacks"]["pgd5"]["robust_accuracy"] == result["attacks"]["pgd5"]["robust_accuracy"]
    report = open(paths["md"]).read()
    for section in ("## Robust accuracy", "## Sanity checks", "robust_accuracy_vs_eps.png", "| pgd5 |"):
        assert section in report


def test_evaluate_command_writes_the_report(cli, trained, tmp_path):
    model, _ = trained
    model_path = str(tmp_path / "toy.keras")
    model.save(model_path)
    x, y = _toy(n=64, seed=1)
    data_path = str(tmp_path / "toy.npz")
    np.savez(data_path, x_train=(x * 255).astype(np.uint8), y_train=y, x_test=(x * 255).astype(np.uint8), y_test=y)
    workdir = str(tmp_path / "eval")
    common = [f"--model={model_path}", f"--dataset={data_path}", "--eps=0.1", f"--workdir={workdir}", "--verbose=0"]
    bad = cli("evaluate", *common, "--attacks=fgsm,pgd")
    assert bad.returncode != 0 and "Unknown attack" in bad.stderr and not os.path.exists(workdir)
    result = cli("evaluate", *common, "--attacks=fgsm,pgd5,square50@32", "--sweep_eps=0,0.1",
                  "--sweep_limit=32", "--sanity_limit=32")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(workdir)) == ["attack_results", "report.json", "report.md", "robust_accuracy_vs_eps.png"]
    report = json.load(open(os.path.join(workdir, "report.json")))
    assert report["num_examples"] == 64 and report["attacks"]["square50"]["num_examples"] == 32
    assert "Sanity checks:" in result.stdout
    saved = os.listdir(os.path.join(workdir, "attack_results"))
    assert any(name.startswith("pgd5-") for name in saved) and any(name.startswith("fgsm-") for name in saved)
    # --overwrite: the earlier run's attacks are neither loaded nor kept.
    again = cli("evaluate", *common, "--attacks=fgsm", "--sweep_eps=0.1", "--sweep_limit=8", "--sanity_limit=8",
                "--overwrite")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "loaded" not in json.load(open(os.path.join(workdir, "report.json")))["attacks"]["fgsm"]
    assert not any(name.startswith("pgd5-") for name in os.listdir(os.path.join(workdir, "attack_results")))


def test_evaluation_hides_only_its_own_intended_traces(make_tiny_cnn):
    """The evaluation traces one tf.function per attack on purpose; TF's "retracing" warning
    about that is dropped while it runs, and a user's own retracing is still reported after."""
    import logging

    import seat_tf

    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect()
    tf_logger = logging.getLogger("tensorflow")
    tf_logger.addHandler(handler)
    try:
        x = np.random.default_rng(0).uniform(size=(32, 8, 8, 1)).astype(np.float32)
        dataset = tf.data.Dataset.from_tensor_slices((x, np.arange(32) % 3)).batch(16)
        seat_tf.evaluate(make_tiny_cnn(), dataset, attacks=["fgsm", "pgd2", "pgd3", "mifgsm2", "apgd-ce5", "cw3"],
                         eps=0.1, verbose=0, sanity=False)
        assert not any("retracing" in m for m in messages), messages
        for i in range(8):  # the user's own function, traced anew each time
            tf.function(lambda a: a * 2)(tf.constant(float(i)))
        assert any("retracing" in m for m in messages)
    finally:
        tf_logger.removeHandler(handler)


def _attacked(monkeypatch):
    """The (attack, stage) pairs the runner attacks from now on (loaded ones are not)."""
    from seat_tf.evaluation import runner

    attacked = []
    original = runner.Runner._attack_stage

    def attack_stage(self, entry, stage, *args):
        attacked.append((entry.key, stage))
        return original(self, entry, stage, *args)

    monkeypatch.setattr(runner.Runner, "_attack_stage", attack_stage)
    return attacked


def test_finished_attacks_are_loaded_not_attacked_again(trained, tmp_path, monkeypatch, capsys):
    model, dataset = trained
    attacked = _attacked(monkeypatch)
    attacks = ["pgd3", "pgd3+cw2"]
    kwargs = dict(eps=EPS, verbose=1, sanity=False, checkpoint_dir=str(tmp_path / "checkpoints"))
    first = seat_tf.evaluate(model, dataset, attacks=attacks, **kwargs)
    # The composite's first stage is pgd3 on the same examples with the same seeds: loaded.
    assert attacked == [("pgd3", 0), ("pgd3+cw2", 1)]
    shown = capsys.readouterr().out
    # One progress line per attack and stage, each over a known number of batches (so with an ETA).
    clean = round(first["clean_accuracy"] * 240)
    assert f"[1/2] pgd3 (eps {EPS:g}): {clean} examples" in shown
    assert "[2/2] pgd3+cw2 stage 1/2 pgd3 (eps 0.1): finished before" in shown
    assert "[2/2] pgd3+cw2 stage 2/2 cw2 (eps 0.1): " in shown and "2/2" in shown
    # Loaded results are the ones computed: the same composite without a checkpoint folder.
    fresh = seat_tf.evaluate(model, dataset, attacks=["pgd3+cw2"], eps=EPS, verbose=0, sanity=False)
    assert without_keys(fresh["attacks"]) == without_keys({"pgd3+cw2": first["attacks"]["pgd3+cw2"]})
    attacked.clear()
    again = seat_tf.evaluate(model, dataset, attacks=attacks + ["fgsm"], **kwargs)
    assert attacked == [("fgsm", 0)]  # only the new attack runs
    assert again["attacks"]["pgd3"]["loaded"] and "loaded" not in again["attacks"]["fgsm"]
    assert without_keys(again["attacks"]) == dict(without_keys(first["attacks"]),
                                                  fgsm=without_keys(again["attacks"]["fgsm"]))


def test_a_changed_model_data_attack_eps_seed_or_limit_is_attacked_again(trained, tmp_path, monkeypatch):
    model, dataset = trained
    attacked = _attacked(monkeypatch)
    folder = str(tmp_path / "checkpoints")

    def attacks_run(attack="pgd2", changed_model=model, data=dataset, **changes):
        attacked.clear()
        kwargs = dict(eps=EPS, seed=0, verbose=0, sanity=False, checkpoint_dir=folder)
        seat_tf.evaluate(changed_model, data, attacks=[attack], **dict(kwargs, **changes))
        return len(attacked)

    assert attacks_run() == 1 and attacks_run() == 0
    weights = model.get_weights()
    weights[-1] = weights[-1] + 1e-3
    other_model = keras.models.clone_model(model)
    other_model.set_weights(weights)
    x, y = _toy()
    changes = [dict(changed_model=other_model), dict(data=tf.data.Dataset.from_tensor_slices((x, y)).batch(100)),
               dict(eps=EPS / 2), dict(seed=1), dict(limit=200),
               dict(attack=seat_tf.attacks.LinfPGD(steps=2, rel_step_size=0.3, name="pgd2"))]
    for change in changes:
        assert attacks_run(**change) == 1, change
        assert attacks_run(**change) == 0, change  # saved under its own key
    # An attack without a stable description (a plain object) is never saved nor loaded.
    assert attacks_run(attack=_OverBudget()) == 1 and attacks_run(attack=_OverBudget()) == 1
    assert not [name for name in os.listdir(folder) if name.startswith("over_budget")]


class _CountTraces:
    """An attack that counts its traces: a Python side effect runs only while tf.function traces."""

    def __init__(self, attack, name):
        self.attack, self.name, self.traces = attack, name, 0

    def __call__(self, *args, **kwargs):
        self.traces += 1
        return self.attack(*args, **kwargs)


def test_runner_traces_each_attack_once_across_batches_eps_and_stages(trained):
    """One trace per attack: batches of correctly classified examples differ in size, the last
    batch is partial, the eps sweep and the composite's later stages (fewer examples) reuse it."""
    from seat_tf import attacks
    from seat_tf.evaluation.runner import Entry, Runner

    model, _ = trained
    x, y = _toy(100, seed=1)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(40)  # 40, 40, 20
    pgd = _CountTraces(attacks.LinfPGD(steps=2), "pgd2")
    fgsm, apgd = _CountTraces(attacks.get_attack("fgsm"), "fgsm"), _CountTraces(attacks.APGD(steps=3), "apgd")
    composite = attacks.Composite((fgsm, apgd), name="fgsm+apgd")
    runner = Runner(model, seed=0)
    entries = [Entry("a", pgd, 0.05), Entry("b", pgd, 0.1), Entry("c", composite, 0.1)]
    for _ in range(2):
        runner.run(dataset, entries)
    assert (pgd.traces, fgsm.traces, apgd.traces) == (1, 1, 1)
    survivors = np.concatenate(entries[2].stage_correct[0])  # the composite's second stage attacked these
    assert 0 < survivors.sum() < len(survivors)
