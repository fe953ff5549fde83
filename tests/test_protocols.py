"""Missing-modality protocols (DESIGN §7): reproducible per-video masks, rate / mixed / partial loss in
eval and in training, the features of lost segments never read, partial recovery that keeps the
surviving segments."""

import json

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from r2scp_cli import evaluate, train
from r2scp_cli.cli import app
from r2scp_cli.config import BankConfig, EvalConfig, TrainExpertsConfig, TrainRouterConfig
from r2scp_cli.errors import UserError
from r2scp_cli.features import FeatureStore
from r2scp_cli.model import MISSING_CODES, ContextAwarePurification, rerank
from r2scp_cli.protocols import Protocol, bursts, eval_masks, simulate
from r2scp_cli.retrieval import bank as bank_stage

torch.set_num_threads(1)
SMALL = dict(epochs=2, d_model=32, batch_size=32, n=3)
T = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from conftest import make_features

    root = tmp_path_factory.mktemp("protocols")
    features = make_features(root / "features.h5", n_videos=40, segments=T, questions_per_video=4)
    bank = bank_stage.run(BankConfig(features, root / "bank", keys="paired", neighbours=6, exact=True, check_recall=0))
    experts = train.run_experts(TrainExpertsConfig(features, bank, root / "experts", **SMALL))
    router = train.run_router(TrainRouterConfig(experts, root / "router", epochs=1, batch_size=32))
    return root, features, bank, router


def test_masks_are_per_video_reproducible_and_exact_in_share():
    videos = np.repeat([f"v{i:03d}" for i in range(50)], 3)  # three questions per video
    protocol = Protocol("mixed", rate=0.7, partial=0.5, mask_seed=4)
    a, b = eval_masks(protocol, videos, T), eval_masks(protocol, videos, T)
    assert np.array_equal(a.missing, b.missing) and np.array_equal(a.lost, b.lost)
    other = eval_masks(Protocol("mixed", rate=0.7, partial=0.5, mask_seed=5), videos, T)
    assert not np.array_equal(a.lost, other.lost)
    affected = {v for v, code in zip(videos, a.missing) if code > 0}
    assert len(affected) == 35  # round(0.7 * 50) videos, exactly
    for video in set(videos):  # every question of a clip sees the same loss
        rows = np.flatnonzero(videos == video)
        assert len(set(a.missing[rows])) == 1 and (a.lost[rows] == a.lost[rows[0]]).all()
    codes = set(a.missing[a.missing > 0])
    assert codes == {MISSING_CODES["audio"], MISSING_CODES["visual"]}  # mixed: both occur
    lost = a.lost[a.missing > 0]
    assert (lost.sum(1) == 4).all()  # round(0.5 * 8) segments per affected clip
    assert not a.lost[a.missing == 0].any()
    # A lower rate affects a subset of the same videos, with the same masks.
    lower = eval_masks(Protocol("mixed", rate=0.3, partial=0.5, mask_seed=4), videos, T)
    hit = lower.missing > 0
    assert hit.sum() == 15 * 3 and np.array_equal(lower.lost[hit], a.lost[hit])
    assert np.array_equal(lower.missing[hit], a.missing[hit])


def test_bursts_are_contiguous_and_apart():
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(300):
        mask = bursts(5, 16, rng)
        assert mask.sum() == 5
        starts = np.flatnonzero(np.diff(np.r_[0, mask.astype(int)]) == 1)
        counts.add(len(starts))
    assert counts == {1, 2}
    assert bursts(8, 8, rng).all() and not bursts(0, 8, rng).any()


def test_training_simulation_keeps_the_whole_modality_draws_and_adds_partial():
    missing, lost = simulate(500, T, 0.5, np.random.default_rng(1))
    assert 200 < (missing > 0).sum() < 300 and (lost[missing > 0].all(1)).all() and not lost[missing == 0].any()
    missing_p, lost_p = simulate(500, T, 0.5, np.random.default_rng(1), "audio", partial=0.25)
    assert set(missing_p[missing_p > 0]) == {MISSING_CODES["audio"]}
    assert (lost_p[missing_p > 0].sum(1) == 2).all()
    assert np.array_equal(missing_p > 0, missing > 0)  # same samples chosen from the same seed


