"""`r2scp demo`: synth -> extract -> build-bank -> (train-experts -> train-router -> eval x3) per
recovery method and seed -> report. Every stage is the same function the CLI calls, so finished
stages are reused on a second run."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from . import evaluate, extract, report, train
from .batches import share_cores
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
from .console import console, progress_bar
from .errors import UserError
from .features import FeatureStore
from .retrieval import bank
from .retrieval.keys import resolve_key_mode
from .synth import dataset as synth

SETTINGS = ("none", "audio", "visual")
SWEEP_RATES = (0.3, 0.5, 0.7)  # with complete (rate 0) and whole-split loss (rate 1): the rate curve
SWEEP_PARTIAL = 0.5  # every clip loses half of its segments of one modality, in bursts


@dataclass(frozen=True)
class Budget:
    """Data size and training budget of a demo run (the same for every recovery method)."""

    videos: int
    size: int  # frame size in pixels
    # Stage 1's epochs, early-stopped on val (patience 6). 14 keeps the default demo within 8 minutes on 2
    # cores. Over 32 earlier 20-epoch runs the best val score within the first 14 epochs was 0.6 points below
    # the best of 20 on average; on the default demo's 3 seeds cmr+cap - zero-fill was +2.2 / +4.1 / +2.6
    # (complete / missing audio / missing visual) with 14 against +1.9 / +4.1 / +2.2 with 20.
    experts_epochs: int
    router_epochs: int
    d_model: int
    # Clips of the bank's library (`synth --library`, LIBRARY_SEED); 0: none. Measured on the default demo
    # (pretrained, bench/retrieval_quality.py): held-out recall@10 0.31/0.33 (recover audio/visual) without,
    # 0.41/0.41 with 500 clips, 0.46/0.45 with 1,000 (0.49/0.49 with weak labels); each clip costs about
    # 0.12 s on 2 cores (synth + extract). Over 5 seeds cmr+cap - zero-fill was +3.2 / +4.6 / +2.8 with 1,000
    # clips against +1.4 / +2.5 / +1.8 with 500; the default demo took 7 min 28 s with 1,000. Banks are draws
    # too: build-bank --seed 1 on the same 1,000 clips gave +2.0 / +3.2 / +1.8, 2,000 clips +1.1 / +3.1 / +2.4.
    # With the binders' weights averaged (binder.py), over bank seeds 0-3 x 5 training seeds (another machine):
    # +2.5 / +4.2 / +3.0, the bank means' std 0.5 / 0.3 / 0.5, against +2.3 / +3.8 / +2.8 and 0.9 / 1.0 / 0.3.
    library_videos: int = 0


DEFAULT = Budget(videos=400, size=112, experts_epochs=14, router_epochs=4, d_model=80, library_videos=1000)
QUICK = Budget(videos=150, size=64, experts_epochs=8, router_epochs=3, d_model=48, library_videos=0)
LIBRARY_SEED = 1  # the dataset uses --data-seed (0); library scenes come from streams no dataset uses anyway


@dataclass(frozen=True)
class Job:
    """One recovery method and seed: train-experts -> train-router -> eval under each setting."""

    recovery: str
    seed: int
    features: Path
    bank: Path
    run_dir: Path
    budget: Budget
    protocols: bool = False  # also evaluate the protocol sweep


def train_and_evaluate(job: Job, quiet: bool = False) -> Path:
    """Run one job with the stages' own functions (finished stages are reused)."""
    train_experts(job, quiet)
    return route_and_evaluate(job, quiet)


def train_experts(job: Job, quiet: bool = False) -> Path:
    """Stage 1 of a job: most of its time."""
    console.quiet = quiet
    return train.run_experts(
        TrainExpertsConfig(job.features, job.bank, job.run_dir / "experts", recovery=job.recovery, seed=job.seed,
                           epochs=job.budget.experts_epochs, d_model=job.budget.d_model)  # fmt: skip
    )


def route_and_evaluate(job: Job, quiet: bool = False) -> Path:
    """Stage 2 of a job over its trained experts, then its evaluations."""
    console.quiet = quiet
    router = train.run_router(
        TrainRouterConfig(job.run_dir / "experts", job.run_dir / "router", seed=job.seed, epochs=job.budget.router_epochs)
    )
    for missing in SETTINGS:
        evaluate.run(EvalConfig(router, job.run_dir / f"eval-{missing}", missing=missing))
    if job.protocols:
        evaluate_protocols(router, job.run_dir)
    return job.run_dir


def evaluate_protocols(router: Path, run_dir: Path) -> None:
    """The protocol sweep of ``--protocols``: missing audio and missing visual at the rates of the
    curve, and partial loss of half the segments (DESIGN section 7)."""
    for missing in ("audio", "visual"):
        for rate in SWEEP_RATES:
            evaluate.run(EvalConfig(router, run_dir / f"eval-{missing}-rate{rate:g}", missing=missing, rate=rate))
        evaluate.run(EvalConfig(router, run_dir / f"eval-{missing}-partial{SWEEP_PARTIAL:g}", missing=missing,
                                partial=SWEEP_PARTIAL))  # fmt: skip


