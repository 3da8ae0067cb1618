"""Robust accuracy of any Keras classifier under an attack suite, with sanity checks and a
report (JSON, Markdown table, accuracy-vs-eps plot).

    result = seat_tf.evaluate(model, test_ds, attacks=["fgsm", "pgd20", "standard@1000"], eps=0.1)
    result["clean_accuracy"], result["attacks"]["pgd20"]["robust_accuracy"], result["sanity_checks"]
    seat_tf.evaluation.write_report(result, "runs/eval")  # report.json, report.md, PNG

Protocol. Every attack runs only on the examples the model classifies correctly (an example
counts as robust only if it is correct both clean and under the attack); a composite runs each
member only on the examples all earlier members failed to fool. "name@N" evaluates an attack
on the first N examples only (expensive attacks on a fixed, stated subset); each entry reports
its own number of examples and the clean accuracy on that subset. Adversarial examples are
checked against the eps-ball and the [0, 1] box.

Sanity checks (Athalye et al., 2018; Carlini et al., 2019), on the first `sanity_limit`
examples, run with every evaluation and reported whether they pass or not:
  within_budget                 every L-inf adversarial example lies in the eps-ball and [0, 1];
  pgd_not_weaker_than_fgsm      iterative attacks reach at most FGSM's accuracy (+ noise);
  more_iterations_not_weaker    more steps / restarts of PGD never raise accuracy (+ noise);
  large_eps_accuracy_near_zero  PGD-20 at eps = 0.5 drives accuracy to <= 5%;
  black_box_not_stronger        Square (no gradients) is not stronger than the best
                                gradient attack (- noise); if it is, gradients are masked.
"noise" is two binomial standard errors plus one example. Missing attacks are added to the
run on the sanity subset (fgsm, pgd10, pgd20x2, pgd20 at eps 0.5, square1000).
"""

import logging
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from seat_tf import attacks as attacks_lib
from seat_tf import fileio, precision, reporting
from seat_tf.data import check_batch, check_labels, model_expectations

LARGE_EPS = 0.5
LARGE_EPS_MAX_ACCURACY = 0.05
BUDGET_TOLERANCE = 1e-5  # float32 rounding of x + clip(delta)


def _kind(attack):
    if isinstance(attack, attacks_lib.Composite):
        return "composite"
    return "l2" if getattr(attack, "threat_model", "linf") == "l2" else "linf"


def _is_gradient_linf(attack):
    return isinstance(attack, (attacks_lib.LinfPGD, attacks_lib.APGD))


def _is_untargeted_iterative(attack):
    if isinstance(attack, attacks_lib.LinfPGD):
        return attack.steps > 1 and attack.target is None
    return isinstance(attack, attacks_lib.APGD) and not attack.targets


class _Entry:
    """One attack at one eps on the first `limit` examples, and what it measured."""

    def __init__(self, key, attack, eps, limit=None, role="main"):
        self.key, self.attack, self.eps, self.limit, self.role = key, attack, float(eps), limit, role
        self.kind = _kind(attack)
        self.stages = attack.stages() if self.kind == "composite" else [(key, attack)]
        self.correct, self.clean = [], []
        self.stage_correct = [[] for _ in self.stages]
        self.seconds = [0.0 for _ in self.stages]
        self.max_linf, self.outside_box = 0.0, 0
        self.l2 = []
        self.derived_from = None

    def count_in(self, start, n):
        return n if self.limit is None else max(0, min(n, self.limit - start))


def _parse(spec):
    """(key, attack, limit) from "name", "name@N" or an attack object."""
    limit = None
    if isinstance(spec, str):
        name, _, count = spec.partition("@")
        if count:
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"Attack {spec!r}: write 'name@N' with N a positive number of examples.")
            limit = int(count)
        return name.strip(), attacks_lib.get_attack(name), limit
    attack = attacks_lib.get_attack(spec)
    if attack is None:
        raise ValueError("An attack of None cannot be evaluated.")
    return getattr(attack, "name", None) or repr(attack), attack, limit


