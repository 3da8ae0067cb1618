"""Per-channel input standardization as a layer, so models take raw images in [0, 1]."""

import keras

# Channel statistics of the training sets, in [0, 1] units.
DATASET_STATS = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn_cropped": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}


def standardize(mean, std):
    """A Normalization layer with fixed statistics: (x - mean) / std per channel.

    Keeping it inside the model means attacks, eps, export and serving all work in the
    [0, 1] pixel space that users and the paper use.
    """
    return keras.layers.Normalization(
        mean=list(mean), variance=[s * s for s in std], name="standardize"
    )
