"""Memory: each preset's peak RSS (and peak CUDA memory on a GPU), and what train.data_on_device=false costs.

Part 1, peak memory: every preset trains one short epoch (``train.epochs=1``, ``data.per_class=N``,
``sched.warmup_epochs=0`` so that one epoch is a valid schedule: it changes no memory)
in a fresh ``trainwell train`` subprocess; its peak resident set is the child's own rusage
(``os.wait4``: that child alone), its peak CUDA memory ``torch.cuda.max_memory_allocated`` as the
child reports it. The floor of any run (Python + torch + trainwell imported) is printed first.
Data the presets need a path for:

* mnist, fashion_mnist, kmnist: ``--mnist`` (default /work/shared/data/mnist-train; Fashion-MNIST and
  KMNIST share MNIST's format and size, so all three read that folder: their figures are those
  of the format, not of their pixels);
* cifar10, cifar100: CIFAR-format files of the real size (50,000 + 10,000 32x32x3 images, random
  pixels) generated in a temporary folder (``--cifar-n`` training images);
* folder: a temporary folder of 32x32 PNGs, ``--folder-n`` per class, 10 classes;
* tabular: a temporary CSV of 2,000 rows x 20 features, 3 classes.

``data.per_class`` limits the training examples, not what the source reads: RSS includes the whole
file loaded (CIFAR's 150 MB of pixels are read even for 20 images per class).

Part 2, throughput (``--ab``): preset=mnist's model and recipe on ``--ab-per-class`` examples per
class of the MNIST folder, timed interleaved (A B C A B C ..., bench/common.py) in one process:
data_on_device=true (the split on the device, float32), false (the split in RAM, each batch
gathered there and copied), and false with the split read from a memory-mapped uncompressed
.npz (the rows of each batch read from the file mapping, in file order). Printed: seconds per run and the ratio
to true. On the CPU, true and false do the same work but for where the uint8->float conversion
happens (once vs per batch); on CUDA false adds a host gather + copy per batch.

    python bench/bench_memory.py                                   # all presets + the A/B (a few minutes idle)
    python bench/bench_memory.py --presets digits,mnist --no-ab
    python bench/bench_memory.py --per-class 5 --cifar-n 2000 --ab-per-class 30 --rounds 1   # a quick check
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PRESETS = ["digits", "mnist1d", "mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100", "folder", "tabular"]
MNIST_LIKE = ("mnist", "fashion_mnist", "kmnist")


def _child(report: str, argv: list[str]) -> int:
    """In the subprocess: run the CLI, then write the peak CUDA memory to ``report``."""
    import torch

    from trainwell.cli.app import main

    code = main(argv)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    Path(report).write_text(json.dumps({"cuda_peak_bytes": peak}))
    return code


def _rss_bytes(ru_maxrss: int) -> int:
    return ru_maxrss if platform.system() == "Darwin" else ru_maxrss * 1024  # Linux reports KiB


def measure(command: list[str], report: Path) -> tuple[int, int | None, int, float]:
    """(peak RSS bytes, peak CUDA bytes or None, exit code, seconds) of one fresh subprocess."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    cuda = json.loads(report.read_text())["cuda_peak_bytes"] if report.is_file() else None
    if proc.returncode:
        print(f"    (exit {proc.returncode}: {err.strip().splitlines()[-1] if err.strip() else 'no message'})")
    return _rss_bytes(usage.ru_maxrss), cuda, proc.returncode, seconds


# ----------------------------------------------------------------------------- generated data


