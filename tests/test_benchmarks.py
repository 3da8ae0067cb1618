"""The benchmarks run end to end on tiny data and write valid JSON and PNGs."""

import json
import os

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
