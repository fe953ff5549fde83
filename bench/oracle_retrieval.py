"""How much does recovery gain when retrieval is right? A diagnostic on the built-in data.

Builds (or reuses) the demo's data, features and bank, copies the bank, and replaces its neighbour
lists by *oracle* lists read from scenes.jsonl: for recovering audio, the bank videos whose set of
sounding instruments equals the query's (then the closest sets, by Jaccard similarity); for
recovering visual, those whose visible instruments and positions match. The own video stays
excluded. Then `zero`, `cmr` and `cmr+cap` are trained with the demo budget on the learned bank and
on the oracle bank, and evaluated with audio or visual missing. The gap between the two banks is
what better retrieval keys would buy; the gap to `zero` is what retrieval can add at all.

Usage: python bench/oracle_retrieval.py [DEMO_DIR] [--seeds N]   (default runs/demo, 1 seed)
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import h5py
import numpy as np

from r2scp_cli import evaluate, extract, train
from r2scp_cli.config import BankConfig, EvalConfig, ExtractConfig, SynthConfig, TrainExpertsConfig, TrainRouterConfig
from r2scp_cli.console import console
from r2scp_cli.demo import DEFAULT
from r2scp_cli.retrieval import bank as bank_stage
from r2scp_cli.retrieval.bank import Bank
from r2scp_cli.synth import dataset as synth
from r2scp_cli.synth.dataset import read_scenes


def scene_sets(data: Path) -> dict[str, dict[str, frozenset]]:
    """video id -> what a recovered modality should match: sounding instruments / visible layout."""
    sets = {}
    for scene in read_scenes(data):
        players = scene.to_json()["players"]
        sets[scene.video_id] = {
            "audio": frozenset(p["instrument"] for p in players if p["schedule"] != "silent"),
            "visual": frozenset((p["instrument"], p["position"]) for p in players if p["position"]),
        }
    return sets


def oracle_lists(bank: Bank, sets: dict, query_ids: list[str], modality: str, n: int, seed: int):
    """Top-n entries by Jaccard similarity of the scene sets (random order among ties), own video out."""
    entries = bank.entry_video_ids()
    rng = np.random.default_rng(seed)
    index = np.zeros((len(query_ids), n), np.int64)
    sims = np.zeros((len(query_ids), n), np.float32)
    for row, query in enumerate(query_ids):
        target = sets[query][modality]
        scores = np.array([
            -1.0 if video == query else len(target & sets[video][modality]) / max(1, len(target | sets[video][modality]))
            for video in entries
        ])  # fmt: skip
        order = np.lexsort((rng.random(len(entries)), -scores))[:n]
        index[row], sims[row] = order, scores[order]
    return index, sims


def make_oracle_bank(bank_dir: Path, data: Path, out: Path) -> Path:
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(bank_dir, out)
    bank = Bank.open(out)
    sets = scene_sets(data)
    with h5py.File(out / bank_stage.NEIGHBOURS_FILE, "a") as h5:
        query_ids = list(h5["video_id"].asstr()[()])
        for modality in ("audio", "visual"):
            n = h5[f"{modality}/index"].shape[1]
            index, sims = oracle_lists(bank, sets, query_ids, modality, n, seed=0)
            h5[f"{modality}/index"][...] = index
            h5[f"{modality}/sim"][...] = sims
    return out


def match_rate(bank_dir: Path, data: Path, modality: str, n: int = 5) -> float:
    """Share of the top-n neighbours whose scene set equals the query's."""
    bank, sets = Bank.open(bank_dir), scene_sets(data)
    with h5py.File(bank_dir / bank_stage.NEIGHBOURS_FILE, "r") as h5:
        query_ids = list(h5["video_id"].asstr()[()])
    index, _ = bank.neighbours(query_ids, modality)
    entries = bank.entry_video_ids()
    hits = [sets[entries[j]][modality] == sets[q][modality] for q, row in zip(query_ids, index) for j in row[:n]]
    return float(np.mean(hits))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", nargs="?", default="runs/demo")
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    root, budget = Path(args.root), DEFAULT
    data = synth.run(SynthConfig(root / "data", videos=budget.videos, seed=0, size=budget.size))
    features = extract.run(ExtractConfig(data, root / "features-handcrafted.h5"))
    learned = bank_stage.run(BankConfig(features, root / "bank-handcrafted", check_recall=200))
    oracle = make_oracle_bank(learned, data, root / "bank-oracle")
    results = {}
    for name, bank_dir in (("learned (bind)", learned), ("oracle", oracle)):
        for recovery in ("zero", "cmr", "cmr+cap"):
            if recovery == "zero" and name == "oracle":
                continue  # zero-fill does not retrieve
            for seed in range(args.seeds):
                run = root / "oracle-bench" / f"{name.split()[0]}-{recovery}-seed{seed}"
                console.quiet = True
                experts = train.run_experts(TrainExpertsConfig(features, bank_dir, run / "experts", recovery=recovery,
                                            seed=seed, epochs=budget.experts_epochs, d_model=budget.d_model))  # fmt: skip
                router = train.run_router(TrainRouterConfig(experts, run / "router", seed=seed, epochs=budget.router_epochs))
                for missing in ("audio", "visual"):
                    out = evaluate.run(EvalConfig(router, run / f"eval-{missing}", missing=missing))
                    accuracy = train.artifacts.read_json(out / "metrics.json")["metrics"]["overall"]["accuracy"]
                    results.setdefault((name, recovery, missing), []).append(accuracy)
                console.quiet = False
    for bank_dir, label in ((learned, "learned (bind)"), (oracle, "oracle")):
        print(f"{label:<15} top-5 match rate: audio {match_rate(bank_dir, data, 'audio'):.3f}, "
              f"visual {match_rate(bank_dir, data, 'visual'):.3f}")  # fmt: skip
    print(f"{'bank':<15} {'recovery':<9} {'missing audio':>14} {'missing visual':>15}   (test accuracy %, mean over seeds)")
    for (name, recovery) in sorted({(k[0], k[1]) for k in results}):
        row = [np.mean(results[(name, recovery, m)]) for m in ("audio", "visual")]
        print(f"{name:<15} {recovery:<9} {row[0]:>14.2f} {row[1]:>15.2f}")


if __name__ == "__main__":
    main()
