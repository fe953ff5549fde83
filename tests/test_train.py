"""Both training stages and evaluation on a small planted features file: the guarantees of DESIGN §6
(leak-free recovery, frozen stage 1, poisoned missing features, resumable and reproducible runs)."""

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from r2scp_cli import evaluate, train
from r2scp_cli.batches import load_model
from r2scp_cli.cli import app
from r2scp_cli.config import BankConfig, EvalConfig, TrainExpertsConfig, TrainRouterConfig, usable_cores
from r2scp_cli.errors import UserError
from r2scp_cli.losses import expert_losses
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
    assert meta["figures"]["cpu_threads"] == usable_cores()  # a process alone takes every core


def test_stage_two_leaves_every_stage_one_parameter_bit_identical(trained):
    experts, router = trained
    before, _ = load_model(experts / "model.pt")
    after, _ = load_model(router / "model.pt")
    last = torch.load(router / "checkpoint.pt", weights_only=False)["state"]  # model.pt may be epoch 0's
    stage_two = {id(p) for m in after.stage_two_modules() for p in m.parameters()}
    names_two = {n for n, p in after.named_parameters() if id(p) in stage_two}
    changed_two = False
    for (name, p0), (_, p1) in zip(before.state_dict().items(), after.state_dict().items()):
        if name.split(".")[0] in ("router", "routed_head"):
            changed_two |= not torch.equal(p0, last[name])
        else:
            assert torch.equal(p0, p1) and torch.equal(p0, last[name]), name
    assert names_two and changed_two  # the router did train


