"""Adversarial-training methods: one skeleton (base.py), one small subclass per method."""

from seat_tf.training.base import AdversarialModel, check_batch
from seat_tf.training.baselines import (
    FGSMATModel,
    GradAlignModel,
    NFGSMModel,
    PGDATModel,
    RSFGSMModel,
    TRADESModel,
)
from seat_tf.training.elle import ELLEAModel, ELLEModel
from seat_tf.training.seat import SEATModel, SEATVariant

METHODS = {
    "seat": SEATModel,
    "fgsm_at": FGSMATModel,
    "rs_fgsm": RSFGSMModel,
    "n_fgsm": NFGSMModel,
    "pgd_at": PGDATModel,
    "trades": TRADESModel,
    "grad_align": GradAlignModel,
    "elle": ELLEModel,
    "elle_a": ELLEAModel,
}


def get_method(name):
    """The model class of a training method by name (see METHODS)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"Unknown training method {name!r}; choose one of {sorted(METHODS)}.") from None


__all__ = [
    "METHODS",
    "AdversarialModel",
    "ELLEAModel",
    "ELLEModel",
    "FGSMATModel",
    "GradAlignModel",
    "NFGSMModel",
    "PGDATModel",
    "RSFGSMModel",
    "SEATModel",
    "SEATVariant",
    "TRADESModel",
    "check_batch",
    "get_method",
]
