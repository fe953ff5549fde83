"""Stage 1 (experts + recovery modules) and stage 2 (router over frozen experts), written out top to bottom.

Both stages read their data through batches.py (splits, video tokens, batches with recovery inputs
gathered from the bank's precomputed neighbour lists) and add the missing simulation here; stage 1's
objective is in losses.py.
A run directory holds ``model.pt`` (best weights + the model config), ``checkpoint.pt`` (last state,
for ``--resume``), ``log.jsonl`` and ``meta.json`` (written last).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import artifacts, distributed
from .batches import (
    Split, VideoTokens, limit_cpu_threads, load_model, load_split, make_batch, predict, to_device,
)  # fmt: skip
from .config import RECOVERY_METHODS, TrainExpertsConfig, TrainRouterConfig
from .console import console, progress_bar
from .errors import UserError
from .features import FeatureStore
from .losses import stage_one_loss
from .model import EXPERTS, MEDIA, ModelConfig, R2ScP
from .protocols import check_simulation, simulate
from .retrieval.bank import Bank
from .retrieval.binder import update_average

SETTINGS = ("none", "audio", "visual")  # model selection: mean val accuracy over these (complete first)


# --------------------------------------------------------------------------- building a run


@dataclass
class RunData:
    """Everything a stage reads: the store, the bank, the video tokens and the splits."""

    store: FeatureStore
    bank: Bank
    videos: VideoTokens
    splits: dict[str, Split]


def open_data(features: Path, bank_dir: Path, split_names=("train", "val")) -> RunData:
    artifacts.require(features, "extract")
    artifacts.require(bank_dir, "build-bank")
    store = FeatureStore(features)
    bank = Bank.open(bank_dir)
    if not bank.info.compatible(store.info):
        raise UserError(
            f"{bank_dir}: bank built from encoder '{bank.info.encoder}' {bank.info.dims}, "
            f"but {features} holds '{store.info.encoder}' {store.info.dims}"
        )
    splits = {name: load_split(store, name) for name in split_names}
    needed = sorted({v for s in splits.values() for v in s.video_ids})
    return RunData(store, bank, VideoTokens(store, needed), splits)


def model_config_for(store: FeatureStore, cfg: TrainExpertsConfig, train_videos: int) -> ModelConfig:
    info = store.info
    model_config = ModelConfig(
        dims={k: info.dims[k] for k in ("audio", "visual", "text", "text_global")},
        segments=info.segments,
        question_tokens=info.question_tokens,
        answers=len(store.answers),
        options=store.has_options,
        recovery=cfg.recovery,
        n=cfg.n,
        rho=cfg.rho,
        d_model=cfg.d_model,
        trained_for={"p_missing": cfg.p_missing, "simulate": cfg.simulate, "partial": cfg.partial},
        trust=cfg.trust,
    )
    if cfg.recovery == "cap":  # the prototype pool must hold k tokens, and k-means needs as many training tokens
        tokens = train_videos * info.segments
        pool = min(max(model_config.prototypes, model_config.k), tokens)
        model_config = dataclasses.replace(model_config, prototypes=pool)
    return model_config


STATISTICS_CHUNK = 256  # videos per read when the tokens do not fit in memory (VideoTokens streams)
KMEANS_TOKENS = 100_000  # cap alone: tokens k-means clusters at most (a random subset above it)


def video_chunks(videos: VideoTokens, video_ids: list[str], m: str):
    """The tokens [v, T, D] of ``video_ids`` in one piece when VideoTokens holds them in memory, else in
    chunks of STATISTICS_CHUNK videos read from the file (the whole split never sits in memory)."""
    size = len(video_ids) if videos.cache is not None else STATISTICS_CHUNK
    for start in range(0, len(video_ids), max(size, 1)):
        yield torch.from_numpy(videos.get(video_ids[start : start + size], m))


def _moments(chunks) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and sample std (ddof 1) over the rows of [N, D] chunks; one chunk is computed
    exactly as torch does, several are accumulated in float64."""
    chunks = iter(chunks)
    first = next(chunks)
    rest = list(chunks)
    if not rest:
        return first.mean(0), first.std(0)
    total, squares, count = first.double().sum(0), first.double().pow(2).sum(0), len(first)
    for chunk in rest:
        total, squares, count = total + chunk.double().sum(0), squares + chunk.double().pow(2).sum(0), count + len(chunk)
    mean = total / count
    variance = ((squares - count * mean.pow(2)) / max(count - 1, 1)).clamp_min(0)
    return mean.float(), variance.sqrt().float()


