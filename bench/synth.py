"""Throughput of `r2scp synth`: videos per second for a full run, and where the time goes.

Usage: python bench/synth.py [--videos 1000] [--workers 2] [--size 224] [--format music-avqa]

The goal (issue 3) is 1,000 videos in under 2 minutes on 2 CPU cores. Prints the wall time of the
whole stage (scenes, questions, rendering, H.264/AAC encoding, annotation files), videos/s, the CPU
seconds per video of each rendering step measured on a sample in this process, and the dataset's
figures (question-only prior, per-type counts). The machine's load is printed too: other processes
on the same cores slow every number down.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from r2scp_cli.config import SynthConfig, keep_freed_memory
from r2scp_cli.media import write_mp4
from r2scp_cli.synth import dataset as synth
from r2scp_cli.synth.picture import render_frames
from r2scp_cli.synth.sound import render_audio


def step_costs(config: SynthConfig, sample: int) -> dict[str, float]:
    """CPU seconds per video of drawing, sound synthesis and encoding, on ``sample`` scenes."""
    scenes = synth.generate(config).scenes[:sample]
    costs = {"picture": 0.0, "sound": 0.0, "encode": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for scene in scenes:
            start = time.process_time()
            frames = render_frames(scene, config.fps, config.size, np.random.default_rng([scene.render_seed, 1]))
            middle = time.process_time()
            audio = render_audio(scene, 16_000, np.random.default_rng([scene.render_seed, 2]))
            end = time.process_time()
            write_mp4(Path(tmp) / f"{scene.video_id}.mp4", frames, config.fps, audio)
            costs["picture"] += middle - start
            costs["sound"] += end - middle
            costs["encode"] += time.process_time() - end
    return {name: round(total / len(scenes), 4) for name, total in costs.items()}


def main() -> None:
    keep_freed_memory()  # as every r2scp command does
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=synth.WORKERS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--format", default="music-avqa")
    parser.add_argument("--sample", type=int, default=20, help="videos timed step by step")
    args = parser.parse_args()

    print(f"cpus {os.cpu_count()}, load average before {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        config = SynthConfig(Path(tmp) / "data", videos=args.videos, seed=0, size=args.size, format=args.format)
        start = time.perf_counter()
        synth.run(config, force=True, workers=args.workers)
        wall = time.perf_counter() - start
        meta = json.loads((config.out / "meta.json").read_text())
    print(f"load average after {os.getloadavg()[0]:.2f}")
    rate = args.videos / wall
    print(f"synth: {args.videos} videos ({args.size}px, {args.workers} workers) in {wall:.1f} s = {rate:.2f} videos/s; "
          f"1,000 videos would take {1000 / rate:.0f} s")  # fmt: skip
    costs = step_costs(config, args.sample)
    per_video = sum(costs.values())
    print(f"CPU s per video (one process): {costs}, total {per_video:.3f}; rendering 1,000 videos on "
          f"{args.workers} idle cores would take about {1000 * per_video / args.workers:.0f} s")  # fmt: skip
    print(json.dumps(meta["figures"], indent=1))


if __name__ == "__main__":
    main()
