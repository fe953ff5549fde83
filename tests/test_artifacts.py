"""The artifact machinery: meta.json last, fingerprints, skip/force, missing inputs."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from r2scp_cli import artifacts
from r2scp_cli.errors import UserError


@dataclass(frozen=True)
class ToyConfig:
    source: Path
    out: Path
    scale: int = 2


def toy_stage(config: ToyConfig, force: bool = False, fail: bool = False) -> tuple[Path, bool]:
    """A stage that doubles the numbers of its input file; returns (output, whether it worked)."""
    run = artifacts.begin("toy", config.out, config, {"source": config.source}, force=force)
    if run.finished:
        return config.out, False
    numbers = [int(x) for x in config.source.read_text().split()]
    artifacts.write_text(config.out / "doubled.txt", " ".join(str(config.scale * x) for x in numbers))
    if fail:
        raise RuntimeError("crash after writing part of the output")
    run.finish(figures={"count": len(numbers)})
    return config.out, True


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "numbers.txt"
    path.write_text("1 2 3")
    return path


def test_meta_written_last_and_complete(tmp_path, source):
    out, worked = toy_stage(ToyConfig(source, tmp_path / "out"))
    assert worked
    meta = json.loads((out / "meta.json").read_text())
    assert meta["stage"] == "toy"
    assert meta["config"] == {"source": str(source), "out": str(tmp_path / "out"), "scale": 2}
    assert meta["inputs"]["source"]["path"] == str(source)
    assert len(meta["inputs"]["source"]["fingerprint"]) == 16
    assert meta["figures"] == {"count": 3}
    assert meta["version"] and meta["torch_version"]
    assert meta["started"] <= meta["finished"]
    assert (out / "doubled.txt").read_text() == "2 4 6"


def test_stage_that_raises_leaves_no_meta(tmp_path, source):
    with pytest.raises(RuntimeError):
        toy_stage(ToyConfig(source, tmp_path / "out"), fail=True)
    assert not (tmp_path / "out" / "meta.json").exists()
    with pytest.raises(UserError, match="unfinished"):
        artifacts.require(tmp_path / "out", "toy")


def test_unchanged_inputs_skip_unless_forced(tmp_path, source):
    config = ToyConfig(source, tmp_path / "out")
    assert toy_stage(config)[1]
    assert not toy_stage(config)[1]
    assert toy_stage(config, force=True)[1]


def test_changed_input_or_config_reruns(tmp_path, source):
    config = ToyConfig(source, tmp_path / "out")
    toy_stage(config)
    source.write_text("1 2 3 4")
    assert toy_stage(config)[1]
    assert (tmp_path / "out" / "doubled.txt").read_text() == "2 4 6 8"
    assert toy_stage(ToyConfig(source, tmp_path / "out", scale=3))[1]
    assert (tmp_path / "out" / "doubled.txt").read_text() == "3 6 9 12"


def test_rerun_after_crash_does_the_work(tmp_path, source):
    config = ToyConfig(source, tmp_path / "out")
    toy_stage(config)
    with pytest.raises(RuntimeError):
        toy_stage(config, force=True, fail=True)
    assert not (tmp_path / "out" / "meta.json").exists()  # the old meta was removed before the work
    assert toy_stage(config)[1]


def test_fingerprint_of_artifact_follows_its_meta(tmp_path, source):
    out, _ = toy_stage(ToyConfig(source, tmp_path / "out"))
    first = artifacts.fingerprint(out)
    toy_stage(ToyConfig(source, out), force=True)
    assert artifacts.fingerprint(out) != first  # a rerun is a new input for the next stage


def test_file_artifact_meta_sits_beside_it(tmp_path):
    assert artifacts.meta_path(tmp_path / "features.h5") == tmp_path / "features.h5.meta.json"
    assert artifacts.meta_path(tmp_path / "bank") == tmp_path / "bank" / "meta.json"


def test_require_missing_artifact(tmp_path):
    with pytest.raises(UserError, match=r"not found; run `r2scp extract` first"):
        artifacts.require(tmp_path / "features.h5", "extract")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.txt"
    with pytest.raises(ValueError):
        with artifacts.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    import os

    target = tmp_path / "x.txt"
    artifacts.write_text(target, "hello")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
