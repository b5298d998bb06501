"""Hooks that record per-layer statistics on sampled steps of any ``nn.Module``, with no change to the loop.

Design (why it is cheap):

* One forward pre-hook on the model stays installed. It counts training-mode forwards; on every
  ``every``-th one (the first included) it installs the per-layer hooks for that step only, and on
  the next forward it removes them. A non-sampled step therefore costs one Python call.
* On a sampled step: forward hooks on every Linear/Conv and activation module record their output
  (moments, histogram, dead and saturated counts); a hook on each output tensor records dL/d(output)
  in the backward pass; a post-accumulate-grad hook on each weight records ||dL/dW|| and, when
  ``track_updates``, snapshots W. On the next forward, ||W_now - W_snapshot|| / ||W_snapshot|| is the
  measured update ratio: the real step, whatever the optimiser (momentum, Adam, weight decay and
  clipping included), which ``lr * grad`` would not be.
* Everything stays in device tensors (:class:`~trainwell.diagnose.stats.LayerAccumulator`); the host
  reads them once, in :meth:`Recorder.read`.
* Under ``torch.compile`` (train.compile) the recorder's work on a sampled step runs eagerly: each of
  its hooks marked :func:`_eager` is ``torch.compiler.disable``-d (:meth:`Recorder.run_hooks_eagerly`),
  so dynamo never traces its bookkeeping, nor its tensor operations through the functional mode below
  (which dynamo fails on). Done once dynamo is loaded (compile is on), not at import: importing dynamo
  costs seconds that a run without compile must not pay.

Functional activations (``F.relu(x)``, ``torch.tanh(x)``, ``x.sigmoid()``, ``x.relu_()``, ...: see
:data:`FUNCTIONAL_ACTIVATIONS`), which module hooks cannot see, are caught on sampled steps by a
``torch.overrides.TorchFunctionMode`` entered by the model's forward pre-hook and left by its forward
hook: the sampled forward alone pays for it, and other steps do not have it. They get the same statistics
as the activation module of the same name (its :class:`ActivationInfo`, so the same dead and saturation
tests); a call made inside an activation module's own forward (``nn.ReLU`` calls ``F.relu``) is the
module's, recorded once, by its hook.

Layers are keyed by module name, with ``#k`` for the k-th extra call of a module reused in one
forward (a shared ``self.act``), in the order they first run: that order is the depth. A functional
activation is keyed ``<previous>→<activation>``: the key of the call site recorded just before it in
the forward (a Linear/Conv, a norm, an activation) or ``input``, and the activation's name, e.g.
``fc1→relu`` for ``F.relu(self.fc1(x))``; ``#k`` again tells repeats apart.
"""

from __future__ import annotations

import contextlib
import sys
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from trainwell.diagnose.stats import (
    LayerAccumulator,
    Moments,
    estimate_update_ratio,
    input_stats_dims,
    read_all,
    update_ratio,
)
from trainwell.diagnose.thresholds import HIST_BINS, HIST_LIMIT
from trainwell.errors import ConfigError
from trainwell.nn.layers import NORM_LAYERS


_Hook = TypeVar("_Hook", bound=Callable[..., Any])


def _eager(hook: _Hook) -> _Hook:
    """Marks a hook to run outside dynamo's tracing once compile is on (:meth:`Recorder.run_hooks_eagerly`)."""
    hook.__trainwell_eager__ = True  # type: ignore[attr-defined]  # a marker on the function object
    return hook


def _dynamo_loaded() -> bool:
    """Whether torch.compile has been used in this process (it imports dynamo; nothing else here does)."""
    return "torch._dynamo" in sys.modules


@dataclass(frozen=True)
class ActivationInfo:
    """What the doctor needs to know about an activation module."""

    name: str
    family: str  # "relu" or "sigmoid" (trainwell.nn.activations' families)
    can_die: bool  # derivative exactly 0 on a half-line: units can die
    bounds: tuple[float, float] | None  # output range of a saturating (squashing) unit


