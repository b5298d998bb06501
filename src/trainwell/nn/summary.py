"""A model summary: each layer's output shape, parameters and forward FLOPs, and the model's training FLOPs.

Example::

    from trainwell.nn.summary import summarize, train_flops
    s = summarize(model, (1, 28, 28))        # input shape without the batch axis
    Console().print(s.table()); s.params, s.forward_flops, s.train_flops
    train_flops(model, (1, 28, 28)) * examples / seconds / 1e9   # achieved GFLOP/s of a timed run

What is counted is what :class:`torch.utils.flop_counter.FlopCounterMode` counts: matrix products
and convolutions (``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``convolution`` and their backward
kernels, attention kernels), each at 2 FLOPs per multiply-add. Not counted: elementwise ops
(bias additions, residual sums, dropout), activations, normalisation layers, pooling, the loss, and
the optimiser's update. They are few next to a convolution over many channels (a 3x3 one over C
input channels does 18C FLOPs per output value, a batch norm and a ReLU a handful), but they cost
memory traffic, and in a network's first layers (C = 1 or 3) they are not few.

*Training* FLOPs are measured, not assumed to be 3x the forward: one forward and one backward pass
are counted. The backward of a weight layer costs a weight-gradient product (as many FLOPs as its
forward) plus an input-gradient product, which autograd skips where the input needs no gradient, so
a network's first layer costs 2x its forward, the others 3x; frozen layers (``requires_grad=False``)
cost only what the layers below them need.

A layer whose weights (parameters of 2 or more dimensions) are read by a kernel FlopCounterMode has
no formula for is listed as *not counted*, never shown as 0: torch's fused LSTM on the CPU
(``mkldnn_rnn_layer``) is one, and so is cuDNN's RNN/GRU/LSTM kernel on a GPU (``_cudnn_rnn``, absent
from FlopCounterMode's formulas). (On the CPU, torch's
RNN and GRU run as matrix products and are counted.) The totals then count the other layers only,
and :attr:`ModelSummary.complete` is False.

Summarizing changes nothing: it runs the model in training mode on a zero batch, takes the gradient
with :func:`torch.autograd.grad` (``.grad`` stays as it was), restores every buffer (batch-norm
statistics) and every module's train/eval mode, and draws its random numbers (dropout) from a
forked RNG, so the global streams are untouched.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from trainwell.formatting import MISSING

#: Ops that read a weight without arithmetic on it: copies and lookups (views are recognised by ``is_view``).
_NO_ARITHMETIC = {torch.ops.aten.clone, torch.ops.aten._to_copy, torch.ops.aten.copy_, torch.ops.aten.detach,
                  torch.ops.aten.alias, torch.ops.aten.lift_fresh, torch.ops.aten.embedding,
                  torch.ops.aten.index_select, torch.ops.aten.zeros_like, torch.ops.aten.empty_like,
                  torch.ops.aten.ones_like, torch.ops.aten.cat, torch.ops.aten.stack}


@dataclass(frozen=True)
class LayerRow:
    """One leaf module (a module without children), in the order the forward pass first calls it."""

    name: str  #: qualified name in the model, e.g. ``net.0`` ("" for a model that is itself a leaf)
    kind: str  #: class name, e.g. ``Conv2d``
    output_shape: tuple[int, ...] | None  #: batch axis excluded (the first tensor of a tuple); None: never called
    params: int  #: its own parameters, trainable or not
    forward_flops: float | None  #: per example, over all its calls; None: not counted (see the module docstring)


@dataclass(frozen=True)
class ModelSummary:
    """A model's layers and totals for inputs of ``input_shape`` (batch axis excluded); FLOPs are per example."""

    input_shape: tuple[int, ...]
    rows: tuple[LayerRow, ...]
    params: int  #: all parameters (each shared tensor once)
    trainable_params: int  #: those with requires_grad
    forward_flops: float  #: counted forward FLOPs per example (all layers, and any product outside a leaf)
    train_flops: float  #: counted forward + backward FLOPs per example
    not_counted: tuple[str, ...]  #: layers whose products FlopCounterMode cannot count
    #: forward FLOPs of products in a container's own forward (e.g. a ``torch.bmm`` call), in no leaf
    outside_layers_flops: float = 0.0

    @property
    def frozen_params(self) -> int:
        return self.params - self.trainable_params

    @property
    def complete(self) -> bool:
        """Whether every layer's products were counted (else the FLOP totals leave ``not_counted`` out)."""
        return not self.not_counted

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values: the totals, ``complete``, and one dict per layer."""
        return {"input_shape": list(self.input_shape), "params": self.params, "trainable_params": self.trainable_params,
                "forward_flops_per_example": self.forward_flops, "train_flops_per_example": self.train_flops,
                "outside_layers_flops_per_example": self.outside_layers_flops,
                "complete": self.complete, "not_counted": list(self.not_counted),
                "layers": [{**asdict(r), "output_shape": None if r.output_shape is None else list(r.output_shape)}
                           for r in self.rows]}

    def table_rows(self) -> list[tuple[str, str, str, str, str]]:
        """(layer, type, output shape, params, forward FLOPs per example) as text, one per layer."""
        rows = [(r.name or "(model)", r.kind, _shape_text(r.output_shape), f"{r.params:,}",
                 _flops_text(r.forward_flops)) for r in self.rows]
        if self.outside_layers_flops != 0:
            rows.append(("(outside layers)", "", "", "", _flops_text(self.outside_layers_flops)))
        return rows

    def totals_text(self) -> list[str]:
        """The totals as lines of text; the FLOP lines say what they leave out."""
        partial = "" if self.complete else f" (at least: not counted in {', '.join(self.not_counted)})"
        return [f"params {self.params:,} ({self.trainable_params:,} trainable, {self.frozen_params:,} frozen)",
                f"forward {in_units(self.forward_flops)} MFLOP/example{partial}",
                f"train (forward + backward) {in_units(self.train_flops)} MFLOP/example{partial}",
                f"FLOPs: matrix products and convolutions, 2 per multiply-add ({MISSING}: none); elementwise ops, "
                "activations, norms and pooling are not counted."]

    def table(self) -> Any:
        """The layers as a :class:`rich.table.Table` (``rich.console.Console().print(summary.table())``)."""
        from rich.table import Table
        from rich.text import Text

        table = Table(title=f"input {_shape_text(self.input_shape)}", title_justify="left")
        for column, right in (("layer", False), ("type", False), ("output", False), ("params", True),
                              ("fwd FLOPs", True)):
            table.add_column(column, justify="right" if right else "left")
        for row in self.table_rows():
            table.add_row(*(Text(cell) for cell in row))  # plain text: '[...]' in a name is not markup
        return table


def summarize(model: nn.Module, input_shape: Sequence[int], batch_size: int = 2) -> ModelSummary:
    """Each leaf module's type, output shape, parameters and forward FLOPs, and the totals, for one
    forward and backward pass of ``batch_size`` zero inputs of ``input_shape`` (batch axis excluded).

    FLOPs are per example (the batch's count / ``batch_size``); see the module docstring for what is
    counted. The model's parameters, gradients, buffers, modes and the global RNG are left as they were.
    """
    input_shape = tuple(int(s) for s in input_shape)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    leaves = [(name, m) for name, m in model.named_modules() if next(m.children(), None) is None]
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = torch.zeros(batch_size, *input_shape, device=device, dtype=dtype)
    trainable = [p for p in model.parameters() if p.requires_grad]

    tally = _LayerTally(leaves)
    weights = _WeightReads({_storage(p): name for name, m in leaves
                            for p in m.parameters(recurse=False) if p.ndim >= 2 and p.numel()})
    counter = FlopCounterMode(display=False)
    with _unchanged(model, device), counter, weights, tally.hooks(counter):
        out = _first_tensor(model(x))
        forward = counter.get_total_flops()
        if trainable and out is not None and out.requires_grad:
            torch.autograd.grad(out.float().sum(), trainable, allow_unused=True)
    total = counter.get_total_flops()
    rows = tuple(LayerRow(name, type(m).__name__, tally.shapes.get(m), sum(p.numel() for p in m.parameters()),
                          None if name in weights.uncounted else tally.flops.get(m, 0) / batch_size)
                 for name, m in tally.ordered())
    params = list(model.parameters())  # each shared tensor once
    return ModelSummary(
        input_shape=input_shape, rows=rows, params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        forward_flops=forward / batch_size, train_flops=total / batch_size,
        not_counted=tuple(name for name, _ in tally.ordered() if name in weights.uncounted),
        outside_layers_flops=(forward - sum(tally.flops.values())) / batch_size,
    )


def forward_flops(model: nn.Module, input_shape: Sequence[int]) -> float | None:
    """Forward FLOPs per example (:func:`summarize`), or None where some layer is not counted."""
    s = summarize(model, input_shape)
    return s.forward_flops if s.complete else None


def train_flops(model: nn.Module, input_shape: Sequence[int]) -> float | None:
    """Forward + backward FLOPs per example of one training step (:func:`summarize`), or None where some
    layer is not counted. Times examples per second: the achieved FLOP/s."""
    s = summarize(model, input_shape)
    return s.train_flops if s.complete else None


# ----------------------------------------------------------------------------- mechanics


class _LayerTally:
    """Forward hooks on the leaves: the order of first calls, each one's output shape and FLOPs."""

    def __init__(self, leaves: list[tuple[str, nn.Module]]) -> None:
        self.leaves = leaves
        self.called: list[nn.Module] = []
        self.shapes: dict[nn.Module, tuple[int, ...]] = {}
        self.flops: dict[nn.Module, int] = {}

    def ordered(self) -> list[tuple[str, nn.Module]]:
        """Called leaves in the order of their first call, then the others in definition order."""
        names = {m: name for name, m in self.leaves}
        return [(names[m], m) for m in self.called] + [(n, m) for n, m in self.leaves if m not in self.shapes]

    @contextlib.contextmanager
    def hooks(self, counter: FlopCounterMode) -> Iterator[None]:
        """Hooked while inside: each leaf's FLOPs are the counter's growth between its pre- and post-hook."""
        start: dict[nn.Module, int] = {}

        def before(module: nn.Module, args: Any) -> None:
            start[module] = counter.get_total_flops()

        def after(module: nn.Module, args: Any, output: Any) -> None:
            self.flops[module] = self.flops.get(module, 0) + counter.get_total_flops() - start.pop(module)
            if module not in self.shapes:
                self.called.append(module)
                out = _first_tensor(output)
                self.shapes[module] = tuple(out.shape[1:]) if out is not None and out.ndim else ()

        handles = [h for _, m in self.leaves
                   for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


class _WeightReads(TorchDispatchMode):
    """Names the layers whose weights an op reads that FlopCounterMode has no formula for (a fused
    kernel: its multiply-adds go uncounted). Views, copies and elementwise ops do no products."""

    def __init__(self, owners: dict[int, str]) -> None:
        super().__init__()
        self.owners = owners
        self.uncounted: set[str] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        packet = func._overloadpacket
        if not (packet in flop_registry or func.is_view or packet in _NO_ARITHMETIC
                or torch.Tag.pointwise in func.tags):
            for a in tree_flatten((args, kwargs))[0]:
                if isinstance(a, torch.Tensor) and (owner := self.owners.get(_storage(a))) is not None:
                    self.uncounted.add(owner)
        return func(*args, **(kwargs or {}))


def _storage(t: torch.Tensor) -> int:
    try:
        return int(t.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # a tensor without storage (e.g. sparse): no weight's
        return -1


def _first_tensor(output: Any) -> torch.Tensor | None:
    return next((t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)), None)


@contextlib.contextmanager
def _unchanged(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Training mode and autograd on; afterwards every module's mode and every buffer as before; the RNG forked."""
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device.index or 0] if cuda else [], device_type="cuda" if cuda else "cpu"):
        try:
            model.train()
            with torch.enable_grad():
                yield
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            for m, mode in modes:
                m.training = mode


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "not called" if shape is None else str(tuple(shape))


def _flops_text(flops: float | None) -> str:
    """A layer's FLOPs with an SI prefix to 3 significant figures (``7.23M``); 'not counted' for None, and
    the missing-value dash for 0 (no product: its elementwise work is not counted)."""
    if flops is None:
        return "not counted"
    if flops == 0:
        return MISSING
    exponent = min(max(int(math.floor(math.log10(abs(flops)))) // 3, 0), len(_PREFIXES) - 1)
    if exponent == 0:
        return f"{flops:.3g}"
    scaled = flops / 10 ** (3 * exponent)
    return f"{scaled:.{max(0, 2 - int(math.floor(math.log10(abs(scaled)))))}f}{_PREFIXES[exponent]}"


_PREFIXES = ("", "k", "M", "G", "T", "P")


def in_units(flops: float, unit: float = 1e6) -> str:
    """FLOPs in units of ``unit`` (1e6: MFLOP) to 3 significant figures, at least to the unit:
    ``in_units(7_234_567) == "7.23"``, ``in_units(4.3e12, 1e12) == "4.30"``, ``in_units(1.5e9) == "1,500"``."""
    m = flops / unit
    if m == 0:
        return "0"
    return f"{m:,.{max(0, 2 - int(math.floor(math.log10(abs(m)))))}f}"


__all__ = ["LayerRow", "ModelSummary", "forward_flops", "in_units", "summarize", "train_flops"]
