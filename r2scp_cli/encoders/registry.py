"""Encoder registry (DESIGN section 4): clips and questions -> feature arrays.

An encoder is any object with

* ``info: EncoderInfo`` -- its name, version, dims, flags and preprocessing constants;
* ``encode_clips(clips) -> list[dict]`` -- per clip ``audio`` [T, D_a], ``visual`` [T, D_v] and the
  L2-normalised float32 ``audio_global`` / ``visual_global``;
* ``encode_texts(texts) -> dict`` -- ``tokens`` float32 [N, L, D_t], ``mask`` bool [N, L],
  ``global`` float32 [N, D_text_global] (L2-normalised).

Optional attributes let an encoder steer the media stage: ``frame_size`` ((width, height) the
decoder resizes frames to, or None for the native size); ``encode_in_workers`` (True for a cheap,
CPU-only, picklable encoder: each decoding worker process then encodes its clips too); and
``load_clip(video_id) -> Clip`` for encoders that read precomputed arrays instead of media
(raising :class:`~r2scp_cli.media.ClipFailure` when the video's inputs are missing).

``handcrafted`` and ``npy`` are weight-free and always available; ``pretrained`` and ``imagebind``
are imported lazily from their own modules, which need optional extras.
"""

from __future__ import annotations

import importlib
from typing import Callable, Protocol

import numpy as np

from ..config import ExtractConfig
from ..errors import UserError
from ..features import EncoderInfo
from ..media import Clip
from .handcrafted import HandcraftedEncoder
from .npy import NpyEncoder


class Encoder(Protocol):
    """What `extract` needs from an encoder."""

    info: EncoderInfo

    def encode_clips(self, clips: list[Clip]) -> list[dict[str, np.ndarray]]: ...

    def encode_texts(self, texts: list[str]) -> dict[str, np.ndarray]: ...


def _lazy(module: str, name: str) -> Callable[[ExtractConfig], Encoder]:
    """A factory that imports ``r2scp_cli.encoders.<module>`` only when the encoder is asked for."""

    def build(config: ExtractConfig) -> Encoder:
        full = f"{__package__}.{module}"
        try:
            loaded = importlib.import_module(full)
        except ModuleNotFoundError as error:
            if error.name == full:
                raise UserError(f"encoder '{name}' is not part of this installation ({full} missing)") from None
            raise UserError(
                f"encoder '{name}' needs the extra: pip install 'r2scp[{name}]' (missing module {error.name})"
            ) from None
        return loaded.build(config)

    return build


ENCODERS: dict[str, Callable[[ExtractConfig], Encoder]] = {
    "handcrafted": lambda config: HandcraftedEncoder(config.segments),
    "npy": lambda config: NpyEncoder(config.segments, config.audio_npy, config.visual_npy),
    "pretrained": _lazy("pretrained", "pretrained"),
    "imagebind": _lazy("imagebind", "imagebind"),
}


def build_encoder(config: ExtractConfig) -> Encoder:
    """The encoder named by ``config.encoder``; an unknown name is a one-line UserError."""
    if config.segments < 1:
        raise UserError(f"--segments must be at least 1, got {config.segments}")
    factory = ENCODERS.get(config.encoder)
    if factory is None:
        raise UserError(f"unknown encoder '{config.encoder}'; choose one of: {', '.join(ENCODERS)}")
    if config.precision != "auto" and config.encoder != "imagebind":
        raise UserError(f"--precision {config.precision}: only --encoder imagebind has a choice of precision "
                        f"('{config.encoder}' runs in float32)")
    return factory(config)