@functools.cache
def _activation_table() -> dict[type[nn.Module], ActivationInfo]:
    """Module type -> ActivationInfo, from trainwell's ACTIVATIONS metadata plus common torch extras."""
    from trainwell.nn.activations import ACTIVATIONS

    bounds = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}
    table: dict[type[nn.Module], ActivationInfo] = {}
    for entry in ACTIVATIONS:
        if entry.meta.family == "identity":
            continue
        table[type(entry.factory())] = ActivationInfo(
            entry.name, entry.meta.family, entry.meta.can_die, bounds.get(entry.name)
        )
    extras = {
        nn.ReLU6: ActivationInfo("relu6", "relu", True, None),
        nn.Hardsigmoid: ActivationInfo("hardsigmoid", "sigmoid", False, (0.0, 1.0)),
        nn.Softsign: ActivationInfo("softsign", "sigmoid", False, (-1.0, 1.0)),
        nn.PReLU: ActivationInfo("prelu", "relu", False, None),
        nn.RReLU: ActivationInfo("rrelu", "relu", False, None),
        nn.CELU: ActivationInfo("celu", "relu", False, None),
        nn.Softplus: ActivationInfo("softplus", "relu", False, None),
        nn.Mish: ActivationInfo("mish", "relu", False, None),
        nn.Hardswish: ActivationInfo("hardswish", "relu", False, None),
    }
    for cls, info in extras.items():
        table.setdefault(cls, info)
    return table


def activation_info(module: nn.Module) -> ActivationInfo | None:
    """The ActivationInfo of an activation module, or None for any other module.

    ``nn.Hardtanh`` (not a subclass of the above) saturates at its ``min_val``/``max_val``.
    """
    info = _activation_table().get(type(module))
    if info is None and type(module) is nn.Hardtanh:
        info = _hardtanh_info(module.min_val, module.max_val)
    return info


def _hardtanh_info(min_val: float, max_val: float) -> ActivationInfo:
    return ActivationInfo("hardtanh", "sigmoid", False, (float(min_val), float(max_val)))


#: The functional activations the recorder sees, by the activation they compute: the name of the
#: :class:`ActivationInfo` of its module (a registry entry of :data:`trainwell.nn.activations.ACTIVATIONS`,
#: or one of :func:`_activation_table`'s extras), so a call gets the module's dead and saturation tests.
#: Each label is a distinct function object: ``F.tanh``/``F.sigmoid`` call ``Tensor.tanh``/``Tensor.sigmoid``
#: (the mode is handed those), and ``F.relu_``, ``F.selu_``, ``F.celu_``, ``F.rrelu_`` are the ``torch.`` ones.
FUNCTIONAL_ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "relu": ("F.relu", "torch.relu", "torch.relu_", "Tensor.relu", "Tensor.relu_"),
    "tanh": ("torch.tanh", "torch.tanh_", "Tensor.tanh", "Tensor.tanh_"),
    "sigmoid": ("torch.sigmoid", "torch.sigmoid_", "Tensor.sigmoid", "Tensor.sigmoid_"),
    "leaky_relu": ("F.leaky_relu", "F.leaky_relu_"),
    "elu": ("F.elu", "F.elu_"),
    "selu": ("F.selu", "torch.selu", "torch.selu_"),
    "celu": ("F.celu", "torch.celu", "torch.celu_"),
    "gelu": ("F.gelu",),
    "silu": ("F.silu",),
    "mish": ("F.mish",),
    "softplus": ("F.softplus",),
    "relu6": ("F.relu6",),
    "hardtanh": ("F.hardtanh", "F.hardtanh_"),
    "hardsigmoid": ("F.hardsigmoid",),
    "hardswish": ("F.hardswish",),
    "softsign": ("F.softsign",),
    "prelu": ("F.prelu",),
    "rrelu": ("F.rrelu", "torch.rrelu", "torch.rrelu_"),
}


