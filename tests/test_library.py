"""The library as a first-class input: `synth --library`, `extract --library` of a clip folder, library
ids in their own namespace in `build-bank --library`, refusals of later stages, the demo's library."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import make_features
from test_extract import write_clip
from typer.testing import CliRunner

from r2scp_cli import artifacts, demo, evaluate, extract, train
from r2scp_cli.cli import app
from r2scp_cli.config import (
    BankConfig, DemoConfig, EvalConfig, ExtractConfig, Modality, SynthConfig, TrainExpertsConfig, TrainRouterConfig,
)  # fmt: skip
from r2scp_cli.errors import UserError
from r2scp_cli.features import FeatureStore
from r2scp_cli.media import decode_clip
from r2scp_cli.retrieval import bank as bank_stage
from r2scp_cli.retrieval.bank import Bank
from r2scp_cli.retrieval.entries import bank_entries
from r2scp_cli.synth import dataset as synth

MEDIA = Modality.media()
TINY = dict(seconds=1.0, fps=4, size=32)  # clips that render and extract in milliseconds
runner = CliRunner()


def as_library(source: Path, target: Path) -> Path:
    """A library features file (the layout `extract --library` writes) holding ``source``'s videos under
    their ids: the question table and vocabulary emptied, ``library=True``; its meta copied."""
    shutil.copy(source, target)
    with h5py.File(target, "a") as h5:
        questions = h5["questions"]
        for name in list(questions):
            data = questions[name]
            shape, dtype = (0, *data.shape[1:]), data.dtype
            del questions[name]
            questions.create_dataset(name, shape=shape, dtype=dtype)
        del h5["answers"]
        h5.create_dataset("answers", shape=(0,), dtype=h5py.string_dtype(encoding="utf-8"))
        h5.attrs.update(library=True, format="library")
    shutil.copy(artifacts.meta_path(source), artifacts.meta_path(target))
    return target


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


# --------------------------------------------------------------------------- synth --library


@pytest.fixture(scope="module")
def clip_library(tmp_path_factory) -> Path:
    return synth.run(SynthConfig(tmp_path_factory.mktemp("lib") / "library", videos=3, seed=7, library=True, **TINY))


def test_synth_library_writes_clips_scenes_and_no_questions(clip_library):
    ids = ["lib7-000001", "lib7-000002", "lib7-000003"]
    assert files_under(clip_library) == ["README.md", "meta.json", "scenes.jsonl", *[f"videos/{v}.mp4" for v in ids]]
    scenes = synth.read_scenes(clip_library)
    assert [s.video_id for s in scenes] == ids
    meta = artifacts.read_json(clip_library / "meta.json")
    assert meta["figures"] == {"videos": 3, "library": True, "first_id": ids[0], "last_id": ids[-1]}
    clip = decode_clip(clip_library / "videos" / f"{ids[0]}.mp4", 4, None, ids[0])
    assert clip.frames.shape[0] == 4 and clip.frames.shape[2] == 32  # 4 segments of 32-px frames, sound too
    assert np.abs(clip.audio).max() > 0
    # The same sampler as a dataset, on other streams: no library scene equals a dataset scene of its seed.
    dataset = synth.generate(SynthConfig(clip_library.parent / "unused", videos=3, seed=7, **TINY))
    strip = lambda scene: {k: v for k, v in scene.to_json().items() if k != "video_id"}  # noqa: E731
    assert all(strip(a) != strip(b) for a in scenes for b in dataset.scenes)
    assert all(len(s.video_id) == 8 and s.video_id.isdigit() for s in dataset.scenes)  # dataset ids: 8 digits


def test_library_ids_and_scenes_are_reproducible_and_never_dataset_ids():
    config = SynthConfig(Path("unused"), videos=2, seed=3, library=True, **TINY)
    first, again = synth.library_scenes(config), synth.library_scenes(config)
    assert [s.to_json() for s in first] == [s.to_json() for s in again]
    assert synth.library_video_id(3, 0) == "lib3-000001" and synth.library_video_id(12, 1233455) == "lib12-1233456"
    other_seed = synth.library_scenes(SynthConfig(Path("unused"), videos=2, seed=4, library=True, **TINY))
    assert {s.video_id for s in first}.isdisjoint(s.video_id for s in other_seed)


def test_a_dataset_directory_rewritten_as_a_library_keeps_no_annotation_file(tmp_path):
    out = tmp_path / "d"
    synth.run(SynthConfig(out, videos=2, seed=0, **TINY))
    assert (out / "avqa-train.json").exists()
    synth.run(SynthConfig(out, videos=2, seed=0, library=True, **TINY))
    assert files_under(out) == ["README.md", "meta.json", "scenes.jsonl", "videos/lib0-000001.mp4", "videos/lib0-000002.mp4"]


def test_cli_synth_library(tmp_path):
    result = runner.invoke(app, ["synth", str(tmp_path / "l"), "--library", "--videos", "2", "--seed", "5",
                                 "--seconds", "1", "--size", "32"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "a library of 2 clips (lib5-000001 .. lib5-000002), no questions" in " ".join(result.output.split())
    assert sorted(p.name for p in (tmp_path / "l" / "videos").iterdir()) == ["lib5-000001.mp4", "lib5-000002.mp4"]


# --------------------------------------------------------------------------- extract --library


def test_extract_library_writes_videos_and_no_questions(clip_library, tmp_path):
    out = extract.run(ExtractConfig(clip_library, tmp_path / "lib.h5", segments=4, library=True))
    with FeatureStore(out) as store:
        assert store.library and store.format == "library"
        assert store.video_ids == ["lib7-000001", "lib7-000002", "lib7-000003"]
        assert len(store.questions) == 0 and store.answers == [] and store.videos_of(["train"]) == []
        tokens = store.tokens("lib7-000002", "audio")
        assert tokens.shape == (4, store.info.dims["audio"]) and np.isfinite(tokens).all() and np.abs(tokens).sum() > 0
        assert np.linalg.norm(store.global_vector("lib7-000002", "visual")) == pytest.approx(1.0, abs=1e-5)
    figures = artifacts.read_json(artifacts.meta_path(out))["figures"]
    assert figures["library"] is True and figures["videos"] == 3 and figures["questions"] == {}


def test_extract_library_of_a_flat_folder_of_real_clips(tmp_path):
    # Any collection: clips straight in the folder, the id is the stem, other files are ignored.
    folder = tmp_path / "clips"
    folder.mkdir()
    write_clip(folder / "yt_abc-123.mp4", seed=1)
    write_clip(folder / "00000001.MP4", seed=2)  # an id that a dataset may use too
    (folder / "notes.txt").write_text("not a clip")
    result = runner.invoke(app, ["extract", str(folder), "--library", "--out", str(tmp_path / "lib.h5"), "--segments", "2"])
    assert result.exit_code == 0, result.output
    assert "2 videos, a library: no questions, 0 videos failed" in " ".join(result.output.split())
    with FeatureStore(tmp_path / "lib.h5") as store:
        assert store.video_ids == ["00000001", "yt_abc-123"] and store.library


def test_library_extraction_shards_and_merges_into_the_single_run_file(clip_library, tmp_path):
    from r2scp_cli import shards

    single = extract.run(ExtractConfig(clip_library, tmp_path / "one.h5", segments=4, library=True))
    config = ExtractConfig(clip_library, tmp_path / "lib.h5", segments=4, library=True)
    parts = [extract.run(config, shard=shards.parse(f"{i}/2")) for i in range(2)]
    merged = shards.merge(parts, tmp_path / "lib.h5")
    with FeatureStore(single) as a, FeatureStore(merged) as b:
        assert a.video_ids == b.video_ids and b.library and len(b.questions) == 0
        for video in a.video_ids:
            np.testing.assert_array_equal(a.tokens(video, "visual"), b.tokens(video, "visual"))


@pytest.mark.parametrize(
    ("layout", "library", "message"),
    [
        ("clips", False, "clips but no annotation files (avqa-train.json, avqa-val.json, avqa-test.json); "
                         "to extract the clips as a library"),
        ("empty", False, "neither annotation files (avqa-train.json, avqa-val.json, avqa-test.json) nor clips"),
        ("empty", True, "no clips (*.mp4, *.mkv, *.webm, *.avi, *.mov, *.m4v) to extract as a library"),
        ("twins", True, "two clips with the video id 'a' (a.mkv, a.mp4)"),
        ("missing", True, "clip folder not found"),
    ],
)  # fmt: skip
def test_folders_that_are_neither_dataset_nor_library_fail_in_one_line_writing_nothing(tmp_path, layout, library, message):
    folder = tmp_path / "in"
    if layout != "missing":
        (folder / "videos").mkdir(parents=True)
    if layout == "clips":
        write_clip(folder / "videos" / "a.mp4", seed=1)
    if layout == "twins":
        write_clip(folder / "videos" / "a.mp4", seed=1)
        write_clip(folder / "videos" / "a.mkv", seed=2)
    out = tmp_path / "out" / "f.h5"
    args = ["extract", str(folder), "--out", str(out), *(["--library"] if library else [])]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- build-bank --library


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    return make_features(tmp_path_factory.mktemp("planted") / "features.h5", n_videos=40, seed=1)


@pytest.fixture(scope="module")
def colliding(planted, tmp_path_factory) -> Path:
    """A library whose raw ids are the dataset's (00000000..) but whose clips are other ones."""
    root = tmp_path_factory.mktemp("colliding")
    return as_library(make_features(root / "other.h5", n_videos=40, seed=2), root / "colliding.h5")


