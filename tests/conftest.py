"""Shared fixtures: a small finished features file with planted audio-visual structure.

``make_features(path, ...)`` writes ``path`` with :class:`r2scp_cli.features.FeatureWriter` and its
``<path>.meta.json`` through artifacts (stage "extract"), so later stages accept it as the output of
`r2scp extract`. Each video has a latent scene: a class (its instrument), a position, and a schedule
of the segments where it sounds. Audio and visual tokens both carry the class on the sounding
segments, each in its own random basis, plus a strong per-video "clutter" in a few shared directions
that dominates the clip-level mean vectors: naive global keys mostly match clutter, while a learned
joint space can find the class. Every video appears in several splits (MUSIC-AVQA splits by QA
pair), and the question columns hold MUSIC-AVQA-style questions whose answers follow from the scene.

The latent scene of each video is written beside the file as ``<stem>.planted.json`` (read it with
:func:`planted_scenes`), so tests can measure retrieval against the truth.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from r2scp_cli import artifacts
from r2scp_cli.config import ExtractConfig
from r2scp_cli.datasets import MUSIC_AVQA_ANSWERS
from r2scp_cli.features import EncoderInfo, FeatureWriter

DEFAULT_DIMS = {"audio": 24, "visual": 32, "text": 16, "audio_global": 32, "visual_global": 32, "text_global": 16}
QUESTION_TOKENS = 12
INSTRUMENTS = ("cello", "congas", "pipa", "piano", "accordion", "clarinet", "guzheng", "violin", "flute", "trumpet")
POSITIONS = ("left", "middle", "right")
NUMBERS = ("zero", "one", "two", "three")
CLUTTER_RANK = 4  # shared directions of the per-video background
CLUTTER_SCALE = 3.0
NOISE = 0.3

# (family, subtype) -> (question text, answer from the scene)
TEMPLATES: dict[tuple[str, str], tuple[str, Callable[[dict], str]]] = {
    ("Audio", "Counting"): ("How many sounding {i} in the video?", lambda s: NUMBERS[1 + s["class"] % 3]),
    ("Audio", "Comparative"): ("Is the {i} louder than the {o}?", lambda s: "yes" if s["class"] % 2 else "no"),
    ("Visual", "Counting"): ("How many {i} are in the entire video?", lambda s: NUMBERS[1 + s["class"] % 3]),
    ("Visual", "Location"): ("Where is the {i}?", lambda s: s["position"]),
    ("Audio-Visual", "Existential"): (
        "Is the {i} in the video always playing?", lambda s: "yes" if all(s["sounding"]) else "no",
    ),
    ("Audio-Visual", "Counting"): ("How many instruments are sounding in the video?", lambda s: NUMBERS[1 + s["class"] % 3]),
    ("Audio-Visual", "Location"): ("Where is the sounding {i}?", lambda s: s["position"]),
    ("Audio-Visual", "Comparative"): (
        "Is the {i} playing longer than the {o}?", lambda s: "yes" if sum(s["sounding"]) * 2 > len(s["sounding"]) else "no",
    ),
    ("Audio-Visual", "Temporal"): ("Which instrument makes sounds before the {o}?", lambda s: INSTRUMENTS[s["class"]]),
}


def _word_vector(word: str, dim: int) -> np.ndarray:
    """A fixed random embedding per word (hashed), like the handcrafted text encoder."""
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).normal(size=dim).astype(np.float32)


def _encode_text(text: str, dims: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tokens [L, D_t], mask [L], and an L2-normalised global [D_text_global] of a question."""
    words = text.lower().rstrip("?").split()[:QUESTION_TOKENS]
    tokens = np.zeros((QUESTION_TOKENS, dims["text"]), np.float32)
    tokens[: len(words)] = [_word_vector(w, dims["text"]) for w in words]
    mask = np.arange(QUESTION_TOKENS) < len(words)
    pooled = np.mean([_word_vector(w, dims["text_global"]) for w in words], axis=0)
    return tokens, mask, (pooled / np.linalg.norm(pooled)).astype(np.float32)


def _video_splits(rng: np.random.Generator, splits: tuple[str, ...], min_splits: int, questions: int) -> list[str]:
    """The split of each of a video's questions; the video lands in at least ``min_splits`` splits."""
    count = int(rng.integers(min(min_splits, len(splits)), len(splits) + 1))
    chosen = list(rng.choice(splits, size=min(count, questions), replace=False))
    return [chosen[q % len(chosen)] for q in range(questions)]