def _predictions(path):
    return [json.loads(line) for line in (path / "predictions.jsonl").read_text().splitlines()]


def test_rate_zero_equals_complete_and_every_protocol_is_stamped(world, tmp_path):
    root, features, bank, router = world
    complete = evaluate.run(EvalConfig(router, tmp_path / "none", missing="none"))
    rate0 = evaluate.run(EvalConfig(router, tmp_path / "rate0", missing="audio", rate=0.0))
    assert _predictions(complete) == _predictions(rate0)
    out = evaluate.run(EvalConfig(router, tmp_path / "mixed", missing="mixed", rate=0.5, partial=0.5, mask_seed=2))
    metrics = json.loads((out / "metrics.json").read_text())
    protocol = metrics["protocol"]
    assert protocol["name"] == "missing mixed · rate 0.5 · partial 0.5 · mask seed 2"
    assert protocol["affected_videos"] == round(0.5 * protocol["videos"])
    assert (protocol["rate"], protocol["partial"], protocol["mask_seed"]) == (0.5, 0.5, 2)
    assert metrics["evaluated"] == len(_predictions(out))
    whole = json.loads((complete / "metrics.json").read_text())["protocol"]
    assert whole["name"] == "complete" and whole["affected_videos"] == 0


def _copy(features, out):
    """A finished copy of a features file (with its meta)."""
    out.write_bytes(features.read_bytes())
    out.with_name(out.name + ".meta.json").write_text(features.with_name(features.name + ".meta.json").read_text())
    return out


def _poison_lost_segments(features, out, protocol: Protocol):
    """A copy of the features file with NaN exactly where the protocol's masks remove features."""
    _copy(features, out)
    with FeatureStore(features) as store:
        rows = store.questions.rows("test")
        video_ids = store.questions.video_id[rows]
    masks = eval_masks(protocol, video_ids, T)
    poisoned = 0
    with h5py.File(out, "r+") as h5:
        for m, videos in masks.hidden(video_ids).items():
            for video, lost in videos.items():
                data = h5[f"videos/{video}/{m}"][()]
                data[lost] = np.nan
                h5[f"videos/{video}/{m}"][...] = data
                poisoned += int(lost.sum())
                if lost.all():
                    h5[f"videos/{video}/{m}_global"][...] = np.nan
    return out, poisoned


@pytest.mark.parametrize(
    "protocol",
    [Protocol("audio", rate=0.5, mask_seed=1), Protocol("mixed", rate=0.7, mask_seed=3),
     Protocol("visual", partial=0.5, mask_seed=0), Protocol("mixed", rate=0.7, partial=0.25, mask_seed=5)],
    ids=lambda p: p.name,
)  # fmt: skip
def test_removed_features_are_never_read_under_any_protocol(world, tmp_path, protocol, monkeypatch):
    """NaN in exactly the removed features (whole modalities of some videos, lost segments) changes no
    prediction; the clean and the poisoned file give the same answers; and no read of the evaluated
    file ever asks for a removed segment."""
    root, features, bank, router = world
    poisoned, count = _poison_lost_segments(features, tmp_path / "poisoned.h5", protocol)
    assert count > 0
    reads = []
    original = FeatureStore.tokens

    def spy(self, video_id, modality, positions=None):
        if self.path == poisoned:
            reads.append((video_id, str(getattr(modality, "value", modality)), positions))
        return original(self, video_id, modality, positions)

    monkeypatch.setattr(FeatureStore, "tokens", spy)
    kwargs = dict(missing=protocol.missing, rate=protocol.rate, partial=protocol.partial, mask_seed=protocol.mask_seed)
    copy = _copy(features, tmp_path / "copy.h5")  # both read "another file", so both retrieve on the fly
    clean = evaluate.run(EvalConfig(router, tmp_path / "clean", features=copy, **kwargs))
    dirty = evaluate.run(EvalConfig(router, tmp_path / "dirty", features=poisoned, **kwargs))
    clean_answers = [(r["qid"], r["predicted"], r["weights"]) for r in _predictions(clean)]
    dirty_answers = [(r["qid"], r["predicted"], r["weights"]) for r in _predictions(dirty)]
    assert clean_answers == dirty_answers
    with FeatureStore(features) as store:
        hidden = eval_masks(protocol, store.questions.video_id[store.questions.rows("test")], T).hidden(
            store.questions.video_id[store.questions.rows("test")])
    assert reads
    for video, modality, positions in reads:
        lost = hidden[modality].get(video)
        if lost is not None:
            assert positions is not None and not lost[np.asarray(positions)].any(), (video, modality)
    assert "nan" not in (dirty / "predictions.jsonl").read_text().lower()


