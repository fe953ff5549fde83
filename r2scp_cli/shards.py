"""Sharded extraction (DESIGN section 10): which shard of the video list a process extracts, the part
file it writes, and `r2scp merge-features`, which checks the parts and writes the single-run store.

- The split: shard ``i`` of ``N`` takes every N-th of the sorted video ids, starting at the i-th
  (``ids[i::N]``), so shards stay balanced when ids cluster (one source per id prefix, say).
- The part file: ``--out features.h5 --shard 1/4`` writes ``features.part-1-of-4.h5`` (the index is
  zero-padded to the width of N-1, so the parts sort by name) with its own meta file and its own
  ``.partial`` while it runs, so a killed shard resumes like any extraction.
- Questions: shard 0 holds every question (except those of its own failed videos); the other parts
  hold none. Merging drops the questions of videos that failed in other parts, so the question
  rows, their order and their text encodings (encoded in the same batches when no video fails)
  are those of a single run.
- Without ``--shard`` the shard comes from torchrun (``RANK`` / ``WORLD_SIZE``), else from a SLURM
  array (``SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN``, divided by ``SLURM_ARRAY_TASK_STEP``, of
  ``SLURM_ARRAY_TASK_COUNT``); a world or array of one extracts every video into the plain output.
  Under torchrun, ``--device cuda`` means GPU ``LOCAL_RANK`` of the machine for each process.
- A part's attributes hold ``shard_index``, ``shard_count`` and ``shard_source``; its meta holds
  the same under ``shard``. Later stages refuse a part (features.FeatureStore).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import h5py
import numpy as np

from . import artifacts
from .console import console, progress_bar
from .errors import UserError
from .features import QUESTION_STRINGS, SCHEMA_VERSION, VIDEO_ARRAYS, EncoderInfo, FeatureWriter

SHARD_ATTRS = ("shard_index", "shard_count", "shard_source")  # a part's bookkeeping, absent from the merge
_ROWS_PER_COPY = 4096  # question rows copied per read


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``, and where that was decided (for the record)."""

    index: int
    count: int
    source: str
    local_rank: int | None = None  # torchrun's LOCAL_RANK: the GPU of this process (see pin_device)

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def videos(self, video_ids: Sequence[str]) -> list[str]:
        """This shard's videos: every count-th of the sorted ids, from the index-th on."""
        return sorted(video_ids)[self.index :: self.count]

    def part_path(self, out: Path) -> Path:
        """``features.h5`` -> ``features.part-1-of-4.h5``."""
        out = Path(out)
        index = str(self.index).zfill(len(str(self.count - 1)))
        return out.with_name(f"{out.stem}.part-{index}-of-{self.count}{out.suffix}")

    def attrs(self) -> dict:
        return {"shard_index": self.index, "shard_count": self.count}

    def meta(self) -> dict:
        return {"index": self.index, "count": self.count, "source": self.source}


# --------------------------------------------------------------------------- which shard


