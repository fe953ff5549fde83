"""``handcrafted``: weight-free signal descriptors (DESIGN section 4), fast on CPU; not pretrained, not joint.

Audio: per-segment log-mel statistics with loudness, onset and spectral-shape cues. Vision: per-frame
spatial colour and gradient grids. Questions: hashed word and bigram tokens. The text encoder and the
clip-array helper are shared with ``npy``.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from ..features import EncoderInfo
from ..media import AUDIO_RATE, Clip
from .preprocessing import l2_normalise


def split_segments(x: np.ndarray, segments: int) -> np.ndarray:
    """[S, ...] -> [T, S // T, ...]: T equal consecutive segments (the remainder at the end is dropped)."""
    per = max(len(x) // segments, 1)
    if len(x) < segments * per:  # fewer samples than segments: repeat the last one
        x = np.concatenate([x, np.repeat(x[-1:], segments * per - len(x), axis=0)])
    return x[: segments * per].reshape(segments, per, *x.shape[1:])


# --------------------------------------------------------------------------- audio


def mel_filterbank(n_mels: int, n_fft: int, rate: int, fmin: float, fmax: float) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular filters equally spaced on the HTK mel scale."""

    def to_mel(hz):
        return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)

    def to_hz(mel):
        return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)

    edges = to_hz(np.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2))
    bins = np.linspace(0.0, rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lower) / (centre - lower)
    falling = (upper - bins[None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


class HandcraftedAudio:
    """Per-segment log-mel statistics plus loudness, onset and spectral-shape cues.

    Token layout (``dim`` = 2 * n_mels + 8): mean log-mel per band (timbre and pitch register),
    std of log-mel per band (vibrato, attacks), then loudness mean / max / std (how loud and how
    steady: counting and comparative questions), onset-strength mean / max (spectral flux:
    rhythm, note starts), spectral centroid (brightness), spectral flatness (noise vs tone) and
    zero-crossing rate. Log values are natural logs of power.
    """

    def __init__(self, segments: int, n_mels: int = 64, n_fft: int = 512, hop: int = 256,
                 fmin: float = 50.0, fmax: float = 8000.0):
        self.segments = segments
        self.n_mels, self.n_fft, self.hop = n_mels, n_fft, hop
        self.fmin, self.fmax = fmin, fmax
        self.window = np.hanning(n_fft).astype(np.float32)
        self.filters = mel_filterbank(n_mels, n_fft, AUDIO_RATE, fmin, fmax)
        self.freqs = np.linspace(0.0, 1.0, n_fft // 2 + 1, dtype=np.float32)  # fraction of Nyquist
        self.dim = 2 * n_mels + 8

    @property
    def constants(self) -> dict:
        return {
            "audio_rate": AUDIO_RATE, "n_mels": self.n_mels, "n_fft": self.n_fft, "hop": self.hop,
            "fmin": self.fmin, "fmax": self.fmax, "window": "hann", "mel_scale": "htk", "log": "ln(power+1e-8)",
        }  # fmt: skip

    def power_frames(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-segment STFT power [T, F, n_fft//2+1] and the raw samples [T, S/T]."""
        samples = split_segments(np.asarray(audio, np.float32), self.segments)
        if samples.shape[1] < self.n_fft:
            samples = np.pad(samples, ((0, 0), (0, self.n_fft - samples.shape[1])))
        windows = np.lib.stride_tricks.sliding_window_view(samples, self.n_fft, axis=1)[:, :: self.hop]
        spectrum = np.fft.rfft(windows * self.window, axis=-1)
        return (spectrum.real**2 + spectrum.imag**2).astype(np.float32), samples

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """float32 [T, dim] tokens of one clip's 16 kHz mono track."""
        power, samples = self.power_frames(audio)
        log_mel = np.log(power @ self.filters.T + 1e-8)  # [T, F, n_mels]
        loudness = np.log(power.mean(axis=-1) + 1e-8)  # [T, F]
        flux = np.maximum(np.diff(log_mel, axis=1), 0.0).mean(axis=-1)  # [T, F-1]
        if flux.shape[1] == 0:
            flux = np.zeros((self.segments, 1), np.float32)
        total = power.sum(axis=-1) + 1e-12
        centroid = (power * self.freqs).sum(axis=-1) / total
        flatness = np.exp(np.log(power + 1e-12).mean(axis=-1)) / (power.mean(axis=-1) + 1e-12)
        zcr = (np.abs(np.diff(np.signbit(samples).astype(np.int8), axis=1)) > 0).mean(axis=1)
        cues = np.stack([
            loudness.mean(1), loudness.max(1), loudness.std(1), flux.mean(1), flux.max(1),
            centroid.mean(1), flatness.mean(1), zcr,
        ], axis=1)  # fmt: skip
        return np.concatenate([log_mel.mean(1), log_mel.std(1), cues], axis=1).astype(np.float32)


# --------------------------------------------------------------------------- vision


class HandcraftedVisual:
    """Per-frame spatial grid (3 columns x 2 rows) of colour, gradient and motion statistics.

    Per cell (``cell_dim`` = 18): mean R, G, B; luminance std; an 8-bin hue histogram weighted by
    saturation (which coloured objects are in the cell); mean gradient magnitude and a 4-bin
    gradient-orientation histogram (shape and texture); mean absolute luminance change from the
    previous sampled frame (motion: who is playing). Cells are ordered row by row, left to right,
    so left / middle / right are distinct positions of the token.
    """

    def __init__(self, columns: int = 3, rows: int = 2, hue_bins: int = 8, orientation_bins: int = 4,
                 frame_size: tuple[int, int] = (64, 64)):
        self.columns, self.rows = columns, rows
        self.hue_bins, self.orientation_bins = hue_bins, orientation_bins
        self.frame_size = frame_size
        self.cell_dim = 3 + 1 + hue_bins + 1 + orientation_bins + 1
        self.dim = columns * rows * self.cell_dim
        self._hue_bins, self._saturation = self._hue_table()
        self._layouts: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @property
    def constants(self) -> dict:
        return {
            "grid_columns": self.columns, "grid_rows": self.rows, "hue_bins": self.hue_bins,
            "orientation_bins": self.orientation_bins, "frame_size": list(self.frame_size),
        }  # fmt: skip

    def _cell_index(self, height: int, width: int) -> np.ndarray:
        """[H * W] grid cell of every pixel, row by row, left to right."""
        rows = np.minimum(np.arange(height) * self.rows // height, self.rows - 1)
        cols = np.minimum(np.arange(width) * self.columns // width, self.columns - 1)
        return (rows[:, None] * self.columns + cols[None, :]).reshape(-1)

    def _layout(self, count: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For a frame size (cached): the [cells, H*W] cell-mean matrix, the [T, H, W] (frame, cell)
        key of every pixel, and the [cells] pixel counts."""
        key = (count, height, width)
        if key not in self._layouts:
            cell = self._cell_index(height, width)
            cells = self.rows * self.columns
            sizes = np.bincount(cell, minlength=cells).astype(np.float32)
            membership = np.zeros((cells, height * width), np.float32)
            membership[cell, np.arange(height * width)] = 1.0 / sizes[cell]
            keys = (np.arange(count)[:, None] * cells + cell[None, :]).reshape(count, height, width)
            self._layouts[key] = (membership, keys, sizes)
        return self._layouts[key]

    def _histograms(self, cell_keys: np.ndarray, bins: np.ndarray, weights: np.ndarray, n_bins: int) -> np.ndarray:
        """[T, cells, n_bins] weighted per-cell histograms (sums; divided by the cell size later)."""
        total = cell_keys.max() + 1 if cell_keys.size else 0
        flat = np.bincount((cell_keys * n_bins + bins).reshape(-1), weights.reshape(-1), minlength=total * n_bins)
        return flat.reshape(-1, self.rows * self.columns, n_bins)

    def _hue_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Hue bin and saturation of every colour quantised to 5 bits per channel (a 32^3 table:
        a lookup is far faster than the per-pixel HSV formula)."""
        levels = (np.arange(32, dtype=np.float32) + 0.5) / 32.0
        r, g, b = np.meshgrid(levels, levels, levels, indexing="ij")
        rgb = np.stack([r, g, b], axis=-1).reshape(-1, 3)
        high, low = rgb.max(axis=-1), rgb.min(axis=-1)
        chroma = high - low
        r, g, b = rgb.T
        safe = np.where(chroma > 0, chroma, 1.0)  # grey: hue 0, and its weight (saturation) is 0
        hue = np.where(high == r, (g - b) / safe, np.where(high == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
        hue = np.where(hue < 0, hue + 6.0, hue)
        bins = np.minimum((hue * (self.hue_bins / 6.0)).astype(np.int64), self.hue_bins - 1)
        return bins, (chroma / high).astype(np.float32)

    def _hue(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per pixel of uint8 frames: hue bin and saturation (its weight: grey pixels carry no hue)."""
        q = frames >> 3
        index = (q[..., 0].astype(np.int32) << 10) | (q[..., 1].astype(np.int32) << 5) | q[..., 2]
        return self._hue_bins[index], self._saturation[index]

    def _gradients(self, lum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per pixel: central-difference gradient magnitude and its unsigned orientation bin."""
        dx = np.zeros_like(lum)
        dy = np.zeros_like(lum)
        dx[:, :, 1:-1] = (lum[:, :, 2:] - lum[:, :, :-2]) / 2
        dy[:, 1:-1] = (lum[:, 2:] - lum[:, :-2]) / 2
        angle = np.arctan2(dy, dx)
        angle = np.where(angle < 0, angle + np.pi, angle)  # unsigned orientation in [0, pi]
        bins = np.minimum((angle * (self.orientation_bins / np.pi)).astype(np.int64), self.orientation_bins - 1)
        return np.sqrt(dx**2 + dy**2), bins

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """float32 [T, dim] tokens of one clip's uint8 [T, H, W, 3] frames."""
        count, height, width = frames.shape[:3]
        rgb = np.asarray(frames, np.float32) * (1.0 / 255.0)
        lum = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
        motion = np.abs(np.diff(lum, axis=0))
        motion = np.concatenate([motion[:1], motion], axis=0) if len(motion) else np.zeros_like(lum)
        magnitude, orientation = self._gradients(lum)
        hue, saturation = self._hue(np.asarray(frames, np.uint8))

        membership, keys, sizes = self._layout(count, height, width)
        maps = np.concatenate([rgb, lum[..., None], (lum**2)[..., None], magnitude[..., None], motion[..., None]], -1)
        means = membership @ maps.reshape(count, height * width, -1)  # [T, cells, 7]
        lum_std = np.sqrt(np.maximum(means[..., 4] - means[..., 3] ** 2, 0.0))

        hue_hist = self._histograms(keys, hue, saturation, self.hue_bins) / sizes[:, None]
        orient_hist = self._histograms(keys, orientation, magnitude, self.orientation_bins) / sizes[:, None]
        tokens = np.concatenate([
            means[..., :3], lum_std[..., None], hue_hist, means[..., 5:6], orient_hist, means[..., 6:7],
        ], axis=-1)  # fmt: skip  [T, cells, cell_dim]
        return tokens.reshape(count, self.dim).astype(np.float32)


# --------------------------------------------------------------------------- text


def tokenize(text: str) -> list[str]:
    """Lower-case words: letters, digits and underscores (so ``acoustic_guitar`` stays one word)."""
    words, current = [], []
    for char in text.lower():
        if char.isalnum() or char == "_":
            current.append(char)
        elif current:
            words.append("".join(current))
            current = []
    if current:
        words.append("".join(current))
    return words


class HashedText:
    """Hashed word + bigram question tokens (no vocabulary, no weights).

    Token i = the word's two signed hash buckets (weight 1 each) plus the bigram (word i-1, word i)
    in one signed bucket (weight 0.5), L2-normalised. Hashes are CRC32 (stable across processes,
    unlike Python's ``hash``). Questions longer than ``max_tokens`` words are truncated.
    """

    def __init__(self, dim: int = 256, max_tokens: int = 20):
        self.dim, self.max_tokens = dim, max_tokens

    @property
    def constants(self) -> dict:
        return {"text_dim": self.dim, "max_tokens": self.max_tokens, "hash": "crc32", "bigram_weight": 0.5}

    def _add(self, vector: np.ndarray, key: str, weight: float) -> None:
        code = zlib.crc32(key.encode("utf-8"))
        vector[code % self.dim] += weight if (code >> 31) & 1 else -weight

    def token(self, previous: str | None, word: str) -> np.ndarray:
        vector = np.zeros(self.dim, np.float32)
        self._add(vector, f"w1:{word}", 1.0)
        self._add(vector, f"w2:{word}", 1.0)
        if previous is not None:
            self._add(vector, f"bi:{previous} {word}", 0.5)
        return l2_normalise(vector)

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """tokens float32 [N, L, dim], mask bool [N, L], global float32 [N, dim] (L2-normalised mean)."""
        tokens = np.zeros((len(texts), self.max_tokens, self.dim), np.float32)
        mask = np.zeros((len(texts), self.max_tokens), bool)
        for row, text in enumerate(texts):
            words = tokenize(text)[: self.max_tokens]
            for i, word in enumerate(words):
                tokens[row, i] = self.token(words[i - 1] if i else None, word)
            mask[row, : len(words)] = True
        counts = np.maximum(mask.sum(axis=1, keepdims=True), 1)
        return {"tokens": tokens, "mask": mask, "global": l2_normalise(tokens.sum(axis=1) / counts)}


# --------------------------------------------------------------------------- encoders


def clip_arrays(audio: np.ndarray, visual: np.ndarray) -> dict[str, np.ndarray]:
    """Tokens plus their L2-normalised mean as the global vectors."""
    return {
        "audio": audio.astype(np.float32),
        "visual": visual.astype(np.float32),
        "audio_global": l2_normalise(audio.mean(axis=0)),
        "visual_global": l2_normalise(visual.mean(axis=0)),
    }


class HandcraftedEncoder:
    """``handcrafted``: weight-free signal descriptors, fast on CPU; not pretrained, not joint."""

    VERSION = "1"
    encode_in_workers = True  # cheap, CPU-only and picklable: encode where the clip is decoded

    def __init__(self, segments: int):
        self.audio = HandcraftedAudio(segments)
        self.visual = HandcraftedVisual()
        self.text = HashedText()
        self.frame_size = self.visual.frame_size
        self.info = EncoderInfo(
            encoder="handcrafted",
            encoder_version=self.VERSION,
            segments=segments,
            dims={
                "audio": self.audio.dim, "visual": self.visual.dim, "text": self.text.dim,
                "audio_global": self.audio.dim, "visual_global": self.visual.dim, "text_global": self.text.dim,
            },  # fmt: skip
            question_tokens=self.text.max_tokens,
            joint_space=False,
            pretrained=False,
            preprocessing={**self.audio.constants, **self.visual.constants, **self.text.constants},
        )

    def encode_clips(self, clips: list[Clip]) -> list[dict[str, np.ndarray]]:
        return [clip_arrays(self.audio.encode(c.audio), self.visual.encode(c.frames)) for c in clips]

    def encode_texts(self, texts: list[str]) -> dict[str, np.ndarray]:
        return self.text.encode(texts)

