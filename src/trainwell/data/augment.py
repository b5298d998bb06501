"""Batched data augmentation with per-sample random parameters, on the training device.

Every op is two plain functions (kornia style, no class hierarchy):

* ``sample(shape, generator, device, **args) -> params``: draws the per-sample random parameters
  of a batch of ``shape = (N, *input_shape)`` from the given ``torch.Generator`` only, on its device
  (then placed on ``device``; a no-op when they are the same, as in the trainer);
* ``apply(x, params) -> x``: pure and vectorised (no Python loop over samples, no host sync), so
  the same params always give the same output and an augmentation can be replayed exactly.
  (``inplace=True`` lets the pointwise ops write into x; the Augmenter passes it only for tensors
  an earlier op of the same call allocated, never for the caller's batch.)

Every op takes ``p``: each sample of the batch is augmented independently with probability ``p``
(the params carry the (N,) boolean ``mask``; ``apply`` uses ``torch.where``, or, where it is
cheaper, turns a parameter into its identity value for the samples that are off: a zero shift, the
centred crop, a zero offset, a contrast factor of 1, a noise scale of 0, each exactly x for finite x).

Translation and crop move by whole pixels: zero/reflect padding, then one batched row copy.
Rotation and scale resample bilinearly with one batched ``grid_sample`` (align_corners=False).

Inputs are float batches: images (N, C, H, W) already in [0, 1] (the trainer converts uint8 first),
signals (N, C, L), tabular (N, F) (noise only). Preprocessing (standardize) runs inside the model
after augmentation. Nothing is clamped: brightness, contrast and noise may leave [0, 1], which is
harmless because the model standardizes its inputs; geometric ops fill uncovered pixels with 0.

Example::

    aug = build_augmenter(["translation", {"rotation": {"degrees": 10}}, "hflip"], (1, 28, 28))
    y = aug(x, generator)                        # x: (N, 1, 28, 28) float
    params = aug.sample(x.shape, generator, x.device)
    assert torch.equal(aug.apply(x, params), aug.apply(x, params))  # replay

Config: ``augment=translation,rotation,noise`` (defaults), ``augment=rotation:degrees=10:p=0.5``
(arguments), or in YAML ``augment: [{noise: {std: 0.1}}]``; the config layer reads these (the value
grammar, docs/values.md) into specs, checked here against the ops' arguments.
``trainwell list augment`` lists the ops.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from trainwell.config import to_specs
from trainwell.errors import ConfigError, closest, unknown_name_message
from trainwell.registry import new_registry


@dataclass(frozen=True)
class AugmentMeta:
    """What every op promises besides its ``sample`` factory (registered by :func:`_op`)."""

    ranks: frozenset[int]  # the spatial ranks it fits: 0 tabular, 1 signals, 2 images
    defaults: dict[str, Any]  # every argument with its default; "p" always among them
    apply: Callable[..., torch.Tensor]  # (x, params, inplace=False) -> x
    check: Callable[[dict[str, Any]], None] | None  # raises ConfigError for bad complete arguments
    choices: dict[str, tuple[str, ...]]  # the allowed values of each string argument
    extent: Callable[[dict[str, Any], tuple[int, ...]], str] | None  # what the arguments mean in pixels at a size
    # Test-time augmentation: (arguments, batch shape, device) -> [(label, params)], the op's deterministic
    # variants (each applied to every sample); None = the op has none (its effect is random by nature).
    variants: Callable[[dict[str, Any], tuple[int, ...], torch.device], list[tuple[str, Any]]] | None = None


AUGMENTATIONS = new_registry(
    "augment", AugmentMeta,
    "Batched data augmentation ops with per-sample random parameters (config key 'augment')."
)

#: Spatial rank -> what it is called in messages.
RANK_NAMES = {0: "tabular data (N, F)", 1: "signals (N, C, L)", 2: "images (N, C, H, W)"}
_RANK_SHORT = {0: "tabular", 1: "signals", 2: "images"}

Params = Any  # one of the *Params dataclasses below

# ----------------------------------------------------------------------------- random helpers


def _draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    """Draw where the generator lives (a CUDA generator can only fill CUDA tensors)."""
    return generator.device if generator is not None else torch.device(device)


def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=_draw_device(generator, device)).to(device)


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """(N,) float32 ~ U(low, high)."""
    return low + (high - low) * _rand(n, generator, device)


def _mask(n: int, p: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """(N,) bool, True with probability p (always drawn, so p does not change the random stream)."""
    return _rand(n, generator, device) < p


def _randint(
    n: int, lows: Sequence[int], highs: Sequence[int], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """(N, d) int64, column k ~ U{lows[k], ..., highs[k] - 1} (no host-to-device copies)."""
    gdev = _draw_device(generator, device)
    cols = [torch.randint(lo, hi, (n,), generator=generator, device=gdev) for lo, hi in zip(lows, highs)]
    return torch.stack(cols, 1).to(device)


def _out(x: torch.Tensor, inplace: bool) -> torch.Tensor | None:
    """The ``out=`` of a pointwise op: x itself when the caller lets it be overwritten (same kernel either way)."""
    return x if inplace else None


def _per_sample(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """An (N,) tensor viewed as (N, 1, ..., 1) to broadcast against x."""
    return t.view(-1, *([1] * (x.dim() - 1)))


# ----------------------------------------------------------------------------- params


@dataclass(frozen=True, eq=False)
class FlipParams:
    mask: torch.Tensor  # (N,) bool
    dim: int  # the flipped dimension of x (negative)


@dataclass(frozen=True, eq=False)
class ShiftParams:
    mask: torch.Tensor  # (N,) bool
    shift: torch.Tensor  # (N, d) int64: content moves by +shift along each spatial dim
    max_shift: tuple[int, ...]  # |shift| <= max_shift per dim


@dataclass(frozen=True, eq=False)
class CropParams:
    mask: torch.Tensor  # (N,) bool
    offset: torch.Tensor  # (N, d) int64, column k in [0, 2 * padding[k]]: top-left corner in the padded input
    padding: tuple[int, ...]  # per spatial dim
    mode: str  # "zeros" | "reflect"


@dataclass(frozen=True, eq=False)
class AngleParams:
    mask: torch.Tensor  # (N,) bool
    angle: torch.Tensor  # (N,) float32, radians


@dataclass(frozen=True, eq=False)
class ScaleParams:
    mask: torch.Tensor  # (N,) bool
    factor: torch.Tensor  # (N,) float32; > 1 zooms in


@dataclass(frozen=True, eq=False)
class OffsetParams:
    mask: torch.Tensor  # (N,) bool
    offset: torch.Tensor  # (N,) float32


@dataclass(frozen=True, eq=False)
class FactorParams:
    mask: torch.Tensor  # (N,) bool
    factor: torch.Tensor  # (N,) float32


@dataclass(frozen=True, eq=False)
class NoiseParams:
    mask: torch.Tensor  # (N,) bool
    noise: torch.Tensor  # (N, *input_shape) float32 ~ N(0, 1)
    std: float


@dataclass(frozen=True, eq=False)
class CutoutParams:
    mask: torch.Tensor  # (N,) bool
    centre: torch.Tensor  # (N, d) int64, anywhere in the input
    side: tuple[int, ...]  # box side per spatial dim (the box is clipped at the borders)


# ----------------------------------------------------------------------------- registration


def _op(name: str, *, ranks: Sequence[int], apply: Callable, doc: str, check: Callable | None = None,
        choices: dict[str, Sequence[str]] | None = None, extent: Callable | None = None,
        variants: Callable | None = None, **defaults: Any) -> Callable:
    """Register ``sample`` as the factory; ``apply``, ranks, defaults and the checker go in the metadata.

    A default of ``None`` marks an optional whole number (crop's ``padding``: unset, the fraction decides).
    """
    fits = "/".join(_RANK_SHORT[r] for r in sorted(ranks))
    args = ", ".join(f"{k}={'unset' if v is None else v}" for k, v in defaults.items())
    tta = f" Test-time variants: {' '.join(variants.__doc__.split())}" if variants is not None and variants.__doc__ \
        else ""

    def decorate(sample: Callable) -> Callable:
        AUGMENTATIONS.add(name, sample, f"{doc} Args: {args}. Fits: {fits}.{tta}", ranks=frozenset(ranks),
                          defaults=dict(defaults), apply=apply, check=check,
                          choices={k: tuple(v) for k, v in (choices or {}).items()}, extent=extent,
                          variants=variants)
        return sample

    return decorate


def side_pixels(fraction: float, spatial: Sequence[int]) -> tuple[int, ...]:
    """round(fraction * side) per spatial dim: how the size-relative arguments become whole pixels (8x8
    digits, 28x28, 32x32 alike)."""
    return tuple(int(round(fraction * side)) for side in spatial)


def _shift_text(pixels: tuple[int, ...]) -> str:
    if len(pixels) == 1:
        return f"up to ±{pixels[0]} px"
    if len(set(pixels)) == 1:
        return f"up to ±{pixels[0]} px per axis"
    return "up to ±" + "x".join(map(str, pixels)) + " px (rows x columns)"


def default_extent(name: str, spatial: tuple[int, ...]) -> str:
    """What op ``name``'s default arguments mean in pixels for inputs of spatial size ``spatial`` (docs).

    Only for ops with size-relative arguments (``meta.extent``); the others mean the same at every size.
    """
    extent = AUGMENTATIONS.entry(name).meta.extent
    if extent is None:
        raise ValueError(f"augment op {name!r} has no size-relative argument")
    return extent(AUGMENTATIONS.entry(name).meta.defaults, spatial)


# ----------------------------------------------------------------------------- flips


def _apply_flip(x: torch.Tensor, p: FlipParams, inplace: bool = False) -> torch.Tensor:
    flipped = x.flip(p.dim)
    return torch.where(_per_sample(p.mask, x), flipped, x, out=flipped)


def _all(shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """(N,) True: a variant applies to every sample."""
    return torch.ones(shape[0], dtype=torch.bool, device=device)


def _hflip_variants(args, shape, device):
    """the mirror image (one)."""
    return [("hflip", FlipParams(_all(shape, device), -1))]


def _vflip_variants(args, shape, device):
    """the top-bottom mirror image (one)."""
    return [("vflip", FlipParams(_all(shape, device), -2))]


@_op("hflip", ranks=(1, 2), apply=_apply_flip, variants=_hflip_variants, p=0.5,
     doc="Mirror images left-right, or reverse signals in time, with probability p.")
def sample_hflip(shape, generator, device, *, p):
    return FlipParams(_mask(shape[0], p, generator, device), -1)


@_op("vflip", ranks=(2,), apply=_apply_flip, variants=_vflip_variants, p=0.5, doc="Mirror images top-bottom with probability p.")
def sample_vflip(shape, generator, device, *, p):
    return FlipParams(_mask(shape[0], p, generator, device), -2)


# ----------------------------------------------------------------------------- integer shifts


def _shifted_window(x: torch.Tensor, offset: Sequence[torch.Tensor], pads: Sequence[int], mode: str) -> torch.Tensor:
    """out[n, c, i(, j)] = pad(x)[n, c, i + offset[0][n](, j + offset[1][n])]: pad, then one batched copy.

    ``pads`` is the padding per spatial dim (both sides), ``offset[d]`` (N,) in [0, 2 * pads[d]].
    Every output row (the last dim) is a contiguous run of the padded input, so the copy is one
    ``index_select`` of whole rows from an overlapping ``unfold`` view (1.5-2x faster on CPU than a
    per-element gather).
    """
    n, c, *spatial = x.shape
    torch_mode = "constant" if mode == "zeros" else mode
    width = spatial[-1]
    if len(spatial) == 1:
        padded = F.pad(x, (pads[0], pads[0]), mode=torch_mode)
        # Row (n, c) of the output starts at ((n * C + c) * Lp + offset) in the flat padded input.
        starts = torch.arange(n * c, device=x.device).view(n, c) * padded.shape[-1] + offset[0][:, None]
    else:
        h = spatial[0]
        padded = F.pad(x, (pads[1], pads[1], pads[0], pads[0]), mode=torch_mode)
        hp, wp = padded.shape[-2:]
        rows = torch.arange(h, device=x.device) + offset[0][:, None]  # (N, H) rows of the padded input
        planes = torch.arange(n * c, device=x.device).view(n, c, 1) * hp  # first row of each (n, c) plane
        starts = (planes + rows[:, None, :]) * wp + offset[1][:, None, None]  # (N, C, H)
    windows = padded.reshape(-1).unfold(0, width, 1)  # windows[s] = flat[s : s + width], a view
    return windows.index_select(0, starts.reshape(-1)).view(x.shape)


def _apply_translation(x: torch.Tensor, p: ShiftParams, inplace: bool = False) -> torch.Tensor:
    """Integer-pixel shift with zero fill: out[..., i] = x[..., i - shift] (0 where that is outside)."""
    if not any(p.max_shift):
        return x
    shift = torch.where(p.mask[:, None], p.shift, 0)
    offset = [m - shift[:, d] for d, m in enumerate(p.max_shift)]  # python ints: no host-to-device copy
    return _shifted_window(x, offset, p.max_shift, "zeros")


def _check_translation(args: dict[str, Any]) -> None:
    if not 0 <= args["fraction"] < 1:
        raise ConfigError(f"augment op 'translation': fraction must be in [0, 1), got {args['fraction']}; "
                          "e.g. translation:fraction=0.1.")


def _translation_extent(args: dict[str, Any], spatial: tuple[int, ...]) -> str:
    return _shift_text(side_pixels(args["fraction"], spatial))


_AXES = {1: ("time",), 2: ("y", "x")}  # spatial axes by rank, as variant labels name them


def _axis_shifts(pixels: Sequence[int], shape: Sequence[int], device: torch.device) -> list[tuple[str, torch.Tensor]]:
    """(label, (N, d) int64 shift) for +k and -k pixels along each axis with k = pixels[axis] > 0."""
    out = []
    for d, k in enumerate(pixels):
        for step in (k, -k) if k else ():
            shift = torch.zeros(shape[0], len(pixels), dtype=torch.int64, device=device)
            shift[:, d] = step
            out.append((f"{_AXES[len(pixels)][d]}{step:+d}px", shift))
    return out


def _translation_variants(args, shape, device):
    """a shift by +k and by -k pixels along each axis alone, k = round(fraction * side) (4 views on
    images, 2 on signals; none along an axis where k = 0)."""
    max_shift = side_pixels(args["fraction"], shape[2:])
    return [(f"translation {label}", ShiftParams(_all(shape, device), shift, max_shift))
            for label, shift in _axis_shifts(max_shift, shape, device)]


@_op("translation", ranks=(1, 2), apply=_apply_translation, check=_check_translation, extent=_translation_extent,
     variants=_translation_variants, fraction=0.1, p=1.0,
     doc="Shift by a random whole number of pixels, up to round(fraction * side) per axis, filling with 0.")
def sample_translation(shape, generator, device, *, fraction, p):
    spatial = shape[2:]
    max_shift = side_pixels(fraction, spatial)
    mask = _mask(shape[0], p, generator, device)
    shift = _randint(shape[0], [-m for m in max_shift], [m + 1 for m in max_shift], generator, device)
    return ShiftParams(mask, shift, max_shift)


def _apply_crop(x: torch.Tensor, p: CropParams, inplace: bool = False) -> torch.Tensor:
    if not any(p.padding):
        return x
    # The centred window (offset = padding) is the identity for the samples that are off.
    offset = [torch.where(p.mask, p.offset[:, d], pad) for d, pad in enumerate(p.padding)]
    return _shifted_window(x, offset, p.padding, p.mode)


def _check_crop(args: dict[str, Any]) -> None:
    if not 0 <= args["fraction"] < 1:
        raise ConfigError(f"augment op 'crop': fraction must be in [0, 1), got {args['fraction']}; "
                          "e.g. crop:fraction=0.125 (or padding in pixels: crop:padding=4).")
    if args["padding"] is not None and args["padding"] < 0:
        raise ConfigError(f"augment op 'crop': padding must be >= 0, got {args['padding']}; e.g. crop:padding=4.")


def crop_padding(args: dict[str, Any], spatial: Sequence[int]) -> tuple[int, ...]:
    """Padding per spatial dim: ``padding`` pixels when given, else round(fraction * side) (4 px at 32, 1 px at 8)."""
    if args["padding"] is not None:
        return (args["padding"],) * len(spatial)
    return side_pixels(args["fraction"], spatial)


def _crop_extent(args: dict[str, Any], spatial: tuple[int, ...]) -> str:
    return _shift_text(crop_padding(args, spatial))


def _crop_variants(args, shape, device):
    """the window moved by +k and by -k pixels along each axis alone, k = the padding (the corner crops'
    axis-aligned cousins; filled as the op's mode says)."""
    pads = crop_padding(args, shape[2:])
    # Content moves by +s where the window's corner moves by -s: offset = padding - s.
    return [(f"crop {label}", CropParams(_all(shape, device), torch.tensor(pads, device=device) - shift, pads,
                                         args["mode"]))
            for label, shift in _axis_shifts(pads, shape, device)]


@_op("crop", ranks=(1, 2), apply=_apply_crop, check=_check_crop, choices={"mode": ("zeros", "reflect")},
     extent=_crop_extent, variants=_crop_variants, fraction=0.125, padding=None, mode="zeros", p=1.0,
     doc="Random crop of the input's size from the input padded by round(fraction * side) per axis, or by "
         "`padding` pixels when given (mode zeros or reflect); 0.125 is the usual 4 px at 32x32.")
def sample_crop(shape, generator, device, *, fraction, padding, mode, p):
    pads = crop_padding({"fraction": fraction, "padding": padding}, shape[2:])
    mask = _mask(shape[0], p, generator, device)
    return CropParams(mask, _randint(shape[0], [0] * len(pads), [2 * m + 1 for m in pads], generator, device),
                      pads, mode)


# ----------------------------------------------------------------------------- affine (bilinear)


def _affine(x: torch.Tensor, coeffs: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Resample x at (a u + b v, d u + e v) for each output position (u, v), bilinear, zero fill.

    ``coeffs = (a, b, d, e)``, each (N,): the linear map from normalised output coordinates to input
    coordinates (what ``F.affine_grid`` takes as theta, without translation). The grid is built by
    broadcasting (several times faster on CPU than ``F.affine_grid``'s batched matmul, same values).
    align_corners=False: a pixel is a unit square and the identity map returns x (up to rounding).
    """
    n, _, h, w = x.shape
    u = (torch.arange(w, device=x.device, dtype=x.dtype) * 2 + 1) / w - 1  # pixel centres in [-1, 1]
    v = (torch.arange(h, device=x.device, dtype=x.dtype) * 2 + 1) / h - 1
    a, b, d, e = (c.to(x.dtype).view(n, 1, 1) for c in coeffs)
    grid = torch.empty(n, h, w, 2, device=x.device, dtype=x.dtype)
    torch.add(a * u.view(1, 1, w), b * v.view(1, h, 1), out=grid[..., 0])
    torch.add(d * u.view(1, 1, w), e * v.view(1, h, 1), out=grid[..., 1])
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return torch.where(_per_sample(mask, x), out, x, out=out)


def _apply_rotation(x: torch.Tensor, p: AngleParams, inplace: bool = False) -> torch.Tensor:
    """Rotate about the centre by angle, in pixel space (the aspect ratio is accounted for)."""
    h, w = x.shape[-2:]
    cos, sin = torch.cos(p.angle), torch.sin(p.angle)
    # Pixel-space rotation R(angle) expressed in the normalised coordinates u = x / (W/2), v = y / (H/2).
    return _affine(x, (cos, -sin * (h / w), sin * (w / h), cos), p.mask)


def _check_rotation(args: dict[str, Any]) -> None:
    if not 0 <= args["degrees"] <= 180:
        raise ConfigError(f"augment op 'rotation': degrees must be in [0, 180], got {args['degrees']}; "
                          "e.g. rotation:degrees=15.")


@_op("rotation", ranks=(2,), apply=_apply_rotation, check=_check_rotation, degrees=15.0, p=1.0,
     doc="Rotate about the centre by U(-degrees, degrees), bilinear, filling with 0.")
def sample_rotation(shape, generator, device, *, degrees, p):
    mask = _mask(shape[0], p, generator, device)
    rad = math.radians(degrees)
    return AngleParams(mask, _uniform(shape[0], -rad, rad, generator, device))


def _apply_scale(x: torch.Tensor, p: ScaleParams, inplace: bool = False) -> torch.Tensor:
    inv = 1.0 / p.factor
    zero = torch.zeros_like(inv)
    return _affine(x, (inv, zero, zero, inv), p.mask)


def _check_scale(args: dict[str, Any]) -> None:
    if not 0 < args["min"] <= args["max"]:
        raise ConfigError(f"augment op 'scale': need 0 < min <= max, got min={args['min']}, max={args['max']}; "
                          "e.g. {scale: {min: 0.9, max: 1.1}}.")


@_op("scale", ranks=(2,), apply=_apply_scale, check=_check_scale, min=0.9, max=1.1, p=1.0,
     doc="Zoom about the centre by a factor U(min, max) (> 1 zooms in), bilinear, filling with 0.")
def sample_scale(shape, generator, device, *, min, max, p):  # noqa: A002 (config names)
    mask = _mask(shape[0], p, generator, device)
    return ScaleParams(mask, _uniform(shape[0], min, max, generator, device))


# ----------------------------------------------------------------------------- intensity


def _apply_brightness(x: torch.Tensor, p: OffsetParams, inplace: bool = False) -> torch.Tensor:
    return torch.add(x, _per_sample(torch.where(p.mask, p.offset, 0.0).to(x.dtype), x), out=_out(x, inplace))


def _check_nonneg(op: str, key: str) -> Callable[[dict[str, Any]], None]:
    def check(args: dict[str, Any]) -> None:
        if args[key] < 0:
            raise ConfigError(f"augment op '{op}': {key} must be >= 0, got {args[key]}; e.g. {op}:{key}=0.1.")

    return check


@_op("brightness", ranks=(1, 2), apply=_apply_brightness, check=_check_nonneg("brightness", "delta"), delta=0.2, p=1.0,
     doc="Add b ~ U(-delta, delta) per sample: x + b (not clamped).")
def sample_brightness(shape, generator, device, *, delta, p):
    mask = _mask(shape[0], p, generator, device)
    return OffsetParams(mask, _uniform(shape[0], -delta, delta, generator, device))


def _apply_contrast(x: torch.Tensor, p: FactorParams, inplace: bool = False) -> torch.Tensor:
    """(x - m) * c + m with m the per-sample mean over (C, H, W) (or (C, L)); the mean is unchanged.

    Computed in one fused pass as x * c + m * (1 - c); samples with mask False get c = 1, which is
    exactly x (x * 1 + m * 0).
    """
    mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
    c = _per_sample(torch.where(p.mask, p.factor, 1.0).to(x.dtype), x)
    return torch.addcmul(mean * (1 - c), x, c, out=_out(x, inplace))


def _check_contrast(args: dict[str, Any]) -> None:
    if not 0 <= args["low"] <= args["high"]:
        raise ConfigError(f"augment op 'contrast': need 0 <= low <= high, got low={args['low']}, high={args['high']}; "
                          "e.g. {contrast: {low: 0.8, high: 1.2}}.")


@_op("contrast", ranks=(1, 2), apply=_apply_contrast, check=_check_contrast, low=0.8, high=1.2, p=1.0,
     doc="(x - m) * c + m, c ~ U(low, high), m = per-sample mean over all channels and positions (not clamped).")
def sample_contrast(shape, generator, device, *, low, high, p):
    mask = _mask(shape[0], p, generator, device)
    return FactorParams(mask, _uniform(shape[0], low, high, generator, device))


def _apply_noise(x: torch.Tensor, p: NoiseParams, inplace: bool = False) -> torch.Tensor:
    """x + std * z in one fused pass; samples with mask False get scale 0, which is exactly x."""
    scale = _per_sample((p.mask * p.std).to(x.dtype), x)
    return torch.addcmul(x, p.noise.to(x.dtype), scale, out=_out(x, inplace))


@_op("noise", ranks=(0, 1, 2), apply=_apply_noise, check=_check_nonneg("noise", "std"), std=0.05, p=1.0,
     doc="Add Gaussian noise N(0, std^2) to every value (not clamped).")
def sample_noise(shape, generator, device, *, std, p):
    mask = _mask(shape[0], p, generator, device)
    gdev = _draw_device(generator, device)
    noise = torch.randn(tuple(shape), generator=generator, device=gdev).to(device)
    return NoiseParams(mask, noise, std)


# ----------------------------------------------------------------------------- cutout


def _apply_cutout(x: torch.Tensor, p: CutoutParams, inplace: bool = False) -> torch.Tensor:
    n, spatial = x.shape[0], x.shape[2:]
    box = p.mask.view(n, *([1] * len(spatial)))
    for d, (size, side) in enumerate(zip(spatial, p.side)):
        lo = (p.centre[:, d] - side // 2).view(n, 1)
        ar = torch.arange(size, device=x.device).view(1, size)
        inside = (ar >= lo) & (ar < lo + side)  # (N, size)
        box = box & inside.view(n, *([1] * d), size, *([1] * (len(spatial) - d - 1)))
    return (x.masked_fill_ if inplace else x.masked_fill)(box.unsqueeze(1), 0.0)


def _check_cutout(args: dict[str, Any]) -> None:
    if not 0 <= args["size"] <= 1:
        raise ConfigError(f"augment op 'cutout': size is a fraction of the side in [0, 1], got {args['size']}; "
                          "e.g. cutout:size=0.25.")


def _cutout_extent(args: dict[str, Any], spatial: tuple[int, ...]) -> str:
    return "box of " + "x".join(map(str, side_pixels(args["size"], spatial))) + " px"


@_op("cutout", ranks=(1, 2), apply=_apply_cutout, check=_check_cutout, extent=_cutout_extent, size=0.25, p=1.0,
     doc="Zero a square of side round(size * side) at a random centre, clipped at the borders (DeVries & Taylor 2017).")
def sample_cutout(shape, generator, device, *, size, p):
    spatial = shape[2:]
    mask = _mask(shape[0], p, generator, device)
    side = side_pixels(size, spatial)
    return CutoutParams(mask, _randint(shape[0], [0] * len(spatial), spatial, generator, device), side)


# ----------------------------------------------------------------------------- parsing


def _check_args(name: str, args: dict[str, Any]) -> dict[str, Any]:
    entry = AUGMENTATIONS.entry(name)
    defaults = entry.meta.defaults
    out = dict(defaults)
    for key, value in args.items():
        if key not in defaults:
            guess = closest(str(key), defaults)
            hint = f" Did you mean '{guess}'?" if guess else ""
            raise ConfigError(f"augment op '{name}' has no argument '{key}'.{hint} Valid: {', '.join(defaults)}.")
        default = defaults[key]
        if default is None and value is None:  # YAML null: left unset
            continue
        if isinstance(default, str):
            choices = entry.meta.choices[key]
            if value not in choices:
                raise ConfigError(f"augment op '{name}': {key} must be one of {', '.join(choices)}, got {value!r}.")
        elif default is None or isinstance(default, int):
            whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            if isinstance(value, bool) or not whole:
                raise ConfigError(f"augment op '{name}': {key} must be a whole number, got {value!r}; "
                                  f"e.g. {name}:{key}={4 if default is None else default}.")
            value = int(value)
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"augment op '{name}': {key} must be a finite number, got {value!r}; "
                                  f"e.g. {name}:{key}={default}.")
            value = float(value)
        out[key] = value
    if not 0 <= out["p"] <= 1:
        raise ConfigError(f"augment op '{name}': p is a probability in [0, 1], got {out['p']}; e.g. {name}:p=0.5.")
    if entry.meta.check is not None:
        entry.meta.check(out)
    return out


def parse_augment(spec: Sequence[Any] | str | None) -> list[tuple[str, dict[str, Any]]]:
    """Validate an augment spec into [(op name, complete arguments)], in order.

    ``spec`` is what config key ``augment`` takes (read by :func:`trainwell.config.to_specs`, the
    value grammar): ``"translation,rotation:degrees=10"``, or a list of names, ``"name:arg=value"``
    strings, ``{name: {arg: value}}`` / ``{name: None}`` mappings and :class:`~trainwell.config.Spec`
    items. Raises ConfigError for unknown ops or arguments and for out-of-range values.
    """
    out = []
    for op in to_specs(spec, "augment"):
        if op.name not in AUGMENTATIONS:
            raise ConfigError(unknown_name_message("augment op", op.name, AUGMENTATIONS.names()))
        if op.args:
            raise ConfigError(f"augment entry '{op}': arguments go as name:arg=value, e.g. rotation:degrees=10.")
        out.append((op.name, _check_args(op.name, dict(op.kwargs))))
    return out


# ----------------------------------------------------------------------------- the pipeline


def ops_for_rank(rank: int) -> list[str]:
    """Names of the ops that fit inputs of this spatial rank (0 tabular, 1 signals, 2 images)."""
    return [e.name for e in AUGMENTATIONS if rank in e.meta.ranks]


class Augmenter:
    """A sequence of ops applied in order to float batches (N, *input_shape); callable as ``aug(x, generator)``.

    ``sample`` + ``apply`` split the call so an augmentation can be inspected or replayed exactly.
    """

    def __init__(self, ops: Sequence[tuple[str, dict[str, Any]]], input_shape: Sequence[int]) -> None:
        self.ops = [(name, dict(args)) for name, args in ops]
        self.input_shape = tuple(int(s) for s in input_shape)
        self._entries = [AUGMENTATIONS.entry(name) for name, _ in self.ops]

    def sample(self, x_shape: Sequence[int], generator: torch.Generator | None,
               device: torch.device | str) -> list[Params]:
        """Per-op params for a batch of shape (N, *input_shape), drawn from ``generator`` only."""
        self._check_shape(tuple(x_shape))
        device = torch.device(device)
        return [e.factory(tuple(x_shape), generator, device, **args) for e, (_, args) in zip(self._entries, self.ops)]

    def apply(self, x: torch.Tensor, params: Sequence[Params]) -> torch.Tensor:
        """Apply the ops with given params (pure: same x and params, same output)."""
        if not x.is_floating_point():
            raise TypeError(f"augmentation needs a float batch, got {x.dtype}; "
                            "convert with trainwell.data.to_float first.")
        if len(params) != len(self.ops):
            raise ValueError(f"expected params for {len(self.ops)} ops, got {len(params)}")
        original = x
        for entry, p in zip(self._entries, params):
            # Once an op has returned a fresh tensor, later ops may overwrite it (fewer large
            # allocations; the same kernels, so the same values as the out-of-place call).
            x = entry.meta.apply(x, p, inplace=x is not original)
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.sample(x.shape, generator, x.device))

    def variant_names(self) -> list[str]:
        """The labels of :meth:`variants`, in their order: ``identity`` first."""
        shape = (1, *self.input_shape)
        return ["identity"] + [label for e, (_, args) in zip(self._entries, self.ops)
                               for label, _ in _variants_of(e, args, shape, torch.device("cpu"))]

    def variants(self, x: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """Test-time augmentation: x itself, then each op's deterministic variants of x, one op at a time
        (the union of the ops' variants, not their product: hflip,translation on images is 1 + 1 + 4 views).

        Shape: x (N, *input_shape) float -> (label, (N, *input_shape)) per variant. An op without
        variants (:func:`check_variants` refuses those) contributes none; ``p`` is not used.
        """
        if not x.is_floating_point():
            raise TypeError(f"augmentation needs a float batch, got {x.dtype}; "
                            "convert with trainwell.data.to_float first.")
        self._check_shape(tuple(x.shape))
        yield "identity", x
        for entry, (_, args) in zip(self._entries, self.ops):
            for label, params in _variants_of(entry, args, tuple(x.shape), x.device):
                yield label, entry.meta.apply(x, params)

    def _check_shape(self, x_shape: tuple[int, ...]) -> None:
        if len(x_shape) != len(self.input_shape) + 1:
            raise ValueError(f"augmenter built for (N, {', '.join(map(str, self.input_shape))}) batches, got {x_shape}")

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}({', '.join(f'{k}={v}' for k, v in a.items())})" for n, a in self.ops)
        return f"Augmenter([{inner}], input_shape={self.input_shape})"


def _variants_of(entry: Any, args: dict[str, Any], shape: tuple[int, ...], device: torch.device) -> list[tuple[str, Any]]:
    return entry.meta.variants(args, shape, device) if entry.meta.variants is not None else []


def variant_ops(rank: int | None = None) -> list[str]:
    """Names of the ops with deterministic variants (test-time augmentation), those fitting ``rank`` if given."""
    return [e.name for e in AUGMENTATIONS if e.meta.variants is not None and (rank is None or rank in e.meta.ranks)]


def check_variants(augmenter: Augmenter) -> Augmenter:
    """``augmenter`` itself when every op has deterministic variants (test-time augmentation), else a
    one-line ConfigError naming the ops that do."""
    rank = len(augmenter.input_shape) - 1
    fitting = variant_ops(rank)
    for name, _ in augmenter.ops:
        if AUGMENTATIONS.entry(name).meta.variants is None:
            which = f"ops that do: {', '.join(fitting)}" if fitting else f"none does for {RANK_NAMES[rank]}"
            raise ConfigError(f"augment op '{name}' has no deterministic variants defined for "
                              f"test-time augmentation; {which}.")
    if not augmenter.ops:
        raise ConfigError("test-time augmentation needs at least one op, e.g. --tta hflip,translation.")
    return augmenter


def build_augmenter(spec: Sequence[Any] | str | None, input_shape: Sequence[int]) -> Augmenter:
    """Validate ``spec`` (see :func:`parse_augment`) against the input shape and build the pipeline.

    ``input_shape`` is one example's shape: (F,) tabular, (C, L) signals, (C, H, W) images.
    """
    rank = len(input_shape) - 1
    if rank not in RANK_NAMES:
        raise ConfigError("augmentation supports tabular (F,), signal (C, L) and image (C, H, W) inputs, "
                          f"got shape {tuple(input_shape)}.")
    ops = parse_augment(spec)
    fitting = ops_for_rank(rank)
    for name, args in ops:
        if name not in fitting:
            raise ConfigError(f"augment op '{name}' does not fit {RANK_NAMES[rank]}; "
                              f"ops that do: {', '.join(fitting)}.")
        spatial = tuple(input_shape[1:])
        if name == "crop" and args["mode"] == "reflect":
            pads = crop_padding(args, spatial)
            if any(pad >= side for pad, side in zip(pads, spatial)):
                raise ConfigError(f"augment op 'crop': reflect padding must be < every side {spatial}, "
                                  f"got {pads}; lower it or use mode=zeros.")
    return Augmenter(ops, input_shape)


__all__ = ["AUGMENTATIONS", "Augmenter", "build_augmenter", "check_variants", "crop_padding", "default_extent",
           "ops_for_rank", "parse_augment", "side_pixels", "variant_ops"]