class _IntendedTraces(logging.Filter):
    """Drops TensorFlow's "N out of the last N calls ... triggered tf.function retracing"
    warning: the evaluation traces one tf.function per attack on purpose (each traced once,
    then reused across batches and the eps sweep), which TF mistakes for retracing in a loop."""

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


_TF_LOGGER = logging.getLogger("tensorflow")
_TF_LOGGER.addFilter(_IntendedTraces())


class _Runner:
    """Runs entries over a dataset in one pass; compiles each attack once (eps and seed are
    graph inputs, so the eps sweep reuses the traces)."""

    def __init__(self, model, seed):
        self.model_fn = precision.logits_fn(model)
        self.num_classes, self.input_shape = model_expectations(model)
        self.seed = int(seed)
        self._compiled = {}
        self._clean = None

    def _compile(self, attack, x_spec):
        model_fn = self.model_fn
        signature = [x_spec, tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.float32),
                     tf.TensorSpec([2], tf.int32)]

        @tf.function(input_signature=signature)
        def run(x, y, eps, seed):
            x_adv = tf.cast(attack(model_fn, x, y, eps, seed=seed), tf.float32)
            correct = tf.argmax(model_fn(x_adv), axis=-1, output_type=tf.int32) == y
            delta = x_adv - x
            axes = tf.range(1, tf.rank(x))
            linf = tf.reduce_max(tf.abs(delta), axis=axes)
            l2 = tf.sqrt(tf.reduce_sum(tf.square(delta), axis=axes))
            outside = tf.reduce_any((x_adv < 0.0) | (x_adv > 1.0), axis=axes)
            return correct, linf, l2, outside

        return run

    def compiled(self, attack, x_spec):
        key = attack if _hashable(attack) else id(attack)
        if key not in self._compiled:
            self._compiled[key] = self._compile(attack, x_spec)
        return self._compiled[key]

    def clean(self, x_spec):
        if self._clean is None:
            model_fn = self.model_fn

            @tf.function(input_signature=[x_spec, tf.TensorSpec([None], tf.int32)])
            def correct_clean(x, y):
                return tf.argmax(model_fn(x), axis=-1, output_type=tf.int32) == y

            self._clean = correct_clean
        return self._clean

    def run(self, dataset, entries, limit=None, verbose=0):
        """Fills each entry's per-example results; returns the clean correctness [N]."""
        cardinality = int(dataset.cardinality())
        batches = cardinality if cardinality > 0 else None
        # The shown values are running accuracies already: stateful, so Progbar does not average them
        # again; verbose=2 (logs, not a terminal) prints one line at the end instead of every batch.
        shown_keys = ["clean_acc"] + [e.key for e in entries]
        progress = keras.utils.Progbar(batches, unit_name="batch", verbose=verbose, stateful_metrics=shown_keys) \
            if verbose else None
        clean_all, seen = [], 0
        for index, (x, y) in enumerate(dataset):
            if limit is not None and seen >= limit:
                break
            # Images of the first batch, every batch's labels (cheap) against the model's classes.
            if index == 0:
                check_batch(x.numpy(), y.numpy(), self.num_classes, self.input_shape, "evaluation data")
            else:
                check_labels(y.numpy(), self.num_classes, "evaluation data")
            x = tf.cast(x, tf.float32)
            y = tf.reshape(tf.cast(y, tf.int32), [-1])
            if limit is not None and seen + int(y.shape[0]) > limit:
                x, y = x[: limit - seen], y[: limit - seen]
            x_spec = tf.TensorSpec([None] + list(x.shape[1:]), tf.float32)
            clean = self.clean(x_spec)(x, y).numpy()
            clean_all.append(clean)
            start, n = seen, int(y.shape[0])
            seen += n
            batch_seed = tf.constant([self.seed, index], tf.int32)
            for entry in entries:
                m = entry.count_in(start, n)
                if m:
                    self._run_entry(entry, x[:m], y[:m], clean[:m], batch_seed, x_spec)
            if progress:
                shown = [("clean_acc", float(np.mean(np.concatenate(clean_all))))]
                shown += [(e.key, float(np.mean(np.concatenate(e.correct)))) for e in entries
                          if e.role == "main" and e.kind != "l2" and e.correct]
                progress.update(index + 1, shown)
        if not clean_all:
            raise ValueError("The dataset is empty.")
        if progress and batches is None:
            progress.update(index + 1, finalize=True)
        return np.concatenate(clean_all)

    def _run_entry(self, entry, x, y, clean, batch_seed, x_spec):
        entry.clean.append(clean)
        correct = clean.copy()
        l2 = np.full(clean.shape, np.nan, np.float32)
        for stage, (_, attack) in enumerate(entry.stages):
            index = np.flatnonzero(correct)
            if index.size:
                seed = batch_seed if stage == 0 else tf.random.experimental.stateless_fold_in(batch_seed, stage)
                start = time.perf_counter()
                ok, linf, norms, outside = self.compiled(attack, x_spec)(
                    tf.gather(x, index), tf.gather(y, index), tf.constant(entry.eps, tf.float32), seed
                )
                ok, linf, norms, outside = ok.numpy(), linf.numpy(), norms.numpy(), outside.numpy()
                entry.seconds[stage] += time.perf_counter() - start
                correct[index] = ok
                l2[index] = norms
                entry.max_linf = max(entry.max_linf, float(linf.max()))
                entry.outside_box += int(outside.sum())
            entry.stage_correct[stage].append(correct.copy())
        entry.correct.append(correct)
        entry.l2.append(l2)


