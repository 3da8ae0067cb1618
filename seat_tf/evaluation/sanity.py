"""The sanity checks of an evaluation (see seat_tf.evaluation): each compares attacks
that must be ordered a certain way, with a binomial noise tolerance."""

import math

import numpy as np

from seat_tf import attacks as attacks_lib
from seat_tf.evaluation.runner import Entry, is_gradient_linf, is_untargeted_iterative

LARGE_EPS = 0.5
LARGE_EPS_MAX_ACCURACY = 0.05
BUDGET_TOLERANCE = 1e-5  # float32 rounding of x + clip(delta)


def noise_tolerance(accuracy_a, accuracy_b, n):
    """Two binomial standard errors of an accuracy on n examples, plus one example."""
    p = min(max((accuracy_a + accuracy_b) / 2, 0.0), 1.0)
    return 2.0 * math.sqrt(p * (1.0 - p) / max(n, 1)) + 1.0 / max(n, 1)


def entry_accuracy(entry):
    return float(np.mean(np.concatenate(entry.correct))) if entry.correct else float("nan")


def entry_summary(entry):
    """An entry's reported numbers; "loaded": True if some of its results were loaded from the
    checkpoint folder, finished by an earlier run (their seconds are that run's)."""
    out = _summary(entry)
    if entry.loaded:
        out["loaded"] = True
    return out


def _summary(entry):
    correct = np.concatenate(entry.correct)
    clean = np.concatenate(entry.clean)
    if entry.kind == "l2":
        fooled = clean & ~correct
        norms = np.concatenate(entry.l2)[fooled]
        return {
            "num_examples": int(clean.size),
            "clean_accuracy": float(clean.mean()),
            "fooling_rate": float(fooled.sum() / max(clean.sum(), 1)),
            "median_l2": float(np.median(norms)) if norms.size else None,
            "mean_l2": float(np.mean(norms)) if norms.size else None,
            "seconds": round(sum(entry.seconds), 3),
        }
    out = {
        "robust_accuracy": float(correct.mean()),
        "seconds": round(sum(entry.seconds), 3),
        "num_examples": int(correct.size),
        "clean_accuracy": float(clean.mean()),
        "max_linf": entry.max_linf,
    }
    if entry.kind == "composite":
        if getattr(entry, "derived_from", None):
            out["derived_from"] = entry.derived_from
        out["stages"] = [
            {"attack": name, "robust_accuracy": float(np.mean(np.concatenate(c))), "seconds": round(s, 3)}
            for (name, _), c, s in zip(entry.stages, entry.stage_correct, entry.seconds)
        ]
    return out


# -- sanity checks --------------------------------------------------------------------------


def sanity_entries(main, eps, sanity_limit):
    """The extra runs the checks need, unless a main entry already covers them."""
    large_eps = LARGE_EPS if eps < LARGE_EPS else 1.0
    wanted = [("fgsm", eps), ("pgd10", eps), ("pgd20x2", eps), ("pgd20", large_eps)]
    if not any(isinstance(e.attack, attacks_lib.Square) for e in main):
        wanted.append(("square1000", eps))
    extra = []
    for name, at_eps in wanted:
        attack = attacks_lib.get_attack(name)
        covered = any(
            e.attack == attack and e.eps == at_eps and (e.limit is None or e.limit >= sanity_limit) for e in main
        )
        if not covered:
            key = f"{name}@eps={at_eps:g}" if at_eps != eps else name
            extra.append(Entry(key, attack, at_eps, sanity_limit, "sanity"))
    return extra, large_eps


def _compare(weak, strong, label):
    """(passed, comparison dict): strong's accuracy <= weak's + noise on their common prefix."""
    n = min(sum(c.size for c in weak.correct), sum(c.size for c in strong.correct))
    a = float(np.concatenate(weak.correct)[:n].mean())
    b = float(np.concatenate(strong.correct)[:n].mean())
    tol = noise_tolerance(a, b, n)
    return b <= a + tol, {"check": label, "weaker": weak.key, "stronger": strong.key, "num_examples": n,
                          "weaker_accuracy": a, "stronger_accuracy": b, "tolerance": round(tol, 4)}


