"""Video tokens over the memory budget (DESIGN section 8): when a features file is larger than
``VideoTokens``' budget, training and evaluation read the tokens they need per batch from the HDF5
file, and get exactly what the in-memory path gets."""

import inspect
import json

import numpy as np
import pytest
import torch

from r2scp_cli import batches, evaluate, train
from r2scp_cli.batches import VideoTokens
from r2scp_cli.config import BankConfig, EvalConfig, TrainExpertsConfig, TrainRouterConfig
from r2scp_cli.features import FeatureStore
from r2scp_cli.retrieval import bank as bank_stage

torch.set_num_threads(1)
BATCH = 16


class Streamed(VideoTokens):
    """VideoTokens with a budget of 0 bytes: nothing fits, every token is read per batch."""

    def __init__(self, *args, **kwargs):
        kwargs["budget"] = 0
        super().__init__(*args, **kwargs)


def spy_on_reads(monkeypatch) -> list[tuple[int, str]]:
    """(videos, modality) of every read VideoTokens makes from the file."""
    reads = []
    original = VideoTokens._read

    def read(self, video_ids, modality, strict=True):
        reads.append((len(video_ids), str(modality)))
        return original(self, video_ids, modality, strict)

    monkeypatch.setattr(VideoTokens, "_read", read)
    return reads


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from conftest import make_features

    root = tmp_path_factory.mktemp("scale")
    features = make_features(root / "features.h5", n_videos=40, segments=4, questions_per_video=4)
    bank = bank_stage.run(BankConfig(features, root / "bank", keys="paired", neighbours=4, exact=True, check_recall=0))
    return root, features, bank


def test_over_budget_tokens_are_read_per_batch_and_equal_the_cached_ones(world, monkeypatch):
    _, features, _ = world
    with FeatureStore(features) as store:
        ids = list(store.video_ids)
        lost = np.array([True, False, False, True])
        hidden = {"audio": {ids[2]: lost, ids[5]: np.ones(4, bool)}}
        cached = VideoTokens(store, ids, hidden=hidden)
        assert cached.cache is not None
        reads = spy_on_reads(monkeypatch)
        streamed = VideoTokens(store, ids, hidden=hidden, budget=0)
        assert streamed.cache is None and reads == []  # nothing read up front
        for batch in (ids[:3], ids[6:12], [ids[9], ids[1]]):
            for m in ("audio", "visual"):
                reads.clear()
                tokens = streamed.get(batch, m)
                assert reads == [(len(batch), m)]  # one read of exactly the batch's videos
                assert tokens.shape == (len(batch), 4, store.info.dims[m])
                np.testing.assert_array_equal(tokens, cached.get(batch, m))
        partly = streamed.get([ids[2]], "audio")[0]
        assert not partly[lost].any() and np.array_equal(partly[~lost], store.tokens(ids[2], "audio")[~lost])
        with pytest.raises(RuntimeError):
            streamed.get([ids[5]], "audio")  # wholly hidden: never read


def _train_and_eval(root, features, bank, tag: str) -> tuple[dict, dict, list[str]]:
    experts = train.run_experts(TrainExpertsConfig(features, bank, root / f"experts-{tag}", epochs=1, d_model=32,
                                                   batch_size=BATCH, n=3))  # fmt: skip
    router = train.run_router(TrainRouterConfig(experts, root / f"router-{tag}", epochs=1, batch_size=BATCH))
    out = evaluate.run(EvalConfig(router, root / f"eval-{tag}", missing="audio", batch_size=BATCH))
    state = torch.load(router / "model.pt", map_location="cpu", weights_only=False)["state"]
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    return state, metrics, (out / "predictions.jsonl").read_text().splitlines()