def _lists(bank: Bank, ids: list[str], m: Modality) -> tuple[np.ndarray, np.ndarray]:
    """(source, raw id) of every neighbour and negative: [V, n] each, as strings 'source:id'."""
    names = np.asarray([f"{s}:{v}" for s, v in zip(bank.entry_sources(), bank.entry_video_ids())])
    idx, _ = bank.neighbours(ids, m)
    return names[idx], names[bank.negatives(ids, m)]


def test_a_library_clip_whose_raw_id_is_a_dataset_id_is_retrieved_not_excluded(planted, colliding, tmp_path):
    # Exact search over the whole bank: each list is every entry except those excluded for the query.
    out = bank_stage.run(BankConfig(planted, tmp_path / "bank", library=(colliding,), keys="paired", exact=True,
                                    neighbours=500, negatives=500))  # fmt: skip
    bank = Bank.open(out)
    with FeatureStore(planted) as store:
        ids, in_bank = store.video_ids, set(store.videos_of(["train"]))
    assert len(bank.entry_video_ids()) == len(in_bank) + 40
    for m in MEDIA:
        neighbours, negatives = _lists(bank, ids, m)
        assert neighbours.shape == (40, len(in_bank) + 40 - 1)  # only the own dataset entry is left out
        for row, video in enumerate(ids):
            assert f"1:{video}" in neighbours[row]  # the library clip with the same raw id is a candidate
            assert f"0:{video}" not in neighbours[row] and f"0:{video}" not in negatives[row]
    figures = artifacts.read_json(out / "meta.json")["figures"]
    assert figures["library"] == {"files": 1, "entries": 40, "copies_of_dataset_videos": 0,
                                  "ids_equal_to_dataset_ids_other_clips": 40}  # fmt: skip
    with h5py.File(out / bank_stage.ENTRIES_FILE) as h5:
        own = h5["own_video"].asstr()[()]
        assert list(own[h5["source"][()] == 1]) == [""] * 40


