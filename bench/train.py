"""Training and evaluation throughput on 2 CPU cores: samples/s of stage 1 and stage 2 per recovery
method, the share of stage-1 time spent in recovery (CMR/CAP/generation, gathering included), eval
samples/s, and peak memory.

Usage: python bench/train.py [DEMO_DIR]   (default runs/demo; runs `r2scp demo --quick` data if absent)
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from r2scp_cli import extract
from r2scp_cli.batches import limit_cpu_threads, make_batch, predict
from r2scp_cli.config import RECOVERY_METHODS, BankConfig, ExtractConfig, SynthConfig, TrainExpertsConfig, keep_freed_memory
from r2scp_cli.model import R2ScP
from r2scp_cli.retrieval import bank as bank_stage
from r2scp_cli.synth import dataset as synth
from r2scp_cli.train import (
    fit_cap_priors,
    fit_input_statistics,
    model_config_for,
    open_data,
    simulate_missing,
    stage_one_loss,
)

BATCHES = 20


def prepare(root: Path) -> tuple[Path, Path]:
    data = synth.run(SynthConfig(root / "data", videos=150, size=64))
    features = extract.run(ExtractConfig(data, root / "features-handcrafted.h5"))
    bank = bank_stage.run(BankConfig(features, root / "bank-handcrafted", check_recall=200))
    return features, bank


def bench_method(recovery: str, features: Path, bank_dir: Path) -> dict:
    config = TrainExpertsConfig(features, bank_dir, Path("/tmp/unused"), recovery=recovery, d_model=96)
    data = open_data(features, bank_dir)
    torch.manual_seed(0)
    model = R2ScP(model_config_for(data.store, config, len(set(data.splits["train"].video_ids))))
    fit_input_statistics(model, data)
    if recovery == "cap":
        fit_cap_priors(model, data, 0)
    recover_seconds = 0.0
    original = model.recover

    def timed_recover(*args, **kwargs):
        nonlocal recover_seconds
        start = time.perf_counter()
        result = original(*args, **kwargs)
        recover_seconds += time.perf_counter() - start
        return result

    model.recover = timed_recover
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    split, rng = data.splits["train"], np.random.default_rng(0)
    gather_seconds, samples = 0.0, 0
    start = time.perf_counter()
    for _ in range(BATCHES):
        idx = rng.choice(len(split), 64, replace=False)
        t0 = time.perf_counter()
        batch = make_batch(split, idx, simulate_missing(64, 0.5, rng), data.videos, model.cfg,
                           data.bank.neighbours, data.bank, training=True)  # fmt: skip
        gather_seconds += time.perf_counter() - t0
        loss = stage_one_loss(model, batch, model(batch, route=False), 0.1, 0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        samples += len(idx)
    stage_one = time.perf_counter() - start
    model.recover = original
    for p in model.stage_one_parameters():
        p.requires_grad_(False)
    params = [p for m in model.stage_two_modules() for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    start = time.perf_counter()
    for _ in range(BATCHES):
        idx = rng.choice(len(split), 64, replace=False)
        batch = make_batch(split, idx, simulate_missing(64, 0.5, rng), data.videos, model.cfg,
                           data.bank.neighbours, data.bank, training=False)  # fmt: skip
        loss = torch.nn.functional.cross_entropy(model(batch)["logits"], batch["answer"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    stage_two = time.perf_counter() - start
    val = data.splits["val"]
    start = time.perf_counter()
    predict(model, val, "visual", data.videos, data.bank.neighbours, data.bank, 256, "cpu")
    evaluation = time.perf_counter() - start
    return {
        "stage1_samples_s": samples / stage_one,
        "stage2_samples_s": samples / stage_two,
        "eval_samples_s": len(val) / evaluation,
        "recovery_share": (recover_seconds + gather_seconds) / stage_one,
    }


def main() -> None:
    keep_freed_memory()  # as every r2scp command does
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/bench-train")
    features, bank_dir = prepare(root)
    limit_cpu_threads("cpu")
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"{'recovery':<11} {'stage1 samples/s':>17} {'stage2 samples/s':>17} {'eval samples/s':>15} {'recovery share':>15}")
    for recovery in RECOVERY_METHODS:
        r = bench_method(recovery, features, bank_dir)
        print(f"{recovery:<11} {r['stage1_samples_s']:>17.0f} {r['stage2_samples_s']:>17.0f} "
              f"{r['eval_samples_s']:>15.0f} {100 * r['recovery_share']:>14.1f}%")  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
