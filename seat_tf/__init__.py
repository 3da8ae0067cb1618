"""seat-tf: SEAT and baseline adversarial training for Keras 3 / TensorFlow.

    import keras, seat_tf
    classifier = seat_tf.models.small_cnn(input_shape=(28, 28, 1), num_classes=10)
    model = seat_tf.SEATModel(classifier, epsilon=0.1, lam=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    model.fit(train_ds, validation_data=test_ds, epochs=10)
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

try:
    import tensorflow  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "seat-tf needs TensorFlow. Install one flavour: pip install 'seat-tf[gpu]' (NVIDIA GPUs), "
        "'seat-tf[tf]' (standard wheel) or 'seat-tf[cpu]' (CPU only)."
    ) from error

from seat_tf import attacks, data, losses, models, schedules  # noqa: E402
from seat_tf import export  # noqa: E402  (SavedModel export for TF Serving)
from seat_tf import diagnostics  # noqa: E402
from seat_tf.data import load_dataset  # noqa: E402
from seat_tf.diagnostics import CatastrophicOverfittingMonitor, LinearityErrorMonitor  # noqa: E402
from seat_tf.evaluation import evaluate  # noqa: E402
from seat_tf.training import (  # noqa: E402
    METHODS,
    AdversarialModel,
    FGSMATModel,
    GradAlignModel,
    NFGSMModel,
    PGDATModel,
    RSFGSMModel,
    SEATModel,
    TRADESModel,
    get_method,
)

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "AdversarialModel",
    "CatastrophicOverfittingMonitor",
    "FGSMATModel",
    "GradAlignModel",
    "LinearityErrorMonitor",
    "NFGSMModel",
    "PGDATModel",
    "RSFGSMModel",
    "SEATModel",
    "TRADESModel",
    "attacks",
    "data",
    "diagnostics",
    "evaluate",
    "export",
    "get_method",
    "load_dataset",
    "losses",
    "models",
    "schedules",
]