def fit_input_statistics(model: R2ScP, data: RunData) -> None:
    """Per-feature mean and std of the training split's inputs, for every input projection."""
    train_split = data.splits["train"]
    train_videos = sorted(set(train_split.video_ids))
    statistics = {m: _moments(c.flatten(0, 1) for c in video_chunks(data.videos, train_videos, m)) for m in MEDIA}
    statistics["text"] = _moments([train_split.q_tokens[train_split.q_mask]])
    statistics["text_global"] = _moments([train_split.q_global])
    for projection, source in model.input_projections():
        projection.mean.copy_(statistics[source][0])
        projection.std.copy_(statistics[source][1].clamp_min(1e-3))


def fit_cap_priors(model: R2ScP, data: RunData, seed: int) -> None:
    """`cap` without retrieval: the modality's mean tokens, and k-means prototypes of the training
    tokens (clustered in the standardised space, stored as raw tokens; at most KMEANS_TOKENS of them,
    a random subset, when there are more)."""
    train_videos = sorted(set(data.splits["train"].video_ids))
    generator = torch.Generator().manual_seed(seed)
    for m in MEDIA:
        projection = model.projection[m]
        if data.videos.cache is not None:  # in memory: every token
            tokens = torch.from_numpy(data.videos.get(train_videos, m))  # [V, T, D]
            mean = tokens.mean(0)
            points = projection.standardise(tokens.flatten(0, 1))
        else:  # streamed: the mean in chunks, a random subset of tokens for k-means
            total, count, kept = 0.0, 0, []
            share = min(1.0, KMEANS_TOKENS / max(len(train_videos) * model.cfg.segments, 1))
            for chunk in video_chunks(data.videos, train_videos, m):
                total, count = total + chunk.double().sum(0), count + len(chunk)
                flat = chunk.flatten(0, 1)
                kept.append(flat[torch.rand(len(flat), generator=generator) < share])
            mean = (total / count).float()
            points = projection.standardise(torch.cat(kept))
        getattr(model, f"mean_{m}").copy_(mean)
        centres = points[torch.randperm(len(points), generator=generator)[: model.cfg.prototypes]].clone()
        for _ in range(20):  # Lloyd iterations
            assign = torch.cdist(points, centres).argmin(1)
            for c in range(len(centres)):
                members = points[assign == c]
                if len(members):
                    centres[c] = members.mean(0)
        getattr(model, f"prototypes_{m}").copy_(centres * projection.std + projection.mean)


def shard_split(split: Split, rows: slice | np.ndarray) -> Split:
    """The questions ``rows`` (a slice or an index array) of a split, every per-question field alike."""
    fields = [f.name for f in dataclasses.fields(split) if f.name != "name" and getattr(split, f.name) is not None]
    return dataclasses.replace(split, **{name: getattr(split, name)[rows] for name in fields})


def router_videos(split: Split, share: float, seed: int) -> set[str]:
    """The training videos held out from stage 1 for stage 2 (``--router-holdout``): a share of the
    train split's videos drawn from the seed. The router then learns on questions whose answers the
    frozen experts never fitted, so it sees them as unsure as they are on new questions."""
    videos = np.asarray(sorted(set(split.video_ids)), dtype=object)
    order = np.random.default_rng([seed, 2]).permutation(len(videos))
    return set(videos[order[: int(round(share * len(videos)))]])


