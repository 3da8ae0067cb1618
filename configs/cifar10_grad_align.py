"""grad_align on CIFAR-10 with PreActResNet18, as in the SEAT paper's comparison
(see seat_tf.experiment.cifar10_paper_config for the shared recipe).

    seat-tf train --config=configs/cifar10_grad_align.py --workdir=runs/cifar10_grad_align
"""

from seat_tf.experiment import cifar10_paper_config


def get_config(arg=None):
    return cifar10_paper_config("grad_align", arg)