def test_training_and_eval_over_budget_give_the_in_memory_results(world, monkeypatch):
    root, features, bank = world
    in_memory = _train_and_eval(root, features, bank, "memory")
    monkeypatch.setattr(train, "VideoTokens", Streamed)
    monkeypatch.setattr(evaluate, "VideoTokens", Streamed)
    reads = spy_on_reads(monkeypatch)
    streamed = _train_and_eval(root, features, bank, "streamed")
    assert reads, "the streamed run read no tokens per batch"
    assert in_memory[0].keys() == streamed[0].keys()
    for name, weights in in_memory[0].items():
        assert torch.equal(weights, streamed[0][name]), name
    assert in_memory[1] == streamed[1]
    assert in_memory[2] == streamed[2]


def test_evaluation_over_budget_never_reads_more_than_a_batch(world, monkeypatch):
    root, features, bank = world
    experts = train.run_experts(TrainExpertsConfig(features, bank, root / "experts-eval", epochs=1, d_model=32, batch_size=BATCH, n=3))
    monkeypatch.setattr(evaluate, "VideoTokens", Streamed)
    reads = spy_on_reads(monkeypatch)
    evaluate.run(EvalConfig(experts, root / "eval-batches", missing="audio", batch_size=BATCH))
    assert reads and max(videos for videos, _ in reads) <= BATCH
    assert {m for _, m in reads} == {"visual"}  # missing audio is never read


@pytest.mark.parametrize("recovery", ["cmr+cap", "cap"])
def test_training_over_budget_reads_at_most_a_chunk_outside_batches(world, monkeypatch, recovery):
    """Streamed, the input statistics (and `cap`'s priors) read the training tokens a chunk of videos at
    a time, never the whole split; the statistics equal the in-memory ones to float rounding."""
    root, features, bank = world
    monkeypatch.setattr(train, "STATISTICS_CHUNK", 8)
    config = TrainExpertsConfig(features, bank, root / f"stats-{recovery}", recovery=recovery, epochs=1, d_model=32,
                                batch_size=BATCH, n=3)  # fmt: skip
    data = train.open_data(features, bank)
    model = train.R2ScP(train.model_config_for(data.store, config, len(set(data.splits["train"].video_ids))))
    train.fit_input_statistics(model, data)
    in_memory = {name: buffer.clone() for name, buffer in model.named_buffers()}

    monkeypatch.setattr(train, "VideoTokens", Streamed)
    reads = spy_on_reads(monkeypatch)
    streamed = train.open_data(features, bank)
    assert streamed.videos.cache is None
    train.fit_input_statistics(model, streamed)
    if recovery == "cap":
        train.fit_cap_priors(model, streamed, seed=0)
    train_videos = len(set(streamed.splits["train"].video_ids))
    assert reads and max(videos for videos, _ in reads) == 8 < train_videos
    for name, buffer in model.named_buffers():
        if name.endswith(".mean") or name.endswith(".std"):
            torch.testing.assert_close(buffer, in_memory[name], rtol=1e-5, atol=1e-6)
    if recovery == "cap":
        assert torch.isfinite(model.prototypes_audio).all() and model.prototypes_audio.abs().sum() > 0


def test_the_default_budget_is_what_the_stages_use():
    assert inspect.signature(VideoTokens).parameters["budget"].default == batches.MEMORY_BUDGET


def test_a_bank_over_its_values_budget_reads_entries_per_batch_with_the_same_values(world, monkeypatch):
    """Bank values above VALUES_BUDGET are read per gather from the source files (never all at once)
    and equal the in-memory values, for index arrays of any shape."""
    from r2scp_cli.retrieval import bank as bank_module
    from r2scp_cli.retrieval.bank import Bank

    _, _, bank_dir = world
    idx = np.array([[3, 0, 3], [7, 1, 2]])
    cached = Bank.open(bank_dir)
    expected = {m: cached.gather(m, idx) for m in ("audio", "visual")}
    monkeypatch.setattr(bank_module, "VALUES_BUDGET", 0)
    monkeypatch.setattr(Bank, "values", lambda self, m: pytest.fail("all values were loaded"))
    streamed = Bank.open(bank_dir)
    for m, values in expected.items():
        got = streamed.gather(m, idx)
        assert got.shape == values.shape == (2, 3, 4, streamed.info.dims[m])
        np.testing.assert_array_equal(got, values)
    assert len(streamed._stores) == 1  # the features file, opened once
