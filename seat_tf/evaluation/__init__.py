"""Robust accuracy of any Keras classifier under an attack suite, with sanity checks and a
report (JSON, Markdown table, accuracy-vs-eps plot).

    result = seat_tf.evaluate(model, test_ds, attacks=["fgsm", "pgd20", "standard@1000"], eps=0.1)
    result["clean_accuracy"], result["attacks"]["pgd20"]["robust_accuracy"], result["sanity_checks"]
    seat_tf.evaluation.write_report(result, "runs/eval")  # report.json, report.md, PNG

Attacks run one after the other over all batches (one progress bar with an ETA per attack
and composite stage), data-parallel under `strategy=` (the same per-example results as one
device), and with `checkpoint_dir=` each finished attack is saved so that a rerun loads it
instead of attacking again (`store.py`: keyed by model, data, attack, eps, examples, seed).

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

from seat_tf.evaluation.protocol import evaluate
from seat_tf.evaluation.report import failed_sanity_checks, format_report, format_table, write_report
from seat_tf.evaluation.sanity import BUDGET_TOLERANCE, LARGE_EPS, LARGE_EPS_MAX_ACCURACY, noise_tolerance, sanity_checks

__all__ = [
    "BUDGET_TOLERANCE",
    "LARGE_EPS",
    "LARGE_EPS_MAX_ACCURACY",
    "evaluate",
    "failed_sanity_checks",
    "format_report",
    "format_table",
    "noise_tolerance",
    "sanity_checks",
    "write_report",
]
