"""``npy``: per-video feature arrays as released for MUSIC-AVQA (VGGish audio, ResNet-18 frames)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from ..features import EncoderInfo
from ..media import Clip, ClipFailure
from .handcrafted import HashedText, clip_arrays


def resample_segments(array: np.ndarray, segments: int) -> np.ndarray:
    """[N, D] -> [T, D]: the mean of each of T equal spans of the N rows (rows shared by two spans
    count in both by their overlap). N < T repeats rows."""
    array = np.asarray(array, np.float32)
    n = len(array)
    edges = np.linspace(0.0, n, segments + 1)
    out = np.empty((segments, array.shape[1]), np.float32)
    for t in range(segments):
        lo, hi = edges[t], edges[t + 1]
        rows = np.arange(int(np.floor(lo)), min(int(np.ceil(hi)), n))
        weights = np.minimum(rows + 1, hi) - np.maximum(rows, lo)
        out[t] = weights @ array[rows] / weights.sum()
    return out


class NpyEncoder:
    """``npy``: per-video feature arrays as released for MUSIC-AVQA (VGGish [60, 128] audio,
    ResNet-18 [60, 512] visual), averaged into T segments; questions by :class:`HashedText`."""

    VERSION = "1"
    DIMS = {"audio": 128, "visual": 512}

    def __init__(self, segments: int, audio_dir: Path, visual_dir: Path):
        for flag, directory in (("--audio-npy", audio_dir), ("--visual-npy", visual_dir)):
            if directory is None:
                raise UserError(f"--encoder npy needs {flag} DIR")
            if not Path(directory).is_dir():
                raise UserError(f"{directory}: {flag} directory not found")
        self.segments = segments
        self.dirs = {"audio": Path(audio_dir), "visual": Path(visual_dir)}
        self.text = HashedText()
        self.info = EncoderInfo(
            encoder="npy",
            encoder_version=self.VERSION,
            segments=segments,
            dims={**self.DIMS, "text": self.text.dim, "audio_global": self.DIMS["audio"],
                  "visual_global": self.DIMS["visual"], "text_global": self.text.dim},  # fmt: skip
            question_tokens=self.text.max_tokens,
            joint_space=False,
            pretrained=True,  # VGGish and ResNet-18 were trained on other data
            preprocessing={"resample": "segment mean", "audio_npy": str(audio_dir), "visual_npy": str(visual_dir),
                           **self.text.constants},  # fmt: skip
        )

    def load_clip(self, video_id: str) -> Clip:
        """The video's two arrays, checked for shape; a missing or malformed file is a ClipFailure."""
        features = {}
        for name, directory in self.dirs.items():
            path = directory / f"{video_id}.npy"
            if not path.exists():
                raise ClipFailure(f"missing {name} npy: {path}")
            try:
                array = np.load(path)
            except (OSError, ValueError) as error:
                raise ClipFailure(f"unreadable {name} npy {path}: {error}") from None
            if array.ndim != 2 or array.shape[1] != self.DIMS[name] or len(array) == 0:
                raise ClipFailure(f"{name} npy {path} has shape {list(array.shape)}, expected [N, {self.DIMS[name]}]")
            features[name] = array
        empty = np.zeros((0, 0, 0, 3), np.uint8)
        return Clip(video_id, empty, np.zeros(0, np.float32), 0.0, features)

    def encode_clips(self, clips: list[Clip]) -> list[dict[str, np.ndarray]]:
        return [
            clip_arrays(
                resample_segments(c.features["audio"], self.segments),
                resample_segments(c.features["visual"], self.segments),
            )
            for c in clips
        ]

    def encode_texts(self, texts: list[str]) -> dict[str, np.ndarray]:
        return self.text.encode(texts)