def run_jobs(jobs: list[Job], workers: int) -> None:
    """Run the jobs, ``workers`` at a time in separate processes that split the cores between them
    (each trains single-threaded on a 2-core machine); one worker runs them here, with progress bars.

    With workers, every job's stage 1 is queued first and its short stage 2 + evaluations join the
    queue when its stage 1 ends: the short halves fill the end, where whole jobs left one worker idle
    for 36 s (the default demo's train + eval took 271 s that way, 256 s this way)."""
    if workers <= 1:
        for job in jobs:
            console.rule(f"{job.recovery}, seed {job.seed}")
            train_and_evaluate(job)
        return
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=share_cores, initargs=(workers,))
    with pool, progress_bar() as bar:
        task = bar.add_task(f"train + eval ({workers} processes)", total=len(jobs))
        pending = {pool.submit(train_experts, job, True): (job, 1) for job in jobs}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                job, stage = pending.pop(future)
                future.result()  # re-raises a worker's error here
                if stage == 1:
                    pending[pool.submit(route_and_evaluate, job, True)] = (job, 2)
                    continue
                bar.advance(task)
                bar.console.print(f"  {job.recovery}, seed {job.seed}: trained and evaluated ({job.run_dir})")


def resolve_encoder(name: str) -> str:
    """`auto` is `pretrained` (semantic features: retrieval finds related clips) when its wheels are
    installed, else `handcrafted`, with one line that says so and how to install them."""
    if name != "auto":
        return name
    from .encoders import pretrained

    missing = pretrained.missing_parts()
    if not missing:
        return "pretrained"
    console.print(f"[yellow]pretrained encoder not installed[/] (missing {', '.join(missing)}): running on handcrafted "
                  f"features, with which retrieval rarely finds the right clip. To fix: {escape(pretrained.INSTALL)}",
                  soft_wrap=True)  # fmt: skip
    return "handcrafted"


def library_folder(config: DemoConfig, budget: Budget) -> Path:
    """Where the demo synthesises its library clips (their scenes.jsonl included)."""
    return Path(config.out) / f"library-{budget.library_videos}"


def prepare_library(config: DemoConfig, budget: Budget) -> tuple[Path, ...]:
    """The bank's library: clips synthesised with another seed (no questions), extracted with the
    dataset's encoder at the same frame size; () when the budget has none."""
    if not budget.library_videos:
        return ()
    folder = library_folder(config, budget)
    clips = synth.run(SynthConfig(folder, videos=budget.library_videos, seed=LIBRARY_SEED, size=budget.size, library=True))
    out = folder.with_name(f"{folder.name}-{config.encoder}.h5")
    return (extract.run(ExtractConfig(clips, out, encoder=config.encoder, library=True)),)


def uses_weak_labels(config: DemoConfig, features: Path) -> bool:
    """`build-bank --weak-labels` where it applies: bind keys (encoders without a joint space) and
    MUSIC-AVQA's question wording. On the demo's data (3 seeds, 500-clip library) it raised cmr+cap -
    zero-fill under missing audio from +2.6 to +4.1 points."""
    if not config.weak_labels or config.format != "music-avqa":
        return False
    with FeatureStore(features) as store:
        return resolve_key_mode("auto", store.info, features) == "bind"


def budget_for(config: DemoConfig, budget: Budget | None = None) -> Budget:
    """``budget`` (else the default or the quick one) with the config's --videos and --library-videos."""
    budget = budget or (QUICK if config.quick else DEFAULT)
    if config.videos is not None:
        budget = dataclasses.replace(budget, videos=config.videos)
    if config.library_videos is not None:
        if config.library_videos < 0:
            raise UserError(f"--library-videos {config.library_videos}: must be 0 (no library) or more")
        budget = dataclasses.replace(budget, library_videos=config.library_videos)
    return budget


def prepare_bank(config: DemoConfig, budget: Budget) -> tuple[Path, Path]:
    """synth -> extract -> (library) -> build-bank under ``config.out``: the features file and the bank
    (finished stages are reused)."""
    out = Path(config.out)
    data = synth.run(SynthConfig(out / "data", videos=budget.videos, seed=config.data_seed, size=budget.size,
                                 format=config.format))
    features = extract.run(
        ExtractConfig(data, out / f"features-{config.encoder}.h5", encoder=config.encoder, format=config.format)
    )
    memory = bank.run(BankConfig(features, out / f"bank-{config.encoder}", library=prepare_library(config, budget),
                                 check_recall=200, weak_labels=uses_weak_labels(config, features)))  # fmt: skip
    return features, memory


def run(config: DemoConfig, budget: Budget | None = None, workers: int | None = None) -> Path:
    """Run the whole chain under ``config.out`` and print the report table; returns the report dir."""
    if config.seeds < 1:
        raise UserError(f"--seeds {config.seeds}: must be at least 1")
    if config.data_seed < 0:
        raise UserError(f"--data-seed {config.data_seed}: must be 0 or more")
    config = dataclasses.replace(config, encoder=resolve_encoder(config.encoder))
    budget = budget_for(config, budget)
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    out = Path(config.out)
    library_note = f", a library of {budget.library_videos} clips" if budget.library_videos else ""
    data_note = f" (data seed {config.data_seed})" if config.data_seed else ""
    console.rule(f"r2scp demo: {budget.videos} clips{data_note}{library_note}, {config.encoder} features, {config.format}")
    features, memory = prepare_bank(config, budget)
    runs = out / f"runs-{config.encoder}"
    by_cost = ("cmr+cap", "cap", "cmr", "generative", "zero")  # longest first keeps both workers busy
    jobs = [
        Job(recovery, seed, features, memory, runs / f"{recovery}-seed{seed}", budget, config.protocols)
        for seed in range(config.seeds)
        for recovery in sorted(RECOVERY_METHODS, key=by_cost.index)
    ]
    run_jobs(jobs, workers)
    return report.run(ReportConfig((runs,), out / f"report-{config.encoder}"))
