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

from seat_tf import attacks, data, diagnostics, evaluation, export, losses, models, schedules, validation  # noqa: E402
from seat_tf.attacks import APGD, FAB, CarliniWagnerL2, Composite, DeepFool, Square, get_attack  # noqa: E402
from seat_tf.attacks import LinfPGD  # noqa: E402
from seat_tf.data import load_dataset  # noqa: E402
from seat_tf.diagnostics import (  # noqa: E402
    CatastrophicOverfittingMonitor,
    DivergenceGuard,
    LinearityErrorMonitor,
)
from seat_tf.evaluation import evaluate, write_report  # noqa: E402
from seat_tf.training import (  # noqa: E402
    METHODS,
    AdversarialModel,
    ELLEAModel,
    ELLEModel,
    FGSMATModel,
    GradAlignModel,
    NFGSMModel,
    PGDATModel,
    RSFGSMModel,
    SEATModel,
    SEATVariant,
    TRADESModel,
    get_method,
)

__version__ = "0.1.0"

__all__ = [
    "APGD",
    "METHODS",
    "AdversarialModel",
    "ELLEAModel",
    "ELLEModel",
    "CarliniWagnerL2",
    "CatastrophicOverfittingMonitor",
    "Composite",
    "DeepFool",
    "DivergenceGuard",
    "FAB",
    "FGSMATModel",
    "GradAlignModel",
    "LinearityErrorMonitor",
    "LinfPGD",
    "NFGSMModel",
    "PGDATModel",
    "RSFGSMModel",
    "SEATModel",
    "SEATVariant",
    "Square",
    "TRADESModel",
    "attacks",
    "data",
    "diagnostics",
    "evaluate",
    "evaluation",
    "export",
    "get_attack",
    "get_method",
    "load_dataset",
    "losses",
    "models",
    "schedules",
    "validation",
    "write_report",
]
