"""The HDF5 feature store (DESIGN section 4): a writer used by `extract`, a random-access reader
used by every later stage.

Layout::

    /attrs  schema_version, encoder, encoder_version, weights_sha256, joint_space, pretrained,
            segments, dim_audio, dim_visual, dim_text, dim_audio_global, dim_visual_global,
            dim_text_global, question_tokens, format, dataset, preprocessing (JSON),
            degrade ("none", or the canonical `extract --degrade` spec) and degrade_seed (when degraded);
            a part of a sharded extraction also shard_index, shard_count, shard_source (shards.py);
            a library (`extract --library`: clips without annotations) library=True, format "library"
    /videos/<video_id>/audio          float16 [T, D_a]
    /videos/<video_id>/visual         float16 [T, D_v]
    /videos/<video_id>/audio_global   float32 [D]      L2-normalised
    /videos/<video_id>/visual_global  float32 [D]
    /videos/<video_id>/degraded_audio bool [T]         (with --degrade, per degraded modality) the
    /videos/<video_id>/degraded_visual bool [T]        segments whose media were corrupted
    /failed/video_id, /failed/reason  str [F]          videos that could not be decoded
    /questions/qid, video_id, split, type, subtype, answer, text    str [Q]
    /questions/answer_index           int64 [Q]        index into /answers (MUSIC-AVQA) or option (AVQA)
    /questions/tokens                 float16 [Q, L, D_t]
    /questions/mask                   bool [Q, L]
    /questions/global                 float32 [Q, D_t]
    /questions/options                float32 [Q, K, D_t]   (AVQA only) option text embeddings
    /questions/options_text           str [Q, K]            (AVQA only)
    /answers                          str [A]          the answer vocabulary, in a fixed order

A library file has the same layout with Q = 0 and A = 0 (an empty question table and vocabulary): it
opens like any store, enters `build-bank --library`, and :meth:`FeatureStore.require_questions`
refuses it wherever questions are needed.

A file is finished when its ``<file>.meta.json`` exists (see artifacts.py); the writer works on
``<file>.partial`` and renames it when every video and question is in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np

from .config import Modality
from .errors import UserError

SCHEMA_VERSION = 1
_STR = h5py.string_dtype(encoding="utf-8")
QUESTION_STRINGS = ("qid", "video_id", "split", "type", "subtype", "answer", "text")
VIDEO_ARRAYS = ("audio", "visual", "audio_global", "visual_global")  # per video, besides masks


@dataclass(frozen=True)
class EncoderInfo:
    """What an encoder declares; stored as the file's attributes."""

    encoder: str
    encoder_version: str
    segments: int
    dims: dict[str, int]  # audio, visual, text, audio_global, visual_global, text_global
    question_tokens: int  # L
    joint_space: bool
    pretrained: bool
    weights_sha256: str = "none"
    preprocessing: dict | None = None

    def attrs(self) -> dict:
        out = {
            "schema_version": SCHEMA_VERSION,
            "encoder": self.encoder,
            "encoder_version": self.encoder_version,
            "segments": self.segments,
            "question_tokens": self.question_tokens,
            "joint_space": self.joint_space,
            "pretrained": self.pretrained,
            "weights_sha256": self.weights_sha256,
            "preprocessing": json.dumps(self.preprocessing or {}, sort_keys=True),
        }
        out.update({f"dim_{name}": int(dim) for name, dim in self.dims.items()})
        return out

    @classmethod
    def from_attrs(cls, attrs) -> "EncoderInfo":
        dims = {key[4:]: int(value) for key, value in attrs.items() if key.startswith("dim_")}
        return cls(
            encoder=str(attrs["encoder"]),
            encoder_version=str(attrs["encoder_version"]),
            segments=int(attrs["segments"]),
            dims=dims,
            question_tokens=int(attrs["question_tokens"]),
            joint_space=bool(attrs["joint_space"]),
            pretrained=bool(attrs["pretrained"]),
            weights_sha256=str(attrs["weights_sha256"]),
            preprocessing=json.loads(str(attrs["preprocessing"])),
        )

    def compatible(self, other: "EncoderInfo") -> bool:
        """Same encoder, version, segments and dims: features can be mixed."""
        return (self.encoder, self.encoder_version, self.segments, self.dims) == (
            other.encoder, other.encoder_version, other.segments, other.dims,
        )


