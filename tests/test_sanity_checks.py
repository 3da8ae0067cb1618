"""Every sanity check of seat_tf.evaluate fails when fed a deliberately broken attack, and none
fires on sound attacks against the same model (so a failure here is the check's own doing).

The model is a fixed linear classifier on 4x4 images whose robust accuracy at EPS is about
one half, so "weaker" and "stronger" are far apart compared with the checks' noise margins.
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import seat_tf
from seat_tf import attacks
from tests.conftest import linear_classifier

EPS = 0.07
N = 60


@pytest.fixture(scope="module")
def linear_problem():
    rng = np.random.default_rng(0)
    patterns = np.zeros((3, 4, 4, 1))
    for k in range(3):
        patterns[k, k : k + 2] = 1.0  # class k brightens rows k, k+1
    W = 3.0 * (patterns - patterns.mean(0)).reshape(3, -1).T
    y = np.arange(N) % 3
    x = 0.3 + 0.15 * patterns[y] + rng.uniform(-0.1, 0.1, (N, 4, 4, 1))
    x[:, 1, 0], x[:, 1, 3] = 0.01, 0.99  # two pixels of one row within eps of the box's borders
    x = x.astype(np.float32)
    model = linear_classifier(W, np.zeros(3), (4, 4, 1))
    return model, tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32))).batch(N)


def _evaluate(problem, attack_list):
    model, dataset = problem
    return seat_tf.evaluate(model, dataset, attacks=attack_list, eps=EPS, verbose=0, sanity_limit=N)


@dataclasses.dataclass(frozen=True)
class IdlePGD(attacks.LinfPGD):
    """Broken: claims to be PGD, returns the clean images."""

    def __call__(self, model_fn, x, y, eps, seed=None):
        return tf.identity(x)


@dataclasses.dataclass(frozen=True)
class WeakeningPGD(attacks.LinfPGD):
    """Broken: a real PGD up to 10 steps, no attack at all from 20 steps on."""

    def __call__(self, model_fn, x, y, eps, seed=None):
        return tf.identity(x) if self.steps >= 20 else super().__call__(model_fn, x, y, eps, seed)


@dataclasses.dataclass(frozen=True)
class PartialPGD(attacks.LinfPGD):
    """Broken: a real PGD that leaves the first 6 examples it is given untouched (10% of the
    sanity subset): just above the 5% a large-eps attack may leave."""

    def __call__(self, model_fn, x, y, eps, seed=None):
        x_adv = super().__call__(model_fn, x, y, eps, seed)
        keep = tf.range(tf.shape(x)[0]) < 6
        return tf.where(tf.reshape(keep, [-1, 1, 1, 1]), x, x_adv)


class OutOfBox:
    """Broken: moves by eps / 2 away from 0.5 and forgets to clip to [0, 1] (within budget)."""

    name = "out_of_box"

    def __call__(self, model_fn, x, y, eps, seed=None):
        return x + 0.5 * eps * tf.sign(x - 0.5)


class OverBudget:
    name = "over_budget"

    def __call__(self, model_fn, x, y, eps, seed=None):
        return tf.clip_by_value(x - 1.5 * eps, 0.0, 1.0)


def _break_gradient_attacks(monkeypatch, names, broken=IdlePGD):
    """Makes attacks.get_attack return a broken PGD for these names (the extra runs the
    sanity checks add are built through it too)."""
    original = attacks.get_attack

    def get_attack(spec):
        attack = original(spec)
        if isinstance(spec, str) and spec in names:
            return broken(**{**dataclasses.asdict(attack), "name": f"broken_{spec}"})
        return attack

    monkeypatch.setattr(attacks, "get_attack", get_attack)


def test_sound_attacks_pass_every_check(linear_problem):
    result = _evaluate(linear_problem, ["fgsm", "pgd10", "square200"])
    assert 0.9 < result["clean_accuracy"] and 0.2 < result["attacks"]["pgd10"]["robust_accuracy"] < 0.8
    assert result["sanity_checks"]["large_eps_accuracy_near_zero"]["accuracy"] == 0.0
    assert all(check["passed"] for check in result["sanity_checks"].values()), result["sanity_checks"]


@pytest.mark.parametrize("broken", [OverBudget(), OutOfBox()], ids=["over_budget", "out_of_box"])
def test_within_budget_fails_for_an_attack_leaving_the_threat_model(linear_problem, broken):
    result = _evaluate(linear_problem, ["fgsm", "square50", broken])
    check = result["sanity_checks"]["within_budget"]
    assert check["passed"] is False and broken.name in check["detail"]
    entry = result["attacks"][broken.name]
    assert (entry["max_linf"] > EPS) == isinstance(broken, OverBudget)  # each break trips one condition
    assert not result["sanity_passed"]


def test_pgd_weaker_than_fgsm_fails(linear_problem):
    result = _evaluate(linear_problem, ["fgsm", "square50", IdlePGD(steps=10, name="idle_pgd10")])
    check = result["sanity_checks"]["pgd_not_weaker_than_fgsm"]
    assert check["passed"] is False and "idle_pgd10" in check["detail"]


def test_more_iterations_weaker_fails(linear_problem):
    attack_list = ["fgsm", "square50", WeakeningPGD(steps=10, name="pgd10_w"), WeakeningPGD(steps=20, name="pgd20_w")]
    result = _evaluate(linear_problem, attack_list)
    check = result["sanity_checks"]["more_iterations_not_weaker"]
    assert check["passed"] is False and "pgd20_w" in check["detail"]
    failed = [(c["weaker"], c["stronger"]) for c in check["comparisons"]
              if c["stronger_accuracy"] > c["weaker_accuracy"] + c["tolerance"]]
    assert ("pgd10_w", "pgd20_w") in failed


@pytest.mark.parametrize("broken, accuracy", [(IdlePGD, (0.9, 1.0)), (PartialPGD, (0.09, 0.11))],
                         ids=["idle", "spares_10_percent"])
def test_large_eps_accuracy_fails_when_the_large_eps_pgd_is_broken(linear_problem, monkeypatch, broken, accuracy):
    _break_gradient_attacks(monkeypatch, {"pgd20"}, broken)
    result = _evaluate(linear_problem, ["fgsm", "square50"])
    check = result["sanity_checks"]["large_eps_accuracy_near_zero"]
    assert check["passed"] is False and accuracy[0] <= check["accuracy"] <= accuracy[1]


def test_black_box_stronger_than_every_gradient_attack_fails(linear_problem, monkeypatch):
    _break_gradient_attacks(monkeypatch, {"fgsm", "pgd10", "pgd20x2", "pgd20"})
    result = _evaluate(linear_problem, ["fgsm", "square200"])
    check = result["sanity_checks"]["black_box_not_stronger"]
    assert check["passed"] is False and "square200" in check["detail"]
    assert not result["sanity_passed"]
