"""Model input preprocessing for the pretrained encoders, reimplemented in numpy and Pillow (and,
for ImageBind on a GPU, in torch on the device).

The upstream loaders need torchaudio / torchvision / essentia, which do not install beside the
torch this project pins, so each recipe is written out here from its specification:

* :func:`kaldi_fbank` -- Kaldi's log mel filterbank as ``torchaudio.compliance.kaldi.fbank``
  computes it (ImageBind's audio input): frames cut with snip-edges, per-frame DC removal,
  pre-emphasis 0.97, a symmetric Hann ("hanning") window, power spectrum of a zero-padded
  power-of-two FFT, triangular filters on Kaldi's mel scale ``1127 ln(1 + f / 700)``, natural
  log floored at float32 epsilon.
* :func:`imagebind_audio` -- ImageBind's clip recipe on top: 2-s windows, mean removed, 128 bins,
  padded or cut to 204 frames, normalised ``(x + 4.268) / 9.138``.
* :func:`sfx_log_mel` -- the aiSFX sound-effect network's input (its ISMIR 2022 Essentia recipe):
  44.1 kHz, 2048-sample Hann frames every 1024 samples, power mel bands (HTK mel, triangles in
  the mel domain, each band's weights summing to one), ``log10(1e4 x + 1)`` scaled by the
  training maximum 9.4578; the track is peak-normalised as aiSFX's librosa path does (its
  Essentia loader applied a replay gain instead).
* :func:`clip_images` / :func:`squashed_images` -- frames resized (bicubic) and normalised.
* :func:`imagebind_audio_on` / :func:`clip_images_on` -- ImageBind's two inputs computed by torch
  on any device (the extractor's path on CUDA, where the numpy one bounds the GPU): the same
  recipes, float32, the fbank within float rounding of :func:`kaldi_fbank`; the resize is torch's
  antialiased bicubic (Pillow's kernel, a = -0.5) in Pillow's two passes, each rounded to 8 bits:
  within 2 grey levels of :func:`clip_images`' frames, on under 1 % of the pixels.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image

AUDIO_RATE = 16_000  # Hz of every Clip.audio (media.AUDIO_RATE); this module imports no decoder


def l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """float32 ``x`` divided by its L2 norm along ``axis`` (zero vectors stay zero)."""
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)



def segment_centres(duration: float, segments: int) -> np.ndarray:
    """[T] centre times (s) of T equal segments, as media.segment_centres places the frames."""
    return (np.arange(segments) + 0.5) * (duration / segments)


# --------------------------------------------------------------------------- Kaldi fbank

KALDI_FRAME_MS = 25.0
KALDI_SHIFT_MS = 10.0
KALDI_PREEMPHASIS = 0.97
KALDI_LOW_HZ = 20.0
FLOAT32_EPS = float(np.finfo(np.float32).eps)

IMAGEBIND_AUDIO = {
    "rate": AUDIO_RATE,
    "clip_seconds": 2.0,
    "mel_bins": 128,
    "target_frames": 204,
    "mean": -4.268,
    "std": 9.138,
}


def kaldi_mel(hz: np.ndarray | float) -> np.ndarray:
    """Kaldi's mel scale: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)


