"""Key spaces of the memory bank (DESIGN section 5): how features become keys and queries.

`unified` uses the encoder's joint-space globals, `paired` the available modality's globals, and
`bind` a small learned joint audio-visual space, the binder, trained here. :class:`KeySpace` is the
one place that reads features for retrieval; its queries read only the available modality.

The binder itself (its model, training and cross-fitting) is binder.py; :func:`fit_bind_space`
trains and saves the binders of a bank and returns their key space.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import artifacts
from ..config import KEY_MODES, Modality
from ..console import console
from ..errors import UserError
from ..features import EncoderInfo, FeatureStore
from .binder import BINDER_CARD, EVAL_MAX, Binder, BinderConfig, binder_file, fold_of, save_binder, stop_slice, train_cross_fitted
from .rescoring import RERANK_POOL, late_interaction, rerank_by_labels, rerank_columns

MEDIA = (Modality.AUDIO.value, Modality.VISUAL.value)
ENTRY_ARRAYS = ("segment_keys", "segment_weights", "label_probs")  # entries.h5 groups = Searcher fields


def cross_modal_recall(
    queries: np.ndarray, keys: np.ndarray, ks: tuple[int, ...] = (1, 10), sims: np.ndarray | None = None,
    rerank: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict:
    """Recall@k of row i of ``keys`` for query i (own pair among the top k), and chance k/N.

    Both inputs are L2-normalised [N, D]; or ``sims`` [N, N] gives the scores directly (segment keys).
    ``rerank(idx, sims)`` reorders each row's top RERANK_POOL as the search does (--rerank-labels).
    This diagnostic deliberately *lifts* the bank's self-exclusion: the own pair is the right answer here.
    """
    sims = queries @ keys.T if sims is None else sims
    n = len(sims)
    own = np.diag(sims)[:, None]
    rank = (sims > own).sum(axis=1)  # how many candidates beat the own pair
    if rerank is not None and n:
        pool = np.argsort(-sims, axis=1, kind="stable")[:, :RERANK_POOL]
        pool, _ = rerank(pool, np.take_along_axis(sims, pool, axis=1))
        inside = pool == np.arange(n)[:, None]
        rank = np.where(inside.any(axis=1), inside.argmax(axis=1), np.maximum(rank, pool.shape[1]))
    out: dict = {"videos": n}
    for k in ks:
        out[f"recall@{k}"] = round(float((rank < k).mean()), 4) if n else None
        out[f"chance@{k}"] = round(min(k, n) / n, 4) if n else None
    return out


def fit_bind_space(
    tokens: dict[str, np.ndarray], video_ids: list[str], seed: int, threads: int, out: Path,
    config: BinderConfig = BinderConfig(), labels: tuple[np.ndarray, np.ndarray] | None = None,
    label_names: Sequence[str] = (),
) -> tuple["KeySpace", dict]:
    """Train the cross-fitted binders on the bank entries' tokens and save them in ``out``.

    ``label_names`` name the columns of ``labels``: the binders keep their weak-label heads under them.

    Returns the `bind` key space and its figures, among them the memorisation gap: binder 0's
    recall@10 on videos it trained on, to read next to the held-out key quality.
    """
    started = time.time()
    binders, folds = train_cross_fitted(tokens, video_ids, config, seed, threads, labels)
    for f, binder in enumerate(binders):
        if binder.label_head is not None:
            binder.label_names = list(label_names) or [f"label{j}" for j in range(binder.label_head.out_features)]
        with artifacts.atomic_path(out / binder_file(f)) as tmp:
            save_binder(binder, tmp)
    artifacts.write_json(out / BINDER_CARD, {**binders[0].card(), "folds": folds})
    trained, _ = stop_slice(np.flatnonzero(fold_of(video_ids, len(binders)) != 0), seed)
    trained = np.random.default_rng(seed).permutation(trained)[:EVAL_MAX]
    seen = cross_modal_recall(
        binders[0].embed(tokens["visual"][trained], "visual"), binders[0].embed(tokens["audio"][trained], "audio")
    )
    figures = {
        "folds": len(binders),
        "best_steps": [fold["best_step"] for fold in folds],
        "seconds": round(time.time() - started, 2),
        "trained_videos_recall@10_visual_to_audio": seen["recall@10"],
        "trained_videos_chance@10": seen["chance@10"],
    }
    return KeySpace("bind", binders), figures


# --------------------------------------------------------------------------- key spaces

Fetch = Callable[[Modality, str], np.ndarray]  # (modality, "tokens" | "global") -> stacked arrays


def resolve_key_mode(keys: str, info: EncoderInfo, features: Path) -> str:
    """`auto` is `unified` for a joint-space encoder, else `bind`; `unified` needs equal global dims."""
    if keys not in KEY_MODES:
        raise UserError(f"--keys {keys!r}: choose one of {', '.join(KEY_MODES)}")
    mode = ("unified" if info.joint_space else "bind") if keys == "auto" else keys
    if mode == "unified" and info.dims["audio_global"] != info.dims["visual_global"]:
        raise UserError(
            f"{features}: --keys unified needs audio and visual globals in one space, but encoder "
            f"'{info.encoder}' has dims {info.dims['audio_global']} and {info.dims['visual_global']}; use --keys bind"
        )
    if mode == "unified" and not info.joint_space:
        console.print(f"[yellow]warning:[/] encoder '{info.encoder}' declares no joint space; unified keys compare unaligned spaces")
    return mode


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


@dataclass
class KeySpace:
    """Turns features into keys (bank entries) and queries (videos whose m is missing).

    With `bind` there is one space per cross-fitting fold (one binder each); a query of fold f is
    matched against the keys of fold f. `unified` and `paired` have a single fold. ``segments``: clips
    are also keyed by their segments (`bind` only) and scored by :func:`late_interaction`; ``rerank``:
    the top candidates are re-ranked with the binders' weak-label heads (rescoring.py).
    """

    mode: str
    binders: list[Binder] = field(default_factory=list)
    segments: bool = False
    rerank: bool = False

    @property
    def folds(self) -> int:
        return max(1, len(self.binders))

    def fold_of(self, video_ids: Sequence[str]) -> np.ndarray:
        return fold_of(video_ids, self.folds)

    def keys(self, fetch: Fetch, m: Modality) -> np.ndarray:
        """[folds, E, D] keys of the entries in ``fetch`` for target ``m``."""
        if self.mode == "paired":
            return _normalise(fetch(m.other(), "global"))[None]
        if self.mode == "unified":
            return _normalise(fetch(m, "global"))[None]
        tokens = fetch(m, "tokens")
        return np.stack([_normalise(binder.embed(tokens, m)) for binder in self.binders])

    def cross_keys(self, fetch: Fetch, m: Modality, fold: int) -> np.ndarray:
        """Keys computed from m itself: the other side of the cross-modal diagnostic."""
        if self.mode == "bind":
            return _normalise(self.binders[fold].embed(fetch(m, "tokens"), m))
        return _normalise(fetch(m, "global"))

    def queries(self, fetch: Fetch, m: Modality, fold: int) -> np.ndarray:
        """[N, D] queries in the space of ``fold``; only the available modality m.other() is read."""
        available = m.other()
        if self.mode == "bind":
            return _normalise(self.binders[fold].embed(fetch(available, "tokens"), available))
        return _normalise(fetch(available, "global"))

    def segment_keys(self, fetch: Fetch, m: Modality) -> tuple[np.ndarray, np.ndarray]:
        """Segment keys [folds, E, T, D] and their attention weights [folds, E, T] for target ``m``."""
        tokens = fetch(m, "tokens")
        parts = [binder.embed_segments(tokens, m) for binder in self.binders]
        return np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts])

    def query_segments(self, fetch: Fetch, m: Modality, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """Segment queries [N, T, D] and weights [N, T]; only the available modality m.other() is read."""
        return self.binders[fold].embed_segments(fetch(m.other(), "tokens"), m.other())

    def label_probs(self, vectors: np.ndarray, fold: int, names: Sequence[str]) -> np.ndarray:
        """[N, len(names)] weak-label probabilities of clip-level keys or queries of ``fold``."""
        return self.binders[fold].label_probs(vectors, names)

    def entry_arrays(self, fetch: Fetch, m: Modality, keys: np.ndarray) -> dict[str, np.ndarray]:
        """What the searchers of target ``m`` need beside the entries' clip ``keys`` [folds, E, D] (as
        stored), by Searcher field (ENTRY_ARRAYS): segment keys [folds, E, T, D] and weights [folds, E, T]
        (--segment-keys), the weak-label head's `heard:` probabilities [folds, E, C] (--rerank-labels)."""
        arrays = {}
        if self.segments:
            arrays["segment_keys"], arrays["segment_weights"] = self.segment_keys(fetch, m)
        if self.rerank:
            arrays["label_probs"] = np.stack([self.label_probs(keys[f].astype(np.float32), f, rerank_columns(b.label_names))
                                              for f, b in enumerate(self.binders)])  # fmt: skip
        return arrays