@dataclass(frozen=True)
class FunctionalActivation:
    """One function of :data:`FUNCTIONAL_ACTIVATIONS`: how it is written and what it computes."""

    label: str  # e.g. "F.relu", "Tensor.relu_"
    name: str  # the activation, e.g. "relu"

    def info(self, args: tuple, kwargs: dict[str, Any]) -> ActivationInfo:
        """Its ActivationInfo; a hardtanh's bounds are the call's ``min_val``/``max_val``."""
        if self.name == "hardtanh":
            min_val = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
            max_val = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
            return _hardtanh_info(min_val, max_val)
        return next(info for info in _activation_table().values() if info.name == self.name)


@functools.cache
def functional_activations() -> dict[Any, FunctionalActivation]:
    """The function object (what a TorchFunctionMode is handed) -> :class:`FunctionalActivation`."""
    import torch.nn.functional as F

    spaces = {"F": F, "torch": torch, "Tensor": torch.Tensor}
    return {getattr(spaces[label.split(".")[0]], label.split(".")[1]): FunctionalActivation(label, name)
            for name, labels in FUNCTIONAL_ACTIVATIONS.items() for label in labels}


def input_module(model: nn.Module) -> nn.Module:
    """The module whose input is the network's input: ``model.net`` after a ``model.preprocess``
    (trainwell's Classifier: the doctor judges inputs as the network sees them), else the model."""
    net, pre = getattr(model, "net", None), getattr(model, "preprocess", None)
    if isinstance(net, nn.Module) and isinstance(pre, nn.Module):
        return net
    return model


@dataclass
class Site:
    """A tracked module, or a functional activation's call site (``module`` None, ``function`` its label):
    its name, kind ('linear', 'conv', 'activation', 'norm') and activation info."""

    name: str
    module: nn.Module | None
    kind: str
    info: ActivationInfo | None = None
    function: str | None = None  # e.g. "F.relu"


def _sites(model: nn.Module) -> list[Site]:
    sites = []
    for name, module in model.named_modules():
        name = name or type(module).__name__
        if isinstance(module, nn.Linear):
            sites.append(Site(name, module, "linear"))
        elif isinstance(module, nn.modules.conv._ConvNd):
            sites.append(Site(name, module, "conv"))
        elif isinstance(module, NORM_LAYERS):
            sites.append(Site(name, module, "norm"))
        elif (info := activation_info(module)) is not None:
            sites.append(Site(name, module, "activation", info))
    return sites


def unseen_modules(model: nn.Module) -> list[str]:
    """Modules with weights of their own that the recorder cannot look into, as ``"name (Type)"``:
    torch's recurrent layers (nn.RNN/GRU/LSTM), whose gates and nonlinearities run inside one fused
    kernel, so neither their pre-activations nor their units are seen (their output is, as the
    input of the layer after them)."""
    return [f"{name or type(m).__name__} ({type(m).__name__})" for name, m in model.named_modules()
            if isinstance(m, nn.RNNBase)]


@dataclass
class LayerRecord:
    """One tracked call site after :meth:`Recorder.read`: identity and the host-side statistics."""

    key: str
    name: str
    kind: str
    module: nn.Module | None  # None for a functional activation
    info: ActivationInfo | None
    normalized: bool
    hist_range: tuple[float, float]
    values: dict[str, Any]
    examples: int
    samples: int
    function: str | None = None  # a functional activation's label, e.g. "F.relu"


