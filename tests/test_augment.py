"""Batched augmentation: one battery over every registered op, then closed forms per op.

Each op is sample (per-sample params from a torch.Generator) + apply (pure, vectorised); the
battery checks shapes, dtypes, p=0 identity, per-sample randomness and exact replay for every entry.
"""

import math

import numpy as np
import pytest
import torch

from trainwell.config import resolve
from trainwell.data.augment import (
    AUGMENTATIONS,
    Augmenter,
    build_augmenter,
    default_extent,
    ops_for_rank,
    parse_augment,
)
from trainwell.errors import ConfigError

CPU = torch.device("cpu")
DEVICES = [CPU] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
#: One example's shape per spatial rank; the image is not square so that H/W mix-ups show.
SHAPES = {0: (6,), 1: (2, 24), 2: (3, 12, 16)}
SUPPORTED = [(e.name, rank) for e in AUGMENTATIONS for rank in sorted(e.meta.ranks)]
OPS = AUGMENTATIONS.names()


def gen(seed: int, device: torch.device = CPU) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def batch(rank: int, n: int = 16, seed: int = 0, dtype=torch.float32, device=CPU) -> torch.Tensor:
    """Values in [0.5, 1.5): never zero, so a zeroed value is always the op's doing."""
    return (torch.rand((n, *SHAPES[rank]), generator=gen(seed)) + 0.5).to(dtype=dtype, device=device)


def single(name: str, rank: int, **args) -> Augmenter:
    return build_augmenter([{name: args}], SHAPES[rank])


def field(params, name: str) -> torch.Tensor:
    return getattr(params, name)


# ----------------------------------------------------------------------------- battery over every entry


def test_registry_entries_declare_ranks_defaults_and_doc():
    assert set(OPS) >= {"hflip", "vflip", "rotation", "translation", "crop", "scale", "brightness", "contrast",
                        "noise", "cutout"}
    for entry in AUGMENTATIONS:
        assert entry.meta.ranks <= {0, 1, 2} and entry.meta.ranks
        assert "p" in entry.meta.defaults
        assert entry.doc and "\n" not in entry.doc
    assert ops_for_rank(0) == ["noise"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,rank", SUPPORTED)
def test_every_op_runs_on_every_supported_rank_keeping_shape_and_dtype(name, rank, dtype):
    x = batch(rank, dtype=dtype)
    out = single(name, rank)(x, gen(1))
    assert out.shape == x.shape
    assert out.dtype == dtype
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", OPS)
def test_unsupported_ranks_raise_config_error_naming_the_ops_that_fit(name):
    for rank in {0, 1, 2} - AUGMENTATIONS.entry(name).meta.ranks:
        with pytest.raises(ConfigError, match=f"'{name}' does not fit.*ops that do: .*noise"):
            build_augmenter([name], SHAPES[rank])


@pytest.mark.parametrize("name,rank", SUPPORTED)
def test_p_zero_is_exactly_the_identity(name, rank):
    x = batch(rank)
    assert torch.equal(single(name, rank, p=0.0)(x, gen(2)), x)


@pytest.mark.parametrize("name,rank", SUPPORTED)
def test_parameters_and_outputs_differ_across_the_batch(name, rank):
    """The same image 64 times: per-sample random params give several different outputs."""
    n = 64
    x = batch(rank, n=1).expand(n, *SHAPES[rank]).contiguous()
    aug = single(name, rank, p=0.5)
    params = aug.sample(x.shape, gen(3), CPU)[0]
    for key, value in vars(params).items():
        if isinstance(value, torch.Tensor):
            assert not (value == value[:1]).all(), f"{name}.{key} is the same for every sample"
    out = aug.apply(x, [params])
    distinct = {tuple(row.flatten().tolist()) for row in out}
    assert len(distinct) > 1


@pytest.mark.parametrize("name,rank", SUPPORTED)
def test_same_seed_gives_identical_output_and_sample_apply_replays_it(name, rank):
    x = batch(rank, n=32)
    aug = single(name, rank, p=0.5)
    out = aug(x, gen(4))
    assert torch.equal(aug(x, gen(4)), out)
    params = aug.sample(x.shape, gen(4), x.device)
    assert torch.equal(aug.apply(x, params), out)
    assert torch.equal(aug.apply(x, params), aug.apply(x, params))  # apply is pure
    assert not torch.equal(aug(x, gen(5)), out)  # and the seed matters


def test_whole_pipeline_replays_and_draws_only_from_the_given_generator():
    spec = ["translation", "rotation", "hflip", "brightness", "contrast", "noise", "crop", "scale", "cutout"]
    aug = build_augmenter(spec, SHAPES[2])
    x = batch(2, n=8)
    torch.manual_seed(123)
    out = aug(x, gen(6))
    torch.manual_seed(456)  # the global RNG is not used
    assert torch.equal(aug.apply(x, aug.sample(x.shape, gen(6), CPU)), out)
    assert torch.equal(aug(x, gen(6)), out)


@pytest.mark.parametrize("rank", [1, 2])
def test_pipeline_equals_its_ops_applied_one_by_one_and_never_writes_to_the_batch(rank):
    """The pipeline reuses its own intermediate tensors; the caller's batch and the result are unaffected."""
    spec = [name for name in OPS if rank in AUGMENTATIONS.entry(name).meta.ranks]
    aug = build_augmenter(spec + ["brightness", "noise"], SHAPES[rank])  # pointwise ops first and last too
    aug = build_augmenter(["contrast"] + [name for name, _ in aug.ops], SHAPES[rank])
    x = batch(rank, n=16)
    before = x.clone()
    params = aug.sample(x.shape, gen(23), CPU)
    out = aug.apply(x, params)
    assert torch.equal(x, before)
    expected = x
    for (name, args), p in zip(aug.ops, params):
        expected = single(name, rank, **args).apply(expected, [p])
    assert torch.equal(out, expected)
    assert torch.equal(x, before)


@pytest.mark.parametrize("name,rank", SUPPORTED)
def test_the_mask_follows_p(name, rank):
    n, p = 4000, 0.3
    params = single(name, rank, p=p).sample((n, *SHAPES[rank]), gen(7), CPU)[0]
    frac = params.mask.float().mean().item()
    assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / n)