def holdout_split(split: Split, held_out: set[str], keep_held_out: bool) -> Split:
    """The questions of the held-out videos (stage 2) or of the others (stage 1)."""
    inside = np.array([v in held_out for v in split.video_ids])
    rows = np.flatnonzero(inside if keep_held_out else ~inside)
    if len(rows) == 0:
        raise UserError(f"--router-holdout leaves stage {2 if keep_held_out else 1} no training question")
    return shard_split(split, rows)


def validate(model, data: RunData, stage: int, batch_size: int, device: str) -> dict[str, float]:
    """Val accuracy per setting; stage 1 scores the experts' summed log-probabilities, stage 2 the routed head.
    Under torchrun each rank scores its share of val and the correct answers are summed over the ranks,
    so every rank gets the same scores (and takes the same early-stopping decision).

    Stage 1's experts are independent: removing audio changes the audio expert's output only, so the
    other experts' outputs of the complete pass are reused (5 expert passes instead of 9, same scores)."""
    val = data.splits["val"]
    split = shard_split(val, distributed.share(len(val)))
    correct, complete = [], None
    for setting in SETTINGS:
        if len(split) == 0:  # more processes than val questions
            correct.append(0)
            continue
        reuse = stage == 1 and complete is not None  # SETTINGS start with the complete pass
        p = predict(model, split, setting, data.videos, data.bank.neighbours, data.bank, batch_size, device,
                    route=stage == 2, experts=(setting,) if reuse else EXPERTS)  # fmt: skip
        if reuse:
            p = {**complete, **p}  # the expert of the removed modality from this pass, the others from the complete one
        elif stage == 1:
            complete = p
        combined = p["routed"] if stage == 2 else sum(p[m] for m in EXPERTS)
        correct.append((combined.argmax(-1) == split.answers).sum().item())
    scores = {s: 100.0 * c / len(val) for s, c in zip(SETTINGS, distributed.all_reduce_sum(correct))}
    scores["selection"] = sum(scores[s] for s in SETTINGS) / len(SETTINGS)
    return scores


# --------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class LoopConfig:
    """What both stages' loops need (taken from either stage's config)."""

    stage: int
    epochs: int
    patience: int
    batch_size: int
    lr: float
    seed: int
    p_missing: float
    device: str
    lambda_rank: float = 0.0
    margin: float = 0.0
    simulate: str = "mixed"  # which modality a training sample may lose: mixed (audio or visual), audio, visual
    partial: float = 1.0  # share of its segments a sample that loses a modality loses (1: all)
    noise_aux: float = 0.0  # weight of CAP's noise-identification loss (stage 1)
    trust_match: float = 0.0  # weight of the trust's cross-entropy against fill matches (stage 1)
    average: float = 0.0  # decay of the weights' moving average that is validated and kept (stage 1); 0: off


def save_model(path: Path, model: R2ScP, answers: list[str], **extra) -> None:
    with artifacts.atomic_path(path) as tmp:
        torch.save({"model_config": model.cfg.to_dict(), "state": model.state_dict(), "answers": answers, **extra}, tmp)


