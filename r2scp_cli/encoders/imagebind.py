"""``--encoder imagebind``: ImageBind (imagebind_huge) from a local checkpoint -- the faithful path.

The model code comes from a package that provides ImageBind's ``imagebind.models`` (the
``imagebind-unofficial`` wheel installed without its dependencies, or the user's checkout on
PYTHONPATH); r2scp copies none of it. Only ``imagebind/models/imagebind_model.py`` and its siblings
are imported: the package ``__init__`` imports ``data.py`` (torchaudio, torchvision,
pytorchvideo), which does not import beside the torch this project pins, so the package is
registered bare (see wheels.py), and timm's two helpers the model files import (``DropPath``,
``trunc_normal_``) are stood in for during that import. The preprocessing ``data.py`` did is
reimplemented in :mod:`r2scp_cli.encoders.preprocessing`.

Per clip and segment: the segment's frame (short side 224, bicubic, centre crop, CLIP stats) as
its own 4-D image, and a 2-s audio window centred on the segment (Kaldi fbank, 128 x 204,
normalised); each goes through the model as one batch item, so a [T, 1024] token sequence per
modality; the clip embedding is the normalised mean of the T tokens. Questions: the BPE tokenizer
(77 positions), the text trunk's last layer through the text head's LayerNorm and projection;
the sentence embedding is that at the end-of-text token (ImageBind's text embedding). On a CPU
the inputs are prepared in numpy and Pillow on a thread pool; on CUDA in torch on the GPU, the
images while the GPU runs the audio passes (on an H200, 224-px frames: 96.7 clips/s end to end
against 38.7 with numpy, the model alone 100.5; bench/imagebind_gpu.py): the same recipes, the
fbank within float rounding, the resize within 2 grey levels on under 1 % of pixels (see
preprocessing.py); the features' preprocessing attributes say which. Every
vector is L2-normalised: ImageBind's audio output carries a fixed scale of 20 and its text output
a learned one. The per-token question features are not what the model was trained to align
(only the end-of-text token is); the file's attributes say so.

The checkpoint is never downloaded: ``--checkpoint`` or IMAGEBIND_CHECKPOINT, memory-mapped,
loaded strictly, its sha256 recorded. ``--precision``: ``fp32`` (the reference's) or ``fp16``
(the forward passes under ``torch.autocast`` float16, weights kept in float32); ``auto`` picks fp16
on CUDA, fp32 elsewhere. The precision goes into the encoder version (``1-fp16``) and the
preprocessing attributes, so features of the two never mix (bench/imagebind_precision.py measures
the drift).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..artifacts import sha256_file
from ..config import ExtractConfig
from ..errors import UserError
from ..features import EncoderInfo
from .preprocessing import (
    AUDIO_RATE,
    CLIP_MEAN,
    CLIP_STD,
    IMAGEBIND_AUDIO,
    clip_images,
    clip_images_on,
    imagebind_audio,
    imagebind_audio_on,
    segment_windows,
)
from .wheels import (
    distribution_version,
    import_bare_package,
    missing_modules,
    package_dir,
    require_modules,
    stand_in_modules,
    torch_device,
)

if TYPE_CHECKING:
    from ..media import Clip

NAME = "imagebind"
VERSION = "1"
CHECKPOINT_ENV = "IMAGEBIND_CHECKPOINT"
INSTALL = (
    "pip install 'r2scp[imagebind]' && pip install --no-deps imagebind-unofficial==0.1.1 "
    "(or put a checkout of ImageBind on PYTHONPATH)"
)
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
CONTEXT_LENGTH = 77  # BPE positions the text trunk reads
QUESTION_TOKENS = 32  # positions stored per question; the trunk is causal, so the cut changes nothing before it
IMAGE_SIZE = 224
FORWARD_BATCH = 64  # images, spectrograms or questions per forward pass
AUDIO, VISION, TEXT = "audio", "vision", "text"  # ImageBind's modality keys
CODE_MODULES = ("imagebind", "einops", "ftfy", "regex", "iopath")  # ImageBind's model code and what it imports
PRECISIONS = ("auto", "fp32", "fp16")  # --precision; auto: fp16 on CUDA, fp32 elsewhere
PREPROCESSORS = ("numpy", "torch")  # where inputs are prepared: numpy + Pillow on CPU threads, or torch on the device


# --------------------------------------------------------------------------- loading


def resolve_precision(precision: str, device: torch.device) -> str:
    """``--precision`` on ``device``: "fp32" or "fp16" (auto: fp16 on CUDA, fp32 elsewhere)."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown --precision '{precision}'; choose one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    return precision


def given_checkpoint(checkpoint: Path | None) -> Path | None:
    """``--checkpoint``, else IMAGEBIND_CHECKPOINT, else None (nothing is checked here)."""
    given = checkpoint or os.environ.get(CHECKPOINT_ENV)
    return Path(given).expanduser() if given else None