# ----------------------------------------------------------------------------- per-op closed forms


@pytest.mark.parametrize("name,rank", [("hflip", 1), ("hflip", 2), ("vflip", 2)])
def test_flips_are_involutions_and_flip_the_right_axis(name, rank):
    x = batch(rank, n=32)
    aug = single(name, rank)
    params = aug.sample(x.shape, gen(8), CPU)
    once = aug.apply(x, params)
    assert torch.equal(aug.apply(once, params), x)
    dim = -2 if name == "vflip" else -1
    on = params[0].mask
    assert on.any() and (~on).any()
    assert torch.equal(once[on], x[on].flip(dim))
    assert torch.equal(once[~on], x[~on])


@pytest.mark.parametrize("rank", [1, 2])
def test_brightness_adds_one_offset_per_sample_within_delta(rank):
    x = batch(rank, n=32).double()
    aug = single("brightness", rank, delta=0.3, p=0.7)
    (params,) = aug.sample(x.shape, gen(9), CPU)
    out = aug.apply(x, [params]).numpy()
    b = np.where(params.mask.numpy(), params.offset.numpy().astype(np.float64), 0.0)
    assert np.all(np.abs(b) <= 0.3)
    expected = x.numpy() + b.reshape(-1, *[1] * (x.dim() - 1))
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("rank", [1, 2])
def test_contrast_scales_deviations_from_the_per_sample_mean(rank):
    x = batch(rank, n=32).double()
    aug = single("contrast", rank, low=0.5, high=1.5, p=0.7)
    (params,) = aug.sample(x.shape, gen(10), CPU)
    out = aug.apply(x, [params]).numpy()
    xn = x.numpy()
    for i in range(len(xn)):
        c = float(params.factor[i]) if params.mask[i] else 1.0
        m = xn[i].mean()  # over all channels and positions
        np.testing.assert_allclose(out[i], (xn[i] - m) * c + m, rtol=0, atol=1e-12)
        np.testing.assert_allclose(out[i].mean(), m, atol=1e-12)  # the mean is preserved
    assert np.all((params.factor.numpy() >= 0.5) & (params.factor.numpy() <= 1.5))


def roll_with_zero_fill(img: torch.Tensor, shifts: list[int]) -> torch.Tensor:
    """img (C, *spatial) moved by shifts[d] along spatial dim d; what wraps around becomes 0."""
    out = img.clone()
    for d, s in enumerate(shifts):
        dim = d + 1
        out = torch.roll(out, s, dims=dim)
        size = out.shape[dim]
        if s > 0:
            out.narrow(dim, 0, min(s, size)).zero_()
        elif s < 0:
            out.narrow(dim, size + s, -s).zero_()
    return out


@pytest.mark.parametrize("rank", [1, 2])
def test_translation_matches_roll_with_zero_fill(rank):
    x = batch(rank, n=32)
    aug = single("translation", rank, fraction=0.25, p=0.8)
    (params,) = aug.sample(x.shape, gen(11), CPU)
    out = aug.apply(x, [params])
    spatial = SHAPES[rank][1:]
    assert params.max_shift == tuple(round(0.25 * s) for s in spatial)
    assert (params.shift.abs() <= torch.tensor(params.max_shift)).all()
    nonzero = [i for i in range(len(x)) if params.mask[i] and (params.shift[i] != 0).all()]
    off = [i for i in range(len(x)) if not params.mask[i]]
    assert nonzero and off
    for i in nonzero[:3] + off[:1]:
        shifts = params.shift[i].tolist() if params.mask[i] else [0] * len(spatial)
        assert torch.equal(out[i], roll_with_zero_fill(x[i], shifts))


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
@pytest.mark.parametrize("rank", [1, 2])
def test_crop_matches_pad_then_slice(rank, mode):
    x = batch(rank, n=16)
    pad = 3
    aug = single("crop", rank, padding=pad, mode=mode, p=0.8)
    (params,) = aug.sample(x.shape, gen(12), CPU)
    out = aug.apply(x, [params])
    spatial = SHAPES[rank][1:]
    assert ((params.offset >= 0) & (params.offset <= 2 * pad)).all()
    torch_mode = "constant" if mode == "zeros" else "reflect"
    for i in range(len(x)):
        padded = torch.nn.functional.pad(x[i : i + 1], [pad] * (2 * len(spatial)), mode=torch_mode)[0]
        offset = params.offset[i].tolist() if params.mask[i] else [pad] * len(spatial)
        window = padded
        for d, (o, s) in enumerate(zip(offset, spatial)):
            window = window.narrow(d + 1, o, s)
        assert torch.equal(out[i], window)