def test_stage_two_keeps_a_router_only_if_it_beats_the_experts_sum_on_val(trained):
    """Epoch 0 of stage 2 is the untrained router, whose answers are the experts' sum: its val scores are
    stage 1's best, and the saved router is the best of epochs 0, 1, ..."""
    experts, router = trained
    stage_one = train.artifacts.read_json(experts / "meta.json")["figures"]["val"]
    log = [json.loads(line) for line in (router / "log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [0, 1, 2]
    assert {k: log[0][f"val_{k}"] for k in stage_one} == stage_one
    best = max(log, key=lambda entry: entry["val_selection"])
    saved = torch.load(router / "model.pt", weights_only=False)
    assert saved["epoch"] == best["epoch"] and saved["val"]["selection"] == best["val_selection"]
    if best["epoch"] == 0:  # nothing beat the experts' sum: the saved router is the untrained one
        before, _ = load_model(experts / "model.pt")
        assert all(torch.equal(v, saved["state"][k]) for k, v in before.state_dict().items())


def test_a_router_that_never_beats_the_experts_sum_is_not_kept(trained, tmp_path, monkeypatch):
    experts, _ = trained
    scores = iter([60.0, 50.0, 40.0])  # epoch 0 (the experts' sum), then two worse trained routers

    def validate(*args, **kwargs):
        score = next(scores)
        return {"none": score, "audio": score, "visual": score, "selection": score}

    monkeypatch.setattr(train, "validate", validate)
    result = CliRunner().invoke(app, ["train-router", str(experts), "--out", str(tmp_path / "r"), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert "at epoch 0 (the untrained router: the experts' sum" in " ".join(result.output.split())
    saved = torch.load(tmp_path / "r" / "model.pt", weights_only=False)
    before, _ = load_model(experts / "model.pt")
    assert saved["epoch"] == 0 and all(torch.equal(v, saved["state"][k]) for k, v in before.state_dict().items())


def test_stage_one_keeps_the_moving_average_of_its_weights(world, tmp_path):
    """--average d: the weights validated and saved are the average, not the raw weights (0: the raw ones)."""
    root, features, bank = world
    runs = {}
    for decay in (0.0, 0.9):
        out = train.run_experts(TrainExpertsConfig(features, bank, tmp_path / f"decay{int(decay * 10)}", recovery="cmr",
                                                   average=decay, **{**SMALL, "epochs": 1}))  # fmt: skip
        runs[decay] = (torch.load(out / "model.pt", weights_only=False)["state"],
                       torch.load(out / "checkpoint.pt", weights_only=False))  # fmt: skip
    raw_saved, raw_checkpoint = runs[0.0]
    saved, checkpoint = runs[0.9]
    assert "average" not in raw_checkpoint
    for name, value in checkpoint["state"].items():
        assert torch.equal(value, raw_checkpoint["state"][name]), name  # averaging leaves training alone
        assert torch.equal(raw_saved[name], value) and torch.equal(saved[name], checkpoint["average"][name])
    moved = [n for n, v in checkpoint["state"].items() if not torch.equal(v, checkpoint["average"][n])]
    assert len(moved) > 10  # every trained parameter's average trails it


def test_no_sample_is_recovered_from_its_own_video(world, monkeypatch, tmp_path):
    root, features, bank = world
    calls = spy_on_retrieval(monkeypatch)
    experts = train.run_experts(TrainExpertsConfig(features, bank, tmp_path / "experts", **{**SMALL, "epochs": 1}))
    evaluate.run(EvalConfig(experts, tmp_path / "eval", missing="audio"))
    assert len(calls) >= 4  # training batches and eval batches both retrieved
    for queries, modality, idx, b in calls:
        entries = np.asarray(b.entry_video_ids(), dtype=object)
        assert not (entries[idx] == queries[:, None]).any()


def _poisoned_copy(features: Path, out: Path, modality: str) -> Path:
    """A copy of ``features`` whose ``modality`` tokens and globals are NaN for every video."""
    out.write_bytes(features.read_bytes())
    Path(str(out) + ".meta.json").write_text(Path(str(features) + ".meta.json").read_text())
    with h5py.File(out, "a") as h5:
        for video in h5["videos"]:
            h5[f"videos/{video}/{modality}"][...] = np.nan
            h5[f"videos/{video}/{modality}_global"][...] = np.nan
    return out


@pytest.mark.parametrize("recovery", ["zero", "generative", "cmr", "cap", "cmr+cap"])
def test_poisoned_missing_modality_changes_no_prediction(world, trained, tmp_path, recovery):
    """The real features of the modality an eval declares missing are never read, for every recovery
    method and both media: NaN there changes no prediction."""
    root, features, bank = world
    if recovery == "cmr+cap":
        _, router = trained
    else:
        experts = train.run_experts(TrainExpertsConfig(features, bank, tmp_path / "e", recovery=recovery,
                                                       **{**SMALL, "epochs": 1}))  # fmt: skip
        router = train.run_router(TrainRouterConfig(experts, tmp_path / "r", epochs=1, batch_size=32))
    read = lambda d: (d / "predictions.jsonl").read_text()  # noqa: E731
    for missing in ("audio", "visual"):
        poisoned = _poisoned_copy(features, tmp_path / f"poisoned-{missing}.h5", missing)
        clean = evaluate.run(EvalConfig(router, tmp_path / f"clean-{missing}", missing=missing))
        dirty = evaluate.run(EvalConfig(router, tmp_path / f"dirty-{missing}", missing=missing, features=poisoned))
        assert read(clean).splitlines() == read(dirty).splitlines()
        assert "nan" not in read(dirty).lower()


def test_model_selection_never_reads_the_test_split(world, tmp_path, monkeypatch):
    """Both training stages select and stop on val: no question row of the test split is ever read."""
    root, features, bank = world
    from r2scp_cli.features import FeatureStore

    read_rows, loaded = [], []
    question_arrays, load_split = FeatureStore.question_arrays, train.load_split

    def spy_arrays(self, rows, *args, **kwargs):
        read_rows.extend(np.asarray(rows).tolist())
        return question_arrays(self, rows, *args, **kwargs)

    def spy_split(store, name, *args, **kwargs):
        loaded.append(name)
        return load_split(store, name, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "question_arrays", spy_arrays)
    monkeypatch.setattr(train, "load_split", spy_split)
    experts = train.run_experts(TrainExpertsConfig(features, bank, tmp_path / "e", **{**SMALL, "epochs": 1}))
    train.run_router(TrainRouterConfig(experts, tmp_path / "r", epochs=1, batch_size=32))
    with FeatureStore(features) as store:
        test_rows = set(store.questions.rows("test").tolist())
        assert len(test_rows) > 0
    assert sorted(set(loaded)) == ["train", "val"]
    assert read_rows and not test_rows & set(read_rows)


def test_n_above_the_stored_negatives_is_one_line_before_any_output(world, tmp_path):
    root, features, _ = world
    few = bank_stage.run(BankConfig(features, tmp_path / "bank", keys="paired", neighbours=6, negatives=2, exact=True,
                                    check_recall=0))  # fmt: skip
    meta = train.artifacts.read_json(few / "meta.json")["figures"]
    assert meta["negatives"] == 6  # build-bank stores at least as many negatives as neighbours
    with h5py.File(few / "neighbours.h5") as h5:
        assert h5["audio/negatives"].shape[1] == 6
    # A bank that stores fewer negatives than neighbours (built before that rule) is refused up front.
    meta_path = few / "meta.json"
    full = train.artifacts.read_json(meta_path)
    full["figures"]["negatives"] = 2
    meta_path.write_text(json.dumps(full))
    with pytest.raises(UserError, match="stores only 2 random negatives per video"):
        train.run_experts(TrainExpertsConfig(features, few, tmp_path / "e", **{**SMALL, "n": 3}))
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("videos, segments, rho, pool", [(6, 4, 0.25, 24), (3, 48, 1.0, 48)])
def test_cap_pool_fits_k_and_the_training_tokens(tmp_path, videos, segments, rho, pool):
    """`cap` alone: a pool of min(max(40, k), training tokens) prototypes. A fixed 40 crashed with fewer
    training tokens than 40 (6 videos x 4 segments) and with k > 40 (k = ceil(1.0 x 48))."""
    from conftest import make_features

    features = make_features(tmp_path / "f.h5", n_videos=videos, segments=segments, min_splits=3)
    bank = bank_stage.run(BankConfig(features, tmp_path / "bank", keys="paired", neighbours=2, exact=True, check_recall=0))
    experts = train.run_experts(TrainExpertsConfig(features, bank, tmp_path / "e", recovery="cap", rho=rho,
                                                   **{**SMALL, "epochs": 1}))  # fmt: skip
    model, _ = load_model(experts / "model.pt")
    assert model.cfg.prototypes == pool
    assert model.prototypes_audio.shape == (pool, model.cfg.dims["audio"])
    assert torch.isfinite(model.prototypes_audio).all() and model.prototypes_audio.abs().sum() > 0


def test_runs_are_reproducible_and_resume_to_the_same_weights(world, tmp_path, monkeypatch):
    root, features, bank = world
    config = lambda out: TrainExpertsConfig(features, bank, out, recovery="cmr", average=0.99, **{**SMALL, "epochs": 3})  # noqa: E731
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
    average_a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["average"]
    average_c = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=False)["average"]
    for name in average_a:  # the moving average resumes too
        assert torch.equal(average_a[name], average_c[name]), name
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
    result = runner.invoke(app, ["train-experts", str(features), "--bank", str(bank), "--out", str(tmp_path / "w"),
                                 "--average", "1"])  # fmt: skip
    assert result.exit_code == 1 and "--average 1.0: must lie in [0, 1)" in result.output
    assert not (tmp_path / "w").exists()
    result = runner.invoke(app, ["eval", str(tmp_path / "nothing"), "--out", str(tmp_path / "z")])
    assert result.exit_code == 1 and "not found" in result.output


def test_a_batch_reads_each_bank_entry_once_and_each_row_gets_its_own_lists(world):
    from r2scp_cli.batches import make_batch
    from r2scp_cli.model import MISSING_CODES

    root, features, bank_dir = world
    data = train.open_data(features, bank_dir)
    config = TrainExpertsConfig(features, bank_dir, root / "unused", recovery="cmr", **SMALL)
    model_config = train.model_config_for(data.store, config, len(set(data.splits["train"].video_ids)))
    split = data.splits["train"]
    idx = np.arange(min(32, len(split)))
    missing = np.full(len(idx), MISSING_CODES["audio"])
    rec = make_batch(split, idx, missing, data.videos, model_config, data.bank.neighbours, data.bank, True)["recover"]["audio"]
    vids = split.video_ids[idx]
    entries = data.bank.neighbours(vids, "audio")[0][:, :3]
    negatives = data.bank.negatives(vids, "audio")[:, :3]
    values = rec["values"].numpy()
    assert len(values) == len(np.unique(np.concatenate([entries.ravel(), negatives.ravel()])))
    assert len(values) < entries.size + negatives.size  # rows share entries: fewer reads than references
    np.testing.assert_array_equal(values[rec["candidates"].numpy()], data.bank.gather("audio", entries))
    np.testing.assert_array_equal(values[rec["negatives"].numpy()], data.bank.gather("audio", negatives))


def test_router_holdout_keeps_stage_two_questions_out_of_stage_one(world, tmp_path, monkeypatch):
    """--router-holdout 0.3: stage 1 trains on the other 70 % of the train videos only, stage 2 on the
    held-out 30 % only; both are recorded and reproducible from the seed."""
    root, features, bank = world
    seen: dict[int, set] = {1: set(), 2: set()}
    original = train.make_batch

    def spy(split, idx, *args, **kwargs):
        if split.name == "train":
            seen[1 if kwargs.get("training") else 2].update(split.video_ids[idx])
        return original(split, idx, *args, **kwargs)

    monkeypatch.setattr(train, "make_batch", spy)
    experts = train.run_experts(TrainExpertsConfig(features, bank, tmp_path / "e", router_holdout=0.3,
                                                   **{**SMALL, "epochs": 1}))  # fmt: skip
    train.run_router(TrainRouterConfig(experts, tmp_path / "r", epochs=1, batch_size=32))
    split = train.load_split(train.FeatureStore(features), "train")
    videos = set(split.video_ids)
    held_out = train.router_videos(split, 0.3, 0)
    assert len(held_out) == round(0.3 * len(videos))
    assert seen[1] == videos - held_out and seen[2] == held_out
    assert json.loads((experts / "meta.json").read_text())["config"]["router_holdout"] == 0.3
    with pytest.raises(UserError, match="--router-holdout 1.0"):
        train.run_experts(TrainExpertsConfig(features, bank, tmp_path / "bad", router_holdout=1.0, **SMALL))
    assert not (tmp_path / "bad").exists()


def test_stage_one_validation_reuses_the_complete_pass_with_the_same_scores(world, trained):
    """Removing a modality changes only its own expert's output in stage 1, so validation runs the other
    experts once: its scores equal, to the last bit, those of three full passes."""
    from r2scp_cli.batches import predict
    from r2scp_cli.model import EXPERTS

    _, features, bank = world
    model, _ = load_model(trained[0] / "model.pt")
    data = train.open_data(features, bank)
    val = data.splits["val"]
    # Answers made to be the missing-audio pass's own predictions: that setting scores 100 %, the others
    # less, so a merge that took the wrong pass's audio expert would change the scores.
    audio = predict(model, val, "audio", data.videos, data.bank.neighbours, data.bank, 16, "cpu", route=False)
    val = data.splits["val"] = dataclasses.replace(val, answers=sum(audio[m] for m in EXPERTS).argmax(-1))
    full = {}
    for setting in train.SETTINGS:
        p = predict(model, val, setting, data.videos, data.bank.neighbours, data.bank, 16, "cpu", route=False)
        full[setting] = 100.0 * (sum(p[m] for m in EXPERTS).argmax(-1) == val.answers).sum().item() / len(val)
        if setting != "none":  # the experts that did not lose anything give what they gave with complete inputs
            complete = predict(model, val, "none", data.videos, data.bank.neighbours, data.bank, 16, "cpu", route=False)
            for m in EXPERTS:
                assert torch.equal(p[m], complete[m]) == (m != setting)
    assert full["audio"] == 100.0 and full["none"] < 100.0
    scores = train.validate(model, data, 1, 16, "cpu")
    assert {s: scores[s] for s in train.SETTINGS} == full
    with pytest.raises(ValueError, match="routing reads every expert"):
        model({"missing": torch.zeros(1, dtype=torch.long)}, route=True, experts=("audio",))


def test_cpu_threads_split_the_cores_between_processes_and_declared_jobs(monkeypatch):
    from r2scp_cli import batches

    monkeypatch.setattr(batches, "usable_cores", lambda: 8)
    monkeypatch.setattr(batches, "_side_by_side", 1)
    before = torch.get_num_threads()
    try:
        batches.limit_cpu_threads("cpu")
        assert torch.get_num_threads() == 8  # alone: every core
        batches.limit_cpu_threads("cpu", processes=2)
        assert torch.get_num_threads() == 4  # a torchrun run of 2
        batches.share_cores(2)
        batches.limit_cpu_threads("cpu", processes=2)
        assert torch.get_num_threads() == 2  # and another job beside it
        batches.share_cores(16)
        batches.limit_cpu_threads("cpu")
        assert torch.get_num_threads() == 1  # never below one
    finally:
        torch.set_num_threads(before)


def test_trust_match_trains_the_trust_on_whether_fills_resemble_the_truth(world, tmp_path):
    """--trust-match w: training batches carry, per retrieved and per random fill, which of its entries
    lie near the lost modality's own key (Bank.fill_matches); stage 1 adds w x the trust's binary
    cross-entropy against their share, for both fills. Without --trust it is a one-line error."""
    from r2scp_cli.batches import MATCH_SHARE, make_batch
    from r2scp_cli.model import MISSING_CODES, R2ScP

    root, features, paired = world
    bank_dir = bank_stage.run(BankConfig(features, tmp_path / "bank", keys="unified", neighbours=6, exact=True, check_recall=0))
    data = train.open_data(features, bank_dir)
    config = TrainExpertsConfig(features, bank_dir, root / "unused", trust=True, trust_match=1.0, **SMALL)
    torch.manual_seed(0)
    model = R2ScP(train.model_config_for(data.store, config, len(set(data.splits["train"].video_ids)))).eval()
    split = data.splits["train"]
    idx = np.arange(min(32, len(split)))
    missing = np.where(idx % 2 == 0, MISSING_CODES["audio"], MISSING_CODES["visual"])
    batch = make_batch(split, idx, missing, data.videos, model.cfg, data.bank.neighbours, data.bank, True)
    losses, bce = {}, {}
    for weight in (0.0, 1.0):
        out = model(batch, route=False)
        losses[weight] = expert_losses(model, batch, out, 0.1, 0.1, trust_match=weight)
    for m, rec in batch["recover"].items():
        vids = split.video_ids[idx[rec["rows"].numpy()]]
        entries = data.bank.neighbours(vids, m)[0][:, :3]
        expected = data.bank.fill_matches(vids, m, entries, MATCH_SHARE)
        np.testing.assert_array_equal(rec["candidates_match"].numpy(), expected)
        assert 0.0 < np.mean(expected) < 1.0 and np.isfinite(expected).all()
        negatives = data.bank.negatives(vids, m)[:, :3]
        np.testing.assert_array_equal(rec["negatives_match"].numpy(), data.bank.fill_matches(vids, m, negatives, MATCH_SHARE))
        r = out["recovery"][m]
        trusts = torch.cat([r["trust"], r["context"]["trust"]])  # the retrieved fill's, then the random fill's
        targets = torch.cat([rec["candidates_match"].mean(1), rec["negatives_match"].mean(1)])
        bce[m] = torch.nn.functional.binary_cross_entropy(trusts, targets)
        assert not torch.equal(r["trust"], r["context"]["trust"])
        torch.testing.assert_close(losses[1.0][m] - losses[0.0][m], bce[m])
    experts = train.run_experts(TrainExpertsConfig(features, bank_dir, tmp_path / "e", trust=True, trust_match=1.0,
                                                   **{**SMALL, "epochs": 1}))  # fmt: skip
    assert json.loads((experts / "meta.json").read_text())["config"]["trust_match"] == 1.0
    bad = ((dict(trust_match=1.0), bank_dir, "add --trust"), (dict(trust=True, trust_match=-1.0), bank_dir, "must be at least 0"),
           (dict(trust=True, trust_match=1.0), paired, "has paired keys"))  # fmt: skip
    for options, bank, message in bad:
        with pytest.raises(UserError, match=message):
            train.run_experts(TrainExpertsConfig(features, bank, tmp_path / "bad", **options, **SMALL))
        assert not (tmp_path / "bad").exists()
    result = CliRunner().invoke(app, ["train-experts", str(features), "--bank", str(bank_dir), "--out", str(tmp_path / "x"),
                                      "--trust-match", "0.5"])  # fmt: skip
    assert result.exit_code == 1 and "--trust-match trains the trust of retrieved fills: add --trust" in result.output
    assert not (tmp_path / "x").exists()
