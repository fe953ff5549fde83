"""Do the bank's neighbours carry the missing modality's facts? bind vs paired vs random keys.

On the built-in data (`r2scp synth` -> `extract` -> `build-bank`), using the latent scenes in
DATA/scenes.jsonl: for recovered audio, the share of neighbours whose set of sounding instruments
equals the query's; for recovered visual, the share whose visible instruments *and* their positions
equal the query's. Random is the exact expectation over the bank (own video excluded). Also prints
each bank's key-quality report (cross-modal recall@10 of held-out videos next to chance).

With ``--library-videos 0,1000``: each bank size once without and once with a library of that many
clips (`synth --library`, another seed; smaller libraries are the first clips of the largest, copied
out of its features file), entries matched against the library's scenes too.

    python bench/retrieval_quality.py [--videos 400] [--size 224] [--split-by qa|video] [--encoder handcrafted]
        [--modes bind,paired,bind-weak] [--library-videos 0,500,1000] [--bank-seeds 0,1,2,3] [--keep DIR]

Mode ``bind-weak`` is `bind` with `build-bank --weak-labels` (binders also fitted to labels read from
the train split's questions); a ``-seg`` suffix adds `--segment-keys` (late interaction over segment
keys), ``-rerank`` adds `--rerank-labels` (needs ``-weak``): e.g. ``bind-weak-seg-rerank``. The table's
top-5 column is the share over the first 5 neighbours.

A bank is a draw: its binders are trained from ``build-bank --seed``. With ``--bank-seeds`` every bank
is built once per seed, and a last table gives each mode's mean over the seeds; compare key options
there (on the demo's data one seed moved the top-5 sounding-set share by up to 0.02).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np

from r2scp_cli import artifacts, extract
from r2scp_cli.config import BankConfig, ExtractConfig, Modality, SynthConfig, keep_freed_memory
from r2scp_cli.features import FeatureStore
from r2scp_cli.retrieval import bank
from r2scp_cli.synth import dataset as synth

MODES = ("bind", "paired")  # also "bind-weak", "bind-seg", "bind-weak-seg", "bind-weak-rerank", "bind-weak-seg-rerank"
FLAGS = {"weak": "weak_labels", "seg": "segment_keys", "rerank": "rerank_labels"}  # mode suffix -> BankConfig field


def bank_options(mode: str) -> dict:
    """``bind-weak-seg`` -> keys="bind", weak_labels=True, segment_keys=True."""
    keys, *suffixes = mode.split("-")
    unknown = [x for x in suffixes if x not in FLAGS]
    if unknown:
        raise SystemExit(f"mode {mode!r}: unknown suffix {unknown[0]!r} (known: {', '.join(FLAGS)})")
    return {"keys": keys, **{FLAGS[x]: True for x in suffixes}}


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
    return {"top1": match[:, 0].mean(), "top5": match[:, :5].mean(), f"top{idx.shape[1]}": match.mean(), "random": random}


def pipeline(root: Path, videos: int, encoder: str, split_by: str, size: int) -> tuple[Path, Path]:
    data = synth.run(SynthConfig(out=root / f"data-{split_by}-{size}", videos=videos, split_by=split_by, size=size))
    features = extract.run(ExtractConfig(dataset=data, out=root / f"features-{split_by}-{size}-{encoder}.h5", encoder=encoder))
    return data, features


def library_subset(full: Path, out: Path, count: int) -> Path:
    """The first ``count`` clips of a library features file, as a finished extract output of its own."""
    if artifacts.meta_path(out).exists():
        return out
    with h5py.File(full, "r") as src, h5py.File(out, "w") as dst:
        dst.attrs.update(src.attrs)
        dst.create_group("videos")
        for video in sorted(src["videos"])[:count]:
            src.copy(f"videos/{video}", dst["videos"], video)
        for name in ("failed", "questions", "answers"):
            src.copy(name, dst)
    meta = artifacts.read_json(artifacts.meta_path(full))
    artifacts.write_json(artifacts.meta_path(out), {**meta, "figures": {**meta["figures"], "videos": count}})
    return out


def libraries(root: Path, sizes: list[int], encoder: str, size: int) -> tuple[dict[int, Path | None], dict]:
    """Library features file per size (None for 0), and the library scenes."""
    largest = max(sizes)
    if not largest:
        return {0: None}, {}
    started = time.time()
    data = synth.run(SynthConfig(out=root / f"library-{size}", videos=largest, seed=1, size=size, library=True))
    synthesised = time.time()
    full = extract.run(ExtractConfig(dataset=data, out=root / f"library-{size}-{encoder}.h5", encoder=encoder, library=True))
    print(f"library of {largest}: synth {synthesised - started:.1f} s, extract {time.time() - synthesised:.1f} s "
          "(0 when reused)")
    files = {n: (library_subset(full, root / f"library-{size}-{encoder}-{n}.h5", n) if n and n < largest else full if n else None)
             for n in sizes}  # fmt: skip
    return files, {s.video_id: s for s in synth.read_scenes(data)}


def main() -> None:
    keep_freed_memory()  # as every r2scp command does
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=400)
    parser.add_argument("--encoder", default="handcrafted")
    parser.add_argument("--split", default="test", help="query videos: those with questions in this split")
    parser.add_argument(
        "--split-by", default="qa", choices=("qa", "video"),
        help="qa: as MUSIC-AVQA, query videos are also bank videos (the binder trained on them); video: unseen",
    )  # fmt: skip
    parser.add_argument("--size", type=int, default=224, help="frame size of the clips (the demo's: 112)")
    parser.add_argument("--modes", default=",".join(MODES), help="key modes, comma-separated")
    parser.add_argument("--library-videos", default="0", help="library sizes, comma-separated (0: no library)")
    parser.add_argument("--bank-seeds", default="0", help="build-bank seeds, comma-separated (each bank once per seed)")
    parser.add_argument("--keep", type=Path, help="work directory to keep (reruns skip finished stages)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="r2scp-retrieval-"))
    data, features = pipeline(root, args.videos, args.encoder, args.split_by, args.size)
    sizes = [int(n) for n in args.library_videos.split(",")]
    library_files, library_scenes = libraries(root, sizes, args.encoder, args.size)
    scenes = {**{s.video_id: s for s in synth.read_scenes(data)}, **library_scenes}
    with FeatureStore(features) as store:
        query_ids = [v for v in store.videos_of([args.split]) if v in set(store.video_ids)]
    seeds = [int(s) for s in args.bank_seeds.split(",")]
    rows = []
    for mode in args.modes.split(","):
        for n in sizes:
            library = (library_files[n],) if n else ()
            for seed in seeds:
                name = f"bank-{args.split_by}-{args.size}-{args.encoder}-{mode}-library{n}" + (f"-seed{seed}" if seed else "")
                out = bank.run(BankConfig(features, root / name, library=library, seed=seed, **bank_options(mode)))
                memory = bank.Bank.open(out)
                meta = artifacts.read_json(out / "meta.json")
                figures = meta["figures"]
                for m in Modality.media():
                    truth = {v: facts(s, m) for v, s in scenes.items()}
                    shares = match_shares(memory, query_ids, truth, m)
                    quality = figures[m.value]["key_quality"]
                    rows.append((mode, n, seed, m.value, shares, quality, meta["seconds"]))
    print(
        f"{args.videos} videos of {args.size} px split by {args.split_by}, encoder {args.encoder}, {len(query_ids)} "
        f"{args.split} videos as queries, work dir {root}"
    )
    width = max(9, *map(len, args.modes.split(",")))
    print(f"{'keys':<{width}} {'library':>7} {'seed':>4} {'recover':<7} {'top-1':>6} {'top-5':>6} {'top-n':>6} {'random':>6}   "
          "key quality (held-out recall@1, recall@10 / chance@10)   bank s")  # fmt: skip
    for mode, n, seed, target, shares, quality, seconds in rows:
        top_n = next(v for k, v in shares.items() if k.startswith("top") and k not in ("top1", "top5"))
        recall = (f"{quality['recall@1']:.3f}, {quality['recall@10']:.3f} / {quality['chance@10']:.3f}"
                  if "recall@10" in quality else quality["note"])  # fmt: skip
        print(f"{mode:<{width}} {n:>7} {seed:>4} {target:<7} {shares['top1']:>6.3f} {shares['top5']:>6.3f} {top_n:>6.3f} "
              f"{shares['random']:>6.3f}   {recall} ({quality.get('space', mode)})   {seconds:.0f}")  # fmt: skip
    if len(seeds) > 1:
        print(f"\nmean over bank seeds {args.bank_seeds}:")
        print(f"{'keys':<{width}} {'library':>7} {'recover':<7} {'top-1':>6} {'top-5':>6} {'min-max top-5':>14} {'recall@10':>9}")
        for mode, n, target in dict.fromkeys((r[0], r[1], r[3]) for r in rows):
            group = [r for r in rows if (r[0], r[1], r[3]) == (mode, n, target)]
            top5 = [r[4]["top5"] for r in group]
            recalls = [r[5]["recall@10"] for r in group if "recall@10" in r[5]]
            recall = f"{np.mean(recalls):.3f}" if recalls else "-"
            print(f"{mode:<{width}} {n:>7} {target:<7} {np.mean([r[4]['top1'] for r in group]):>6.3f} {np.mean(top5):>6.3f} "
                  f"{f'{min(top5):.3f}-{max(top5):.3f}':>14} {recall:>9}")  # fmt: skip


if __name__ == "__main__":
    main()
