"""Sharded extraction: `extract --shard i/N` (or torchrun / SLURM variables) and `merge-features`,
whose output must be the store a single `extract` run writes."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_extract import avqa_dataset, break_videos, config, crash_decoder_after, music_avqa_dataset, read_all
from typer.testing import CliRunner

from r2scp_cli import extract, shards
from r2scp_cli.artifacts import meta_path
from r2scp_cli.cli import app
from r2scp_cli.errors import UserError
from r2scp_cli.features import FeatureStore, FeatureWriter
from r2scp_cli.shards import Shard

# What may differ between a merged store and a single run's, listed exactly:
PART_ONLY_ATTRS = {"shard_index", "shard_count", "shard_source"}  # in each part; never in the merge
META_TIMING = {"run_id", "started", "finished", "seconds"}  # every run has its own
META_ONE_SIDED = {"shard": None, "merged_from": ...}  # single run: shard None; merge: its parts
FIGURES_TIMING = {"clips_per_s"}  # merge: the parts' rates summed
CONFIG_PATHS = {"out"}  # the two stores live in different directories

ENV_VARS = ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT",
            "SLURM_ARRAY_TASK_STEP")


@pytest.fixture(autouse=True)
def no_launcher_environment(monkeypatch):
    """The tests decide the shard themselves, also when the suite runs under torchrun or SLURM."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def extract_parts(dataset: Path, out: Path, count: int, **changes) -> list[Path]:
    return [extract.run(config(dataset, out, **changes), shard=shards.parse(f"{i}/{count}")) for i in range(count)]


def assert_same_as_single_run(merged: Path, single: Path) -> None:
    """Every array and attribute of the two HDF5 files, and their meta files, but the listed fields."""
    left, right = read_all(merged), read_all(single)
    assert PART_ONLY_ATTRS.isdisjoint(left["attrs"])
    assert left["attrs"] == right["attrs"]  # nothing else may differ in the attributes
    assert left.keys() == right.keys()
    assert any(key.startswith("videos/") for key in left) and "questions/tokens" in left and "answers" in left
    for key in left.keys() - {"attrs"}:
        assert left[key].dtype == right[key].dtype and np.array_equal(left[key], right[key]), key
    with h5py.File(merged, "r") as a, h5py.File(single, "r") as b:  # layout too: the writer's chunks
        assert a["questions/tokens"].chunks == b["questions/tokens"].chunks
    ours, theirs = json.loads(meta_path(merged).read_text()), json.loads(meta_path(single).read_text())
    assert theirs["shard"] is None and "merged_from" not in theirs and "shard" not in ours
    assert ours["config"]["out"] == str(merged.absolute()) and theirs["config"]["out"] == str(single.absolute())
    skipped = META_TIMING | set(META_ONE_SIDED) | {"config", "figures"}
    assert {k: v for k, v in ours.items() if k not in skipped} == {k: v for k, v in theirs.items() if k not in skipped}
    drop = lambda d, keys: {k: v for k, v in d.items() if k not in keys}  # noqa: E731
    assert drop(ours["config"], CONFIG_PATHS) == drop(theirs["config"], CONFIG_PATHS)
    assert drop(ours["figures"], FIGURES_TIMING) == drop(theirs["figures"], FIGURES_TIMING)


def assert_nothing_written(out: Path) -> None:
    assert not out.exists() and not meta_path(out).exists()
    assert [p.name for p in out.parent.glob(f"*{out.name}*")] == []  # no temporary file either


# --------------------------------------------------------------------------- which shard