def test_partial_recovery_keeps_surviving_segments_and_cap_touches_only_lost_ones():
    torch.manual_seed(0)
    B, d = 4, 16
    cap = ContextAwarePurification(d, heads=2, k=3, dropout=0.0).eval()
    h = torch.randn(B, T, d)
    lost = torch.zeros(B, T, dtype=torch.bool)
    lost[:, 2:4] = True  # two lost positions, fewer than k = 3
    pool = torch.randn(B, 10, d)
    q = torch.randn(B, 5, d)
    out, info = cap(h, pool, [torch.randn(B, T, d)], q, torch.zeros(B, 5, dtype=torch.bool), torch.randn(B, d), lost)
    assert torch.equal(out[~lost], h[~lost])  # surviving positions untouched
    assert not torch.allclose(out[lost], h[lost])  # the lost ones were purified
    free, _ = cap(h, pool, [torch.randn(B, T, d)], q, torch.zeros(B, 5, dtype=torch.bool), torch.randn(B, d))
    assert (free != h).any(-1).sum(1).eq(3).all()  # without a mask: k positions anywhere


def test_rerank_prefers_the_neighbour_that_matches_the_surviving_segments():
    torch.manual_seed(0)
    B, N, d = 3, 6, 16
    candidates = torch.randn(B, N, T, d)
    own = torch.randn(B, T, d)
    lost = torch.zeros(B, T, dtype=torch.bool)
    lost[:, :4] = True
    candidates[:, 4, 4:] = own[:, 4:]  # neighbour 4 shares the clip's surviving segments
    sims = torch.full((B, N), 0.5)
    chosen, scores = rerank(candidates, sims, own, lost, n=2)
    assert chosen.shape == (B, 2, T, d)
    assert torch.equal(chosen[:, 0], candidates[:, 4])
    assert torch.allclose(scores[:, 0], torch.full((B,), 0.75))  # (0.5 + cos 1) / 2


def test_training_simulates_partial_loss_and_records_it(world, tmp_path):
    root, features, bank, router = world
    out = train.run_experts(TrainExpertsConfig(features, bank, tmp_path / "e", simulate="audio", partial=0.5,
                                               **{**SMALL, "epochs": 1}))  # fmt: skip
    checkpoint = torch.load(out / "model.pt", weights_only=False)
    assert checkpoint["model_config"]["trained_for"] == {"p_missing": 0.5, "simulate": "audio", "partial": 0.5}
    routed = train.run_router(TrainRouterConfig(out, tmp_path / "r", epochs=1, batch_size=32, partial=0.5))
    result = evaluate.run(EvalConfig(routed, tmp_path / "eval", missing="audio", partial=0.5))
    metrics = json.loads((result / "metrics.json").read_text())
    assert metrics["protocol"]["name"] == "missing audio · partial 0.5 · mask seed 0"
    assert 0.0 <= metrics["metrics"]["overall"]["accuracy"] <= 100.0


@pytest.mark.parametrize(
    "args, message",
    [(["--missing", "both"], "--missing both: choose one of"), (["--missing", "audio", "--rate", "1.5"], "--rate 1.5"),
     (["--missing", "audio", "--partial", "0"], "--partial 0.0"), (["--missing", "text", "--partial", "0.5"], "--partial")],
)  # fmt: skip
def test_bad_protocol_flags_are_one_line_errors_with_no_output(world, tmp_path, args, message):
    root, features, bank, router = world
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", str(router), "--out", str(out), *args])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_bad_simulation_flags_fail_before_any_output(world, tmp_path):
    root, features, bank, router = world
    for kwargs, message in (({"simulate": "text"}, "--simulate text"), ({"partial": 1.5}, "--partial 1.5")):
        with pytest.raises(UserError, match=message):
            train.run_experts(TrainExpertsConfig(features, bank, tmp_path / "e", **SMALL, **kwargs))
        assert not (tmp_path / "e").exists()


