"""Classifiers mapping images in [0, 1] to logits; normalization is a layer inside each."""

from seat_tf.models.preact_resnet import preact_resnet18
from seat_tf.models.small_cnn import small_cnn

MODELS = {"small_cnn": small_cnn, "preact_resnet18": preact_resnet18}


def get(name, **kwargs):
    """Builds a classifier by name (see MODELS)."""
    try:
        builder = MODELS[name]
    except KeyError:
        raise ValueError(f"Unknown model {name!r}; choose one of {sorted(MODELS)}.") from None
    return builder(**kwargs)


__all__ = ["MODELS", "get", "preact_resnet18", "small_cnn"]
