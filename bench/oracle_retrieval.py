"""How much does recovery gain when retrieval is right? A diagnostic on the built-in data.

Builds (or reuses) a demo directory's data, features, library and bank exactly as `r2scp demo` does
(default: `pretrained` features, the demo's library and weak labels), copies the bank, and replaces
its neighbour lists by lists read from the scenes (scenes.jsonl of the data and of the library):

* ``oracle``: for recovering audio, the bank entries whose set of sounding instruments equals the
  query's (then the closest sets, by Jaccard similarity); for recovering visual, those whose visible
  instruments *and positions* match. This uses facts the present modality cannot reveal: the demo's
  soundtrack is mono, so no key computed from sound can know where a player stands.
* ``knowable``: each list matches only what the present modality can show: recovering visual, the
  sounding instruments (heard); recovering audio, the visible instruments (seen), positions ignored.
  Its gain is what perfect keys could buy on this data.

The own video stays excluded, ties are broken at random. Then the chosen recovery methods are
trained with the demo's budget and stage functions on each bank and evaluated complete, with audio
and with visual missing; the learned bank's rows are the demo's own. `zero` does not retrieve, so it
is trained on the learned bank only.

Usage: python bench/oracle_retrieval.py [DEMO_DIR] [--encoder pretrained] [--seeds 3]
           [--banks learned,oracle,knowable] [--recoveries zero,cmr,cmr+cap]   (default runs/demo)
           [--videos N] [--data-seed N]   (another dataset size or draw, as `r2scp demo` takes them)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
from pathlib import Path

import h5py
import numpy as np

from r2scp_cli import artifacts, demo
from r2scp_cli.config import DemoConfig, keep_freed_memory
from r2scp_cli.console import console
from r2scp_cli.retrieval import bank as bank_stage
from r2scp_cli.retrieval.bank import Bank
from r2scp_cli.synth.dataset import read_scenes

SETTINGS = ("none", "audio", "visual")


def scene_sets(folders: list[Path], kind: str) -> list[dict[str, dict[str, frozenset]]]:
    """Per source folder (the data, then each library): video id -> the set a list for recovering
    each modality should match (``kind``: oracle or knowable, see the module docstring)."""
    out = []
    for folder in folders:
        sets = {}
        for scene in read_scenes(folder):
            players = scene.to_json()["players"]
            heard = frozenset(p["instrument"] for p in players if p["schedule"] != "silent")
            seen = frozenset(p["instrument"] for p in players if p["position"])
            layout = frozenset((p["instrument"], p["position"]) for p in players if p["position"])
            sets[scene.video_id] = {"audio": heard, "visual": layout} if kind == "oracle" else {"audio": seen, "visual": heard}
        out.append(sets)
    return out


def oracle_lists(bank: Bank, sets: list[dict], query_ids: list[str], modality: str, n: int, seed: int):
    """Top-n entries by Jaccard similarity of the scene sets (random order among ties), own video out."""
    sources, videos = bank.entry_sources(), np.asarray(bank.entry_video_ids(), dtype=object)
    entries = [sets[source][video][modality] for source, video in zip(sources, videos)]
    rng = np.random.default_rng(seed)
    index = np.zeros((len(query_ids), n), np.int64)
    sims = np.zeros((len(query_ids), n), np.float32)
    for row, query in enumerate(query_ids):
        target = sets[0][query][modality]
        scores = np.array([len(target & entry) / max(1, len(target | entry)) for entry in entries])
        scores[(sources == 0) & (videos == query)] = -1.0  # the own video
        order = np.lexsort((rng.random(len(entries)), -scores))[:n]
        index[row], sims[row] = order, scores[order]
    return index, sims


def make_oracle_bank(bank_dir: Path, sets: list[dict], out: Path) -> Path:
    """A copy of the bank whose neighbour lists are the scene-set ``oracle_lists``."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(bank_dir, out)
    bank = Bank.open(out)
    with h5py.File(out / bank_stage.NEIGHBOURS_FILE, "a") as h5:
        query_ids = list(h5["video_id"].asstr()[()])
        for modality in ("audio", "visual"):
            n = h5[f"{modality}/index"].shape[1]
            index, sims = oracle_lists(bank, sets, query_ids, modality, n, seed=0)
            h5[f"{modality}/index"][...] = index
            h5[f"{modality}/sim"][...] = sims
    return out


