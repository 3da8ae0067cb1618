"""n_fgsm on CIFAR-10 with PreActResNet18, as in the SEAT paper's comparison
(see seat_tf.experiment.cifar10_paper_config for the shared recipe).

    seat-tf train --config=configs/cifar10_n_fgsm.py --workdir=runs/cifar10_n_fgsm
"""

from seat_tf.experiment import cifar10_paper_config


def get_config(arg=None):
    return cifar10_paper_config("n_fgsm", arg)
