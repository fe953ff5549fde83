"""`r2scp eval`: one trained run, one split, under one missing-modality protocol.

The protocol (``protocols.Protocol``: which modality, the share of videos, the share of segments,
the mask seed) removes a modality from every video or from some; the removed features are never read
(``batches.VideoTokens`` hides them, lost segments included), and recovery queries the bank with the
available modality only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from . import artifacts
from .batches import VideoTokens, limit_cpu_threads, load_model, load_split, predict
from .config import EvalConfig, config_dict
from .console import console
from .errors import UserError
from .features import FeatureStore
from .model import EXPERTS, MEDIA
from .protocols import Masks, Protocol, eval_masks
from .metrics import compute_metrics, print_metrics
from .retrieval.bank import Bank, key_verdict

RUN_STAGES = {"train-router": "router", "train-experts": "experts"}


def run_meta(run_dir: Path) -> tuple[str, dict, dict]:
    """(kind, the run's meta, the stage-1 meta) of a router or experts directory."""
    meta_file = artifacts.meta_path(run_dir)
    if not run_dir.exists():
        raise UserError(f"{run_dir}: not found; run `r2scp train-router` (or train-experts) first")
    if not meta_file.exists():
        raise UserError(f"{run_dir}: unfinished (no {meta_file.name}); run its training stage again")
    meta = artifacts.read_json(meta_file)
    kind = RUN_STAGES.get(meta.get("stage"))
    if kind is None:
        raise UserError(f"{run_dir}: made by `{meta.get('stage')}`, expected a train-router or train-experts output")
    stage_one = meta if kind == "experts" else artifacts.require(Path(meta["config"]["experts"]), "train-experts")
    return kind, meta, stage_one


def open_features(path: Path, bank, answers: list[str]) -> FeatureStore:
    """The features to evaluate on: same encoder and dims as the bank, same answer vocabulary."""
    artifacts.require(path, "extract")
    store = FeatureStore(path)
    store.require_questions("eval")
    if not store.info.compatible(bank.info):
        raise UserError(
            f"{path}: features from encoder '{store.info.encoder}' {store.info.dims} do not match the run's "
            f"'{bank.info.encoder}' {bank.info.dims}"
        )
    if list(store.answers) != list(answers):
        raise UserError(f"{path}: its answer vocabulary differs from the one the run was trained with")
    return store


def retrieval_summary(bank: Bank) -> dict:
    """The bank's key quality and verdict, carried into the metrics so `report` can show them."""
    figures = bank.meta["figures"]
    return {
        "bank": str(bank.dir),
        "key_mode": bank.key_mode,
        "key_quality": {m: figures[m]["key_quality"] for m in MEDIA},
        "verdict": figures.get("verdict") or key_verdict(figures),
    }


def answers_hash(answers) -> str:
    return hashlib.sha256("\n".join(answers).encode()).hexdigest()[:16]


def run(config: EvalConfig, force: bool = False) -> Path:
    """Evaluate and write metrics.json and predictions.jsonl; returns the output directory."""
    protocol = protocol_of(config).check()
    kind, meta, stage_one = run_meta(config.run)
    trained_on = Path(stage_one["config"]["features"])
    features = config.features or trained_on
    inputs = {"run": config.run, "features": features}
    stage = artifacts.begin("eval", config.out, config, inputs, force=force)
    if stage.finished:
        console.print(f"{config.out}: already evaluated (use --force to redo)")
        print_metrics(artifacts.read_json(config.out / "metrics.json")["metrics"], _title(kind, stage_one, config, protocol))
        return config.out

    limit_cpu_threads(config.device)
    model, checkpoint = load_model(config.run / "model.pt", config.device)
    bank = Bank.open(Path(stage_one["config"]["bank"]))
    store = open_features(features, bank, checkpoint["answers"])
    same_file = features.resolve() == trained_on.resolve()
    if same_file:
        retrieve = bank.neighbours  # precomputed lists of this very file
    else:  # another file: retrieve on the fly, from its available modality only
        width = model.cfg.n if protocol.partial >= 1.0 else max(model.cfg.n, bank.meta["figures"]["neighbours"])
        retrieve = lambda vids, m: bank.search(store, vids, m, width)  # noqa: E731  (partial loss re-ranks them all)

    masks = eval_masks(protocol, store.questions.video_id[store.questions.rows(config.split)], store.info.segments)
    split = load_split(store, config.split, read_text=protocol.missing != "text")
    if protocol.missing == "text":
        reveal_questions(store, split, masks)
    # A modality every video loses whole is not opened at all; lost segments and videos are hidden.
    whole = protocol.rate >= 1.0 and protocol.partial >= 1.0
    available = tuple(m for m in MEDIA if not (whole and protocol.missing == m))
    videos = VideoTokens(store, sorted(set(split.video_ids)), modalities=available, hidden=masks.hidden(split.video_ids))
    p = predict(model, split, protocol.missing, videos, retrieve, bank, config.batch_size, config.device,
                route=kind == "router", masks=masks)  # fmt: skip

    combined = p["routed"] if kind == "router" else sum(p[m] for m in EXPERTS)
    records = prediction_records(store, split, combined, p["alpha"] if kind == "router" else None,
                                 p["confidence"], p["trust"])  # fmt: skip
    metrics = compute_metrics(records, store.format)
    result = {
        "stage": "eval",
        "recovery": model.cfg.recovery,
        "seed": stage_one["config"]["seed"],
        "encoder": store.info.encoder,
        "format": store.format,
        "missing": config.missing,
        "protocol": {**protocol.to_dict(), "affected_videos": len(set(split.video_ids[masks.missing > 0])),
                     "videos": len(set(split.video_ids)), "affected_questions": int((masks.missing > 0).sum()),
                     "degraded": None if store.degradation is None else store.degradation["spec"]},
        "split": config.split,
        "kind": kind,
        "metrics": metrics,
        "evaluated": len(records),
        "failed_videos": store.failed,
        "answer_vocab_sha": answers_hash(checkpoint["answers"]),
        "retrieval": retrieval_summary(bank),
        "config": {"eval": config_dict(config), "run": meta["config"], "model": model.cfg.to_dict()},
        "fingerprints": {
            "model": artifacts.fingerprint(config.run / "model.pt"),
            "features": artifacts.fingerprint(features),
        },
    }
    if store.degradation is not None:
        result["degradation"] = {**store.degradation, "noise_identification": noise_identification(
            model, store, split, videos, masks, config.batch_size)}  # fmt: skip
    if kind == "experts":  # each expert alone, for diagnosis
        result["experts"] = {
            m: compute_metrics(prediction_records(store, split, p[m], None), store.format) for m in EXPERTS
        }
    with artifacts.atomic_path(config.out / "predictions.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    artifacts.write_json(config.out / "metrics.json", result)
    print_metrics(metrics, _title(kind, stage_one, config, protocol, store))
    for m, found in result.get("degradation", {}).get("noise_identification", {}).items():
        if isinstance(found, dict) and "precision" in found:
            console.print(f"CAP noise identification ({m}): precision {found['precision']:.3f} (chance "
                          f"{found['chance_precision']:.3f}), recall {found['recall'] or 0:.3f} (chance {found['chance_recall']:.3f})")  # fmt: skip
    stage.finish(figures={"overall": metrics["overall"]["accuracy"], "evaluated": len(records)})
    return config.out


def protocol_of(config: EvalConfig) -> Protocol:
    return Protocol(config.missing, config.rate, config.partial, config.mask_seed)


def reveal_questions(store: FeatureStore, split, masks: Masks) -> None:
    """Text removed from some questions only (--rate < 1): the split was loaded without text; read
    the question features of the unaffected rows alone."""
    keep = np.flatnonzero(masks.missing == 0)
    if len(keep) == 0:
        return
    arrays = store.question_arrays(split.rows[keep], fields=("tokens", "mask", "global"))
    split.q_tokens[keep] = torch.as_tensor(arrays["tokens"])
    split.q_mask[keep] = torch.as_tensor(arrays["mask"])
    split.q_global[keep] = torch.as_tensor(arrays["global"])


def _title(kind: str, stage_one: dict, config: EvalConfig, protocol: Protocol, store: FeatureStore | None = None) -> str:
    recovery = stage_one["config"]["recovery"]
    degraded = f", degraded {store.degradation['spec']}" if store is not None and store.degradation else ""
    return f"{recovery} ({kind}, seed {stage_one['config']['seed']}) — {config.split}, {protocol.name}{degraded}"


@torch.no_grad()
def noise_identification(model, store: FeatureStore, split, videos: VideoTokens, masks: Masks, batch_size: int) -> dict:
    """How well CAP's Omega_noise finds the segments `extract --degrade` corrupted. For each degraded
    modality m that the protocol leaves present, CAP m scores the present (degraded) tokens against the
    other modality and the question, as it scores a fill; its k chosen positions are compared with the
    recorded truth, per question. Precision's chance level is the corrupted share, recall's k / T."""
    if not model.cfg.purifies:
        return {"skipped": f"recovery {model.cfg.recovery} has no CAP"}
    model.eval()
    out = {}
    video_ids = sorted(set(split.video_ids))
    index = {v: i for i, v in enumerate(video_ids)}
    rows = np.flatnonzero(masks.missing == 0)  # complete rows: both modalities present
    for m in MEDIA:
        truth_by_video = store.degraded_segments(video_ids, m)
        if truth_by_video is None:
            continue
        if len(rows) == 0:
            out[m] = {"skipped": "no question keeps both modalities under this protocol"}
            continue
        other = [x for x in MEDIA if x != m][0]
        chosen_true = chosen = truth_total = 0
        for start in range(0, len(rows), batch_size):
            idx = rows[start : start + batch_size]
            vids = split.video_ids[idx]
            truth = torch.from_numpy(truth_by_video[[index[v] for v in vids]])  # [B, T]
            h = model.projection[m](torch.from_numpy(videos.get(vids, m)))
            available = model.context_projection[m]["available"](torch.from_numpy(videos.get(vids, other)))
            q_global = model.question_projection[m](split.q_global[idx])
            _, omega_noise = model.cap[m].identify_noise(h, [available], q_global)
            hit = truth.gather(1, omega_noise)  # [B, k]
            chosen_true += int(hit.sum())
            chosen += hit.numel()
            truth_total += int(truth.sum())
        k, T = model.cfg.k, model.cfg.segments
        out[m] = {
            "questions": len(rows),
            "k": k,
            "precision": chosen_true / chosen,
            "recall": chosen_true / truth_total if truth_total else None,
            "chance_precision": truth_total / (len(rows) * T),
            "chance_recall": k / T,
        }
        out[m]["precision_over_chance"] = out[m]["precision"] / out[m]["chance_precision"] if truth_total else None
    return out


def _finite(values: torch.Tensor | None, i: int) -> float | None:
    if values is None or not torch.isfinite(values[i]):
        return None
    return round(float(values[i]), 5)


def prediction_records(store: FeatureStore, split, log_probs: torch.Tensor, alpha: torch.Tensor | None,
                       confidence: torch.Tensor | None = None, trust: torch.Tensor | None = None) -> list[dict]:  # fmt: skip
    """One record per question: id, video, type, predicted and true answer, correctness, router weights,
    and for a question whose missing modality was retrieved, the fill's confidence (mean key
    similarity of its neighbours) and, with --trust, the trust the model gave it."""
    q = store.questions
    choice = log_probs.argmax(-1).numpy()
    options_text = store.options_text(split.rows) if store.has_options else None
    records = []
    for i, row in enumerate(split.rows):
        if options_text is not None:
            predicted = options_text[i][choice[i]]
        else:
            predicted = store.answers[choice[i]]
        records.append(
            {
                "qid": q.qid[row],
                "video_id": q.video_id[row],
                "type": q.type[row],
                "subtype": q.subtype[row],
                "predicted": predicted,
                "answer": q.answer[row],
                "correct": bool(choice[i] == split.answers[i].item()),
                "weights": None if alpha is None else dict(zip(EXPERTS, np.round(alpha[i].numpy(), 4).tolist())),
                "confidence": _finite(confidence, i),
                "trust": _finite(trust, i),
            }
        )
    return records
