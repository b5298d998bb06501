"""The input contract of a run: what its training examples looked like, and a check of new data against it.

Why: a model only answers well on inputs on the scale it was trained on, and nothing else tells
the user when they are not. scikit-learn's digits exported the obvious way hold pixel counts 0..16,
while trainwell's digits source stores them as uint8 0..255: ``evaluate`` on that export scores
10% with no word of warning, ``predict`` answers confidently wrong. So ``train`` records, in
model.json's ``"inputs"``, the dtype, shape and value statistics of the stored training examples
(:func:`input_contract`), and evaluate/predict/finetune compare new data with them
(:func:`check_inputs`): one warning line with both sets of numbers and the likely fix when they are
far apart, a :class:`~trainwell.errors.DataError` for an example shape or a dtype that cannot be meant.

Values are compared as the model sees them, after :func:`~trainwell.data.to_float` (uint8 divided by
255, every other dtype taken as it is). So dtype differences that change nothing pass silently:
float32 vs float64 or int features, float images in [0, 1] given to a run trained on uint8 pixels
0..255; those that change everything are caught by the statistics (float images 0..255 given to a
uint8 run are seen 255 times too bright).

Statistics are per channel for images and signals (N, C, ...), over all features for vectors (N, F),
each on at most :data:`MAX_EXAMPLES` evenly spaced examples (deterministic, no random generator:
recording the contract draws nothing from any stream of training). Two kinds are kept: pooled
(min, max, mean, std over every value) and per example (the range of each example's own mean and
std), so that one image or one row in ``predict`` is judged against the spread real examples have.

Pure functions, apart from :func:`read_contract` (reads model.json) and :func:`warn_inputs` (prints).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainwell.data.splits import TensorSplit
from trainwell.errors import DataError, TrainwellError

#: Version of the ``"inputs"`` entry of model.json; a contract of another version is not checked.
CONTRACT_VERSION = 1
#: Statistics are computed on at most this many training (or new) examples, evenly spaced, and at
#: most MAX_VALUES values (128 MiB as float64; 3x224x224 images: 111 examples).
MAX_EXAMPLES, MAX_VALUES = 2048, 1 << 24
#: Per-example statistics: the range kept is between these quantiles of the sampled examples.
EXAMPLE_QUANTILES = (0.005, 0.995)
#: Pooled checks need this many new examples (fewer: only the per-example checks apply). Batches
#: of 16 consecutive examples of the splits below (iris: one class each) stay within 0.65-1.9 of the
#: training spread and 0.8 training stds of its mean.
MIN_POOLED = 16
#: Pooled spread (std) ratio beyond which new data is "on another scale": whole splits of the same
#: dataset stay within 0.9-1.2 (digits, mnist1d, breast_cancer, iris, wine, raw or standardised); the
#: mistakes this is for are 16x (counts 0..16 vs pixels 0..255), 255x ([0, 1] vs 0..255) or 1000x.
SPREAD_RATIO = 4.0
#: Pooled mean shift, in training standard deviations, beyond which new data is "shifted" (whole
#: splits of the same dataset: < 0.2).
MEAN_SHIFT = 3.0
#: Per-example checks, for any number of new examples: the median of their stds may lie this many
#: times below / above the range of the training examples' stds, the median of their means this
#: many training stds outside the range of the training examples' means. Single examples of the test
#: and validation splits of the datasets above reach 1.3x below, 2.1x above, 1.0 std outside.
EXAMPLE_STD_BELOW, EXAMPLE_STD_ABOVE, EXAMPLE_MEAN_MARGIN = 2.0, 4.0, 2.0
#: An example's std too small is only told from examples of at least this many values (per channel).
MIN_VALUES = 8


def _sample_index(n: int, values_per_example: int) -> np.ndarray:
    """Evenly spaced indices of 0..n-1, first and last included (no RNG): at most MAX_EXAMPLES, and
    at most MAX_VALUES values in all (large images: fewer examples, never fewer than 16)."""
    k = min(MAX_EXAMPLES, max(16, MAX_VALUES // max(1, values_per_example)))
    if n <= k:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def _dtype_name(x: Any) -> str:
    return str(x.dtype).replace("torch.", "")


def _sampled(x: Any) -> np.ndarray:
    """The evenly spaced sample of ``x`` (N, ...) as float64 numpy, in the stored units."""
    idx = _sample_index(int(x.shape[0]), int(np.prod(x.shape[1:])))
    part = x[idx] if len(idx) < x.shape[0] else x
    if hasattr(part, "detach"):  # a tensor
        part = part.detach().cpu()
        if str(part.dtype) in ("torch.bfloat16", "torch.float16"):
            part = part.float()
        part = part.numpy()
    return np.asarray(part, dtype=np.float64)


def _groups(values: np.ndarray) -> tuple[str, list[np.ndarray]]:
    """("channel", one (n, values per example) array per channel) for (n, C, ...), else ("all", [(n, F)])."""
    n = values.shape[0]
    if values.ndim >= 3:
        return "channel", [values[:, c].reshape(n, -1) for c in range(values.shape[1])]
    return "all", [values.reshape(n, -1)]


def _stats(g: np.ndarray) -> dict[str, Any]:
    """Pooled and per-example statistics of one group (n, m); m values per example."""
    means, stds = g.mean(axis=1), g.std(axis=1)
    lo, hi = EXAMPLE_QUANTILES
    return {
        "min": float(g.min()),
        "max": float(g.max()),
        "mean": float(g.mean()),
        "std": float(g.std()),
        "example_mean": [float(np.quantile(means, lo)), float(np.quantile(means, hi))],
        "example_std": [float(np.quantile(stds, lo)), float(np.quantile(stds, hi))],
    }


def _divisor(dtype: str) -> float:
    """What :func:`trainwell.data.to_float` divides by: 255 for uint8 pixels, 1 otherwise."""
    return 255.0 if dtype == "uint8" else 1.0


def input_contract(x: Any) -> dict[str, Any]:
    """The input contract of the stored training examples ``x`` (N, *example_shape), numpy or tensor.

    Returns the ``"inputs"`` entry of model.json (JSON types only)::

        {"version": 1, "dtype": "uint8", "shape": [1, 8, 8], "divisor": 255.0, "n": 1437, "sampled": 1437,
         "per": "channel",              # "channel": stats[c] for channel c; "all": stats[0] over all features
         "stats": [{"min": 0.0, "max": 255.0, "mean": 77.8, "std": 96.3,
                    "example_mean": [lo, hi], "example_std": [lo, hi]}]}

    Values are in the stored units (0..255 for uint8); ``divisor`` is what the model's input is
    divided by (255 for uint8, else 1). ``example_*`` are the 0.5%/99.5% quantiles of each example's
    own mean/std. Deterministic: the same examples give the same contract, and nothing random is drawn.
    """
    if x.ndim < 2 or x.shape[0] == 0:
        raise DataError(f"input contract: expected a batch of examples (N, ...) with N > 0, got shape {tuple(x.shape)}.")
    dtype = _dtype_name(x)
    values = _sampled(x)
    per, groups = _groups(values)
    return {
        "version": CONTRACT_VERSION,
        "dtype": dtype,
        "shape": [int(s) for s in x.shape[1:]],
        "divisor": _divisor(dtype),
        "n": int(x.shape[0]),
        "sampled": int(values.shape[0]),
        "per": per,
        "stats": [_stats(g) for g in groups],
    }


def split_contract(split: TensorSplit) -> dict[str, Any]:
    """:func:`input_contract` of a split's examples; a streamed split reads only the sampled rows
    (the same rows: the sample of a sample that small is all of it)."""
    if not split.streamed:
        return input_contract(split.x)
    idx = _sample_index(len(split), math.prod(split.example_shape))
    return {**input_contract(split.take(torch.from_numpy(idx))), "n": len(split)}


# ----------------------------------------------------------------------------- checking


def _usable(contract: Any) -> bool:
    """Whether ``contract`` is a version-1 contract this module can check against (else: skipped)."""
    if not isinstance(contract, dict) or contract.get("version") != CONTRACT_VERSION:
        return False
    stats, shape = contract.get("stats"), contract.get("shape")
    keys = ("min", "max", "mean", "std", "example_mean", "example_std")
    return (isinstance(shape, list) and isinstance(stats, list) and bool(stats)
            and all(isinstance(s, dict) and all(k in s for k in keys) for s in stats)
            and isinstance(contract.get("divisor"), (int, float)) and isinstance(contract.get("dtype"), str))


def _num(v: float, digits: int = 3) -> str:
    """A short number: 3 (or ``digits``) significant digits, no exponent for ordinary magnitudes."""
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    r = float(f"{v:.{digits}g}")
    if 1e-4 <= abs(r) < 1e6:
        text = f"{r:f}".rstrip("0").rstrip(".")
        return text if text not in ("", "-0") else "0"
    return f"{r:.{digits}g}"


def _describe(s: dict[str, float], dtype: str, name: str = "values") -> str:
    return f"{dtype + ' ' if dtype else ''}{name} {_num(s['min'])}–{_num(s['max'])} (mean {_num(s['mean'], 2)})"


def _overall(stats: list[dict[str, Any]]) -> dict[str, float]:
    """Pooled min/max/mean/std over all groups (groups hold as many values each)."""
    means = np.array([s["mean"] for s in stats])
    stds = np.array([s["std"] for s in stats])
    mean = float(means.mean())
    return {"min": min(s["min"] for s in stats), "max": max(s["max"] for s in stats), "mean": mean,
            "std": float(np.sqrt(np.mean(stds ** 2 + (means - mean) ** 2)))}


#: Factors a rescaling mistake is usually made of: powers of ten and 255 (pixels), then powers of two.
_TENS = [10.0 ** k for k in range(-9, 10)] + [255.0, 1 / 255.0]
_TWOS = [2.0 ** k for k in range(-16, 17)]


def _times(r: float) -> str:
    k = round(1 / r) if r < 1 else round(r)
    return f"x/{k}" if r < 1 else f"x*{k}"


def _factor(m: float, new: dict[str, float], old: dict[str, float]) -> str:
    """``x*...`` that maps the user's values onto the training values' scale (``m``: the spread ratio).

    Exact when both start at 0 and end at whole numbers (a type's full scale: 0..16 and 0..255 give
    ``x*255/16``); else the nearest power of ten or two or 255 within 10%; else ``about x*m``.
    """
    whole = all(0 <= s["min"] <= 0.01 * s["max"] and 0 < s["max"] <= 65535 and s["max"] == round(s["max"])
                for s in (new, old))
    if whole and abs(math.log(old["max"] / new["max"] / m)) < math.log(1.05):
        a, b = int(old["max"]), int(new["max"])
        if a % b == 0 or b % a == 0:
            return _times(a / b)
        return f"x*{a}/{b}"
    for nice, within in ((_TENS, 1.1), (_TWOS, 1.05)):
        best = min(nice, key=lambda c: abs(math.log(m / c)))
        if abs(math.log(m / best)) < math.log(within):
            return _times(best)
    return f"about x*{_num(m, 2)}"


def check_inputs(contract: dict[str, Any] | None, x: Any, where: str, *, run: str | Path | None = None) -> list[str]:
    """Check new examples ``x`` (N, *shape), numpy or tensor, against a run's ``contract``.

    Returns warning lines (empty when ``x`` looks like the training data, and for a run recorded
    before contracts existed: ``contract`` None). Raises DataError for an example shape other than
    the contract's and for a dtype that cannot hold inputs (non-numeric, complex). ``where`` names
    the data in the messages (e.g. ``"data.path 'o.npz'"``), ``run`` the run folder.
    """
    if contract is None or not _usable(contract):
        return []
    name = f"run '{run}'" if run is not None else "the run"
    kind = _kind(x)
    if kind not in "biuf":
        raise DataError(f"{where}: examples of dtype {str(getattr(x, 'dtype', type(x).__name__)).replace('torch.', '')}, "
                        f"but {name} takes numbers ({contract['dtype']}); convert them to {contract['dtype']}.")
    shape = tuple(int(s) for s in x.shape[1:]) if getattr(x, "ndim", 0) >= 1 else ()
    if shape != tuple(contract["shape"]):
        raise DataError(f"{where}: examples of shape {shape}, but {name} was trained on examples of shape "
                        f"{tuple(contract['shape'])}; give examples of that shape (resize or reshape them) or retrain.")
    if x.shape[0] == 0:
        return []
    new_dtype = _dtype_name(x)
    d_old, d_new = float(contract["divisor"]), _divisor(new_dtype)
    values = _sampled(x)
    if not np.all(np.isfinite(values)):
        values = np.where(np.isfinite(values), values, np.nan)
    _, groups = _groups(values)
    old_stats = contract["stats"]
    if len(groups) != len(old_stats):
        return []
    n = values.shape[0]
    new_stats, spread_off, centre_off, ratios = [], [], [], []
    for c, (g, old) in enumerate(zip(groups, old_stats)):
        g = g[np.all(np.isfinite(g), axis=1)]
        if len(g) == 0:
            return []
        new = _stats(g)
        new_stats.append(new)
        # Both in model units (after to_float): the old divided by the contract's divisor, the new by its own.
        s_old, m_old, s_new, m_new = old["std"] / d_old, old["mean"] / d_old, new["std"] / d_new, new["mean"] / d_new
        e_std = float(np.median(g.std(axis=1))) / d_new
        e_mean = float(np.median(g.mean(axis=1))) / d_new
        lo_std, hi_std = (v / d_old for v in old["example_std"])
        lo_mean, hi_mean = (v / d_old for v in old["example_mean"])
        unit = s_old if s_old > 0 else max(abs(m_old), 1.0 / d_old)
        # Fewer values per example than MIN_VALUES: an example's std can be near 0 by chance (four equal
        # standardised features), so only a std too large is told from one example.
        too_small = g.shape[1] >= MIN_VALUES and e_std < lo_std / EXAMPLE_STD_BELOW
        spread = hi_std > 0 and (too_small or e_std > hi_std * EXAMPLE_STD_ABOVE)
        centre = e_mean < lo_mean - EXAMPLE_MEAN_MARGIN * unit or e_mean > hi_mean + EXAMPLE_MEAN_MARGIN * unit
        if n >= MIN_POOLED:
            if s_old > 0:
                spread = spread or not (1 / SPREAD_RATIO <= s_new / s_old <= SPREAD_RATIO)
            centre = centre or abs(m_new - m_old) > MEAN_SHIFT * unit
        if spread:
            spread_off.append(c)
            ratios.append(s_old / s_new if s_new > 0 else math.inf)
        elif centre:
            centre_off.append(c)
    if not spread_off and not centre_off:
        return []
    off = sorted(spread_off + centre_off)
    if len(off) == len(groups) or len(groups) == 1:
        prefix, new_s, old_s = "", _overall(new_stats), _overall(old_stats)
    else:
        prefix = f"channel{'s' if len(off) > 1 else ''} {', '.join(map(str, off))}: "
        new_s, old_s = _overall([new_stats[c] for c in off]), _overall([old_stats[c] for c in off])
    same_units = d_old == d_new
    head = (f"{where}: {prefix}{_describe(new_s, '' if same_units else new_dtype)}, but {name} was trained on "
            f"{_describe(old_s, '' if same_units else contract['dtype'])}")
    return [head + "; " + _cause(spread_off, ratios, new_s, old_s, contract["dtype"], new_dtype, d_old, d_new)]


def _kind(x: Any) -> str:
    """numpy's dtype kind of an array or tensor ("b", "i", "u", "f", "c", or "O"/"U"/... for non-numbers)."""
    dtype = getattr(x, "dtype", None)
    if isinstance(dtype, np.dtype):
        return dtype.kind
    if dtype is not None and hasattr(dtype, "is_floating_point"):  # a torch dtype
        if dtype.is_complex:
            return "c"
        if dtype.is_floating_point:
            return "f"
        return "b" if str(dtype) == "torch.bool" else "u" if str(dtype) == "torch.uint8" else "i"
    return "O"


