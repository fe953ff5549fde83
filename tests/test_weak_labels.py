"""`build-bank --weak-labels`: labels from the train split's questions only, and its one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import make_features
from typer.testing import CliRunner

from r2scp_cli import artifacts
from r2scp_cli.cli import app
from r2scp_cli.config import BankConfig
from r2scp_cli.errors import UserError
from r2scp_cli.features import FeatureStore
from r2scp_cli.retrieval.bank import ENTRIES_FILE, run
from r2scp_cli.retrieval.weak_labels import NOT_BOTH, _closed_world, question_facts, weak_labels

runner = CliRunner()


def _rewrite_questions(source: Path, target: Path, splits: tuple[str, ...], text: str | None, answer: str) -> Path:
    """A copy of a features file whose questions of ``splits`` get another answer (and text, if given)."""
    shutil.copy(source, target)
    shutil.copy(artifacts.meta_path(source), artifacts.meta_path(target))
    with h5py.File(target, "a") as h5:
        q = h5["questions"]
        rows = np.isin(q["split"].asstr()[()], splits)
        for name, value in (("answer", answer), ("text", text)):
            if value is not None:
                column = q[name].asstr()[()].astype(object)
                column[rows] = value
                q[name][...] = column
    return target


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    return make_features(tmp_path_factory.mktemp("weak") / "features.h5", n_videos=60, seed=3)


def test_templates_become_labels():
    assert question_facts("Is there a cello sound", "yes") == {"heard:cello": 1.0}
    assert question_facts("Is there a cello in the entire video?", "no") == {"seen:cello": 0.0}
    assert question_facts("How many sounding flute in the video？", "two") == {"heard:flute": 1.0, "seen:flute": 1.0}
    assert question_facts("Which piano makes the sound first", "left") == {
        "seen:piano": 1.0, "heard:piano": 1.0, "at:piano@left": 1.0}  # fmt: skip
    assert question_facts("Is the instrument on the left louder than the instrument on the right", "yes") == {}
    assert question_facts("Where is the performance", "indoor") == {"setting=indoor": 1.0}
    assert question_facts("Why is the sky blue", "yes") == {}


def test_closed_world_fills_in_absent_classes():
    classes = {"cello", "flute", "piano", "violin"}
    facts = {"heard:cello": 1.0, "heard:flute": 1.0, "heard_count=two": 1.0, "seen:piano": 0.0, "offscreen": 0.0,
             f"{NOT_BOTH}seen:cello|violin": 0.0, "seen:cello": 1.0}  # fmt: skip
    out = _closed_world(facts, classes)
    assert out["heard:piano"] == out["heard:violin"] == 0.0  # two heard, both known: the rest are silent
    assert out["seen:violin"] == 0.0  # not both cello and violin, and cello is seen
    assert not any(name.startswith(NOT_BOTH) for name in out)
    # a count the known classes do not reach says nothing about the others
    assert "heard:piano" not in _closed_world({"heard:cello": 1.0, "heard_count=two": 1.0}, classes)
    # no off-screen sound: an unseen class is not heard
    assert _closed_world({"offscreen": 0.0, "seen:piano": 0.0}, classes)["heard:piano"] == 0.0


def test_labels_read_train_questions_only(features, tmp_path):
    poisoned = _rewrite_questions(features, tmp_path / "poisoned.h5", ("val", "test"), "Is there a cello sound", "yes")
    with FeatureStore(features) as store, FeatureStore(poisoned) as other:
        ids = store.video_ids
        clean, dirty = weak_labels(store.questions, ids), weak_labels(other.questions, ids)
        train_videos = set(store.videos_of(["train"]))
    assert clean.names == dirty.names
    np.testing.assert_array_equal(clean.targets, dirty.targets)
    np.testing.assert_array_equal(clean.known, dirty.known)
    assert clean.known.any(axis=1).sum() > 0.8 * len(train_videos)
    # a video without train questions has no label
    assert not any(clean.known[i].any() for i, v in enumerate(ids) if v not in train_videos)


def test_bank_keys_ignore_val_and_test_answers_and_use_train_ones(features, tmp_path):
    base = run(BankConfig(features, tmp_path / "plain", keys="bind"))
    labelled = run(BankConfig(features, tmp_path / "weak", keys="bind", weak_labels=True))
    poisoned = _rewrite_questions(features, tmp_path / "poisoned.h5", ("val", "test"), "Is there a cello sound", "no")
    poisoned_bank = run(BankConfig(poisoned, tmp_path / "weak-poisoned", keys="bind", weak_labels=True))
    flipped = _rewrite_questions(features, tmp_path / "flipped.h5", ("train",), None, "zero")
    flipped_bank = run(BankConfig(flipped, tmp_path / "weak-flipped", keys="bind", weak_labels=True))

    def keys(bank: Path) -> np.ndarray:
        with h5py.File(bank / ENTRIES_FILE, "r") as h5:
            return h5["keys/audio"][()]

    np.testing.assert_array_equal(keys(labelled), keys(poisoned_bank))  # val/test answers change nothing
    assert not np.array_equal(keys(labelled), keys(base))  # the labels do train the binder
    assert not np.array_equal(keys(labelled), keys(flipped_bank))  # ... and they are the train answers
    figures = artifacts.read_json(labelled / "meta.json")["figures"]["binder"]["weak_labels"]
    assert figures["labelled_videos"] > 0 and figures["labels"] > 0
    assert "weak_labels" not in artifacts.read_json(base / "meta.json")["figures"]["binder"]


def test_weak_labels_need_bind_keys_one_line_and_no_bank(features, tmp_path):
    out = tmp_path / "bank"
    result = runner.invoke(app, ["build-bank", str(features), "--out", str(out), "--keys", "paired", "--weak-labels"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--weak-labels trains the binder of --keys bind" in lines[0]
    assert not out.exists()


def test_train_questions_without_known_templates_are_refused(features, tmp_path):
    odd = _rewrite_questions(features, tmp_path / "odd.h5", ("train", "val", "test"), "Why is the sky blue", "yes")
    with pytest.raises(UserError, match="--weak-labels: no train question matches"):
        run(BankConfig(odd, tmp_path / "bank", keys="bind", weak_labels=True))
    assert not (tmp_path / "bank").exists()
