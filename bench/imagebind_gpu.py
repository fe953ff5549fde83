"""Throughput of the ImageBind adapter (`r2scp extract --encoder imagebind`) on one GPU.

Builds the real imagebind_huge architecture (1.2 B parameters) with random weights directly on the
device (no checkpoint: speed does not depend on the values), feeds it synthetic clips of T=8
segments (224x224 frames, a 10-s 16 kHz track) and prints one summary line:

* adapter clips/s -- ``encode_clips`` end to end: the preprocessing of every segment (Kaldi
  fbank, bicubic resize) in torch on the GPU (the default on CUDA), then the audio and vision
  passes in fp16 autocast (``--precision fp32``: the reference's fp32), 8 + 8 batch items per
  clip; and the same with the numpy preprocessing on a CPU thread pool (the path before);
* model-only and preprocessing-only clips/s (both paths), to show which side bounds it;
* how far the two preparations are apart: inputs (fbank values, grey levels) and embeddings;
* questions/s of ``encode_texts`` and the peak GPU memory.

Runs unattended in under a minute on one H200 with ``--seconds 12`` (model build 2 s, then
``--seconds`` of timing per measurement; 2026-11-30 there: 96.7 clips/s prepared in torch, 38.7 with
numpy, model alone 100.5; 89.4 / 33.4 / 100.6 with ``--frame-size 360 640``). Needs, beside torch with CUDA, numpy, Pillow and h5py:
einops, regex, ftfy (+ wcwidth), iopath (+ portalocker, tqdm) and imagebind-unofficial 0.1.1
(installed with --no-deps); the repository root is put on sys.path, r2scp need not be installed.

    python bench/imagebind_gpu.py [--seconds 30] [--clips-per-call 16] [--precision auto|fp32|fp16]
                                  [--frame-size 224 224] [--model huge|small] [--device cuda|cpu]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from r2scp_cli.encoders import imagebind as ib  # noqa: E402


@dataclass
class SyntheticClip:
    """What the adapter reads of a Clip (media's Clip needs PyAV, absent on GPU images)."""

    video_id: str
    frames: np.ndarray  # uint8 [T, 224, 224, 3]
    audio: np.ndarray  # float32 [S], 16 kHz
    duration: float


def synthetic_clips(count: int, segments: int, seconds: float, seed: int, size: tuple[int, int] = (224, 224)) -> list[SyntheticClip]:
    """Clips with moving blobs of colour and a tone over noise, all different; frames of ``size`` (h, w)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16_000)) / 16_000
    yy, xx = np.mgrid[: size[0], : size[1]]
    clips = []
    for i in range(count):
        frames = np.empty((segments, *size, 3), np.uint8)
        for s in range(segments):
            blob = ((yy - size[0] // 2) ** 2 + (xx - 20 - 25 * s) ** 2 < 900)[..., None]
            frames[s] = np.where(blob, rng.integers(0, 256, 3), rng.integers(0, 256, 3))
        tone = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 1500) * t)
        clips.append(SyntheticClip(f"clip{i}", frames, (tone + 0.05 * rng.standard_normal(len(t))).astype(np.float32), seconds))
    return clips


def small_imagebind(module):
    """imagebind_huge's architecture at width 256 and 4 blocks per trunk (depth, thermal, IMU tiny)."""
    tiny = {f"{m}_{k}": v for m in ("depth", "thermal", "imu") for k, v in (("embed_dim", 32), ("num_blocks", 1), ("num_heads", 2))}
    return module.ImageBindModel(
        out_embed_dim=256, vision_embed_dim=256, vision_num_blocks=4, vision_num_heads=4, audio_embed_dim=256,
        audio_num_blocks=4, audio_num_heads=4, text_embed_dim=256, text_num_blocks=4, text_num_heads=4, **tiny,
    )  # fmt: skip


def rate(work, items: int, seconds: float, device: torch.device) -> float:
    """items/s of ``work()`` repeated for about ``seconds`` (after one untimed call)."""
    work()
    _sync(device)
    calls, start = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - start < seconds:
        work()
        calls += 1
    _sync(device)
    return calls * items / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def parity(encoders: dict, clips: list[SyntheticClip]) -> str:
    """How far the torch preparation is from the numpy one: inputs and the model's embeddings."""
    (spec_t, image_t), (spec_n, image_n) = (encoders[how].prepare(clips) for how in ("torch", "numpy"))
    spec_gap = (spec_t.cpu() - spec_n).abs().max().item()
    grey_gap = ((image_t.cpu() - image_n).abs() * torch.tensor(ib.CLIP_STD).view(1, 3, 1, 1) * 255).max().item()
    out_t, out_n = (encoders[how].encode_clips(clips) for how in ("torch", "numpy"))
    cosine = min(float((a[m] * b[m]).sum(axis=-1).min()) for a, b in zip(out_t, out_n) for m in ("audio", "visual"))
    return (f"torch vs numpy inputs: fbank max |diff| {spec_gap:.1e} (normalised), images max {grey_gap:.2f} grey levels; "
            f"embeddings min cos {cosine:.6f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="timing budget per measurement")
    parser.add_argument("--clips-per-call", type=int, default=16, help="clips per encode_clips call (extract's --batch-size)")
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--forward-batch", type=int, default=ib.FORWARD_BATCH, help="images or spectrograms per forward")
    parser.add_argument("--questions", type=int, default=256, help="questions per encode_texts call")
    parser.add_argument("--frame-size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"),
                        help="decoded frame size (224 224: no resize; 360 640: a 360p source)")
    parser.add_argument("--model", choices=("huge", "small"), default="huge", help="small: a quick look on a CPU")
    parser.add_argument("--device", default="cuda", help="cuda (the benchmark); cpu only for a smoke run")
    parser.add_argument("--precision", default="auto", choices=ib.PRECISIONS, help="extract's --precision (auto: fp16 on CUDA)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("imagebind_gpu: no CUDA device visible to torch")

    started = time.perf_counter()
    module = ib.load_model_module()
    torch.manual_seed(0)
    with torch.device(device):
        model = module.imagebind_huge(pretrained=False) if args.model == "huge" else small_imagebind(module)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    encoders = {
        how: ib.ImageBindEncoder(model, ib.load_tokenizer(None), args.segments, args.device,
                                 weights_sha256="none (random weights)", forward_batch=args.forward_batch,
                                 precision=args.precision, preprocess_with=how)
        for how in ib.PREPROCESSORS
    }  # fmt: skip
    encoder = encoders["torch" if device.type == "cuda" else "numpy"]
    clips = synthetic_clips(args.clips_per_call, args.segments, 10.0, seed=0, size=tuple(args.frame_size))
    setup = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    adapter = {how: rate(lambda e=e: e.encode_clips(clips), len(clips), args.seconds, device) for how, e in encoders.items()}
    spectrograms, images = encoder.prepare(clips)
    model_only = rate(lambda: (encoder.embed(ib.AUDIO, spectrograms), encoder.embed(ib.VISION, images)),
                      len(clips), args.seconds / 2, device)  # fmt: skip
    preparing = {how: rate(lambda e=e: e.prepare(clips), len(clips), args.seconds / 4, device) for how, e in encoders.items()}
    apart = parity(encoders, clips)
    questions = [f"Which instrument makes the sound {i} seconds before the {i % 3 + 1}th one starts?" for i in range(args.questions)]
    text = rate(lambda: encoder.encode_texts(questions), len(questions), args.seconds / 4, device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    precision = {"fp16": "fp16 autocast", "fp32": "fp32"}[encoder.precision]
    print(
        f"imagebind_gpu: {name} | imagebind_{args.model} {params:.2f} B params, random weights, {precision} | "
        f"T={args.segments}, frames {args.frame_size[0]}x{args.frame_size[1]}, {args.clips_per_call} clips per call, "
        f"forward batch {args.forward_batch} | "
        f"adapter {adapter['torch']:.1f} clips/s prepared on the {device.type} (torch), {adapter['numpy']:.1f} prepared "
        f"with numpy on {os.cpu_count()} CPU threads (audio+vision, preprocessing included) | model only {model_only:.1f} clips/s | "
        f"preprocessing only {preparing['torch']:.1f} clips/s (torch), {preparing['numpy']:.1f} (numpy) | {apart} | "
        f"text {text:.0f} questions/s | "
        f"peak GPU memory {memory:.1f} GiB | setup {setup:.0f} s, total {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
