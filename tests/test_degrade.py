"""`r2scp extract --degrade`: the spec grammar, exact SNR, per-segment corruption of decoded media,
recorded masks, and features that change only where the media did."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_extract import assert_same_content, config, crash_decoder_after, music_avqa_dataset
from typer.testing import CliRunner

from r2scp_cli import degrade, extract
from r2scp_cli.artifacts import meta_path
from r2scp_cli.cli import app
from r2scp_cli.encoders.handcrafted import HandcraftedEncoder
from r2scp_cli.errors import UserError
from r2scp_cli.features import FeatureStore
from r2scp_cli.media import AUDIO_RATE, decode_clip, write_mp4

T = 8
VIDEOS = [f"{i:08d}" for i in range(40)]


def write_enveloped_clip(path: Path, seed: int = 0, seconds: float = 2.0, fps: int = 4) -> None:
    """Random frames and a tone whose loudness changes from segment to segment (so each segment has
    its own signal power)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, (int(seconds * fps), 48, 48, 3), dtype=np.uint8)
    samples = int(seconds * AUDIO_RATE)
    envelope = np.repeat(rng.uniform(0.05, 0.6, T), samples // T)
    tone = envelope * np.sin(2 * np.pi * 440 * np.arange(samples) / AUDIO_RATE)
    write_mp4(path, frames, fps, tone.astype(np.float32))


@pytest.fixture(name="clip")
def clip_fixture(tmp_path):
    path = tmp_path / "clip.mp4"
    write_enveloped_clip(path)
    return decode_clip(path, T, (64, 64), "00000007")


def spans(clip):
    return degrade.segment_edges(len(clip.audio), T)


def snr_db(clean: np.ndarray, corrupted: np.ndarray) -> float:
    noise = corrupted.astype(np.float64) - clean.astype(np.float64)
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))


# --------------------------------------------------------------------------- grammar


def test_spec_is_parsed_to_its_canonical_form():
    spec = degrade.parse(" Audio:Noise=0dB, share=0.5 ; visual:blur=3,share=0.3,pick=independent;audio:dropout;", seed=4)
    assert spec.seed == 4 and spec.modalities == ("audio", "visual")
    noise, blur, dropout = spec.corruptions
    assert (noise.modality, noise.name, noise.value, noise.share, noise.pick) == ("audio", "noise", 0.0, 0.5, "burst")
    assert (blur.name, blur.value, blur.share, blur.pick) == ("blur", 3.0, 0.3, "independent")
    assert (dropout.value, dropout.share) == (None, 1.0)  # share defaults to every segment
    assert spec.spec == (
        "audio:noise=0dB,share=0.5,pick=burst;visual:blur=3,share=0.3,pick=independent;audio:dropout,share=1,pick=burst"
    )
    assert degrade.parse(spec.spec, 4) == spec  # the canonical form parses back to the same spec
    assert degrade.parse("audio:babble=-7.5", 0).corruptions[0].value == -7.5  # "dB" is optional
    assert degrade.parse("", 0) is None and degrade.parse(" ; ", 0) is None


@pytest.mark.parametrize("spec, message", [
    ("audio:hiss=3", "unknown corruption 'hiss' for audio; choose one of: noise, babble, dropout"),
    ("visual:noise=3", "unknown corruption 'noise' for visual; choose one of: blur, occlude, freeze"),
    ("sound:noise=3", "unknown modality 'sound'; choose one of: audio, visual"),
    ("audio:noise=0dB,share=0", "share must be a number in (0, 1], got '0'"),
    ("audio:noise=0dB,share=1.01", "share must be a number in (0, 1], got '1.01'"),
    ("audio:noise=0dB,share=half", "share must be a number in (0, 1], got 'half'"),
    ("audio:noise=loud,share=0.5", "noise needs an SNR in dB, e.g. noise=0dB; got 'loud'"),
    ("audio:babble", "babble needs an SNR in dB, e.g. babble=0dB; got ''"),
    ("audio:noise=inf", "noise needs an SNR in dB"),
    ("visual:blur=-1", "blur needs a radius in pixels > 0"),
    ("visual:occlude=1.5", "occlude needs the share of the frame it covers in (0, 1]"),
    ("visual:freeze=2", "freeze takes no value"),
    ("audio:dropout,every=2", "unknown option 'every'"),
    ("audio:dropout,pick=sometimes", "pick must be one of: burst, independent; got 'sometimes'"),
    ("audio:dropout,share=0.5,share=0.2", "share is given twice"),
    ("noise=0dB", "expected MODALITY:CORRUPTION"),
])  # fmt: skip
def test_bad_specs_are_one_line_errors_naming_the_clause(spec, message):
    with pytest.raises(UserError) as error:
        degrade.parse(f"visual:blur=2;{spec}", 0)
    text = str(error.value)
    assert text.startswith(f"--degrade '{spec}': ") and message in text and "\n" not in text


