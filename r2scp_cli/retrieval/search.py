"""Top-k search over bank keys (DESIGN sections 5 and 9): hnswlib or exact, never the query's own video.

A bank of ``--keys bind`` has one key set per cross-fitting fold, so one :class:`Searcher` per fold;
:func:`retrieve` sends each query video to the searcher of its fold, with queries built by the key
space from the available modality only. With segment keys a searcher gathers candidates by clip key
and rescores them by late interaction (exact search scores every entry that way); with the label
re-rank, :func:`retrieve` reorders the top candidates (rescoring.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import hnswlib
import numpy as np

from ..config import BankConfig, Modality
from ..errors import UserError
from ..features import FeatureStore
from .keys import Fetch, KeySpace, store_fetch
from .rescoring import GATHER_FACTOR, GATHER_MIN, RERANK_POOL, late_interaction, rerank_by_labels, rerank_columns

QUERY_CHUNK = 2048
EXACT_BLOCK = 1 << 26  # similarities held at once by exact search (256 MiB of float32)
# Measured by bench/bank.py (cosine, M 16): recall@10 >= 0.996 with ef 64 up to 10^5 keys; at 10^6 keys
# 0.90-0.94 with ef 64 and 0.97-0.98 with ef 128. The beam grows with the bank by default.
EF_STEPS = ((200_000, 64), (2_000_000, 128))
EF_LARGEST = 256


def ef_for(entries: int) -> int:
    """The default HNSW query beam (``--ef 0``) for a bank of ``entries`` keys."""
    return next((ef for limit, ef in EF_STEPS if entries < limit), EF_LARGEST)


def rows_by_video(video_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """video id -> the entry rows holding that video (usually one; a library may repeat it)."""
    rows: dict[str, list[int]] = {}
    for row, video in enumerate(video_ids):
        rows.setdefault(str(video), []).append(row)
    return {video: np.asarray(r, np.int64) for video, r in rows.items()}


@dataclass
class Searcher:
    """Top-k search over the keys of one target modality, never returning the query's own video."""

    keys: np.ndarray  # [E, D] L2-normalised
    own_rows: dict[str, np.ndarray]
    index: hnswlib.Index | None = None
    ef: int = 64
    threads: int = 1
    segment_keys: np.ndarray | None = None  # [E, T, D] L2-normalised per segment (--segment-keys)
    segment_weights: np.ndarray | None = None  # [E, T] their attention weights
    label_probs: np.ndarray | None = None  # [E, C] weak-label probabilities of the entries (--rerank-labels)
    _empty: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # rows of a video not in the bank

    def limit(self) -> int:
        """The most neighbours every query can get: bank size minus the largest self-exclusion."""
        most_own = max((len(r) for r in self.own_rows.values()), default=0)
        return len(self.keys) - most_own

    def own_matrix(self, video_ids: Sequence[str]) -> np.ndarray:
        """[B, c] the entry rows of each query's own video, padded with -1 (c >= 1)."""
        own = [self.own_rows.get(str(v), self._empty) for v in video_ids]
        matrix = np.full((len(own), max([1, *map(len, own)])), -1, np.int64)
        for i, rows in enumerate(own):
            matrix[i, : len(rows)] = rows
        return matrix

    def exact(self, queries: np.ndarray, video_ids: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force cosine top-k (batched matrix product), ties broken by entry row."""
        chunk = max(1, min(QUERY_CHUNK, EXACT_BLOCK // max(1, len(self.keys))))
        return self._exact_top(lambda rows: queries[rows] @ self.keys.T, len(queries), video_ids, k, chunk)

    def exact_late(self, segments: tuple[np.ndarray, np.ndarray], video_ids: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force late-interaction top-k over every entry's segment keys, ties broken by entry row."""
        q_keys, q_weights = segments
        pairs = len(self.keys) * self.segment_keys.shape[1] * q_keys.shape[1]  # segment similarities per query
        chunk = max(1, min(QUERY_CHUNK, EXACT_BLOCK // max(1, pairs)))
        def score(rows: slice) -> np.ndarray:
            return late_interaction(q_keys[rows], q_weights[rows], self.segment_keys, self.segment_weights)

        return self._exact_top(score, len(q_keys), video_ids, k, chunk)

    def rescore(self, segments: tuple[np.ndarray, np.ndarray], candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top-k of gathered ``candidates`` [B, P] by late interaction, ties broken by entry row."""
        q_keys, q_weights = segments
        idx, sims = np.zeros((len(candidates), k), np.int64), np.zeros((len(candidates), k), np.float32)
        chunk = max(1, EXACT_BLOCK // max(1, candidates.shape[1] * self.segment_keys[0].size))
        for start in range(0, len(candidates), chunk):
            rows, cand = slice(start, start + chunk), candidates[start : start + chunk]
            scores = late_interaction(q_keys[rows], q_weights[rows], self.segment_keys[cand], self.segment_weights[cand])
            order = np.lexsort((cand, -scores), axis=1)[:, :k]
            idx[rows], sims[rows] = np.take_along_axis(cand, order, axis=1), np.take_along_axis(scores, order, axis=1)
        return idx, sims

    def _exact_top(self, score, n: int, video_ids: Sequence[str], k: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of ``score(rows)`` [len(rows), E] per query, the own entries excluded, in query chunks."""
        idx = np.zeros((n, k), np.int64)
        sims = np.zeros((n, k), np.float32)
        for start in range(0, n, chunk):
            block = score(slice(start, start + chunk))
            own = self.own_matrix(video_ids[start : start + chunk])
            rows = np.broadcast_to(np.arange(len(block))[:, None], own.shape)
            block[rows[own >= 0], own[own >= 0]] = -np.inf
            if k < block.shape[1]:
                top = np.argpartition(-block, k - 1, axis=1)[:, :k]
            else:
                top = np.tile(np.arange(block.shape[1]), (len(block), 1))
            top_sims = np.take_along_axis(block, top, axis=1)
            order = np.lexsort((top, -top_sims), axis=1)
            idx[start : start + len(block)] = np.take_along_axis(top, order, axis=1)
            sims[start : start + len(block)] = np.take_along_axis(top_sims, order, axis=1)
        return idx, sims

    def hnsw(self, queries: np.ndarray, video_ids: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """HNSW top-k: ask for k plus the own entries, drop the own ones (ef >= what is asked)."""
        own = self.own_matrix(video_ids)
        asked = min(k + int((own >= 0).sum(axis=1).max(initial=0)), len(self.keys))
        self.index.set_ef(max(self.ef, asked))
        labels, distances = self.index.knn_query(queries, k=asked, num_threads=self.threads)
        labels = labels.astype(np.int64)  # hnswlib returns uint64
        dropped = (labels[:, :, None] == own[:, None, :]).any(axis=2)
        first = np.argsort(dropped, axis=1, kind="stable")[:, :k]  # kept results first, in HNSW order
        idx = np.take_along_axis(labels, first, axis=1)
        sims = 1.0 - np.take_along_axis(distances, first, axis=1)
        return idx, sims.astype(np.float32)

    def top(
        self, queries: np.ndarray, video_ids: Sequence[str], k: int, exact: bool,
        segments: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k entries of each query, never its own video. With ``segments`` (the queries' segment
        keys and weights) and segment keys in the bank, scored by late interaction: every entry when
        exact, else the clip-key search's top GATHER_FACTOR x k (at least GATHER_MIN), rescored."""
        k = min(k, self.limit())
        if k < 1:
            raise UserError(f"the bank has {len(self.keys)} entries: too few to retrieve from")
        video_ids = list(video_ids)
        if segments is None or self.segment_keys is None:
            return self.exact(queries, video_ids, k) if exact or self.index is None else self.hnsw(queries, video_ids, k)
        if exact or self.index is None:
            return self.exact_late(segments, video_ids, k)
        gathered, _ = self.hnsw(queries, video_ids, min(max(GATHER_FACTOR * k, GATHER_MIN), self.limit()))
        return self.rescore(segments, gathered, k)


def build_index(keys: np.ndarray, config: BankConfig) -> hnswlib.Index:
    """hnswlib cosine index; a single-threaded build (the default) is reproducible."""
    index = hnswlib.Index(space="cosine", dim=keys.shape[1])
    index.init_index(max_elements=len(keys), M=config.M, ef_construction=config.ef_construction, random_seed=config.seed)
    index.add_items(keys, np.arange(len(keys)), num_threads=config.threads)
    index.set_ef(config.ef or ef_for(len(keys)))
    return index


def load_index(path: Path, dim: int, ef: int) -> hnswlib.Index:
    """Reload an index with the space and dim it was built with (recorded in meta.json)."""
    index = hnswlib.Index(space="cosine", dim=dim)
    index.load_index(str(path))
    index.set_ef(ef)
    return index


FetchOf = Callable[[list[str]], Fetch]  # video ids -> a Fetch over those videos


def retrieve(
    space: KeySpace, searchers: list[Searcher], fetch_of: FetchOf, video_ids: Sequence[str], m: Modality, k: int, exact: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k entries for videos whose m is missing: each fold's videos in its own key space.

    ``fetch_of(ids)`` gives a :data:`Fetch` over those videos; only m.other() is read from it. With the
    label re-rank, the top max(k, RERANK_POOL) are reordered and the first k kept.
    """
    video_ids = list(video_ids)
    k = min(k, searchers[0].limit())
    pool = min(max(k, RERANK_POOL), searchers[0].limit()) if space.rerank else k
    idx, sims = np.zeros((len(video_ids), k), np.int64), np.zeros((len(video_ids), k), np.float32)
    folds = space.fold_of(video_ids)
    for f in np.unique(folds):
        rows = np.flatnonzero(folds == f)
        ids = [video_ids[r] for r in rows]
        fetch = fetch_of(ids)
        queries = space.queries(fetch, m, f)
        segments = space.query_segments(fetch, m, f) if space.segments else None
        found, scores = searchers[f].top(queries, ids, pool, exact, segments)
        if space.rerank:
            names = rerank_columns(space.binders[f].label_names)
            found, scores = rerank_by_labels(found, scores, space.label_probs(queries, f, names), searchers[f].label_probs)
        idx[rows], sims[rows] = found[:, :k], scores[:, :k]
    return idx, sims


def hnsw_recall(space: KeySpace, searchers: list[Searcher], store: FeatureStore, m: Modality, k: int, samples: int, seed: int) -> float:
    """Share of the exact top-k that HNSW finds, over ``samples`` random videos of ``store``."""
    ids = list(np.random.default_rng(seed).permutation(store.video_ids)[:samples])
    fetch_of = partial(store_fetch, store)
    found, _ = retrieve(space, searchers, fetch_of, ids, m, k, exact=False)
    truth, _ = retrieve(space, searchers, fetch_of, ids, m, k, exact=True)
    hits = [len(np.intersect1d(a, b)) for a, b in zip(found, truth)]
    return round(float(np.sum(hits) / truth.size), 4)