def make_features(
    path: Path,
    n_videos: int = 48,
    segments: int = 4,
    dims: dict[str, int] | None = None,
    splits: tuple[str, ...] = ("train", "val", "test"),
    seed: int = 0,
    joint_space: bool = False,
    questions_per_video: int = 4,
    classes: int = 6,
    min_splits: int = 2,
    encoder: str = "planted",
) -> Path:
    """Write a finished features file with planted structure; returns ``path``."""
    path = Path(path)
    dims = {**DEFAULT_DIMS, **(dims or {})}
    rng = np.random.default_rng(seed)
    if not 2 <= classes <= len(INSTRUMENTS):
        raise ValueError(f"classes must lie in 2..{len(INSTRUMENTS)}")
    # The generative model is a function of the "encoder" (name and dims), not of the seed, so files
    # with other seeds hold other videos of the same feature space (a --library, for example).
    encoder_seed = hashlib.sha256(json.dumps([encoder, sorted(dims.items())]).encode()).digest()[:8]
    model = np.random.default_rng(int.from_bytes(encoder_seed, "little"))
    basis = {m: model.normal(size=(classes, dims[m])) for m in ("audio", "visual")}
    clutter = {m: model.normal(size=(CLUTTER_RANK, dims[m])) for m in ("audio", "visual")}
    place = model.normal(size=(len(POSITIONS), dims["visual"]))
    to_global = {m: model.normal(size=(dims[m], dims[f"{m}_global"])) / np.sqrt(dims[m]) for m in ("audio", "visual")}
    shared = model.normal(size=(classes, dims["audio_global"]))  # joint space: one class vector for both

    info = EncoderInfo(encoder, "1", segments, dims, QUESTION_TOKENS, joint_space, pretrained=False)
    config = ExtractConfig(dataset=Path("planted"), out=path, encoder=encoder, segments=segments, splits=tuple(splits))
    stage = artifacts.begin("extract", path, config, inputs={}, force=True)
    writer = FeatureWriter(path, info, {"format": "music-avqa", "dataset": "planted"})
    scenes, columns, texts = {}, {k: [] for k in ("qid", "video_id", "split", "type", "subtype", "answer", "text", "answer_index")}, []
    types = list(TEMPLATES)
    for v in range(n_videos):
        video = f"{v:08d}"
        scene = {"class": int(rng.integers(classes)), "position": str(rng.choice(POSITIONS))}
        sounding = rng.random(segments) < 0.7
        sounding[rng.integers(segments)] = True
        scene["sounding"] = [bool(x) for x in sounding]
        arrays = {}
        for m in ("audio", "visual"):
            tokens = sounding[:, None] * basis[m][scene["class"]]
            tokens = tokens + (CLUTTER_SCALE * rng.normal(size=CLUTTER_RANK)) @ clutter[m]
            if m == "visual":
                tokens = tokens + place[POSITIONS.index(scene["position"])]
            tokens = tokens + NOISE * rng.normal(size=(segments, dims[m]))
            if joint_space:
                vector = shared[scene["class"]] + 0.5 * rng.normal(size=dims[f"{m}_global"])
            else:
                vector = tokens.mean(0) @ to_global[m]
            arrays[m] = tokens.astype(np.float32)
            arrays[f"{m}_global"] = (vector / np.linalg.norm(vector)).astype(np.float32)
        writer.add_video(video, arrays)
        scenes[video] = scene
        for q, split in enumerate(_video_splits(rng, tuple(splits), min_splits, questions_per_video)):
            family, subtype = types[int(rng.integers(len(types)))]
            template, answer_of = TEMPLATES[(family, subtype)]
            other = INSTRUMENTS[(scene["class"] + 1 + int(rng.integers(classes - 1))) % classes]
            text = template.format(i=INSTRUMENTS[scene["class"]], o=other)
            answer = answer_of(scene)
            row = (f"{video}:{q}", video, split, family, subtype, answer, text, MUSIC_AVQA_ANSWERS.index(answer))
            for name, value in zip(columns, row):
                columns[name].append(value)
            texts.append(text)
    encoded = [_encode_text(t, dims) for t in texts]
    arrays = {
        "tokens": np.stack([e[0] for e in encoded]),
        "mask": np.stack([e[1] for e in encoded]),
        "global": np.stack([e[2] for e in encoded]),
    }
    writer.finalize(MUSIC_AVQA_ANSWERS, columns, arrays)
    artifacts.write_json(planted_path(path), {"seed": seed, "classes": classes, "scenes": scenes})
    stage.finish(figures={"videos": n_videos, "questions": len(texts)})
    return path


def planted_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).stem + ".planted.json")


def planted_scenes(path: Path) -> dict[str, dict]:
    """video id -> {"class", "position", "sounding"} of a file written by :func:`make_features`."""
    return artifacts.read_json(planted_path(path))["scenes"]


@pytest.fixture(name="make_features")
def make_features_fixture() -> Callable[..., Path]:
    """The :func:`make_features` factory (call it with a path under ``tmp_path``)."""
    return make_features
