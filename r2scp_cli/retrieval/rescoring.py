"""Scores beyond one cosine per clip (issue 14, item 2): late interaction over segment keys, and the
re-ranking of the top candidates by what the weak-label head reads in each side.

Both act on candidates that a clip-key search found; neither reads the query's missing modality: the
query side is the available modality (its segments, its labels as the head predicts them), the
candidate side the entry's keys.
"""

from __future__ import annotations

import numpy as np

# `build-bank --segment-keys`: a clip is scored against a candidate by late interaction over their
# segment keys. Measured on the demo's data (pretrained features, 500-clip library, 375 test videos as
# queries, --weak-labels binders, 5 seeds): symmetric attention-weighted MaxSim raised the neighbours'
# top-5 sounding-set match 0.280 -> 0.293 (every seed) and left the visible-layout match at 0.100 ->
# 0.102 (better on 3 seeds of 5); held-out recall@10 0.412/0.421 -> 0.420/0.434. One-way MaxSim did
# worse than clip keys (0.256 / 0.106). Binders trained for segments did no better than the usual one:
# with a MaxSim InfoNCE term 0.285 / 0.105, with a same-moment segment InfoNCE term 0.293 / 0.103.
# Candidates: the clip-key search's top GATHER_FACTOR x n (at least GATHER_MIN), rescored exactly; on
# that data the top 64 held 99.4 % of the exact late-interaction top 16.
GATHER_FACTOR, GATHER_MIN = 4, 64

# `build-bank --rerank-labels`: the top RERANK_POOL candidates re-ranked by z(similarity) + RERANK_WEIGHT x
# the mean log-agreement of the `heard:<class>` probabilities the weak-label head gives the query (from
# its available modality) and the candidate (from its key). Measured as above: top-5 sounding-set match
# 0.280 -> 0.286, visible layout 0.100 -> 0.105 (every seed, both), recall@10 of the own pair after the
# re-rank 0.420 / 0.411; with --segment-keys 0.299 / 0.106 (every seed, both), recall@10 0.417 / 0.422
# (clip keys alone: 0.412 / 0.421). Weight 64 gained more (layout 0.111) but cost the own pair's
# recall@10 under missing visual (0.398); `seen:` labels likewise (layout 0.116, recall@10 0.376). Only
# labels about what the query's own modality shows enter: a question's named instrument never does
# (that would leak the answer prior). Re-ranking per question (weight 64 on the labels of the instruments
# it names) made the top 5 agree more often on the facts it asks about under missing audio (0.397 -> 0.416) but
# not under missing visual (0.180 -> 0.185, against 0.189 question-blind): not built, the lists are per video.
RERANK_PREFIX = "heard:"
RERANK_WEIGHT = 16.0
RERANK_POOL = 16


def late_interaction(q_keys: np.ndarray, q_weights: np.ndarray, k_keys: np.ndarray, k_weights: np.ndarray) -> np.ndarray:
    """Symmetric attention-weighted MaxSim of query clips against candidate clips.

    ``q_keys`` [B, T, D] and ``q_weights`` [B, T]; candidates either shared, ``k_keys`` [E, U, D] and
    ``k_weights`` [E, U] -> scores [B, E], or per query, [B, P, U, D] and [B, P, U] -> [B, P]. Each query
    segment takes its best candidate segment and each candidate segment its best query segment; each side
    is averaged with its own attention weights, the two sides averaged: a score in [-1, 1], 1 for equal clips.
    """
    if k_keys.ndim == 3:
        sims = np.einsum("btd,eud->betu", q_keys, k_keys, optimize=True)
        k_weights = k_weights[None]
    else:
        sims = np.einsum("btd,bpud->bptu", q_keys, k_keys, optimize=True)
    query_side = (sims.max(axis=3) * q_weights[:, None, :]).sum(axis=2)
    key_side = (sims.max(axis=2) * k_weights).sum(axis=2)
    return (0.5 * (query_side + key_side)).astype(np.float32)


def rerank_columns(names: list[str]) -> list[str]:
    """The weak labels the re-ranking compares: which classes sound."""
    return [n for n in names if n.startswith(RERANK_PREFIX)]


def rerank_by_labels(
    idx: np.ndarray, sims: np.ndarray, query_probs: np.ndarray, entry_probs: np.ndarray, weight: float = RERANK_WEIGHT
) -> tuple[np.ndarray, np.ndarray]:
    """Reorder each row of candidates ``idx`` [B, P] (similarities ``sims`` [B, P], any order) by
    z(sims) + weight x mean_c log(p_q p_e + (1 - p_q)(1 - p_e)), with ``query_probs`` [B, C] and
    ``entry_probs`` [E, C]. Each candidate keeps its own similarity; ties keep the incoming order."""
    candidate = entry_probs[idx]  # [B, P, C]
    query = query_probs[:, None, :]
    agreement = np.log(query * candidate + (1.0 - query) * (1.0 - candidate) + 1e-4).mean(axis=2)
    z = (sims - sims.mean(axis=1, keepdims=True)) / (sims.std(axis=1, keepdims=True) + 1e-6)
    order = np.argsort(-(z + weight * agreement), axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(sims, order, axis=1)


def rescoring_figures(segments: bool, labels: list[str] | None, search: str) -> dict:
    """The bank's meta.json entries for these options: how clips were scored, what the re-rank compared."""
    figures: dict = {}
    if segments:
        figures["segment_keys"] = {
            "score": "symmetric attention-weighted MaxSim over the binder's segment keys",
            "candidates": "every entry (exact search)" if search != "hnsw"
            else f"top {GATHER_FACTOR} x n (at least {GATHER_MIN}) by clip key, rescored exactly",
        }  # fmt: skip
    if labels is not None:
        figures["rerank"] = {"labels": labels, "weight": RERANK_WEIGHT, "pool": RERANK_POOL}
    return figures
