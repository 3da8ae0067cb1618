"""The benchmarks run end to end on tiny data and write valid JSON and PNGs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(run_module, module, *args):
    result = run_module(module, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_co_benchmark_tiny_run_writes_json_table_and_png(run_module, tmp_path):
    rng = np.random.default_rng(0)
    data = str(tmp_path / "tiny.npz")
    np.savez(data, x_train=rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), y_train=np.arange(64) % 10,
             x_test=rng.integers(0, 256, (32, 28, 28), dtype=np.uint8), y_test=np.arange(32) % 10)
    out = str(tmp_path / "co")
    args = [f"--out={out}", f"--dataset={data}", "--methods=fgsm_at,seat", "--seeds=0", "--epochs=1", "--smoke"]
    _run(run_module, "benchmarks.co_benchmark", *args)
    results = json.load(open(os.path.join(out, "results.json")))
    assert {row["method"] for row in results["rows"]} == {"fgsm_at", "seat"}
    for row in results["rows"]:
        assert len(row["pgd20_per_epoch"]) == 1 and 0.0 <= row["final_robust"] <= 1.0
    assert os.path.getsize(os.path.join(out, "co_benchmark.png")) > 1000
    assert "| fgsm_at |" in open(os.path.join(out, "table.md")).read()
    again = _run(run_module, "benchmarks.co_benchmark", *args)  # resumable: finished runs are skipped
    assert again.stdout.count("skip") == 2


def test_step_cost_benchmark_reports_ratios(run_module, tmp_path):
    out = str(tmp_path / "cost.json")
    _run(run_module, "benchmarks.step_cost", f"--out={out}", "--methods=plain,fgsm_at,seat,pgd_at", "--steps=1", "--rounds=1",
         "--batch_size=16")
    result = json.load(open(out))
    ratios = result["settings"]["jit_off"]["ratio_to_fgsm_at"]
    # Structure only: wall-clock ratios on a shared CI machine are not something a test can assert.
    assert ratios["fgsm_at"] == 1.0 and set(ratios) == {"plain", "fgsm_at", "seat", "pgd_at"}
    assert all(ratio > 0 for ratio in ratios.values())


@pytest.mark.slow
def test_eval_scaleout_benchmark_reports_ratios_and_equal_results(run_module, tmp_path):
    out = str(tmp_path / "scaleout")
    _run(run_module, "benchmarks.eval_scaleout", f"--out={out}", "--num_examples=48", "--batch_size=16",
         "--train_examples=256", "--train_epochs=1", "--rounds=1", "--attack=pgd3", "--resume_attacks=pgd5,fgsm")
    report = json.load(open(os.path.join(out, "eval_scaleout.json")))
    scaleout, resume = report["mirrored_vs_one_device"], report["resume"]
    assert scaleout["replicas"] == 2 and scaleout["identical_per_example"]
    assert scaleout["time_ratio_mirrored_to_one_device"] > 0
    assert resume["first_attack_loaded"] and resume["same_results"]


def test_eval_speed_benchmark_counts_one_trace_per_attack_and_runs_without_art(run_module, tmp_path):
    # 40 images in batches of 16: three batches of clean-correct subsets of different sizes and
    # a partial last batch, each attack run twice: a retrace per batch or per call would show as
    # a trace count above one. A stub `art` package that fails to import stands for a machine
    # without the optional benchmark extra.
    rng = np.random.default_rng(0)
    data = str(tmp_path / "tiny.npz")
    np.savez(data, x_train=rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), y_train=np.arange(64) % 10,
             x_test=rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), y_test=np.arange(40) % 10)
    stub = tmp_path / "stub" / "art"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('stub: ART is not installed')\n")
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- eval-speed-table:start -->\nold\n<!-- eval-speed-table:end -->\nafter\n")
    out = str(tmp_path / "speed.json")
    env_path = f"{tmp_path / 'stub'}{os.pathsep}{ROOT}"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.eval_speed", f"--out={out}", f"--dataset={data}", "--train_steps=2",
         "--limit=40", "--batch_size=16", "--attacks=pgd3,apgd-ce4", "--repeats=1", "--square_limit=16",
         "--square_queries=20", f"--readme={readme}"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=env_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ART is not installed" in result.stdout
    speed = json.load(open(out))
    assert speed["art_version"] is None and "not installed" in speed["art_missing"]
    assert speed["floor_rates"]["forward"] > 0 and speed["floor_rates"]["forward_backward"] > 0
    assert [row["attack"] for row in speed["attacks"]] == ["pgd3", "apgd-ce4"]
    for row in speed["attacks"]:
        assert list(row["implementations"]) == ["seat-tf"]  # no ART rows
        ours = row["implementations"]["seat-tf"]
        assert ours["traces"] == 1, row
        assert ours["first"]["vs_floor"] > 0 and ours["warm"]["vs_floor"] > 0
    square = speed["square"]
    assert 1 <= square["queries_spent"] <= 16 * 20  # 1 to 20 forward passes per attacked example
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "| pgd3 |" in text and "old" not in text


def test_residual_sign_analysis_on_a_linear_model(make_linear):
    """A linear model's cross-entropy is convex in x, so SEAT's residual is never negative
    (first-order condition of convexity): the analysis must count no negative residual,
    with or without the term in the attack, and leave the model's variant as it was."""
    import seat_tf
    from benchmarks import residual_sign

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(64, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, 64).astype(np.int32)
    model = seat_tf.SEATModel(make_linear(rng.normal(size=(16, 3)), np.zeros(3), (4, 4, 1)), epsilon=0.2,
                              variant=dict(attack_steps=3, init="uniform", rel_step_size=0.5))
    model.compile(optimizer="sgd")
    variant = model.variant
    for attack_lam in (None, 0.0):
        stats = residual_sign.residual_stats(model, x, y, 0.2, attack_lam=attack_lam)
        assert stats["negative_fraction"] == 0.0
        assert stats["mean_residual"] == pytest.approx(stats["mean_abs_residual"]) and stats["mean_residual"] > 0.01
        assert 0.0 <= stats["accuracy"] <= 1.0
    assert model.variant == variant
