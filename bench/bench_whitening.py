"""PCA / ZCA fitting: trainwell's preprocessors against scikit-learn's PCA, side by side in one run.

Data: 50,000 x 784 float32 (MNIST-sized), low-rank signal + noise, generated from a seed. Each
method is fitted ``--rounds`` times, interleaved (A B C A B C ...) so machine noise hits all alike;
the median wall-clock and CPU seconds (all threads; steadier than wall time on a shared machine),
their ratios to ours and the max abs difference of the transformed outputs (first ``--check`` rows)
are printed. Every library gets the same number of threads (``--threads``).

    python bench/bench_whitening.py                    # 50000 x 784, k = 50, 3 rounds, 2 threads
    python bench/bench_whitening.py --rounds 1 --n 20000

scikit-learn has no ZCA: "sklearn ZCA" is PCA(all components) followed by W = Vᵀ diag(1/sqrt(λ+eps)) V,
the same formula as ours, so its time is sklearn's eigendecomposition plus one d x d product.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import sklearn
import torch
from sklearn.decomposition import PCA as SkPCA
from threadpoolctl import threadpool_limits

from trainwell.config import DataConfig
from trainwell.data import fit_preprocess


def make_data(n: int, d: int, rank: int, seed: int) -> np.ndarray:
    """Correlated float32 data: ``rank`` latent factors with decaying scales, plus noise and an offset."""
    g = np.random.default_rng(seed)
    mix = g.standard_normal((rank, d)) * np.linspace(3.0, 0.3, rank)[:, None] / np.sqrt(rank)
    x = g.standard_normal((n, rank)) @ mix + 0.1 * g.standard_normal((n, d)) + g.uniform(0, 1, d)
    return x.astype(np.float32)


def sklearn_zca(x: np.ndarray, eps_rel: float, solver: str):
    pca = SkPCA(n_components=None, svd_solver=solver).fit(x)
    lam = pca.explained_variance_.astype(np.float64)
    v = pca.components_.astype(np.float64)
    # sklearn's full SVD returns min(n, d) = d components here, so lam holds all d eigenvalues.
    w = (v.T * (1.0 / np.sqrt(lam + eps_rel * lam.sum() / x.shape[1]))) @ v
    return pca.mean_, w.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=784)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--k", type=int, default=50, help="PCA components (within the signal's rank)")
    parser.add_argument("--eps", type=float, default=1e-2, help="whiten_eps (relative to the mean eigenvalue)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--check", type=int, default=5000, help="rows compared for the max abs difference")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    x_np = make_data(args.n, args.d, args.rank, args.seed)
    x = torch.from_numpy(x_np)
    xc = x_np[: args.check]
    solvers = ["full"] + (["covariance_eigh"] if "covariance_eigh" in SkPCA._parameter_constraints["svd_solver"][0].options else [])
    print(f"data {args.n} x {args.d} float32 (rank {args.rank} + noise), k={args.k}, whiten_eps={args.eps}, "
          f"{args.threads} threads, {args.rounds} rounds; torch {torch.__version__}, scikit-learn {sklearn.__version__}")

    # Fitting pca and pca_whiten is the same computation (the whitening is k divisions), so the
    # whitened case stands for both. sklearn's covariance_eigh works in the input's dtype: float32
    # here (its default for float32 data: "auto" picks it at this shape), and float64 on a copy.
    pca_cfg = DataConfig(pca_components=args.k, whiten_eps=0.0)
    zca_cfg = DataConfig(whiten_eps=args.eps)
    # The float64 copy is made inside the timed fit: a caller would have to make it.
    inputs = {"": lambda: x_np, " (float64 copy)": lambda: x_np.astype(np.float64)}

    def ours(name: str, cfg: DataConfig):
        def run():
            pre = fit_preprocess(name, x, cfg)
            return lambda: pre(torch.from_numpy(xc)).double().numpy()
        return run

    def sk_pca(solver: str, data: np.ndarray):
        def run():
            pca = SkPCA(n_components=args.k, whiten=True, svd_solver=solver).fit(data())
            return lambda: pca.transform(xc).astype(np.float64)
        return run

    def sk_zca(solver: str, data: np.ndarray):
        def run():
            mean, w = sklearn_zca(data(), args.eps, solver)
            return lambda: ((xc - mean) @ w).astype(np.float64)
        return run

    cases: dict[str, dict[str, object]] = {
        f"PCA-whiten, k={args.k} (pca_whiten, whiten_eps=0)": {"trainwell pca_whiten": ours("pca_whiten", pca_cfg)},
        f"ZCA, whiten_eps={args.eps}": {"trainwell zca": ours("zca", zca_cfg)},
    }
    pca_case, zca_case = cases
    for solver in solvers:
        for suffix, data in inputs.items():
            if solver == "full" and suffix:
                continue  # full SVD of float32 data is already accurate; float64 only doubles its time
            cases[pca_case][f"sklearn PCA {solver}{suffix}"] = sk_pca(solver, data)
            if solver != "full":  # full's SVD is the PCA row's (its time dominates): skipped to keep the run short
                cases[zca_case][f"sklearn PCA {solver}{suffix} + W"] = sk_zca(solver, data)
    if args.d <= 1000 and args.n >= 10 * args.d:
        print("sklearn svd_solver='auto' is 'covariance_eigh' at this shape (d <= 1000, n >= 10 d): timed as such")

    with threadpool_limits(limits=args.threads):
        # Warm-up, untimed: the first call of each library pays for thread pools and allocator set-up.
        warm = torch.from_numpy(x_np[:5000])
        fit_preprocess("zca", warm, zca_cfg)
        for solver in solvers:
            SkPCA(n_components=args.k, svd_solver=solver).fit(x_np[:5000])
        for case, methods in cases.items():
            times: dict[str, list[float]] = {m: [] for m in methods}
            cpu: dict[str, list[float]] = {m: [] for m in methods}
            outputs: dict[str, np.ndarray] = {}
            for _ in range(args.rounds):
                for method, fit in methods.items():
                    t0, c0 = time.perf_counter(), time.process_time()
                    transform = fit()
                    times[method].append(time.perf_counter() - t0)
                    cpu[method].append(time.process_time() - c0)
                    outputs[method] = transform()
            ref_name = next(iter(methods))
            ref, ref_cpu = statistics.median(times[ref_name]), statistics.median(cpu[ref_name])
            print(f"\n{case}")
            print(f"  {'method':46s} {'wall s':>8s} {'/ ours':>7s} {'CPU s':>8s} {'/ ours':>7s} {'max|diff| vs ours':>18s}")
            for method in methods:
                t, c = statistics.median(times[method]), statistics.median(cpu[method])
                diff = float(np.abs(outputs[method] - outputs[ref_name]).max())
                print(f"  {method:46s} {t:8.3f} {t / ref:7.2f} {c:8.3f} {c / ref_cpu:7.2f} {diff:18.2e}")


if __name__ == "__main__":
    main()
