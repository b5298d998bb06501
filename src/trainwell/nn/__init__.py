"""The neural-network layer: activations, norms, init schemes and models (recurrent ones included), each a registry.

Example::

    from trainwell.config import resolve
    from trainwell.nn import build_model

    cfg = resolve(["model.name=cnn", "model.channels=32,64,128"])
    model = build_model(cfg, input_shape=(1, 40), num_classes=10, generator=torch.Generator().manual_seed(0))
"""

from trainwell.nn.activations import ACTIVATIONS, activation_gain, build_activation, parse_activation
from trainwell.nn.init import INITS, fans, init_model, layer_gain
from trainwell.nn.models import MODELS, build_model
from trainwell.nn import recurrent  # noqa: F401  (registers rnn, gru, lstm in MODELS)
from trainwell.nn.norms import NORMS, build_norm, num_groups

__all__ = [
    "ACTIVATIONS",
    "INITS",
    "MODELS",
    "NORMS",
    "activation_gain",
    "build_activation",
    "build_model",
    "build_norm",
    "fans",
    "init_model",
    "layer_gain",
    "num_groups",
    "parse_activation",
]
