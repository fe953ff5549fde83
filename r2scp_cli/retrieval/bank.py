"""`r2scp build-bank` (DESIGN section 5): key spaces, HNSW indexes and leak-proof neighbour lists.

For a target modality m (the one to recover when it is missing) the bank holds one entry per video
of the bank splits and of any ``--library`` file. An entry is a reference (source file, video id);
its value is that video's m tokens, read from the source when asked. Keys and queries share one
space chosen by ``--keys``:

=========  ===================================  =========================================
mode       key of an entry                      query of a video (m is missing)
=========  ===================================  =========================================
unified    the entry's m global                 the video's m.other() global
paired     the entry's m.other() global         the video's m.other() global
bind       binder_f(entry's m tokens)           binder_f(video's m.other() tokens)
=========  ===================================  =========================================

A query never reads the query video's m features, and a video never retrieves an entry with its
own video id (MUSIC-AVQA splits by QA pair, so test videos sit in the train bank). With `bind` a
video of fold f is queried through binder_f, which never trained on it (see binder.py: a binder
that saw the video would hand its missing modality back), so there is one key set per fold.

Library ids live in their own namespace (entries.py): the exclusion compares a query's id with
each entry's ``own_video``, never with a library clip's raw id. The binders train on every entry.

Bank directory::

    meta.json            stage, config, inputs, figures (key quality, HNSW recall), index parameters
    entries.h5           /sources, /source [E], /video_id [E] (the id in its source), /own_video [E] (the
                         dataset video the entry is, "" for a library clip), /keys/{audio,visual} [folds, E, D_key];
                         --segment-keys: /segment_keys/{m} [folds, E, T, D_key], /segment_weights/{m} [folds, E, T];
                         --rerank-labels: /label_probs/{m} [folds, E, C] (the head's `heard:` probabilities)
    neighbours.h5        /video_id [V], /{audio,visual}/{index [V, n], sim [V, n], negatives [V, r]}
    index_audio_0.bin    hnswlib cosine index over the audio keys of fold 0 (likewise per fold, visual)
    binder_0.pt          `bind`: one binder per fold (weights, dims, config); binder.json: training card
"""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from .. import artifacts
from ..config import BankConfig, Modality, usable_cores
from ..console import console, progress_bar
from ..errors import UserError
from ..features import EncoderInfo, FeatureStore
from .entries import (
    Entries, bank_entries, exclusion_rows, fill_matches, library_figures, match_thresholds, open_inputs, random_negatives,
)  # fmt: skip
from .binder import BINDER_CARD, WEAK_LABEL_WEIGHT, BinderConfig, binder_file, check_bind_size, fold_of, load_binder
from .keys import ENTRY_ARRAYS, KeySpace, fit_bind_space, key_quality, resolve_key_mode, store_fetch
from .rescoring import rerank_columns, rescoring_figures
from .search import (
    QUERY_CHUNK, FetchOf, Searcher, build_index, ef_for, hnsw_recall, load_index, retrieve,
)  # fmt: skip
from .weak_labels import weak_labels

ENTRIES_FILE = "entries.h5"
KEY_DTYPES = ("float32", "float16")
NEIGHBOURS_FILE = "neighbours.h5"
MEDIA = Modality.media()
DIAGNOSTIC_MAX = 2000  # videos in the key-quality report (N x N similarity matrices)
VALUES_BUDGET = 2 << 30  # a modality's value tokens are held in memory below this size, read per batch above it
_STR = h5py.string_dtype(encoding="utf-8")


def index_file(modality: Modality, fold: int) -> str:
    return f"index_{modality.value}_{fold}.bin"


# --------------------------------------------------------------------------- the stage