def test_a_library_copy_of_a_dataset_video_is_excluded_for_that_video(planted, tmp_path):
    # The dataset's own clips extracted as a library: same bits, other file. They would hand the video back.
    copy = as_library(planted, tmp_path / "copy.h5")
    out = bank_stage.run(BankConfig(planted, tmp_path / "bank", library=(copy,), keys="paired", exact=True,
                                    neighbours=500, negatives=500))  # fmt: skip
    bank = Bank.open(out)
    with FeatureStore(planted) as store:
        ids, in_bank = store.video_ids, set(store.videos_of(["train"]))
    for m in MEDIA:
        neighbours, negatives = _lists(bank, ids, m)
        for row, video in enumerate(ids):
            assert f"1:{video}" not in neighbours[row] and f"1:{video}" not in negatives[row]
            assert f"0:{video}" not in neighbours[row]
        # a video in the bank loses two entries (its own and its copy), one outside it loses one
        assert neighbours.shape[1] == len(in_bank) + 40 - 2
    figures = artifacts.read_json(out / "meta.json")["figures"]
    assert figures["library"]["copies_of_dataset_videos"] == 40
    assert figures["library"]["ids_equal_to_dataset_ids_other_clips"] == 0


def test_library_values_are_read_from_the_library_file(planted, colliding, tmp_path):
    # Poison: the library's audio tokens are a constant the dataset never holds; same raw ids in both files.
    poisoned = tmp_path / "poisoned.h5"
    shutil.copy(colliding, poisoned)
    shutil.copy(artifacts.meta_path(colliding), artifacts.meta_path(poisoned))
    with h5py.File(poisoned, "a") as h5:
        for video in h5["videos"]:
            data = h5[f"videos/{video}/audio"]
            data[...] = np.full(data.shape, 7.0, data.dtype)
    out = bank_stage.run(BankConfig(planted, tmp_path / "bank", library=(poisoned,), keys="paired"))
    bank = Bank.open(out)
    sources, ids = bank.entry_sources(), bank.entry_video_ids()
    audio, visual = bank.values(Modality.AUDIO), bank.values(Modality.VISUAL)
    assert np.all(audio[sources == 1] == 7.0)
    assert not np.any(audio[sources == 0] == 7.0)
    with FeatureStore(planted) as store, FeatureStore(poisoned) as library:
        for row in np.flatnonzero(sources == 0)[:5]:
            np.testing.assert_array_equal(audio[row], store.tokens(ids[row], "audio"))
        for row in np.flatnonzero(sources == 1)[:5]:
            np.testing.assert_array_equal(visual[row], library.tokens(ids[row], "visual"))
            assert not np.array_equal(visual[row], store.tokens(ids[row], "visual"))  # same id, other clip


