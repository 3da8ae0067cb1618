"""`evaluate`: the evaluation protocol (correct examples only, composites stage by stage,
the eps sweep) over the runner, with the sanity checks."""

import contextlib
import time

import numpy as np

from seat_tf import distribute, fileio
from seat_tf.evaluation.runner import Entry, Runner, attack_kind, parse_spec
from seat_tf.evaluation.store import ResultStore
from seat_tf.validation import check_eps
from seat_tf.evaluation.sanity import entry_accuracy, entry_summary, sanity_checks, sanity_entries


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
    strategy=None,
    checkpoint_dir=None,
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
      verbose: 1 shows a progress bar with an ETA per attack (per stage of a composite), 2 one
        line per attack (logs).
      limit: evaluate on the first `limit` examples only.
      sanity: run the sanity checks (module docstring) on the first `sanity_limit` examples.
      sweep_eps: eps values for robust accuracy against eps (the report's plot), for
        `sweep_attacks` (default: the L-inf attacks above) on the first `sweep_limit` examples.
      strategy: a tf.distribute strategy (e.g. `seat_tf.distribute.make_strategy("mirrored")`):
        each replica attacks its share of every batch; the results equal one device's for the
        same seed. Build or load the model under `strategy.scope()` so that each replica holds
        its own copy of the weights.
      checkpoint_dir: a folder where each finished attack's per-example results are saved;
        a rerun (after a crash, or with more attacks) loads them instead of attacking again.
        Results are keyed by model weights, data, attack, eps, number of examples and seed.

    Returns:
      dict: num_examples, eps, seed, clean_accuracy, attacks {name: {robust_accuracy, seconds,
      num_examples, clean_accuracy, max_linf[, stages][, loaded: True if loaded from
      checkpoint_dir]}}, minimal_perturbation {name:
      {fooling_rate, median_l2, ...}}, worst_case_accuracy (robust only if no attack fooled it,
      on the first worst_case_num_examples examples), sanity_checks, sanity_passed[, sweep].
    """
    check_eps(eps)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}.")
    if isinstance(attacks, str):
        attacks = [attacks]
    main = []
    for spec in attacks:
        key, attack, count = parse_spec(spec)
        if any(e.key == key for e in main):
            raise ValueError(f"Attack {key!r} is listed twice.")
        main.append(Entry(key, attack, eps, count))
    extra, large_eps = sanity_entries(main, eps, sanity_limit) if sanity else ([], None)
    store, lock = None, contextlib.nullcontext()
    if checkpoint_dir is not None:
        # Workers of a multi-worker run keep their own copies (output_dir), as in training.
        folder = distribute.output_dir(checkpoint_dir, distribute.worker_info(strategy)) if strategy else checkpoint_dir
        store, lock = ResultStore(folder, model, seed), fileio.WorkdirLock(folder, "evaluate")
    runner = Runner(model, seed, strategy=strategy, store=store)
    with lock:
        clean = _run_entries(runner, dataset, main + extra, limit, verbose)
        result = _result(main, extra, clean, eps, seed, sanity, large_eps, verbose)
        if sweep_eps is not None:
            result["sweep"] = _sweep(runner, dataset, main, sweep_eps, sweep_attacks, sweep_limit, verbose)
    return result


def _result(main, extra, clean, eps, seed, sanity, large_eps, verbose):
    """The result dict of `evaluate` from the entries that ran."""
    result = {"num_examples": int(clean.size), "eps": float(eps), "seed": seed, "clean_accuracy": float(clean.mean()),
              "attacks": {}, "minimal_perturbation": {}}
    worst = None
    for entry in main:
        if not entry.correct:
            continue
        if entry.kind == "l2":
            result["minimal_perturbation"][entry.key] = entry_summary(entry)
            continue
        result["attacks"][entry.key] = entry_summary(entry)
        correct = np.concatenate(entry.correct)
        worst = correct if worst is None else worst[: correct.size] & correct[: worst.size]
    if worst is None:
        worst = clean
    result["worst_case_accuracy"] = float(worst.mean())
    result["worst_case_num_examples"] = int(worst.size)
    if sanity:
        checks = sanity_checks(main + extra, float(eps), large_eps)
        result["sanity_checks"] = checks
        result["sanity_attacks"] = {e.key: entry_summary(e) for e in extra if e.correct}
        result["sanity_passed"] = all(c["passed"] is not False for c in checks.values())
        if verbose and not result["sanity_passed"]:
            for name, check in checks.items():
                if check["passed"] is False:
                    print(f"\nWARNING: sanity check {name} FAILED: {check['detail']}")
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
        parsed = [parse_spec(spec)[:2] for spec in attack_specs]
        if any(attack_kind(a) == "l2" for _, a in parsed):
            raise ValueError("Minimal-perturbation attacks (DeepFool, CW-L2) have no eps to sweep.")
    eps_values = sorted(float(e) for e in eps_values)
    for value in eps_values:
        check_eps(value, "sweep eps")
    sweep = {"eps": eps_values, "num_examples": None, "accuracy": {key: [] for key, _ in parsed}, "seconds": 0.0}
    start = time.perf_counter()
    for value in eps_values:
        entries = [Entry(key, attack, value, None, "sweep") for key, attack in parsed]
        clean = _run_entries(runner, dataset, entries, limit, 0)
        sweep["num_examples"], sweep["clean_accuracy"] = int(clean.size), float(clean.mean())
        for entry in entries:
            sweep["accuracy"][entry.key].append(entry_accuracy(entry))
        if verbose:
            print(f"eps={value:g}: " + ", ".join(f"{e.key} {entry_accuracy(e):.4f}" for e in entries))
    sweep["seconds"] = round(time.perf_counter() - start, 1)
    return sweep


# -- reports --------------------------------------------------------------------------------
