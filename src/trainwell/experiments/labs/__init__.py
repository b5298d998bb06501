"""The lecture's labs, one module each; importing this package registers them all in ``LABS``."""

from trainwell.experiments.labs import (  # noqa: F401
    activations,
    augmentation,
    batchnorm,
    dropout,
    dying_relu,
    ensembles,
    init,
    mixup,
    orthogonal,
    preprocessing,
    regularization,
    schedules,
    selu,
    transfer,
)