def match_rate(bank_dir: Path, sets: list[dict], modality: str, n: int = 5) -> float:
    """Share of the top-n neighbours whose set (of ``sets``) for recovering ``modality`` equals the query's."""
    bank = Bank.open(bank_dir)
    with h5py.File(bank_dir / bank_stage.NEIGHBOURS_FILE, "r") as h5:
        query_ids = list(h5["video_id"].asstr()[()])
    index, _ = bank.neighbours(query_ids, modality)
    sources, entries = bank.entry_sources(), bank.entry_video_ids()
    hits = [sets[sources[j]][entries[j]][modality] == sets[0][q][modality] for q, row in zip(query_ids, index) for j in row[:n]]
    return float(np.mean(hits))


def prepare(root: Path, encoder: str, library_videos: int | None, videos: int | None = None,
            data_seed: int = 0) -> tuple[Path, Path, list[Path], demo.Budget]:
    """The demo's data, features, library and learned bank under ``root`` (reused when finished), and
    the folders whose scenes the bank's entries come from (the data's, then the library's)."""
    config = DemoConfig(out=root, encoder=encoder, library_videos=library_videos, videos=videos, data_seed=data_seed)
    budget = demo.budget_for(config)
    features, learned = demo.prepare_bank(config, budget)
    folders = [root / "data"] + ([demo.library_folder(config, budget)] if budget.library_videos else [])
    return features, learned, folders, budget


def main() -> None:
    keep_freed_memory()  # as every r2scp command does
    parser = argparse.ArgumentParser()
    parser.add_argument("root", nargs="?", default="runs/demo")
    parser.add_argument("--encoder", default="pretrained")
    parser.add_argument("--library-videos", type=int, default=None, help="default: the demo's")
    parser.add_argument("--videos", type=int, default=None, help="clips of the dataset (default: the demo's)")
    parser.add_argument("--data-seed", type=int, default=0, help="the dataset's synth seed, as `demo --data-seed`")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--banks", default="learned,oracle,knowable")
    parser.add_argument("--recoveries", default="zero,cmr,cmr+cap")
    args = parser.parse_args()
    root = Path(args.root)
    features, learned, folders, budget = prepare(root, args.encoder, args.library_videos, args.videos, args.data_seed)
    sets = {kind: scene_sets(folders, kind) for kind in ("oracle", "knowable")}
    banks = {"learned": learned}
    for kind in ("oracle", "knowable"):
        if kind in args.banks.split(","):
            banks[kind] = make_oracle_bank(learned, sets[kind], root / f"bank-{args.encoder}-{kind}")
    jobs = {}
    for name in args.banks.split(","):
        for recovery in args.recoveries.split(","):
            if recovery == "zero" and name != "learned":
                continue  # zero-fill does not retrieve
            for seed in range(args.seeds):
                run_dir = root / f"runs-{args.encoder}" / f"{recovery}-seed{seed}" if name == "learned" else \
                    root / "oracle-bench" / f"{name}-{recovery}-seed{seed}"  # the learned bank's runs are the demo's
                jobs[(name, recovery, seed)] = demo.Job(recovery, seed, features, banks[name], run_dir, budget)
    # The demo's scheduler and thread split (one thread per worker on 2 cores): a run's float sums, so its
    # numbers, depend on its thread count, and the learned bank's runs are the demo's own.
    demo.run_jobs(list(jobs.values()), min(2, os.cpu_count() or 1))
    console.quiet = False
    results: dict[tuple, list[float]] = {}
    for (name, recovery, _), job in jobs.items():
        for missing in SETTINGS:
            metrics = artifacts.read_json(job.run_dir / f"eval-{missing}" / "metrics.json")
            results.setdefault((name, recovery, missing), []).append(metrics["metrics"]["overall"]["accuracy"])
    for name, bank_dir in banks.items():
        rates = [match_rate(bank_dir, sets[kind], m) for kind in ("oracle", "knowable") for m in ("audio", "visual")]
        print(f"{name:<9} top-5 match: sounding set {rates[0]:.3f}, visible layout {rates[1]:.3f}; "
              f"visible set {rates[2]:.3f}, visual by sounding set {rates[3]:.3f}")  # fmt: skip
    print(f"test accuracy %, mean ± std over {args.seeds} seed(s): bank, recovery, complete / missing audio / missing visual")
    for name, recovery in dict.fromkeys((k[0], k[1]) for k in results):
        cells = []
        for missing in SETTINGS:
            values = results[(name, recovery, missing)]
            spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
            cells.append(f"{np.mean(values):.2f}{spread}")
        print(f"{name:<9} {recovery:<8} " + " / ".join(cells))


if __name__ == "__main__":
    main()
