"""The equal-time-budget config and benchmark: epochs follow the measured step costs, a
smoke run goes through the experiment doorway and rebuilds its report from JSON."""

import glob
import importlib.util
import json
import math
import os

import numpy as np
import pytest

import seat_tf

from benchmarks import budget

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config_module():
    spec = importlib.util.spec_from_file_location("fashion_mnist_budget", os.path.join(ROOT, "configs", "fashion_mnist_budget.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_variant_gets_the_epochs_that_fit_in_pgd10_at_s_budget():
    module = _config_module()
    for variant, (cost, _) in module.VARIANTS.items():
        config = module.get_config(variant)
        assert config.epochs == int(5 / cost + 1e-9), variant
        # The time budget is the same for all: epochs x cost stays within one epoch's cost of 5.
        assert 5 - cost < config.epochs * cost <= 5 + 1e-9, variant
        config.budget_scale = 2.0  # what --config.budget_scale=2 does: epochs follow
        assert config.epochs == int(10 / cost + 1e-9), variant
    assert module.get_config("pgd_at").epochs == 5
    assert module.get_config("pgd_at").method.steps == 10
    with pytest.raises(ValueError, match="Unknown variant"):
        module.get_config("sea")


def test_variants_share_model_data_optimizer_and_eps():
    module = _config_module()
    configs = [module.get_config(v) for v in module.VARIANTS]
    for config in configs:
        assert config.model.to_dict() == configs[0].model.to_dict()
        assert config.dataset.to_dict() == configs[0].dataset.to_dict()
        assert config.optimizer.to_dict() == configs[0].optimizer.to_dict()
        assert config.method.epsilon == 0.2


def test_smoke_run_writes_records_report_and_plot(tmp_path, fake_fmnist_npz):
    out = str(tmp_path / "budget")
    for variant in ("seat", "elle_a"):
        record = budget.run_one(variant, 0.2, 0, out, smoke=True, dataset=fake_fmnist_npz)
        assert record["epochs"] == 1 and len(record["history"]["co_pgd_accuracy"]) == 1
        assert record["train_seconds"] > 0 and record["cumulative_train_seconds"][-1] == record["train_seconds"]
        assert 0 <= record["clean"] <= 1 and record["robust"]
    saved = json.load(open(os.path.join(out, "runs", "seat_eps0.2_s0.json")))
    assert saved["config"]["method"]["name"] == "seat" and saved["variant"] == "seat"

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- budget-table:start -->\nstale\n<!-- budget-table:end -->\nrest\n")
    table = budget.write_report(out, readme=str(readme))
    assert "| seat | 0 | 1 |" in table and "| elle_a | 0 | 1 |" in table
    text = readme.read_text()
    assert "stale" not in text and table.strip() in text and text.endswith("rest\n")
    assert os.path.getsize(os.path.join(out, "budget.png")) > 0
    results = json.load(open(os.path.join(out, "results.json")))
    assert {row["variant"] for row in results["rows"]} == {"seat", "elle_a"}


def test_research_rows_change_the_method_and_keep_the_variant_s_budget():
    from seat_tf import experiment

    config = budget.config_for("seat", 0.1, 1, options={"rel_step_size": 2.0, "lam": 1.0})
    assert config.epochs == budget.config_for("seat", 0.1, 1).epochs and config.seed == 1
    model = experiment.build_model(config, total_steps=10)
    assert (model.variant.rel_step_size, model.lam, model.epsilon) == (2.0, 1.0, 0.1)
    assert budget.run_key(budget.variant_name("seat", "step2"), 0.1, 1) == "seat+step2_eps0.1_s1"
    with pytest.raises(ValueError, match="--label"):
        budget.run_one("seat", 0.1, 1, "unused", options={"lam": 1.0})


def test_summary_groups_seeds_orders_by_robustness_and_diagnoses_the_adversary():
    def run(variant, seed, pgd, epochs=3, equal_epochs=False):
        history = dict(adv_accuracy=[0.5, 0.9], co_fgsm_accuracy=[0.5, 0.7], co_pgd_accuracy=[0.4, pgd],
                       co_linearity_error=[0.3, 0.25])
        return dict(variant=variant, eps=0.2, seed=seed, epochs=epochs, train_seconds=10.0, clean=0.8,
                    robust={"pgd50x10": pgd, "apgd-ce": pgd - 0.01}, co_epoch=None, diverged=False,
                    history=history, equal_epochs=equal_epochs)

    runs = [run("a", 0, 0.3), run("a", 1, 0.5), run("b", 0, 0.45)]
    rows = budget.summarize(runs)
    assert [(r["variant"], r["seeds"]) for r in rows] == [("a", [0, 1]), ("b", [0])]
    assert rows[0]["monitor_pgd10"] == [0.3, 0.5] and rows[0]["train_adv_accuracy"] == [0.9, 0.9]
    assert rows[0]["fgsm_minus_pgd10"] == pytest.approx([0.4, 0.2])
    table = budget.markdown(rows)
    assert table.index("| b |") < table.index("| a |")  # b's PGD-50-10 0.45 beats a's mean 0.40
    assert "0.300 / 0.500" in table
    assert "| 0.2 | a | 3 | 0.90 / 0.90 | 0.70 / 0.70 | 0.30 / 0.50 | 0.40 / 0.20 | 0.25 / 0.25 |" in table
    # Equal epochs: a budget run that trained exactly that many epochs is the table's row too,
    # unless the variant has its own equal-epochs runs.
    rows = budget.summarize(runs + [run("a", 0, 0.2, 3, True), run("c", 0, 0.1, 5, True)])
    equal = {r["variant"]: r["pgd50x10"] for r in rows if r["mode"] == "epochs3"}
    assert equal == {"a": [0.2], "b": [0.45]}
    assert "epochs5" in {r["mode"] for r in rows}
    # A record's caveat is a numbered note under its table, not lost.
    noted = dict(run("b", 0, 0.45), note="seconds not comparable")
    table = budget.markdown(budget.summarize([run("a", 0, 0.3), noted]))
    assert "| b (1) | 0 |" in table and "(1) b, seed 0: seconds not comparable" in table
    assert "| a | 0 |" in table
    # The evaluation's verdict per seed: its worst case and the checks that failed (a masked
    # model's PGD-50-10 must not stand alone); "-" for records from before they were kept.
    masked = dict(run("a", 1, 0.6), worst_case=0.41, failed_checks=["black_box_not_stronger"])
    sound = dict(run("a", 0, 0.5), worst_case=0.48, failed_checks=[])
    table = budget.markdown(budget.summarize([sound, masked, run("b", 0, 0.45)]))
    assert "| no, no | 0.480, checks pass / 0.410, Square beats the gradient attacks |" in table
    assert "| b | 0 | 3 | 10 | 0.800 | 0.450 | 0.440 | no | - |" in table


def test_plain_cnn_study_configs_and_their_identification():
    from benchmarks import plain_cnn
    from seat_tf import experiment

    plain = plain_cnn.config_for("plain", "ncg", 0.3, 10, 1)
    assert (plain.model.mean, plain.model.std) == ((0.0,), (1.0,))
    # The study's recorded variants pin first-layer centring off (they predate it); "centring" is
    # SEATModel's defaults now.
    assert plain.method.to_dict() == dict(name="seat", epsilon=0.3, preset="paper", clean_loss_gradient=False,
                                          first_layer_centring="off")
    assert plain_cnn.config_for("plain", "centring", 0.3, 10, 0).method.to_dict() == dict(
        name="seat", epsilon=0.3, first_layer_centring="auto")
    assert experiment.build_model(plain_cnn.config_for("plain", "centring", 0.3, 10, 0), total_steps=10).get_config()[
        "first_layer_centring"] == seat_tf.SEATModel(seat_tf.models.small_cnn()).first_layer_centring
    assert (plain.epochs, plain.seed, plain.dataset.train_limit) == (10, 1, 30_000)
    assert "mean" not in plain_cnn.config_for("norm", "paper", 0.2, 5, 0).model
    for entry in plain_cnn.STUDY:
        assert plain_cnn.identify(experiment.to_dict(plain_cnn.config_for(*entry))) == entry
    # An option the saved config names and no variant wants (a flood level) matches none.
    flooded = experiment.to_dict(plain_cnn.config_for("plain", "ncg", 0.2, 5, 0))
    flooded["method"]["flood_level"] = 0.1
    with pytest.raises(ValueError, match="No study variant matches"):
        plain_cnn.identify(flooded)
    # One half of the standardization (normalization_gap's split) is neither study CNN.
    with pytest.raises(ValueError, match="one half of the normalization"):
        plain_cnn.identify(experiment.to_dict(plain_cnn.config_for("centred", "defaults", 0.2, 5, 0)))
    # ncg_warmup ramps eps over exactly the first epoch of the study's data and batch.
    warmup = plain_cnn.config_for("plain", "ncg_warmup", 0.2, 5, 0)
    assert warmup.method.epsilon_warmup_steps == math.ceil(warmup.dataset.train_limit / warmup.dataset.batch_size)
    with pytest.raises(ValueError, match="Unknown variant"):
        plain_cnn.config_for("plain", "nope", 0.2, 5, 0)
    # ncg_switch differs from ncg only in its guard, which the experiment builds from the config.
    from seat_tf.diagnostics import DivergenceGuard

    def guards(config):
        return [m for m in experiment.build_monitors(config) if isinstance(m, DivergenceGuard)]

    switch = plain_cnn.config_for("plain", "ncg_switch", 0.3, 10, 1)
    assert switch.method.to_dict() == plain.method.to_dict() and not guards(plain)
    assert [g.on_drift for g in guards(switch)] == ["double_backprop"]


def test_exploded_flags_blow_ups_not_noise():
    from benchmarks.runner import exploded

    assert not exploded([2.3, 1.9, 1.5, 1.6])
    assert exploded([1.9, 1.5, 7e5])
    assert exploded([1.9, float("nan")])


def test_adversary_strength_matches_closed_forms_on_a_binary_linear_model(make_linear):
    """On a binary linear model every gradient sign is the same everywhere in the ball: FGSM and
    PGD-10 (4 steps of eps/4 reach the corner) move every pixel by eps to the worst corner, whose
    accuracy is closed-form; SEAT's step of eps from a random corner keeps only the pixels whose
    random sign agrees with the gradient's (about half) and leaves the others at x."""
    from benchmarks import adversary_strength
    from tests.closed_form import flat, linear_problem

    W, b, x, _ = linear_problem((8, 8, 1), 2, seed=3, batch=64, scale=0.4)
    logits = flat(x) @ W + b
    y = np.argmax(logits, -1)
    eps = 0.01
    classifier = make_linear(W, b, (8, 8, 1))
    before = [w.copy() for w in classifier.get_weights()]
    margin = np.abs(logits[:, 1] - logits[:, 0])  # the true class's logit minus the other's
    worst_corner_accuracy = np.mean(margin - eps * np.abs(W[:, 1] - W[:, 0]).sum() > 0)
    assert 0.1 < worst_corner_accuracy < 0.9  # the closed form is not vacuous

    x, y = x.astype(np.float32), y.astype(np.int32)
    for name in ("fgsm_at (zero start, step eps)", "pgd_at (10 steps of eps/4)"):
        row = adversary_strength.measure(classifier, x, y, eps, adversary_strength.ADVERSARIES[name], batch_size=32)
        assert row["full_radius_share"] == pytest.approx(1.0) and row["mean_abs_delta_over_eps"] == pytest.approx(1.0, abs=1e-4)
        assert row["accuracy"] == pytest.approx(worst_corner_accuracy)
    seat = adversary_strength.measure(classifier, x, y, eps, adversary_strength.ADVERSARIES["seat (corner start, step eps)"])
    assert 0.4 < seat["full_radius_share"] < 0.6
    assert seat["mean_abs_delta_over_eps"] == pytest.approx(seat["full_radius_share"], abs=1e-4)  # every pixel: 0 or eps
    assert seat["accuracy"] > worst_corner_accuracy
    assert all(np.array_equal(w, v) for w, v in zip(before, classifier.get_weights()))


def test_every_committed_record_is_its_variant_s_config():
    """The README's budget tables quote docs/results/budget/runs as rows of the config's
    variants: a variant edited after its runs (or a record landed under the wrong name, as
    :seat_steps3u_lam0's first runs were run under seat_steps3u + lam=0.0) breaks that claim."""
    module = _config_module()
    paths = sorted(glob.glob(os.path.join(ROOT, "docs", "results", "budget", "runs", "*.json")))
    assert len(paths) >= 30
    for path in paths:
        record = json.load(open(path))
        variant = record["variant"].split("+")[0]
        config = module.get_config(variant)
        config.budget_scale = record.get("budget_scale", 1.0)
        expected = dict(config.method.to_dict(), epsilon=record["eps"], **(record.get("options") or {}))
        assert record["config"]["method"] == expected, path
        assert record["config"]["dataset"] == json.loads(json.dumps(config.dataset.to_dict())), path
        if not record.get("equal_epochs"):
            # elle_a ran 9 epochs by the busy-machine cost 0.54; the config now holds the idle
            # one (0.44, 11 epochs), as the README says beside its row.
            assert record["epochs"] == {"elle_a": 9}.get(record["variant"], config.epochs), path
        assert record["config"]["seed"] == record["seed"], path
        name = os.path.basename(path)[: -len(".json")]
        assert name == budget.run_key(record["variant"], record["eps"], record["seed"],
                                      record["epochs"] if record.get("equal_epochs") else None,
                                      record.get("budget_scale", 1.0)), path


def test_normalization_gap_summary_pairs_seeds_and_judges_the_3_points():
    from benchmarks import normalization_gap as gap

    def rec(method, model, seed, pgd20, eps=0.2):
        return dict(variant=method, model=model, seed=seed, robust={"pgd20": pgd20}, clean=0.8,
                    examples={"pgd20": 10000}, eps=eps)

    records = [rec("defaults", "plain", 0, 0.46), rec("defaults", "norm", 0, 0.50),
               rec("defaults", "plain", 1, 0.47), rec("defaults", "norm", 1, 0.49),
               rec("defaults", "plain", 2, 0.48),  # its normalized twin not run yet: not paired
               rec("pgd_at", "plain", 0, 0.63), rec("pgd_at", "norm", 0, 0.65)]
    rows = {row["method"]: row for row in gap.summarize(records)}
    seat = rows["defaults"]
    assert seat["seeds"] == [0, 1] and seat["gaps"] == pytest.approx([0.04, 0.02])
    assert seat["mean_gap"] == pytest.approx(0.03) and seat["sd_gap"] == pytest.approx(0.02 / math.sqrt(2))
    assert not seat["all_within"] and rows["pgd_at"]["all_within"] and rows["pgd_at"]["sd_gap"] is None
    table = gap.markdown(list(rows.values()))
    assert "| SEAT defaults of 0.1 (no centring) | 0 | 0.4600 | 0.5000 | +4.0 |" in table and "**+3.0** (sd 1.4)" in table
    # The centring defaults run on the plain CNN only; their partner is the normalized defaults.
    rows = {row["method"]: row for row in gap.summarize(records + [rec("centring", "plain", 1, 0.485)])}
    assert rows["centring"]["seeds"] == [1] and rows["centring"]["gaps"] == pytest.approx([0.005])
    assert rows["centring"]["all_within"]
    assert ("centring", "norm", 0, 0.2) not in gap.GRID and ("centring", "plain", 3, 0.2) in gap.GRID
    # eps 0.3 records pair among themselves, never with eps 0.2's.
    at03 = [rec("centring", "plain", 0, 0.34, 0.3), rec("defaults", "norm", 0, 0.36, 0.3),
            rec("defaults", "plain", 1, 0.30, 0.3)]
    rows03 = {row["method"]: row for row in gap.summarize(records + at03, eps=0.3)}
    assert sorted(rows03) == ["centring"] and rows03["centring"]["gaps"] == pytest.approx([0.02])
    assert {row["method"]: row["seeds"] for row in gap.summarize(records + at03)}["defaults"] == [0, 1]
    assert gap.key("defaults", "norm", 1, 0.3) == "norm_defaults_eps0.3_s1" and gap.key("defaults", "norm", 1) == "norm_defaults_s1"
    assert "PGD-20 on 10000 test images" in table
    # The normalization's halves apart: a seed counts once all four CNNs of the defaults are in.
    split = records + [rec("defaults", "scaled", 0, 0.49), rec("defaults", "centred", 0, 0.47),
                       rec("defaults", "scaled", 1, 0.48)]
    assert [r["seed"] for r in gap.summarize_split(split)] == [0]
    (row,) = gap.summarize_split(split)
    assert row["scaled_closes"] == pytest.approx(0.75) and row["centred_closes"] == pytest.approx(0.25)
    assert "| 0 | 0.4600 | 0.4900 | 0.4700 | 0.5000 | 75% | 25% |" in gap.split_markdown([row])
    assert gap.split_markdown([]) == ""


def test_normalization_gap_runs_the_study_recipe_on_every_test_image(tmp_path, fake_fmnist_npz):
    from benchmarks import normalization_gap as gap, plain_cnn, runner
    from seat_tf import experiment

    entries = [(method, model, 3, 0.2) for method in gap.METHODS for model in ("plain", "norm")]
    entries += [(method, model, seed, eps) for method, model, seed, eps in gap.GRID if eps == 0.3]
    assert len(entries) == 2 * len(gap.METHODS) + 4
    for method, model, seed, eps in entries:
        config = gap.config_for(method, model, seed, eps=eps)
        study = plain_cnn.config_for(model, method, eps, {0.2: 5, 0.3: 10}[eps], seed)
        assert config.dataset.test_limit is None and study.dataset.test_limit == 1000
        config.dataset.test_limit = study.dataset.test_limit
        assert experiment.to_dict(config) == experiment.to_dict(study)  # nothing else differs
    assert gap.config_for("ncg_warmup", "norm", 0).method.epsilon_warmup_steps == 235  # one epoch of 30k at 128
    # The split's CNNs: the plain CNN's config but for one half of the standardization each.
    def without_standardization(model):
        config = experiment.to_dict(gap.config_for("defaults", model, 0))
        return config, [config["model"].pop(k) for k in ("mean", "std")]

    plain, _ = without_standardization("plain")
    for model, mean, std in (("scaled", 0.0, 0.353), ("centred", 0.286, 1.0)):
        split, standardization = without_standardization(model)
        assert split == plain and standardization == [pytest.approx([mean]), pytest.approx([std])]
    assert {(m, s) for (method, m, s, eps) in gap.GRID if m in gap.SPLIT_MODELS} == {
        (m, s) for m in ("scaled", "centred") for s in (0, 1)}
    # The two split rows are the budget's own methods: its recommended recipe and RS-FGSM.
    budget_configs = runner.load_config_module("configs/fashion_mnist_budget.py")
    ours = gap.config_for("rs_fgsm", "plain", 0).method.to_dict()
    theirs = budget_configs.get_config("rs_fgsm").method.to_dict()
    # (The study names first-layer centring "off" for every recorded variant: a baseline's default.)
    assert ours.pop("first_layer_centring") == "off" == seat_tf.RSFGSMModel(seat_tf.models.small_cnn()).first_layer_centring
    assert {k: v for k, v in ours.items() if k != "epsilon"} == {k: v for k, v in theirs.items() if k != "epsilon"}
    ours = experiment.build_model(gap.config_for("ncg_steps3u_lam0", "plain", 0), total_steps=10)
    theirs = experiment.build_model(budget_configs.get_config("seat_steps3u_lam0"), total_steps=10)
    assert (ours.lam, ours.variant, ours.flood_level) == (
        theirs.lam, theirs.variant, theirs.flood_level)
    # SEAT's defaults here are the study's "ncg" rows: the same SEATModel.
    built = experiment.build_model(gap.config_for("defaults", "plain", 0), total_steps=10)
    ncg = experiment.build_model(plain_cnn.config_for("plain", "ncg", 0.2, 5, 0), total_steps=10)
    assert (built.lam, built.variant, built.flood_level) == (ncg.lam, ncg.variant, ncg.flood_level)

    out = str(tmp_path / "gap")
    for model in ("plain", "norm"):
        record = gap.run_one("defaults", model, 0, 0.2, out, smoke=True, dataset=fake_fmnist_npz)
        assert record["examples"]["pgd20"] <= 64 and record["model"] == model
    readme = tmp_path / "README.md"
    readme.write_text("<!-- normalization-gap-table:start -->\nstale\n<!-- normalization-gap-table:end -->\n")
    table = gap.write_report(out, readme=str(readme))
    assert "| SEAT defaults of 0.1 (no centring) | 0 |" in table and "stale" not in readme.read_text()
    assert os.path.getsize(os.path.join(out, "normalization_gap.png")) > 1000


def test_the_budget_recommendation_is_the_python_call_the_readme_shows(make_linear):
    """README's "Which method for my time budget?" gives :seat_steps3u_lam0 as a SEATModel call
    for Python users; it must build the model the config variant trains."""
    import seat_tf
    from seat_tf import experiment

    config = _config_module().get_config("seat_steps3u_lam0")
    trained = experiment.build_model(config, total_steps=10)
    classifier = make_linear(np.zeros((784, 10), np.float32), np.zeros(10, np.float32), (28, 28, 1))
    shown = seat_tf.SEATModel(classifier, epsilon=0.2, lam=0.0,
                              variant=dict(attack_steps=3, init="uniform", rel_step_size=0.5))
    assert (shown.lam, shown.variant, shown.flood_level, shown.epsilon) == (
        trained.lam, trained.variant, trained.flood_level, trained.epsilon)
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert ('seat_tf.SEATModel(classifier, epsilon=0.2, lam=0.0,\n'
            '                         variant=dict(attack_steps=3, init="uniform", rel_step_size=0.5))') in readme