def _validate(config: BankConfig) -> None:
    minimums = {
        "--neighbours": (config.neighbours, 1), "--M": (config.M, 2), "--ef": (config.ef, 0),
        "--ef-construction": (config.ef_construction, 1), "--threads": (config.threads, 1),
        "--check-recall": (config.check_recall, 0), "negatives": (config.negatives, 0),
    }  # fmt: skip
    for flag, (value, minimum) in minimums.items():
        if value < minimum:
            raise UserError(f"{flag} {value}: must be at least {minimum}")
    if not config.bank_splits:
        raise UserError("--bank-splits: name at least one split")
    if config.key_dtype not in KEY_DTYPES:
        raise UserError(f"--key-dtype {config.key_dtype}: choose one of {', '.join(KEY_DTYPES)}")


def _diagnostic_videos(store: FeatureStore, entries: Entries, mode: str, seed: int) -> list[str]:
    """Videos of the key-quality report: bank videos for `bind` (each scored by the binder that never
    saw it), else the val videos (all videos when there is no val split)."""
    extracted = set(store.video_ids)
    if mode == "bind":
        videos = sorted(set(entries.video_id[entries.source == 0]))
    else:
        videos = [v for v in store.videos_of(["val"]) if v in extracted] or list(store.video_ids)
    return sorted(np.random.default_rng(seed).permutation(videos)[:DIAGNOSTIC_MAX].tolist())


def _write_entries(
    out: Path, entries: Entries, keys: dict[Modality, np.ndarray], info: EncoderInfo, mode: str, extra: dict[str, np.ndarray]
) -> None:
    with artifacts.atomic_path(out / ENTRIES_FILE) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs.update(info.attrs())
        h5.attrs["key_mode"] = mode
        h5.create_dataset("sources", data=np.asarray([str(s.path.resolve()) for s in entries.stores], dtype=object), dtype=_STR)
        h5.create_dataset("source", data=entries.source)
        h5.create_dataset("video_id", data=entries.video_id, dtype=_STR)
        h5.create_dataset("own_video", data=entries.own_video, dtype=_STR)
        for m, vectors in keys.items():
            h5.create_dataset(f"keys/{m.value}", data=vectors)
        for name, data in extra.items():  # segment keys and weights, label probabilities
            h5.create_dataset(name, data=data)


def _write_neighbours(out: Path, video_ids: list[str], lists: dict[Modality, dict[str, np.ndarray]]) -> None:
    with artifacts.atomic_path(out / NEIGHBOURS_FILE) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("video_id", data=np.asarray(video_ids, dtype=object), dtype=_STR)
        for m, arrays in lists.items():
            for name, data in arrays.items():
                h5.create_dataset(f"{m.value}/{name}", data=data)


def _clear_outputs(out: Path) -> None:
    """A rebuild must not leave files of the previous build behind (an old binder, an old index)."""
    for name in (ENTRIES_FILE, NEIGHBOURS_FILE, BINDER_CARD):
        (out / name).unlink(missing_ok=True)
    for pattern in ("index_*.bin", "binder_*.pt"):
        for path in out.glob(pattern):
            path.unlink()


# recall@10 over chance@10 of the held-out key quality. Measured on the built-in data: handcrafted
# features with `bind` keys reach about 2.4x chance, and retrieval then gains at most 2 points (none
# under missing visual); pretrained features reach about 4x; oracle neighbour lists gain 7-8 points.
WEAK_KEYS, USEFUL_KEYS = 1.5, 3.0


def key_verdict(figures: dict) -> str:
    """One sentence on whether retrieval can help, from the held-out key quality of both directions."""
    ratios = []
    for m in MEDIA:
        quality = figures[m.value]["key_quality"]
        if quality.get("recall@10") is None or not quality.get("chance@10"):
            return "key quality not measured (too few videos or no cross-modal space): retrieval is untested"
        ratios.append(quality["recall@10"] / quality["chance@10"])
    worst = min(ratios)
    if worst < WEAK_KEYS:
        return (f"keys find the right clip about as often as chance ({worst:.1f}x): retrieval will not help; "
                "use a semantic encoder (--encoder pretrained or imagebind) or a --library")
    if worst < USEFUL_KEYS:
        return (f"weak keys ({worst:.1f}x chance): retrieval helps little; a semantic encoder "
                "(--encoder pretrained or imagebind) or a --library should help")
    return f"keys find the right clip well above chance ({worst:.1f}x): retrieval can help"