def _hashable(obj):
    try:
        hash(obj)
        return True
    except TypeError:
        return False


def noise_tolerance(accuracy_a, accuracy_b, n):
    """Two binomial standard errors of an accuracy on n examples, plus one example."""
    p = min(max((accuracy_a + accuracy_b) / 2, 0.0), 1.0)
    return 2.0 * math.sqrt(p * (1.0 - p) / max(n, 1)) + 1.0 / max(n, 1)


def _accuracy(entry):
    return float(np.mean(np.concatenate(entry.correct))) if entry.correct else float("nan")


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


def _sanity_entries(main, eps, sanity_limit):
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
            extra.append(_Entry(key, attack, at_eps, sanity_limit, "sanity"))
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
    iterative = [e for e in at_eps if _is_untargeted_iterative(e.attack)]
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
        acc = _accuracy(large[0])
        checks["large_eps_accuracy_near_zero"] = {
            "passed": acc <= LARGE_EPS_MAX_ACCURACY,
            "accuracy": acc,
            "detail": f"{large[0].key} at eps = {large_eps:g}: accuracy {acc:.4f} "
            + ("<= " if acc <= LARGE_EPS_MAX_ACCURACY else "> ") + f"{LARGE_EPS_MAX_ACCURACY} "
            + ("" if acc <= LARGE_EPS_MAX_ACCURACY
               else "(the attack cannot even break a huge budget: gradient masking?)"),
        }

    squares = [e for e in at_eps if isinstance(e.attack, attacks_lib.Square)]
    white = [e for e in at_eps if _is_gradient_linf(e.attack)]
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