# --------------------------------------------------------------------------- which segments


@pytest.mark.parametrize("clause, count", [
    ("audio:noise=0,share=0.25", 2), ("audio:noise=0,share=0.3", 2), ("audio:noise=0,share=0.35", 3),
    ("audio:noise=0,share=0.5", 4), ("audio:noise=0,share=0.0625", 1), ("audio:noise=0,share=0.01", 1),
    ("audio:noise=0,share=1", 8), ("visual:freeze,share=1", 7), ("visual:freeze,share=0.5", 4),
])  # fmt: skip  round(share * T) half up, at least 1; a freeze never hits segment 0
@pytest.mark.parametrize("pick", ["burst", "independent"])
def test_share_is_respected_and_bursts_are_contiguous(clause, count, pick):
    spec = degrade.parse(f"{clause},pick={pick}", seed=0)
    modality = spec.modalities[0]
    masks = np.stack([spec.masks(v, T)[modality] for v in VIDEOS])
    assert masks.shape == (len(VIDEOS), T) and (masks.sum(axis=1) == count).all()
    if clause.startswith("visual:freeze"):
        assert not masks[:, 0].any()
    runs = [np.diff(np.flatnonzero(row)) for row in masks]
    if pick == "burst":
        assert all((gaps == 1).all() for gaps in runs)
    elif 1 < count < T - 1:
        assert any((gaps > 1).any() for gaps in runs)  # 40 videos: some draws are not one run
    if count < T - 1:  # every position is hit by some video
        assert masks.any(axis=0)[1 if "freeze" in clause else 0 :].all()


def test_masks_are_reproducible_from_the_seed_and_per_video():
    text = "audio:noise=0dB,share=0.25;visual:occlude=0.2,share=0.5,pick=independent"
    first, again, other = degrade.parse(text, 0), degrade.parse(text, 0), degrade.parse(text, 1)
    for modality in ("audio", "visual"):
        a = np.stack([first.masks(v, T)[modality] for v in VIDEOS])
        assert np.array_equal(a, np.stack([again.masks(v, T)[modality] for v in VIDEOS]))
        b = np.stack([other.masks(v, T)[modality] for v in VIDEOS])
        assert (a != b).any(axis=1).sum() >= len(VIDEOS) // 4  # another seed: other segments
        assert len({row.tobytes() for row in a}) > 1  # videos differ
    assert any(not np.array_equal(first.masks(v, T)["audio"][:4], first.masks(v, T)["visual"][:4]) for v in VIDEOS)


# --------------------------------------------------------------------------- audio


@pytest.mark.parametrize("kind", ["noise", "babble"])
@pytest.mark.parametrize("snr", [0.0, 12.5, -6.0])
def test_noise_has_the_exact_snr_and_leaves_other_segments_bit_identical(clip, kind, snr):
    spec = degrade.parse(f"audio:{kind}={snr}dB,share=0.5,pick=independent", seed=3)
    original = clip.audio.copy()
    corrupted = spec.apply(clip)
    mask = spec.masks(clip.video_id, T)["audio"]
    assert mask.sum() == 4 and corrupted.audio.dtype == np.float32 and len(corrupted.audio) == len(clip.audio)
    edges = spans(clip)
    measured = []
    for i in range(T):
        clean, noisy = clip.audio[edges[i] : edges[i + 1]], corrupted.audio[edges[i] : edges[i + 1]]
        if mask[i]:
            measured.append(snr_db(clean, noisy))
        else:
            assert np.array_equal(clean, noisy), i
    assert np.allclose(measured, snr, atol=0.1), measured
    assert np.array_equal(corrupted.frames, clip.frames)  # an audio spec leaves the picture alone
    assert np.array_equal(clip.audio, original)  # the input clip itself is not modified


