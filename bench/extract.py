"""Clips per second of `r2scp extract` per encoder (DESIGN section 8; handcrafted target >= 50 on 2 cores).

Uses the built-in dataset (`r2scp synth`: 4 s, 4 fps, 224 x 224). For `handcrafted` it prints the
end-to-end rate of the stage (decoding in its worker pool) and the single-process cost of decoding
and of encoding one clip; for another encoder (`--encoder pretrained`, or `imagebind` with
IMAGEBIND_CHECKPOINT set and `--device cuda`) the rate of the whole stage. The GPU throughput of the
ImageBind adapter without a checkpoint is measured by bench/imagebind_gpu.py.

    python bench/extract.py [--videos 200] [--workers N] [--keep DIR] [--encoder NAME] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from r2scp_cli import extract
from r2scp_cli.artifacts import meta_path
from r2scp_cli.config import ExtractConfig, SynthConfig, keep_freed_memory
from r2scp_cli.encoders.handcrafted import HandcraftedEncoder
from r2scp_cli.media import decode_clip
from r2scp_cli.synth import dataset as synth


def synth_dataset(root: Path, videos: int, size: int = 224) -> str:
    """The built-in dataset (4 s, 4 fps, ``size`` px; the demo's clips are 112 px)."""
    synth.run(SynthConfig(out=root, videos=videos, size=size))
    return "r2scp synth"


def per_clip_costs(root: Path, segments: int, repeats: int = 40) -> dict[str, float]:
    """Wall and CPU milliseconds to decode one clip and to encode it, in this process. CPU time is
    what another process on a shared machine cannot steal: 1000 * cores / (decode + encode CPU ms)
    is the rate that many idle cores would reach."""
    encoder = HandcraftedEncoder(segments)
    paths = sorted((root / "videos").glob("*.mp4"))[:repeats]
    decode_clip(paths[0], segments, encoder.frame_size)  # warm up
    wall, cpu = time.perf_counter(), time.process_time()
    clips = [decode_clip(p, segments, encoder.frame_size) for p in paths]
    costs = {"decode_wall": time.perf_counter() - wall, "decode_cpu": time.process_time() - cpu}
    wall, cpu = time.perf_counter(), time.process_time()
    encoder.encode_clips(clips)
    costs.update(encode_wall=time.perf_counter() - wall, encode_cpu=time.process_time() - cpu)
    return {name: seconds / len(paths) * 1000 for name, seconds in costs.items()}


def main() -> None:
    keep_freed_memory()  # as every r2scp command does
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: the stage's)")
    parser.add_argument("--keep", type=Path, default=None, help="dataset directory to reuse / keep")
    parser.add_argument("--encoder", default="handcrafted", help="handcrafted, pretrained or imagebind")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=224, help="frame size of a new built-in dataset (the demo's: 112)")
    args = parser.parse_args()
    if args.encoder != "handcrafted":
        encoder_row(args)
        return
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch) / "data"
        source = "existing dataset" if (root / "videos").is_dir() else synth_dataset(root, args.videos, args.size)
        videos = len(list((root / "videos").glob("*.mp4")))
        costs = per_clip_costs(root, args.segments)
        out = Path(scratch) / "features.h5"
        load = os.getloadavg()[0]
        start = time.perf_counter()
        extract.run(ExtractConfig(dataset=root, out=out, segments=args.segments), workers=args.workers)
        wall = time.perf_counter() - start
        figures = json.loads(meta_path(out).read_text())["figures"]
    cores = os.cpu_count() or 1
    cpu_ms = costs["decode_cpu"] + costs["encode_cpu"]
    print(f"dataset: {videos} videos ({source}); cores: {cores}; T = {args.segments}; load average {load:.1f}")
    print(f"one clip, wall: decode {costs['decode_wall']:.1f} ms, encode {costs['encode_wall']:.1f} ms")
    print(f"one clip, CPU:  decode {costs['decode_cpu']:.1f} ms, encode {costs['encode_cpu']:.1f} ms "
          f"-> {1000 * cores / cpu_ms:.1f} clips/s on {cores} idle cores")  # fmt: skip
    print(f"extract (media stage, measured): {figures['clips_per_s']:.1f} clips/s")
    print(f"extract (whole stage incl. reading, questions, writing): {videos / wall:.1f} clips/s, {wall:.1f} s")

def pretrained_parts(root: Path, segments: int, device: str, clips: int = 48) -> dict[str, float]:
    """Milliseconds per clip of each part of `pretrained` extraction, one process (torch's threads):
    decode (PyAV, frames resized for the network), frames (preprocessing + EfficientNet), audio
    (log-mel + aiSFX), questions (MiniLM over this clip's share of the dataset's questions)."""
    from r2scp_cli.datasets import read_dataset
    from r2scp_cli.encoders.registry import build_encoder

    encoder = build_encoder(ExtractConfig(dataset=root, out=root / "unused.h5", segments=segments,
                                          encoder="pretrained", device=device))  # fmt: skip
    paths = sorted((root / "videos").glob("*.mp4"))[:clips]
    questions = [q.text for q in read_dataset(root, "music-avqa", ("train", "val", "test")).questions]
    per_clip_questions = len(questions) / len(list((root / "videos").glob("*.mp4")))
    decode_clip(paths[0], segments, encoder.frame_size)  # warm up
    start = time.perf_counter()
    decoded = [decode_clip(p, segments, encoder.frame_size) for p in paths]
    parts = {"decode": time.perf_counter() - start}
    for name, encode in (("frames", encoder.encode_frames), ("audio", encoder.encode_audio)):
        start = time.perf_counter()
        encode(decoded)
        parts[name] = time.perf_counter() - start
    sample = questions[: int(round(per_clip_questions * len(paths)))]
    start = time.perf_counter()
    encoder.encode_texts(sample)
    parts["questions"] = time.perf_counter() - start
    return {name: seconds / len(paths) * 1000 for name, seconds in parts.items()}


def encoder_row(args) -> None:
    """clips/s of another encoder on the same clips (the whole extract stage, as a user runs it)."""
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch) / "data"
        if not (root / "videos").is_dir():
            synth_dataset(root, args.videos, args.size)
        if args.encoder == "pretrained":
            parts = pretrained_parts(root, args.segments, args.device)
            total = sum(parts.values())
            print("pretrained, one process, ms per clip: " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
                  + f"; sum {total:.1f} -> {1000 / total:.2f} clips/s without overlap")  # fmt: skip
        out = Path(scratch) / "features.h5"
        start = time.perf_counter()
        extract.run(ExtractConfig(dataset=root, out=out, segments=args.segments, encoder=args.encoder,
                                  device=args.device), workers=args.workers)  # fmt: skip
        wall = time.perf_counter() - start
        figures = json.loads(meta_path(out).read_text())["figures"]
    print(f"{args.encoder} on {args.device}: {figures['clips_per_s']:.2f} clips/s (media stage), "
          f"{figures['videos']} clips in {wall:.1f} s (whole stage: {figures['videos'] / wall:.2f} clips/s); "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
