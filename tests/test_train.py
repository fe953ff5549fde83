"""Both training stages and evaluation on a small planted features file: the guarantees of DESIGN §6
(leak-free recovery, frozen stage 1, poisoned missing features, resumable and reproducible runs)."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from r2scp_cli import evaluate, train
from r2scp_cli.batches import load_model
from r2scp_cli.cli import app
from r2scp_cli.config import BankConfig, EvalConfig, TrainExpertsConfig, TrainRouterConfig
from r2scp_cli.errors import UserError
from r2scp_cli.retrieval import bank as bank_stage
from r2scp_cli.retrieval.bank import Bank

torch.set_num_threads(1)
SMALL = dict(epochs=2, d_model=32, batch_size=32, n=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A features file (every video in several splits) and its bank."""
    from conftest import make_features

    root = tmp_path_factory.mktemp("world")
    features = make_features(root / "features.h5", n_videos=40, segments=4, questions_per_video=4)
    bank = bank_stage.run(BankConfig(features, root / "bank", keys="paired", neighbours=6, exact=True, check_recall=0))
    return root, features, bank


@pytest.fixture(scope="module")
def trained(world):
    """cmr+cap experts and router, trained once for the tests that only read them."""
    root, features, bank = world
    experts = train.run_experts(TrainExpertsConfig(features, bank, root / "experts", **SMALL))
    router = train.run_router(TrainRouterConfig(experts, root / "router", epochs=2, batch_size=32))
    return experts, router


def spy_on_retrieval(monkeypatch) -> list[tuple[np.ndarray, str, np.ndarray, Bank]]:
    """Record every (query videos, modality, entry indices, bank) the training and eval code retrieves."""
    calls = []
    original_neighbours, original_search = Bank.neighbours, Bank.search

    def neighbours(self, video_ids, modality):
        idx, sims = original_neighbours(self, video_ids, modality)
        calls.append((np.asarray(video_ids), str(getattr(modality, "value", modality)), idx, self))
        return idx, sims

    def search(self, store, video_ids, modality, n):
        idx, sims = original_search(self, store, video_ids, modality, n)
        calls.append((np.asarray(video_ids), str(getattr(modality, "value", modality)), idx, self))
        return idx, sims

    monkeypatch.setattr(Bank, "neighbours", neighbours)
    monkeypatch.setattr(Bank, "search", search)
    return calls


def test_stage_one_writes_a_rebuildable_model_and_a_log(trained):
    experts, _ = trained
    model, checkpoint = load_model(experts / "model.pt")
    assert model.cfg.recovery == "cmr+cap" and model.cfg.n == 3 and model.cfg.d_model == 32
    assert len(checkpoint["answers"]) == 42
    lines = (experts / "log.jsonl").read_text().splitlines()
    assert len(lines) == 2
    meta = train.artifacts.read_json(experts / "meta.json")
    assert meta["figures"]["epochs"] == 2
    assert set(meta["figures"]["val"]) == {"none", "audio", "visual", "selection"}


def test_stage_two_leaves_every_stage_one_parameter_bit_identical(trained):
    experts, router = trained
    before, _ = load_model(experts / "model.pt")
    after, _ = load_model(router / "model.pt")
    stage_two = {id(p) for m in after.stage_two_modules() for p in m.parameters()}
    names_two = {n for n, p in after.named_parameters() if id(p) in stage_two}
    changed_two = False
    for (name, p0), (_, p1) in zip(before.state_dict().items(), after.state_dict().items()):
        if name.split(".")[0] in ("router", "routed_head"):
            changed_two |= not torch.equal(p0, p1)
        else:
            assert torch.equal(p0, p1), name
    assert names_two and changed_two  # the router did train


def test_no_sample_is_recovered_from_its_own_video(world, monkeypatch, tmp_path):
    root, features, bank = world
    calls = spy_on_retrieval(monkeypatch)
    experts = train.run_experts(TrainExpertsConfig(features, bank, tmp_path / "experts", **{**SMALL, "epochs": 1}))
    evaluate.run(EvalConfig(experts, tmp_path / "eval", missing="audio"))
    assert len(calls) >= 4  # training batches and eval batches both retrieved
    for queries, modality, idx, b in calls:
        entries = np.asarray(b.entry_video_ids(modality), dtype=object)
        assert not (entries[idx] == queries[:, None]).any()