def test_babble_is_made_of_the_clip_and_white_noise_is_flat(clip):
    edges = spans(clip)
    for kind in ("noise", "babble"):
        corrupted = degrade.parse(f"audio:{kind}=0dB", seed=0).apply(clip)
        noise = (corrupted.audio.astype(np.float64) - clip.audio)[edges[2] : edges[3]]
        spectrum = np.abs(np.fft.rfft(noise)) ** 2
        tone_bin = round(440 * len(noise) / AUDIO_RATE)
        share_at_tone = spectrum[tone_bin - 2 : tone_bin + 3].sum() / spectrum.sum()
        if kind == "babble":  # shifted copies of a 440 Hz track: the noise is mostly that tone
            assert share_at_tone > 0.5
        else:  # white: 5 of ~2000 bins hold about their share of the power
            assert share_at_tone < 0.02


def test_dropout_silences_exactly_the_recorded_segments(clip):
    spec = degrade.parse("audio:dropout,share=0.25", seed=5)
    corrupted, mask = spec.apply(clip), spec.masks(clip.video_id, T)["audio"]
    edges = spans(clip)
    for i in range(T):
        piece = corrupted.audio[edges[i] : edges[i + 1]]
        assert (not piece.any()) if mask[i] else np.array_equal(piece, clip.audio[edges[i] : edges[i + 1]])
    assert mask.sum() == 2 and clip.audio[edges[np.argmax(mask)] :].any()


# --------------------------------------------------------------------------- video


def changed_frames(clean, corrupted) -> np.ndarray:
    return np.array([not np.array_equal(a, b) for a, b in zip(clean.frames, corrupted.frames)])


