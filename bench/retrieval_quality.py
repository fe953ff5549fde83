"""Do the bank's neighbours carry the missing modality's facts? bind vs paired vs random keys.

On the built-in data (`r2scp synth` -> `extract` -> `build-bank`), using the latent scenes in
DATA/scenes.jsonl: for recovered audio, the share of neighbours whose set of sounding instruments
equals the query's; for recovered visual, the share whose visible instruments *and* their positions
equal the query's. Random is the exact expectation over the bank (own video excluded). Also prints
each bank's key-quality report (cross-modal recall@10 of held-out videos next to chance).

    python bench/retrieval_quality.py [--videos 400] [--split-by qa|video] [--encoder handcrafted] [--keep DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from r2scp_cli import artifacts, extract
from r2scp_cli.config import BankConfig, ExtractConfig, Modality, SynthConfig
from r2scp_cli.features import FeatureStore
from r2scp_cli.retrieval import bank
from r2scp_cli.synth import dataset as synth

MODES = ("bind", "paired")


def facts(scene, m: Modality) -> frozenset:
    """What a recovered modality should bring back: heard instruments, or visible (instrument, place)."""
    if m is Modality.AUDIO:
        return frozenset(scene.heard_classes())
    return frozenset((p.instrument, p.position) for p in scene.visible)


def match_shares(memory: bank.Bank, query_ids: list[str], truth: dict[str, frozenset], m: Modality) -> dict:
    """Share of matching neighbours at top-1 and over the whole list, and the random expectation."""
    idx, _ = memory.neighbours(query_ids, m)
    entries = memory.entry_video_ids()
    match = np.array([[truth[entries[j]] == truth[v] for j in row] for v, row in zip(query_ids, idx)])
    counts = Counter(truth[e] for e in entries)
    in_bank = Counter(entries)
    random = np.mean([(counts[truth[v]] - in_bank[v]) / (len(entries) - in_bank[v]) for v in query_ids])
    return {"top1": match[:, 0].mean(), f"top{idx.shape[1]}": match.mean(), "random": random}


def pipeline(root: Path, videos: int, encoder: str, split_by: str) -> tuple[Path, Path]:
    data = synth.run(SynthConfig(out=root / f"data-{split_by}", videos=videos, split_by=split_by))
    features = extract.run(ExtractConfig(dataset=data, out=root / f"features-{split_by}-{encoder}.h5", encoder=encoder))
    return data, features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=400)
    parser.add_argument("--encoder", default="handcrafted")
    parser.add_argument("--split", default="test", help="query videos: those with questions in this split")
    parser.add_argument(
        "--split-by", default="qa", choices=("qa", "video"),
        help="qa: as MUSIC-AVQA, query videos are also bank videos (the binder trained on them); video: unseen",
    )  # fmt: skip
    parser.add_argument("--keep", type=Path, help="work directory to keep (reruns skip finished stages)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="r2scp-retrieval-"))
    data, features = pipeline(root, args.videos, args.encoder, args.split_by)
    scenes = {s.video_id: s for s in synth.read_scenes(data)}
    with FeatureStore(features) as store:
        query_ids = [v for v in store.videos_of([args.split]) if v in set(store.video_ids)]
    rows = []
    for mode in MODES:
        out = bank.run(BankConfig(features, root / f"bank-{args.split_by}-{args.encoder}-{mode}", keys=mode))
        memory = bank.Bank.open(out)
        figures = artifacts.read_json(out / "meta.json")["figures"]
        for m in Modality.media():
            truth = {v: facts(s, m) for v, s in scenes.items()}
            shares = match_shares(memory, query_ids, truth, m)
            quality = figures[m.value]["key_quality"]
            rows.append((mode, m.value, shares, quality))
    print(
        f"{args.videos} videos split by {args.split_by}, encoder {args.encoder}, {len(query_ids)} {args.split} videos "
        f"as queries, work dir {root}"
    )
    print(f"{'keys':<7} {'recover':<7} {'top-1':>6} {'top-n':>6} {'random':>6}   key quality (held-out recall@10 / chance)")
    for mode, target, shares, quality in rows:
        top_n = next(v for k, v in shares.items() if k.startswith("top") and k != "top1")
        recall = f"{quality['recall@10']:.3f} / {quality['chance@10']:.3f}" if "recall@10" in quality else quality["note"]
        print(f"{mode:<7} {target:<7} {shares['top1']:>6.3f} {top_n:>6.3f} {shares['random']:>6.3f}   {recall} ({quality.get('space', mode)})")


if __name__ == "__main__":
    main()