def evaluate(
    model,
    dataset,
    attacks=("pgd20",),
    eps=8 / 255,
    seed=0,
    verbose=1,
    limit=None,
    sanity=True,
    sanity_limit=500,
    sweep_eps=None,
    sweep_attacks=None,
    sweep_limit=500,
):
    """Clean and robust accuracy of `model` (images in [0, 1] -> logits) on `dataset`.

    Args:
      model: any Keras classifier returning logits (an AdversarialModel works as is).
      dataset: tf.data.Dataset of (images, labels) batches.
      attacks: attack names, "name@N" (first N examples only) or attack objects; see
        `seat_tf.attacks_lib.NAMES_HELP`. DeepFool / CW-L2 are reported as fooling rate and
        median L2 norm under "minimal_perturbation".
      eps: L-inf radius in [0, 1] units.
      seed: seed of the attacks' randomness (same seed, same result).
      verbose: 1 shows a progress bar over batches.
      limit: evaluate on the first `limit` examples only.
      sanity: run the sanity checks (module docstring) on the first `sanity_limit` examples.
      sweep_eps: eps values for robust accuracy against eps (the report's plot), for
        `sweep_attacks` (default: the L-inf attacks above) on the first `sweep_limit` examples.

    Returns:
      dict: num_examples, eps, seed, clean_accuracy, attacks {name: {robust_accuracy, seconds,
      num_examples, clean_accuracy, max_linf[, stages]}}, minimal_perturbation {name:
      {fooling_rate, median_l2, ...}}, worst_case_accuracy (robust only if no attack fooled it,
      on the first worst_case_num_examples examples), sanity_checks, sanity_passed[, sweep].
    """
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or not 0 <= eps <= 1:
        raise ValueError(f"eps must be a number in [0, 1] (pixel scale, e.g. 8/255), got {eps!r}.")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}.")
    if isinstance(attacks, str):
        attacks = [attacks]
    main = []
    for spec in attacks:
        key, attack, count = _parse(spec)
        if any(e.key == key for e in main):
            raise ValueError(f"Attack {key!r} is listed twice.")
        main.append(_Entry(key, attack, eps, count))
    extra, large_eps = _sanity_entries(main, eps, sanity_limit) if sanity else ([], None)
    runner = _Runner(model, seed)
    clean = _run_entries(runner, dataset, main + extra, limit, verbose)
    result = {"num_examples": int(clean.size), "eps": float(eps), "seed": seed, "clean_accuracy": float(clean.mean()),
              "attacks": {}, "minimal_perturbation": {}}
    worst = None
    for entry in main:
        if not entry.correct:
            continue
        if entry.kind == "l2":
            result["minimal_perturbation"][entry.key] = _summary(entry)
            continue
        result["attacks"][entry.key] = _summary(entry)
        correct = np.concatenate(entry.correct)
        worst = correct if worst is None else worst[: correct.size] & correct[: worst.size]
    if worst is None:
        worst = clean
    result["worst_case_accuracy"] = float(worst.mean())
    result["worst_case_num_examples"] = int(worst.size)
    if sanity:
        checks = sanity_checks(main + extra, float(eps), large_eps)
        result["sanity_checks"] = checks
        result["sanity_attacks"] = {e.key: _summary(e) for e in extra if e.correct}
        result["sanity_passed"] = all(c["passed"] is not False for c in checks.values())
        if verbose and not result["sanity_passed"]:
            for name, check in checks.items():
                if check["passed"] is False:
                    print(f"\nWARNING: sanity check {name} FAILED: {check['detail']}")
    if sweep_eps is not None:
        result["sweep"] = _sweep(runner, dataset, main, sweep_eps, sweep_attacks, sweep_limit, verbose)
    return result


def _run_entries(runner, dataset, entries, limit, verbose):
    """Runs the entries; composites whose members all ran are derived from them."""
    derived = {id(e): _members_in(e, entries) for e in entries if e.kind == "composite"}
    derived = {k: v for k, v in derived.items() if v}
    clean = runner.run(dataset, [e for e in entries if id(e) not in derived], limit=limit, verbose=verbose)
    for entry in entries:
        if id(entry) in derived:
            _derive_composite(entry, derived[id(entry)], clean)
    return clean


def _members_in(composite, entries):
    """The entries that already ran each member of `composite` on at least its examples, or
    None. A composite's result is then derived from them instead of run again."""
    found = []
    for _, attack in composite.stages:
        match = [e for e in entries if e.kind == "linf" and e.attack == attack and e.eps == composite.eps
                 and (e.limit is None or (composite.limit is not None and e.limit >= composite.limit))]
        if not match:
            return None
        found.append(match[0])
    return found