def kaldi_mel_banks(num_bins: int, padded_window: int, rate: int, low_hz: float = KALDI_LOW_HZ,
                    high_hz: float | None = None) -> np.ndarray:
    """[num_bins, padded_window // 2 + 1] triangular filters, equally spaced on Kaldi's mel scale.

    Triangles are linear in mel between ``low_hz`` and ``high_hz`` (Nyquist when None); the
    Nyquist FFT bin gets no weight, as in Kaldi.
    """
    high_hz = rate / 2 if high_hz is None else high_hz
    low, high = kaldi_mel(low_hz), kaldi_mel(high_hz)
    delta = (high - low) / (num_bins + 1)
    left = low + delta * np.arange(num_bins)[:, None]
    centre, right = left + delta, left + 2 * delta
    mel = kaldi_mel(np.arange(padded_window // 2) * (rate / padded_window))[None, :]
    banks = np.maximum(0.0, np.minimum((mel - left) / (centre - left), (right - mel) / (right - centre)))
    return np.pad(banks, ((0, 0), (0, 1)))  # the Nyquist bin


def kaldi_frame_count(samples: int, rate: int = AUDIO_RATE) -> int:
    """Frames Kaldi cuts from ``samples`` with snip-edges: 1 + (S - window) // shift, or 0."""
    window, shift = _kaldi_window_shift(rate)
    return 0 if samples < window else 1 + (samples - window) // shift


def _kaldi_window_shift(rate: int) -> tuple[int, int]:
    return int(rate * KALDI_FRAME_MS / 1000), int(rate * KALDI_SHIFT_MS / 1000)


@functools.lru_cache(maxsize=8)
def _kaldi_constants(num_bins: int, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """The window and the transposed filter matrix (float32) for one configuration."""
    window, _ = _kaldi_window_shift(rate)
    padded = 1 << (window - 1).bit_length()  # round up to a power of two
    banks = np.ascontiguousarray(kaldi_mel_banks(num_bins, padded, rate).T, dtype=np.float32)
    return np.hanning(window).astype(np.float32), banks


def kaldi_fbank(waveform: np.ndarray, num_bins: int, rate: int = AUDIO_RATE) -> np.ndarray:
    """float32 [..., frames, num_bins] log mel energies of mono waveforms [..., S] (no dither, no
    energy), computed in float32 as Kaldi and torchaudio do."""
    window, shift = _kaldi_window_shift(rate)
    x = np.asarray(waveform, np.float32)
    count = kaldi_frame_count(x.shape[-1], rate)
    if count == 0:
        return np.zeros((*x.shape[:-1], 0, num_bins), np.float32)
    hann, banks = _kaldi_constants(num_bins, rate)
    frames = np.lib.stride_tricks.sliding_window_view(x, window, axis=-1)[..., ::shift, :][..., :count, :]
    frames = frames - frames.mean(axis=-1, keepdims=True)  # remove DC offset
    previous = np.concatenate([frames[..., :1], frames[..., :-1]], axis=-1)
    frames = (frames - np.float32(KALDI_PREEMPHASIS) * previous) * hann  # pre-emphasis, then window
    spectrum = np.fft.rfft(frames, n=2 * (banks.shape[0] - 1), axis=-1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    energies = (power.reshape(-1, power.shape[-1]) @ banks).reshape(*power.shape[:-1], -1)  # 2-D: BLAS
    return np.log(np.maximum(energies, np.float32(FLOAT32_EPS)))


def segment_windows(audio: np.ndarray, duration: float, segments: int, length: int,
                    rate: int = AUDIO_RATE) -> list[np.ndarray]:
    """T windows of ``length`` samples centred on the segment centres, shifted to lie inside the
    track (so the first and last segments hear real sound, not padding); a track shorter than
    ``length`` gives the whole track for every segment."""
    audio = np.asarray(audio, np.float32)
    if len(audio) <= length:
        return [audio] * segments
    starts = np.round(segment_centres(duration, segments) * rate).astype(np.int64) - length // 2
    starts = np.clip(starts, 0, len(audio) - length)
    return [audio[s : s + length] for s in starts]


def imagebind_audio(audio: np.ndarray, duration: float, segments: int) -> np.ndarray:
    """float32 [T, 1, 128, 204]: one normalised fbank image per segment (ImageBind's audio input)."""
    spec = IMAGEBIND_AUDIO
    length = int(spec["clip_seconds"] * spec["rate"])
    windows = np.stack(segment_windows(audio, duration, segments, length, spec["rate"]))  # [T, S]
    if windows.shape[1]:  # an empty track stays empty: all padding
        windows = windows - windows.mean(axis=1, keepdims=True)
    fbank = kaldi_fbank(windows, spec["mel_bins"], spec["rate"])
    fbank = fbank[:, : spec["target_frames"]]
    out = np.zeros((segments, 1, spec["mel_bins"], spec["target_frames"]), np.float32)
    out[:, 0, :, : fbank.shape[1]] = fbank.transpose(0, 2, 1)  # zero-padded on the right, as upstream
    return (out - np.float32(spec["mean"])) / np.float32(spec["std"])


# --------------------------------------------------------------------------- aiSFX log-mel

SFX_AUDIO = {
    "rate": 44_100,
    "frame": 2048,
    "hop": 1024,
    "mel_bins": 96,
    "fmax": 22_050.0,
    "scale_max": 9.457798957824707,
}


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling by zero-padding (or cutting) the spectrum of the whole track."""
    audio = np.asarray(audio, np.float64)
    count = int(round(len(audio) * rate_out / rate_in))
    if len(audio) == 0 or count == 0:
        return np.zeros(count, np.float64)
    spectrum = np.fft.rfft(audio)
    out = np.zeros(count // 2 + 1, complex)
    keep = min(len(spectrum), len(out))
    out[:keep] = spectrum[:keep]
    return np.fft.irfft(out, count) * (count / len(audio))


def htk_mel_bands_unit_sum(num_bins: int, frame: int, rate: int, fmax: float) -> np.ndarray:
    """[num_bins, frame // 2 + 1] HTK-mel triangles (linear in mel from 0 Hz to ``fmax``), each
    band's weights summing to one."""
    mel = kaldi_mel(np.arange(frame // 2 + 1) * (rate / frame))[None, :]
    edges = np.linspace(0.0, kaldi_mel(fmax), num_bins + 2)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bands = np.maximum(0.0, np.minimum((mel - left) / (centre - left), (right - mel) / (right - centre)))
    return bands / np.maximum(bands.sum(axis=1, keepdims=True), 1e-12)


def sfx_log_mel(audio: np.ndarray, rate: int = AUDIO_RATE) -> np.ndarray:
    """float32 [frames, 96] scaled log mel bands of a whole track (peak-normalised first); frame i
    is centred at i * 1024 / 44100 s."""
    spec = SFX_AUDIO
    x = resample(audio, rate, spec["rate"])
    peak = np.abs(x).max() if len(x) else 0.0
    x = x / peak if peak > 0 else x
    x = np.pad(x, spec["frame"] // 2)  # frames centred on multiples of the hop
    count = 1 + (len(x) - spec["frame"]) // spec["hop"]
    frames = np.lib.stride_tricks.sliding_window_view(x, spec["frame"])[:: spec["hop"]][:count]
    power = np.abs(np.fft.rfft(frames * np.hanning(spec["frame"]), axis=1)) ** 2
    bands = power @ htk_mel_bands_unit_sum(spec["mel_bins"], spec["frame"], spec["rate"], spec["fmax"]).T
    return (np.log10(1e4 * bands + 1.0) / spec["scale_max"]).astype(np.float32)


# --------------------------------------------------------------------------- images

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _normalise(images: np.ndarray, mean: tuple, std: tuple) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] of (x / 255 - mean) / std."""
    x = images.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def resize_centre_crop(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> [size, size, 3]: the short side resized to ``size`` (bicubic, the long
    side truncated as torchvision does), then the centre crop."""
    height, width = frame.shape[:2]
    if height <= width:
        new = (int(size * width / height), size)
    else:
        new = (size, int(size * height / width))
    image = Image.fromarray(np.ascontiguousarray(frame)).resize(new, Image.BICUBIC)
    left = int(round((new[0] - size) / 2.0))
    top = int(round((new[1] - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)))


def clip_images(frames: np.ndarray, size: int = 224) -> np.ndarray:
    """float32 [N, 3, size, size]: ImageBind's vision input (short side, centre crop, CLIP stats)."""
    return _normalise(np.stack([resize_centre_crop(f, size) for f in frames]), CLIP_MEAN, CLIP_STD)


def squashed_images(frames: np.ndarray, size: int = 224) -> np.ndarray:
    """float32 [N, 3, size, size]: whole frames resized (bicubic, aspect not kept, so nothing at the
    left or right edge is cropped away), ImageNet stats."""
    resized = [
        f if f.shape[:2] == (size, size) else np.asarray(Image.fromarray(np.ascontiguousarray(f)).resize((size, size), Image.BICUBIC))
        for f in frames
    ]
    return _normalise(np.stack(resized), IMAGENET_MEAN, IMAGENET_STD)


# --------------------------------------------------------------------------- ImageBind's inputs in torch


@functools.lru_cache(maxsize=8)
def _kaldi_constants_on(num_bins: int, rate: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    hann, banks = _kaldi_constants(num_bins, rate)
    return torch.from_numpy(hann).to(device), torch.from_numpy(banks).to(device)


def kaldi_fbank_on(waveform: torch.Tensor, num_bins: int, rate: int = AUDIO_RATE) -> torch.Tensor:
    """:func:`kaldi_fbank` in torch, float32, on ``waveform``'s device: [..., S] -> [..., frames, num_bins]."""
    window, shift = _kaldi_window_shift(rate)
    count = kaldi_frame_count(waveform.shape[-1], rate)
    if count == 0:
        return waveform.new_zeros((*waveform.shape[:-1], 0, num_bins))
    hann, banks = _kaldi_constants_on(num_bins, rate, waveform.device)
    frames = waveform.float().unfold(-1, window, shift)[..., :count, :]
    frames = frames - frames.mean(dim=-1, keepdim=True)  # remove DC offset
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = (frames - KALDI_PREEMPHASIS * previous) * hann  # pre-emphasis, then window
    power = torch.fft.rfft(frames, n=2 * (banks.shape[0] - 1), dim=-1).abs().square()
    return torch.log(torch.clamp(power @ banks, min=FLOAT32_EPS))


def imagebind_audio_on(windows: torch.Tensor) -> torch.Tensor:
    """float32 [N, 1, 128, 204] from N equal audio windows [N, S] (:func:`segment_windows`' output),
    computed on their device: :func:`imagebind_audio` after the windows are cut."""
    spec = IMAGEBIND_AUDIO
    if windows.shape[1]:
        windows = windows - windows.mean(dim=1, keepdim=True)
    fbank = kaldi_fbank_on(windows, spec["mel_bins"], spec["rate"])[:, : spec["target_frames"]]
    out = windows.new_zeros((len(windows), 1, spec["mel_bins"], spec["target_frames"]))
    out[:, 0, :, : fbank.shape[1]] = fbank.transpose(1, 2)  # zero-padded on the right, as upstream
    return (out - spec["mean"]) / spec["std"]


def clip_images_on(frames: torch.Tensor, size: int = 224) -> torch.Tensor:
    """float32 [N, 3, size, size] from uint8 frames [N, H, W, 3] of one shape, on their device:
    :func:`clip_images` with torch's antialiased bicubic resize, rounded to 8 bits."""
    height, width = frames.shape[1:3]
    new = (size, int(size * width / height)) if height <= width else (int(size * height / width), size)  # (h, w)
    x = frames.permute(0, 3, 1, 2).float()
    for size_hw in ((height, new[1]), new):  # as Pillow: across, then down, each pass rounded to 8 bits
        if size_hw != tuple(x.shape[2:]):  # a pass to the same size is skipped, as Pillow skips it
            x = torch.nn.functional.interpolate(x, size=size_hw, mode="bicubic", antialias=True, align_corners=False)
            x = x.round().clamp(0, 255)
    top, left = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    x = x[:, :, top : top + size, left : left + size] / 255.0
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