def _print_summary(figures: dict) -> None:
    console.print(
        f"bank: {figures['entries']} entries, keys [bold]{figures['key_mode']}[/] (dim {figures['key_dim']}), "
        f"{figures['neighbours']} neighbours per video for {figures['query_videos']} videos, search {figures['search']}"
    )
    if "library" in figures:
        library = figures["library"]
        console.print(
            f"  library: {library['entries']} clips from {library['files']} file(s) under their own ids, "
            f"{library['copies_of_dataset_videos']} of them copies of dataset videos (never retrieved for those videos)"
        )
    for m in MEDIA:
        part = figures[m.value]
        quality = part["key_quality"]
        line = f"  recover {m.value}: key quality {quality['direction']}"
        if "recall@1" in quality:
            line += (
                f" recall@1 {quality['recall@1']:.3f} (chance {quality['chance@1']:.3f}),"
                f" recall@10 {quality['recall@10']:.3f} (chance {quality['chance@10']:.3f}) on {quality['videos']} videos"
            )
        else:
            line += f": {quality['note']}"
        if "hnsw_recall" in part:
            line += f"; HNSW recall@{figures['neighbours']} {part['hnsw_recall']:.3f} on {part['recall_check_queries']} queries"
        console.print(line)
    if "binder" in figures:
        binder = figures["binder"]
        console.print(
            f"  binder: {binder['folds']} cross-fitted folds in {binder['seconds']:.1f} s; recall@10 on videos it trained on "
            f"{binder['trained_videos_recall@10_visual_to_audio']:.3f} (chance {binder['trained_videos_chance@10']:.3f}): "
            "every video is queried through a binder that never saw it"
        )
        if "weak_labels" in binder:
            weak = binder["weak_labels"]
            console.print(
                f"  weak labels: {weak['labels']} labels from train questions on {weak['labelled_videos']} videos "
                f"({weak['known_per_labelled_video']:.1f} known per video; library clips unlabelled)"
            )
    if "segment_keys" in figures:
        console.print(f"  segment keys: {figures['segment_keys']['score']}; candidates {figures['segment_keys']['candidates']}")
    if "rerank" in figures:
        rerank = figures["rerank"]
        console.print(f"  re-rank: top {rerank['pool']} by similarity + {rerank['weight']:g} x agreement on {len(rerank['labels'])} "
                      f"'{rerank['labels'][0].split(':')[0]}:' labels (query's available modality vs candidate's key)")
    memory = figures["memory"]
    console.print(
        f"  memory: {memory['index_bytes'] / 2**20:.1f} MiB of HNSW indexes + {memory['key_bytes'] / 2**20:.1f} MiB of keys "
        f"= {memory['bytes_per_entry']:.0f} bytes per entry (query beam ef {figures['ef']})"
    )
    console.print(f"  verdict: {figures['verdict']}")


def memory_figures(out: Path, keys: dict[Modality, np.ndarray], entries: int, extra: Sequence[np.ndarray] = ()) -> dict:
    """What the bank costs: bytes of the saved HNSW indexes and of the keys (``extra``: segment keys and
    other per-entry arrays), and their sum per entry."""
    index_bytes = sum(path.stat().st_size for path in out.glob("index_*.bin"))
    key_bytes = sum(int(k.nbytes) for k in keys.values()) + sum(int(a.nbytes) for a in extra)
    return {"index_bytes": index_bytes, "key_bytes": key_bytes,
            "bytes_per_entry": round((index_bytes + key_bytes) / max(entries, 1), 1)}  # fmt: skip


