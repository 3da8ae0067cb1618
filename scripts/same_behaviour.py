"""Prints a JSON fingerprint of SEAT training and evaluation for the installed seat_tf, so two
revisions can be compared (issue 15: a redesign must not change behaviour).

Version-agnostic on purpose (only APIs seat-tf 0.1 already had): builds the small CNN with a
fixed seed, trains the paper's SEAT (lam 0.5, eps 0.1, corner start, gradient through l(x))
for 40 steps on the first 5120 real Fashion-MNIST training images in a fixed order (no
shuffle), then evaluates FGSM and PGD-20 on the first 1000 test images.

    cd <checkout of revision A> && python scripts/same_behaviour.py > a.json
    cd <checkout of revision B> && python scripts/same_behaviour.py > b.json
"""

import hashlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.getcwd())  # the checkout being fingerprinted, not an installed copy

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import seat_tf  # noqa: E402


def main():
    keras.utils.set_random_seed(0)
    train = seat_tf.load_dataset("fashion_mnist", "train", batch_size=128, shuffle=False, limit=5120)
    test = seat_tf.load_dataset("fashion_mnist", "test", batch_size=250, limit=1000)
    classifier = seat_tf.models.small_cnn()
    if hasattr(seat_tf, "SEATVariant"):  # after the redesign: the paper's form is a preset
        model = seat_tf.SEATModel(classifier, epsilon=0.1, lam=0.5, variant="paper", seed=0, val_attack=None)
    else:  # seat-tf 0.1: the paper's form was the default
        model = seat_tf.SEATModel(classifier, epsilon=0.1, lam=0.5, seed=0, val_attack=None)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    history = model.fit(train, epochs=1, verbose=0)
    weights = np.concatenate([w.ravel() for w in classifier.get_weights()]).astype(np.float32)
    result = seat_tf.evaluate(classifier, test, attacks=("fgsm", "pgd20"), eps=0.1, seed=0, verbose=0, sanity=False)
    out = {
        "seat_tf": os.path.dirname(seat_tf.__file__),
        "weights_sha256": hashlib.sha256(weights.tobytes()).hexdigest(),
        "weights_sum": float(weights.astype(np.float64).sum()),
        "loss": history.history["loss"][-1],
        "clean_accuracy": result["clean_accuracy"],
        "robust_accuracy": {k: v.get("accuracy", v.get("robust_accuracy")) for k, v in result["attacks"].items()},
    }
    json.dump(out, sys.stdout, indent=1, default=str)
    print()


if __name__ == "__main__":
    main()