def roughness(frame: np.ndarray) -> float:
    return float(np.abs(np.diff(frame.astype(np.float64), axis=1)).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blur_occlusion_and_freeze_change_exactly_the_recorded_frames(clip, seed):
    for text in ("visual:blur=3,share=0.3", "visual:occlude=0.25,share=0.5,pick=independent", "visual:freeze,share=0.5"):
        spec = degrade.parse(text, seed)
        corrupted, mask = spec.apply(clip), spec.masks(clip.video_id, T)["visual"]
        assert np.array_equal(changed_frames(clip, corrupted), mask), text
        assert np.array_equal(corrupted.audio, clip.audio)
        height, width = clip.frames.shape[1:3]
        for i in np.flatnonzero(mask):
            frame = corrupted.frames[i]
            if "blur" in text:  # random pixels: a Gaussian blur removes most of the pixel-to-pixel change
                assert roughness(frame) < 0.6 * roughness(clip.frames[i])
            elif "occlude" in text:  # a black box of a quarter of the frame, the frame's shape
                rows, cols = np.nonzero((frame != clip.frames[i]).any(axis=-1))
                box = frame[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
                assert box.shape[:2] == (height // 2, width // 2) and not box.any()
            else:  # the last good frame before the burst
                good = max(j for j in range(i) if not mask[j])
                assert np.array_equal(frame, clip.frames[good])


# --------------------------------------------------------------------------- features files


DEGRADE = "audio:noise=0dB,share=0.5;visual:occlude=0.3,share=0.5,pick=independent"


@pytest.fixture(name="clean_and_degraded", scope="module")
def clean_and_degraded_fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("degraded")
    dataset = music_avqa_dataset(root / "data", videos=4)
    clean = extract.run(config(dataset, root / "clean.h5"), workers=0)
    degraded = extract.run(config(dataset, root / "degraded.h5", degrade=DEGRADE, degrade_seed=2), workers=0)
    return dataset, clean, degraded


def test_degraded_file_records_its_masks_and_stays_compatible(clean_and_degraded):
    dataset, clean_path, degraded_path = clean_and_degraded
    spec = degrade.parse(DEGRADE, 2)
    with FeatureStore(clean_path) as clean, FeatureStore(degraded_path) as degraded:
        assert degraded.info.compatible(clean.info) and degraded.info == clean.info  # same encoder, version, dims
        assert degraded.answers == clean.answers and degraded.video_ids == clean.video_ids
        rows = np.arange(len(clean.questions))
        for name, array in clean.question_arrays(rows).items():
            assert np.array_equal(array, degraded.question_arrays(rows)[name]), name
        assert clean.degradation is None and clean.degraded_segments(clean.video_ids, "audio") is None
        assert degraded.degradation == {"spec": spec.spec, "seed": 2, "modalities": ["audio", "visual"]}
        for modality in ("audio", "visual"):
            masks = degraded.degraded_segments(degraded.video_ids, modality)
            assert masks.dtype == bool and masks.shape == (4, 4) and (masks.sum(axis=1) == 2).all()
            expected = np.stack([spec.masks(v, 4)[modality] for v in degraded.video_ids])
            assert np.array_equal(masks, expected)
            assert degraded.degraded_segments([], modality).shape == (0, 4)
    with h5py.File(degraded_path, "r") as h5:
        assert h5.attrs["degrade"] == spec.spec and h5.attrs["degrade_seed"] == 2
    with h5py.File(clean_path, "r") as h5:
        assert h5.attrs["degrade"] == "none" and "degrade_seed" not in h5.attrs
        assert "degraded_audio" not in h5["videos/00000000"]
    figures = json.loads(meta_path(degraded_path).read_text())["figures"]
    assert figures["degrade"] == {"spec": spec.spec, "seed": 2, "segments": {"audio": 8, "visual": 8}, "of_segments": 16}


def test_features_change_only_on_the_corrupted_segments(clean_and_degraded):
    """Handcrafted tokens are local: an audio token reads only its segment's samples; a visual token
    reads its frame, and its motion cue (the last value of each grid cell) also the previous frame
    (segment 0: the next one)."""
    dataset, clean_path, degraded_path = clean_and_degraded
    encoder = HandcraftedEncoder(4)
    cell = encoder.visual.cell_dim
    with FeatureStore(clean_path) as clean, FeatureStore(degraded_path) as degraded:
        for video in clean.video_ids:
            audio_mask = degraded.degraded_segments([video], "audio")[0]
            before, after = clean.tokens(video, "audio"), degraded.tokens(video, "audio")
            for i in range(4):
                same = np.array_equal(before[i], after[i])
                assert same != audio_mask[i], (video, i)
            visual_mask = degraded.degraded_segments([video], "visual")[0]
            before = clean.tokens(video, "visual").reshape(4, -1, cell)
            after = degraded.tokens(video, "visual").reshape(4, -1, cell)
            for i in range(4):
                neighbour = visual_mask[1] if i == 0 else visual_mask[i - 1]
                if visual_mask[i]:
                    assert not np.allclose(before[i], after[i], atol=1e-2), (video, i)
                else:
                    assert np.array_equal(before[i, :, :-1], after[i, :, :-1]), (video, i)  # picture cues
                    assert np.array_equal(before[i, :, -1], after[i, :, -1]) != neighbour, (video, i)  # motion
    # the file holds the encoder's tokens of the corrupted decode
    clip = decode_clip(dataset / "videos" / "00000001.mp4", 4, encoder.frame_size, "00000001")
    expected = encoder.encode_clips([degrade.parse(DEGRADE, 2).apply(clip)])[0]
    with FeatureStore(degraded_path) as degraded:
        assert np.allclose(degraded.tokens("00000001", "audio"), expected["audio"], rtol=2e-3, atol=2e-3)
        assert np.allclose(degraded.tokens("00000001", "visual"), expected["visual"], rtol=2e-3, atol=2e-3)


def test_worker_processes_and_resume_give_the_same_degraded_file(clean_and_degraded, tmp_path, monkeypatch):
    dataset, _, degraded_path = clean_and_degraded
    pooled = extract.run(config(dataset, tmp_path / "pooled.h5", degrade=DEGRADE, degrade_seed=2), workers=2)
    assert_same_content(pooled, degraded_path)
    out = tmp_path / "resumed.h5"
    _, real_decode = crash_decoder_after(monkeypatch, 3)
    with pytest.raises(RuntimeError, match="power cut"):
        extract.run(config(dataset, out, degrade=DEGRADE, degrade_seed=2), workers=0)
    monkeypatch.setattr(extract, "decode_clip", real_decode)
    with pytest.raises(UserError, match="resumed.h5.partial: an unfinished extraction with other settings \\(degrade"):
        extract.run(config(dataset, out), workers=0)  # a clean run does not resume a degraded partial file
    extract.run(config(dataset, out, degrade=DEGRADE, degrade_seed=2), workers=0)
    assert_same_content(out, degraded_path)


def test_only_the_degraded_modality_has_masks(tmp_path):
    dataset = music_avqa_dataset(tmp_path / "data", videos=2)
    out = extract.run(config(dataset, tmp_path / "f.h5", degrade="visual:freeze,share=0.5", degrade_seed=9), workers=0)
    with FeatureStore(out) as store:
        assert store.degraded_segments(store.video_ids, "audio") is None
        masks = store.degraded_segments(store.video_ids, "visual")
        assert masks.shape == (2, 4) and (masks.sum(axis=1) == 2).all() and not masks[:, 0].any()


# --------------------------------------------------------------------------- bad input


@pytest.fixture(name="small_dataset", scope="module")
def small_dataset_fixture(tmp_path_factory):
    return music_avqa_dataset(tmp_path_factory.mktemp("small") / "data", videos=1)


@pytest.mark.parametrize("spec, message", [
    ("audio:hiss=3,share=0.5", "--degrade 'audio:hiss=3,share=0.5': unknown corruption 'hiss' for audio"),
    ("audio:noise=0dB,share=0", "--degrade 'audio:noise=0dB,share=0': share must be a number in (0, 1], got '0'"),
    ("visual:blur=3,share=1.5", "--degrade 'visual:blur=3,share=1.5': share must be a number in (0, 1], got '1.5'"),
    ("audio:noise=loud", "--degrade 'audio:noise=loud': noise needs an SNR in dB, e.g. noise=0dB; got 'loud'"),
])  # fmt: skip
def test_cli_bad_spec_is_one_line_and_leaves_no_file(small_dataset, tmp_path, spec, message):
    result = CliRunner().invoke(app, ["extract", str(small_dataset), "--out", str(tmp_path / "f.h5"), "--degrade", spec])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in " ".join(result.output.split())
    assert list(tmp_path.glob("f.h5*")) == []


def test_freeze_needs_two_segments_and_npy_features_cannot_be_degraded(small_dataset, tmp_path):
    with pytest.raises(UserError, match="freeze needs at least 2 segments \\(--segments 1\\)"):
        extract.run(config(small_dataset, tmp_path / "f.h5", segments=1, degrade="visual:freeze"))
    npy = tmp_path / "npy"
    npy.mkdir()
    cfg = config(small_dataset, tmp_path / "f.h5", encoder="npy", audio_npy=npy, visual_npy=npy, degrade="audio:dropout")
    with pytest.raises(UserError, match="--degrade corrupts decoded media; encoder 'npy' reads no media"):
        extract.run(cfg)
    assert list(tmp_path.glob("f.h5*")) == []


def test_cli_extract_degrade_writes_the_spec(small_dataset, tmp_path):
    out = tmp_path / "f.h5"
    args = ["extract", str(small_dataset), "--out", str(out), "--segments", "4",
            "--degrade", "audio:babble=5dB,share=0.5", "--degrade-seed", "3"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with FeatureStore(out) as store:
        assert store.degradation == {"spec": "audio:babble=5dB,share=0.5,pick=burst", "seed": 3, "modalities": ["audio"]}
        expected = degrade.parse("audio:babble=5dB,share=0.5", 3).masks("00000000", 4)["audio"]
        assert np.array_equal(store.degraded_segments(["00000000"], "audio")[0], expected)
