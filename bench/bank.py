"""HNSW against exact search on random clustered keys (DESIGN section 8; issue: build-bank).

For each bank size and key dim: the build time of the bank's hnswlib index, queries per second of
HNSW and of exact search (the bank's batched matrix product), their ratio, and HNSW's recall@10
against exact search, for a few query beams. Everything goes through ``r2scp_cli.retrieval``'s own
``build_index``, ``Searcher`` and ``memory_figures``, single-threaded by default so the ratio compares
like with like. Goal at 10^6 keys: recall@10 >= 0.95 at >= 20x the exact throughput.

``--defaults`` measures what `build-bank` builds with its default settings: the key dim of the `bind`
space, M and ef_construction of BankConfig, the beam of ``ef_for`` (``--ef 0``), float32 and float16
keys (float16: stored in half precision, searched on their float32 values), and the bytes per entry of
one index plus its keys (a `bind` bank holds one such index per fold and target modality).

    python bench/bank.py [--sizes 10000,100000] [--dims 512,1024] [--million] [--threads 1]
    python bench/bank.py --defaults --sizes 200000,1000000
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

import dataclasses  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from r2scp_cli.config import BankConfig, Modality, keep_freed_memory  # noqa: E402
from r2scp_cli.retrieval.bank import index_file, memory_figures  # noqa: E402
from r2scp_cli.retrieval.binder import BinderConfig  # noqa: E402
from r2scp_cli.retrieval.search import Searcher, build_index, ef_for  # noqa: E402

BANK_DEFAULTS = {f.name: f.default for f in dataclasses.fields(BankConfig) if f.default is not dataclasses.MISSING}

K = 10


def clustered_keys(n: int, dim: int, rng: np.random.Generator, spread: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit keys around sqrt(n) random centres, and 1,000 queries from the same clusters."""
    centres = rng.standard_normal((max(2, int(np.sqrt(n))), dim), np.float32)
    def draw(count: int) -> np.ndarray:
        points = centres[rng.integers(len(centres), size=count)]
        points += spread * rng.standard_normal((count, dim), np.float32)
        return points / np.linalg.norm(points, axis=1, keepdims=True)
    return draw(n), draw(1000)


def measure(n: int, dim: int, efs: list[int], args: argparse.Namespace, key_dtype: str = "float32") -> list[dict]:
    rng = np.random.default_rng(0)
    keys, queries = clustered_keys(n, dim, rng)
    stored = keys.astype(key_dtype)  # as build-bank stores them; index and exact search see their float32 values
    truth32 = None
    if key_dtype != "float32":  # how much half precision alone moves the exact top-10
        truth32, _ = Searcher(keys, {}).exact(queries, [f"query{i}" for i in range(len(queries))], K)
    keys = stored.astype(np.float32)
    config = BankConfig(Path("-"), Path("-"), M=args.M, ef_construction=args.ef_construction, threads=args.threads)
    started, cpu = time.perf_counter(), time.process_time()
    index = build_index(keys, config)
    build, build_cpu = time.perf_counter() - started, time.process_time() - cpu
    with tempfile.TemporaryDirectory() as out:
        index.save_index(str(Path(out) / index_file(Modality.AUDIO, 0)))
        memory = memory_figures(Path(out), {Modality.AUDIO: stored}, n)
    ids = [f"query{i}" for i in range(len(queries))]  # not bank videos: nothing to exclude
    searcher = Searcher(keys, {}, index, threads=args.threads)
    started, cpu = time.perf_counter(), time.process_time()
    truth, _ = searcher.exact(queries, ids, K)
    exact_qps, exact_cpu = len(queries) / (time.perf_counter() - started), time.process_time() - cpu
    half = None if truth32 is None else np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(truth, truth32)])
    rows = []
    for ef in efs or [ef_for(n)]:
        searcher.ef = ef
        started, cpu = time.perf_counter(), time.process_time()
        found, _ = searcher.hnsw(queries, ids, K)
        hnsw_qps, hnsw_cpu = len(queries) / (time.perf_counter() - started), time.process_time() - cpu
        recall = np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(found, truth)])
        rows.append({
            "n": n, "dim": dim, "dtype": key_dtype, "build_s": build, "ef": ef, "hnsw_qps": hnsw_qps,
            "exact_qps": exact_qps, "speedup": hnsw_qps / exact_qps, "recall": recall, "exact16_vs_32": half, **memory,
            "build_cpu": build_cpu, "cpu_speedup": exact_cpu / max(hnsw_cpu, 1e-9),
        })  # fmt: skip
    return rows


def print_defaults(sizes: list[int], args: argparse.Namespace) -> None:
    """build-bank's default settings: bind key dim, ef_for's beam, float32 and float16 keys, memory."""
    dim = BinderConfig().dim
    print(f"build-bank defaults: bind key dim {dim}, M {args.M}, ef_construction {args.ef_construction}, "
          f"ef = ef_for(keys), threads {args.threads}, 1000 queries, k={K}; load {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'keys':>9} {'dtype':>7} {'build s':>8} {'CPU s':>7} {'ef':>4} {'HNSW q/s':>9} {'exact q/s':>9} {'HNSW/exact':>10} {'(CPU)':>7} "
          f"{'recall@10':>9} {'index MiB':>9} {'keys MiB':>8} {'B/entry':>7} {'fp16 exact@10':>13}")  # fmt: skip
    for n in sizes:
        for key_dtype in ("float32", "float16"):
            for row in measure(n, dim, [], args, key_dtype):
                half = "-" if row["exact16_vs_32"] is None else f"{row['exact16_vs_32']:.3f}"
                print(
                    f"{row['n']:>9} {row['dtype']:>7} {row['build_s']:>8.1f} {row['build_cpu']:>7.1f} {row['ef']:>4} "
                    f"{row['hnsw_qps']:>9.0f} {row['exact_qps']:>9.0f} {row['speedup']:>9.1f}x {row['cpu_speedup']:>6.1f}x {row['recall']:>9.3f} "
                    f"{row['index_bytes'] / 2**20:>9.1f} {row['key_bytes'] / 2**20:>8.1f} {row['bytes_per_entry']:>7.0f} {half:>13}",
                    flush=True,
                )
    print(f"load average at the end {os.getloadavg()[0]:.1f}. CPU s: CPU time of this process (contention does not inflate it); "
          "(CPU): the HNSW/exact ratio of CPU times.")  # fmt: skip
    print("B/entry: one HNSW index plus its stored keys per entry (build-bank's memory figure); a `bind` bank holds "
          f"{BinderConfig().folds} folds x 2 target modalities of them. fp16 exact@10: overlap of the exact top-10 "
          "over float16 keys with the exact top-10 over the float32 keys.")  # fmt: skip


def main() -> None:
    keep_freed_memory()  # as every r2scp command does
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated bank sizes")
    parser.add_argument("--dims", default="512,1024", help="comma-separated key dims")
    parser.add_argument("--million", action="store_true", help="add 10^6 keys (long: build minutes per dim)")
    parser.add_argument("--ef", default="64,128,256", help="comma-separated query beams")
    parser.add_argument("--M", type=int, default=BANK_DEFAULTS["M"])
    parser.add_argument("--ef-construction", type=int, default=BANK_DEFAULTS["ef_construction"])
    parser.add_argument("--threads", type=int, default=BANK_DEFAULTS["threads"], help="HNSW build/query and BLAS threads")
    parser.add_argument("--defaults", action="store_true", help="build-bank's defaults: bind key dim, ef_for, float32 and float16 keys")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] + ([1_000_000] if args.million else [])
    if args.defaults:
        print_defaults(sizes, args)
        return
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