def write_cifar(folder: Path, n_train: int, hundred: bool) -> Path:
    """CIFAR-10 (5 data batches + test batch) or CIFAR-100 (train + test) python pickles, random pixels."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    n_test = max(10, n_train // 5)
    if hundred:
        for name, n in (("train", n_train), ("test", n_test)):
            with open(folder / name, "wb") as fh:
                pickle.dump({b"fine_labels": rng.integers(0, 100, n).tolist(),
                             b"coarse_labels": rng.integers(0, 20, n).tolist(),
                             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}, fh)
        with open(folder / "meta", "wb") as fh:
            pickle.dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                         b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}, fh)
        return folder
    per = -(-n_train // 5)
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as fh:
            pickle.dump({b"labels": rng.integers(0, 10, per).tolist(),
                         b"data": rng.integers(0, 256, (per, 3072), dtype=np.uint8)}, fh)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"labels": rng.integers(0, 10, n_test).tolist(),
                     b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, fh)
    return folder


def write_image_folder(folder: Path, per_class: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(10):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"class{c}" / f"{i}.png")
    return folder


def write_csv(path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 20))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 1).astype(int)
    lines = [",".join([f"f{i}" for i in range(20)] + ["label"])]
    lines += [",".join([f"{v:.5f}" for v in row] + [str(label)]) for row, label in zip(x, y)]
    path.write_text("\n".join(lines) + "\n")
    return path


def preset_data(preset: str, tmp: Path, args: argparse.Namespace) -> list[str] | str:
    """The data overrides a preset needs, or why it is skipped."""
    if preset in MNIST_LIKE:
        if not Path(args.mnist).is_dir():
            return f"no MNIST folder at {args.mnist} (--mnist)"
        return [f"data.path={args.mnist}"]
    if preset in ("cifar10", "cifar100"):
        return [f"data.path={write_cifar(tmp / preset, args.cifar_n, preset == 'cifar100')}"]
    if preset == "folder":
        return [f"data.path={write_image_folder(tmp / 'images', args.folder_n)}"]
    if preset == "tabular":
        return [f"data.path={write_csv(tmp / 'table.csv')}", "data.label_column=label"]
    return []


def peak_memory(args: argparse.Namespace) -> None:
    mib = 1 << 20
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        floor_cmd = [sys.executable, "-c", "import torch, trainwell.cli.app"]
        floor, _, _, _ = measure(floor_cmd, tmp / "none.json")
        print(f"floor (python + torch + trainwell imported): {floor / mib:,.0f} MiB RSS")
        print(f"{'preset':<14} {'peak RSS MiB':>13} {'peak CUDA MiB':>14} {'seconds':>8}  settings")
        for preset in args.presets.split(","):
            data = preset_data(preset, tmp, args)
            if isinstance(data, str):
                print(f"{preset:<14} skipped: {data}")
                continue
            settings = [f"preset={preset}", *data, "train.epochs=1", "sched.warmup_epochs=0", f"data.per_class={args.per_class}",
                        "train.progress=false", "train.plots=false", f"train.device={args.device}",
                        *args.set]
            report = tmp / f"{preset}.json"
            command = [sys.executable, str(Path(__file__).resolve()), "--child", str(report), "train", *settings,
                       "--out", str(tmp / f"run-{preset}"), "--quiet"]
            rss, cuda, code, seconds = measure(command, report)
            cuda_text = "-" if cuda is None else f"{cuda / mib:,.0f}"
            shown = " ".join(s for s in settings if not s.startswith("data.path=")) + (" FAILED" if code else "")
            print(f"{preset:<14} {rss / mib:>13,.0f} {cuda_text:>14} {seconds:>8.1f}  {shown}")


# ----------------------------------------------------------------------------- throughput


def throughput(args: argparse.Namespace) -> None:
    import torch

    from common import interleaved  # bench/common.py (the script's folder is on sys.path)
    from trainwell.config import resolve
    from trainwell.data import load_splits
    from trainwell.train.build import build_classifier
    from trainwell.train.checkpoint import Checkpoints
    from trainwell.train.trainer import LoopSettings, build_state, fit, resolve_device

    device = resolve_device(args.device)
    if not Path(args.mnist).is_dir():
        print(f"throughput: skipped, no MNIST folder at {args.mnist} (--mnist)")
        return
    cfg = resolve(["preset=mnist", f"data.path={args.mnist}", f"data.per_class={args.ab_per_class}",
                   f"train.epochs={args.ab_epochs}", "data.val_fraction=0", "train.progress=false", *args.set])
    in_ram = load_splits(cfg.data)
    with tempfile.TemporaryDirectory() as folder:
        # The same training examples in an uncompressed .npz: the training split is the whole mapped
        # array (val_fraction=0, its own test split), so the loop reads each batch from the mapping.
        npz = Path(folder) / "train.npz"
        np.savez(npz, x=in_ram.train.x.numpy(), y=in_ram.train.y.numpy(),
                 x_test=in_ram.test.x[:64].numpy(), y_test=in_ram.test.y[:64].numpy())
        npz_cfg = resolve(["preset=mnist", "data.name=npz", f"data.path={npz}", f"train.epochs={args.ab_epochs}",
                           "data.val_fraction=0", "train.progress=false", *args.set])
        mapped = load_splits(npz_cfg.data)
        assert mapped.train.mapped and len(mapped.train) == len(in_ram.train)
        peaks: dict[str, int] = {}

        def run(splits, setting, name: str) -> float:
            model = build_classifier(cfg, splits)
            state = build_state(model, cfg, len(splits.train), device)
            settings = dataclasses.replace(LoopSettings.from_config(cfg, splits.num_classes), data_on_device=setting)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            result = fit(state, splits.train, splits.val, settings, checkpoints=Checkpoints(None))
            if device.type == "cuda":
                peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated(device))
            assert result.data_on_device is setting
            return result.train_seconds

        times = interleaved(lambda: run(in_ram, True, "true"), lambda: run(in_ram, False, "false"),
                            lambda: run(mapped, False, "false, memmap"), rounds=args.rounds)
    n = len(in_ram.train) * args.ab_epochs
    print(f"\nthroughput, preset=mnist's model on {len(in_ram.train):,} MNIST examples x {args.ab_epochs} epoch(s), "
          f"{device}, torch {torch.__version__}, threads {torch.get_num_threads()}, median of {args.rounds}:")
    print(f"{'data_on_device':<16} {'train s':>8} {'ex/s':>9} {'ratio':>6}" + ("  peak CUDA MiB" if peaks else ""))
    for name, seconds in zip(("true", "false", "false, memmap"), times):
        cuda = f"  {peaks[name] / (1 << 20):>13,.0f}" if peaks else ""
        print(f"{name:<16} {seconds:>8.2f} {n / seconds:>9,.0f} {seconds / times[0]:>6.3f}{cuda}")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(_child(sys.argv[2], sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--per-class", type=int, default=20, help="data.per_class of the peak-memory runs")
    parser.add_argument("--mnist", default="/work/shared/data/mnist-train")
    parser.add_argument("--cifar-n", type=int, default=50_000, help="CIFAR training images generated (real: 50,000)")
    parser.add_argument("--folder-n", type=int, default=50, help="images per class of the generated folder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-ab", action="store_true", help="skip the throughput comparison")
    parser.add_argument("--ab-per-class", type=int, default=1000, help="data.per_class of the throughput runs")
    parser.add_argument("--ab-epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], help="more KEY=VALUE settings for every run")
    args = parser.parse_args()
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    if args.presets:
        peak_memory(args)
    if not args.no_ab:
        throughput(args)


if __name__ == "__main__":
    main()