def run(config: BankConfig, force: bool = False) -> Path:
    """Build the bank in ``config.out``; returns its path."""
    _validate(config)
    out = Path(config.out)
    with ExitStack() as stack:
        store, libraries = open_inputs(config, stack)
        mode = resolve_key_mode(config.keys, store.info, config.features)
        entries = bank_entries(config, store, libraries)
        if mode == "bind":
            check_bind_size(len(set(entries.clips())), config.features)
        if config.weak_labels and mode != "bind":
            raise UserError(f"--weak-labels trains the binder of --keys bind; these keys are {mode}")
        if config.segment_keys and mode != "bind":
            raise UserError(f"--segment-keys keys a clip by the segments of the binder of --keys bind; these keys are {mode}")
        if config.rerank_labels and not config.weak_labels:
            raise UserError("--rerank-labels re-ranks with the weak-label head that --weak-labels trains; add --weak-labels")
        labels = weak_labels(store.questions, entries.clips()) if config.weak_labels else None
        if config.rerank_labels and not rerank_columns(labels.names):
            raise UserError("--rerank-labels: no train question says which instrument is heard (no 'heard:' label to compare)")
        inputs = {"features": config.features, **{f"library_{i}": p for i, p in enumerate(config.library)}}
        stage = artifacts.begin("build-bank", out, config, inputs, force=force)
        if stage.finished:
            console.print(f"{out}: already built with the same inputs (use --force to rebuild)")
            return out
        _clear_outputs(out)
        if config.ef == 0:
            config = dataclasses.replace(config, ef=ef_for(len(entries)))
        figures: dict = {"key_mode": mode, "entries": len(entries), "ef": config.ef}
        if libraries:
            figures["library"] = library_figures(entries, store)
        if mode == "bind":  # trained on bank videos and library clips
            fetch = entries.fetch()
            tokens = {m.value: fetch(m, "tokens") for m in MEDIA}
            binder_config, arrays = BinderConfig(), None
            if labels is not None:  # train-split questions only; library clips stay unlabelled
                binder_config, arrays = BinderConfig(label_weight=WEAK_LABEL_WEIGHT), (labels.targets, labels.known)
            # Torch threads: every usable core (--threads is the HNSW build's); 1.4x faster with 2 than 1. The keys
            # may differ by ~1e-5 between thread counts, which reordered 0.05 % of the list entries on one machine.
            threads = usable_cores()
            names = labels.names if labels is not None else ()
            space, figures["binder"] = fit_bind_space(tokens, entries.clips(), config.seed, threads, out, binder_config, arrays, names)
            space = dataclasses.replace(space, segments=config.segment_keys, rerank=config.rerank_labels)
            figures["binder"]["threads"] = threads
            if labels is not None:
                figures["binder"]["weak_labels"] = labels.coverage()
        else:
            space = KeySpace(mode)
        diagnostic = _diagnostic_videos(store, entries, mode, config.seed)
        own_rows = exclusion_rows(entries.own_video)
        query_ids = list(store.video_ids)
        fetch_of = partial(store_fetch, store)
        keys, lists, index_meta, extra = {}, {}, {}, {}
        for m in MEDIA:
            # Stored in --key-dtype; the indexes and exact search use exactly the stored values.
            keys[m] = space.keys(entries.fetch(), m).astype(config.key_dtype)
            for name, values in space.entry_arrays(entries.fetch(), m, keys[m]).items():  # segment keys in --key-dtype too
                extra[f"{name}/{m.value}"] = values.astype(config.key_dtype) if name == "segment_keys" else values
            fold_arrays = _fold_arrays(extra, m, len(keys[m]))
            searchers, search = _searchers(keys[m].astype(np.float32, copy=False), own_rows, config, out, m, fold_arrays)
            lists[m] = _neighbour_lists(space, searchers, fetch_of, query_ids, config, search, m)
            figures[m.value] = {"key_quality": key_quality(space, store, diagnostic, m)}
            if searchers[0].index is not None and config.check_recall > 0:
                n = lists[m]["index"].shape[1]
                figures[m.value]["hnsw_recall"] = hnsw_recall(space, searchers, store, m, n, config.check_recall, config.seed)
                figures[m.value]["recall_check_queries"] = min(config.check_recall, len(query_ids))
            figures[m.value]["mean_top1_sim"] = round(float(lists[m]["sim"][:, 0].mean()), 4)
            index_meta[m.value] = _index_meta(searchers, config, keys[m].shape[-1])
        figures.update(
            key_dim=int(keys[MEDIA[0]].shape[-1]), query_videos=len(query_ids), search=search,
            neighbours=int(lists[MEDIA[0]]["index"].shape[1]), negatives=int(lists[MEDIA[0]]["negatives"].shape[1]),
        )  # fmt: skip
        compared = rerank_columns(space.binders[0].label_names) if space.rerank else None
        figures.update(rescoring_figures(space.segments, compared, search))
        figures["verdict"] = key_verdict(figures)
        figures["memory"] = memory_figures(out, keys, len(entries), list(extra.values()))
        _write_entries(out, entries, keys, store.info, mode, extra)
        _write_neighbours(out, query_ids, lists)
        _print_summary(figures)
        stage.finish(figures=figures, key_mode=mode, index=index_meta, hnswlib_version=_hnswlib_version())
    return out