@dataclass
class QuestionTable:
    """The small per-question columns, held in memory (token arrays stay on disk)."""

    qid: np.ndarray
    video_id: np.ndarray
    split: np.ndarray
    type: np.ndarray  # family: Audio, Visual, Audio-Visual (AVQA: its question_relation or type)
    subtype: np.ndarray  # e.g. Counting, Location; AVQA: Which, Where, ...
    answer: np.ndarray
    text: np.ndarray
    answer_index: np.ndarray

    def __len__(self) -> int:
        return len(self.qid)

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


class FeatureStore:
    """Read-only random access to a finished features file, by video id and question row."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"{self.path}: features file not found; run `r2scp extract` first")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as error:
            raise UserError(f"{self.path}: not a readable HDF5 file ({error})") from None
        attrs = dict(self._h5.attrs)
        if attrs.get("schema_version") != SCHEMA_VERSION:
            raise UserError(
                f"{self.path}: schema_version {attrs.get('schema_version')} but r2scp reads {SCHEMA_VERSION}"
            )
        if "shard_count" in attrs:
            raise UserError(
                f"{self.path}: shard {attrs['shard_index']}/{attrs['shard_count']} of a sharded extraction; "
                f"merge the parts with `r2scp merge-features` first"
            )
        self.info = EncoderInfo.from_attrs(attrs)
        self.format = str(attrs.get("format", "music-avqa"))
        self.library = bool(attrs.get("library", False))  # clips without questions (`extract --library`)
        self.answers: list[str] = [a.decode() if isinstance(a, bytes) else str(a) for a in self._h5["answers"][()]]
        self.video_ids: list[str] = sorted(self._h5["videos"].keys())
        self.failed: dict[str, str] = {}
        if "failed" in self._h5:
            ids = self._h5["failed/video_id"].asstr()[()]
            reasons = self._h5["failed/reason"].asstr()[()]
            self.failed = dict(zip(ids, reasons))
        q = self._h5["questions"]
        columns = {name: np.asarray(q[name].asstr()[()], dtype=object) for name in QUESTION_STRINGS}
        self.questions = QuestionTable(**columns, answer_index=q["answer_index"][()])
        self.has_options = "options" in q
        spec = str(attrs.get("degrade", "none"))
        self.degradation: dict | None = None  # {"spec", "seed", "modalities"} of a degraded file
        if spec != "none":
            modalities = sorted({clause.split(":")[0] for clause in spec.split(";")})
            self.degradation = {"spec": spec, "seed": int(attrs.get("degrade_seed", 0)), "modalities": modalities}

    def require_questions(self, use: str) -> None:
        """One line refusing a library file (no questions) where ``use`` needs a dataset's features."""
        if self.library:
            raise UserError(
                f"{self.path}: a library features file (clips without questions, from `r2scp extract --library`); "
                f"{use} needs a dataset's features file; a library only enters `r2scp build-bank --library`"
            )

    # -- videos
    def tokens(self, video_id: str, modality: Modality | str, positions: np.ndarray | None = None) -> np.ndarray:
        """[T, D] float32 segment tokens of one video; with ``positions`` (increasing segment indices)
        only those rows are read from the file: [len(positions), D]."""
        dataset = self._h5[f"videos/{video_id}/{Modality(modality).value}"]
        return (dataset[()] if positions is None else dataset[np.asarray(positions)]).astype(np.float32)

    def global_vector(self, video_id: str, modality: Modality | str) -> np.ndarray:
        """[D] float32 L2-normalised clip embedding."""
        return self._h5[f"videos/{video_id}/{Modality(modality).value}_global"][()]

    def stack_tokens(self, video_ids: Sequence[str], modality: Modality | str) -> np.ndarray:
        """[N, T, D] float32 tokens of several videos."""
        return np.stack([self.tokens(v, modality) for v in video_ids]) if len(video_ids) else np.zeros(
            (0, self.info.segments, self.info.dims[Modality(modality).value]), np.float32
        )

    def stack_globals(self, video_ids: Sequence[str], modality: Modality | str) -> np.ndarray:
        dim = self.info.dims[f"{Modality(modality).value}_global"]
        if not len(video_ids):
            return np.zeros((0, dim), np.float32)
        return np.stack([self.global_vector(v, modality) for v in video_ids])

    def degraded_segments(self, video_ids: Sequence[str], modality: Modality | str) -> np.ndarray | None:
        """bool [V, T]: the segments of each video whose media `extract --degrade` corrupted (the truth
        for noise identification); None when this file's ``modality`` was not degraded."""
        name = Modality(modality).value
        if self.degradation is None or name not in self.degradation["modalities"]:
            return None
        if not len(video_ids):
            return np.zeros((0, self.info.segments), bool)
        return np.stack([self._h5[f"videos/{v}/degraded_{name}"][()] for v in video_ids]).astype(bool)

    def videos_of(self, splits: Iterable[str]) -> list[str]:
        """Sorted ids of the extracted videos that have a question in one of ``splits``."""
        wanted = set(splits)
        mask = np.isin(self.questions.split, list(wanted))
        return sorted(set(self.questions.video_id[mask]))

    # -- questions
    def question_arrays(
        self, rows: Sequence[int] | np.ndarray, fields: Sequence[str] = ("tokens", "mask", "global", "options")
    ) -> dict[str, np.ndarray]:
        """tokens [B, L, D_t] float32, mask [B, L] bool, global [B, D_t] float32 and (AVQA) options
        [B, K, D]; ``fields`` reads only some of them (a run without text reads only the options)."""
        rows = np.asarray(rows)
        order = np.argsort(rows)
        inverse = np.argsort(order)
        sorted_rows = rows[order]  # h5py fancy indexing needs increasing indices
        q = self._h5["questions"]
        wanted = [f for f in fields if f != "options" or self.has_options]
        out = {name: q[name][sorted_rows][inverse] for name in wanted}
        if "tokens" in out:
            out["tokens"] = out["tokens"].astype(np.float32)
        return out

    def options_text(self, rows: Sequence[int] | np.ndarray) -> list[list[str]]:
        """AVQA: the option strings of the given question rows."""
        table = self._h5["questions/options_text"].asstr()[()]
        return [list(table[row]) for row in np.asarray(rows)]

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FeatureWriter:
    """Appends videos to a ``.partial`` file; :meth:`finalize` adds questions and renames it.

    Reopening the same partial file resumes: :attr:`done` lists the videos (and failures) already
    written. A partial file from another encoder or other constants is refused. ``notes`` are
    attributes written (again, on resume) but not compared: bookkeeping such as a shard's source.
    """

    def __init__(self, final_path: Path, info: EncoderInfo, extra_attrs: dict, notes: dict | None = None):
        self.final_path = Path(final_path)
        self.partial_path = self.final_path.with_name(self.final_path.name + ".partial")
        self.info = info
        attrs = {**info.attrs(), **extra_attrs}
        if self.partial_path.exists():
            try:
                self._h5 = h5py.File(self.partial_path, "a")
            except OSError as error:
                raise UserError(
                    f"{self.partial_path}: cannot resume an unreadable partial file ({error}); delete it or use --force"
                ) from None
            old = {k: self._h5.attrs.get(k) for k in attrs}
            mismatched = [k for k, v in attrs.items() if _attr_value(old[k]) != _attr_value(v)]
            if mismatched:
                self._h5.close()
                raise UserError(
                    f"{self.partial_path}: an unfinished extraction with other settings "
                    f"({', '.join(mismatched)}); delete it or use --force"
                )
            self._drop_incomplete_videos()
        else:
            self.final_path.parent.mkdir(parents=True, exist_ok=True)
            self._h5 = h5py.File(self.partial_path, "w")
            self._h5.attrs.update(attrs)
            self._h5.create_group("videos")
            failed = self._h5.create_group("failed")
            failed.create_dataset("video_id", (0,), maxshape=(None,), dtype=_STR)
            failed.create_dataset("reason", (0,), maxshape=(None,), dtype=_STR)
        self._h5.attrs.update(notes or {})

    def _drop_incomplete_videos(self) -> None:
        """Delete video groups that an interruption left without all four arrays."""
        videos = self._h5["videos"]
        for video_id in list(videos.keys()):
            if not set(VIDEO_ARRAYS) <= set(videos[video_id].keys()):
                del videos[video_id]

    def retry_failures(self) -> dict[str, str]:
        """Forget the failures recorded so far (so a resumed run tries those videos again) and
        return them."""
        previous = self.failures
        for name in ("video_id", "reason"):
            self._h5[f"failed/{name}"].resize((0,))
        return previous

    @property
    def done(self) -> set[str]:
        """Video ids already written (extracted or failed)."""
        return set(self._h5["videos"].keys()) | set(self._h5["failed/video_id"].asstr()[()])

    @property
    def failures(self) -> dict[str, str]:
        return dict(zip(self._h5["failed/video_id"].asstr()[()], self._h5["failed/reason"].asstr()[()]))

    def add_video(self, video_id: str, arrays: dict[str, np.ndarray],
                  degraded: dict[str, np.ndarray] | None = None) -> None:
        """``arrays``: audio, visual [T, D] and audio_global, visual_global [D]; ``degraded``: per
        degraded modality its corrupted segments, bool [T] (written first: a video is complete once
        its four arrays are in)."""
        group = self._h5["videos"].create_group(video_id)
        for name, mask in (degraded or {}).items():
            group.create_dataset(f"degraded_{name}", data=np.asarray(mask, bool))
        for name in ("audio", "visual"):
            group.create_dataset(name, data=np.asarray(arrays[name], np.float16))
            group.create_dataset(f"{name}_global", data=np.asarray(arrays[f"{name}_global"], np.float32))

    def add_failure(self, video_id: str, reason: str) -> None:
        for name, value in (("video_id", video_id), ("reason", reason)):
            data = self._h5[f"failed/{name}"]
            data.resize((data.shape[0] + 1,))
            data[-1] = value

    def flush(self) -> None:
        self._h5.flush()

    def finalize(self, answers: Sequence[str], columns: dict[str, Sequence], arrays: dict[str, np.ndarray]) -> Path:
        """Write the question table and the vocabulary, then move the file to its final name."""
        if "questions" in self._h5:
            del self._h5["questions"]
        if "answers" in self._h5:
            del self._h5["answers"]
        q = self._h5.create_group("questions")
        for name in QUESTION_STRINGS:
            q.create_dataset(name, data=np.asarray([str(v) for v in columns[name]], dtype=object), dtype=_STR)
        q.create_dataset("answer_index", data=np.asarray(columns["answer_index"], np.int64))
        q.create_dataset("tokens", data=np.asarray(arrays["tokens"], np.float16), chunks=True)
        q.create_dataset("mask", data=np.asarray(arrays["mask"], bool))
        q.create_dataset("global", data=np.asarray(arrays["global"], np.float32))
        if "options" in arrays:
            q.create_dataset("options", data=np.asarray(arrays["options"], np.float32))
            q.create_dataset("options_text", data=np.asarray(columns["options_text"], dtype=object), dtype=_STR)
        self._h5.create_dataset("answers", data=np.asarray(list(answers), dtype=object), dtype=_STR)
        self._h5.close()
        self.partial_path.replace(self.final_path)
        return self.final_path

    def close(self) -> None:
        if self._h5.id.valid:
            self._h5.close()


def _attr_value(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
