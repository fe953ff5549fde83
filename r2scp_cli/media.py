"""PyAV encoding and decoding of clips: H.264 frames plus a mono AAC track, as in real AVQA videos."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

AUDIO_RATE = 16_000  # every decoded track is resampled to 16 kHz mono


def write_mp4(path: Path, frames: np.ndarray, fps: int, audio: np.ndarray, sample_rate: int = AUDIO_RATE) -> None:
    """Write ``frames`` (uint8 [N, H, W, 3]) at ``fps`` and ``audio`` (float32 [S] in [-1, 1]) to ``path``.

    Encoding is deterministic for the same inputs (single-threaded x264, fixed CRF).
    """
    path = Path(path)
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    height, width = frames.shape[1:3]
    with av.open(str(path), mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height = width, height
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "20", "preset": "veryfast", "threads": "1", "tune": "zerolatency"}
        sound = container.add_stream("aac", rate=sample_rate)
        sound.layout = "mono"
        for frame in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        samples = np.clip(np.asarray(audio, np.float32), -1.0, 1.0)
        chunk = 1024  # AAC frame size
        for start in range(0, len(samples), chunk):
            block = samples[start : start + chunk]
            if len(block) < chunk:
                block = np.pad(block, (0, chunk - len(block)))
            frame = av.AudioFrame.from_ndarray(block[None, :], format="flt", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            frame.time_base = Fraction(1, sample_rate)
            for packet in sound.encode(frame):
                container.mux(packet)
        for packet in sound.encode():
            container.mux(packet)