#: The sizes the defaults must suit: digits (8x8), MNIST (28x28), CIFAR (32x32), a non-square image, MNIST-1D.
SIZES = [(8, 8), (28, 28), (32, 32), (8, 32), (40,)]


def drawn_extremes(spec, size, field_name, n=4000):
    """Per spatial dim, the smallest and largest value of ``field_name`` over a large batch of default draws."""
    aug = build_augmenter([spec], (1, *size))
    (params,) = aug.sample((n, 1, *size), gen(21), CPU)
    values = getattr(params, field_name)
    return values.min(0).values.tolist(), values.max(0).values.tolist()


@pytest.mark.parametrize("size", SIZES)
def test_crop_pads_an_eighth_of_each_side_by_default(size):
    # round(side / 8): 1 px on 8x8 digits (4 px there shifted by half the image), 4 px at 28 and 32.
    pads = [int(round(s * 0.125)) for s in size]
    low, high = drawn_extremes("crop", size, "offset")
    assert low == [0] * len(size) and high == [2 * p for p in pads]  # every shift in [-pad, pad] is drawn
    assert {8: 1, 28: 4, 32: 4, 40: 5}[size[-1]] == pads[-1]
    x = torch.rand(64, 1, *size, generator=gen(3))
    out = build_augmenter(["crop"], (1, *size))(x, gen(4))
    # A crop keeps the content: the pixels of every output appear among the pixels of its input (or are 0).
    for i in range(4):
        kept = out[i][out[i] != 0]
        assert torch.isin(kept, x[i]).all()


@pytest.mark.parametrize("size", SIZES)
def test_translation_and_cutout_defaults_are_fractions_of_each_side(size):
    low, high = drawn_extremes("translation", size, "shift")
    shifts = [int(round(0.1 * s)) for s in size]
    assert low == [-m for m in shifts] and high == shifts
    aug = build_augmenter(["cutout"], (1, *size))
    (params,) = aug.sample((8, 1, *size), gen(5), CPU)
    assert params.side == tuple(int(round(0.25 * s)) for s in size)


def test_crop_padding_in_pixels_overrides_the_fraction_and_null_leaves_it_unset():
    assert drawn_extremes("crop:padding=2:fraction=0.5", (28, 28), "offset")[1] == [4, 4]
    assert drawn_extremes({"crop": {"padding": None}}, (8, 8), "offset")[1] == [2, 2]
    assert parse_augment([{"crop": {"padding": None}}]) == parse_augment(["crop"])
    x = batch(2, n=8)
    assert torch.equal(build_augmenter(["crop:padding=0"], SHAPES[2])(x, gen(1)), x)
    assert torch.equal(build_augmenter(["crop:fraction=0"], SHAPES[2])(x, gen(1)), x)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name,field_name", [("translation", "shift"), ("crop", "offset")])
