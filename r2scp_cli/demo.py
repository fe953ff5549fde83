"""`r2scp demo`: synth -> extract -> build-bank -> (train-experts -> train-router -> eval x3) per
recovery method and seed -> report. Every stage is the same function the CLI calls, so finished
stages are reused on a second run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import bank, evaluate, extract, report, synth, train
from .config import (
    RECOVERY_METHODS,
    BankConfig,
    DemoConfig,
    EvalConfig,
    ExtractConfig,
    ReportConfig,
    SynthConfig,
    TrainExpertsConfig,
    TrainRouterConfig,
)
from .console import console
from .errors import UserError

SETTINGS = ("none", "audio", "visual")


@dataclass(frozen=True)
class Budget:
    """Data size and training budget of a demo run (the same for every recovery method)."""

    videos: int
    size: int  # frame size in pixels
    experts_epochs: int
    router_epochs: int
    d_model: int


DEFAULT = Budget(videos=400, size=112, experts_epochs=20, router_epochs=5, d_model=64)
QUICK = Budget(videos=150, size=64, experts_epochs=8, router_epochs=3, d_model=48)


def run(config: DemoConfig, budget: Budget | None = None) -> Path:
    """Run the whole chain under ``config.out`` and print the report table; returns the report dir."""
    if config.seeds < 1:
        raise UserError(f"--seeds {config.seeds}: must be at least 1")
    budget = budget or (QUICK if config.quick else DEFAULT)
    out = Path(config.out)
    console.rule(f"r2scp demo: {budget.videos} clips, {config.encoder} features, {config.format}")
    data = synth.run(SynthConfig(out / "data", videos=budget.videos, seed=0, size=budget.size, format=config.format))
    features = extract.run(
        ExtractConfig(data, out / f"features-{config.encoder}.h5", encoder=config.encoder, format=config.format)
    )
    memory = bank.run(BankConfig(features, out / f"bank-{config.encoder}", check_recall=200))
    runs = out / f"runs-{config.encoder}"
    for seed in range(config.seeds):
        for recovery in RECOVERY_METHODS:
            console.rule(f"{recovery}, seed {seed}")
            run_dir = runs / f"{recovery}-seed{seed}"
            experts = train.run_experts(
                TrainExpertsConfig(features, memory, run_dir / "experts", recovery=recovery, seed=seed,
                                   epochs=budget.experts_epochs, d_model=budget.d_model)  # fmt: skip
            )
            router = train.run_router(
                TrainRouterConfig(experts, run_dir / "router", seed=seed, epochs=budget.router_epochs)
            )
            for missing in SETTINGS:
                evaluate.run(EvalConfig(router, run_dir / f"eval-{missing}", missing=missing))
    return report.run(ReportConfig((runs,), out / f"report-{config.encoder}"))
