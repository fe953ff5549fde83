"""`r2scp extract`: media and questions -> features.h5 (DESIGN section 4).

With ``--library`` the input is any folder of clips without annotations (``DIR/videos/*`` or
``DIR/*``, see datasets.read_clip_folder) and the output a library features file for `build-bank
--library`: every clip's tokens and globals, an empty question table and answer vocabulary, and the
attribute ``library=True``. Without the flag a folder with clips but no annotation files is refused
with a line that names the flag (no guessing: a mistyped dataset path must not become a library).

The stage reads the annotation files (every record, or a one-line error), decodes each needed
video once (in a pool of worker processes when there are many; a cheap CPU encoder encodes there
too), encodes clips in batches and appends them to ``<out>.partial`` as they finish, so an
interrupted run resumes where it stopped (failed videos are retried).
With ``--degrade`` every decoded clip is corrupted per segment (degrade.py) before it is encoded,
and the corrupted segments of each video are written beside its tokens.
Videos that cannot be read are listed with a reason and their questions are excluded; when more
than ``--max-failures`` of the videos fail the stage stops with the list and leaves only the
partial file. Finally the questions are encoded, the file takes its final name and its meta file
is written beside it.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from . import artifacts, degrade, shards
from .config import DATASET_FORMATS, ExtractConfig
from .console import console, progress_bar
from .datasets import CLIP_SUFFIXES, Dataset, Question, annotation_path, read_clip_folder, read_dataset
from .encoders.registry import Encoder, build_encoder
from .errors import UserError
from .features import FeatureWriter
from .media import Clip, ClipFailure, decode_clip

STAGE = "extract"
POOL_MIN_VIDEOS = 32  # below this, starting worker processes costs more than it saves
TEXT_BATCH = 4096  # questions encoded per call
_FAILURES_SHOWN = 5


def run(config: ExtractConfig, force: bool = False, workers: int | None = None,
        shard: shards.Shard | None = None) -> Path:
    """Extract features of ``config.dataset`` into ``config.out``; returns the features path.

    ``workers``: decoding processes (default: up to 2 when there are at least POOL_MIN_VIDEOS
    videos to decode, else decoding in this process; 0 forces this process).
    ``shard``: extract only that shard of the sorted video ids into its part file, whose path is
    returned (shards.py; `r2scp merge-features` joins the parts).
    """
    _check_config(config)
    dataset = _read_input(config)
    questions = dataset.questions
    if shard is not None:  # the shard's videos into its part file; shard 0 keeps every question
        total = len(dataset.video_ids())
        config = replace(config, out=shard.part_path(config.out))
        dataset, questions = shards.restrict(dataset, shard)
        shards.announce(shard, len(dataset.video_ids()), total, config.out)
    stage = artifacts.begin(STAGE, config.out, config, inputs={"dataset": config.dataset}, force=force)
    if stage.finished:
        console.print(f"{config.out}: already extracted with these settings (use --force to redo)")
        return config.out
    shards.pin_device(shard, config.device)  # torchrun: one GPU per process
    encoder = build_encoder(config)
    if config.degrade.strip() and hasattr(encoder, "load_clip"):
        raise UserError(f"--degrade corrupts decoded media; encoder '{config.encoder}' reads no media")
    partial = config.out.with_name(config.out.name + ".partial")
    config.out.unlink(missing_ok=True)  # its meta is gone: an old file must not look current
    if force:
        partial.unlink(missing_ok=True)
    writer = FeatureWriter(config.out, encoder.info, {**_file_attrs(config), **(shard.attrs() if shard else {})},
                           notes={"shard_source": shard.source} if shard else None)
    try:
        rate = _extract_videos(writer, encoder, dataset, config, workers)
        failures = writer.failures
        _check_failures(failures, len(dataset.video_ids()), config.max_failures, partial)
        kept, excluded = _kept_questions(questions, failures)
        columns, arrays = _encode_questions(encoder, kept, "library" if config.library else config.format)
        writer.finalize(dataset.answers, columns, arrays)
    finally:
        writer.close()
    stage.finish(figures={**_figures(dataset, kept, excluded, failures, rate, encoder),
                          **_degrade_figures(config, dataset, failures)}, shard=shard.meta() if shard else None)
    questions_part = "a library: no questions" if config.library else f"{len(kept)} questions ({len(excluded)} excluded"
    console.print(
        f"{config.out}: {len(dataset.video_ids()) - len(failures)} videos, {questions_part}, "
        f"{len(failures)} videos failed{'' if config.library else ')'}, {rate:.1f} clips/s"
    )
    return config.out


def _read_input(config: ExtractConfig) -> Dataset:
    """The dataset's annotations (checked) or, with --library, the clip folder; a folder with neither
    annotation files nor clips, or clips without annotations and no --library, is a one-line error."""
    if config.library:
        return read_clip_folder(config.dataset)
    root = Path(config.dataset)
    annotations = [annotation_path(root, config.format, split) for split in config.splits]
    if root.is_dir() and not any(path.exists() for path in annotations):
        names = ", ".join(path.name for path in annotations)
        folder = root / "videos" if (root / "videos").is_dir() else root
        if any(p.is_file() and p.suffix.lower() in CLIP_SUFFIXES for p in folder.iterdir()):
            raise UserError(f"{root}: clips but no annotation files ({names}); to extract the clips as a library "
                            "(features without questions, for `build-bank --library`) pass --library")  # fmt: skip
        raise UserError(f"{root}: neither annotation files ({names}) nor clips ({folder}/*.mp4): "
                        "not a dataset or a clip folder")  # fmt: skip
    dataset = read_dataset(root, config.format, config.splits)
    if not dataset.questions:
        raise UserError(f"{config.dataset}: no questions in the splits {', '.join(config.splits)}")
    return dataset


def _check_config(config: ExtractConfig) -> None:
    if config.format not in DATASET_FORMATS:
        raise UserError(f"unknown --format '{config.format}'; choose one of: {', '.join(DATASET_FORMATS)}")
    if config.segments < 1:
        raise UserError(f"--segments must be at least 1, got {config.segments}")
    if config.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {config.batch_size}")
    if not 0.0 <= config.max_failures <= 1.0:
        raise UserError(f"--max-failures is a share of the videos in [0, 1], got {config.max_failures}")
    degradation = _degradation(config)
    if degradation:
        degradation.check(config.segments)


def _degradation(config: ExtractConfig) -> degrade.Degradation | None:
    """The parsed ``--degrade`` spec with its seed (None: clean media)."""
    return degrade.parse(config.degrade, config.degrade_seed)


def _file_attrs(config: ExtractConfig) -> dict:
    """Attributes besides the encoder's: a partial file with other values is not resumed."""
    attrs = {
        "format": "library" if config.library else config.format,
        "dataset": str(Path(config.dataset).resolve()),
        "splits": "" if config.library else ",".join(config.splits),
    }
    if config.library:  # only then: partial files of datasets written before this attribute still resume
        attrs["library"] = True
    degradation = _degradation(config)  # an extra attribute: encoder, dims and vocabulary stay the clean file's
    attrs["degrade"] = degradation.spec if degradation else "none"
    if degradation:
        attrs["degrade_seed"] = degradation.seed
    return attrs


