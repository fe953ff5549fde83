"""Embedding drift of `r2scp extract --encoder imagebind --precision fp16` against fp32.

Builds ImageBind's architecture with random weights (its own initialisation, seed 0; no
checkpoint), runs the adapter twice over the same inputs -- synthetic clips (a coloured blob
moving over T segments, a tone over noise) and questions -- once in fp32 and once under fp16
autocast, and prints per modality (audio and vision segment embeddings, the text embedding at the
end-of-text token) the mean and minimum cosine similarity and the largest absolute difference of
the L2-normalised embeddings.

``--model huge`` is imagebind_huge (1.2 B parameters, what extract runs); ``--model small`` the same
architecture at width 256 and 4 blocks per trunk, for a quick look on a CPU. On CUDA if visible,
else on the CPU (torch's CPU autocast runs float16 too, slowly without native fp16 units). Random
weights are not the trained ones: the numbers show the size of the rounding, not its effect on a
retrieval. Needs ImageBind's model code (see bench/imagebind_gpu.py).

    python bench/imagebind_precision.py [--model huge|small] [--clips 2] [--segments 2] [--questions 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from imagebind_gpu import small_imagebind, synthetic_clips  # noqa: E402

from r2scp_cli.encoders import imagebind as ib  # noqa: E402


def drift(fp32: np.ndarray, fp16: np.ndarray) -> str:
    """Mean and min cosine and max |difference| of two sets of unit vectors, row by row."""
    cosine = (fp32 * fp16).sum(axis=-1)
    return (f"cos mean {cosine.mean():.7f} min {cosine.min():.7f} (1 - cos at most {1 - cosine.min():.1e}), "
            f"max |diff| {np.abs(fp32 - fp16).max():.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("huge", "small"), default="huge")
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--segments", type=int, default=2, help="T: images and spectrograms per clip")
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    started = time.perf_counter()
    module = ib.load_model_module()
    torch.manual_seed(0)
    with torch.device(args.device):
        model = module.imagebind_huge(pretrained=False) if args.model == "huge" else small_imagebind(module)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    tokenizer = ib.load_tokenizer(None)
    encoders = {p: ib.ImageBindEncoder(model, tokenizer, args.segments, args.device, precision=p) for p in ("fp32", "fp16")}
    spectrograms, images = encoders["fp32"].prepare(synthetic_clips(args.clips, args.segments, 10.0, seed=0))
    questions = [f"Which instrument makes the sound {i} seconds before the {i % 3 + 1}th one starts?"
                 for i in range(args.questions)]  # fmt: skip
    out, seconds = {}, {}
    for precision, encoder in encoders.items():
        start = time.perf_counter()
        out[precision] = {"audio": encoder.embed(ib.AUDIO, spectrograms), "vision": encoder.embed(ib.VISION, images),
                          "text": encoder.encode_texts(questions)["global"]}  # fmt: skip
        seconds[precision] = time.perf_counter() - start
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    print(f"imagebind_precision: {name} | imagebind_{args.model} {params:.3f} B params, random weights | "
          f"{len(spectrograms)} spectrograms, {len(images)} images, {len(questions)} questions | "
          f"fp32 {seconds['fp32']:.1f} s, fp16 autocast {seconds['fp16']:.1f} s, total {time.perf_counter() - started:.0f} s")  # fmt: skip
    for modality in ("audio", "vision", "text"):
        print(f"  {modality:6s} fp16 vs fp32: {drift(out['fp32'][modality], out['fp16'][modality])}")


if __name__ == "__main__":
    main()
