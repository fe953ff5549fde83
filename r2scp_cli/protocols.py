"""Missing-modality protocols (DESIGN section 7): which videos lose what, and which segments.

A protocol names the modality removed (``audio``, ``visual``, ``mixed`` = audio or visual per video,
``text``, or ``none``), the share of videos affected (``rate``), the share of an affected clip's T
segments that are lost in contiguous bursts (``partial``; 1 = the whole modality) and the seed of the
masks. Masks are drawn per *video*, so every question of a clip sees the same loss, and from the seed
alone, so any run under the same protocol sees the same masks.

Training simulates the same kinds of loss per *sample* (:func:`simulate`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import UserError
from .model import MEDIA, MISSING_CODES

MISSING_CHOICES = ("none", "audio", "visual", "mixed", "text")
SIMULATE_CHOICES = ("mixed", "audio", "visual")


@dataclass(frozen=True)
class Protocol:
    """What an evaluation removes; ``name`` is the title every metrics file and report table carries."""

    missing: str = "none"
    rate: float = 1.0  # share of the split's videos affected; the others stay complete
    partial: float = 1.0  # share of an affected clip's segments lost (1: the whole modality)
    mask_seed: int = 0

    def check(self) -> "Protocol":
        if self.missing not in MISSING_CHOICES:
            raise UserError(f"--missing {self.missing}: choose one of {', '.join(MISSING_CHOICES)}")
        if not 0.0 <= self.rate <= 1.0:
            raise UserError(f"--rate {self.rate}: must lie in [0, 1]")
        if not 0.0 < self.partial <= 1.0:
            raise UserError(f"--partial {self.partial}: must lie in (0, 1]")
        if self.partial < 1.0 and self.missing == "text":
            raise UserError("--partial applies to audio or visual segments, not to the question")
        return self

    @property
    def affects_videos(self) -> bool:
        return self.missing != "none" and self.rate > 0

    @property
    def name(self) -> str:
        """"missing audio", "missing mixed · rate 0.7 · partial 0.5 · mask seed 3", "complete"."""
        if not self.affects_videos:
            return "complete"
        parts = [f"missing {self.missing}"]
        if self.rate < 1.0:
            parts.append(f"rate {self.rate:g}")
        if self.partial < 1.0:
            parts.append(f"partial {self.partial:g}")
        if self.rate < 1.0 or self.partial < 1.0 or self.missing == "mixed":
            parts.append(f"mask seed {self.mask_seed}")
        return " · ".join(parts)

    @property
    def family(self) -> str:
        """The protocol without its modality: evaluations of one family share a report table, with the
        missing modality as columns ("" for the classic all-or-nothing table)."""
        parts = []
        if self.rate < 1.0:
            parts.append(f"rate {self.rate:g}")
        if self.partial < 1.0:
            parts.append(f"partial {self.partial:g}")
        if parts or self.missing == "mixed":
            parts.append(f"mask seed {self.mask_seed}")
        return " · ".join(parts) if self.missing != "none" else ""

    @classmethod
    def from_metrics(cls, metrics: dict) -> "Protocol":
        """The protocol an eval's metrics.json names (evaluations before protocols: all-or-nothing)."""
        recorded = metrics.get("protocol") or {}
        return cls(metrics["missing"], recorded.get("rate", 1.0), recorded.get("partial", 1.0),
                   recorded.get("mask_seed", 0))  # fmt: skip

    def to_dict(self) -> dict:
        return {**asdict(self), "name": self.name}