def _derive_composite(entry, members, clean):
    """Correct under the composite = correct clean and under every member. Each member ran on
    all clean-correct examples rather than on those earlier members left, which gives the same
    per-example outcome up to the attacks' random draws."""
    n = clean.size if entry.limit is None else min(entry.limit, clean.size)
    correct = clean[:n].copy()
    entry.clean, entry.correct = [clean[:n]], [correct]
    for stage, member in enumerate(members):
        correct = correct & np.concatenate(member.correct)[:n]
        entry.stage_correct[stage] = [correct]
        entry.seconds[stage] = sum(member.seconds)
        entry.max_linf = max(entry.max_linf, member.max_linf)
        entry.outside_box += member.outside_box
    entry.correct = [correct]
    entry.derived_from = [m.key for m in members]


def _sweep(runner, dataset, main, eps_values, attack_specs, limit, verbose):
    """Robust accuracy against eps on the first `limit` examples."""
    if attack_specs is None:
        parsed = [(e.key, e.attack) for e in main if e.kind != "l2"]
    else:
        parsed = [_parse(spec)[:2] for spec in attack_specs]
        if any(_kind(a) == "l2" for _, a in parsed):
            raise ValueError("Minimal-perturbation attacks (DeepFool, CW-L2) have no eps to sweep.")
    eps_values = sorted(float(e) for e in eps_values)
    if any(not 0 <= e <= 1 for e in eps_values):
        raise ValueError(f"Sweep eps values must lie in [0, 1], got {eps_values}.")
    sweep = {"eps": eps_values, "num_examples": None, "accuracy": {key: [] for key, _ in parsed}, "seconds": 0.0}
    start = time.perf_counter()
    for value in eps_values:
        entries = [_Entry(key, attack, value, None, "sweep") for key, attack in parsed]
        clean = _run_entries(runner, dataset, entries, limit, 0)
        sweep["num_examples"], sweep["clean_accuracy"] = int(clean.size), float(clean.mean())
        for entry in entries:
            sweep["accuracy"][entry.key].append(_accuracy(entry))
        if verbose:
            print(f"eps={value:g}: " + ", ".join(f"{e.key} {_accuracy(e):.4f}" for e in entries))
    sweep["seconds"] = round(time.perf_counter() - start, 1)
    return sweep


# -- reports --------------------------------------------------------------------------------


def _fmt(value, digits=4):
    return "" if value is None else f"{value:.{digits}f}"


def format_table(result):
    """A Markdown table of a result from `evaluate`: accuracy under each attack, the number of
    examples it ran on and the clean accuracy on those same examples (subsets differ)."""
    lines = ["| attack | examples | clean on these | robust accuracy | seconds |", "|---|---|---|---|---|",
             f"| clean | {result['num_examples']} | {result['clean_accuracy']:.4f} | | |"]
    for name, entry in result["attacks"].items():
        label = f"{name} (all of {', '.join(entry['derived_from'])})" if entry.get("derived_from") else name
        clean = _fmt(entry.get("clean_accuracy"))
        lines.append(f"| {label} | {entry.get('num_examples', '')} | {clean} | {entry['robust_accuracy']:.4f} | "
                     f"{entry['seconds']:.1f} |")
        for stage in entry.get("stages", []):
            lines.append(f"| &nbsp;&nbsp;after {stage['attack']} | | | {stage['robust_accuracy']:.4f} | "
                         f"{stage['seconds']:.1f} |")
    lines.append(f"| worst case | {result.get('worst_case_num_examples', result['num_examples'])} | | "
                 f"{result['worst_case_accuracy']:.4f} | |")
    return "\n".join(lines)


def failed_sanity_checks(result):
    """Names of the sanity checks of an evaluation result that failed (skipped ones are not failures)."""
    return [name for name, check in result.get("sanity_checks", {}).items() if check["passed"] is False]


