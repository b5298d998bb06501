"""What the doctor returns: findings (verdicts with evidence and a fix) and the per-layer statistics table."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("info", "warning", "error")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass
class Finding:
    """One verdict: a stable ``code``, its ``severity``, the layers concerned, the measured evidence and a fix.

    ``message`` is the verdict in one sentence (what was measured against which threshold).
    """

    code: str
    severity: str
    layers: list[str]
    evidence: dict[str, Any]
    fix: str
    message: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "severity": self.severity, "layers": list(self.layers),
                "evidence": _jsonable(self.evidence), "fix": self.fix, "message": self.message}


@dataclass
class LayerStats:
    """Statistics of one layer (one call site), averaged over the sampled batches.

    ``mean``/``std``: of the layer's output (pre-activation for Linear/Conv). ``hist``: counts over
    ``hist_range`` (values outside clamped into the end bins). ``grad_std``: std of dL/d(output).
    ``grad_norm``: RMS over sampled steps of ||dL/dW||; ``update_ratio``: mean ||dW||/||W|| per step
    (measured during training, estimated from the gradient at initialisation when an lr is given).
    Fields that do not apply to a layer are None.
    """

    name: str
    kind: str  # linear | conv | activation
    op: str  # e.g. "Linear(64->256)", "ReLU"
    depth: int
    units: int | None = None  # out features (Linear) or out channels (Conv)
    activation: str | None = None  # activation modules: its name; weight layers: what follows (layer.follows)
    normalized: bool = False  # a norm layer rescales this output before it is used
    mean: float = math.nan
    std: float = math.nan
    hist: list[float] = field(default_factory=list)
    hist_range: tuple[float, float] = (0.0, 0.0)
    dead_fraction: float | None = None
    saturated_fraction: float | None = None
    grad_std: float | None = None
    weight_norm: float | None = None
    grad_norm: float | None = None
    update_ratio: float | None = None
    update_ratio_max: float | None = None
    nonfinite: bool = False
    examples: int = 0
    samples: int = 0

    @property
    def is_weight(self) -> bool:
        return self.kind in ("linear", "conv")

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass
class InputStats:
    """The network's input as the first layer sees it (after the model's own preprocessing, if any).

    Per feature = per axis-1 index (a feature of (N, F), a channel of (N, C, ...)).
    """

    mean: float
    std: float
    feature_mean_abs_max: float
    feature_std_min: float
    feature_std_max: float
    features: int
    examples: int
    nonfinite: bool = False

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass
class Report:
    """The doctor's verdict: ``findings`` (worst first) and the per-layer statistics ``layers`` (in depth order).

    ``context`` says when the statistics were taken ("init", "epoch 3", "run DIR"). ``unseen``: the
    modules with weights that no statistic covers (recurrent layers: ``"net.rnn (GRU)"``), so that
    "no findings" is not read as a clean bill for them.
    """

    findings: list[Finding] = field(default_factory=list)
    layers: list[LayerStats] = field(default_factory=list)
    input: InputStats | None = None
    loss: float | None = None
    context: str = ""
    unseen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.findings.sort(key=lambda f: -_RANK[f.severity])

    @property
    def worst(self) -> str | None:
        """The highest severity among the findings, or None when there are none."""
        return max((f.severity for f in self.findings), key=_RANK.__getitem__, default=None)

    def codes(self, min_severity: str = "warning") -> list[str]:
        """Codes of the findings at or above ``min_severity``, in report order."""
        return [f.code for f in self.findings if _RANK[f.severity] >= _RANK[min_severity]]

    def has(self, code: str, min_severity: str = "warning") -> bool:
        return code in self.codes(min_severity)

    def exit_code(self, strict: bool = False) -> int:
        """0 by default, whatever the findings (the report is the result); with ``strict``, 1 on a
        warning or an error, for scripts and CI that must fail on them."""
        if not strict:
            return 0
        return 1 if any(_RANK[f.severity] >= _RANK["warning"] for f in self.findings) else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "findings": [f.to_dict() for f in self.findings],
            "layers": [layer.to_dict() for layer in self.layers],
            "input": self.input.to_dict() if self.input is not None else None,
            "loss": _jsonable(self.loss),
            "context": self.context,
            "unseen": list(self.unseen),
        }

    def render(self, console: Any = None) -> None:
        """Print the findings and the per-layer table with rich (to ``console``, default stdout)."""
        from trainwell.diagnose.render import render_report

        render_report(self, console)


def _jsonable(obj: Any) -> Any:
    """Floats that JSON can hold (NaN/inf -> None), tuples -> lists, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