def _fold_arrays(extra: dict[str, np.ndarray], m: Modality, folds: int) -> list[dict[str, np.ndarray]]:
    """Per fold, a searcher's optional arrays for target m (float32), by Searcher field name."""
    arrays = {name: extra[f"{name}/{m.value}"].astype(np.float32) for name in ENTRY_ARRAYS if f"{name}/{m.value}" in extra}
    return [{name: values[f] for name, values in arrays.items()} for f in range(folds)]


def _searchers(
    keys: np.ndarray, own_rows: dict[str, np.ndarray], config: BankConfig, out: Path, m: Modality,
    arrays: list[dict[str, np.ndarray]],
) -> tuple[list[Searcher], str]:
    """One searcher per fold, its HNSW index saved in ``out``; exact search when asked, or when the
    beam would cover the bank anyway (DESIGN section 9: small banks). ``arrays``: per-fold segment keys,
    weights and label probabilities (:func:`_fold_arrays`)."""
    small = keys.shape[1] <= max(config.ef, 4 * config.neighbours)
    searchers = []
    for f, fold_keys in enumerate(keys):
        index = None if small else build_index(fold_keys, config)
        if index is not None:
            with artifacts.atomic_path(out / index_file(m, f)) as tmp:
                index.save_index(str(tmp))
        searchers.append(Searcher(fold_keys, own_rows, index, config.ef, config.threads, **arrays[f]))
    return searchers, "exact" if config.exact else "exact (small bank)" if small else "hnsw"


def _neighbour_lists(
    space: KeySpace, searchers: list[Searcher], fetch_of: FetchOf, query_ids: list[str], config: BankConfig, search: str, m: Modality
) -> dict[str, np.ndarray]:
    """index and sim [V, n] of every query video, and its random negatives [V, r]."""
    parts = []
    with progress_bar() as bar:
        task = bar.add_task(f"neighbours for missing {m.value}", total=len(query_ids))
        for start in range(0, len(query_ids), QUERY_CHUNK):
            chunk = query_ids[start : start + QUERY_CHUNK]
            parts.append(retrieve(space, searchers, fetch_of, chunk, m, config.neighbours, exact=search != "hnsw"))
            bar.advance(task, len(chunk))
    # At least as many negatives as neighbours: training gathers n of each for any n the lists allow.
    r = min(max(config.negatives, config.neighbours), searchers[0].limit())
    negatives = random_negatives(query_ids, searchers[0].own_rows, len(searchers[0].keys), r, config.seed, m)
    return {"index": np.concatenate([p[0] for p in parts]), "sim": np.concatenate([p[1] for p in parts]), "negatives": negatives}


def _index_meta(searchers: list[Searcher], config: BankConfig, dim: int) -> dict:
    """What it takes to reload and reproduce the indexes (DESIGN section 9: store space and dim)."""
    return {
        "built": searchers[0].index is not None, "folds": len(searchers), "space": "cosine", "dim": dim,
        "max_elements": len(searchers[0].keys), "M": config.M, "ef_construction": config.ef_construction,
        "ef": config.ef, "build_threads": config.threads, "random_seed": config.seed,
    }  # fmt: skip


