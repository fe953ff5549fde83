"""Degraded media for `extract --degrade` (DESIGN section 7, the "degraded" protocol).

The corruptions act on a decoded :class:`~r2scp_cli.media.Clip` (its waveform and its T frames)
before any encoder sees it, so they work with every media encoder. They act per segment: a spec
says which corruption hits which share of a clip's T segments. Grammar::

    SPEC    := CLAUSE { ";" CLAUSE }
    CLAUSE  := MODALITY ":" NAME [ "=" VALUE ] { "," OPTION "=" VALUE }

    audio:noise=SNR     white Gaussian noise at SNR dB ("noise=0dB", "noise=-5")
    audio:babble=SNR    babble at SNR dB: the sum of BABBLE_VOICES copies of the clip's own track,
                        each circularly shifted by a random lag of at least one segment (other
                        moments of the same scene talking or playing over this one)
    audio:dropout       the segment becomes silence
    visual:blur=R       Gaussian blur with standard deviation R pixels of a 224-pixel frame,
                        scaled to the decoded frame's shorter side (the same damage whatever size
                        the encoder decodes at); Pillow's ImageFilter.GaussianBlur
    visual:occlude=A    a black box covering share A (0 < A <= 1) of the frame, with the frame's
                        aspect ratio, at a random place per segment; Pillow's ImageDraw
    visual:freeze       the segment shows the previous segment's frame, so a burst shows the last
                        good frame throughout; segment 0 has no previous frame and never freezes

    share=P             0 < P <= 1 (default 1): round(P * T) segments, half up, at least 1
                        (freeze: at most T - 1)
    pick=burst          (default) one contiguous run of them at a random start (a glitching stream)
    pick=independent    drawn uniformly without replacement

Example: ``audio:noise=0dB,share=0.5;visual:blur=3,share=0.3,pick=independent``. Clauses apply in
order (several may hit one modality; the recorded mask is their union). Which segments a clause
hits, and its noise and box positions, are drawn per video from a generator seeded by
sha256(seed, video id, clause position), so they do not depend on the order or the process in which
videos are extracted, and :meth:`Degradation.masks` gives the recorded segments without media.

Audio segment i is samples [round(i S / T), round((i + 1) S / T)) of the S-sample track, the
same span of time as its frame (media.py: segment i covers [i D / T, (i + 1) D / T)). Noise is
scaled so that 10 log10(P_signal / P_noise) = SNR exactly over each corrupted segment, P being
the mean square of the segment before the clause and of the added noise; the waveform is not
clipped afterwards (clipping would break the SNR; every encoder takes float samples). A segment
quieter than SILENCE takes the clip's power as its reference (so it still gets noise), a silent
clip SILENCE itself; babble that is silent over a segment (a silent track) is replaced by white
noise there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .errors import UserError
from .media import Clip

# Corruptions per modality and what their value is ("" = takes no value).
CORRUPTIONS: dict[str, dict[str, str]] = {
    "audio": {"noise": "snr", "babble": "snr", "dropout": ""},
    "visual": {"blur": "radius", "occlude": "area", "freeze": ""},
}
PICKS = ("burst", "independent")
BABBLE_VOICES = 6
BLUR_REFERENCE = 224  # blur radii are given in pixels of a frame whose shorter side is this
SILENCE = 1e-8  # mean square below which a segment is silent (-80 dB full scale)
_EXAMPLE = "e.g. audio:noise=0dB,share=0.5;visual:blur=3,share=0.3"


@dataclass(frozen=True)
class Corruption:
    """One clause of a spec: a corruption of one modality on a share of the segments."""

    modality: str  # audio | visual
    name: str  # a key of CORRUPTIONS[modality]
    value: float | None  # SNR in dB, blur radius, occluded area share; None for dropout / freeze
    share: float = 1.0
    pick: str = "burst"

    @property
    def spec(self) -> str:
        """The clause in canonical form (what the features file records)."""
        kind = CORRUPTIONS[self.modality][self.name]
        value = "" if not kind else f"={self.value:g}dB" if kind == "snr" else f"={self.value:g}"
        return f"{self.modality}:{self.name}{value},share={self.share:g},pick={self.pick}"

    def count(self, segments: int) -> int:
        """How many of T segments the clause corrupts."""
        first = 1 if self.name == "freeze" else 0
        return min(max(1, math.floor(self.share * segments + 0.5)), segments - first)

    def draw(self, rng: np.random.Generator, segments: int) -> np.ndarray:
        """bool [T]: the segments this clause corrupts in one video."""
        first = 1 if self.name == "freeze" else 0  # segment 0 has no earlier frame to repeat
        count, candidates = self.count(segments), segments - first
        mask = np.zeros(segments, bool)
        if self.pick == "burst":
            start = first + int(rng.integers(0, candidates - count + 1))
            mask[start : start + count] = True
        else:
            mask[first + rng.choice(candidates, size=count, replace=False)] = True
        return mask


@dataclass(frozen=True)
class Degradation:
    """A parsed spec and the seed of its draws; applies to clips and gives their masks."""

    corruptions: tuple[Corruption, ...]
    seed: int = 0

    @property
    def spec(self) -> str:
        return ";".join(c.spec for c in self.corruptions)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in CORRUPTIONS if any(c.modality == m for c in self.corruptions))

    def check(self, segments: int) -> None:
        if segments < 2 and any(c.name == "freeze" for c in self.corruptions):
            raise UserError(f"--degrade '{self.spec}': freeze needs at least 2 segments (--segments {segments})")

    def _rng(self, video_id: str, position: int) -> np.random.Generator:
        digest = hashlib.sha256(f"{self.seed}\0{video_id}\0{position}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def masks(self, video_id: str, segments: int) -> dict[str, np.ndarray]:
        """modality -> bool [T]: the segments of one video that :meth:`apply` corrupts."""
        out = {m: np.zeros(segments, bool) for m in self.modalities}
        for position, corruption in enumerate(self.corruptions):
            out[corruption.modality] |= corruption.draw(self._rng(video_id, position), segments)
        return out

    def apply(self, clip: Clip) -> Clip:
        """A copy of ``clip`` with its corrupted segments; the other segments are left bit for bit."""
        audio = np.asarray(clip.audio, np.float64).copy()  # float32 -> float64 -> float32 is exact
        frames = np.array(clip.frames, np.uint8, copy=True)
        segments = len(frames)
        edges = segment_edges(len(audio), segments)
        for position, corruption in enumerate(self.corruptions):
            rng = self._rng(clip.video_id, position)
            mask = corruption.draw(rng, segments)  # first, so masks() sees the same draw
            if corruption.modality == "audio":
                _corrupt_audio(audio, edges, mask, corruption, rng)
            else:
                _corrupt_frames(frames, mask, corruption, rng)
        return dataclasses.replace(clip, audio=audio.astype(np.float32), frames=frames)


def segment_edges(samples: int, segments: int) -> np.ndarray:
    """[T + 1] sample indices: segment i is [edges[i], edges[i + 1])."""
    return np.round(np.arange(segments + 1) * (samples / segments)).astype(np.int64)


def power(x: np.ndarray) -> float:
    """Mean square (0 for an empty piece)."""
    return float(np.mean(np.square(x, dtype=np.float64))) if len(x) else 0.0


def at_snr(noise: np.ndarray, reference: float, snr_db: float) -> np.ndarray:
    """``noise`` scaled so that 10 log10(reference / power(noise)) = snr_db."""
    return noise * math.sqrt(reference / (power(noise) * 10.0 ** (snr_db / 10.0)))


def _babble(audio: np.ndarray, segments: int, rng: np.random.Generator) -> np.ndarray:
    """The sum of BABBLE_VOICES circular shifts of the track, each by at least one segment when the
    track is long enough (so no voice repeats the segment it covers)."""
    length = len(audio)
    piece = max(length // segments, 1)
    low, high = (piece, length - piece) if length > 2 * piece else (1, max(length - 1, 1))
    lags = rng.integers(low, high + 1, size=BABBLE_VOICES)
    return np.sum([np.roll(audio, int(lag)) for lag in lags], axis=0)


def _corrupt_audio(audio: np.ndarray, edges: np.ndarray, mask: np.ndarray, corruption: Corruption,
                   rng: np.random.Generator) -> None:
    """Corrupt the masked segments of the float64 ``audio`` in place."""
    if corruption.name == "dropout":
        for i in np.flatnonzero(mask):
            audio[edges[i] : edges[i + 1]] = 0.0
        return
    babble = _babble(audio, len(mask), rng) if corruption.name == "babble" else None
    clip_power = power(audio)
    for i in np.flatnonzero(mask):
        lo, hi = edges[i], edges[i + 1]
        if hi <= lo:
            continue
        reference = power(audio[lo:hi])
        if reference < SILENCE:
            reference = clip_power if clip_power >= SILENCE else SILENCE
        noise = babble[lo:hi] if babble is not None else None
        if noise is None or power(noise) < SILENCE:
            noise = rng.standard_normal(hi - lo)
        audio[lo:hi] += at_snr(noise, reference, corruption.value)


def _corrupt_frames(frames: np.ndarray, mask: np.ndarray, corruption: Corruption, rng: np.random.Generator) -> None:
    """Corrupt the masked frames of uint8 ``frames`` [T, H, W, 3] in place (in segment order, so a
    frozen burst repeats the last frame before it)."""
    height, width = frames.shape[1:3]
    for i in np.flatnonzero(mask):
        if corruption.name == "freeze":
            frames[i] = frames[i - 1]
            continue
        image = Image.fromarray(frames[i])
        if corruption.name == "blur":
            radius = corruption.value * min(height, width) / BLUR_REFERENCE
            image = image.filter(ImageFilter.GaussianBlur(radius))
        else:  # occlude
            side = math.sqrt(corruption.value)
            box_w, box_h = max(1, round(width * side)), max(1, round(height * side))
            x, y = int(rng.integers(0, width - box_w + 1)), int(rng.integers(0, height - box_h + 1))
            ImageDraw.Draw(image).rectangle((x, y, x + box_w - 1, y + box_h - 1), fill=(0, 0, 0))
        frames[i] = np.asarray(image)


# --------------------------------------------------------------------------- parsing


def parse(spec: str, seed: int = 0) -> Degradation | None:
    """The :class:`Degradation` of a spec (None for an empty spec); a bad spec is a one-line UserError."""
    clauses = [clause.strip() for clause in (spec or "").split(";") if clause.strip()]
    if not clauses:
        return None
    return Degradation(tuple(_parse_clause(clause) for clause in clauses), int(seed))


def _parse_clause(text: str) -> Corruption:
    def fail(problem: str):
        raise UserError(f"--degrade '{text}': {problem}")

    modality, colon, rest = text.partition(":")
    modality = modality.strip().lower()
    if not colon:
        fail(f"expected MODALITY:CORRUPTION[=VALUE][,share=P][,pick=burst|independent], {_EXAMPLE}")
    if modality not in CORRUPTIONS:
        fail(f"unknown modality '{modality}'; choose one of: {', '.join(CORRUPTIONS)}")
    head, *options = rest.split(",")
    name, has_value, raw = (part.strip() for part in head.partition("="))
    name = name.lower()
    if name not in CORRUPTIONS[modality]:
        fail(f"unknown corruption '{name}' for {modality}; choose one of: {', '.join(CORRUPTIONS[modality])}")
    value = _value(name, CORRUPTIONS[modality][name], raw if has_value else None, fail)
    settings: dict[str, str] = {}
    for option in options:
        key, has_value, raw = (part.strip() for part in option.partition("="))
        key = key.lower()
        if key not in ("share", "pick"):
            fail(f"unknown option '{key}'; the options are share=P and pick=burst|independent")
        if not has_value:
            fail(f"{key} needs a value ({key}=...)")
        if key in settings:
            fail(f"{key} is given twice")
        settings[key] = raw
    share = _number(settings.get("share", "1"))
    if share is None or not 0.0 < share <= 1.0:
        fail(f"share must be a number in (0, 1], got '{settings['share']}'")
    pick = settings.get("pick", "burst").lower()
    if pick not in PICKS:
        fail(f"pick must be one of: {', '.join(PICKS)}; got '{pick}'")
    return Corruption(modality, name, value, share, pick)


def _number(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _value(name: str, kind: str, raw: str | None, fail) -> float | None:
    """The corruption's value from its text, checked for its kind."""
    if not kind:
        if raw is not None:
            fail(f"{name} takes no value, got '{name}={raw}'")
        return None
    if kind == "snr":
        number = _number(raw[:-2] if raw and raw.lower().endswith("db") else raw or "")
        if number is None:
            fail(f"{name} needs an SNR in dB, e.g. {name}=0dB; got '{raw or ''}'")
        return number
    number = _number(raw or "")
    if kind == "radius" and (number is None or number <= 0):
        fail(f"blur needs a radius in pixels > 0, e.g. blur=3; got '{raw or ''}'")
    if kind == "area" and (number is None or not 0 < number <= 1):
        fail(f"occlude needs the share of the frame it covers in (0, 1], e.g. occlude=0.25; got '{raw or ''}'")
    return number
