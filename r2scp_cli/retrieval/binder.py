"""The binder of `--keys bind` (DESIGN section 5): a small learned joint audio-visual key space,
cross-fitted so that no video is ever queried through a binder that trained on it.

The binder follows ImageBind's recipe at small scale. Per modality, segment tokens are
standardised, projected, pooled by attention over the segments and projected into a shared space;
a symmetric InfoNCE loss pulls the audio and visual embeddings of the same video together. What the
two modalities share (which instruments, when they sound) survives; what they do not (background
clutter) is projected away.

A prototype trained on 1,400 clips memorised its training pairs (recall@10 0.885) and generalised
poorly (0.175 on unseen clips), so the binder is regularised (dropout, weight decay, segment
dropout) and early-stopped on the cross-modal recall of a slice held out from its training videos. Memorisation is also a
leak: it is why binders are cross-fitted (:func:`train_cross_fitted`).

The held-out optimum comes after 30-90 steps, where the weights of one step depend much on the
last few batches, and banks built with different seeds gave different gains. What is scored and
kept is therefore a moving average of the weights (``BinderConfig.average``). Measured on the demo's
data, bank seeds 0-3: the top-5 neighbours' sounding-set match 0.288 -> 0.304 (audio lists) and
0.374 -> 0.390 (visual lists), higher on every seed; held-out recall@10 0.46/0.46 -> 0.49/0.49.

With `build-bank --weak-labels` a linear head on the shared space also predicts, from both
embeddings, the labels read from the train split's questions (weak_labels.py: instruments heard,
seen, and where). Measured, it is a small gain (WEAK_LABEL_WEIGHT). The head is saved with its
binder; `--rerank-labels` uses it (rescoring.py).

With `build-bank --segment-keys` a clip is also keyed by its T segments: the pooler's per-segment
outputs (the vectors its attention averages into the clip key), each normalised, with the attention
weights; rescoring.py scores clips by late interaction over them.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..config import Modality
from ..console import progress_bar
from ..errors import UserError

MEDIA = (Modality.AUDIO.value, Modality.VISUAL.value)
EVAL_MAX = 2000  # held-out videos scored at each early-stopping check
STOP_SHARE = 0.2  # share of a binder's training videos held out for its early stopping
MIN_FOLD_VIDEOS = 10  # `bind` needs at least this many bank videos per fold
BINDER_CARD = "binder.json"  # the binders' config and training history, in the bank directory
# `build-bank --weak-labels`: weight of the weak-label loss. Measured on the demo's data (pretrained
# features, 500-clip library, 375 test videos as queries, 5 seeds, every seed better): the neighbours'
# sounding-set match top-5 0.247 -> 0.280, top-16 0.234 -> 0.261; visible-layout match top-5 0.095 ->
# 0.100, top-16 0.089 -> 0.099; held-out recall@10 0.397/0.410 -> 0.411/0.420. Without a library
# (3 seeds) top-5 0.170 -> 0.230 and 0.071 -> 0.093. 60 did as well (layout top-5 0.107), 15 a little
# less; hard negatives and label-compatible soft positives did not help (no option for them).
WEAK_LABEL_WEIGHT = 30.0


@dataclass(frozen=True)
class BinderConfig:
    """How the binder is built and trained; saved beside its weights."""

    dim: int = 64  # shared space
    hidden: int = 128  # per-token projection width
    dropout: float = 0.3
    segment_dropout: float = 0.25  # share of segments hidden from the pooling in each training step
    weight_decay: float = 0.05
    lr: float = 2e-3
    batch_size: int = 128
    max_steps: int = 4000
    eval_every: int = 10  # steps between two held-out evaluations
    patience: int = 10  # evaluations without a better held-out rank score before stopping
    temperature: float = 0.07  # initial InfoNCE temperature (learned, clamped to >= 0.01)
    folds: int = 3  # cross-fitting: a video is queried only through the binder that did not train on it
    label_weight: float = 0.0  # weight of the weak-label loss (train-split questions, weak_labels.py); 0: off
    label_head_lr: float = 2e-2  # learning rate of the weak-label head (it starts from scratch each fold)
    average: float = 0.9  # decay of the weights' moving average, which is what is scored and kept; 0: the raw weights


class ModalityPooler(nn.Module):
    """Segment tokens [B, T, D] -> one L2-normalised vector [B, dim] in the shared space."""

    def __init__(self, in_dim: int, hidden: int, dim: int, dropout: float):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.project = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout))
        self.score = nn.Linear(hidden, 1)  # attention logit per segment
        self.out = nn.Linear(hidden, dim)

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.project((tokens - self.mean) / self.std)
        logits = self.score(hidden).squeeze(-1)
        if keep is not None:
            logits = logits.masked_fill(~keep, float("-inf"))
        weights = torch.softmax(logits, dim=-1).unsqueeze(-1)
        return F.normalize(self.out((weights * hidden).sum(dim=1)), dim=-1)

    def segments(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-segment keys [B, T, dim] (each L2-normalised) and attention weights [B, T]: the clip key
        is the normalised weighted sum of the unnormalised segment outputs (``out`` is affine)."""
        hidden = self.project((tokens - self.mean) / self.std)
        weights = torch.softmax(self.score(hidden).squeeze(-1), dim=-1)
        return F.normalize(self.out(hidden), dim=-1), weights


