"""Training under torchrun (DESIGN section 10): two CPU processes (gloo) train what one process trains on
the same global batch; rank 0 alone writes and prints; a global batch that does not split is one line.

The two-process runs go through the real launcher (``python -m torch.distributed.run --standalone``)
and the real command line. Both sides run with dropout 0 (a launcher script patches the model config):
each rank draws its own dropout masks, which no split of a batch can make equal to one process's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from r2scp_cli import artifacts, distributed, train
from r2scp_cli.cli import app
from r2scp_cli.config import BankConfig, TrainExpertsConfig, TrainRouterConfig
from r2scp_cli.console import console
from r2scp_cli.retrieval import bank as bank_stage

# 45 training questions: stage 1's batches of 16 end with 13 rows (7 and 6 per rank); stage 2's batches
# of 22 end with one row, so one rank has none (it joins the all-reduce with weight 0).
STAGE_ONE = dict(epochs=2, d_model=32, batch_size=16, n=3)
STAGE_TWO = dict(epochs=2, batch_size=22)

# Measured on this tiny run (2 epochs), one process against two:
# - stage 2 (cross-entropy only): per-epoch loss within 1.0e-7 relative, the same val accuracies,
#   weights within 4e-9 (relative L2): the split of the global batch is exact up to float rounding
#   (stage 1 with --lambda-rank 0 too: loss within 4e-8);
# - stage 1 (cross-entropy + 0.1 x ranking loss): loss within 3.1e-4 relative, weights within 2.3e-3,
#   val accuracies at most one of the 60 questions apart. The ranking loss averages over the rows a
#   rank recovers, so two ranks weigh those rows a little differently than one process does (DDP
#   averages the ranks' means).
# The bounds leave a margin of about 10x over these figures.
STAGE_TWO_LOSS, STAGE_TWO_WEIGHTS = 1e-6, 1e-7
STAGE_ONE_LOSS, STAGE_ONE_WEIGHTS = 3e-3, 2e-2

LAUNCHER = """
import dataclasses
from r2scp_cli import train
from r2scp_cli.cli import app