def fit(model: R2ScP, params: list, data: RunData, loop: LoopConfig, out_dir: Path, resume: bool) -> dict:
    """Train with the missing simulation, select on val (mean over complete / missing audio / missing
    visual), stop early, save ``model.pt`` at each improvement and ``checkpoint.pt`` every epoch.

    With ``loop.average`` (stage 1) the weights validated and saved are an exponential moving average of
    the trained ones (the binder's, retrieval/binder.py). Stage 2 scores its starting point first, as
    epoch 0: the router's uniform weights and the routed head's zero correction predict what the experts'
    summed log-probabilities predict, so a router is kept only if it beats the experts' sum on val."""
    split = data.splits["train"]
    rng = np.random.default_rng(loop.seed)  # one seed on every rank: the same epoch order and missing draws
    torch.manual_seed(loop.seed + distributed.rank())  # dropout: each rank its own masks
    optimizer = torch.optim.AdamW(params, lr=loop.lr, weight_decay=1e-4)
    state = {"epoch": 0, "best": -1.0, "best_epoch": -1, "bad_epochs": 0, "best_scores": {}}
    checkpoint_path, log_path = out_dir / "checkpoint.pt", out_dir / "log.jsonl"
    kept = copy.deepcopy(model) if loop.average else model  # what is validated and saved
    if resume and checkpoint_path.exists():
        checkpoint = torch.load(checkpoint_path, weights_only=False)
        model.load_state_dict(checkpoint["state"])
        if loop.average:
            kept.load_state_dict(checkpoint.get("average", checkpoint["state"]))
        optimizer.load_state_dict(checkpoint["optimizer"])
        state = checkpoint["loop"]
        rng.bit_generator.state = checkpoint["numpy_rng"]
        states = checkpoint.get("torch_rng_ranks", [checkpoint["torch_rng"]])
        torch.set_rng_state(states[distributed.rank() % len(states)])
        console.print(f"resuming {out_dir} after epoch {state['epoch']}")
    elif distributed.is_main():
        log_path.unlink(missing_ok=True)
    # Stage 1 leaves parts unused in a batch (recovery of a modality no row of the rank's share misses,
    # the router); stage 2 trains the router and the routed head, which every batch uses.
    net = distributed.wrap(model, find_unused_parameters=loop.stage == 1)
    batches = math.ceil(len(split) / loop.batch_size)

    def record(epoch: int, scores: dict, loss: float | None = None) -> None:
        """Log an epoch's val scores; save ``model.pt`` when they are the best so far."""
        entry = {"epoch": epoch, **({} if loss is None else {"loss": loss}), **{f"val_{k}": v for k, v in scores.items()},
                 "seconds": round(time.time() - started, 2)}  # fmt: skip
        if distributed.is_main():
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(json.dumps(entry) + "\n")
        if scores["selection"] > state["best"]:
            state.update(best=scores["selection"], best_epoch=epoch, bad_epochs=0, best_scores=scores)
            if distributed.is_main():
                save_model(out_dir / "model.pt", kept, data.store.answers, epoch=epoch, val=scores)
        else:
            state["bad_epochs"] += 1

    started, seen = time.time(), 0
    if loop.stage == 2 and state["epoch"] == 0:
        record(0, validate(kept, data, 2, 256, loop.device))
    with progress_bar("loss", "val") as bar:
        task = bar.add_task(f"stage {loop.stage}", total=loop.epochs * batches, completed=state["epoch"] * batches,
                            loss="-", val="-")  # fmt: skip
        for epoch in range(state["epoch"], loop.epochs):
            # Stage 2 keeps the frozen experts' dropout on: on their own training questions the experts'
            # clean outputs are overconfident, and a head fitted on them overfits at once.
            model.train()
            order, total = rng.permutation(len(split)), 0.0
            for start in range(0, len(split), loop.batch_size):
                idx = order[start : start + loop.batch_size]
                missing, lost = simulate(len(idx), model.cfg.segments, loop.p_missing, rng, loop.simulate, loop.partial)
                rows, fraction = distributed.batch_share(len(idx))  # this rank's slice of the global batch
                batch = make_batch(split, idx[rows], missing[rows], data.videos, model.cfg, data.bank.neighbours,
                                   data.bank, training=loop.stage == 1, lost=lost[rows])  # fmt: skip
                batch = to_device(batch, loop.device)
                out = net(batch, route=loop.stage == 2)
                if loop.stage == 1:
                    loss = stage_one_loss(model, batch, out, loop.lambda_rank, loop.margin, loop.noise_aux, loop.trust_match)
                else:
                    loss = F.cross_entropy(out["logits"], batch["answer"])
                optimizer.zero_grad(set_to_none=True)
                (loss * (fraction * distributed.world_size())).backward()  # DDP's average: the global batch's mean
                torch.nn.utils.clip_grad_norm_(params, 5.0)
                optimizer.step()
                if loop.average:
                    update_average(kept, model, loop.average)
                total += loss.item() * fraction * len(idx)
                seen += len(idx)
                bar.update(task, advance=1, loss=f"{loss.item():.3f}")
            scores = validate(kept, data, loop.stage, 256, loop.device)
            record(epoch + 1, scores, distributed.all_reduce_sum([total])[0] / len(split))
            state["epoch"] = epoch + 1
            bar.update(task, val=f"{scores['selection']:.1f}")
            torch_rng = distributed.all_gather(torch.get_rng_state())  # each rank's dropout stream
            if distributed.is_main():
                with artifacts.atomic_path(checkpoint_path) as tmp:
                    average = {"average": kept.state_dict()} if loop.average else {}
                    torch.save({"state": model.state_dict(), **average, "optimizer": optimizer.state_dict(), "loop": state,
                                "numpy_rng": rng.bit_generator.state, "torch_rng": torch_rng[0],
                                "torch_rng_ranks": torch_rng}, tmp)  # fmt: skip
            if state["bad_epochs"] >= loop.patience:
                bar.update(task, total=(epoch + 1) * batches, completed=(epoch + 1) * batches)
                break
    elapsed = time.time() - started
    return {
        "epochs": state["epoch"],
        "best_epoch": state["best_epoch"],
        "val": state["best_scores"],
        "train_samples_per_s": round(seen / elapsed, 1) if elapsed > 0 else None,
        "cpu_threads": torch.get_num_threads(),  # float sums follow the thread count: a rerun matches with the same
    }