class Recorder:
    """Attach to ``model``; record statistics on every ``every``-th training-mode forward.

    ``track_updates``: measure ||dW|| / ||W|| between a sampled step and the next forward (training);
    with ``flush_on_forward=False`` the owner calls :meth:`flush_updates` after each optimiser step.
    ``update_estimate``: ``(weight, grad) -> ratio`` used instead when no step is taken (diagnosis at
    initialisation). Call :meth:`read` for the statistics, :meth:`reset` to start over, :meth:`close`
    to remove every hook.
    """

    def __init__(self, model: nn.Module, every: int = 1, *, track_updates: bool = False,
                 update_estimate: Callable[[Tensor, Tensor], Tensor] | None = None,
                 sample_eval: bool = False, bins: int = HIST_BINS, flush_on_forward: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"the doctor diagnoses an nn.Module, got {type(model).__name__}.")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ConfigError(f"the doctor's sampling interval (every, --every) must be an integer >= 1, "
                              f"got {every!r}; e.g. 50.")
        self.model = model
        self.every = every
        self.track_updates = track_updates
        self.update_estimate = update_estimate
        self.sample_eval = sample_eval
        self.flush_on_forward = flush_on_forward
        self.bins = bins
        self.sites = _sites(model)
        self._eager_hooks = False
        if _dynamo_loaded():
            self.run_hooks_eagerly()
        self.unseen = unseen_modules(model)
        self.input_site = input_module(model)
        self.accs: dict[str, LayerAccumulator] = {}
        self.meta: dict[str, tuple[Site, int]] = {}  # key -> (site, first-call order)
        self.normalized: set[str] = set()
        self.inputs = Moments()
        self.inputs_all = Moments()
        self.input_examples = 0
        self.input_nonfinite: Tensor | None = None
        self.samples = 0
        self.steps = 0
        self._step_handles: list[Any] = []
        self._snapshots: list[tuple[str, nn.Parameter, Tensor]] = []
        self._calls: dict[int | str, int] = {}
        self._prev_weight: str | None = None
        self._last_weight_kind = "conv"
        self._last_key: str | None = None  # the call site recorded last in this forward: names a functional one
        self._functional_sites: dict[str, Site] = {}
        self._functional_mode: _FunctionalActivationMode | None = None
        self._inside_activation_module = 0  # its own F.relu is the module's, recorded by its hook
        self._own_work = 0  # the recorder's own tensor operations, which the mode lets pass
        self._root = model.register_forward_pre_hook(self._on_forward)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Remove every hook (the model is left as it was)."""
        self.flush_updates()
        self._remove_step_hooks()
        self._root.remove()

    def reset(self) -> None:
        """Forget what was accumulated (keeps the hooks and the step counter)."""
        self.accs.clear()
        self.meta.clear()
        self._functional_sites.clear()
        self.normalized.clear()
        self.inputs, self.inputs_all, self.input_examples, self.input_nonfinite = Moments(), Moments(), 0, None
        self.samples = 0

    def run_hooks_eagerly(self) -> None:
        """Every :func:`_eager` hook of this recorder ``torch.compiler.disable``-d (idempotent). Called when
        the recorder is made after torch.compile was used, and by the doctor's callback at the fit's start
        (the loop compiles its forward before it): before any sampled forward, never inside a trace."""
        if self._eager_hooks or not _dynamo_loaded():
            return
        for name in dir(type(self)):
            method = getattr(type(self), name, None)
            if getattr(method, "__trainwell_eager__", False):
                setattr(self, name, torch.compiler.disable(getattr(self, name)))
        self._eager_hooks = True

    # ------------------------------------------------------------------ hooks

    def _on_forward(self, module: nn.Module, args: tuple) -> None:
        # The previous sampled step's backward and optimiser step are done by now (unless the owner
        # flushes after each optimiser step itself: with gradient accumulation a forward is no step).
        if self.flush_on_forward:
            self.flush_updates()
        self._remove_step_hooks()
        if not (module.training or self.sample_eval):
            return
        sampled = self.steps % self.every == 0
        self.steps += 1
        if sampled:
            self.samples += 1
            self._install()
            if self.input_site is module:
                # A pre-hook added while the model's own pre-hooks run is not called this time.
                self._on_input(module, args)

    @_eager
    def _install(self) -> None:
        self._calls = {}
        self._prev_weight = None
        self._last_key = None
        self._inside_activation_module = self._own_work = 0
        add = self._step_handles.append
        if self.input_site is not self.model:
            add(self.input_site.register_forward_pre_hook(self._on_input))
        for site in self.sites:
            assert site.module is not None
            if site.kind == "activation":
                add(site.module.register_forward_pre_hook(self._enter_activation_module))
            add(site.module.register_forward_hook(self._forward_hook(site)))
            weight = getattr(site.module, "weight", None)
            if site.kind in ("linear", "conv") and isinstance(weight, nn.Parameter) and weight.requires_grad:
                add(weight.register_post_accumulate_grad_hook(self._weight_hook(site.name)))
        # Functional activations: seen from here to the end of this forward (always_call: also when it raises).
        self._functional_mode = _FunctionalActivationMode(self)
        self._functional_mode.__enter__()
        add(self.model.register_forward_hook(self._end_of_sampled_forward, always_call=True))

    @_eager
    def _end_of_sampled_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._leave_functional_mode()

    def _leave_functional_mode(self) -> None:
        if self._functional_mode is not None:
            mode, self._functional_mode = self._functional_mode, None
            mode.__exit__(None, None, None)

    @_eager
    def _enter_activation_module(self, module: nn.Module, args: tuple) -> None:
        self._inside_activation_module += 1

    @contextlib.contextmanager
    def _recording(self) -> Iterator[None]:
        """Around the recorder's own work in a hook: the functional mode lets its tensor operations pass."""
        self._own_work += 1
        try:
            yield
        finally:
            self._own_work -= 1

    def _remove_step_hooks(self) -> None:
        self._leave_functional_mode()  # (left already at the end of the sampled forward)
        for handle in self._step_handles:
            handle.remove()
        self._step_handles.clear()

    @_eager
    def _on_input(self, module: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2:
            return
        x = x.detach().float()
        feature_mean = self.inputs.update(x, input_stats_dims(x))
        self.inputs_all.update(x)
        self.input_examples += int(x.shape[0])
        if feature_mean is not None:  # None for an empty batch, which holds no non-finite value
            bad = ~torch.isfinite(feature_mean).all()  # a NaN/inf anywhere makes its feature's mean non-finite
            self.input_nonfinite = bad if self.input_nonfinite is None else self.input_nonfinite | bad

    def _key(self, site: Site) -> str:
        return self._numbered(site.name, id(site.module))

    def _numbered(self, name: str, identity: int | str) -> str:
        """``name`` for the first call of a site in this forward, ``name#k`` for its k-th repeat."""
        k = self._calls.get(identity, 0)
        self._calls[identity] = k + 1
        key = name if k == 0 else f"{name}#{k}"
        self._last_key = key
        return key

    def _accumulator(self, key: str, site: Site) -> LayerAccumulator:
        acc = self.accs.get(key)
        if acc is None:
            info = site.info
            lo, hi = info.bounds if info is not None and info.bounds is not None else (-HIST_LIMIT, HIST_LIMIT)
            acc = LayerAccumulator(lo, hi, self.bins, can_die=bool(info and info.can_die),
                                   bounds=info.bounds if info is not None else None)
            self.accs[key] = acc
            self.meta[key] = (site, len(self.meta))
        return acc

    def _forward_hook(self, site: Site) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if site.kind == "activation":
                self._inside_activation_module -= 1
            with self._recording():
                self._record(self._key(site), site, output)

        return torch.compiler.disable(hook) if self._eager_hooks else hook

    @_eager
    def _on_functional(self, function: FunctionalActivation, args: tuple, kwargs: dict[str, Any],
                       output: Any) -> None:
        """A functional activation returned ``output`` (the mode calls this on sampled forwards)."""
        if self._inside_activation_module or self._own_work:
            return
        with self._recording():
            name = f"{self._last_key or 'input'}→{function.name}"
            key = self._numbered(name, name)
            site = self._functional_sites.get(key)
            if site is None:
                site = Site(key, None, "activation", function.info(args, kwargs), function.label)
                self._functional_sites[key] = site
            self._record(key, site, output)

    def _record(self, key: str, site: Site, output: Any) -> None:
        """One call site's output: its statistics now, its gradient's in the backward pass."""
        if site.kind == "norm":
            # The most recent weight layer feeds a norm: its output scale is reset (BN/LN/GN).
            if self._prev_weight is not None:
                self.normalized.add(self._prev_weight)
            return
        if not isinstance(output, Tensor) or not output.is_floating_point():
            return
        if site.kind == "activation":
            self._prev_weight = None
            # Units: features after a Linear (last axis), channels after a Conv (axis 1).
            unit_dim = -1 if self._last_weight_kind == "linear" or output.ndim == 2 else 1
        else:
            self._prev_weight = key
            self._last_weight_kind = site.kind
            unit_dim = -1 if site.kind == "linear" else 1
        acc = self._accumulator(key, site)
        with torch.no_grad():
            acc.update_output(output, unit_dim)
        if output.requires_grad and torch.is_grad_enabled():
            output.register_hook(lambda g, acc=acc: acc.update_grad(g))

    def _weight_hook(self, name: str) -> Callable:
        def hook(param: nn.Parameter) -> None:
            acc = self.accs.get(name)
            if acc is None or param.grad is None:
                return
            with torch.no_grad():
                acc.update_weight(param, param.grad)
                if self.track_updates:
                    self._snapshots.append((name, param, param.detach().clone()))
                elif self.update_estimate is not None:
                    acc.update_ratio(self.update_estimate(param, param.grad))

        return hook

    def flush_updates(self) -> None:
        """Turn pending weight snapshots into update ratios (call once the optimiser has stepped)."""
        if not self._snapshots:
            return
        with torch.no_grad():
            for name, param, before in self._snapshots:
                acc = self.accs.get(name)
                if acc is not None:
                    acc.update_ratio(update_ratio(before, param))
        self._snapshots.clear()

    # ------------------------------------------------------------------ reading

    def _input_tensors(self) -> dict[str, Tensor] | None:
        """The network input's accumulated statistics to read back; None before any input was seen."""
        feature_mean, feature_var = self.inputs.mean, self.inputs.var()
        mean, var, nonfinite = self.inputs_all.mean, self.inputs_all.var(), self.input_nonfinite
        if feature_mean is None or feature_var is None or mean is None or var is None or nonfinite is None:
            return None  # all are set together, by the first non-empty input batch
        return {"feature_mean": feature_mean, "feature_var": feature_var, "mean": mean, "var": var,
                "nonfinite": nonfinite.float()}

    def read(self) -> tuple[list[LayerRecord], dict[str, Any] | None]:
        """Host-side statistics of every call site in depth order, and of the network's input.

        One device -> host transfer for everything (:func:`~trainwell.diagnose.stats.read_all`).
        """
        groups = {key: acc.tensors() for key, acc in self.accs.items()}
        input_tensors = self._input_tensors()
        if input_tensors is not None:
            groups["__input__"] = input_tensors
        host = read_all(groups)
        records = []
        for key, acc in self.accs.items():
            site, _ = self.meta[key]
            records.append(LayerRecord(key, site.name, site.kind, site.module, site.info, key in self.normalized,
                                       (acc.lo, acc.hi), host[key], acc.examples, acc.samples, site.function))
        inputs = host.get("__input__")
        if inputs is not None:
            inputs["examples"] = self.input_examples
        return records, inputs


class _FunctionalActivationMode(TorchFunctionMode):
    """Hands every functional activation of a sampled forward (:func:`functional_activations`) to the recorder."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder
        self.functions = functional_activations()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        output = func(*args, **kwargs)  # the mode is off inside: F.relu's own call of torch.relu is not seen
        try:
            function = self.functions.get(func)
        except TypeError:  # an unhashable callable: no activation of the table
            return output
        if function is not None:
            self.recorder._on_functional(function, args, kwargs, output)
        return output


def estimator(lr: float, optimizer: str = "sgd") -> Callable[[Tensor, Tensor], Tensor]:
    """``(weight, grad) -> estimated update ratio`` of a first step of ``optimizer`` at ``lr`` (see
    :func:`~trainwell.diagnose.stats.estimate_update_ratio`)."""
    return lambda w, g: estimate_update_ratio(w, g, lr, optimizer)