def _check(comparisons, fail_text, pass_text, skip_text, describe=None):
    if not comparisons:
        return {"passed": None, "detail": skip_text, "comparisons": []}
    failed = [c for ok, c in comparisons if not ok]
    describe = describe or (lambda c: f"{c['stronger']} {c['stronger_accuracy']:.4f} > {c['weaker']} "
                            f"{c['weaker_accuracy']:.4f} + {c['tolerance']} (n={c['num_examples']})")
    detail = pass_text if not failed else fail_text + " " + "; ".join(describe(c) for c in failed)
    return {"passed": not failed, "detail": detail, "comparisons": [c for _, c in comparisons]}


def sanity_checks(entries, eps, large_eps):
    """The checks against gradient masking and broken attacks (see the module docstring)."""
    linf = [e for e in entries if e.kind in ("linf", "composite") and e.correct]
    at_eps = [e for e in linf if e.eps == eps]
    checks = {}

    outside = [e for e in linf if e.max_linf > e.eps + BUDGET_TOLERANCE or e.outside_box]
    checks["within_budget"] = {
        "passed": not outside,
        "detail": "all L-inf adversarial examples lie in the eps-ball and in [0, 1]" if not outside else
        "attacks left the threat model: " + "; ".join(
            f"{e.key}: max |delta| = {e.max_linf:.6f} > eps = {e.eps:g}, {e.outside_box} outside [0, 1]"
            for e in outside),
    }

    fgsm = [e for e in at_eps
            if isinstance(e.attack, attacks_lib.LinfPGD) and e.attack.steps == 1 and e.attack.target is None]
    iterative = [e for e in at_eps if is_untargeted_iterative(e.attack)]
    checks["pgd_not_weaker_than_fgsm"] = _check(
        [_compare(fgsm[0], e, "pgd<=fgsm") for e in iterative] if fgsm else [],
        "an iterative attack is weaker than FGSM (gradient masking or a broken attack):",
        "every iterative attack is at least as strong as FGSM", "no FGSM result to compare with")

    pairs = []
    pgds = [e for e in at_eps if isinstance(e.attack, attacks_lib.LinfPGD) and e.attack.steps > 1]
    for weak in pgds:
        for strong in pgds:
            a, b = weak.attack, strong.attack
            same = (a.loss, a.target, a.momentum, a.init, a.rel_step_size, a.step_size) == (
                b.loss, b.target, b.momentum, b.init, b.rel_step_size, b.step_size)
            more = (b.steps, b.restarts) != (a.steps, a.restarts) and b.steps >= a.steps and b.restarts >= a.restarts
            if same and more:
                pairs.append(_compare(weak, strong, "more iterations"))
    checks["more_iterations_not_weaker"] = _check(
        pairs, "more steps/restarts raised accuracy beyond noise:",
        "more steps/restarts never raised accuracy beyond noise",
        "no pair of PGD runs differing only in steps/restarts")

    large = [e for e in linf if e.eps == large_eps and isinstance(e.attack, attacks_lib.LinfPGD)]
    if large:
        acc = entry_accuracy(large[0])
        checks["large_eps_accuracy_near_zero"] = {
            "passed": acc <= LARGE_EPS_MAX_ACCURACY,
            "accuracy": acc,
            "detail": f"{large[0].key} at eps = {large_eps:g}: accuracy {acc:.4f} "
            + ("<= " if acc <= LARGE_EPS_MAX_ACCURACY else "> ") + f"{LARGE_EPS_MAX_ACCURACY} "
            + ("" if acc <= LARGE_EPS_MAX_ACCURACY
               else "(the attack cannot even break a huge budget: gradient masking?)"),
        }

    squares = [e for e in at_eps if isinstance(e.attack, attacks_lib.Square)]
    white = [e for e in at_eps if is_gradient_linf(e.attack)]
    comparisons = []
    for square in squares:
        if white:
            # Passes if some gradient attack is at least as strong as Square (within noise).
            results = [_compare(square, e, "black-box >= white-box") for e in white]
            best = min(results, key=lambda r: r[1]["stronger_accuracy"] - r[1]["weaker_accuracy"])[1]
            comparisons.append((any(ok for ok, _ in results), best))
    checks["black_box_not_stronger"] = _check(
        comparisons,
        "the black-box Square attack beats every gradient attack: gradients are likely masked, so white-box numbers "
        "overstate robustness:",
        "no gradient attack is weaker than Square", "no Square and gradient attack pair",
        lambda c: f"{c['weaker']} {c['weaker_accuracy']:.4f} < best gradient attack {c['stronger']} "
        f"{c['stronger_accuracy']:.4f} - {c['tolerance']} (n={c['num_examples']})")
    return checks


# -- the API --------------------------------------------------------------------------------