# --------------------------------------------------------------------------- the two stages


def check_training_config(config) -> None:
    recovery = getattr(config, "recovery", None)
    if recovery is not None and recovery not in RECOVERY_METHODS:
        raise UserError(f"--recovery {recovery}: choose one of {', '.join(RECOVERY_METHODS)}")
    if not 0.0 <= config.p_missing <= 1.0:
        raise UserError(f"--p-missing {config.p_missing}: must lie in [0, 1]")
    check_simulation(config.simulate, config.partial)
    if config.epochs < 1 or config.batch_size < 1:
        raise UserError("--epochs and --batch-size must be at least 1")
    if isinstance(config, TrainExpertsConfig) and not 0.0 < config.rho <= 1.0:
        raise UserError(f"--rho {config.rho}: must lie in (0, 1]")
    if isinstance(config, TrainExpertsConfig) and config.noise_aux < 0:
        raise UserError(f"--noise-aux {config.noise_aux}: must be at least 0")
    if isinstance(config, TrainExpertsConfig) and config.trust_match < 0:
        raise UserError(f"--trust-match {config.trust_match}: must be at least 0")
    if isinstance(config, TrainExpertsConfig) and config.trust_match > 0 and not (config.trust and config.recovery in ("cmr", "cmr+cap")):
        raise UserError(f"--trust-match trains the trust of retrieved fills: add --trust (recovery cmr or cmr+cap, not {config.recovery})")
    if isinstance(config, TrainExpertsConfig) and not 0.0 <= config.average < 1.0:
        raise UserError(f"--average {config.average}: must lie in [0, 1) (0: keep the raw weights)")
    if isinstance(config, TrainExpertsConfig) and not 0.0 <= config.router_holdout < 1.0:
        raise UserError(f"--router-holdout {config.router_holdout}: must lie in [0, 1)")


def check_bank_lists(config: TrainExpertsConfig, bank_meta: dict) -> None:
    """Retrieval gathers n neighbours per missing modality and, in training, n random negatives for the
    ranking loss: the bank must store at least n of each (checked before anything is written)."""
    if config.recovery not in ("cmr", "cmr+cap"):
        return
    if config.trust_match > 0 and bank_meta["key_mode"] == "paired":
        raise UserError(f"--trust-match compares a fill with the lost modality in the bank's key space, but {config.bank} "
                        "has paired keys (made from the available modality); use a bank of --keys bind or unified")  # fmt: skip
    figures = bank_meta["figures"]
    for what, stored in (("neighbours", figures["neighbours"]), ("random negatives", figures["negatives"])):
        if config.n > stored:
            raise UserError(f"--n {config.n}: the bank {config.bank} stores only {stored} {what} per video; "
                            f"lower --n or rebuild the bank with --neighbours {config.n}")  # fmt: skip