def _cause(spread_off: list[int], ratios: list[float], new: dict[str, float], old: dict[str, float],
           old_dtype: str, new_dtype: str, d_old: float, d_new: float) -> str:
    """The likely cause and the fix, for the end of the warning line."""
    if not spread_off:  # the same spread, centred elsewhere
        looks = " (they look standardised, the training data was not: the run standardises by itself)" \
            if abs(new["mean"]) < 0.1 * max(new["std"], 1e-12) and 0.5 < new["std"] / d_new < 2 and \
            abs(old["mean"] / d_old) > old["std"] / d_old else ""
        return f"shifted by {_num((new['mean'] / d_new - old['mean'] / d_old) / (old['std'] / d_old or 1), 2)} training " \
               f"standard deviations{looks}; preprocess them the way the training data was or retrain"
    k = float(np.median([r for r in ratios if math.isfinite(r)])) if any(math.isfinite(r) for r in ratios) else math.inf
    if not math.isfinite(k):
        return "every value is the same (a blank image?); check the data"
    m = k * d_old / d_new  # the factor on the user's own values, kept in the run's dtype
    if abs(math.log(m)) < math.log(1.25):  # the values agree: the dtype makes the difference
        if d_old > d_new:
            return (f"the model sees the run's uint8 pixels divided by 255 but takes {new_dtype} values as they are; "
                    "store them as uint8 or divide them by 255")
        return (f"the model sees uint8 values divided by 255 but took the run's {old_dtype} values as they were; "
                f"store them as {old_dtype}")
    stored = f", stored as {old_dtype}" if d_old != d_new or old_dtype == "uint8" else ""
    return f"scale them the same way ({_factor(m, new, old)} here{stored}) or retrain"


# ----------------------------------------------------------------------------- the run's side


def read_contract(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``"inputs"`` entry of a run folder's model.json (an ensemble's: its first member's); None when
    the run was recorded without one (older trainwell) or its card cannot be read."""
    from trainwell.train.load import read_card
    from trainwell.train.rundir import read_json

    path = Path(run_dir)
    try:
        if (path / "ensemble.json").is_file():
            members = read_json(path / "ensemble.json", "ensemble file").get("members") or []
            if not members:
                return None
            path = path / str(members[0])
        inputs = read_card(path).get("inputs")
    except (TrainwellError, AttributeError, TypeError):
        return None
    return inputs if isinstance(inputs, dict) else None


def warn_inputs(contract: dict[str, Any] | None, x: Any, where: str, *, run: str | Path | None = None,
                console: Any = None, quiet: bool = False) -> list[str]:
    """:func:`check_inputs`, each warning printed as one ``warning:`` line on ``console`` (default stderr)."""
    warnings = check_inputs(contract, x, where, run=run)
    if warnings:
        from rich.console import Console

        from trainwell.train.progress import print_warning

        console = console or Console(stderr=True, quiet=quiet, soft_wrap=True)
        for message in warnings:
            print_warning(console, message)
    return warnings
