"""L-inf attacks, in layers (each imports only the ones above it in this list):

    randomness.py  random draws of the global batch (the same for an example however the
                   batch is split over replicas).
    engine.py      `linf_attack`, the one engine (projected signed-gradient ascent with
                   starts, momentum, restarts, keep-worst); `LinfPGD` names FGSM / PGD /
                   CW-inf / MI-FGSM as configurations of it; random starts, projection.
    suite.py       APGD (a step rule on the engine), Square.
    minimal_l2.py  DeepFool, CW-L2 (minimal L2 perturbations; eps ignored).
    fab.py         FAB-T (minimal L-inf perturbation by projections onto linearized boundaries).
    registry.py    `get_attack(name)` for every name, and the `Composite` protocol
                   ("standard" = APGD-CE -> APGD-T -> FAB-T -> Square, AutoAttack's standard).

Every attack is a callable `attack(model_fn, x, y, eps, seed=None) -> x_adv` on images in
[0, 1], pure TensorFlow (runs inside `tf.function` and `train_step`).
"""

from seat_tf.attacks.engine import (
    INITS,
    TARGETS,
    LinfPGD,
    SignedStep,
    as_seed,
    choose_targets,
    fgsm,
    keep_worst,
    linf_attack,
    misclassified,
    pgd,
    project,
    random_start,
    targeted_objective,
    value_and_gradient,
    wrong_predictions,
)
from seat_tf.attacks.fab import FAB, project_to_hyperplane
from seat_tf.attacks.randomness import global_batch_noise, global_batch_rows, global_rows
from seat_tf.attacks.registry import FAST, NAMES_HELP, PRESETS, STANDARD, Composite, get_attack
from seat_tf.attacks.minimal_l2 import CarliniWagnerL2, DeepFool
from seat_tf.attacks.suite import APGD, APGDStep, Square, apgd_checkpoints, square_fraction

__all__ = [
    "APGD",
    "APGDStep",
    "CarliniWagnerL2",
    "Composite",
    "DeepFool",
    "FAB",
    "FAST",
    "INITS",
    "LinfPGD",
    "NAMES_HELP",
    "PRESETS",
    "STANDARD",
    "SignedStep",
    "Square",
    "TARGETS",
    "apgd_checkpoints",
    "as_seed",
    "choose_targets",
    "fgsm",
    "get_attack",
    "global_batch_noise",
    "global_batch_rows",
    "global_rows",
    "keep_worst",
    "linf_attack",
    "misclassified",
    "pgd",
    "project",
    "project_to_hyperplane",
    "random_start",
    "square_fraction",
    "targeted_objective",
    "value_and_gradient",
    "wrong_predictions",
]
