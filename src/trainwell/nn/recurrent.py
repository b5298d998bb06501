"""Recurrent models: ``rnn`` (Elman, tanh), ``gru`` and ``lstm``, on torch.nn.RNN/GRU/LSTM, with a linear head.

How an example becomes a sequence (batch axis excluded, as everywhere in :data:`~trainwell.nn.models.MODELS`):

* ``(T,)``: T steps of one feature (a plain vector read in order);
* ``(C, T)`` with ``model.layout=channels_first`` (the default): T steps of C features, time on the
  last axis. This is how trainwell's data gives signals and how the cnn reads them: MNIST-1D's
  ``(1, 40)`` is 40 steps of one feature;
* ``(T, F)`` with ``model.layout=channels_last``: T steps of F features, time first (torch's
  ``batch_first`` layout).

The stack (``model.layers`` layers of ``model.hidden`` units per direction, ``model.bidirectional``)
runs over the whole sequence from a zero state; ``model.readout`` picks what the head sees:
``last``, the top layer's final state h_T (when bidirectional, the forward state after step T and the
backward one after step 1, concatenated), or ``mean``, the top layer's outputs averaged over the T
steps. ``model.dropout`` acts between stacked layers (torch's ``dropout``) and on the readout.
The cells are torch's (cuDNN on a GPU): ``rnn`` is h_t = tanh(W_ih x_t + b_ih + W_hh h_(t-1) + b_hh)
(Elman 1990), ``gru`` Cho et al. 2014, ``lstm`` Hochreiter & Schmidhuber 1997 with Gers et al.'s
forget gate. ``model.activation`` and ``model.norm`` do not apply: the cells fix their own
nonlinearities (tanh, and sigmoid gates), and the lecture's RNN is the tanh one.

Initialisation (:func:`trainwell.nn.init.init_recurrent`): the input-to-hidden gate blocks follow
``init.scheme``, the hidden-to-hidden ones ``init.recurrent`` (orthogonal by default).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from trainwell.config import ModelConfig
from trainwell.errors import ConfigError
from trainwell.nn.models import MODELS, check_model, linear

#: ``model.readout`` choices: the final state, or the outputs averaged over time.
READOUTS = ("last", "mean")
#: ``model.layout`` choices for a 2-D example: (C, T) or (T, F).
LAYOUTS = ("channels_first", "channels_last")
#: The accepted example ranks as the error message names them.
_SHAPE_NAMES = {1: "(T,)", 2: "(C, T) (model.layout=channels_first) or (T, F) (channels_last)"}


class RecurrentClassifier(nn.Module):
    """sequence(x) -> torch recurrent stack -> readout -> dropout -> Linear.

    Shape: (N, T) or (N, C, T) / (N, T, F) per ``layout`` -> (N, num_classes).
    """

    def __init__(self, cell: Callable[..., nn.RNNBase], features: int, cfg: ModelConfig, num_classes: int) -> None:
        super().__init__()
        self.readout = cfg.readout
        self.channels_first = cfg.layout == "channels_first"
        # torch applies its dropout after every layer but the last (and warns on one layer).
        between = cfg.dropout if cfg.layers > 1 else 0.0
        self.rnn = cell(features, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                        bidirectional=cfg.bidirectional, dropout=between)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        directions = 2 if cfg.bidirectional else 1
        self.head = linear(directions * cfg.hidden, num_classes, "identity")

    def sequence(self, x: Tensor) -> Tensor:
        """(N, T) -> (N, T, 1); (N, C, T) -> (N, T, C) when channels-first; (N, T, F) as it is."""
        if x.ndim == 2:
            return x.unsqueeze(-1)
        return x.transpose(1, 2) if self.channels_first else x

    def forward(self, x: Tensor) -> Tensor:
        outputs, state = self.rnn(self.sequence(x))  # outputs (N, T, D*H); state (layers*D, N, H)
        if self.readout == "mean":
            features = outputs.mean(dim=1)
        else:
            h_n = state[0] if isinstance(state, tuple) else state  # an LSTM returns (h_n, c_n)
            directions = 2 if self.rnn.bidirectional else 1
            top = h_n[-directions:]  # the top layer's final state of each direction: (D, N, H)
            # flatten, not reshape(len(x), -1): len() makes the batch size a constant in a traced or
            # exported graph (trainwell export), which then takes batches of that size only.
            features = top.transpose(0, 1).flatten(1)  # (N, D*H), forward first
        return self.head(self.dropout(features))


def _build(cell: Callable[..., nn.RNNBase], cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    check_model(cfg, input_shape, num_classes, ranks=(1, 2), shape_names=_SHAPE_NAMES)
    if cfg.hidden < 1:
        raise ConfigError(f"model.hidden must be >= 1, got {cfg.hidden}; e.g. model.hidden=128.")
    if cfg.layers < 1:
        raise ConfigError(f"model.layers must be >= 1, got {cfg.layers}; e.g. model.layers=2.")
    if cfg.readout not in READOUTS:
        raise ConfigError(f"model.readout must be one of {', '.join(READOUTS)}, got '{cfg.readout}'.")
    if cfg.layout not in LAYOUTS:
        raise ConfigError(f"model.layout must be one of {', '.join(LAYOUTS)}, got '{cfg.layout}'.")
    if len(input_shape) == 1:
        features = 1
    else:
        features = input_shape[0] if cfg.layout == "channels_first" else input_shape[1]
    return RecurrentClassifier(cell, features, cfg, num_classes)


@MODELS.register("rnn", input_ranks=(1, 2))
def rnn(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Elman RNN, h_t = tanh(W_ih x_t + W_hh h_(t-1) + b), stacked model.layers deep, read out by a Linear head."""
    return _build(nn.RNN, cfg, input_shape, num_classes)


@MODELS.register("gru", input_ranks=(1, 2))
def gru(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Gated recurrent unit (Cho et al. 2014): reset and update gates over a tanh state; a Linear head."""
    return _build(nn.GRU, cfg, input_shape, num_classes)


@MODELS.register("lstm", input_ranks=(1, 2))
def lstm(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Long short-term memory (Hochreiter & Schmidhuber 1997; forget gate, Gers et al. 2000); a Linear head."""
    return _build(nn.LSTM, cfg, input_shape, num_classes)


__all__ = ["LAYOUTS", "READOUTS", "RecurrentClassifier", "gru", "lstm", "rnn"]