def test_the_documented_pixel_extent_is_what_is_drawn(name, field_name, size):
    # docs/reference.md's table comes from default_extent: it must state the largest shift actually drawn.
    _, high = drawn_extremes(name, size, field_name)
    largest = [h // 2 for h in high] if name == "crop" else high  # crop offsets run over [0, 2 * padding]
    text = default_extent(name, size)
    if len(set(largest)) == 1:
        assert text in (f"up to ±{largest[0]} px per axis", f"up to ±{largest[0]} px")
    else:
        assert text == "up to ±" + "x".join(map(str, largest)) + " px (rows x columns)"


def test_cutout_extent_states_the_box_side_in_pixels():
    assert default_extent("cutout", (8, 8)) == "box of 2x2 px"
    assert default_extent("cutout", (32, 32)) == "box of 8x8 px"
    assert default_extent("cutout", (40,)) == "box of 10 px"
    with pytest.raises(ValueError, match="no size-relative argument"):
        default_extent("rotation", (8, 8))


def test_rotation_by_zero_degrees_and_scale_one_are_the_identity():
    x = batch(2, n=8)
    for spec in ({"rotation": {"degrees": 0}}, {"scale": {"min": 1.0, "max": 1.0}}):
        out = build_augmenter([spec], SHAPES[2])(x, gen(13))
        torch.testing.assert_close(out, x, rtol=0, atol=1e-5)


def test_rotation_matches_affine_grid_and_grid_sample():
    """The broadcast-built grid gives what F.affine_grid + F.grid_sample give for the same rotation."""
    x = batch(2, n=16)
    h, w = SHAPES[2][1:]
    aug = single("rotation", 2, degrees=40, p=0.5)
    (params,) = aug.sample(x.shape, gen(22), CPU)
    cos, sin = params.angle.cos(), params.angle.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([cos, -sin * h / w, zero, sin * w / h, cos, zero], 1).view(-1, 2, 3)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    rotated = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    expected = torch.where(params.mask.view(-1, 1, 1, 1), rotated, x)
    torch.testing.assert_close(aug.apply(x, [params]), expected, rtol=0, atol=1e-5)


def test_rotation_by_180_degrees_flips_both_axes():
    x = batch(2, n=4)
    aug = single("rotation", 2, degrees=180)
    (params,) = aug.sample(x.shape, gen(14), CPU)
    params = type(params)(torch.ones_like(params.mask), torch.full_like(params.angle, math.pi))
    torch.testing.assert_close(aug.apply(x, [params]), x.flip(-1).flip(-2), rtol=0, atol=1e-5)


def test_rotation_preserves_pixel_distances_on_non_square_images():
    """A bright dot keeps its distance from the centre (the normalised grid is aspect-corrected)."""
    h, w = 21, 41
    x = torch.zeros(1, 1, h, w)
    x[0, 0, 10, 30] = 1.0  # 10 px right of the centre (10, 20)
    aug = build_augmenter(["rotation"], (1, h, w))
    (params,) = aug.sample(x.shape, gen(15), CPU)
    params = type(params)(torch.ones(1, dtype=torch.bool), torch.full((1,), math.pi / 2))
    out = aug.apply(x, [params])[0, 0]
    iy, ix = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    cy, cx = (out * iy).sum() / out.sum(), (out * ix).sum() / out.sum()
    assert math.hypot(cy - 10, cx - 20) == pytest.approx(10, abs=1e-3)
    assert abs(cx - 20) < 1e-3  # a quarter turn moves it onto the vertical axis


def test_scale_above_one_zooms_in():
    x = torch.zeros(1, 1, 21, 21)
    x[0, 0, 10, 15] = 1.0  # 5 px right of the centre
    aug = build_augmenter([{"scale": {"min": 2.0, "max": 2.0}}], (1, 21, 21))
    out = aug(x, gen(16))[0, 0]
    ix = torch.arange(21).float()
    cx = (out.sum(0) * ix).sum() / out.sum()
    assert float(cx) == pytest.approx(20, abs=0.6)  # 10 px right of the centre


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_noise_has_the_configured_std(rank):
    n, std = 512, 0.3
    x = torch.zeros(n, *SHAPES[rank])
    out = single("noise", rank, std=std)(x, gen(17))
    count = out.numel()
    assert abs(out.mean().item()) < 5 * std / math.sqrt(count)
    assert out.std().item() == pytest.approx(std, rel=5 * math.sqrt(0.5 / count) + 1e-3)


def test_noise_with_p_leaves_unselected_samples_untouched():
    x = batch(2, n=64)
    aug = single("noise", 2, std=0.1, p=0.5)
    (params,) = aug.sample(x.shape, gen(18), CPU)
    out = aug.apply(x, [params])
    assert torch.equal(out[~params.mask], x[~params.mask])
    assert (out[params.mask] != x[params.mask]).all()


@pytest.mark.parametrize("rank", [1, 2])
def test_cutout_zeroes_exactly_the_clipped_box(rank):
    x = batch(rank, n=64)
    aug = single("cutout", rank, size=0.5, p=0.8)
    (params,) = aug.sample(x.shape, gen(19), CPU)
    out = aug.apply(x, [params])
    spatial = SHAPES[rank][1:]
    channels = SHAPES[rank][0]
    assert params.side == tuple(round(0.5 * s) for s in spatial)
    clipped = 0
    for i in range(len(x)):
        expected = torch.zeros(spatial, dtype=torch.bool)
        if params.mask[i]:
            box = []
            for c, side, size in zip(params.centre[i].tolist(), params.side, spatial):
                lo = c - side // 2
                box.append(slice(max(lo, 0), min(lo + side, size)))
                clipped += lo < 0 or lo + side > size
            expected[tuple(box)] = True
        zeroed = out[i] == 0
        assert torch.equal(zeroed, expected.expand(channels, *spatial))
        assert torch.equal(out[i][~zeroed], x[i][~zeroed])
    assert clipped  # the clipping at the borders was exercised


# ----------------------------------------------------------------------------- parsing and errors


def test_parse_accepts_names_strings_with_args_and_mappings():
    parsed = parse_augment(["hflip", "rotation:degrees=10", {"noise": {"std": 0.1}}, {"crop": None},
                            "cutout:size=0.5:p=0.5"])
    assert parsed == [
        ("hflip", {"p": 0.5}),
        ("rotation", {"degrees": 10.0, "p": 1.0}),
        ("noise", {"std": 0.1, "p": 1.0}),
        ("crop", {"fraction": 0.125, "padding": None, "mode": "zeros", "p": 1.0}),
        ("cutout", {"size": 0.5, "p": 0.5}),
    ]
    assert parse_augment("translation, noise") == parse_augment(["translation", "noise"])
    assert parse_augment([]) == parse_augment(None) == []


def test_config_values_from_the_command_line_build_an_augmenter():
    cfg = resolve(["augment=translation,rotation,noise"])
    assert [name for name, _ in build_augmenter(cfg.augment, (1, 8, 8)).ops] == ["translation", "rotation", "noise"]
    cfg = resolve(["augment=[hflip, {rotation: {degrees: 5}}]"])
    assert build_augmenter(cfg.augment, (1, 8, 8)).ops[1] == ("rotation", {"degrees": 5.0, "p": 1.0})


@pytest.mark.parametrize(
    "spec,match",
    [
        (["rotaton"], "unknown augment op 'rotaton'. Did you mean 'rotation'"),
        ([{"noise": {"sd": 0.1}}], "no argument 'sd'. Did you mean 'std'.*Valid: std, p"),
        (["noise:std=-1"], "std must be >= 0"),
        ([{"hflip": {"p": 1.5}}], r"p is a probability in \[0, 1\]"),
        (["rotation:degrees=-5"], r"degrees must be in \[0, 180\]"),
        (["translation:fraction=1.5"], r"fraction must be in \[0, 1\)"),
        (["crop:padding=-1"], "padding must be >= 0"),
        (["crop:padding=2.5"], "padding must be a whole number"),
        (["crop:fraction=1"], r"fraction must be in \[0, 1\)"),
        ([{"crop": {"fraction": 0.95, "mode": "reflect"}}], r"reflect padding must be < every side \(8, 8\), got \(8, 8\)"),
        (["crop:mode=wrap"], "mode must be one of zeros, reflect"),
        ([{"scale": {"min": 1.2, "max": 0.8}}], "0 < min <= max"),
        ([{"contrast": {"low": -1}}], "0 <= low <= high"),
        (["brightness:delta=-0.1"], "delta must be >= 0"),
        (["cutout:size=2"], r"size is a fraction of the side in \[0, 1\]"),
        ([{"noise": {"std": "big"}}], "std must be a finite number"),
        ([{"noise": {"std": True}}], "std must be a finite number"),
        ([{"noise": [1, 2]}], "arguments must be a mapping"),
        (["rotation:10"], "arguments go as name:arg=value"),
        ([3], "augment entries are op names"),
        ([{"crop": {"padding": 8, "mode": "reflect"}}], "reflect padding must be < every side"),
    ],
)
def test_bad_names_arguments_and_values_raise_one_line_config_errors(spec, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_augmenter(spec, (3, 8, 8))
    assert "\n" not in str(info.value)


def test_wrong_input_shapes_raise():
    with pytest.raises(ConfigError, match="tabular"):
        build_augmenter(["noise"], (1, 2, 3, 4))
    aug = build_augmenter(["hflip"], (3, 8, 8))
    with pytest.raises(ValueError, match="built for"):
        aug(torch.zeros(2, 3, 8), gen(0))
    with pytest.raises(TypeError, match="float"):
        aug(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), gen(0))


# ----------------------------------------------------------------------------- devices


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_params_live_on_the_batch_device_and_come_from_the_generator_on_that_device(device):
    aug = build_augmenter(["translation", "rotation", "hflip", "brightness", "contrast", "noise", "crop", "cutout"],
                          SHAPES[2])
    x = batch(2, n=8, device=device)
    params = aug.sample(x.shape, gen(20, device), device)
    for p in params:
        for value in vars(p).values():
            if isinstance(value, torch.Tensor):
                assert value.device.type == device.type
    out = aug.apply(x, params)
    assert out.device.type == device.type
    assert torch.equal(aug(x, gen(20, device)), out)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_augmentation_never_syncs_with_the_host():
    spec = ["translation", "rotation", "scale", "hflip", "vflip", "brightness", "contrast", "noise", "crop", "cutout"]
    aug = build_augmenter(spec, SHAPES[2])
    x = batch(2, n=8, device=torch.device("cuda"))
    g = gen(21, torch.device("cuda"))
    aug(x, g)  # warm up
    torch.cuda.set_sync_debug_mode("error")
    try:
        aug(x, g)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ----------------------------------------------------------------------------- edges the mutation run found

#: The documented arguments of every op with their defaults (docs/reference.md's augment table).
DOCUMENTED_DEFAULTS = {
    "hflip": {"p": 0.5}, "vflip": {"p": 0.5},
    "translation": {"fraction": 0.1, "p": 1.0},
    "crop": {"fraction": 0.125, "padding": None, "mode": "zeros", "p": 1.0},
    "rotation": {"degrees": 15.0, "p": 1.0}, "scale": {"min": 0.9, "max": 1.1, "p": 1.0},
    "brightness": {"delta": 0.2, "p": 1.0}, "contrast": {"low": 0.8, "high": 1.2, "p": 1.0},
    "noise": {"std": 0.05, "p": 1.0}, "cutout": {"size": 0.25, "p": 1.0},
}
DOCUMENTED_RANKS = {"hflip": {1, 2}, "vflip": {2}, "translation": {1, 2}, "crop": {1, 2}, "rotation": {2},
                    "scale": {2}, "brightness": {1, 2}, "contrast": {1, 2}, "noise": {0, 1, 2}, "cutout": {1, 2}}
POINTWISE = {"brightness", "contrast", "noise", "cutout"}  # the ops that may write into x (inplace=True)


@pytest.mark.parametrize("name", sorted(DOCUMENTED_DEFAULTS))
def test_registered_metadata_states_the_documented_arguments_ranks_and_choices(name):
    """What `_op` registers (at import, out of the mutation run's reach): pinned here."""
    entry = AUGMENTATIONS.entry(name)
    assert entry.name == name
    assert entry.meta.defaults == DOCUMENTED_DEFAULTS[name]
    assert entry.meta.ranks == frozenset(DOCUMENTED_RANKS[name])
    assert entry.meta.choices == ({"mode": ("zeros", "reflect")} if name == "crop" else {})
    assert (entry.meta.extent is not None) == (name in {"translation", "crop", "cutout"})
    assert (entry.meta.check is not None) == (name not in {"hflip", "vflip"})
    assert callable(entry.meta.apply) and callable(entry.factory)
    args = ", ".join(f"{k}={'unset' if v is None else v}" for k, v in DOCUMENTED_DEFAULTS[name].items())
    fits = "/".join({0: "tabular", 1: "signals", 2: "images"}[r] for r in sorted(DOCUMENTED_RANKS[name]))
    tta = name in {"hflip", "vflip", "translation", "crop"}  # the ops with deterministic variants
    assert (entry.meta.variants is not None) == tta
    assert f". Args: {args}. Fits: {fits}." in entry.doc
    assert entry.doc.endswith(f". Fits: {fits}.") != tta and ("Test-time variants: " in entry.doc) == tta
    assert entry.doc.count("Args:") == 1 and not entry.doc.startswith(" Args")


def test_registered_docs_spell_unset_and_the_rank_lists():
    assert "Args: fraction=0.125, padding=unset, mode=zeros, p=1.0. Fits: signals/images. Test-time variants: the " \
           "window moved by +k and by -k pixels along each axis alone" in AUGMENTATIONS.entry("crop").doc
    assert AUGMENTATIONS.entry("noise").doc.endswith("Args: std=0.05, p=1.0. Fits: tabular/signals/images.")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,rank", SUPPORTED)
def test_apply_never_writes_to_x_by_default_and_inplace_gives_the_same_values(name, rank, dtype):
    """Out of place unless told; with inplace=True the pointwise ops write into x, the same values either way."""
    x = batch(rank, dtype=dtype)
    before = x.clone()
    aug = single(name, rank, p=0.5)
    (params,) = aug.sample(x.shape, gen(31), CPU)
    apply = AUGMENTATIONS.entry(name).meta.apply
    out = apply(x, params)
    assert torch.equal(x, before) and out.data_ptr() != x.data_ptr()
    assert torch.equal(apply(x, params, inplace=False), out) and torch.equal(x, before)
    y = x.clone()
    out_inplace = apply(y, params, inplace=True)
    assert torch.equal(out_inplace, out)
    assert out_inplace.dtype == dtype
    if name in POINTWISE:
        assert out_inplace.data_ptr() == y.data_ptr() and torch.equal(y, out)


def test_the_pipeline_lets_only_tensors_it_allocated_be_overwritten():
    aug = build_augmenter(["brightness", "noise", "hflip", "contrast", "cutout"], SHAPES[2])
    x = batch(2, n=8)
    seen = []

    def spy(apply):
        def wrapped(y, p, **kwargs):
            seen.append((y is x, kwargs))
            return apply(y, p, **kwargs)
        return wrapped

    from types import SimpleNamespace
    aug._entries = [SimpleNamespace(factory=e.factory, meta=SimpleNamespace(apply=spy(e.meta.apply)))
                    for e in aug._entries]
    aug.apply(x, aug.sample(x.shape, gen(32), CPU))
    assert seen == [(True, {"inplace": False})] + [(False, {"inplace": True})] * 4


@pytest.mark.parametrize("dtype,atol", [(torch.float16, 3e-2), (torch.bfloat16, 1.5e-1)])
@pytest.mark.parametrize("name,rank", SUPPORTED)
def test_half_precision_batches_keep_their_dtype_and_match_a_float64_reference(name, rank, dtype, atol):
    x64 = batch(rank, n=16).double()
    x = x64.to(dtype)
    aug = single(name, rank, p=0.5)
    params = aug.sample(x.shape, gen(33), CPU)
    out = aug.apply(x, params)
    assert out.dtype == dtype
    expected = aug.apply(x.double(), params)  # the same (rounded) inputs, computed in float64
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=atol)


