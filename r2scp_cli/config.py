"""Modalities and one frozen configuration dataclass per stage.

A config holds everything that decides a stage's output; it is saved in the stage's ``meta.json``
and compared on a rerun to decide whether the stage is already finished. Flags that only decide
*how* the work is done (``--force``, ``--resume``) are not part of a config.
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import os
import sys
from dataclasses import dataclass
from pathlib import Path


def usable_cores() -> int:
    """The cores this process may run on (taskset, a SLURM or container cpuset), not the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


# glibc hands freed blocks of 128 KiB and more (mmap) and the heap's free top (trim) back to the kernel at
# once, so each batch's arrays were faulted in again page by page: the demo's extraction spent 24 of its 105
# CPU seconds in the kernel (10.2 million page faults for 400 clips; bench/allocator.py). Kept in the process
# up to these sizes: 0.33 million faults, 1.8 s in the kernel, the same peak memory, the same features.
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 1 << 30
GLIBC_MALLOC = f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD}:glibc.malloc.trim_threshold={TRIM_THRESHOLD}"


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse, in this process (mallopt) and in the processes it
    starts (GLIBC_TUNABLES, read when they start: spawned workers). A user's own glibc.malloc tunables
    win. False where it does not apply (no glibc, or the user's settings)."""
    current = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc." in current or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    # an older glibc may refuse an mmap threshold above 32 MiB (half its largest heap) through mallopt
    if not (mallopt(m_mmap_threshold, MMAP_THRESHOLD) or mallopt(m_mmap_threshold, 32 << 20)):
        return False
    mallopt(m_trim_threshold, TRIM_THRESHOLD)
    os.environ["GLIBC_TUNABLES"] = f"{current}:{GLIBC_MALLOC}" if current else GLIBC_MALLOC
    return True


class Modality(str, enum.Enum):
    """The three inputs of an AVQA sample. Batches are dicts keyed by these values."""

    AUDIO = "audio"
    VISUAL = "visual"
    TEXT = "text"

    @classmethod
    def media(cls) -> tuple["Modality", "Modality"]:
        """The modalities that can be recovered from the memory bank."""
        return (cls.AUDIO, cls.VISUAL)

    def other(self) -> "Modality":
        """The other media modality (audio <-> visual)."""
        if self is Modality.TEXT:
            raise ValueError("text has no paired media modality")
        return Modality.VISUAL if self is Modality.AUDIO else Modality.AUDIO


RECOVERY_METHODS = ("zero", "generative", "cmr", "cap", "cmr+cap")
KEY_MODES = ("auto", "unified", "bind", "paired")
DATASET_FORMATS = ("music-avqa", "avqa")


def config_dict(config) -> dict:
    """A JSON-ready dict of a config: paths become strings, tuples become lists."""

    def plain(value):
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


class StageConfig:
    """Base of the stage configs: paths are made absolute, so that the references a stage records
    (features, bank, experts) still resolve when a later stage runs from another directory."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                object.__setattr__(self, f.name, value.absolute())
            elif isinstance(value, tuple) and value and all(isinstance(v, Path) for v in value):
                object.__setattr__(self, f.name, tuple(v.absolute() for v in value))


@dataclass(frozen=True)
class SynthConfig(StageConfig):
    """`r2scp synth`: the built-in dataset."""

    out: Path
    videos: int = 400  # number of clips
    seed: int = 0  # everything is a function of this seed
    seconds: float = 4.0  # clip length
    fps: int = 4  # frames per second of the mp4
    size: int = 224  # frame height and width in pixels
    split_by: str = "qa"  # "qa" (as MUSIC-AVQA: a video appears in several splits) or "video"
    format: str = "music-avqa"  # annotation format: "music-avqa" or "avqa"
    library: bool = False  # clips only (no questions), ids lib<seed>-NNNNNN, scenes never those of a dataset


@dataclass(frozen=True)
class ExtractConfig(StageConfig):
    """`r2scp extract`: media and questions -> features.h5."""

    dataset: Path
    out: Path
    encoder: str = "handcrafted"
    segments: int = 8  # T: tokens per clip and modality
    splits: tuple[str, ...] = ("train", "val", "test")
    format: str = "music-avqa"
    batch_size: int = 16
    max_failures: float = 0.01  # share of videos allowed to fail before the stage fails
    audio_npy: Path | None = None  # --encoder npy: per-video VGGish arrays
    visual_npy: Path | None = None  # --encoder npy: per-video ResNet arrays
    checkpoint: Path | None = None  # --encoder imagebind
    device: str = "cpu"
    image_size: int = 0  # --encoder pretrained: network input in pixels; 0 = the source's, at most 224
    degrade: str = ""  # corrupt the decoded media per segment (degrade.py grammar); "" = clean
    degrade_seed: int = 0  # with the video id, draws which segments are corrupted
    library: bool = False  # `dataset` is a folder of clips without annotations: a library features file
    precision: str = "auto"  # --encoder imagebind: auto (fp16 on CUDA, fp32 elsewhere), fp32 or fp16


@dataclass(frozen=True)
class BankConfig(StageConfig):
    """`r2scp build-bank`: keys, HNSW indexes and neighbour lists."""

    features: Path
    out: Path
    bank_splits: tuple[str, ...] = ("train",)
    library: tuple[Path, ...] = ()
    keys: str = "auto"
    neighbours: int = 16  # n stored per video and target modality
    M: int = 16
    ef_construction: int = 200
    ef: int = 0  # HNSW query beam; 0: grows with the bank (retrieval.bank.ef_for)
    exact: bool = False
    check_recall: int = 1000  # queries sampled to compare HNSW with exact search
    negatives: int = 16  # random bank entries stored per video for the ranking loss (at least `neighbours`)
    threads: int = 1  # HNSW build threads (1 = reproducible)
    seed: int = 0
    key_dtype: str = "float32"  # float16 halves the stored keys; search runs on their float32 values
    weak_labels: bool = False  # bind: also fit the binders to weak labels read from the train split's questions
    segment_keys: bool = False  # bind: also key clips by their segments, scored by late interaction (rescoring.py)
    rerank_labels: bool = False  # with weak_labels: re-rank the top candidates by the weak-label head's agreement


@dataclass(frozen=True)
class TrainExpertsConfig(StageConfig):
    """`r2scp train-experts`: stage 1, the experts and the recovery modules."""

    features: Path
    bank: Path
    out: Path
    recovery: str = "cmr+cap"
    p_missing: float = 0.5  # probability that a training sample loses audio or visual
    n: int = 5  # retrieved candidates per missing modality
    rho: float = 0.25  # k = ceil(rho * T) positions purified
    lambda_rank: float = 0.1
    margin: float = 0.1
    d_model: int = 128
    epochs: int = 30
    patience: int = 6  # early stopping on the val selection score
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    simulate: str = "mixed"  # the modality a training sample may lose: mixed (audio or visual), audio, visual
    partial: float = 1.0  # share of its T segments such a sample loses, in bursts (1: the whole modality)
    average: float = 0.0  # decay of the weights' moving average, which is then what is validated and kept; 0: off
    trust: bool = False  # cmr / cmr+cap: a learned trust scales each fill toward zero-fill
    router_holdout: float = 0.0  # share of the train videos kept from stage 1 for stage 2 to learn on
    noise_aux: float = 0.0  # cap, cmr+cap: weight of CAP's noise-identification loss (swapped-token bursts)
    trust_match: float = 0.0  # with --trust: weight of the trust's cross-entropy against whether the fill resembles the truth


@dataclass(frozen=True)
class TrainRouterConfig(StageConfig):
    """`r2scp train-router`: stage 2, the router and the routed head over frozen experts."""

    experts: Path
    out: Path
    p_missing: float = 0.5
    epochs: int = 15
    patience: int = 4
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    simulate: str = "mixed"  # the modality a training sample may lose: mixed (audio or visual), audio, visual
    partial: float = 1.0  # share of its T segments such a sample loses, in bursts (1: the whole modality)


@dataclass(frozen=True)
class EvalConfig(StageConfig):
    """`r2scp eval`: one run under one missing setting."""

    run: Path  # a train-router or train-experts directory
    out: Path
    missing: str = "none"  # none | audio | visual | mixed (audio or visual, per video) | text
    split: str = "test"
    features: Path | None = None  # evaluate against another features file of the same encoder
    batch_size: int = 256
    device: str = "cpu"
    rate: float = 1.0  # share of the split's videos that lose the modality; the others stay complete
    partial: float = 1.0  # share of an affected clip's segments lost in bursts (1: the whole modality)
    mask_seed: int = 0  # draws which videos, which modality (mixed) and which segments


@dataclass(frozen=True)
class ReportConfig(StageConfig):
    """`r2scp report`: the paper-style table across runs."""

    runs: tuple[Path, ...]
    out: Path


@dataclass(frozen=True)
class DemoConfig(StageConfig):
    """`r2scp demo`: the whole chain on the built-in dataset."""

    out: Path = Path("runs/demo")
    quick: bool = False
    seeds: int = 1
    encoder: str = "auto"  # pretrained when its wheels are installed, else handcrafted (with one line saying so)
    format: str = "music-avqa"
    videos: int | None = None  # override the budget's number of clips
    protocols: bool = False  # also evaluate the protocol sweep: missing rates 0.3/0.5/0.7 and partial loss 0.5
    library_videos: int | None = None  # clips of the bank's library (another seed); 0: none; None: the budget's
    weak_labels: bool = True  # bind keys also fitted to the train questions' labels (MUSIC-AVQA wording only)
    data_seed: int = 0  # synth seed of the dataset (the library keeps its own); another draw of the same generator
