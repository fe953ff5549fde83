"""Media decoding: frame sampling at segment centres, 16 kHz audio, padding rule, failures."""

from fractions import Fraction

import av
import numpy as np
import pytest

from r2scp_cli.media import (
    AUDIO_RATE,
    ClipFailure,
    _FrameSampler,
    decode_clip,
    extend_audio,
    frame_times,
    write_mp4,
)

LEVEL = 8  # frame k is filled with grey level k * LEVEL, so a decoded frame tells its index


def indexed_frames(count: int, size: int = 32) -> np.ndarray:
    frames = np.zeros((count, size, size, 3), np.uint8)
    for k in range(count):
        frames[k] = k * LEVEL
    return frames


def frame_indices(frames: np.ndarray) -> list[int]:
    return [int(round(f.mean() / LEVEL)) for f in frames]


def click(seconds: float, at: float, rate: int = AUDIO_RATE) -> np.ndarray:
    audio = np.zeros(int(seconds * rate), np.float32)
    audio[int(at * rate) : int(at * rate) + 40] = 0.9
    return audio


@pytest.mark.parametrize(
    "count, fps, segments, expected",
    [
        (16, 4, 8, [1, 3, 5, 7, 9, 11, 13, 15]),  # centres 0.25, 0.75, ... s fall on frames 1, 3, ...
        (16, 4, 4, [2, 6, 10, 14]),
        (16, 4, 5, [1, 4, 8, 11, 14]),  # floor((i + 0.5) * 16 / 5)
        (30, 10, 3, [5, 15, 25]),  # every frame is a candidate, not every 18th
    ],
)
def test_frames_are_taken_at_segment_centres(tmp_path, count, fps, segments, expected):
    path = tmp_path / "clip.mp4"
    write_mp4(path, indexed_frames(count), fps, np.zeros(count * AUDIO_RATE // fps, np.float32))
    clip = decode_clip(path, segments)
    assert frame_indices(clip.frames) == expected
    assert clip.frames.shape == (segments, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.duration == pytest.approx(count / fps)


def test_frames_are_resized_to_the_encoder_frame_size(tmp_path):
    path = tmp_path / "clip.mp4"
    write_mp4(path, indexed_frames(8, size=64), 4, np.zeros(2 * AUDIO_RATE, np.float32))
    clip = decode_clip(path, 4, frame_size=(48, 24))
    assert clip.frames.shape == (4, 24, 48, 3)
    assert frame_indices(clip.frames) == [1, 3, 5, 7]


@pytest.mark.parametrize("rate", [AUDIO_RATE, 22_050])
def test_audio_is_16khz_mono_aligned_and_cut_to_the_clip(tmp_path, rate):
    path = tmp_path / "clip.mp4"
    write_mp4(path, indexed_frames(16), 4, click(4.0, at=1.0, rate=rate), sample_rate=rate)
    clip = decode_clip(path, 8)
    # AAC pads the track to whole 1024-sample frames: the decoded audio is cut to the 4 s of video
    assert clip.audio.dtype == np.float32 and clip.audio.shape == (4 * AUDIO_RATE,)
    peak = int(np.argmax(np.abs(clip.audio)))
    assert abs(peak - AUDIO_RATE) < 80  # the click is at 1.0 s: no priming offset, right rate
    assert np.abs(clip.audio[: AUDIO_RATE - 200]).max() < 0.05


def test_short_audio_repeats_its_last_segment(tmp_path):
    path = tmp_path / "clip.mp4"
    tone = (0.3 * np.sin(np.arange(2 * AUDIO_RATE) * 0.05)).astype(np.float32)
    write_mp4(path, indexed_frames(16), 4, tone)  # 4 s of video, 2 s of sound
    clip = decode_clip(path, 8)
    piece = 4 * AUDIO_RATE // 8
    assert clip.audio.shape == (4 * AUDIO_RATE,)
    assert np.array_equal(clip.audio[-piece:], clip.audio[-2 * piece : -piece])  # the tail is periodic
    assert np.abs(clip.audio[-piece:]).max() > 0.1  # ... and not silence


def test_extend_audio_cuts_and_tiles_the_last_piece():
    samples = np.arange(10, dtype=np.float32)
    assert np.array_equal(extend_audio(samples, 6, segments=2), samples[:6])
    # expected 16 samples in 4 segments: pieces of 4; the last piece [6, 7, 8, 9] is repeated
    assert extend_audio(samples, 16, segments=4).tolist() == [*range(10), 6, 7, 8, 9, 6, 7]
    assert extend_audio(np.zeros(0, np.float32), 5, segments=2).tolist() == [0.0] * 5


def test_frame_times_repeat_the_last_segment_past_the_content():
    # 8 segments over 4 s, frames only for 2 s: segments 4..7 show the centre of the last 0.5 s
    times = frame_times(4.0, 2.0, 8)
    assert times.tolist() == [0.25, 0.75, 1.25, 1.75, 1.75, 1.75, 1.75, 1.75]
    assert frame_times(4.0, 4.0, 4).tolist() == [0.5, 1.5, 2.5, 3.5]


def test_truncated_video_repeats_its_last_segment_frame():
    sampler = _FrameSampler(duration=4.0, segments=8)  # declared 4 s, frames for 2 s only
    for k in range(8):
        sampler.add(k * 0.25, av.VideoFrame.from_ndarray(indexed_frames(8)[k], format="rgb24"))
    frames, duration = sampler.frames(content_end=2.0, size=None)
    assert duration == 4.0
    assert frame_indices(frames) == [1, 3, 5, 7, 7, 7, 7, 7]


def _video_only(path, frames, fps):
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _audio_only(path, seconds):
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=AUDIO_RATE)
        stream.layout = "mono"
        samples = np.zeros(int(seconds * AUDIO_RATE), np.float32)
        for start in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, start, Fraction(1, AUDIO_RATE)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_failures_have_reasons(tmp_path):
    with pytest.raises(ClipFailure, match="^missing file"):
        decode_clip(tmp_path / "absent.mp4", 8)
    (tmp_path / "garbage.mp4").write_bytes(b"not an mp4 at all" * 50)
    with pytest.raises(ClipFailure, match="^undecodable"):
        decode_clip(tmp_path / "garbage.mp4", 8)
    good = tmp_path / "good.mp4"
    write_mp4(good, indexed_frames(8), 4, np.zeros(2 * AUDIO_RATE, np.float32))
    (tmp_path / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ClipFailure, match="^(undecodable|no video track)"):  # the cut damages the index
        decode_clip(tmp_path / "truncated.mp4", 8)
    _video_only(tmp_path / "silent.mp4", indexed_frames(8), 4)
    with pytest.raises(ClipFailure, match="^no audio track$"):
        decode_clip(tmp_path / "silent.mp4", 8)
    _audio_only(tmp_path / "blind.mp4", 1.0)
    with pytest.raises(ClipFailure, match="^no video track$"):
        decode_clip(tmp_path / "blind.mp4", 8)