model_config_for = train.model_config_for
train.model_config_for = lambda *args: dataclasses.replace(model_config_for(*args), dropout=0.0)
app(prog_name="r2scp")
"""


@contextmanager
def like_a_rank():
    """A single-process run made in this process as the launched ranks run: the launcher's dropout 0,
    and the CPU threads of one of two processes (float sums then run in the same order)."""
    model_config_for, limit_cpu_threads = train.model_config_for, train.limit_cpu_threads
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "model_config_for", lambda *args: dataclasses.replace(model_config_for(*args), dropout=0.0))
        patch.setattr(train, "limit_cpu_threads", lambda device, processes: limit_cpu_threads(device, 2))
        yield


def torchrun(launcher: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(launcher), *args]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def weight_distance(a: Path, b: Path) -> float:
    """|a - b| / |a| over every tensor of the last state (L2)."""
    sa = torch.load(a / "checkpoint.pt", weights_only=False)["state"]
    sb = torch.load(b / "checkpoint.pt", weights_only=False)["state"]
    assert sa.keys() == sb.keys()
    num = sum(((sa[k].double() - sb[k].double()) ** 2).sum().item() for k in sa)
    return math.sqrt(num / sum((sa[k].double() ** 2).sum().item() for k in sa))


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(a)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from conftest import make_features

    root = tmp_path_factory.mktemp("distributed")
    features = make_features(root / "features.h5", n_videos=41, segments=4, questions_per_video=4)
    bank = bank_stage.run(BankConfig(features, root / "bank", keys="paired", neighbours=6, exact=True, check_recall=0))
    launcher = root / "launch.py"
    launcher.write_text(LAUNCHER)
    with like_a_rank():
        experts = train.run_experts(TrainExpertsConfig(features, bank, root / "experts-1", **STAGE_ONE))
    return root, features, bank, launcher, experts


def test_two_processes_train_the_experts_one_process_trains(world):
    root, features, bank, launcher, one = world
    two = root / "experts-2"
    result = torchrun(launcher, "train-experts", str(features), "--bank", str(bank), "--out", str(two),
                      "--epochs", "2", "--d-model", "32", "--batch-size", "16", "--candidates", "3")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(log(one)) == len(log(two)) == 2  # rank 0 alone appended to the log
    for a, b in zip(log(one), log(two)):
        assert relative(a["loss"], b["loss"]) < STAGE_ONE_LOSS, (a, b)
        for key in ("val_none", "val_audio", "val_visual"):  # measured: at most 1 of the 60 questions apart
            assert abs(a[key] - b[key]) <= 2 * 100 / 60 + 1e-9, key
    assert weight_distance(one, two) < STAGE_ONE_WEIGHTS
    meta = artifacts.read_json(two / "meta.json")
    assert meta["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert artifacts.read_json(one / "meta.json")["distributed"] == {"world_size": 1, "backend": None}
    assert meta["config"]["batch_size"] == 16  # the global batch
    assert result.stdout.count("stage 1 (cmr+cap): best val") == 1  # rank 1 printed nothing


def test_two_processes_train_the_router_one_process_trains(world, tmp_path):
    """Stage 2's loss is a plain cross-entropy: two processes match one up to float rounding, and the
    last batch of one row leaves a rank without rows."""
    root, features, bank, launcher, experts = world
    with like_a_rank():
        one = train.run_router(TrainRouterConfig(experts, tmp_path / "router-1", **STAGE_TWO))
    two = tmp_path / "router-2"
    result = torchrun(launcher, "train-router", str(experts), "--out", str(two), "--epochs", "2", "--batch-size", "22")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [entry["epoch"] for entry in log(two)] == [0, 1, 2]  # epoch 0: the untrained router, scored on val
    for a, b in zip(log(one), log(two)):
        if a["epoch"] > 0:
            assert relative(a["loss"], b["loss"]) < STAGE_TWO_LOSS, (a, b)
        for key in ("val_none", "val_audio", "val_visual", "val_selection"):
            assert a[key] == pytest.approx(b[key], abs=1e-9), key
    assert weight_distance(one, two) < STAGE_TWO_WEIGHTS
    assert artifacts.read_json(two / "meta.json")["distributed"] == {"world_size": 2, "backend": "gloo"}


@pytest.mark.parametrize("rank, printed", [("0", True), ("1", False)])
def test_a_global_batch_that_does_not_split_is_one_line(world, tmp_path, monkeypatch, rank, printed):
    root, features, bank, _, _ = world
    monkeypatch.setattr(console, "quiet", False)  # restored after the test: rank 1 silences the console
    for name, value in (("RANK", rank), ("WORLD_SIZE", "2"), ("LOCAL_RANK", rank)):
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["train-experts", str(features), "--bank", str(bank), "--out",
                                      str(tmp_path / "x"), "--batch-size", "15"])  # fmt: skip
    assert result.exit_code == 1
    if printed:
        assert "--batch-size 15 is the global batch" in result.output
        assert "use a multiple of 2, e.g. 14 or 16" in result.output
        assert len(result.output.strip().splitlines()) <= 3  # one message, wrapped
    else:
        assert result.output == ""
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 2, 13, 16])
def test_ranks_share_a_batch_disjointly_and_the_weights_add_up(monkeypatch, world_size, n):
    monkeypatch.setattr(distributed, "world_size", lambda: world_size)
    taken, fractions = [], []
    for r in range(world_size):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        rows, fraction = distributed.batch_share(n)
        if fraction:
            taken += list(range(n))[rows]
            assert fraction == (rows.stop - rows.start) / n
        fractions.append(fraction)
    assert taken == list(range(n))  # contiguous, disjoint, in order, covering the batch
    assert sum(fractions) == pytest.approx(1.0)
    assert fractions.count(0.0) == max(0, world_size - n)  # ranks left without rows carry no weight
