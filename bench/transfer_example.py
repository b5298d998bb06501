r"""Transfer learning, offline: pretrain on classes 0-4, fine-tune on 5-9 with few labels, against scratch.

For each seed: pretrain once on classes 0-4 (``trainwell train data.classes=[0,1,2,3,4]``), then for
each labels-per-class count and each strategy fine-tune on classes 5-9 (relabelled 0..4) with
``data.per_class=N`` (the same N training examples per class for every seed and strategy), and train
the same fine-tuning config from scratch once per seed x per-class count (what ``--compare-scratch``
trains; the first strategy's run does it, the others reuse it). Prints per per-class count and
strategy: fine-tuned and scratch test accuracy (mean ± sd over seeds), the gain (mean ± sd, min..max,
seeds with a positive gain) and the paired t-test p of fine-tuned vs scratch; writes the table to
OUT/table.json. Resumable: a run folder that has summary.json is read, not retrained.

    python bench/transfer_example.py train.batch_size=16             # digits, 3 seeds, 10,50/class: 3 min
    python bench/transfer_example.py --out runs/transfer-digits-bs64  # batch 64: 1 step/epoch at 10/class
    python bench/transfer_example.py --data mnist1d --ft train.batch_size=16 \
        --strategies gradual,full,discriminative,linear_probe         # preset mnist1d: 4 min
    python bench/transfer_example.py --data mnist1d --ft train.batch_size=16 optim.lr=0.01 \
        --strategies gradual,full,discriminative,linear_probe --out runs/transfer-mnist1d-lr0.01

``key=value`` overrides go to both pretraining and fine-tuning (and scratch); ``--pre key=value ...``
to pretraining only, ``--ft key=value ...`` to fine-tuning and scratch only (these two take every
key=value after them: put the shared ones first). --data mnist1d is preset=mnist1d as the transfer lab pins it (40 epochs,
batch 64, ~20 s per pretraining on one core). Results: docs/after-training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from trainwell.experiments.labs.transfer import MEASURED_WITH

DATA = {"digits": ["data.name=digits"], "mnist1d": ["preset=mnist1d", *MEASURED_WITH]}  # (the recipe it was measured with)
OLD, NEW = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides for pretraining and fine-tuning, e.g. train.batch_size=16")
    parser.add_argument("--data", choices=sorted(DATA), default="digits")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--per-class", default="10,50", help="labels per class of the new classes (default 10,50)")
    parser.add_argument("--strategies", default="gradual,full",
                        help="finetune.strategy values, comma-separated (gradual,full,discriminative,linear_probe)")
    parser.add_argument("--pre", nargs="+", action="extend", default=[], metavar="key=value",
                        help="overrides for pretraining only, e.g. train.epochs=15")
    parser.add_argument("--ft", nargs="+", action="extend", default=[], metavar="key=value",
                        help="overrides for fine-tuning and scratch only")
    parser.add_argument("--out", default=None, help="output folder (default runs/transfer-<data>)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    args.per_class = [int(n) for n in args.per_class.split(",")]
    args.strategies = args.strategies.split(",")
    args.out = Path(args.out or f"runs/transfer-{args.data}")
    return args


def summary_of(folder: Path) -> dict | None:
    file = folder / "summary.json"
    return json.loads(file.read_text()) if file.is_file() else None


def describe(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else float("nan"),
            "min": min(values), "max": max(values), "values": values}


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    import trainwell
    from trainwell.experiments.stats import paired_test
    from trainwell.runs.finetune import STRATEGIES, finetune

    bad = [s for s in args.strategies if s not in STRATEGIES]
    if bad:
        sys.exit(f"unknown strategy {bad[0]!r}; choose from {', '.join(STRATEGIES)}")
    common = DATA[args.data] + list(args.overrides) + ["train.progress=false"]
    print(f"{args.data}: seeds 0..{args.seeds - 1}, per class {args.per_class}, strategies {args.strategies}, "
          f"overrides {args.overrides} pre {args.pre} ft {args.ft}, torch threads {torch.get_num_threads()} "
          f"-> {args.out}", flush=True)
    t_start = time.perf_counter()
    # results[(per_class, strategy)] = {seed: (finetuned acc, scratch acc)}
    results: dict[tuple[int, str], dict[int, tuple[float, float]]] = {}
    pretrain_accs = []
    for seed in range(args.seeds):
        pre_dir = args.out / f"seed-{seed}" / "pretrain"
        pre = summary_of(pre_dir)
        if pre is None:
            t0 = time.perf_counter()
            overrides = common + args.pre + [f"data.classes={','.join(map(str, OLD))}", f"train.seed={seed}"]
            pre = trainwell.train(overrides=overrides, out=pre_dir, overwrite=True, quiet=True).summary
            print(f"seed {seed} pretrain (classes 0-4): test {100 * pre['test_acc']:.2f}% "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        pretrain_accs.append(pre["test_acc"])
        for n in args.per_class:
            scratch = None  # the scratch accuracy of this seed x per-class, from the first strategy that has it
            for strategy in args.strategies:
                ft_dir = args.out / f"seed-{seed}" / f"pc-{n}" / strategy
                summary = summary_of(ft_dir)
                if summary is not None and scratch is None and "scratch_test_acc" not in summary:
                    summary = None  # finished without the scratch run that this one has to provide: redo
                if summary is None:
                    t0 = time.perf_counter()
                    overrides = common + args.ft + [f"data.classes={','.join(map(str, NEW))}", f"data.per_class={n}",
                                                    f"train.seed={seed}", f"finetune.strategy={strategy}"]
                    summary = finetune(pre_dir, overrides, out=ft_dir, overwrite=True, quiet=True,
                                       compare_scratch=scratch is None).summary
                    took = f"({time.perf_counter() - t0:.0f} s)"
                else:
                    took = "(read)"
                if scratch is None:
                    scratch = summary["scratch_test_acc"]
                results.setdefault((n, strategy), {})[seed] = (summary["test_acc"], scratch)
                print(f"seed {seed} {n}/class {strategy:<14} test {100 * summary['test_acc']:.2f}% "
                      f"scratch {100 * scratch:.2f}% gain {100 * (summary['test_acc'] - scratch):+.2f} {took}",
                      flush=True)

    rows = []
    for (n, strategy), by_seed in results.items():
        ft = {s: 100 * a for s, (a, _) in by_seed.items()}
        sc = {s: 100 * b for s, (_, b) in by_seed.items()}
        gains = [ft[s] - sc[s] for s in sorted(by_seed)]
        test = paired_test(ft, sc)
        rows.append({"per_class": n, "strategy": strategy, "seeds": sorted(by_seed),
                     "finetuned": describe([ft[s] for s in sorted(by_seed)]),
                     "scratch": describe([sc[s] for s in sorted(by_seed)]),
                     "gain": describe(gains), "positive": sum(g > 0 for g in gains), "p": test.p})
    minutes = (time.perf_counter() - t_start) / 60
    print()
    print(f"{args.data}, test accuracy % on classes 5-9 (n seeds = {args.seeds}); pretrained on 0-4: "
          f"{100 * statistics.fmean(pretrain_accs):.2f}% mean test; {minutes:.1f} min")
    head = (f"{'per class':>9} {'strategy':<14} {'fine-tuned':>13} {'scratch':>13} {'gain (pp)':>13} "
            f"{'min..max':>15} {'>0':>5} {'p':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        f, s, g = r["finetuned"], r["scratch"], r["gain"]
        print(f"{r['per_class']:>9} {r['strategy']:<14} {f['mean']:>6.2f} ± {f['sd']:<4.2f} "
              f"{s['mean']:>6.2f} ± {s['sd']:<4.2f} {g['mean']:>+6.2f} ± {g['sd']:<4.2f} "
              f"{g['min']:>+6.2f}..{g['max']:<+6.2f} {r['positive']:>2}/{len(r['seeds'])} {r['p']:>6.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    table = {"data": args.data, "seeds": args.seeds, "per_class": args.per_class, "strategies": args.strategies,
             "overrides": args.overrides, "pre": args.pre, "ft": args.ft, "pretrain_test_acc": pretrain_accs,
             "minutes": minutes, "rows": rows}
    (args.out / "table.json").write_text(json.dumps(table, indent=2) + "\n")
    print(f"-> {args.out / 'table.json'}")


if __name__ == "__main__":
    main()