def parse(text: str, source: str = "--shard") -> Shard:
    """``"i/N"`` (0 <= i < N) as a Shard, or a one-line error."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise UserError(f"{source}: expected i/N such as 0/4 (shard i of N, 0-based), got '{text}'")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise UserError(f"{source}: shard {index}/{count} does not exist; N is at least 1 and i runs from 0 to N-1")
    return Shard(index, count, source if source != "--shard" else f"--shard {index}/{count}")


def _integer(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise UserError(f"{name}={environ[name]!r} is not an integer; pass --shard i/N instead") from None


def from_environment(environ: Mapping[str, str] | None = None) -> Shard | None:
    """The shard of a torchrun process (RANK / WORLD_SIZE) or of a SLURM array task; None when
    neither is set or the world / array holds one process."""
    environ = os.environ if environ is None else environ
    if "RANK" in environ and "WORLD_SIZE" in environ:
        rank, world = _integer(environ, "RANK"), _integer(environ, "WORLD_SIZE")
        source = f"torchrun (RANK={rank}, WORLD_SIZE={world})"
        local = _integer(environ, "LOCAL_RANK") if "LOCAL_RANK" in environ else None
        return replace(parse(f"{rank}/{world}", source), local_rank=local) if world > 1 else None
    if "SLURM_ARRAY_TASK_ID" in environ and "SLURM_ARRAY_TASK_COUNT" in environ:
        task, count = _integer(environ, "SLURM_ARRAY_TASK_ID"), _integer(environ, "SLURM_ARRAY_TASK_COUNT")
        first = _integer(environ, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in environ else 0
        step = _integer(environ, "SLURM_ARRAY_TASK_STEP") if "SLURM_ARRAY_TASK_STEP" in environ else 1
        source = (f"SLURM array (SLURM_ARRAY_TASK_ID={task}, SLURM_ARRAY_TASK_MIN={first}, "
                  f"SLURM_ARRAY_TASK_STEP={step}, SLURM_ARRAY_TASK_COUNT={count})")
        if (task - first) % max(step, 1):
            raise UserError(f"{source}: the task ids are not evenly spaced; submit --array=0-{count - 1} or pass --shard i/N")
        return parse(f"{(task - first) // max(step, 1)}/{count}", source) if count > 1 else None
    return None


def resolve(flag: str | None, environ: Mapping[str, str] | None = None) -> Shard | None:
    """The shard of `r2scp extract`: ``--shard`` when given, else torchrun's or SLURM's variables."""
    return parse(flag) if flag is not None else from_environment(environ)


def pin_device(shard: Shard | None, device: str) -> None:
    """Under torchrun with ``--device cuda``, process LOCAL_RANK works on GPU LOCAL_RANK (as DDP
    does) rather than every process on GPU 0; "cuda" stays the recorded device, so parts agree."""
    if shard is None or shard.local_rank is None or device != "cuda":
        return
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 1:
        torch.cuda.set_device(shard.local_rank % torch.cuda.device_count())


def restrict(dataset, shard: Shard):
    """The dataset narrowed to the shard's videos, and the questions its part holds (shard 0: all)."""
    mine = set(shard.videos(dataset.video_ids()))
    questions = dataset.questions if shard.index == 0 else []
    files = [replace(f, questions=[q for q in f.questions if q.video_id in mine]) for f in dataset.files]
    clips = None if dataset.clips is None else {v: p for v, p in dataset.clips.items() if v in mine}  # a library
    return replace(dataset, files=files, clips=clips), questions


def announce(shard: Shard, videos: int, total: int, part: Path) -> None:
    console.print(f"shard {shard.label} from {shard.source}: {videos} of {total} videos -> {part.name}", soft_wrap=True)


# --------------------------------------------------------------------------- merge-features


