"""Thin Typer commands: each parses flags into its stage's config and calls the stage's ``run``.

Stage modules are imported inside the commands so that ``r2scp --help`` stays fast.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from . import __version__
from .config import (
    BankConfig,
    DemoConfig,
    EvalConfig,
    ExtractConfig,
    ReportConfig,
    SynthConfig,
    TrainExpertsConfig,
    TrainRouterConfig,
    keep_freed_memory,
)
from .console import console
from .errors import UserError

app = typer.Typer(
    help="R2ScP: retrieve, purify and route to answer audio-visual questions with a missing modality.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Shared option aliases.
Force = Annotated[bool, typer.Option("--force", help="Redo the stage even if it finished with the same inputs.")]
Seed = Annotated[int, typer.Option(help="Random seed; runs are reproducible on CPU.")]
Device = Annotated[str, typer.Option(help="torch device: cpu or cuda.")]
Out = Annotated[Path, typer.Option("--out", help="Output path of the stage.")]
Simulate = Annotated[str, typer.Option(help="Modality a training sample may lose: mixed (audio or visual), audio, visual.")]
TrainPartial = Annotated[float, typer.Option(
    "--partial", help="Share of its segments a sample that loses a modality loses, in bursts (1: all).")]  # fmt: skip


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def stage_command(fn: Callable) -> Callable:
    """Turn user errors into one line and exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as error:
            console.print(f"[bold red]error:[/] {error}", soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        console.print(f"r2scp {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    """R2ScP: retrieve, purify and route to answer audio-visual questions with a missing modality."""
    keep_freed_memory()


@app.command()
@stage_command
def synth(
    out: Annotated[Path, typer.Argument(help="Dataset directory to write.")],
    videos: Annotated[int, typer.Option(help="Number of clips.")] = 400,
    seed: Seed = 0,
    seconds: Annotated[float, typer.Option(help="Clip length in seconds.")] = 4.0,
    fps: Annotated[int, typer.Option(help="Frames per second.")] = 4,
    size: Annotated[int, typer.Option(help="Frame height and width in pixels.")] = 224,
    split_by: Annotated[str, typer.Option(help="qa (as MUSIC-AVQA) or video.")] = "qa",
    format: Annotated[str, typer.Option("--format", help="music-avqa or avqa.")] = "music-avqa",
    library: Annotated[bool, typer.Option(
        "--library", help="Clips only, no questions: a library for `extract --library` and `build-bank --library`; "
                          "ids lib<seed>-000001..., never a dataset's clips.")] = False,
    force: Force = False,
) -> None:
    """Write the built-in dataset: real mp4 clips and MUSIC-AVQA (or AVQA) annotations."""
    from .synth import dataset as stage

    stage.run(SynthConfig(out, videos, seed, seconds, fps, size, split_by, format, library), force=force)


@app.command()
@stage_command
def extract(
    dataset: Annotated[Path, typer.Argument(
        help="Dataset directory (videos/ and annotation JSON files); with --library a folder of clips.")],
    out: Out,
    encoder: Annotated[str, typer.Option(
        help="handcrafted, npy, pretrained or imagebind. With imagebind a clip's embedding is the normalised "
             "mean of its T segment embeddings (ImageBind's own file-level audio embedding averages 3 clips "
             "at fixed offsets).")] = "handcrafted",
    segments: Annotated[int, typer.Option(help="T: segments (tokens) per clip.")] = 8,
    splits: Annotated[str, typer.Option(help="Comma-separated splits.")] = "train,val,test",
    format: Annotated[str, typer.Option("--format", help="music-avqa or avqa.")] = "music-avqa",
    batch_size: Annotated[int, typer.Option(help="Clips per encoder batch.")] = 16,
    max_failures: Annotated[float, typer.Option(help="Share of videos allowed to fail.")] = 0.01,
    audio_npy: Annotated[Optional[Path], typer.Option(help="--encoder npy: per-video audio .npy files.")] = None,
    visual_npy: Annotated[Optional[Path], typer.Option(help="--encoder npy: per-video visual .npy files.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="--encoder imagebind: local checkpoint.")] = None,
    device: Device = "cpu",
    image_size: Annotated[int, typer.Option(
        help="--encoder pretrained: frame size fed to the network (0: the source's shorter side, at most 224; "
             "recorded in the encoder version, so features of other sizes never mix).")] = 0,
    degrade: Annotated[str, typer.Option(
        help="Corrupt the decoded media per segment before encoding, e.g. "
             "'audio:noise=0dB,share=0.5;visual:blur=3,share=0.3' (audio: noise=SNR, babble=SNR, dropout; "
             "visual: blur=R, occlude=A, freeze; options share=P, pick=burst|independent). The corrupted "
             "segments are recorded per video (README: degraded media).")] = "",
    degrade_seed: Annotated[int, typer.Option(help="--degrade: seed of the corrupted segments, drawn per video.")] = 0,
    library: Annotated[bool, typer.Option(
        "--library", help="DATASET is a folder of clips without annotations (DIR/videos/* or DIR/*: mp4, mkv, webm, "
                          "avi, mov, m4v): write a library features file (no questions) for `build-bank --library`.")] = False,
    shard: Annotated[Optional[str], typer.Option(
        help="i/N: extract only shard i (0-based) of N: every N-th of the sorted video ids from the i-th, into "
             "OUT's part file (--out f.h5 --shard 1/4 writes f.part-1-of-4.h5; shard 0 also holds every "
             "question). Unset: torchrun's RANK/WORLD_SIZE, else a SLURM array's task id, when present. "
             "Join the parts with `r2scp merge-features`.")] = None,
    precision: Annotated[str, typer.Option(
        help="--encoder imagebind: auto (fp16 autocast on CUDA, fp32 elsewhere), fp32 (the reference's) or fp16; "
             "recorded in the encoder version, so features of the two never mix.")] = "auto",
    force: Force = False,
) -> None:
    """Decode media and encode clips and questions into an HDF5 feature store."""
    from . import extract as stage
    from . import shards

    config = ExtractConfig(
        dataset, out, encoder, segments, _csv(splits), format, batch_size, max_failures,
        audio_npy, visual_npy, checkpoint, device, image_size, degrade=degrade, degrade_seed=degrade_seed,
        library=library,
        precision=precision,
    )
    stage.run(config, force=force, shard=shards.resolve(shard))


@app.command("merge-features")
@stage_command
def merge_features(
    parts: Annotated[list[Path], typer.Argument(help="The N part files of `r2scp extract --shard i/N`.")],
    out: Out,
) -> None:
    """Check the parts of a sharded extraction and join them into the store one `extract` run writes."""
    from . import shards as stage

    stage.merge(parts, out)


@app.command("build-bank")
@stage_command
def build_bank(
    features: Annotated[Path, typer.Argument(help="features.h5 from `r2scp extract`.")],
    out: Out,
    bank_splits: Annotated[str, typer.Option(help="Comma-separated splits whose videos enter the bank.")] = "train",
    library: Annotated[Optional[list[Path]], typer.Option(
        help="Extra features files of the same encoder (repeatable), e.g. from `extract --library`: their clips "
             "enter the bank and the keys' training under their own ids, never taken for a dataset video.")] = None,
    keys: Annotated[str, typer.Option(help="auto, unified, bind or paired.")] = "auto",
    neighbours: Annotated[int, typer.Option(help="Neighbours stored per video and modality.")] = 16,
    M: Annotated[int, typer.Option("--M", help="HNSW graph degree.")] = 16,
    ef_construction: Annotated[int, typer.Option(help="HNSW build beam.")] = 200,
    ef: Annotated[int, typer.Option(help="HNSW query beam; 0: grows with the bank (64, 128 from 2e5 keys, 256 from 2e6).")] = 0,
    exact: Annotated[bool, typer.Option("--exact", help="Exact search instead of HNSW.")] = False,
    check_recall: Annotated[int, typer.Option(help="Queries sampled to measure HNSW recall.")] = 1000,
    threads: Annotated[int, typer.Option(help="HNSW build threads (1 = reproducible).")] = 1,
    seed: Seed = 0,
    key_dtype: Annotated[str, typer.Option(help="float32 or float16 (half the stored keys; search uses their rounded values).")] = "float32",
    weak_labels: Annotated[bool, typer.Option(
        "--weak-labels", help="--keys bind: also fit the binders to labels read from the train split's MUSIC-AVQA "
                              "questions and answers (instruments heard, seen, where). On the demo's data the "
                              "neighbours' top-5 sounding-set match rose 0.247 -> 0.280, visible layout 0.095 -> 0.100.")] = False,
    segment_keys: Annotated[bool, typer.Option(
        "--segment-keys", help="--keys bind: also key each clip by its segments and score clips by late interaction "
                               "(MaxSim). On the demo's data with --weak-labels, top-5 sounding-set match 0.280 -> 0.293.")] = False,
    rerank_labels: Annotated[bool, typer.Option(
        "--rerank-labels", help="With --weak-labels: re-rank the top 16 by how well the weak-label head's 'heard' "
                                "predictions agree (query's available modality vs candidate). On the demo's data, with "
                                "--segment-keys: top-5 sounding-set match 0.280 -> 0.299, visible layout 0.100 -> 0.106.")] = False,
    force: Force = False,
) -> None:
    """Build the memory bank: key spaces, HNSW indexes and leak-proof neighbour lists."""
    from .retrieval import bank as stage

    config = BankConfig(
        features, out, _csv(bank_splits), tuple(library or ()), keys, neighbours, M, ef_construction, ef,
        exact, check_recall, threads=threads, seed=seed, key_dtype=key_dtype, weak_labels=weak_labels,
        segment_keys=segment_keys, rerank_labels=rerank_labels,
    )
    stage.run(config, force=force)


@app.command("train-experts")
@stage_command
def train_experts(
    features: Annotated[Path, typer.Argument(help="features.h5 from `r2scp extract`.")],
    bank: Annotated[Path, typer.Option(help="Bank directory from `r2scp build-bank`.")],
    out: Out,
    recovery: Annotated[str, typer.Option(help="cmr+cap, cmr, cap, generative or zero.")] = "cmr+cap",
    p_missing: Annotated[float, typer.Option(help="Probability a training sample loses a modality.")] = 0.5,
    n: Annotated[int, typer.Option("--n", "--candidates",
                                   help="Retrieved candidates averaged into a fill; on the built-in data 10 did better "
                                        "than 5 with 800 clips, as well with 400 (README). Spell it --candidates "
                                        "under torchrun, which takes --n for one of its own options.")] = 5,
    rho: Annotated[float, typer.Option(help="Share of positions purified.")] = 0.25,
    lambda_rank: Annotated[float, typer.Option(help="Weight of the ranking loss.")] = 0.1,
    margin: Annotated[float, typer.Option(help="Margin of the ranking loss.")] = 0.1,
    d_model: Annotated[int, typer.Option(help="Model width.")] = 128,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = 30,
    batch_size: Annotated[int, typer.Option(help="Samples per batch.")] = 64,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    seed: Seed = 0,
    device: Device = "cpu",
    simulate: Simulate = "mixed",
    partial: TrainPartial = 1.0,
    average: Annotated[float, typer.Option(
        help="Decay of a moving average of the weights, validated and kept instead of them (e.g. 0.99; 0: off). "
             "On the demo it lifted zero-fill by about a point and cmr+cap by 0.1.")] = 0.0,
    trust: Annotated[bool, typer.Option(
        "--trust/--no-trust", help="cmr, cmr+cap: learn a trust that scales each fill toward zero-fill.")] = False,
    trust_match: Annotated[float, typer.Option(
        help="With --trust: weight of a loss teaching the trust whether each fill resembles the lost modality "
             "(its bank key among the 10 % closest to the truth's).")] = 0.0,
    router_holdout: Annotated[float, typer.Option(
        help="Share of the train videos stage 1 leaves out; train-router then learns on them alone.")] = 0.0,
    noise_aux: Annotated[float, typer.Option(
        help="cap, cmr+cap: weight of a loss teaching CAP to find corrupted positions of a present modality.")] = 0.0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint.")] = False,
    force: Force = False,
) -> None:
    """Stage 1: train the experts and the recovery modules with simulated missing modalities."""
    from . import train as stage

    config = TrainExpertsConfig(
        features, bank, out, recovery, p_missing, n, rho, lambda_rank, margin, d_model,
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, simulate=simulate, partial=partial,
        average=average, trust=trust, router_holdout=router_holdout, noise_aux=noise_aux, trust_match=trust_match,
    )
    stage.run_experts(config, force=force, resume=resume)


@app.command("train-router")
@stage_command
def train_router(
    experts: Annotated[Path, typer.Argument(help="Directory from `r2scp train-experts`.")],
    out: Out,
    p_missing: Annotated[float, typer.Option(help="Probability a training sample loses a modality.")] = 0.5,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = 15,
    batch_size: Annotated[int, typer.Option(help="Samples per batch.")] = 64,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    seed: Seed = 0,
    device: Device = "cpu",
    simulate: Simulate = "mixed",
    partial: TrainPartial = 1.0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint.")] = False,
    force: Force = False,
) -> None:
    """Stage 2: freeze the experts, train the router and the routed answer head."""
    from . import train as stage

    config = TrainRouterConfig(
        experts, out, p_missing, epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, simulate=simulate,
        partial=partial,
    )
    stage.run_router(config, force=force, resume=resume)


@app.command("eval")
@stage_command
def eval_(
    run: Annotated[Path, typer.Argument(help="A train-router (or train-experts) directory.")],
    out: Out,
    missing: Annotated[str, typer.Option(help="none, audio, visual, mixed (audio or visual per video) or text.")] = "none",
    rate: Annotated[float, typer.Option(help="Share of the split's videos that lose it; the rest stay complete.")] = 1.0,
    partial: Annotated[float, typer.Option(
        help="Share of an affected clip's segments lost, in contiguous bursts (1: the whole modality).")] = 1.0,
    mask_seed: Annotated[int, typer.Option(help="Seed of the masks: which videos, which modality, which segments.")] = 0,
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    features: Annotated[Optional[Path], typer.Option(help="Another features file of the same encoder.")] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per batch.")] = 256,
    device: Device = "cpu",
    force: Force = False,
) -> None:
    """Evaluate a run under a missing-modality protocol (by default one modality removed from every sample)."""
    from . import evaluate as stage

    config = EvalConfig(run, out, missing, split, features, batch_size, device, rate=rate, partial=partial,
                        mask_seed=mask_seed)  # fmt: skip
    stage.run(config, force=force)


@app.command()
@stage_command
def report(
    runs: Annotated[list[Path], typer.Argument(help="Eval directories (or run directories holding them).")],
    out: Out,
) -> None:
    """Lay several evaluations side by side: Markdown, JSON and a PNG chart."""
    from . import report as stage

    stage.run(ReportConfig(tuple(runs), out))


@app.command()
@stage_command
def demo(
    out: Annotated[Path, typer.Option(help="Directory for every stage of the demo.")] = Path("runs/demo"),
    quick: Annotated[bool, typer.Option("--quick", help="Smaller data and budget (about 2 minutes).")] = False,
    seeds: Annotated[int, typer.Option(help="Training seeds per recovery method.")] = 1,
    encoder: Annotated[str, typer.Option(
        help="auto (pretrained when installed, else handcrafted), pretrained or handcrafted.")] = "auto",
    format: Annotated[str, typer.Option("--format", help="music-avqa or avqa.")] = "music-avqa",
    videos: Annotated[Optional[int], typer.Option(help="Number of clips (default 400, --quick 150).")] = None,
    protocols: Annotated[bool, typer.Option(
        "--protocols", help="Also evaluate missing rates 0.3/0.5/0.7 and partial loss 0.5; the report draws the curve.")] = False,
    library_videos: Annotated[Optional[int], typer.Option(
        help="Clips of the bank's library (synthesised with another seed, no questions); 0: no library "
             "(default 1000, --quick 0).")] = None,
    weak_labels: Annotated[bool, typer.Option(
        "--weak-labels/--no-weak-labels", help="Build the bank with build-bank --weak-labels when its keys are bind "
                                               "and the format is music-avqa.")] = True,
    data_seed: Annotated[int, typer.Option(
        help="Seed of the dataset's synthesis: another draw of the same generator (the library is unchanged). "
             "Use another --out per seed.")] = 0,
) -> None:
    """Run the whole chain on the built-in dataset and print the paper-style table."""
    from . import demo as stage

    stage.run(DemoConfig(out, quick, seeds, encoder, format, videos, protocols, library_videos, weak_labels, data_seed))


@app.command()
def doctor(
    checkpoint: Annotated[
        Optional[Path], typer.Option(help="ImageBind checkpoint to check (default: $IMAGEBIND_CHECKPOINT).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON, for scripts.")] = False,
) -> None:
    """Show what this installation can do (torch, CUDA, packages, encoders) and how to fix what it cannot."""
    import json

    from . import doctor as stage

    try:
        report = stage.run(checkpoint)
    except Exception as error:  # the doctor reports; it never fails
        report = {"error": f"the doctor could not finish: {type(error).__name__}: {error}"}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    elif "error" in report:
        console.print(report["error"], markup=False)
    else:
        stage.print_report(report, console)