def test_shard_from_flag_torchrun_and_slurm():
    assert shards.resolve("1/4", {"RANK": "3", "WORLD_SIZE": "8"}) == Shard(1, 4, "--shard 1/4")  # the flag wins
    torchrun = shards.resolve(None, {"RANK": "2", "WORLD_SIZE": "3", "SLURM_ARRAY_TASK_ID": "0",
                                     "SLURM_ARRAY_TASK_COUNT": "5"})  # fmt: skip
    assert (torchrun.index, torchrun.count) == (2, 3) and torchrun.source == "torchrun (RANK=2, WORLD_SIZE=3)"
    slurm = shards.resolve(None, {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"})
    assert (slurm.index, slurm.count) == (2, 4) and "SLURM_ARRAY_TASK_ID=7" in slurm.source
    stepped = shards.resolve(None, {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_MIN": "1",
                                    "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "5"})  # --array=1-9:2
    assert (stepped.index, stepped.count) == (4, 5)
    assert shards.resolve(None, {}) is None
    assert shards.resolve(None, {"RANK": "0", "WORLD_SIZE": "1"}) is None  # one process: every video
    assert shards.resolve(None, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "1", "SLURM_ARRAY_TASK_MIN": "3"}) is None


def test_torchrun_processes_take_their_local_gpu(monkeypatch):
    torch = pytest.importorskip("torch")
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    shard = shards.resolve(None, {"RANK": "6", "WORLD_SIZE": "8", "LOCAL_RANK": "2"})
    assert (shard.index, shard.count, shard.local_rank) == (6, 8, 2)
    shards.pin_device(shard, "cuda")
    shards.pin_device(shard, "cpu")
    shards.pin_device(shard, "cuda:1")  # an explicit device is the user's choice
    shards.pin_device(shards.parse("6/8"), "cuda")  # --shard: no local rank known
    assert chosen == [2]


@pytest.mark.parametrize("flag, environ, message", [
    ("4/4", {}, "--shard: shard 4/4 does not exist; N is at least 1 and i runs from 0 to N-1"),
    ("1-4", {}, "--shard: expected i/N such as 0/4 (shard i of N, 0-based), got '1-4'"),
    ("0/0", {}, "--shard: shard 0/0 does not exist"),
    (None, {"RANK": "4", "WORLD_SIZE": "4"}, "torchrun (RANK=4, WORLD_SIZE=4): shard 4/4 does not exist"),
    (None, {"RANK": "x", "WORLD_SIZE": "4"}, "RANK='x' is not an integer; pass --shard i/N instead"),
    (None, {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_STEP": "2",
            "SLURM_ARRAY_TASK_COUNT": "3"}, "the task ids are not evenly spaced"),
])  # fmt: skip
def test_bad_shard_is_a_one_line_error(flag, environ, message):
    with pytest.raises(UserError) as error:
        shards.resolve(flag, environ)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_shards_take_every_nth_sorted_video_and_name_their_parts():
    ids = [f"v{i:02d}" for i in (7, 3, 11, 0, 5, 9, 1, 2, 10, 4, 8, 6)]
    parts = [Shard(i, 5, "test").videos(ids) for i in range(5)]
    assert parts[0] == ["v00", "v05", "v10"] and parts[4] == ["v04", "v09"]
    assert sorted(v for part in parts for v in part) == sorted(ids) and sum(map(len, parts)) == len(ids)
    assert Shard(1, 4, "").part_path(Path("/x/features.h5")) == Path("/x/features.part-1-of-4.h5")
    assert Shard(3, 12, "").part_path(Path("f.h5")).name == "f.part-03-of-12.h5"  # parts sort by name


# --------------------------------------------------------------------------- parts and merge


@pytest.mark.parametrize("count", [2, 3])
def test_shards_merged_equal_a_single_run(tmp_path, count, capsys):
    dataset = music_avqa_dataset(tmp_path / "data", videos=5)
    single = extract.run(config(dataset, tmp_path / "single" / "features.h5"))
    parts = extract_parts(dataset, tmp_path / "sharded" / "features.h5", count)
    assert [p.name for p in parts] == [f"features.part-{i}-of-{count}.h5" for i in range(count)]
    assert f"shard 1/{count} from --shard 1/{count}: {len(range(1, 5, count))} of 5 videos" in capsys.readouterr().out
    for i, part in enumerate(parts):
        with h5py.File(part, "r") as h5:
            assert (h5.attrs["shard_index"], h5.attrs["shard_count"]) == (i, count)
            assert h5.attrs["shard_source"] == f"--shard {i}/{count}"
            assert sorted(h5["videos"]) == [f"{v:08d}" for v in range(i, 5, count)]
            assert len(h5["questions/qid"]) == (30 if i == 0 else 0)  # shard 0 holds every question
        assert json.loads(meta_path(part).read_text())["shard"] == {"index": i, "count": count,
                                                                   "source": f"--shard {i}/{count}"}  # fmt: skip
    with pytest.raises(UserError, match=f"shard 1/{count} of a sharded extraction; merge the parts"):
        FeatureStore(parts[1])
    merged = shards.merge(list(reversed(parts)), tmp_path / "sharded" / "features.h5")  # any order
    assert_same_as_single_run(merged, single)
    with FeatureStore(merged) as store:
        assert store.video_ids == [f"{v:08d}" for v in range(5)] and len(store.questions) == 30
    # the merged store is the one a single run would write: that run finds it finished
    extract.run(config(dataset, tmp_path / "sharded" / "features.h5"))
    assert "already extracted" in " ".join(capsys.readouterr().out.split())


def test_failed_videos_of_every_part_merge_and_exclude_their_questions(tmp_path):
    dataset = music_avqa_dataset(tmp_path / "data", videos=6)
    expected = break_videos(dataset)  # videos 1, 2, 3: one in each of the 3 shards
    single = extract.run(config(dataset, tmp_path / "single" / "f.h5", max_failures=0.5))
    parts = extract_parts(dataset, tmp_path / "sharded" / "f.h5", 3, max_failures=0.5)
    for part, failed in zip(parts, ("00000003", "00000001", "00000002")):
        with h5py.File(part, "r") as h5:
            assert h5["failed/video_id"].asstr()[()].tolist() == [failed]
    with h5py.File(parts[0], "r") as h5:  # shard 0 dropped only the questions of its own failure
        assert len(h5["questions/qid"]) == 36 - 6 and "00000003" not in set(h5["questions/video_id"].asstr()[()])
    merged = shards.merge(parts, tmp_path / "sharded" / "f.h5")
    assert_same_as_single_run(merged, single)
    with FeatureStore(merged) as store:
        assert sorted(store.failed) == sorted(expected) and len(store.questions) == 18
        assert all(store.failed[v].startswith(reason) for v, reason in expected.items())
        assert not set(store.questions.video_id) & set(expected)
    figures = json.loads(meta_path(merged).read_text())["figures"]
    assert figures["excluded_questions"] == {"train": 6, "val": 6, "test": 6} and figures["videos"] == 3


def test_avqa_parts_merge_with_their_options(tmp_path):
    dataset = avqa_dataset(tmp_path / "data", videos=3)
    single = extract.run(config(dataset, tmp_path / "single" / "f.h5", format="avqa"))
    merged = shards.merge(extract_parts(dataset, tmp_path / "sharded" / "f.h5", 2, format="avqa"),
                          tmp_path / "sharded" / "f.h5")  # fmt: skip
    assert_same_as_single_run(merged, single)
    with h5py.File(merged, "r") as h5:
        assert h5["questions/options"].shape == (9, 4, h5.attrs["dim_text_global"])


def test_degraded_parts_merge_with_their_segment_masks(tmp_path):
    dataset = music_avqa_dataset(tmp_path / "data", videos=4)
    spec = {"degrade": "audio:noise=0dB,share=0.5;visual:blur=3,share=0.5", "degrade_seed": 3}
    single = extract.run(config(dataset, tmp_path / "single" / "f.h5", **spec))
    merged = shards.merge(extract_parts(dataset, tmp_path / "sharded" / "f.h5", 2, **spec), tmp_path / "sharded" / "f.h5")
    assert_same_as_single_run(merged, single)  # the degraded_<modality> masks and the degrade figures included
    with FeatureStore(merged) as store:
        masks = store.degraded_segments(store.video_ids, "audio")
        assert masks.shape == (4, 4) and masks.sum() == 8  # share 0.5 of 4 segments in each of 4 videos
    figures = json.loads(meta_path(merged).read_text())["figures"]["degrade"]
    assert figures["segments"]["audio"] == 8 and figures["of_segments"] == 16


def test_a_killed_shard_resumes_and_its_merge_waits_for_it(tmp_path, monkeypatch):
    dataset = music_avqa_dataset(tmp_path / "data", videos=6)
    out = tmp_path / "sharded" / "f.h5"
    part0 = extract.run(config(dataset, out), shard=shards.parse("0/2"))
    calls, real_decode = crash_decoder_after(monkeypatch, 2, "node lost")
    with pytest.raises(RuntimeError, match="node lost"):
        extract.run(config(dataset, out), shard=shards.parse("1/2"))  # videos 1, 3, 5; batches of 2
    part1 = Shard(1, 2, "").part_path(out)
    with pytest.raises(UserError) as error:
        shards.merge([part0, part1], tmp_path / "merged.h5")
    assert f"{part1}: an unfinished part" in str(error.value)
    assert_nothing_written(tmp_path / "merged.h5")
    calls.clear()
    monkeypatch.setattr(extract, "decode_clip", lambda *a, **k: (calls.append(Path(a[0]).stem), real_decode(*a, **k))[1])
    extract.run(config(dataset, out), shard=shards.parse("1/2"))
    assert calls == ["00000005"]  # only the video the kill left undone
    merged = shards.merge([part0, part1], tmp_path / "merged.h5")
    assert_same_as_single_run(merged, extract.run(config(dataset, tmp_path / "single.h5")))


def test_cli_takes_shards_from_torchrun_and_slurm_and_merges(tmp_path):
    dataset = music_avqa_dataset(tmp_path / "data", videos=3)
    runner, out = CliRunner(), tmp_path / "f.h5"
    args = ["extract", str(dataset), "--out", str(out), "--segments", "4", "--batch-size", "2"]
    first = runner.invoke(app, args, env={"RANK": "0", "WORLD_SIZE": "2"})
    assert first.exit_code == 0, first.output
    assert "shard 0/2 from torchrun (RANK=0, WORLD_SIZE=2): 2 of 3 videos -> f.part-0-of-2.h5" in first.output
    second = runner.invoke(app, args, env={"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "3",
                                           "SLURM_ARRAY_TASK_COUNT": "2"})  # fmt: skip
    assert second.exit_code == 0, second.output
    assert " ".join(second.output.split()).startswith("shard 1/2 from SLURM array (SLURM_ARRAY_TASK_ID=4")
    with h5py.File(tmp_path / "f.part-1-of-2.h5", "r") as h5:
        assert h5.attrs["shard_source"].startswith("SLURM array") and list(h5["videos"]) == ["00000001"]
    merged = runner.invoke(app, ["merge-features", str(tmp_path / "f.part-0-of-2.h5"),
                                 str(tmp_path / "f.part-1-of-2.h5"), "--out", str(out)])  # fmt: skip
    assert merged.exit_code == 0, merged.output
    assert f"{out}: merged 2 parts: 3 videos, 18 questions (0 videos failed)" in " ".join(merged.output.split())
    single = extract.run(config(dataset, tmp_path / "single.h5"))
    assert_same_as_single_run(out, single)
    bad = runner.invoke(app, [*args, "--shard", "2/2"])
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1
    assert "--shard: shard 2/2 does not exist" in bad.output


# --------------------------------------------------------------------------- bad parts


@pytest.fixture(name="two_parts")
def two_parts_fixture(tmp_path) -> tuple[Path, list[Path]]:
    dataset = music_avqa_dataset(tmp_path / "data", videos=4)
    return dataset, extract_parts(dataset, tmp_path / "f.h5", 2)


def merge_fails(parts: list[Path], out: Path) -> str:
    with pytest.raises(UserError) as error:
        shards.merge(parts, out)
    assert "\n" not in str(error.value)
    assert_nothing_written(out)
    return str(error.value)


def test_parts_of_other_settings_are_refused(tmp_path, two_parts):
    dataset, (part0, part1) = two_parts
    other = extract.run(config(dataset, tmp_path / "g.h5", segments=3), shard=shards.parse("1/2"))
    message = merge_fails([part0, other], tmp_path / "m.h5")
    assert message == (f"{other}: segments is 3 but f.part-0-of-2.h5 has 4; the parts must come from one "
                       f"extract setting")  # fmt: skip
    with h5py.File(part1, "a") as h5:
        h5.attrs["encoder_version"] = "handcrafted-0"
    message = merge_fails([part0, part1], tmp_path / "m.h5")
    assert message.startswith(f"{part1}: encoder_version is 'handcrafted-0' but f.part-0-of-2.h5 has")


def test_other_config_and_vocabulary_are_refused(tmp_path, two_parts):
    dataset, (part0, _) = two_parts
    other = extract.run(config(dataset, tmp_path / "g.h5", batch_size=3), shard=shards.parse("1/2"))
    assert merge_fails([part0, other], tmp_path / "m.h5") == (
        f"{other}: extract config batch_size is 3 but f.part-0-of-2.h5 has 2")
    with h5py.File(other, "a") as h5:
        del h5["answers"]
        h5.create_dataset("answers", data=np.asarray(["yes", "no"], dtype=object), dtype=h5py.string_dtype())
    assert "its answer vocabulary differs from f.part-0-of-2.h5's" in merge_fails([part0, other], tmp_path / "m.h5")


def test_a_video_in_two_parts_is_refused(tmp_path, two_parts):
    _, (part0, part1) = two_parts
    with h5py.File(part0, "r") as source, h5py.File(part1, "a") as target:
        source.copy(source["videos/00000002"], target["videos"], "00000002")
    message = merge_fails([part0, part1], tmp_path / "m.h5")
    assert message == f"{part1}: video 00000002 is also in {part0}; each video belongs to one shard"


def test_missing_repeated_and_foreign_shards_are_refused(tmp_path, two_parts):
    dataset, (part0, part1) = two_parts
    assert merge_fails([part0], tmp_path / "m.h5") == (
        f"{tmp_path / 'f.part-1-of-2.h5'}: shard 1/2 is missing; merge needs all 2 parts")
    assert merge_fails([part0, part0], tmp_path / "m.h5") == f"{part0}: shard 0/2 is also given as {part0}"
    third = extract.run(config(dataset, tmp_path / "f.h5"), shard=shards.parse("2/3"))
    assert merge_fails([part0, part1, third], tmp_path / "m.h5").startswith(
        f"{third}: shard 2/3, but f.part-0-of-2.h5 is shard 0/2")
    single = extract.run(config(dataset, tmp_path / "single.h5"))
    assert merge_fails([single], tmp_path / "m.h5") == (
        f"{single}: not a shard part (no shard attributes); a single extraction needs no merge")
    before = part1.read_bytes()
    with pytest.raises(UserError, match="f.part-1-of-2.h5: is one of the parts; choose another --out"):
        shards.merge([part0, part1], part1)
    assert part1.read_bytes() == before


def test_unfinished_parts_are_refused(tmp_path, two_parts):
    _, (part0, part1) = two_parts
    meta_path(part1).unlink()  # killed after the file took its name, before its meta was written
    assert merge_fails([part0, part1], tmp_path / "m.h5") == (
        f"{part1}: an unfinished part (no f.part-1-of-2.h5.meta.json); rerun the same `r2scp extract --shard`")
    partial = part1.with_name(part1.name + ".partial")
    part1.rename(partial)  # still running
    for given in (part1, partial):
        assert "an unfinished part (its extraction was interrupted or is still running)" in merge_fails(
            [part0, given], tmp_path / "m.h5")
    assert merge_fails([part0, tmp_path / "nope.h5"], tmp_path / "m.h5") == (
        f"{tmp_path / 'nope.h5'}: not found; run `r2scp extract --shard i/N` first")


def test_a_merge_that_fails_while_writing_leaves_nothing(tmp_path, two_parts, monkeypatch):
    _, parts = two_parts
    out = tmp_path / "m.h5"
    out.write_bytes(b"an older merge")
    meta_path(out).write_text("{}")

    def disk_full(self, *args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(FeatureWriter, "finalize", disk_full)
    with pytest.raises(OSError, match="No space left"):
        shards.merge(parts, out)
    assert out.read_bytes() == b"an older merge"  # untouched: the new file never took its name
    assert sorted(p.name for p in tmp_path.glob("*m.h5*")) == ["m.h5", "m.h5.meta.json"]
