"""PyAV encoding and decoding of clips: H.264 frames plus a mono AAC track, as in real AVQA videos.

:func:`write_mp4` makes clips (the built-in dataset, test fixtures); :func:`decode_clip` reads one
back in a single pass: T frames at segment centres and 16 kHz mono audio (rules below).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

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


# --------------------------------------------------------------------------- decoding
#
# Sampling and padding rules (one place, both modalities):
# * The clip's duration D is the video stream's declared duration (the picture defines the clip;
#   the AAC track is usually a little longer because of its 1024-sample frames and is cut to D).
# * Segment i of T covers [i D/T, (i+1) D/T); its frame is the one on screen at the segment's
#   centre (the last frame whose timestamp is <= the centre), so every frame of a clip is a
#   candidate: no frame-skipping stride.
# * A modality whose content ends at d < D (a truncated video, a short audio track) is extended
#   by repeating its last segment-length piece, the final D/T seconds of content: the audio piece
#   is tiled until D, and a segment whose centre lies past the end takes that piece's centre frame.


@dataclass
class Clip:
    """One decoded video: T frames at the centres of T equal segments and its whole audio track.

    ``features`` carries precomputed per-segment arrays for encoders that read no media (``npy``).
    """

    video_id: str
    frames: np.ndarray  # uint8 [T, H, W, 3]
    audio: np.ndarray  # float32 [S], 16 kHz mono, S = round(duration * 16000)
    duration: float  # seconds
    features: dict[str, np.ndarray] = field(default_factory=dict)


class ClipFailure(Exception):
    """A video whose inputs cannot be read; ``str(error)`` is the reason stored in the failure list."""


def segment_centres(duration: float, segments: int) -> np.ndarray:
    """[T] centre times (s) of T equal segments of a clip of ``duration`` seconds."""
    return (np.arange(segments) + 0.5) * (duration / segments)


def frame_times(duration: float, content_end: float, segments: int) -> np.ndarray:
    """[T] the time whose frame each segment shows: its centre, or for a centre at or past the end
    of the decoded frames (``content_end`` < ``duration``) the centre of the last segment-length
    piece of content (the "repeat the last segment" rule)."""
    centres = segment_centres(duration, segments)
    piece = duration / segments
    repeat = max(content_end - piece / 2, 0.0)
    return np.where(centres < content_end, centres, repeat)


def extend_audio(samples: np.ndarray, expected: int, segments: int) -> np.ndarray:
    """Cut ``samples`` to ``expected`` length, or extend a short track by tiling its last
    segment-length piece (``expected // segments`` samples) until it is long enough."""
    samples = np.asarray(samples, np.float32)
    if len(samples) >= expected:
        return samples[:expected]
    if len(samples) == 0:
        return np.zeros(expected, np.float32)
    piece = samples[-max(expected // segments, 1) :]
    repeats = -(-(expected - len(samples)) // len(piece))
    return np.concatenate([samples, np.tile(piece, repeats)])[:expected]


def _declared_duration(container, video) -> float | None:
    """The video stream's declared duration in seconds (container duration as a fallback)."""
    if video.duration and video.time_base is not None:
        return float(video.duration * video.time_base)
    if container.duration:
        return container.duration / 1_000_000
    return None


class _FrameSampler:
    """Picks the frame on screen at each segment centre while the frames stream past.

    It holds only the picked frames and the frames of the last half segment (for the repeat rule),
    not the whole clip: a 60 s clip at 30 fps would otherwise keep 1,800 decoded frames.
    """

    def __init__(self, duration: float | None, segments: int):
        self.duration, self.segments = duration, segments
        self.centres = segment_centres(duration, segments) if duration else None
        self.picked: dict[int, av.VideoFrame] = {}
        self.next = 0  # the first segment whose frame is not yet known
        self.recent: deque[tuple[float, av.VideoFrame]] = deque()

    def add(self, time: float, frame: "av.VideoFrame") -> None:
        if self.centres is None:  # no declared duration: keep every frame until the end is known
            self.recent.append((time, frame))
            return
        while self.next < self.segments and time > self.centres[self.next] + _EPS:
            self.picked[self.next] = self.recent[-1][1] if self.recent else frame
            self.next += 1
        self.recent.append((time, frame))
        horizon = time - self.duration / self.segments / 2
        while len(self.recent) >= 2 and self.recent[1][0] <= horizon:
            self.recent.popleft()

    def frames(self, content_end: float, size: tuple[int, int] | None) -> tuple[np.ndarray, float]:
        """uint8 [T, H, W, 3] picked frames and the clip duration used."""
        duration = self.duration or content_end
        times = frame_times(duration, content_end, self.segments)
        stamps = np.array([t for t, _ in self.recent])
        chosen = []
        for index, time in enumerate(times):
            if index in self.picked:
                chosen.append(self.picked[index])
            else:
                at = max(int(np.searchsorted(stamps, time + _EPS, side="right")) - 1, 0)
                chosen.append(self.recent[at][1])
        width, height = size if size else (None, None)
        converted: dict[int, np.ndarray] = {}
        for frame in chosen:
            if id(frame) not in converted:
                rgb = _REFORMATTER.reformat(frame, width, height, "rgb24", interpolation="AREA")
                converted[id(frame)] = rgb.to_ndarray()
        return np.stack([converted[id(frame)] for frame in chosen]), duration


_REFORMATTER = VideoReformatter()  # one per process: it keeps its scaler while the frame size stays
_EPS = 1e-6  # seconds: a frame stamped exactly at a segment centre is that centre's frame


def _audio_samples(frame: "av.AudioFrame", resampler: "av.AudioResampler") -> list[np.ndarray]:
    """A decoded audio frame as 16 kHz mono float32 blocks (no resampling when it already is)."""
    if frame.sample_rate == AUDIO_RATE and frame.format.name in ("flt", "fltp") and len(frame.layout.channels) == 1:
        return [frame.to_ndarray().reshape(-1)]
    return [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]


def _decode_streams(container, sampler: _FrameSampler) -> tuple[np.ndarray, float]:
    """One pass over the file: feed video frames to the sampler; return the resampled audio
    (aligned to the video start) and the end time of the video content."""
    video, audio = container.streams.video[0], container.streams.audio[0]
    resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
    start = float(video.start_time * video.time_base) if video.start_time is not None else 0.0
    chunks: list[np.ndarray] = []
    audio_start: float | None = None
    last, step, count = None, 0.0, 0
    for packet in container.demux(video, audio):
        for frame in packet.decode():
            if isinstance(frame, av.AudioFrame):
                if audio_start is None:
                    audio_start = (frame.time if frame.time is not None else start) - start
                chunks.extend(_audio_samples(frame, resampler))
                continue
            time = frame.time - start if frame.time is not None else count * step
            if last is not None and time > last:
                step = time - last
            sampler.add(time, frame)
            last, count = time, count + 1
    chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    if last is None:
        raise ClipFailure("undecodable: no video frames")
    if step == 0.0 and video.average_rate:
        step = 1.0 / float(video.average_rate)
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    offset = round((audio_start or 0.0) * AUDIO_RATE)  # >0: audio starts late; <0: starts early
    samples = np.concatenate([np.zeros(offset, np.float32), samples]) if offset > 0 else samples[-offset:]
    return samples, last + step


def frame_size_of(path: Path) -> tuple[int, int] | None:
    """(width, height) of the first video stream of ``path``, or None when it cannot be read."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return int(stream.codec_context.width), int(stream.codec_context.height)
    except (av.FFmpegError, OSError, IndexError, ValueError):
        return None


def decode_clip(path: Path, segments: int, frame_size: tuple[int, int] | None = None,
                video_id: str | None = None) -> Clip:
    """Decode an mp4 once: T frames at the segment centres (resized to ``frame_size`` = (width,
    height) when given) and its audio as 16 kHz mono, cut or extended to the clip duration.

    Raises :class:`ClipFailure` with a short reason: ``missing file``, ``undecodable: ...``,
    ``no video track``, ``no audio track``.
    """
    path = Path(path)
    if not path.exists():
        raise ClipFailure(f"missing file: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ClipFailure("no video track")
            if not container.streams.audio:
                raise ClipFailure("no audio track")
            sampler = _FrameSampler(_declared_duration(container, container.streams.video[0]), segments)
            samples, content_end = _decode_streams(container, sampler)
            frames, duration = sampler.frames(content_end, frame_size)
    except ClipFailure:
        raise
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as error:
        raise ClipFailure(f"undecodable: {error}") from None
    audio = extend_audio(samples, round(duration * AUDIO_RATE), segments)
    return Clip(video_id or path.stem, frames, audio, duration)
