"""Diagnostics: why a model is, or is not, robust, and what watches training.

    measure.py    measurements on a loss of the input (linearity error, Lipschitz bounds,
                  loss landscapes, boundary distortion) and `diagnose`, all of them at once
    monitors.py   LinearityErrorMonitor, CatastrophicOverfittingMonitor and `collapse_reasons`
                  (the library's one catastrophic-overfitting rule)
    guard.py      DivergenceGuard (added by every AdversarialModel.fit)

Their plots live in `seat_tf.reporting`.
"""

from seat_tf.diagnostics.guard import DivergenceGuard
from seat_tf.diagnostics.measure import (
    as_images,
    boundary_distortion,
    check_eps,
    diagnose,
    filter_normalized_direction,
    input_loss_landscape,
    local_linearity_error,
    local_lipschitz,
    model_loss_fn,
    weight_loss_landscape,
)
from seat_tf.diagnostics.monitors import (
    ACTIONS,
    CatastrophicOverfittingMonitor,
    LinearityErrorMonitor,
    ScaledSchedule,
    collapse_reasons,
    scale_learning_rate,
    scale_step_size,
)

__all__ = [
    "ACTIONS",
    "CatastrophicOverfittingMonitor",
    "DivergenceGuard",
    "LinearityErrorMonitor",
    "ScaledSchedule",
    "as_images",
    "boundary_distortion",
    "check_eps",
    "collapse_reasons",
    "diagnose",
    "filter_normalized_direction",
    "input_loss_landscape",
    "local_linearity_error",
    "local_lipschitz",
    "model_loss_fn",
    "scale_learning_rate",
    "scale_step_size",
    "weight_loss_landscape",
]