@distributed.training_stage
def run_experts(config: TrainExpertsConfig, force: bool = False, resume: bool = False) -> Path:
    """Stage 1: the experts, their heads and the recovery modules, with simulated missing modalities."""
    check_training_config(config)
    inputs = {"features": config.features, "bank": config.bank}
    artifacts.require(config.features, "extract")
    check_bank_lists(config, artifacts.require(config.bank, "build-bank"))
    run = distributed.on_main(artifacts.begin, "train-experts", config.out, config, inputs, force=force)
    if run.finished:
        console.print(f"{config.out}: already trained on the same inputs (use --force to redo)")
        return config.out
    limit_cpu_threads(config.device, distributed.world_size())
    data = open_data(config.features, config.bank)
    if config.router_holdout > 0:
        held_out = router_videos(data.splits["train"], config.router_holdout, config.seed)
        data.splits["train"] = holdout_split(data.splits["train"], held_out, keep_held_out=False)
    torch.manual_seed(config.seed)
    model = R2ScP(model_config_for(data.store, config, len(set(data.splits["train"].video_ids))))
    fit_input_statistics(model, data)
    if config.recovery == "cap":
        fit_cap_priors(model, data, config.seed)
    model.to(config.device)
    loop = LoopConfig(1, config.epochs, config.patience, config.batch_size, config.lr, config.seed,
                      config.p_missing, config.device, config.lambda_rank, config.margin, config.simulate,
                      config.partial, config.noise_aux, config.trust_match, config.average)  # fmt: skip
    summary = fit(model, model.stage_one_parameters(), data, loop, config.out, resume)
    console.print(f"stage 1 ({config.recovery}): best val {summary['val'].get('selection', float('nan')):.2f} "
                  f"at epoch {summary['best_epoch']}")  # fmt: skip
    if distributed.is_main():
        run.finish(figures=summary, model_config=model.cfg.to_dict(), distributed=distributed.describe())
    return config.out


@distributed.training_stage
def run_router(config: TrainRouterConfig, force: bool = False, resume: bool = False) -> Path:
    """Stage 2: everything from stage 1 frozen; the router and the routed head learn to weigh experts."""
    experts_meta = artifacts.require(config.experts, "train-experts")
    check_training_config(config)
    run = distributed.on_main(artifacts.begin, "train-router", config.out, config, {"experts": config.experts},
                              force=force)  # fmt: skip
    if run.finished:
        console.print(f"{config.out}: already trained on the same inputs (use --force to redo)")
        return config.out
    stage_one = experts_meta["config"]
    limit_cpu_threads(config.device, distributed.world_size())
    data = open_data(Path(stage_one["features"]), Path(stage_one["bank"]))
    if stage_one.get("router_holdout", 0.0) > 0:  # stage 2 learns on the videos stage 1 never trained on
        held_out = router_videos(data.splits["train"], stage_one["router_holdout"], stage_one["seed"])
        data.splits["train"] = holdout_split(data.splits["train"], held_out, keep_held_out=True)
    model, _ = load_model(config.experts / "model.pt", config.device)
    for parameter in model.stage_one_parameters():
        parameter.requires_grad_(False)
    params = [p for module in model.stage_two_modules() for p in module.parameters()]
    loop = LoopConfig(2, config.epochs, config.patience, config.batch_size, config.lr, config.seed,
                      config.p_missing, config.device, simulate=config.simulate, partial=config.partial)  # fmt: skip
    summary = fit(model, params, data, loop, config.out, resume)
    kept = " (the untrained router: the experts' sum; no trained router beat it)" if summary["best_epoch"] == 0 else ""
    console.print(f"stage 2 ({model.cfg.recovery}): best val {summary['val'].get('selection', float('nan')):.2f} "
                  f"at epoch {summary['best_epoch']}{kept}")  # fmt: skip
    if distributed.is_main():
        run.finish(figures=summary, model_config=model.cfg.to_dict(), recovery=model.cfg.recovery,
                   seed=stage_one["seed"], distributed=distributed.describe())  # fmt: skip
    return config.out