# --------------------------------------------------------------------------- videos


_WORKER: dict = {}  # per worker process: the encoder (when it encodes there), segments, frame size, degradation


def _init_worker(encoder: Encoder | None, segments: int, frame_size,
                 degradation: degrade.Degradation | None = None) -> None:
    _WORKER.update(encoder=encoder, segments=segments, frame_size=frame_size, degradation=degradation)


def _decode_job(path: Path, video_id: str) -> Clip | str:
    """Worker job: the decoded clip (corrupted when degrading), or the reason it could not be decoded."""
    try:
        clip = decode_clip(path, _WORKER["segments"], _WORKER["frame_size"], video_id)
    except ClipFailure as failure:
        return str(failure)
    degradation = _WORKER.get("degradation")
    return degradation.apply(clip) if degradation else clip


def _encode_job(path: Path, video_id: str) -> dict[str, np.ndarray] | str:
    """Worker job for CPU encoders: the clip's feature arrays, or the failure reason."""
    clip = _decode_job(path, video_id)
    return clip if isinstance(clip, str) else _WORKER["encoder"].encode_clips([clip])[0]


def _pooled(job, initargs: tuple, dataset: Dataset, video_ids: Sequence[str],
            workers: int) -> Iterator[tuple[str, object]]:
    """(video id, job result) in the order of ``video_ids``, computed by ``workers`` processes with
    a bounded number of videos in flight (so results never pile up in memory)."""
    context = get_context("spawn")  # no fork: the parent may hold open HDF5 files and threads
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=initargs) as pool:
        pending: deque[tuple[str, Future]] = deque()
        for video_id in video_ids:
            pending.append((video_id, pool.submit(job, dataset.video_path(video_id), video_id)))
            if len(pending) >= 8 * workers:
                done_id, future = pending.popleft()
                yield done_id, future.result()
        while pending:
            done_id, future = pending.popleft()
            yield done_id, future.result()


