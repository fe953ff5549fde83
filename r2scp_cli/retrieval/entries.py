"""What a bank holds (DESIGN section 5): entries from the features file and any ``--library`` files.

Library ids live in their own namespace: an entry is (source, video id), and the exclusion compares
a query's id with each entry's ``own_video``, the dataset video the entry *is*: its id for an entry
of the features file; for a library clip "" (it is no dataset video, whatever its raw id), unless
its clip-level vectors (both modalities) equal a dataset video's, bit for bit: then it is a copy of
that video (the dataset's own clips extracted as a library, say), excluded for it and placed in its
cross-fitting fold. A library clip whose raw id merely equals a dataset id is neither excluded nor
read from the wrong file (values are read per source). Re-encoded copies (other bytes) are not
detected. The binders train on every entry: bank videos and library clips alike.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import artifacts
from ..config import BankConfig, Modality
from ..errors import UserError
from ..features import FeatureStore
from .keys import Fetch
from .search import rows_by_video

MEDIA = Modality.media()


@dataclass
class Entries:
    """Bank entries: references (source file, video id), in a fixed order."""

    stores: list[FeatureStore]
    source: np.ndarray  # int32 [E]: index into stores (0: the features file, then the libraries)
    video_id: np.ndarray  # object [E]: the id within its source
    own_video: np.ndarray | None = None  # object [E]: the dataset video the entry is ("" for a library clip)

    def __len__(self) -> int:
        return len(self.video_id)

    def clips(self) -> list[str]:
        """One name per distinct clip: the dataset video it is, else ``library<k>:<id>`` (k = its
        --library position from 1). Cross-fitting folds hash these names."""
        own = self.own_video if self.own_video is not None else self.video_id
        return [o or f"library{s}:{v}" for o, s, v in zip(own, self.source, self.video_id)]

    def fetch(self) -> Fetch:
        """Read the stacked features of all entries, in entry order, source by source."""

        def fetch(modality: Modality, kind: str) -> np.ndarray:
            parts = []
            for s, store in enumerate(self.stores):
                ids = list(self.video_id[self.source == s])
                parts.append(store.stack_tokens(ids, modality) if kind == "tokens" else store.stack_globals(ids, modality))
            return np.concatenate(parts)  # entries are grouped by source (see bank_entries)

        return fetch


def exclusion_rows(own_video: Sequence[str]) -> dict[str, np.ndarray]:
    """dataset video id -> the entry rows a query of that video must never get (its own entry and any
    library copy of it); library clips that are no dataset video ("") exclude nothing."""
    return {video: rows for video, rows in rows_by_video(own_video).items() if video}


def random_negatives(video_ids: Sequence[str], own_rows: dict[str, np.ndarray], size: int, r: int, seed: int, m: Modality) -> np.ndarray:
    """[V, r] random bank entries per video, never its own; a pure function of (seed, m, video id)."""
    out = np.zeros((len(video_ids), r), np.int64)
    for i, video in enumerate(video_ids):
        own = own_rows.get(str(video), np.zeros(0, np.int64))
        digest = int.from_bytes(hashlib.sha256(f"{m.value}:{video}".encode()).digest()[:8], "little")
        rng = np.random.default_rng([seed, digest])
        draw = rng.choice(size, size=min(r + len(own), size), replace=False)
        out[i] = draw[~np.isin(draw, own)][:r]
    return out


def open_inputs(config: BankConfig, stack: ExitStack) -> tuple[FeatureStore, list[FeatureStore]]:
    """The features file (a dataset's) and the library files, all finished and from the same encoder."""
    artifacts.require(config.features, "extract")
    store = stack.enter_context(FeatureStore(config.features))
    store.require_questions("build-bank's FEATURES (whose videos are queried)")
    libraries = []
    seen = {Path(config.features).resolve()}
    for path in config.library:
        artifacts.require(path, "extract")
        if Path(path).resolve() in seen:
            raise UserError(f"{path}: given twice (as the features file or as another --library)")
        seen.add(Path(path).resolve())
        library = stack.enter_context(FeatureStore(path))
        if not library.info.compatible(store.info):
            raise UserError(
                f"{path}: library from encoder '{library.info.encoder}' {library.info.encoder_version}, "
                f"segments {library.info.segments}, dims {library.info.dims} does not match {config.features} "
                f"('{store.info.encoder}' {store.info.encoder_version}, segments {store.info.segments}, dims {store.info.dims})"
            )
        libraries.append(library)
    return store, libraries


def bank_entries(config: BankConfig, store: FeatureStore, libraries: list[FeatureStore]) -> Entries:
    extracted = set(store.video_ids)
    main = [v for v in store.videos_of(config.bank_splits) if v in extracted]
    if not main:
        splits = sorted(set(store.questions.split))
        raise UserError(
            f"{config.features}: no extracted videos in split(s) {','.join(config.bank_splits)}; its splits are {','.join(splits)}"
        )
    ids = [main] + [library.video_ids for library in libraries]
    source = np.concatenate([np.full(len(v), s, np.int32) for s, v in enumerate(ids)])
    video_id = np.asarray([v for part in ids for v in part], dtype=object)
    own_video = np.asarray(main + [""] * (len(video_id) - len(main)), dtype=object)
    if libraries:
        copies = copies_of_dataset_videos(store, libraries)
        own_video[len(main):] = [copies.get((s, v), "") for s, v in zip(source[len(main):], video_id[len(main):])]
    return Entries([store, *libraries], source, video_id, own_video)


def clip_digest(store: FeatureStore, video_id: str) -> bytes:
    """A clip's identity in a features file: a hash of both clip-level vectors (a deterministic encoder
    gives a copied clip the same bits)."""
    return hashlib.sha256(b"".join(np.ascontiguousarray(store.global_vector(video_id, m)).tobytes() for m in MEDIA)).digest()


def copies_of_dataset_videos(store: FeatureStore, libraries: list[FeatureStore]) -> dict[tuple[int, str], str]:
    """(source, library video id) -> the dataset video it copies, for library clips whose clip-level
    vectors equal a video's of the features file (any split: a copy of a test video would hand it back)."""
    dataset = {clip_digest(store, v): v for v in store.video_ids}
    copies = {}
    for s, library in enumerate(libraries, start=1):
        for video in library.video_ids:
            twin = dataset.get(clip_digest(library, video))
            if twin is not None:
                copies[(s, video)] = twin
    return copies


def library_figures(entries: Entries, store: FeatureStore) -> dict:
    """What the libraries add: entries, copies of dataset videos (excluded for them), raw ids that equal
    a dataset id but are other clips (kept: ids are per source)."""
    library = entries.source > 0
    dataset_ids = set(store.video_ids)
    return {
        "files": len(entries.stores) - 1,
        "entries": int(library.sum()),
        "copies_of_dataset_videos": int(sum(bool(o) for o in entries.own_video[library])),
        "ids_equal_to_dataset_ids_other_clips": int(sum(
            v in dataset_ids and not o for v, o in zip(entries.video_id[library], entries.own_video[library]))),
    }  # fmt: skip


THRESHOLD_CHUNK = 1024  # videos whose similarities to every key are held at once


def match_thresholds(keys: np.ndarray, own_rows: dict[str, np.ndarray], video_ids: Sequence[str], folds: np.ndarray,
                     share: float) -> np.ndarray:  # fmt: skip
    """float32 [V]: per video, the similarity to the key of its own entry that its ceil(``share`` x the
    other entries) closest keys reach, in its fold's key set (``keys`` [folds, E, D], unit rows); the
    video itself and any copy of it are not counted. NaN for a video that has no entry."""
    out = np.full(len(video_ids), np.nan, np.float32)
    own = [own_rows.get(str(video)) for video in video_ids]
    size = keys.shape[1]
    for f in np.unique(folds):
        fold_rows = [b for b in np.flatnonzero(folds == f) if own[b] is not None]
        for start in range(0, len(fold_rows), THRESHOLD_CHUNK):
            rows = fold_rows[start : start + THRESHOLD_CHUNK]
            sims = keys[f][[own[b][0] for b in rows]] @ keys[f].T  # [R, E]
            for i, b in enumerate(rows):
                sims[i, own[b]] = -np.inf
            closest = np.array([max(1, math.ceil(share * (size - len(own[b])))) for b in rows])
            ranked = np.partition(sims, sorted(set(size - closest)), axis=1)
            out[rows] = ranked[np.arange(len(rows)), size - closest]  # each row's closest-th largest similarity
    return out


def fill_matches(keys: np.ndarray, own_rows: dict[str, np.ndarray], video_ids: Sequence[str], folds: np.ndarray,
                 entries: np.ndarray, share: float, thresholds: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Whether each retrieved entry resembles what the video's lost modality truly is (the trust's
    training target, `train-experts --trust-match`): 1.0 where the entry's key is among the
    ceil(``share`` x the other entries) keys closest to the key of the video's own entry (in its fold's
    key set of the same target modality, the space the weak labels shaped), else 0.0; NaN for a video
    that has no entry. ``keys`` [folds, E, D] unit rows, ``entries`` [B, n] -> float32 [B, n];
    ``thresholds``: the videos' :func:`match_thresholds` when already known (the Bank keeps them).
    Training reads it for simulated losses only: it looks at the lost modality's own key."""
    if thresholds is None:
        thresholds = match_thresholds(keys, own_rows, video_ids, folds, share)
    out = np.full(entries.shape, np.nan, np.float32)
    for b, video in enumerate(video_ids):
        own = own_rows.get(str(video))
        if own is None:
            continue
        fold_keys = keys[folds[b]]
        sims = fold_keys[entries[b]] @ fold_keys[own[0]]
        # the threshold came from another product over the same keys: allow its rounding
        out[b] = (sims >= thresholds[b] - 1e-6) & ~np.isin(entries[b], own)
    return out
