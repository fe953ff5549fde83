"""`build-bank --segment-keys` and `--rerank-labels`: late interaction over segment keys, the label
re-rank of the top candidates, their leak rules (own video, missing modality) and one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import make_features
from typer.testing import CliRunner

from r2scp_cli import artifacts
from r2scp_cli.cli import app
from r2scp_cli.config import BankConfig, Modality
from r2scp_cli.features import FeatureStore
from r2scp_cli.retrieval.bank import ENTRIES_FILE, Bank, run
from r2scp_cli.retrieval.binder import fold_of, load_binder
from r2scp_cli.retrieval.rescoring import RERANK_WEIGHT

MEDIA = Modality.media()
runner = CliRunner()


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    return make_features(tmp_path_factory.mktemp("options") / "features.h5", n_videos=60, seed=3)


@pytest.fixture(scope="module")
def banks(features, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("option-banks")
    common = {"keys": "bind", "weak_labels": True, "exact": True, "neighbours": 16}
    return {
        "weak": run(BankConfig(features, root / "weak", **common)),
        "seg": run(BankConfig(features, root / "seg", segment_keys=True, **common)),
        "rerank": run(BankConfig(features, root / "rerank", rerank_labels=True, **common)),
        # HNSW index (ef 8 < bank), candidates gathered by clip key, then rescored
        "seg-hnsw": run(
            BankConfig(features, root / "seg-hnsw", keys="bind", weak_labels=True, segment_keys=True, neighbours=4, ef=8)
        ),
    }


def _late(q_keys, q_weights, k_keys, k_weights) -> np.ndarray:
    """Symmetric attention-weighted MaxSim, written out pair by pair: [Q, E]."""
    out = np.zeros((len(q_keys), len(k_keys)))
    for i in range(len(q_keys)):
        for j in range(len(k_keys)):
            s = q_keys[i] @ k_keys[j].T  # [T, U]
            out[i, j] = 0.5 * ((s.max(1) * q_weights[i]).sum() + (s.max(0) * k_weights[j]).sum())
    return out


def test_segment_lists_equal_brute_force_late_interaction_and_skip_the_own_video(features, banks):
    bank = Bank.open(banks["seg"])
    meta = artifacts.read_json(banks["seg"] / "meta.json")
    assert meta["config"]["segment_keys"] is True and meta["config"]["rerank_labels"] is False
    assert "late interaction" in meta["figures"]["audio"]["key_quality"]["space"]
    entry_ids = np.asarray(bank.entry_video_ids())
    with h5py.File(banks["seg"] / ENTRIES_FILE, "r") as h5:
        assert h5["segment_keys/audio"].shape == (3, len(entry_ids), 4, 64)
        assert h5["segment_weights/visual"].shape == (3, len(entry_ids), 4)
        np.testing.assert_allclose(h5["segment_weights/visual"][()].sum(-1), 1.0, atol=1e-5)
    binders = [load_binder(banks["seg"] / f"binder_{f}.pt") for f in range(3)]
    with FeatureStore(features) as store:
        ids = store.video_ids
        folds = fold_of(ids, 3)
        for m in MEDIA:
            idx, sims = bank.neighbours(ids, m)
            assert idx.shape == (len(ids), 16)
            assert np.all(entry_ids[idx] != np.asarray(ids)[:, None])  # never the own video
            entry_tokens = store.stack_tokens(list(entry_ids), m)
            for f, binder in enumerate(binders):
                group = [v for v, g in zip(ids, folds) if g == f]
                q_keys, q_weights = binder.embed_segments(store.stack_tokens(group, m.other()), m.other())
                k_keys, k_weights = binder.embed_segments(entry_tokens, m)
                expected = _late(q_keys, q_weights, k_keys, k_weights)
                expected[np.asarray(group)[:, None] == entry_ids[None, :]] = -np.inf
                rows = np.flatnonzero(folds == f)
                top = np.argsort(-expected, axis=1, kind="stable")[:, :16]
                np.testing.assert_array_equal(idx[rows], top)
                np.testing.assert_allclose(sims[rows], np.take_along_axis(expected, top, axis=1), atol=1e-5)


def test_segment_lists_through_hnsw_gather_then_rescore(banks):
    """The HNSW bank gathers max(4 n, 64) candidates by clip key (here the whole bank) and rescores them:
    its lists are the exact late-interaction lists."""
    meta = artifacts.read_json(banks["seg-hnsw"] / "meta.json")
    assert meta["figures"]["search"] == "hnsw"
    assert meta["figures"]["audio"]["hnsw_recall"] == 1.0 and meta["figures"]["visual"]["hnsw_recall"] == 1.0
    hnsw, exact = Bank.open(banks["seg-hnsw"]), Bank.open(banks["seg"])
    ids = sorted(set(hnsw.entry_video_ids()))
    for m in MEDIA:
        np.testing.assert_array_equal(hnsw.neighbours(ids, m)[0], exact.neighbours(ids, m)[0][:, :4])


def test_rerank_reorders_the_same_candidates_by_heard_label_agreement(features, banks):
    plain, reranked = Bank.open(banks["weak"]), Bank.open(banks["rerank"])
    meta = artifacts.read_json(banks["rerank"] / "meta.json")
    labels = meta["figures"]["rerank"]["labels"]
    assert meta["config"]["rerank_labels"] is True and labels and all(n.startswith("heard:") for n in labels)
    binders = [load_binder(banks["rerank"] / f"binder_{f}.pt") for f in range(3)]
    assert all(b.label_head is not None and set(labels) <= set(b.label_names) for b in binders)
    assert load_binder(banks["weak"] / "binder_0.pt").label_head is not None  # --weak-labels keeps its head
    with h5py.File(banks["rerank"] / ENTRIES_FILE, "r") as h5:
        keys = {m: h5[f"keys/{m.value}"][()] for m in MEDIA}
    moved = 0
    with FeatureStore(features) as store:
        ids = store.video_ids
        folds = fold_of(ids, 3)
        for m in MEDIA:
            before, before_sims = plain.neighbours(ids, m)
            after, after_sims = reranked.neighbours(ids, m)
            np.testing.assert_array_equal(np.sort(before, axis=1), np.sort(after, axis=1))  # the same 16
            for f, binder in enumerate(binders):
                rows = np.flatnonzero(folds == f)
                columns = [binder.label_names.index(n) for n in labels]
                queries = binder.embed(store.stack_tokens([ids[r] for r in rows], m.other()), m.other())
                queries /= np.linalg.norm(queries, axis=1, keepdims=True)
                with torch.no_grad():
                    p_q = torch.sigmoid(binder.label_head(torch.from_numpy(queries))).numpy()[:, columns]
                    p_e = torch.sigmoid(binder.label_head(torch.from_numpy(keys[m][f]))).numpy()[:, columns]
                cand = p_e[before[rows]]
                agree = np.log(p_q[:, None] * cand + (1 - p_q[:, None]) * (1 - cand) + 1e-4).mean(-1)
                s = before_sims[rows]
                z = (s - s.mean(1, keepdims=True)) / (s.std(1, keepdims=True) + 1e-6)
                order = np.argsort(-(z + RERANK_WEIGHT * agree), axis=1, kind="stable")
                np.testing.assert_array_equal(after[rows], np.take_along_axis(before[rows], order, axis=1))
                np.testing.assert_allclose(after_sims[rows], np.take_along_axis(s, order, axis=1), atol=1e-6)
            moved += int((after != before).any(axis=1).sum())
    assert moved > len(ids) // 2  # the re-rank does reorder most lists


@pytest.mark.parametrize("name", ["seg", "rerank"])
def test_search_with_the_options_never_reads_the_missing_modality(features, banks, tmp_path, name):
    """Bank.search rebuilds the lists from the available modality only: NaN in the missing one changes nothing."""
    bank = Bank.open(banks[name])
    with FeatureStore(features) as store:
        ids = store.video_ids[:30]
    for m in MEDIA:
        poisoned = tmp_path / f"poisoned_{m.value}.h5"
        shutil.copy(features, poisoned)
        with h5py.File(poisoned, "a") as h5:
            for video in ids:
                for key in (m.value, f"{m.value}_global"):
                    h5[f"videos/{video}/{key}"][...] = np.nan
        with FeatureStore(poisoned) as store:
            idx, sims = bank.search(store, ids, m, 16)
        expected_idx, expected_sims = bank.neighbours(ids, m)
        np.testing.assert_array_equal(idx, expected_idx)
        np.testing.assert_allclose(sims, expected_sims, atol=1e-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--keys", "paired", "--segment-keys"],
            "--segment-keys keys a clip by the segments of the binder of --keys bind; these keys are paired",
        ),
        (["--keys", "bind", "--rerank-labels"], "--rerank-labels re-ranks with the weak-label head that --weak-labels trains"),
    ],
)
def test_options_without_what_they_need_are_one_line_errors_leaving_nothing(features, tmp_path, options, message):
    out = tmp_path / "bank"
    result = runner.invoke(app, ["build-bank", str(features), "--out", str(out), *options])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0]
    assert not out.exists()