@pytest.mark.parametrize("name", ["rotation", "scale"])
def test_float64_affine_ops_match_affine_grid_in_float64(name):
    """The grid is built in x's dtype: in float64 it agrees with F.affine_grid to rounding."""
    h, w = 10, 14  # pixel centres (2k + 1) / side - 1 that float32 cannot hold exactly on either axis
    x = torch.rand(8, 2, h, w, generator=gen(40), dtype=torch.float64) + 0.5
    aug = build_augmenter([{name: {"p": 0.5}}], (2, h, w))
    (params,) = aug.sample(x.shape, gen(34), CPU)
    # float64 angles/factors too, so that only the grid's precision is left to compare
    params = type(params)(*(v.double() if v.is_floating_point() else v for v in vars(params).values()))
    zero = torch.zeros(len(x), dtype=torch.float64)
    if name == "rotation":
        cos, sin = params.angle.cos(), params.angle.sin()
        theta = torch.stack([cos, -sin * h / w, zero, sin * w / h, cos, zero], 1)
    else:
        inv = 1 / params.factor
        theta = torch.stack([inv, zero, zero, zero, inv, zero], 1)
    grid = torch.nn.functional.affine_grid(theta.view(-1, 2, 3), list(x.shape), align_corners=False)
    warped = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    expected = torch.where(params.mask.view(-1, 1, 1, 1), warped, x)
    out = aug.apply(x, [params])
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)  # float32 coordinates would be ~1e-7 off