def _hnswlib_version() -> str:
    from importlib.metadata import version

    return version("hnswlib")


# --------------------------------------------------------------------------- the reading API


class Bank:
    """A finished bank, read by training and evaluation.

    Neighbour lists, negatives and keys are held in memory (training asks for them per batch);
    value tokens are read from the source features files on first use and cached.
    """

    def __init__(self, bank_dir: Path, meta: dict):
        self.dir = Path(bank_dir)
        self.meta = meta
        self.key_mode: str = meta["key_mode"]
        with h5py.File(self.dir / ENTRIES_FILE, "r") as h5:
            self.info = EncoderInfo.from_attrs(h5.attrs)
            self._sources = [Path(p) for p in h5["sources"].asstr()[()]]
            self._source = h5["source"][()]
            self._entry_ids = list(h5["video_id"].asstr()[()])
            # banks built before /own_video existed excluded by raw id
            own_video = list(h5["own_video"].asstr()[()]) if "own_video" in h5 else self._entry_ids
            self._keys = {m: h5[f"keys/{m.value}"][()].astype(np.float32) for m in MEDIA}
            self._extra = {name: h5[name][()] for group in ENTRY_ARRAYS if group in h5
                           for name in (f"{group}/{m.value}" for m in MEDIA)}  # fmt: skip
        with h5py.File(self.dir / NEIGHBOURS_FILE, "r") as h5:
            self._row = {video: i for i, video in enumerate(h5["video_id"].asstr()[()])}
            self._lists = {m: {name: h5[f"{m.value}/{name}"][()] for name in ("index", "sim", "negatives")} for m in MEDIA}
        self.features_path = Path(meta["inputs"]["features"]["path"])
        self._own_rows = exclusion_rows(own_video)
        self._values: dict[Modality, np.ndarray] = {}
        self._stores: dict[int, FeatureStore] = {}  # sources opened for per-batch reads of large banks
        self._searchers: dict[Modality, list[Searcher]] = {}
        self._space: KeySpace | None = None
        self._thresholds: dict[tuple[Modality, float], np.ndarray] = {}  # fill_matches, per listed video

    @classmethod
    def open(cls, bank_dir: Path) -> "Bank":
        """Open a finished `build-bank` directory whose source features files are unchanged."""
        meta = artifacts.require(bank_dir, "build-bank")
        for name, source in meta["inputs"].items():
            if artifacts.fingerprint(Path(source["path"])) != source["fingerprint"]:
                raise UserError(f"{bank_dir}: its {name} {source['path']} changed since the bank was built; rebuild it")
        return cls(bank_dir, meta)

    def _rows(self, video_ids: Sequence[str]) -> np.ndarray:
        try:
            return np.fromiter((self._row[v] for v in video_ids), np.int64, count=len(video_ids))
        except KeyError as error:
            raise UserError(f"{self.dir}: no neighbour list for video {error} (bank of {self.features_path})") from None

    def neighbours(self, video_ids: Sequence[str], m: Modality) -> tuple[np.ndarray, np.ndarray]:
        """Precomputed lists: entry indices int64 [B, n] and similarities float32 [B, n], descending."""
        rows = self._rows(video_ids)
        lists = self._lists[Modality(m)]
        return lists["index"][rows], lists["sim"][rows]

    def fill_matches(self, video_ids: Sequence[str], m: Modality, entries: np.ndarray, share: float) -> np.ndarray:
        """[B, n] 1.0 where an entry is among the ``share`` of entries closest to the video's own m key
        (entries.fill_matches: a training target; it reads the own entry's key of the lost modality).
        The per-video thresholds are computed once, for every listed video, on first use."""
        m, video_ids = Modality(m), list(video_ids)
        keys = self._keys[m]
        if (m, share) not in self._thresholds:
            listed = list(self._row)
            self._thresholds[(m, share)] = match_thresholds(keys, self._own_rows, listed, fold_of(listed, len(keys)), share)
        thresholds = self._thresholds[(m, share)][self._rows(video_ids)]
        return fill_matches(keys, self._own_rows, video_ids, fold_of(video_ids, len(keys)), entries, share, thresholds)

    def negatives(self, video_ids: Sequence[str], m: Modality) -> np.ndarray:
        """Reproducible random entries int64 [B, r], never the video itself."""
        return self._lists[Modality(m)]["negatives"][self._rows(video_ids)]

    def entry_video_ids(self) -> list[str]:
        """The video id of each entry within its source file, in entry order (one entry list serves both
        target modalities); a library clip's id may equal a dataset id: pair it with :meth:`entry_sources`."""
        return list(self._entry_ids)

    def entry_sources(self) -> np.ndarray:
        """int32 [E]: the source of each entry, 0 for the features file, k for the k-th --library."""
        return self._source.copy()

    def values(self, m: Modality) -> np.ndarray:
        """All value tokens float32 [E, T, D_m], read from the source files once and cached."""
        m = Modality(m)
        if m not in self._values:
            with ExitStack() as stack:
                stores = [stack.enter_context(FeatureStore(path)) for path in self._sources]
                entries = Entries(stores, self._source, np.asarray(self._entry_ids, dtype=object))
                self._values[m] = entries.fetch()(m, "tokens")
        return self._values[m]

    def gather(self, m: Modality, idx: np.ndarray) -> np.ndarray:
        """Value tokens of entries: float32 [..., T, D_m] for an index array of any shape. A bank whose
        values fit VALUES_BUDGET holds them in memory; a larger one (a big library) reads the requested
        entries from their source files, each distinct entry once (entries are references)."""
        m, idx = Modality(m), np.asarray(idx)
        T, D = self.info.segments, self.info.dims[m.value]
        if m in self._values or len(self._source) * T * D * 4 <= VALUES_BUDGET:
            return self.values(m)[idx]
        unique, inverse = np.unique(idx, return_inverse=True)
        out = np.empty((len(unique), T, D), np.float32)
        for s in np.unique(self._source[unique]):
            at = np.flatnonzero(self._source[unique] == s)
            if s not in self._stores:
                self._stores[s] = FeatureStore(self._sources[s])
            out[at] = self._stores[s].stack_tokens([self._entry_ids[r] for r in unique[at]], m)
        return out[inverse.reshape(idx.shape)]

    def search(self, store: FeatureStore, video_ids: Sequence[str], m: Modality, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Retrieve for videos of another features file of the same encoder, as build-bank did.

        The query is built only from the available modality m.other(); the own video is excluded.
        """
        m = Modality(m)
        if not store.info.compatible(self.info):
            raise UserError(
                f"{store.path}: encoder '{store.info.encoder}' dims {store.info.dims} does not match the bank "
                f"{self.dir} ('{self.info.encoder}' dims {self.info.dims})"
            )
        exact = self.meta["figures"]["search"] != "hnsw"
        fetch_of = partial(store_fetch, store)
        return retrieve(self._key_space(), self._fold_searchers(m), fetch_of, video_ids, m, n, exact)

    def _key_space(self) -> KeySpace:
        if self._space is None:
            folds = self.meta["index"][MEDIA[0].value]["folds"] if self.key_mode == "bind" else 0
            config = self.meta["config"]
            self._space = KeySpace(self.key_mode, [load_binder(self.dir / binder_file(f)) for f in range(folds)],
                                   segments=bool(config.get("segment_keys")), rerank=bool(config.get("rerank_labels")))  # fmt: skip
        return self._space

    def _fold_searchers(self, m: Modality) -> list[Searcher]:
        if m not in self._searchers:
            params = self.meta["index"][m.value]
            searchers, arrays = [], _fold_arrays(self._extra, m, len(self._keys[m]))
            for f, keys in enumerate(self._keys[m]):
                index = load_index(self.dir / index_file(m, f), params["dim"], params["ef"]) if params["built"] else None
                searchers.append(Searcher(keys, self._own_rows, index, params["ef"], params["build_threads"], **arrays[f]))
            self._searchers[m] = searchers
        return self._searchers[m]