class Binder(nn.Module):
    """One pooler per media modality and a learned InfoNCE temperature."""

    def __init__(self, dims: dict[str, int], config: BinderConfig):
        super().__init__()
        self.config = config
        self.dims = {m: int(dims[m]) for m in MEDIA}
        self.poolers = nn.ModuleDict(
            {m: ModalityPooler(self.dims[m], config.hidden, config.dim, config.dropout) for m in MEDIA}
        )
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(1.0 / config.temperature))))
        self.label_head: nn.Linear | None = None  # the weak-label head, kept when labels trained it
        self.label_names: list[str] = []  # its output columns (weak_labels.py names)

    def card(self) -> dict:
        """Config and dims, JSON-ready (the binder's entry in binder.json)."""
        return {"config": dataclasses.asdict(self.config), "dims": self.dims}

    def fit_normalisation(self, tokens: dict[str, np.ndarray]) -> None:
        """Per-dimension mean and std of the training tokens, so raw feature scales do not matter."""
        for m in MEDIA:
            flat = tokens[m].reshape(-1, tokens[m].shape[-1]).astype(np.float64)
            self.poolers[m].mean.copy_(torch.from_numpy(flat.mean(0)).float())
            self.poolers[m].std.copy_(torch.from_numpy(flat.std(0) + 1e-6).float())

    def embed(self, tokens: np.ndarray, modality: Modality | str, batch: int = 1024) -> np.ndarray:
        """[N, T, D] tokens of one modality -> [N, dim] float32 keys (eval mode, no grad)."""
        pooler = self.poolers[Modality(modality).value]
        was_training = self.training
        self.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(tokens), batch):
                chunk = torch.from_numpy(np.ascontiguousarray(tokens[start : start + batch], np.float32))
                out.append(pooler(chunk).numpy())
        self.train(was_training)
        if not out:
            return np.zeros((0, self.config.dim), np.float32)
        return np.concatenate(out).astype(np.float32)

    def embed_segments(self, tokens: np.ndarray, modality: Modality | str, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """[N, T, D] tokens -> segment keys float32 [N, T, dim] and attention weights float32 [N, T]."""
        pooler = self.poolers[Modality(modality).value]
        was_training = self.training
        self.eval()
        keys, weights = [np.zeros((0, tokens.shape[1], self.config.dim), np.float32)], [np.zeros((0, tokens.shape[1]), np.float32)]
        with torch.no_grad():
            for start in range(0, len(tokens), batch):
                chunk = torch.from_numpy(np.ascontiguousarray(tokens[start : start + batch], np.float32))
                segment_keys, segment_weights = pooler.segments(chunk)
                keys.append(segment_keys.numpy())
                weights.append(segment_weights.numpy())
        self.train(was_training)
        return np.concatenate(keys).astype(np.float32), np.concatenate(weights).astype(np.float32)

    def label_probs(self, vectors: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """The weak-label head's probabilities [N, len(names)] of the named labels from clip-level vectors."""
        if self.label_head is None:
            raise UserError("this binder has no weak-label head (build the bank with --weak-labels)")
        columns = [self.label_names.index(n) for n in names]
        with torch.no_grad():
            logits = self.label_head(torch.from_numpy(np.ascontiguousarray(vectors, np.float32)))
        return torch.sigmoid(logits[:, columns]).numpy().astype(np.float32)

    def loss(self, audio: torch.Tensor, visual: torch.Tensor, keep_a, keep_v, head: nn.Module | None = None,
             labels: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Symmetric InfoNCE: row i of audio pairs with row i of visual. With a label ``head`` and
        (targets, known) ``labels``, plus ``label_weight`` times the masked binary cross-entropy of the
        head's predictions from both embeddings (unknown labels add nothing)."""
        z_a = self.poolers[MEDIA[0]](audio, keep_a)
        z_v = self.poolers[MEDIA[1]](visual, keep_v)
        scale = self.log_scale.clamp(max=float(np.log(100.0))).exp()
        logits = scale * z_a @ z_v.T
        target = torch.arange(len(audio))
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        if head is None or labels is None or not bool(labels[1].any()):
            return loss
        targets, known = labels
        weak = sum(
            (F.binary_cross_entropy_with_logits(head(z), targets, reduction="none") * known).sum() / known.sum()
            for z in (z_a, z_v)
        )
        return loss + self.config.label_weight * 0.5 * weak


def _batches(n: int, size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled mini-batches of full size (InfoNCE draws its negatives from the batch)."""
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - size + 1, size):
            yield order[start : start + size]


def _segment_keep(generator: torch.Generator, batch: int, segments: int, rate: float) -> torch.Tensor:
    """A random mask of kept segments (segment dropout); at least one segment per row is kept."""
    keep = torch.rand(batch, segments, generator=generator) >= rate
    keep[torch.arange(batch), torch.randint(segments, (batch,), generator=generator)] = True
    return keep


def update_average(average: nn.Module, model: nn.Module, decay: float) -> None:
    """average <- decay * average + (1 - decay) * model, parameter by parameter (buffers are fixed)."""
    with torch.no_grad():
        for kept, current in zip(average.parameters(), model.parameters()):
            kept.mul_(decay).add_(current, alpha=1.0 - decay)


def _held_out_score(binder: Binder, held_out: dict[str, np.ndarray]) -> float:
    """1 - the mean normalised rank of each held-out video's own pair (1: always first, 0.5: chance),
    both directions averaged. Unlike recall@10, it does not saturate on a small stop slice."""
    z_a = binder.embed(held_out[MEDIA[0]], MEDIA[0])
    z_v = binder.embed(held_out[MEDIA[1]], MEDIA[1])
    n = len(z_a)
    scores = []
    for queries, keys in ((z_v, z_a), (z_a, z_v)):
        sims = queries @ keys.T
        rank = (sims > np.diag(sims)[:, None]).sum(axis=1)
        scores.append(1.0 - rank.mean() / max(n - 1, 1))
    return round(float(np.mean(scores)), 4)


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_binder(
    train: dict[str, np.ndarray],
    held_out: dict[str, np.ndarray],
    config: BinderConfig,
    seed: int,
    threads: int = 1,
    label: str = "binder",
    labels: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[Binder, dict]:
    """Fit a binder on (audio, visual) token pairs; keep the step with the best held-out recall.

    What is scored and kept is a moving average of the weights from the initial ones on
    (``config.average``; why: the module docstring).

    ``train`` and ``held_out`` map "audio"/"visual" to [N, T, D] float32 arrays whose rows are the
    same videos. ``labels``: optional weak labels of the ``train`` rows, (targets float [N, L], known
    bool [N, L]), used when ``config.label_weight`` > 0 through a linear head, kept as
    ``binder.label_head`` (its state at the best step). Returns the binder (eval mode) and its history.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    binder = Binder({m: train[m].shape[-1] for m in MEDIA}, config)
    binder.fit_normalisation(train)
    head, weak = None, None
    if labels is not None and config.label_weight > 0:
        head = nn.Linear(config.dim, labels[0].shape[1])
        weak = (torch.from_numpy(np.asarray(labels[0], np.float32)), torch.from_numpy(np.asarray(labels[1], bool)))
    groups = [{"params": list(binder.parameters())}]
    if head is not None:
        groups.append({"params": list(head.parameters()), "lr": config.label_head_lr})
    optimiser = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    audio, visual = (torch.from_numpy(np.ascontiguousarray(train[m], np.float32)) for m in MEDIA)
    batches = _batches(len(audio), min(config.batch_size, len(audio)), generator)
    history: list[dict] = []
    kept, kept_head = (copy.deepcopy(binder), copy.deepcopy(head)) if config.average else (binder, head)
    kept.eval()

    def snapshot(score: float, step: int) -> dict:
        return {"score": score, "step": step, "state": copy.deepcopy(kept.state_dict()),
                "head": copy.deepcopy(kept_head.state_dict()) if head is not None else None}  # fmt: skip

    best = snapshot(-1.0, 0)
    with _torch_threads(threads), progress_bar("loss", "rank_score") as bar:
        task = bar.add_task(f"training the {label}", total=config.max_steps, loss="-", rank_score="-")
        for step in range(1, config.max_steps + 1):
            binder.train()
            rows = next(batches)
            keep_a = _segment_keep(generator, len(rows), audio.shape[1], config.segment_dropout)
            keep_v = _segment_keep(generator, len(rows), visual.shape[1], config.segment_dropout)
            batch_labels = (weak[0][rows], weak[1][rows]) if weak is not None else None
            loss = binder.loss(audio[rows], visual[rows], keep_a, keep_v, head, batch_labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if config.average:
                update_average(kept, binder, config.average)
                if head is not None:
                    update_average(kept_head, head, config.average)
            if step % config.eval_every:
                continue
            score = _held_out_score(kept, held_out)
            history.append({"step": step, "loss": round(loss.item(), 4), "held_out_rank_score": score})
            bar.update(task, completed=step, loss=f"{loss.item():.3f}", rank_score=f"{score:.3f}")
            if score > best["score"]:
                best = snapshot(score, step)
            elif step - best["step"] >= config.patience * config.eval_every:
                break
    binder.load_state_dict(best["state"])
    if head is not None:  # kept with the binder (its columns are named by the caller)
        head.load_state_dict(best["head"])
        binder.label_head = head
    binder.eval()
    summary = {"steps_run": step, "best_step": best["step"], "history": history}
    return binder, summary


def save_binder(binder: Binder, path: Path) -> None:
    """Weights, dims and config in one torch file (written by the caller through atomic_path); the
    weak-label head's weights are in the state dict and its column names beside them."""
    torch.save({"state_dict": binder.state_dict(), **binder.card(), "label_names": list(binder.label_names)}, path)


def load_binder(path: Path) -> Binder:
    """Rebuild a binder saved by :func:`save_binder`."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    binder = Binder(payload["dims"], BinderConfig(**payload["config"]))
    names = payload.get("label_names") or []
    if names:
        binder.label_head = nn.Linear(binder.config.dim, len(names))
        binder.label_names = list(names)
    binder.load_state_dict(payload["state_dict"])
    binder.eval()
    return binder


# --------------------------------------------------------------------------- cross-fitting


def fold_of(video_ids: Sequence[str], folds: int) -> np.ndarray:
    """The cross-fitting fold of each video: a stable hash of its id, the same in every file."""
    if folds == 1:
        return np.zeros(len(video_ids), np.int64)
    digests = (hashlib.sha256(f"fold:{v}".encode()).digest()[:4] for v in video_ids)
    return np.fromiter((int.from_bytes(d, "little") % folds for d in digests), np.int64, count=len(video_ids))


def stop_slice(train_rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a binder's training videos into (fit, stop): early stopping watches the stop slice only."""
    rows = np.random.default_rng([seed, 7]).permutation(train_rows)
    size = min(max(round(STOP_SHARE * len(rows)), min(MIN_FOLD_VIDEOS, len(rows) // 2)), EVAL_MAX)
    return np.sort(rows[size:]), np.sort(rows[:size])


def train_cross_fitted(
    tokens: dict[str, np.ndarray], video_ids: Sequence[str], config: BinderConfig, seed: int, threads: int = 1,
    labels: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[list[Binder], list[dict]]:
    """One binder per fold, trained on the other folds and early-stopped on a slice held out from them.

    A binder remembers the (audio, visual) pairs it trained on: a trained video's visual embedding
    lands on its own audio's, and its neighbours become the videos that *sound* like it, which is
    the missing modality leaking back. So a video is only ever queried through the binder of its
    fold, which never saw it (on the built-in data this halved the top-1 match of sounding
    instruments for trained videos: the share it had was memory). Nor does that binder's early
    stopping look at them: it stops on a slice of its own training folds, so the videos it is queried
    with, and the key quality measured on them, stay out of every choice made while fitting it.
    Weak ``labels`` (rows as ``video_ids``) follow the same rule: binder f reads only its fit rows' labels.
    """
    folds = fold_of(video_ids, config.folds)
    binders, summaries = [], []
    for f in range(config.folds):
        fit_rows, stop_rows = stop_slice(np.flatnonzero(folds != f), seed + f)
        binder, summary = train_binder(
            {m: tokens[m][fit_rows] for m in MEDIA}, {m: tokens[m][stop_rows] for m in MEDIA},
            config, seed + f, threads, f"binder {f + 1}/{config.folds}",
            None if labels is None else (labels[0][fit_rows], labels[1][fit_rows]),
        )  # fmt: skip
        binders.append(binder)
        summaries.append({"fold": f, "train_videos": len(fit_rows), "stop_videos": len(stop_rows), **summary})
    return binders, summaries


def binder_file(fold: int) -> str:
    return f"binder_{fold}.pt"


def check_bind_size(videos: int, features: Path) -> None:
    """Cross-fitted binders need a few videos per fold to train and to stop on."""
    folds = BinderConfig().folds
    if videos < MIN_FOLD_VIDEOS * folds:
        raise UserError(
            f"{features}: --keys bind trains {folds} cross-fitted binders and needs at least "
            f"{MIN_FOLD_VIDEOS * folds} bank videos, this bank has {videos}; use --keys paired"
        )
