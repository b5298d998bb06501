"""Layer groups: a network's top-level children gathered into groups, bottom to top, the head last.

Fine-tuning freezes, unfreezes and scales the learning rate of whole groups (ULMFiT, Howard & Ruder
2018). mlp: one group per hidden block (Linear, norm, activation, dropout); cnn: one per conv block
(conv, norm, activation, pool; the last one also holds the global pooling); resnet: the stem conv,
then one per stage of residual blocks (the last stage also holds the final norm); rnn/gru/lstm: the
recurrent stack (one torch module holding every layer), then the head.
"""

from __future__ import annotations

from torch import nn

from trainwell.nn.layers import NORM_LAYERS
from trainwell.nn.models import PreActBlock
from trainwell.nn.pipeline import Classifier


def _unwrap(net: nn.Module) -> nn.Module:
    return net.net if isinstance(net, Classifier) else net


def named_layer_groups(net: nn.Module) -> list[list[tuple[str, nn.Module]]]:
    """:func:`layer_groups` with each module's name in ``net`` (a Classifier means its ``.net``)."""
    net = _unwrap(net)
    units: list[list[tuple[str, nn.Module]]] = []
    pending: list[tuple[str, nn.Module]] = []  # parameter-free modules before the first unit
    for name, child in net.named_children():
        has_params = any(True for _ in child.parameters())
        if has_params and (not units or not isinstance(child, NORM_LAYERS)):
            starts_stage = not (
                # A residual block that keeps its input's shape continues the stage of the block before.
                isinstance(child, PreActBlock) and child.shortcut is None
                and units and isinstance(units[-1][-1][1], PreActBlock)
            )
            if starts_stage:
                units.append(pending + [(name, child)])
                pending = []
            else:
                units[-1].append((name, child))
        elif units:
            units[-1].append((name, child))  # norms, activations, pooling join the layer before
        else:
            pending.append((name, child))
    if not units:
        return [pending] if pending else []
    return units


def layer_groups(net: nn.Module) -> list[list[nn.Module]]:
    """The network's layer groups, bottom to top, the head (final Linear) last.

    Derived from the top-level children of ``net`` (a Classifier means its ``.net``): every child with
    parameters starts a group, except a norm (it joins the layer it normalises) and a residual block
    that keeps its input's shape (it joins its stage); parameter-free children (activation, pooling,
    dropout, flatten) join the group before them. mlp: one group per hidden block; cnn: per conv block;
    resnet: the stem, then one per stage.
    """
    return [[m for _, m in group] for group in named_layer_groups(net)]


def group_parameters(net: nn.Module) -> list[list[tuple[str, nn.Parameter]]]:
    """The named parameters of each layer group (names as in ``net.named_parameters()``); parameters
    held by ``net`` itself rather than a child (e.g. a class token) join the bottom group."""
    net = _unwrap(net)
    groups = [[(f"{name}.{pn}", p) for name, m in group for pn, p in m.named_parameters()]
              for group in named_layer_groups(net)]
    own = list(net.named_parameters(recurse=False))
    if own:
        groups = [own + groups[0], *groups[1:]] if groups else [own]
    return groups


def group_names(net: nn.Module, prefix: str = "net.") -> list[str]:
    """A short name per layer group: the range of child names it spans, e.g. ``net.0-3``."""
    names = []
    for group in named_layer_groups(net):
        first, last = group[0][0], group[-1][0]
        names.append(f"{prefix}{first}" if first == last else f"{prefix}{first}-{last}")
    return names


def head_keys(net: nn.Module) -> set[str]:
    """State-dict keys (of ``net``) of the head group."""
    groups = named_layer_groups(net)
    if not groups:
        return set()
    return {f"{name}.{k}" for name, m in groups[-1] for k in m.state_dict()}


__all__ = ["group_names", "group_parameters", "head_keys", "layer_groups", "named_layer_groups"]