def test_generator_none_draws_from_the_global_rng_repeatably():
    aug = build_augmenter(OPS, SHAPES[2])  # every op that fits images: every draw helper
    x = batch(2, n=8)
    torch.manual_seed(7)
    out = aug(x)
    torch.manual_seed(7)
    assert torch.equal(aug(x), out)
    torch.manual_seed(7)
    assert torch.equal(aug.apply(x, aug.sample(x.shape, None, "cpu")), out)
    assert not torch.equal(aug(x), out)  # the global stream moved on


TALL = (1, 16, 8)  # H > W: round(0.25 * H) = 4 rows of padding, 2 columns


def test_translation_of_a_tall_image_matches_roll_with_zero_fill():
    x = torch.rand(16, *TALL, generator=gen(35)) + 0.5
    aug = build_augmenter([{"translation": {"fraction": 0.25}}], TALL)
    (params,) = aug.sample(x.shape, gen(36), CPU)
    assert params.max_shift == (4, 2)
    out = aug.apply(x, [params])
    for i in range(len(x)):
        assert torch.equal(out[i], roll_with_zero_fill(x[i], params.shift[i].tolist()))


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_crop_of_a_tall_image_matches_pad_then_slice(mode):
    x = torch.rand(16, *TALL, generator=gen(37)) + 0.5
    aug = build_augmenter([{"crop": {"fraction": 0.25, "mode": mode}}], TALL)
    (params,) = aug.sample(x.shape, gen(38), CPU)
    assert params.padding == (4, 2)
    out = aug.apply(x, [params])
    padded = torch.nn.functional.pad(x, (2, 2, 4, 4), mode="constant" if mode == "zeros" else "reflect")
    for i in range(len(x)):
        r, c = params.offset[i].tolist()
        assert torch.equal(out[i], padded[i, :, r : r + 16, c : c + 8])