def test_bind_keys_train_on_library_and_bank_with_copies_in_their_videos_folds(planted, colliding, tmp_path):
    copy = as_library(planted, tmp_path / "copy.h5")
    config = BankConfig(planted, tmp_path / "bank", library=(colliding, copy), keys="bind")
    with FeatureStore(planted) as store, FeatureStore(colliding) as other, FeatureStore(copy) as twin:
        entries = bank_entries(config, store, [other, twin])
        bank_videos = len(store.videos_of(["train"]))
    clips = entries.clips()
    assert clips[:bank_videos] == list(entries.video_id[:bank_videos])
    assert clips[bank_videos : bank_videos + 40] == [f"library1:{v:08d}" for v in range(40)]
    assert clips[bank_videos + 40 :] == [f"{v:08d}" for v in range(40)]  # a copy shares its video's fold
    out = bank_stage.run(config)
    card = json.loads((out / "binder.json").read_text())
    distinct = len(set(clips))  # every dataset video (its copy makes the test-only ones bank clips too) + 40
    assert distinct == 80
    # Each binder trains (fit + stop slice) on the clips of the two other folds: library clips included.
    assert sum(f["train_videos"] + f["stop_videos"] for f in card["folds"]) == 2 * len(clips)
    assert artifacts.read_json(out / "meta.json")["figures"]["entries"] == len(clips)


# --------------------------------------------------------------------------- refusals