def test_noise_identification_is_scored_against_the_recorded_truth(world, tmp_path):
    """A features file whose audio is marked degraded on every segment of half the videos and on none
    of the others: every position CAP chooses is corrupted exactly on the first half, so precision is
    that half's share of questions, as is its chance level; recall is k / T."""
    root, features, bank, router = world
    degraded = _copy(features, tmp_path / "degraded.h5")
    with h5py.File(degraded, "r+") as h5:
        videos = sorted(h5["videos"])
        for i, video in enumerate(videos):
            h5[f"videos/{video}"].create_dataset("degraded_audio", data=np.full(T, i % 2 == 0))
        h5.attrs["degrade"] = "audio:noise=0,share=1"
        h5.attrs["degrade_seed"] = 0
    out = evaluate.run(EvalConfig(router, tmp_path / "eval", features=degraded))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"]["degraded"] == "audio:noise=0,share=1"
    found = metrics["degradation"]["noise_identification"]
    assert set(found) == {"audio"}  # only the degraded modality is scored
    with FeatureStore(features) as store:
        test_videos = store.questions.video_id[store.questions.rows("test")]
    share = np.mean([videos.index(v) % 2 == 0 for v in test_videos])
    k = int(np.ceil(0.25 * T))
    assert found["audio"]["precision"] == pytest.approx(share)
    assert found["audio"]["chance_precision"] == pytest.approx(share)
    assert found["audio"]["recall"] == pytest.approx(k / T) and found["audio"]["chance_recall"] == k / T


def test_demo_protocol_sweep_feeds_the_rate_curve(world, tmp_path):
    """`demo --protocols` evaluates missing audio/visual at the sweep's rates and partial loss; with the
    complete and all-or-nothing evaluations the report draws a five-point curve per modality."""
    from r2scp_cli import demo, report
    from r2scp_cli.config import ReportConfig

    root, features, bank, router = world
    run_dir = tmp_path / "cmr+cap-seed0"
    for missing in ("none", "audio", "visual"):
        evaluate.run(EvalConfig(router, run_dir / f"eval-{missing}", missing=missing))
    demo.evaluate_protocols(router, run_dir)
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == sorted(["eval-none", "eval-audio", "eval-visual", "eval-audio-partial0.5", "eval-visual-partial0.5"]
                           + [f"eval-{m}-rate{r:g}" for m in ("audio", "visual") for r in demo.SWEEP_RATES])  # fmt: skip
    out = report.run(ReportConfig((run_dir,), tmp_path / "report"))
    saved = json.loads((out / "report.json").read_text())
    assert [c["missing"] for c in saved["curves"]] == ["audio", "visual"]
    assert all(c["rates"] == ["0", "0.3", "0.5", "0.7", "1"] for c in saved["curves"])
    complete = json.loads((run_dir / "eval-none" / "metrics.json").read_text())["metrics"]["overall"]["accuracy"]
    assert saved["curves"][0]["lines"]["cmr+cap"]["0"]["mean"] == complete


def test_predictions_carry_the_fill_confidence_of_recovered_questions(world, tmp_path):
    root, features, bank, router = world
    out = evaluate.run(EvalConfig(router, tmp_path / "mixed", missing="audio", rate=0.5))
    records = _predictions(out)
    video_ids, codes = _test_masks(features, Protocol("audio", rate=0.5))
    hit = {video for video, code in zip(video_ids, codes) if code > 0}
    for record in records:
        if record["video_id"] in hit:
            assert -1.0 <= record["confidence"] <= 1.0
        else:
            assert record["confidence"] is None
        assert record["trust"] is None  # trained without --trust
    assert any(r["confidence"] is not None for r in records) and any(r["confidence"] is None for r in records)


def _test_masks(features, protocol):
    with FeatureStore(features) as store:
        video_ids = store.questions.video_id[store.questions.rows("test")]
    return video_ids, eval_masks(protocol, video_ids, T).missing