def _serial_clips(encoder: Encoder, dataset: Dataset, video_ids: Sequence[str], segments: int,
                  degradation: degrade.Degradation | None = None) -> Iterator[tuple[str, Clip | str]]:
    """(video id, clip or failure reason), read in this process (media, or the encoder's own loader)."""
    load_clip = getattr(encoder, "load_clip", None)
    _init_worker(None, segments, getattr(encoder, "frame_size", None), degradation)
    for video_id in video_ids:
        if load_clip is None:
            yield video_id, _decode_job(dataset.video_path(video_id), video_id)
            continue
        try:
            yield video_id, load_clip(video_id)
        except ClipFailure as failure:
            yield video_id, str(failure)


def _encoded_batches(encoder: Encoder, dataset: Dataset, video_ids: Sequence[str], config: ExtractConfig,
                     workers: int) -> Iterator[list[tuple[str, dict | str]]]:
    """Batches of (video id, feature arrays or failure reason), in the order of ``video_ids``.

    An encoder marked ``encode_in_workers`` (cheap, CPU-only, picklable: handcrafted) decodes and
    encodes in the worker processes; any other encodes here, batch by batch, from clips decoded
    by the workers (or read here when ``workers`` is 0 or the encoder loads its own inputs).
    """
    frame_size = getattr(encoder, "frame_size", None)
    media = not hasattr(encoder, "load_clip")
    degradation = _degradation(config)
    if workers and media and getattr(encoder, "encode_in_workers", False):
        initargs = (encoder, config.segments, frame_size, degradation)
        results = _pooled(_encode_job, initargs, dataset, video_ids, workers)
        yield from _batches(results, config.batch_size)
        return
    if workers and media:
        clips = _pooled(_decode_job, (None, config.segments, frame_size, degradation), dataset, video_ids, workers)
    else:
        clips = _serial_clips(encoder, dataset, video_ids, config.segments, degradation)
    for batch in _batches(clips, config.batch_size):
        decoded = [item for _, item in batch if isinstance(item, Clip)]
        arrays = iter(encoder.encode_clips(decoded) if decoded else [])
        yield [(video_id, item if isinstance(item, str) else next(arrays)) for video_id, item in batch]