def test_build_bank_refuses_a_library_as_its_features_file(colliding, tmp_path):
    out = tmp_path / "bank"
    result = runner.invoke(app, ["build-bank", str(colliding), "--out", str(out)])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1
    assert "colliding.h5: a library features file (clips without questions" in text
    assert "build-bank's FEATURES" in text and "build-bank --library" in text
    assert not out.exists()


def test_training_and_evaluation_refuse_a_library_in_one_line(planted, colliding, tmp_path):
    bank = bank_stage.run(BankConfig(planted, tmp_path / "bank", keys="paired"))
    with pytest.raises(UserError, match=r"colliding.h5: a library features file .*; training needs a dataset's"):
        train.run_experts(TrainExpertsConfig(colliding, bank, tmp_path / "e-lib", epochs=1, d_model=16, n=3))
    assert not artifacts.meta_path(tmp_path / "e-lib").exists() and files_under(tmp_path / "e-lib") == []
    experts = train.run_experts(TrainExpertsConfig(planted, bank, tmp_path / "e", recovery="zero", epochs=1, d_model=16))
    router = train.run_router(TrainRouterConfig(experts, tmp_path / "r", epochs=1))
    result = runner.invoke(app, ["eval", str(router), "--out", str(tmp_path / "ev"), "--features", str(colliding)])
    assert result.exit_code == 1
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1
    assert "a library features file (clips without questions" in result.output and "eval needs" in result.output
    assert not (tmp_path / "ev" / "metrics.json").exists() and not artifacts.meta_path(tmp_path / "ev").exists()
    evaluate.run(EvalConfig(router, tmp_path / "ev-ok"))  # the dataset's own file still evaluates


# --------------------------------------------------------------------------- the chain and the demo


def test_cli_chain_dataset_and_library_into_one_bank(tmp_path):
    def invoke(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    small = ["--seconds", "1", "--size", "32"]
    invoke("synth", str(tmp_path / "data"), "--videos", "6", *small)
    invoke("synth", str(tmp_path / "lib"), "--library", "--videos", "5", "--seed", "1", *small)
    invoke("extract", str(tmp_path / "data"), "--out", str(tmp_path / "f.h5"), "--segments", "2")
    invoke("extract", str(tmp_path / "lib"), "--library", "--out", str(tmp_path / "l.h5"), "--segments", "2")
    text = invoke("build-bank", str(tmp_path / "f.h5"), "--out", str(tmp_path / "bank"), "--library",
                  str(tmp_path / "l.h5"), "--keys", "paired")  # fmt: skip
    assert "library: 5 clips from 1 file(s) under their own ids, 0 of them copies of dataset videos" in text
    bank = Bank.open(tmp_path / "bank")
    ids = bank.entry_video_ids()
    assert [v for v, s in zip(ids, bank.entry_sources()) if s == 1] == [f"lib1-00000{i}" for i in range(1, 6)]


def test_demo_prepares_a_library_with_the_datasets_encoder_and_frame_size(tmp_path):
    budget = demo.Budget(videos=4, size=32, experts_epochs=1, router_epochs=1, d_model=16, library_videos=3)
    config = DemoConfig(tmp_path / "demo", encoder="handcrafted")
    (library,) = demo.prepare_library(config, budget)
    assert library == tmp_path / "demo" / "library-3-handcrafted.h5"
    with FeatureStore(library) as store:
        assert store.library and store.video_ids == ["lib1-000001", "lib1-000002", "lib1-000003"]
        assert store.info.encoder == "handcrafted"
    assert artifacts.read_json(tmp_path / "demo" / "library-3" / "meta.json")["config"]["size"] == 32
    assert demo.prepare_library(config, demo.Budget(4, 32, 1, 1, 16, library_videos=0)) == ()
    assert demo.DEFAULT.library_videos > 0 and demo.QUICK.library_videos == 0


def test_demo_refuses_a_negative_library_size_before_any_work(tmp_path):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--library-videos", "-1", "--encoder", "handcrafted"])
    assert result.exit_code == 1
    assert "--library-videos -1: must be 0 (no library) or more" in result.output
    assert not (tmp_path / "demo").exists()