@pytest.mark.parametrize("size", SIZES)
def test_cutout_centres_cover_every_position(size):
    low, high = drawn_extremes("cutout", size, "centre")
    assert low == [0] * len(size) and high == [s - 1 for s in size]


@pytest.mark.parametrize("spec", [
    {"translation": {"fraction": 0.0}}, {"translation": {"fraction": 0.99}},
    {"crop": {"fraction": 0.0}}, {"crop": {"padding": 0}},
    {"rotation": {"degrees": 0.0}}, {"rotation": {"degrees": 180.0}},
    {"scale": {"min": 1.0, "max": 1.0}}, {"scale": {"min": 1e-6, "max": 1e-6}},
    {"contrast": {"low": 0.0, "high": 0.0}}, {"contrast": {"low": 1.5, "high": 1.5}},
    {"brightness": {"delta": 0.0}}, {"brightness": {"delta": 0.5}}, {"noise": {"std": 0.0}}, {"noise": {"std": 0.5}},
    {"cutout": {"size": 0.0}}, {"cutout": {"size": 1.0}}, {"hflip": {"p": 0.0}}, {"hflip": {"p": 1.0}},
])
def test_the_boundary_values_of_every_argument_are_accepted(spec):
    ((name, args),) = spec.items()
    ((parsed_name, parsed),) = parse_augment([spec])
    assert parsed_name == name and all(parsed[k] == v for k, v in args.items())
    x = batch(2, n=4)
    assert build_augmenter([spec], SHAPES[2])(x, gen(39)).shape == x.shape