def test_poisoned_missing_modality_changes_no_prediction(world, trained, tmp_path):
    root, features, _ = world
    _, router = trained
    poisoned = tmp_path / "poisoned.h5"
    poisoned.write_bytes(features.read_bytes())
    Path(str(poisoned) + ".meta.json").write_text(Path(str(features) + ".meta.json").read_text())
    with h5py.File(poisoned, "a") as h5:
        for video in h5["videos"]:
            h5[f"videos/{video}/audio"][...] = np.nan
            h5[f"videos/{video}/audio_global"][...] = np.nan
    clean = evaluate.run(EvalConfig(router, tmp_path / "clean", missing="audio"))
    dirty = evaluate.run(EvalConfig(router, tmp_path / "dirty", missing="audio", features=poisoned))
    read = lambda d: (d / "predictions.jsonl").read_text().splitlines()  # noqa: E731
    assert read(clean) == read(dirty)
    assert "nan" not in (dirty / "predictions.jsonl").read_text().lower()


def test_runs_are_reproducible_and_resume_to_the_same_weights(world, tmp_path, monkeypatch):
    root, features, bank = world
    config = lambda out: TrainExpertsConfig(features, bank, out, recovery="cmr", **{**SMALL, "epochs": 3})  # noqa: E731
    train.run_experts(config(tmp_path / "a"))
    train.run_experts(config(tmp_path / "b"))
    a, _ = load_model(tmp_path / "a" / "model.pt")
    b, _ = load_model(tmp_path / "b" / "model.pt")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name

    original = train.validate
    epochs_seen = []

    def crash_in_third_epoch(*args, **kwargs):
        epochs_seen.append(1)
        if len(epochs_seen) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "validate", crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.run_experts(config(tmp_path / "c"))
    monkeypatch.setattr(train, "validate", original)
    assert not (tmp_path / "c" / "meta.json").exists()
    train.run_experts(config(tmp_path / "c"), resume=True)
    c, _ = load_model(tmp_path / "c" / "model.pt")
    ca = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["state"]
    cc = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=False)["state"]
    for name in ca:
        assert torch.equal(ca[name], cc[name]), name
    assert len((tmp_path / "c" / "log.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("recovery", ["zero", "generative", "cap"])
def test_every_recovery_method_trains_from_the_same_loop(world, tmp_path, recovery):
    root, features, bank = world
    experts = train.run_experts(TrainExpertsConfig(features, bank, tmp_path / "e", recovery=recovery, **SMALL))
    router = train.run_router(TrainRouterConfig(experts, tmp_path / "r", epochs=1, batch_size=32))
    out = evaluate.run(EvalConfig(router, tmp_path / "eval", missing="visual"))
    metrics = train.artifacts.read_json(out / "metrics.json")
    assert metrics["recovery"] == recovery and metrics["kind"] == "router"
    assert metrics["metrics"]["overall"]["count"] == metrics["evaluated"] > 0
    assert 0 <= metrics["metrics"]["overall"]["accuracy"] <= 100


def test_eval_of_experts_reports_each_expert(trained, tmp_path):
    experts, _ = trained
    out = evaluate.run(EvalConfig(experts, tmp_path / "eval", missing="none"))
    metrics = train.artifacts.read_json(out / "metrics.json")
    assert metrics["kind"] == "experts"
    assert set(metrics["experts"]) == {"audio", "visual", "text"}
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == metrics["evaluated"]


def test_eval_refuses_features_of_another_encoder(trained, tmp_path):
    from conftest import make_features

    _, router = trained
    other = make_features(tmp_path / "other.h5", n_videos=8, dims={"audio": 20})
    with pytest.raises(UserError, match="do not match"):
        evaluate.run(EvalConfig(router, tmp_path / "eval", missing="audio", features=other))
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_cli_bad_flags_are_one_line_errors(world, tmp_path):
    root, features, bank = world
    runner = CliRunner()
    result = runner.invoke(app, ["train-experts", str(features), "--bank", str(bank), "--out", str(tmp_path / "x"),
                                 "--recovery", "magic"])  # fmt: skip
    assert result.exit_code == 1 and "--recovery magic" in result.output
    assert not (tmp_path / "x").exists()
    result = runner.invoke(app, ["train-experts", str(features), "--bank", str(bank), "--out", str(tmp_path / "y"),
                                 "--n", "50"])  # fmt: skip
    assert result.exit_code == 1 and "stores only 6 neighbours" in result.output
    result = runner.invoke(app, ["eval", str(tmp_path / "nothing"), "--out", str(tmp_path / "z")])
    assert result.exit_code == 1 and "not found" in result.output