@dataclass
class Masks:
    """Per row: the missing code (model.MISSING_CODES) and the lost segments ([N, T] bool; all True
    for a whole modality, all False for complete rows)."""

    missing: np.ndarray
    lost: np.ndarray

    def hidden(self, video_ids: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """modality -> video id -> its lost segments, for the videos that lose some of that modality."""
        out: dict[str, dict[str, np.ndarray]] = {m: {} for m in MEDIA}
        for m in MEDIA:
            for row in np.flatnonzero(self.missing == MISSING_CODES[m]):
                out[m][video_ids[row]] = self.lost[row]
        return out


def bursts(lost: int, segments: int, rng: np.random.Generator) -> np.ndarray:
    """``lost`` of ``segments`` positions in one or two contiguous bursts at random places: a dropped
    stream. Returns bool [segments]."""
    mask = np.zeros(segments, bool)
    if lost >= segments:
        mask[:] = True
        return mask
    if lost <= 0:
        return mask
    count = 1 if lost < 2 or segments - lost < 2 or rng.random() < 0.5 else 2
    lengths = [lost] if count == 1 else [int(a) for a in np.diff([0, *sorted(rng.choice(np.arange(1, lost), 1)), lost])]
    # Gaps: count + 1 of them summing to segments - lost, the inner ones at least 1 (bursts stay apart).
    free = segments - lost - (count - 1)
    cuts = np.sort(rng.integers(0, free + 1, size=count))
    gaps = np.diff([0, *cuts]) + np.r_[0, np.ones(count - 1, int)]
    position = 0
    for gap, length in zip(gaps, lengths):
        position += int(gap)
        mask[position : position + length] = True
        position += length
    return mask


def lost_count(partial: float, segments: int) -> int:
    """Segments an affected clip loses: round(P * T), at least 1."""
    return max(1, int(round(partial * segments)))


def eval_masks(protocol: Protocol, video_ids: np.ndarray, segments: int) -> Masks:
    """Masks of a split's rows (``video_ids`` per question): the affected videos are an exact share
    ``rate`` of the split's distinct videos, chosen by a permutation drawn from the mask seed."""
    protocol.check()
    rows = len(video_ids)
    missing = np.full(rows, MISSING_CODES["none"])
    lost = np.zeros((rows, segments), bool)
    if not protocol.affects_videos:
        return Masks(missing, lost)
    videos = sorted(set(video_ids))
    rng = np.random.default_rng(protocol.mask_seed)
    order = rng.permutation(len(videos))
    affected = int(round(protocol.rate * len(videos)))
    per_video: dict[str, tuple[int, np.ndarray]] = {}
    for rank, i in enumerate(order):  # every video draws, so a video's mask does not depend on the rate
        if protocol.missing == "mixed":
            modality = MEDIA[int(rng.integers(2))]
        else:
            modality = protocol.missing
        if protocol.partial < 1.0 and modality != "text":
            segments_lost = bursts(lost_count(protocol.partial, segments), segments, rng)
        else:
            segments_lost = np.ones(segments, bool)
        if rank < affected:
            per_video[videos[i]] = (MISSING_CODES[modality], segments_lost)
    for row, video in enumerate(video_ids):
        if video in per_video:
            missing[row], lost[row] = per_video[video]
    return Masks(missing, lost)


def simulate(size: int, segments: int, p_missing: float, rng: np.random.Generator, modalities: str = "mixed",
             partial: float = 1.0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Training's simulation: each sample independently loses audio or visual (``modalities``: mixed,
    audio or visual) with probability ``p_missing``, the whole modality or, with ``partial`` < 1, a share
    of its segments in bursts. Returns (missing codes [size], lost [size, T])."""
    lose = rng.random(size) < p_missing
    which = np.where(rng.random(size) < 0.5, MISSING_CODES["audio"], MISSING_CODES["visual"])
    if modalities != "mixed":
        which = np.full(size, MISSING_CODES[modalities])
    missing = np.where(lose, which, MISSING_CODES["none"])
    lost = np.zeros((size, segments), bool)
    lost[lose] = True
    if partial < 1.0:
        count = lost_count(partial, segments)
        for row in np.flatnonzero(lose):
            lost[row] = bursts(count, segments, rng)
    return missing, lost


def check_simulation(modalities: str, partial: float) -> None:
    if modalities not in SIMULATE_CHOICES:
        raise UserError(f"--simulate {modalities}: choose one of {', '.join(SIMULATE_CHOICES)}")
    if not 0.0 < partial <= 1.0:
        raise UserError(f"--partial {partial}: must lie in (0, 1]")