def store_fetch(store: FeatureStore, video_ids: Sequence[str]) -> Fetch:
    """A :data:`Fetch` over some videos of one features file."""

    def fetch(modality: Modality, kind: str) -> np.ndarray:
        if kind == "tokens":
            return store.stack_tokens(video_ids, modality)
        return store.stack_globals(video_ids, modality)

    return fetch


def key_quality(space: KeySpace, store: FeatureStore, videos: list[str], m: Modality) -> dict:
    """Cross-modal recall@1/@10 of each video's own pair (self-exclusion lifted), next to chance.

    With `bind`, each fold's videos are scored in the space of the binder that never trained on
    them; the figures are the folds' means weighted by their sizes.
    """
    direction = f"{m.other().value}->{m.value}"
    folds = space.fold_of(videos)
    parts = []
    for f in range(space.folds):
        group = [v for v, g in zip(videos, folds) if g == f]
        fetch = store_fetch(store, group)
        queries, keys = space.queries(fetch, m, f), space.cross_keys(fetch, m, f)
        if queries.shape[1] != keys.shape[1]:
            return {"direction": direction, "videos": len(videos), "note": "globals of different dims: no cross-modal space"}
        if len(group) < 2:
            continue
        # Scored as the search scores: late interaction with segment keys, then the label re-rank.
        sims = None
        if space.segments:
            sims = late_interaction(*space.query_segments(fetch, m, f), *space.binders[f].embed_segments(fetch(m, "tokens"), m))
        rerank = None
        if space.rerank:
            names = rerank_columns(space.binders[f].label_names)
            probs = space.label_probs(queries, f, names), space.label_probs(keys, f, names)
            rerank = partial(rerank_by_labels, query_probs=probs[0], entry_probs=probs[1])
        parts.append(cross_modal_recall(queries, keys, sims=sims, rerank=rerank))
    if not parts:
        return {"direction": direction, "videos": len(videos), "note": "too few videos to measure"}
    sizes = np.array([p["videos"] for p in parts])
    means = {k: round(float(np.average([p[k] for p in parts], weights=sizes)), 4) for k in parts[0] if k != "videos"}
    space_name = "encoder globals (paired keys are not cross-modal)" if space.mode == "paired" else space.mode
    space_name += " segment keys (late interaction)" if space.segments else ""
    space_name += " re-ranked by weak labels" if space.rerank else ""
    return {"direction": direction, "space": space_name, "videos": int(sizes.sum()), "folds": len(parts), **means}