@pytest.mark.parametrize("spec,message", [
    ({"translation": {"fraction": 1.0}},
     "augment op 'translation': fraction must be in [0, 1), got 1.0; e.g. translation:fraction=0.1."),
    ({"translation": {"fraction": -0.01}},
     "augment op 'translation': fraction must be in [0, 1), got -0.01; e.g. translation:fraction=0.1."),
    ({"crop": {"fraction": 1.0}},
     "augment op 'crop': fraction must be in [0, 1), got 1.0; e.g. crop:fraction=0.125 (or padding in pixels: "
     "crop:padding=4)."),
    ({"crop": {"padding": -1}}, "augment op 'crop': padding must be >= 0, got -1; e.g. crop:padding=4."),
    ({"crop": {"padding": 2.5}}, "augment op 'crop': padding must be a whole number, got 2.5; e.g. crop:padding=4."),
    ({"rotation": {"degrees": 180.5}},
     "augment op 'rotation': degrees must be in [0, 180], got 180.5; e.g. rotation:degrees=15."),
    ({"rotation": {"degrees": -0.5}},
     "augment op 'rotation': degrees must be in [0, 180], got -0.5; e.g. rotation:degrees=15."),
    ({"scale": {"min": 0.0, "max": 1.0}},
     "augment op 'scale': need 0 < min <= max, got min=0.0, max=1.0; e.g. {scale: {min: 0.9, max: 1.1}}."),
    ({"scale": {"min": 1.2, "max": 1.1}},
     "augment op 'scale': need 0 < min <= max, got min=1.2, max=1.1; e.g. {scale: {min: 0.9, max: 1.1}}."),
    ({"contrast": {"low": -0.1, "high": 1.0}},
     "augment op 'contrast': need 0 <= low <= high, got low=-0.1, high=1.0; e.g. {contrast: {low: 0.8, high: 1.2}}."),
    ({"contrast": {"low": 1.3, "high": 1.2}},
     "augment op 'contrast': need 0 <= low <= high, got low=1.3, high=1.2; e.g. {contrast: {low: 0.8, high: 1.2}}."),
    ({"brightness": {"delta": -0.1}}, "augment op 'brightness': delta must be >= 0, got -0.1; e.g. brightness:delta=0.1."),
    ({"noise": {"std": -1.0}}, "augment op 'noise': std must be >= 0, got -1.0; e.g. noise:std=0.1."),
    ({"cutout": {"size": 1.01}},
     "augment op 'cutout': size is a fraction of the side in [0, 1], got 1.01; e.g. cutout:size=0.25."),
    ({"cutout": {"size": -0.01}},
     "augment op 'cutout': size is a fraction of the side in [0, 1], got -0.01; e.g. cutout:size=0.25."),
    ({"hflip": {"p": 1.01}}, "augment op 'hflip': p is a probability in [0, 1], got 1.01; e.g. hflip:p=0.5."),
    ({"noise": {"zzzz": 1}}, "augment op 'noise' has no argument 'zzzz'. Valid: std, p."),
    ({"noise": {"sd": 1}}, "augment op 'noise' has no argument 'sd'. Did you mean 'std'? Valid: std, p."),
    ({"noise": {"std": "big"}}, "augment op 'noise': std must be a finite number, got 'big'; e.g. noise:std=0.05."),
    ({"crop": {"mode": "wrap"}}, "augment op 'crop': mode must be one of zeros, reflect, got 'wrap'."),
])
def test_argument_errors_word_for_word(spec, message):
    with pytest.raises(ConfigError) as info:
        parse_augment([spec])
    assert str(info.value) == message


def test_an_unset_padding_does_not_stop_the_arguments_after_it():
    assert parse_augment([{"crop": {"padding": None, "mode": "reflect", "p": 0.5}}]) == [
        ("crop", {"fraction": 0.125, "padding": None, "mode": "reflect", "p": 0.5})]


def test_shape_and_batch_errors_word_for_word():
    with pytest.raises(ConfigError) as info:
        build_augmenter(["noise"], (1, 2, 3, 4))
    assert str(info.value) == ("augmentation supports tabular (F,), signal (C, L) and image (C, H, W) inputs, "
                               "got shape (1, 2, 3, 4).")
    with pytest.raises(ConfigError) as info:
        build_augmenter(["rotation"], (2, 24))
    fitting = [name for name, ranks in DOCUMENTED_RANKS.items() if 1 in ranks]
    assert set(ops_for_rank(1)) == set(fitting)
    assert str(info.value) == ("augment op 'rotation' does not fit signals (N, C, L); ops that do: "
                               + ", ".join(ops_for_rank(1)) + ".")
    aug = build_augmenter(["hflip"], (3, 8, 8))
    with pytest.raises(ValueError) as info:
        aug(torch.zeros(2, 3, 8), gen(0))
    assert str(info.value) == "augmenter built for (N, 3, 8, 8) batches, got (2, 3, 8)"
    with pytest.raises(TypeError) as info:
        aug(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), gen(0))
    assert str(info.value) == ("augmentation needs a float batch, got torch.uint8; "
                               "convert with trainwell.data.to_float first.")
    x = torch.zeros(2, 3, 8, 8)
    params = aug.sample(x.shape, gen(0), CPU)
    with pytest.raises(ValueError) as info:
        aug.apply(x, params * 2)
    assert str(info.value) == "expected params for 1 ops, got 2"


def test_repr_lists_the_ops_with_their_complete_arguments():
    aug = build_augmenter(["rotation:degrees=10", "hflip"], (1, 8, 8))
    assert repr(aug) == "Augmenter([rotation(degrees=10.0, p=1.0), hflip(p=0.5)], input_shape=(1, 8, 8))"
