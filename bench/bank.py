"""HNSW against exact search on random clustered keys (DESIGN section 8; issue: build-bank).

For each bank size and key dim: the build time of the bank's hnswlib index, queries per second of
HNSW and of exact search (the bank's batched matrix product), their ratio, and HNSW's recall@10
against exact search, for a few query beams. Everything goes through ``r2scp_cli.bank``'s own
``build_index`` and ``Searcher``, single-threaded by default so the ratio compares like with like.
Goal at 10^6 keys: recall@10 >= 0.95 at >= 20x the exact throughput.

    python bench/bank.py [--sizes 10000,100000] [--dims 512,1024] [--million] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys


def _pin_blas_threads(argv: list[str]) -> None:
    """Exact search runs in BLAS: give it the same thread count as HNSW, before numpy loads."""
    threads = "1"
    if "--threads" in argv:
        threads = argv[argv.index("--threads") + 1]
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, threads)


_pin_blas_threads(sys.argv)

import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from r2scp_cli.config import BankConfig  # noqa: E402
from r2scp_cli.retrieval.search import Searcher, build_index  # noqa: E402

K = 10


def clustered_keys(n: int, dim: int, rng: np.random.Generator, spread: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit keys around sqrt(n) random centres, and 1,000 queries from the same clusters."""
    centres = rng.standard_normal((max(2, int(np.sqrt(n))), dim), np.float32)
    def draw(count: int) -> np.ndarray:
        points = centres[rng.integers(len(centres), size=count)]
        points += spread * rng.standard_normal((count, dim), np.float32)
        return points / np.linalg.norm(points, axis=1, keepdims=True)
    return draw(n), draw(1000)


def measure(n: int, dim: int, efs: list[int], args: argparse.Namespace) -> list[dict]:
    rng = np.random.default_rng(0)
    keys, queries = clustered_keys(n, dim, rng)
    config = BankConfig(Path("-"), Path("-"), M=args.M, ef_construction=args.ef_construction, threads=args.threads)
    started = time.perf_counter()
    index = build_index(keys, config)
    build = time.perf_counter() - started
    ids = [f"query{i}" for i in range(len(queries))]  # not bank videos: nothing to exclude
    searcher = Searcher(keys, {}, index, threads=args.threads)
    started = time.perf_counter()
    truth, _ = searcher.exact(queries, ids, K)
    exact_qps = len(queries) / (time.perf_counter() - started)
    rows = []
    for ef in efs:
        searcher.ef = ef
        started = time.perf_counter()
        found, _ = searcher.hnsw(queries, ids, K)
        hnsw_qps = len(queries) / (time.perf_counter() - started)
        recall = np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(found, truth)])
        rows.append({
            "n": n, "dim": dim, "build_s": build, "ef": ef, "hnsw_qps": hnsw_qps, "exact_qps": exact_qps,
            "speedup": hnsw_qps / exact_qps, "recall": recall,
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated bank sizes")
    parser.add_argument("--dims", default="512,1024", help="comma-separated key dims")
    parser.add_argument("--million", action="store_true", help="add 10^6 keys (long: build minutes per dim)")
    parser.add_argument("--ef", default="64,128,256", help="comma-separated query beams")
    parser.add_argument("--M", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="HNSW build/query and BLAS threads")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] + ([1_000_000] if args.million else [])
    dims = [int(d) for d in args.dims.split(",")]
    efs = [int(e) for e in args.ef.split(",")]
    print(f"M {args.M}, ef_construction {args.ef_construction}, threads {args.threads}, 1000 queries, k={K}")
    print(f"{'keys':>9} {'dim':>5} {'build s':>8} {'ef':>4} {'HNSW q/s':>9} {'exact q/s':>9} {'HNSW/exact':>10} {'recall@10':>9}")
    for n in sizes:
        for dim in dims:
            for row in measure(n, dim, efs, args):
                print(
                    f"{row['n']:>9} {row['dim']:>5} {row['build_s']:>8.1f} {row['ef']:>4} {row['hnsw_qps']:>9.0f} "
                    f"{row['exact_qps']:>9.0f} {row['speedup']:>9.1f}x {row['recall']:>9.3f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