def checkpoint_path(config: ExtractConfig) -> Path:
    """``--checkpoint`` or IMAGEBIND_CHECKPOINT; never a download."""
    path = given_checkpoint(config.checkpoint)
    if path is None:
        raise UserError(
            f"encoder 'imagebind' needs a checkpoint: pass --checkpoint PATH or set {CHECKPOINT_ENV} "
            "(imagebind_huge.pth; r2scp never downloads it)"
        )
    if not path.is_file():
        raise UserError(f"{path}: ImageBind checkpoint not found")
    return path


def missing_parts() -> list[str]:
    """The model code this installation lacks, one phrase each (empty: only a checkpoint is needed);
    imports nothing."""
    return [f"module {name}" for name in missing_modules(CODE_MODULES)]


def _timm_stand_ins() -> dict[str, types.ModuleType]:
    """``timm`` and ``timm.layers`` holding the two names ImageBind's model files import from timm
    (timm itself needs torchvision). ``trunc_normal_`` only initialises weights the checkpoint
    replaces; ``DropPath`` is stochastic depth, the identity at inference."""

    class DropPath(nn.Module):
        """Drops the residual branch of a whole sample with probability ``drop_prob`` in training."""

        def __init__(self, drop_prob: float = 0.0):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.training or self.drop_prob == 0.0:
                return x
            keep = 1.0 - self.drop_prob
            mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
            return x * mask / keep

    def trunc_normal_(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return nn.init.trunc_normal_(tensor, *args, **kwargs)  # looked up per call: see _skipped_init

    layers = types.ModuleType("timm.layers")
    layers.DropPath = DropPath
    layers.trunc_normal_ = trunc_normal_
    timm = types.ModuleType("timm")
    timm.__path__ = []
    timm.layers = layers
    return {"timm": timm, "timm.layers": layers}


def load_model_module() -> types.ModuleType:
    """ImageBind's ``imagebind.models.imagebind_model``, imported without the package ``__init__``."""
    folder = package_dir("imagebind", NAME, INSTALL)
    require_modules(CODE_MODULES[1:], NAME, INSTALL)
    with stand_in_modules(_timm_stand_ins()):
        return import_bare_package("imagebind", folder, "models.imagebind_model")


def load_tokenizer(checkpoint: Path | None) -> Callable:
    """ImageBind's ``SimpleTokenizer`` (77 positions) over its BPE merges; call after
    :func:`load_model_module`."""
    preprocessors = importlib.import_module("imagebind.models.multimodal_preprocessors")
    return preprocessors.SimpleTokenizer(bpe_path=str(bpe_path(checkpoint)), context_length=CONTEXT_LENGTH)


def bpe_path(checkpoint: Path | None) -> Path:
    """The tokenizer's BPE merges: shipped in the package (``imagebind/bpe``), else next to the checkpoint."""
    candidates = [package_dir("imagebind", NAME, INSTALL) / "bpe" / BPE_FILE]
    if checkpoint is not None:
        candidates.append(checkpoint.parent / BPE_FILE)
    for path in candidates:
        if path.is_file():
            return path
    raise UserError(f"ImageBind's BPE vocabulary {BPE_FILE} not found in {' or '.join(map(str, candidates))}")


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict, memory-mapped and weights-only (tensors are read on first use)."""
    try:
        try:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as error:
            if "_use_new_zipfile_serialization" not in str(error):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy format: cannot be mapped
    except Exception as error:  # unpickling and archive errors come in many types
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({str(error).splitlines()[0]})") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "zeros_", "ones_",
                   "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_")


@contextlib.contextmanager
def _skipped_init() -> Iterator[None]:
    """Make ``torch.nn.init``'s initialisers no-ops while a model whose every weight is about to be
    replaced is built (1.2 B random numbers take about a minute on a CPU). The meta device cannot
    be used: ImageBind's constructor reads values (``.item()``) of tensors it creates."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    for name in _INIT_FUNCTIONS:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


def load_weights(architecture: Callable[[], nn.Module], path: Path) -> nn.Module:
    """Build ``architecture`` uninitialised and bind the checkpoint's (mapped) tensors strictly."""
    state = load_state(path)
    with _skipped_init():
        model = architecture()
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        first = " ".join(str(error).split())[:300]
        raise UserError(f"{path}: does not match the ImageBind architecture ({first})") from None
    return model.eval()


# --------------------------------------------------------------------------- the adapter


def _normalise(x: torch.Tensor) -> np.ndarray:
    return nn.functional.normalize(x.float(), dim=-1).cpu().numpy()


class ImageBindEncoder:
    """Runs an ImageBind model (any size) over clips and questions; see the module docstring.

    ``model`` answers ``model({modality: batch})[modality]`` and exposes ``modality_preprocessors``,
    ``modality_trunks`` and ``modality_heads`` keyed by modality (ImageBindModel's interface);
    ``tokenizer(texts)`` returns int64 BPE ids [N, 77].
    """

    def __init__(self, model: nn.Module, tokenizer: Callable, segments: int, device: str = "cpu",
                 weights_sha256: str = "none", source: dict | None = None, forward_batch: int = FORWARD_BATCH,
                 precision: str = "auto", preprocess_with: str | None = None):
        self.device = torch_device(device)
        self.precision = resolve_precision(precision, self.device)  # "fp32" or "fp16"
        self.preprocess_with = preprocess_with or ("torch" if self.device.type == "cuda" else "numpy")
        if self.preprocess_with not in PREPROCESSORS:
            raise ValueError(f"preprocess_with: one of {PREPROCESSORS}, not {self.preprocess_with!r}")
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.segments = segments
        self.forward_batch = forward_batch
        self.frame_size = None  # frames are resized here (short side, bicubic), not by the decoder
        # numpy's FFT and matrix products and Pillow's resize release the GIL: clips are prepared
        # in parallel, so the CPU keeps up with the GPU
        self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
        out_dim = self._out_dim()
        self.info = EncoderInfo(
            encoder=NAME,
            encoder_version=f"{VERSION}-{self.precision}",  # features of another precision never mix
            segments=segments,
            dims={name: out_dim for name in ("audio", "visual", "text", "audio_global", "visual_global", "text_global")},
            question_tokens=QUESTION_TOKENS,
            joint_space=True,
            pretrained=True,
            weights_sha256=weights_sha256,
            preprocessing={
                "source": source or {},
                "audio": {**IMAGEBIND_AUDIO, "fbank": "kaldi: 25 ms hanning window, 10 ms shift, no dither, snip edges",
                          "window": "2 s centred on each segment, shifted inside the track", "input": "[T, 1, 128, 204]"},
                "visual": {"image_size": IMAGE_SIZE, "resize": "short side, bicubic, centre crop", "mean": CLIP_MEAN,
                           "std": CLIP_STD, "input": "[T, 3, 224, 224] images (repeated to 2 frames by the model)"},
                "text": {"tokenizer": "BPE " + BPE_FILE, "context": CONTEXT_LENGTH, "stored_tokens": QUESTION_TOKENS,
                         "tokens": "text trunk last layer -> head LayerNorm + projection; not contrastively trained "
                                   "(only the end-of-text token is)", "global": "end-of-text token (ImageBind's text embedding)"},
                "globals": "L2-normalised mean of the T segment embeddings", "normalised": "every vector, L2",
                "precision": self.precision,  # fp16: torch.autocast float16 over float32 weights
                "prepared_with": {"numpy": "numpy + Pillow on CPU threads",
                                  "torch": f"torch on {self.device.type} (two-pass bicubic, antialiased)"}[self.preprocess_with],
            },  # fmt: skip
        )

    def prepare(self, clips: list[Clip]) -> tuple[torch.Tensor, torch.Tensor]:
        """Model inputs of the clips' segments, clip after clip: spectrograms [N * T, 1, 128, 204]
        and images [N * T, 3, 224, 224]; on the CPU (numpy, clips in parallel) or on the device."""
        return self.prepare_audio(clips), self.prepare_images(clips)

    def prepare_audio(self, clips: list[Clip]) -> torch.Tensor:
        """Spectrograms [N * T, 1, 128, 204]: one 2-s window per segment (see the module docstring)."""
        if self.preprocess_with == "numpy":
            spectrograms = self._pool.map(lambda c: imagebind_audio(c.audio, c.duration, self.segments), clips)
            return torch.from_numpy(np.concatenate(list(spectrograms)))
        length = int(IMAGEBIND_AUDIO["clip_seconds"] * AUDIO_RATE)
        windows = [np.stack(segment_windows(c.audio, c.duration, self.segments, length)) for c in clips]
        return _stacked_by_shape(imagebind_audio_on, windows, self.device)

    def prepare_images(self, clips: list[Clip]) -> torch.Tensor:
        """Images [N * T, 3, 224, 224]: each segment's frame, short side resized, centre-cropped."""
        if self.preprocess_with == "numpy":
            return torch.from_numpy(np.concatenate(list(self._pool.map(lambda c: clip_images(c.frames, IMAGE_SIZE), clips))))
        return _stacked_by_shape(lambda f: clip_images_on(f, IMAGE_SIZE), [c.frames for c in clips], self.device)

    def _out_dim(self) -> int:
        head = self.model.modality_heads[TEXT].proj
        return int([m for m in head.modules() if isinstance(m, nn.Linear)][-1].out_features)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.precision == "fp16")

    def embed(self, modality: str, inputs: torch.Tensor) -> np.ndarray:
        """float32 [N, D] L2-normalised embeddings of N audio spectrograms or images, in batches."""
        return self._embedded(modality, inputs).cpu().numpy()

    @torch.inference_mode()
    def _embedded(self, modality: str, inputs: torch.Tensor) -> torch.Tensor:
        """:meth:`embed` left on the device and not waited for: the host goes on while it runs."""
        out = []
        with self._autocast():  # one region: fp16 copies of the weights are made once per call
            for start in range(0, len(inputs), self.forward_batch):
                batch = inputs[start : start + self.forward_batch].to(self.device)
                out.append(nn.functional.normalize(self.model({modality: batch})[modality].float(), dim=-1))
        return torch.cat(out) if out else torch.zeros((0, self.info.dims["audio"]), device=self.device)

    def encode_clips(self, clips: list[Clip]) -> list[dict[str, np.ndarray]]:
        """Per clip: audio and visual [T, D] segment embeddings and their normalised means. The
        images are prepared while the device runs the audio passes."""
        T = self.segments
        if not clips:
            return []
        sound = self._embedded(AUDIO, self.prepare_audio(clips))
        sight = self._embedded(VISION, self.prepare_images(clips))
        sound, sight = sound.cpu().numpy(), sight.cpu().numpy()
        out = []
        for i in range(len(clips)):
            audio, visual = sound[i * T : (i + 1) * T], sight[i * T : (i + 1) * T]
            out.append({
                "audio": audio, "visual": visual,
                "audio_global": _normalise(torch.from_numpy(audio.mean(axis=0))),
                "visual_global": _normalise(torch.from_numpy(visual.mean(axis=0))),
            })  # fmt: skip
        return out

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> dict[str, np.ndarray]:
        """tokens [N, 32, D] and global [N, D] (both L2-normalised), mask [N, 32] up to end-of-text."""
        ids = torch.as_tensor(self.tokenizer(list(texts))).reshape(len(texts), CONTEXT_LENGTH)
        tokens, eot = [], []
        with self._autocast():
            for start in range(0, len(ids), self.forward_batch):
                batch = ids[start : start + self.forward_batch].to(self.device)
                prepared = self.model.modality_preprocessors[TEXT](text=batch)
                states = self.model.modality_trunks[TEXT](**prepared["trunk"])  # [B, 77, width]
                tokens.append(self.model.modality_heads[TEXT].proj(states).float())  # [B, 77, D]
                eot.append(prepared["head"]["seq_len"])
        projected = torch.cat(tokens)
        end = torch.cat(eot).cpu()
        positions = torch.arange(QUESTION_TOKENS)
        return {
            "tokens": _normalise(projected[:, :QUESTION_TOKENS]),
            "mask": (positions[None, :] <= end[:, None]).numpy(),
            "global": _normalise(projected[torch.arange(len(texts)), end.to(projected.device)]),
        }