def _batches(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _extract_videos(writer: FeatureWriter, encoder: Encoder, dataset: Dataset, config: ExtractConfig,
                    workers: int | None) -> float:
    """Decode, encode and append every video not yet in the partial file; returns clips/s."""
    needed = dataset.video_ids()
    retried = writer.retry_failures()
    done = writer.done
    todo = [v for v in needed if v not in done]
    if retried:
        console.print(f"retrying {len(retried)} videos that failed before")
    if len(todo) < len(needed):
        console.print(f"resuming {writer.partial_path.name}: {len(needed) - len(todo)} of {len(needed)} videos done")
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if len(todo) >= POOL_MIN_VIDEOS else 0
    start, processed = time.perf_counter(), 0
    degradation = _degradation(config)
    with progress_bar("clips_s") as bar:
        task = bar.add_task("extract", total=len(needed), completed=len(needed) - len(todo), clips_s="-")
        for batch in _encoded_batches(encoder, dataset, todo, config, workers):
            for video_id, result in batch:
                if isinstance(result, str):
                    writer.add_failure(video_id, result)
                else:
                    degraded = degradation.masks(video_id, config.segments) if degradation else None
                    writer.add_video(video_id, result, degraded)
            writer.flush()
            processed += len(batch)
            rate = processed / max(time.perf_counter() - start, 1e-9)
            bar.update(task, advance=len(batch), clips_s=f"{rate:.1f}")
    return processed / max(time.perf_counter() - start, 1e-9) if processed else 0.0


def _check_failures(failures: dict[str, str], videos: int, max_failures: float, partial: Path) -> None:
    """A UserError listing the failures when they exceed the allowed share (or are all videos)."""
    if not failures or (len(failures) <= max_failures * videos and len(failures) < videos):
        return
    shown = "; ".join(f"{v} ({r})" for v, r in sorted(failures.items())[:_FAILURES_SHOWN])
    more = f"; +{len(failures) - _FAILURES_SHOWN} more" if len(failures) > _FAILURES_SHOWN else ""
    what = "all videos failed" if len(failures) == videos else f"more than --max-failures {max_failures:g} allows"
    raise UserError(
        f"{len(failures)} of {videos} videos failed ({what}): {shown}{more}; "
        f"fix them and rerun (extracted videos are kept in {partial.name})"
    )


def _degrade_figures(config: ExtractConfig, dataset: Dataset, failures: dict[str, str]) -> dict:
    """With --degrade: the canonical spec, its seed and the corrupted segments per modality."""
    degradation = _degradation(config)
    if not degradation:
        return {}
    counts = dict.fromkeys(degradation.modalities, 0)
    videos = [v for v in dataset.video_ids() if v not in failures]
    for video_id in videos:
        for modality, mask in degradation.masks(video_id, config.segments).items():
            counts[modality] += int(mask.sum())
    return {"degrade": {"spec": degradation.spec, "seed": degradation.seed, "segments": counts,
                        "of_segments": len(videos) * config.segments}}


# --------------------------------------------------------------------------- questions


def _kept_questions(questions: list[Question], failures: dict[str, str]) -> tuple[list[Question], list[Question]]:
    """Questions whose video was extracted, and those excluded because it failed."""
    kept = [q for q in questions if q.video_id not in failures]
    excluded = [q for q in questions if q.video_id in failures]
    return kept, excluded


def _encode_texts(encoder: Encoder, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Texts encoded in batches into preallocated arrays (tokens as float16, as stored)."""
    info = encoder.info
    out = {
        "tokens": np.zeros((len(texts), info.question_tokens, info.dims["text"]), np.float16),
        "mask": np.zeros((len(texts), info.question_tokens), bool),
        "global": np.zeros((len(texts), info.dims["text_global"]), np.float32),
    }
    for begin in range(0, len(texts), TEXT_BATCH):
        part = encoder.encode_texts(list(texts[begin : begin + TEXT_BATCH]))
        for name, array in out.items():
            array[begin : begin + len(part[name])] = part[name]
    return out


def _encode_questions(encoder: Encoder, questions: list[Question], format: str) -> tuple[dict, dict]:
    """The question table's columns and its token / mask / global arrays (AVQA: and options)."""
    columns = {
        "qid": [q.qid for q in questions],
        "video_id": [q.video_id for q in questions],
        "split": [q.split for q in questions],
        "type": [q.family for q in questions],
        "subtype": [q.subtype for q in questions],
        "answer": [q.answer for q in questions],
        "text": [q.text for q in questions],
        "answer_index": [q.answer_index for q in questions],
    }
    arrays = _encode_texts(encoder, columns["text"])
    if format == "avqa":  # each distinct option string is encoded once (a library has no options)
        columns["options_text"] = [list(q.options) for q in questions]
        unique = sorted({o for q in questions for o in q.options})
        vectors = _encode_texts(encoder, unique)["global"]
        row = {text: i for i, text in enumerate(unique)}
        arrays["options"] = vectors[np.array([[row[o] for o in q.options] for q in questions], np.int64)]
    return columns, arrays


def _figures(dataset: Dataset, kept: list[Question], excluded: list[Question], failures: dict[str, str],
             rate: float, encoder: Encoder) -> dict:
    """The numbers recorded in the meta file."""
    info = encoder.info
    return {
        "videos": len(dataset.video_ids()) - len(failures),
        "failed": dict(sorted(failures.items())),
        "questions": dict(Counter(q.split for q in kept)),
        "excluded_questions": dict(Counter(q.split for q in excluded)),
        "clips_per_s": round(rate, 2),
        "segments": info.segments,
        "dims": info.dims,
        "question_tokens": info.question_tokens,
        "longest_question_words": max((len(q.text.split()) for q in kept), default=0),
        "annotation_quirks": dataset.quirks,
        **({"library": True} if dataset.library else {}),
    }