@dataclass
class _Part:
    path: Path
    meta: dict
    attrs: dict
    answers: list[str]
    videos: list[str]
    failed: dict[str, str]

    @property
    def index(self) -> int:
        return int(self.attrs["shard_index"])

    @property
    def count(self) -> int:
        return int(self.attrs["shard_count"])


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_part(path: Path) -> _Part:
    """A finished part's attributes, vocabulary, videos and failures, or a one-line error."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    if path.name.endswith(".partial") or (not path.exists() and partial.exists()):
        raise UserError(f"{path}: an unfinished part (its extraction was interrupted or is still running); "
                        f"rerun the same `r2scp extract --shard` to finish it")
    if not path.exists():
        raise UserError(f"{path}: not found; run `r2scp extract --shard i/N` first")
    meta_file = artifacts.meta_path(path)
    if not meta_file.exists():
        raise UserError(f"{path}: an unfinished part (no {meta_file.name}); rerun the same `r2scp extract --shard`")
    meta = artifacts.read_json(meta_file)
    if meta.get("stage") != "extract":
        raise UserError(f"{path}: made by `{meta.get('stage')}`, not a part of `r2scp extract --shard`")
    try:
        with h5py.File(path, "r") as h5:
            attrs = {k: _plain(v) for k, v in h5.attrs.items()}
            if "shard_count" not in attrs:
                raise UserError(f"{path}: not a shard part (no shard attributes); a single extraction needs no merge")
            answers = list(h5["answers"].asstr()[()])
            videos = sorted(h5["videos"].keys())
            failed = dict(zip(h5["failed/video_id"].asstr()[()], h5["failed/reason"].asstr()[()]))
    except OSError as error:
        raise UserError(f"{path}: not a readable HDF5 file ({error})") from None
    return _Part(path, meta, attrs, answers, videos, failed)


def _check_agreement(parts: list[_Part]) -> None:
    """Same settings, same shard count, every shard exactly once, no video twice, the same split."""
    first = parts[0]
    if first.attrs.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{first.path}: schema_version {first.attrs.get('schema_version')} but r2scp writes {SCHEMA_VERSION}")
    for part in parts[1:]:
        if part.count != first.count:
            raise UserError(f"{part.path}: shard {part.index}/{part.count}, but {first.path.name} is shard "
                            f"{first.index}/{first.count}; merge the parts of one split")
        keys = sorted((set(part.attrs) | set(first.attrs)) - set(SHARD_ATTRS))
        for key in keys:
            if part.attrs.get(key) != first.attrs.get(key):
                raise UserError(f"{part.path}: {key} is {part.attrs.get(key)!r} but {first.path.name} has "
                                f"{first.attrs.get(key)!r}; the parts must come from one extract setting")
        if part.answers != first.answers:
            raise UserError(f"{part.path}: its answer vocabulary differs from {first.path.name}'s")
        config, other = dict(part.meta.get("config", {})), dict(first.meta.get("config", {}))
        for name in sorted((set(config) | set(other)) - {"out"}):
            if config.get(name) != other.get(name):
                raise UserError(f"{part.path}: extract config {name} is {config.get(name)!r} but "
                                f"{first.path.name} has {other.get(name)!r}")
        if part.meta.get("inputs") != first.meta.get("inputs"):
            raise UserError(f"{part.path}: extracted from other dataset contents than {first.path.name} "
                            f"(the annotation or media changed between the shards)")
    by_index: dict[int, _Part] = {}
    for part in parts:
        if part.index in by_index:
            raise UserError(f"{part.path}: shard {part.index}/{part.count} is also given as {by_index[part.index].path}")
        by_index[part.index] = part
    for index in range(first.count):
        if index not in by_index:
            expected = Shard(index, first.count, "").part_path(first.path.with_name(
                re.sub(r"\.part-\d+-of-\d+", "", first.path.name)))
            raise UserError(f"{expected}: shard {index}/{first.count} is missing; merge needs all {first.count} parts")
    owner: dict[str, Path] = {}
    for part in parts:
        for video in [*part.videos, *part.failed]:
            if video in owner:
                raise UserError(f"{part.path}: video {video} is also in {owner[video]}; each video belongs to one shard")
            owner[video] = part.path
    every = sorted(owner)
    for part in parts:
        expected = Shard(part.index, part.count, "").videos(every)
        if sorted([*part.videos, *part.failed]) != expected:
            raise UserError(f"{part.path}: its videos are not shard {part.index}/{part.count} of the parts' video list; "
                            f"were the shards extracted from the same dataset?")


def merge(parts: Sequence[Path], out: Path) -> Path:
    """Check the parts of a sharded extraction and write the store a single run writes; returns ``out``.

    The file is written under a temporary name and moved to ``out`` in one step, then its meta file
    (stage ``extract``, the parts' config with ``out``) is written; a failed merge leaves nothing.
    """
    out = Path(out).absolute()
    if not parts:
        raise UserError("merge-features: no part files given")
    if any(Path(p).absolute() == out for p in parts):
        raise UserError(f"{out}: is one of the parts; choose another --out")
    read = sorted((_read_part(Path(p)) for p in parts), key=lambda part: part.index)
    _check_agreement(read)
    first = read[0]
    info = EncoderInfo.from_attrs(first.attrs)
    extra = {k: v for k, v in first.attrs.items() if k not in info.attrs() and k not in SHARD_ATTRS}
    failed = dict(sorted(kv for part in read for kv in part.failed.items()))

    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.merging-{os.getpid()}")
    leftovers = (temporary, temporary.with_name(temporary.name + ".partial"))
    for path in leftovers:
        path.unlink(missing_ok=True)
    writer = None
    try:
        writer = FeatureWriter(temporary, info, extra)
        _copy_videos(writer, read)
        for video_id, reason in failed.items():
            writer.add_failure(video_id, reason)
        with h5py.File(first.path, "r") as h5:
            columns, arrays, dropped = _kept_rows(h5["questions"], set(failed))
        writer.finalize(first.answers, columns, arrays)
        artifacts.meta_path(out).unlink(missing_ok=True)  # an old meta must not describe the new file
        os.replace(temporary, out)
    finally:
        if writer is not None:
            writer.close()
        for path in leftovers:
            path.unlink(missing_ok=True)
    config = {**first.meta["config"], "out": str(out)}
    stage = artifacts.StageRun("extract", out, config, first.meta.get("inputs", {}))
    figures = _figures(read, info, columns, dropped, failed)
    stage.finish(figures=figures, merged_from=[{"path": str(p.path.absolute()), "run_id": p.meta.get("run_id"),
                                                "shard": p.meta.get("shard")} for p in read])
    console.print(f"{out}: merged {len(read)} parts: {figures['videos']} videos, {len(columns['qid'])} questions "
                  f"({len(failed)} videos failed)")
    return out


def _copy_videos(writer: FeatureWriter, parts: list[_Part]) -> None:
    with progress_bar() as bar:
        task = bar.add_task("merge", total=sum(len(p.videos) for p in parts))
        for part in parts:
            with h5py.File(part.path, "r") as h5:
                for video_id in part.videos:
                    group = h5["videos"][video_id]
                    arrays = {name: group[name][()] for name in VIDEO_ARRAYS}
                    degraded = {n[len("degraded_"):]: group[n][()] for n in group if n.startswith("degraded_")}
                    writer.add_video(video_id, arrays, degraded or None)  # extract --degrade: its segment masks
                    bar.advance(task)
            writer.flush()


def _kept_rows(q: h5py.Group, failed: set[str]) -> tuple[dict, dict, list[str]]:
    """Shard 0's question columns and arrays without the questions of failed videos (read in
    blocks of rows), and the splits of the dropped rows."""
    video_id = q["video_id"].asstr()[()]
    keep = ~np.isin(video_id, list(failed)) if failed else np.ones(len(video_id), bool)
    columns = {name: q[name].asstr()[()][keep].tolist() for name in QUESTION_STRINGS}
    columns["answer_index"] = q["answer_index"][()][keep]
    dropped = q["split"].asstr()[()][~keep].tolist()
    names = [n for n in ("tokens", "mask", "global", "options") if n in q]
    arrays = {n: np.empty((int(keep.sum()), *q[n].shape[1:]), q[n].dtype) for n in names}
    filled = 0
    for begin in range(0, len(keep), _ROWS_PER_COPY):
        rows = keep[begin : begin + _ROWS_PER_COPY]
        for n in names:
            arrays[n][filled : filled + rows.sum()] = q[n][begin : begin + len(rows)][rows]
        filled += int(rows.sum())
    if "options_text" in q:
        columns["options_text"] = q["options_text"].asstr()[()][keep].tolist()
    return columns, arrays, dropped


def _figures(parts: list[_Part], info: EncoderInfo, columns: dict, dropped: list[str], failed: dict) -> dict:
    """The figures of a single run's meta; clips_per_s sums the parts' rates (parallel shards)."""
    first = parts[0].meta.get("figures", {})
    excluded = Counter(first.get("excluded_questions", {}))
    excluded.update(dropped)
    degraded = {}
    if "degrade" in first:  # extract --degrade: corrupted segments summed over the parts
        summed = Counter()
        for part in parts:
            summed.update(part.meta["figures"]["degrade"]["segments"])
        degraded = {"degrade": {**first["degrade"], "segments": dict(summed),
                                "of_segments": sum(p.meta["figures"]["degrade"]["of_segments"] for p in parts)}}
    return {
        "videos": sum(len(p.videos) for p in parts),
        "failed": failed,
        "questions": dict(Counter(columns["split"])),
        "excluded_questions": dict(excluded),
        "clips_per_s": round(sum(p.meta.get("figures", {}).get("clips_per_s", 0.0) for p in parts), 2),
        "segments": info.segments,
        "dims": info.dims,
        "question_tokens": info.question_tokens,
        "longest_question_words": max((len(t.split()) for t in columns["text"]), default=0),
        "annotation_quirks": first.get("annotation_quirks", {}),
        **degraded,
    }