def _stacked_by_shape(prepare: Callable[[torch.Tensor], torch.Tensor], arrays: list[np.ndarray],
                      device: torch.device) -> torch.Tensor:
    """``prepare`` run on ``device`` over the clips' arrays [T, ...], those of one shape stacked in
    one call (clips of another frame size or a short track form their own); T rows per clip, in
    the clips' order."""
    groups: dict[tuple, list[int]] = {}
    for index, array in enumerate(arrays):
        groups.setdefault(array.shape, []).append(index)
    rows: list[torch.Tensor | None] = [None] * len(arrays)
    for members in groups.values():
        first = torch.from_numpy(arrays[members[0]])
        # stacked into page-locked memory on CUDA, so the copy does not hold the host up
        host = torch.empty((len(members) * len(first), *first.shape[1:]), dtype=first.dtype, pin_memory=device.type == "cuda")
        np.concatenate([arrays[i] for i in members], out=host.numpy())
        prepared = prepare(host.to(device, non_blocking=True))
        for chunk, index in zip(prepared.split(len(first)), members):
            rows[index] = chunk
    return torch.cat(rows)


def build(config: ExtractConfig) -> ImageBindEncoder:
    """The registry's entry point (``--encoder imagebind``): checkpoint, code, tokenizer, weights."""
    resolve_precision(config.precision, torch.device("cpu"))  # a bad value fails before any loading
    path = checkpoint_path(config)
    torch_device(config.device)
    module = load_model_module()
    tokenizer = load_tokenizer(path)
    model = load_weights(lambda: module.imagebind_huge(pretrained=False), path)
    version = distribution_version("imagebind-unofficial")
    source = {
        "architecture": "imagebind_huge",
        "checkpoint": path.name,
        "model_code": f"imagebind-unofficial {version}" if version != "unknown" else "an ImageBind checkout",
    }
    return ImageBindEncoder(model, tokenizer, config.segments, config.device, sha256_file(path), source,
                            precision=config.precision)