def format_report(result, title="Robustness report", plot_name=None):
    """The Markdown report: the table, a paper-style row, minimal-perturbation attacks and the
    sanity checks (failures in bold, first)."""
    eps = result["eps"]
    lines = [f"# {title}", ""]
    for key in ("model", "dataset"):
        if key in result:
            lines.append(f"- {key}: `{result[key]}`")
    lines += [f"- eps (L-inf, [0, 1] scale): {eps:g} (= {eps * 255:.1f}/255)",
              f"- examples: {result['num_examples']} (attacks marked with fewer examples ran on the first N); "
              f"seed {result['seed']}",
              "- robust = correct on the clean image and under the attack; seconds are wall-clock and include graph "
              "tracing; a composite derived from its members' runs shows their seconds", ""]
    checks = result.get("sanity_checks", {})
    failed = failed_sanity_checks(result)
    if failed:
        lines += [f"**WARNING: {len(failed)} sanity check(s) failed ({', '.join(failed)}); see below. "
                  "The robust accuracies above may overstate robustness.**", ""]
    lines += ["## Robust accuracy", "", format_table(result), ""]
    names = list(result["attacks"])
    if names:
        lines += ["Paper-style row (accuracy, %):", "",
                  "| clean | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1),
                  f"| {100 * result['clean_accuracy']:.2f} | "
                  + " | ".join(f"{100 * result['attacks'][n]['robust_accuracy']:.2f}" for n in names) + " |", ""]
    if result.get("minimal_perturbation"):
        lines += ["## Minimal-perturbation attacks (L2)", "",
                  "| attack | examples | fooling rate | median L2 | mean L2 | seconds |", "|---|---|---|---|---|---|"]
        for name, m in result["minimal_perturbation"].items():
            lines.append(f"| {name} | {m['num_examples']} | {m['fooling_rate']:.4f} | {_fmt(m['median_l2'])} | "
                         f"{_fmt(m['mean_l2'])} | {m['seconds']:.1f} |")
        lines += ["", "Fooling rate over the correctly classified examples; norms over the fooled ones.", ""]
    if checks:
        lines += ["## Sanity checks", ""]
        order = sorted(checks, key=lambda n: {False: 0, None: 2}.get(checks[n]["passed"], 1))
        for name in order:
            check = checks[name]
            mark = {True: "PASS", False: "**FAIL**", None: "skipped"}[check["passed"]]
            lines.append(f"- {mark} `{name}`: {check['detail']}")
        if result.get("sanity_attacks"):
            lines += ["", "Extra runs for the checks: " + ", ".join(
                f"{k} {v['robust_accuracy']:.4f} (n={v['num_examples']}, {v['seconds']:.1f} s)"
                for k, v in result["sanity_attacks"].items())]
        lines.append("")
    if "sweep" in result and plot_name:
        sweep = result["sweep"]
        lines += ["## Robust accuracy against eps", "",
                  f"On the first {sweep['num_examples']} examples: ![accuracy vs eps]({plot_name})", "",
                  "| eps | " + " | ".join(sweep["accuracy"]) + " |", "|" + "---|" * (len(sweep["accuracy"]) + 1)]
        for i, value in enumerate(sweep["eps"]):
            lines.append(f"| {value:g} | " + " | ".join(f"{acc[i]:.4f}" for acc in sweep["accuracy"].values()) + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(result, outdir, title="Robustness report"):
    """Writes report.json, report.md and (if the result has a sweep) robust_accuracy_vs_eps.png
    into outdir, each atomically. Returns the paths written."""
    os.makedirs(outdir, exist_ok=True)
    paths = {"json": os.path.join(outdir, "report.json"), "md": os.path.join(outdir, "report.md")}
    plot_name = None
    if "sweep" in result:
        plot_name = "robust_accuracy_vs_eps.png"
        paths["png"] = os.path.join(outdir, plot_name)
        reporting.plot_accuracy_vs_eps(result["sweep"], paths["png"], eps=result["eps"])
    fileio.write_json_atomic(result, paths["json"])
    fileio.write_text_atomic(format_report(result, title=title, plot_name=plot_name), paths["md"])
    return paths
