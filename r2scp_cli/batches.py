"""What training and evaluation share: questions of a split, video tokens, batches, prediction.

A :class:`Split` holds one split's questions in memory (question features are small); video tokens
are read through :class:`VideoTokens`, which never reads a modality declared missing; :func:`make_batch`
builds a batch keyed by modality with the recovery inputs of the rows that miss a modality, gathered
from the bank's precomputed neighbour lists; :func:`predict` runs a model over a split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .config import usable_cores
from .errors import UserError
from .features import FeatureStore
from .model import EXPERTS, MEDIA, MISSING_CODES, ModelConfig, R2ScP
from .retrieval.bank import Bank

# A fill entry "matches" when its key is among this share of the bank's keys closest to the truth's key.
MATCH_SHARE = 0.1
MEMORY_BUDGET = 4 << 30  # video tokens are held in memory below this size, read per batch above it


_side_by_side = 1  # jobs this process shares the cores with, itself included (see share_cores)


def share_cores(jobs: int) -> None:
    """Declare that ``jobs`` training or evaluation processes run side by side on this machine (the
    demo's workers call it), so that :func:`limit_cpu_threads` gives each its share of the cores."""
    global _side_by_side
    _side_by_side = max(1, int(jobs))


def limit_cpu_threads(device: str, processes: int = 1) -> None:
    """On CPU, split the cores between the ``processes`` of a torchrun run and the jobs declared by
    :func:`share_cores`. Never more threads than that: OpenMP threads that wait for a core held by
    another process made a batch 25x slower here. One process alone takes every core (measured on
    2 cores: an epoch of the demo's cmr+cap 1.3x faster with 2 threads than with 1)."""
    if device == "cpu":
        torch.set_num_threads(max(1, usable_cores() // (processes * _side_by_side)))


class VideoTokens:
    """Segment tokens of the videos a run needs, by video id: in memory when they fit the budget,
    otherwise read from the HDF5 file per batch.

    A modality left out of ``modalities`` is never read. ``hidden`` (modality -> video id -> lost
    segments [T] bool, from an evaluation protocol) hides segments: they are never read from the file
    and stand as zeros; a video whose segments are all hidden is not read at all."""

    def __init__(self, store: FeatureStore, video_ids, modalities=MEDIA, budget: int = MEMORY_BUDGET,
                 hidden: dict[str, dict[str, np.ndarray]] | None = None):  # fmt: skip
        self.store = store
        self.modalities = tuple(modalities)  # a modality declared missing is never read
        self.hidden = hidden or {}
        self.index = {v: i for i, v in enumerate(video_ids)}
        info = store.info
        size = len(video_ids) * info.segments * sum(info.dims[m] for m in self.modalities) * 4
        self.cache = None
        if size <= budget:
            self.cache = {m: self._read(list(video_ids), m, strict=False) for m in self.modalities}

    def _read(self, video_ids: list, modality: str, strict: bool = True) -> np.ndarray:
        hidden = self.hidden.get(modality, {})
        if not hidden:
            return self.store.stack_tokens(video_ids, modality)
        info = self.store.info
        out = np.zeros((len(video_ids), info.segments, info.dims[modality]), np.float32)
        for i, video in enumerate(video_ids):
            lost = hidden.get(video)
            if lost is None:
                out[i] = self.store.tokens(video, modality)
            elif not lost.all():
                out[i, ~lost] = self.store.tokens(video, modality, np.flatnonzero(~lost))
            elif strict:
                raise RuntimeError(f"{modality} tokens of {video} were declared missing and must not be read")
        return out

    def get(self, video_ids, modality: str) -> np.ndarray:
        if modality not in self.modalities:
            raise RuntimeError(f"{modality} tokens were declared missing and must not be read")
        hidden = self.hidden.get(modality, {})
        if any(hidden.get(v) is not None and hidden[v].all() for v in video_ids):
            raise RuntimeError(f"{modality} tokens of a video declared missing were requested")
        if self.cache is not None:
            return self.cache[modality][[self.index[v] for v in video_ids]]
        return self._read(list(video_ids), modality)


@dataclass
class Split:
    """The questions of one split, in memory (question features are small)."""

    name: str
    video_ids: np.ndarray  # [N] object
    answers: torch.Tensor  # [N] answer (or option) index
    q_tokens: torch.Tensor  # [N, L, D_t]
    q_mask: torch.Tensor  # [N, L]
    q_global: torch.Tensor  # [N, D_tg]
    options: torch.Tensor | None  # [N, K, D_tg] (AVQA)
    rows: np.ndarray  # question rows in the feature store

    def __len__(self) -> int:
        return len(self.video_ids)


def load_split(store: FeatureStore, name: str, read_text: bool = True) -> Split:
    """Questions of ``name``; with ``read_text=False`` (text declared missing) the question features
    are never read and stand as zeros."""
    store.require_questions("training")
    rows = store.questions.rows(name)
    if len(rows) == 0:
        raise UserError(f"{store.path}: no questions in split '{name}'")
    L, D = store.info.question_tokens, store.info.dims["text"]
    if read_text:
        arrays = store.question_arrays(rows)
        q_tokens, q_mask, q_global = arrays["tokens"], arrays["mask"], arrays["global"]
        options = arrays.get("options")
    else:
        q_tokens = np.zeros((len(rows), L, D), np.float32)
        q_mask = np.zeros((len(rows), L), bool)
        q_mask[:, 0] = True  # one (zero) token so attention is defined
        q_global = np.zeros((len(rows), store.info.dims["text_global"]), np.float32)
        options = store.question_arrays(rows, fields=("options",)).get("options")
    return Split(
        name=name,
        video_ids=store.questions.video_id[rows],
        answers=torch.as_tensor(store.questions.answer_index[rows], dtype=torch.long),
        q_tokens=torch.as_tensor(q_tokens),
        q_mask=torch.as_tensor(q_mask),
        q_global=torch.as_tensor(q_global),
        options=None if options is None else torch.as_tensor(options),
        rows=rows,
    )


Retrieve = Callable[[np.ndarray, str], tuple[np.ndarray, np.ndarray]]


def make_batch(
    split: Split,
    idx: np.ndarray,
    missing: np.ndarray,
    videos: VideoTokens,
    cfg: ModelConfig,
    retrieve: Retrieve | None,
    bank: Bank | None,
    training: bool,
    lost: np.ndarray | None = None,
) -> dict:
    """A batch keyed by modality. The tokens of a modality are read only for the rows that have it;
    rows that miss it get zeros here and their recovery inputs in ``batch["recover"][m]``: with
    retrieval, the value tokens of the batch's distinct bank entries (``values``) and, per row,
    the rows of ``values`` holding its n neighbours (``candidates``) and random entries (``negatives``).
    In training (simulated missing), the real tokens of the recovered rows are added as ``real``
    for the ranking loss and the generative MSE.

    ``lost`` ([B, T] bool) marks, for rows that miss a modality, the segments they lost; a row that
    lost only some (partial loss) keeps its surviving tokens in ``batch[m]``, carries its mask as
    ``recover[m]["lost"]`` and gets every stored neighbour, which the model re-ranks with them."""
    vids = split.video_ids[idx]
    batch: dict = {"missing": torch.as_tensor(missing, dtype=torch.long)}
    partial = np.zeros(len(idx), bool) if lost is None else (missing > 0) & ~lost.all(1)
    for m in MEDIA:
        have = missing != MISSING_CODES[m]
        tokens = np.zeros((len(idx), cfg.segments, cfg.dims[m]), np.float32)
        read = have | (partial & ~have)
        if read.any():
            tokens[read] = videos.get(vids[read], m)
        keep_lost = read & ~have  # partial rows: their lost segments stand as zeros
        if keep_lost.any():
            tokens[keep_lost] = np.where(lost[keep_lost][..., None], 0.0, tokens[keep_lost])
        batch[m] = torch.from_numpy(tokens)
    batch["q_tokens"] = split.q_tokens[idx]
    batch["q_mask"] = split.q_mask[idx]
    batch["q_global"] = split.q_global[idx]
    batch["answer"] = split.answers[idx]
    if split.options is not None:
        batch["options"] = split.options[idx]
    recover = {}
    for m in MEDIA:
        rows = np.flatnonzero(missing == MISSING_CODES[m])
        if len(rows) == 0:
            continue
        rec: dict = {"rows": torch.as_tensor(rows, dtype=torch.long)}
        partial_rows = partial[rows].any()
        if partial_rows:
            rec["lost"] = torch.from_numpy(lost[rows].copy())
        if cfg.retrieves:
            entries, sims = retrieve(vids[rows], m)
            width = entries.shape[1] if partial_rows else cfg.n  # partial loss: all, for the re-ranking
            entries, sims = entries[:, :width], sims[:, :width]
            lists = {"candidates": entries}
            if training:
                lists["negatives"] = bank.negatives(vids[rows], m)[:, : cfg.n]
                if cfg.trusts:  # the trust's target (train-experts --trust-match): which fills resemble the truth
                    both = np.concatenate([lists["candidates"][:, : cfg.n], lists["negatives"]], axis=1)
                    match = torch.from_numpy(bank.fill_matches(vids[rows], m, both, MATCH_SHARE))
                    rec["candidates_match"], rec["negatives_match"] = match[:, : cfg.n], match[:, cfg.n :]
            # Rows share neighbours: each bank entry of the batch is read (and projected) once.
            unique, inverse = np.unique(np.concatenate([ids.ravel() for ids in lists.values()]), return_inverse=True)
            rec["values"] = torch.from_numpy(bank.gather(m, unique))  # [U, T, D_m]
            start = 0
            for name, ids in lists.items():  # [B', n] rows of rec["values"]
                rec[name] = torch.as_tensor(inverse[start : start + ids.size].reshape(ids.shape), dtype=torch.long)
                start += ids.size
            rec["sims"] = torch.from_numpy(np.ascontiguousarray(sims, np.float32))
        if training and (cfg.retrieves or cfg.recovery == "generative"):  # ranking loss / generator MSE
            rec["real"] = torch.from_numpy(videos.get(vids[rows], m))
        recover[m] = rec
    batch["recover"] = recover
    return batch


def to_device(batch: dict, device: str) -> dict:
    if device == "cpu":
        return batch
    moved = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    moved["recover"] = {m: {k: v.to(device) for k, v in rec.items()} for m, rec in batch["recover"].items()}
    return moved


@torch.no_grad()
def predict(model: R2ScP, split: Split, setting: str, videos: VideoTokens, retrieve, bank, batch_size: int,
            device: str, route: bool = True, masks=None, experts: tuple[str, ...] = EXPERTS):  # fmt: skip
    """Log-probabilities of every question with ``setting`` removed from every sample, or with what
    ``masks`` (a protocols.Masks of the split's rows) removes: {"audio"/"visual"/"text": [N, A]} (the
    ``experts`` asked for) and, when ``route``, {"routed": [N, A], "alpha": [N, 3]}."""
    model.eval()
    if masks is None:
        missing, lost = np.full(len(split), MISSING_CODES[setting]), None
    else:
        missing, lost = masks.missing, masks.lost
    out: dict[str, list] = {k: [] for k in (("routed", "alpha") if route else ()) + tuple(experts) + ("confidence", "trust")}
    for start in range(0, len(split), batch_size):
        idx = np.arange(start, min(start + batch_size, len(split)))
        batch = make_batch(split, idx, missing[idx], videos, model.cfg, retrieve, bank, False,
                           None if lost is None else lost[idx])  # fmt: skip
        result = model(to_device(batch, device), route=route, experts=experts)
        # Per row, the retrieved fill's confidence (mean key similarity) and trust; NaN without a fill.
        confidence, trust = torch.full((len(idx),), float("nan")), torch.full((len(idx),), float("nan"))
        if model.cfg.retrieves:
            for m, recovered in result["recovery"].items():
                rows = batch["recover"][m]["rows"]
                confidence[rows] = recovered["confidence"][:, 0].cpu()
                if "trust" in recovered["context"]:
                    trust[rows] = recovered["context"]["trust"].cpu()
        out["confidence"].append(confidence)
        out["trust"].append(trust)
        if route:
            out["routed"].append(torch.log_softmax(result["logits"], -1).cpu())
            out["alpha"].append(result["alpha"].cpu())
        for m in experts:
            out[m].append(torch.log_softmax(result["expert_logits"][m], -1).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def accuracy(log_probs: torch.Tensor, answers: torch.Tensor) -> float:
    return 100.0 * (log_probs.argmax(-1) == answers).float().mean().item()


def load_model(path: Path, device: str = "cpu") -> tuple[R2ScP, dict]:
    """Rebuild a model from its checkpoint alone (the config travels with the weights)."""
    if not path.exists():
        raise UserError(f"{path}: model checkpoint not found")
    checkpoint = torch.load(path, map_location=device, weights_only=False)
    model = R2ScP(ModelConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["state"], strict=True)
    return model.to(device), checkpoint
