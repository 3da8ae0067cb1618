"""SEAT on CIFAR-10 with PreActResNet18: the paper's setting (see seat_tf.experiment.cifar10_paper_config).

Data from TFDS, or a local cifar-10-batches-py folder (--config.dataset.data_dir=...). For a GPU:

    seat-tf train --config=configs/cifar10_seat.py --workdir=runs/cifar10_seat
    seat-tf train --config=configs/cifar10_seat.py --config.method.flood_level=0.5 ...   # SEAT-FL
"""

from seat_tf.experiment import cifar10_paper_config


def get_config(arg=None):
    return cifar10_paper_config("seat", arg)
