"""`r2scp extract`: features.h5 layout, failures, resume, AVQA options, npy import, encoders."""

import json
from dataclasses import replace
from pathlib import Path

import av
import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from r2scp_cli import extract
from r2scp_cli.artifacts import meta_path
from r2scp_cli.cli import app
from r2scp_cli.config import ExtractConfig
from r2scp_cli.datasets import MUSIC_AVQA_ANSWERS
from r2scp_cli.encoders.handcrafted import HandcraftedAudio, HandcraftedEncoder, HandcraftedVisual, HashedText
from r2scp_cli.encoders.registry import build_encoder
from r2scp_cli.errors import UserError
from r2scp_cli.features import EncoderInfo, FeatureStore, FeatureWriter
from r2scp_cli.media import AUDIO_RATE, Clip, decode_clip, write_mp4

SPLITS = ("train", "val", "test")
QUESTIONS = [  # (type, template, values, answer)
    ('["Audio", "Counting"]', "How many <Object> are sounding?", '["violin"]', "two"),
    ('["Visual", "Location"]', "Where is the <Object>?", '["piano"]', "left"),
]


def write_clip(path: Path, seed: int, seconds: float = 2.0, fps: int = 4, size: int = 48) -> None:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, (int(seconds * fps), size, size, 3), dtype=np.uint8)
    tone = 0.3 * np.sin(np.arange(int(seconds * AUDIO_RATE)) * (0.02 + 0.01 * seed))
    write_mp4(path, frames, fps, tone.astype(np.float32))


def write_silent_clip(path: Path) -> None:
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width = stream.height = 48
        stream.pix_fmt = "yuv420p"
        for _ in range(8):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((48, 48, 3), np.uint8), format="rgb24")))
        container.mux(stream.encode())


def music_avqa_dataset(root: Path, videos: int = 4) -> Path:
    """Videos 00000000.. with two questions each in every split (the QA-level split)."""
    (root / "videos").mkdir(parents=True)
    records = {split: [] for split in SPLITS}
    for i in range(videos):
        video_id = f"{i:08d}"
        write_clip(root / "videos" / f"{video_id}.mp4", seed=i)
        for s, split in enumerate(SPLITS):
            for j, (kind, template, values, answer) in enumerate(QUESTIONS):
                records[split].append({
                    "video_id": video_id, "question_id": 100 * i + 10 * s + j, "type": kind,
                    "question_content": template, "templ_values": values, "question_deleted": 0, "anser": answer,
                })  # fmt: skip
    for split, rows in records.items():
        (root / f"avqa-{split}.json").write_text(json.dumps(rows))
    return root


def avqa_dataset(root: Path, videos: int = 3) -> Path:
    (root / "videos").mkdir(parents=True)
    for i in range(videos):
        write_clip(root / "videos" / f"clip_{i:06d}.mp4", seed=i)
    for s, split in enumerate(SPLITS):
        rows = [
            {
                "id": 10 * s + i, "video_name": f"clip_{i:06d}", "video_id": i,
                "question_text": "Which instrument is playing?", "multi_choice": ["cello", "piano", "drum", "flute"],
                "answer": (i + s) % 4, "question_relation": "Both", "question_type": "Which",
            }  # fmt: skip
            for i in range(videos)
        ]
        (root / f"{split}_qa.json").write_text(json.dumps(rows))
    return root


def config(dataset: Path, out: Path, **changes) -> ExtractConfig:
    return replace(ExtractConfig(dataset=dataset, out=out, segments=4, batch_size=2), **changes)


def read_all(path: Path) -> dict:
    """Every dataset and attribute of an HDF5 file, for equality checks."""
    content = {}
    with h5py.File(path, "r") as h5:
        content["attrs"] = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in h5.attrs.items()}
        h5.visititems(lambda name, obj: content.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return content


def assert_same_content(a: Path, b: Path) -> None:
    left, right = read_all(a), read_all(b)
    assert left.keys() == right.keys()
    for key in left:
        if isinstance(left[key], np.ndarray):
            assert np.array_equal(left[key], right[key]), key
        else:
            assert left[key] == right[key], key


# --------------------------------------------------------------------------- layout


def test_features_file_matches_the_design(tmp_path):
    dataset = music_avqa_dataset(tmp_path / "data")
    out = extract.run(config(dataset, tmp_path / "features.h5"))
    assert out == tmp_path / "features.h5" and not out.with_name("features.h5.partial").exists()
    info = HandcraftedEncoder(4).info
    with h5py.File(out, "r") as h5:
        attrs = h5.attrs
        assert attrs["schema_version"] == 1 and attrs["encoder"] == "handcrafted"
        assert not attrs["pretrained"] and not attrs["joint_space"] and attrs["weights_sha256"] == "none"
        assert attrs["segments"] == 4 and attrs["format"] == "music-avqa"
        assert attrs["dataset"] == str(dataset.resolve())
        assert json.loads(attrs["preprocessing"])["n_mels"] == 64
        assert {k: attrs[f"dim_{k}"] for k in info.dims} == info.dims
        video = h5["videos/00000002"]
        assert video["audio"].dtype == np.float16 and video["audio"].shape == (4, info.dims["audio"])
        assert video["visual"].dtype == np.float16 and video["visual"].shape == (4, info.dims["visual"])
        for name in ("audio_global", "visual_global"):
            assert video[name].dtype == np.float32
            assert np.linalg.norm(video[name][()]) == pytest.approx(1.0, abs=1e-5)
        q = h5["questions"]
        assert q["tokens"].dtype == np.float16 and q["tokens"].shape == (24, 20, info.dims["text"])
        assert q["mask"].dtype == bool and q["global"].shape == (24, info.dims["text_global"])
        assert [a.decode() for a in h5["answers"][()]] == list(MUSIC_AVQA_ANSWERS)
        assert "options" not in q
    store = FeatureStore(out)
    assert store.video_ids == [f"{i:08d}" for i in range(4)] and store.failed == {}
    table = store.questions
    assert len(table) == 24 and sorted(set(table.split)) == sorted(SPLITS)
    row = int(np.flatnonzero((table.qid == "210") & (table.split == "val"))[0])  # video 2, val, question 0
    assert (table.video_id[row], table.type[row], table.subtype[row]) == ("00000002", "Audio", "Counting")
    assert table.text[row] == "How many violin are sounding" and table.answer[row] == "two"
    assert table.answer_index[row] == MUSIC_AVQA_ANSWERS.index("two")
    arrays = store.question_arrays([row])
    expected = HashedText().encode(["How many violin are sounding"])
    assert np.array_equal(arrays["mask"], expected["mask"])  # 5 words
    assert np.allclose(arrays["tokens"], expected["tokens"], atol=1e-3)
    meta = json.loads(meta_path(out).read_text())
    assert meta["stage"] == "extract" and meta["inputs"]["dataset"]["path"] == str(dataset)
    figures = meta["figures"]
    assert figures["videos"] == 4 and figures["failed"] == {} and figures["clips_per_s"] > 0
    assert figures["questions"] == {"train": 8, "val": 8, "test": 8} and figures["excluded_questions"] == {}
    store.close()


def test_tokens_are_the_encoder_output_of_the_decoded_clip(tmp_path):
    dataset = music_avqa_dataset(tmp_path / "data", videos=1)
    out = extract.run(config(dataset, tmp_path / "f.h5"))
    encoder = HandcraftedEncoder(4)
    clip = decode_clip(dataset / "videos" / "00000000.mp4", 4, encoder.frame_size)
    expected = encoder.encode_clips([clip])[0]
    with FeatureStore(out) as store:
        assert np.allclose(store.tokens("00000000", "audio"), expected["audio"], rtol=2e-3, atol=2e-3)
        assert np.allclose(store.tokens("00000000", "visual"), expected["visual"], rtol=2e-3, atol=2e-3)
        assert np.allclose(store.global_vector("00000000", "audio"), expected["audio_global"])


def test_rerun_is_skipped_and_force_redoes(tmp_path, capsys):
    dataset = music_avqa_dataset(tmp_path / "data", videos=2)
    out = extract.run(config(dataset, tmp_path / "f.h5"))
    first = json.loads(meta_path(out).read_text())["run_id"]
    extract.run(config(dataset, tmp_path / "f.h5"))
    assert "already extracted" in " ".join(capsys.readouterr().out.split())
    assert json.loads(meta_path(out).read_text())["run_id"] == first
    extract.run(config(dataset, tmp_path / "f.h5"), force=True)
    assert json.loads(meta_path(out).read_text())["run_id"] != first


# --------------------------------------------------------------------------- failures


def break_videos(dataset: Path) -> dict[str, str]:
    """Video 1 missing, video 2 corrupt, video 3 without sound; the expected reason prefixes."""
    (dataset / "videos" / "00000001.mp4").unlink()
    (dataset / "videos" / "00000002.mp4").write_bytes(b"\x00\x01 definitely not an mp4" * 40)
    write_silent_clip(dataset / "videos" / "00000003.mp4")
    return {"00000001": "missing file", "00000002": "undecodable", "00000003": "no audio track"}


def test_failed_videos_are_listed_and_their_questions_excluded(tmp_path):
    dataset = music_avqa_dataset(tmp_path / "data", videos=6)
    expected = break_videos(dataset)
    out = extract.run(config(dataset, tmp_path / "f.h5", max_failures=0.5))
    with FeatureStore(out) as store:
        assert sorted(store.failed) == sorted(expected)
        for video_id, reason in expected.items():
            assert store.failed[video_id].startswith(reason)
        assert store.video_ids == ["00000000", "00000004", "00000005"]
        assert set(store.questions.video_id) == {"00000000", "00000004", "00000005"}
        assert len(store.questions) == 18
    figures = json.loads(meta_path(out).read_text())["figures"]
    assert figures["videos"] == 3 and sorted(figures["failed"]) == sorted(expected)
    assert figures["excluded_questions"] == {"train": 6, "val": 6, "test": 6}
    assert figures["questions"] == {"train": 6, "val": 6, "test": 6}


def test_too_many_failures_stop_without_a_final_file_and_rerun_retries(tmp_path):
    dataset = music_avqa_dataset(tmp_path / "data", videos=6)
    break_videos(dataset)
    out = tmp_path / "f.h5"
    with pytest.raises(UserError) as error:
        extract.run(config(dataset, out))  # default --max-failures 0.01
    message = str(error.value)
    assert "3 of 6 videos failed" in message and "\n" not in message
    for video_id in ("00000001 (missing file", "00000002 (undecodable", "00000003 (no audio track)"):
        assert video_id in message
    assert not out.exists() and not meta_path(out).exists()
    assert out.with_name("f.h5.partial").exists()
    for i in (1, 2, 3):  # the user repairs the media and runs again: the failed videos are retried
        write_clip(dataset / "videos" / f"{i:08d}.mp4", seed=i)
    extract.run(config(dataset, out))
    with FeatureStore(out) as store:
        assert store.failed == {} and len(store.video_ids) == 6 and len(store.questions) == 36
    reference = extract.run(config(dataset, tmp_path / "reference.h5"))
    assert_same_content(out, reference)


def test_all_videos_failing_is_an_error_even_when_allowed(tmp_path):
    dataset = music_avqa_dataset(tmp_path / "data", videos=1)
    (dataset / "videos" / "00000000.mp4").unlink()
    with pytest.raises(UserError, match="1 of 1 videos failed \\(all videos failed\\)"):
        extract.run(config(dataset, tmp_path / "f.h5", max_failures=1.0))
    assert not (tmp_path / "f.h5").exists()


# --------------------------------------------------------------------------- resume


def crash_decoder_after(monkeypatch, clips: int, message: str = "power cut") -> tuple[list, object]:
    """Make extraction's decoder raise ``message`` once ``clips`` clips were decoded (a killed run);
    returns the list of decoded paths and the real decoder, to put back."""
    real_decode, calls = extract.decode_clip, []

    def crash(*args, **kwargs):
        calls.append(args[0])
        if len(calls) > clips:
            raise RuntimeError(message)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(extract, "decode_clip", crash)
    return calls, real_decode


def test_interrupted_extraction_resumes_to_the_same_content(tmp_path, monkeypatch):
    dataset = music_avqa_dataset(tmp_path / "data", videos=5)
    out = tmp_path / "f.h5"
    calls, real_decode = crash_decoder_after(monkeypatch, 3)
    with pytest.raises(RuntimeError, match="power cut"):
        extract.run(config(dataset, out))
    assert not out.exists() and not meta_path(out).exists()
    with h5py.File(out.with_name("f.h5.partial"), "r") as partial:
        assert sorted(partial["videos"]) == ["00000000", "00000001"]  # one full batch of 2 was written
    calls.clear()
    monkeypatch.setattr(extract, "decode_clip", lambda *a, **k: (calls.append(a[0]), real_decode(*a, **k))[1])
    extract.run(config(dataset, out))
    assert [Path(p).stem for p in calls] == ["00000002", "00000003", "00000004"]  # only the rest
    reference = extract.run(config(dataset, tmp_path / "reference.h5"))
    assert_same_content(out, reference)


def test_half_written_video_is_redone_on_resume(tmp_path):
    dataset = music_avqa_dataset(tmp_path / "data", videos=2)
    out = tmp_path / "f.h5"
    info = HandcraftedEncoder(4).info
    attrs = extract._file_attrs(config(dataset, out))
    writer = FeatureWriter(out, info, attrs)
    writer._h5["videos"].create_group("00000001")  # interrupted before its arrays were written
    writer.close()
    extract.run(config(dataset, out))
    with FeatureStore(out) as store:
        assert store.tokens("00000001", "audio").shape == (4, info.dims["audio"])


def test_partial_file_of_another_encoder_is_refused(tmp_path):
    dataset = music_avqa_dataset(tmp_path / "data", videos=2)
    out = tmp_path / "f.h5"
    other = EncoderInfo("npy", "1", 4, {"audio": 128, "visual": 512, "text": 256, "audio_global": 128,
                                        "visual_global": 512, "text_global": 256}, 20, False, True)  # fmt: skip
    FeatureWriter(out, other, extract._file_attrs(config(dataset, out))).close()
    before = out.with_name("f.h5.partial").read_bytes()
    with pytest.raises(UserError) as error:
        extract.run(config(dataset, out))
    message = str(error.value)
    assert "f.h5.partial: an unfinished extraction with other settings" in message
    assert "encoder" in message and "--force" in message
    assert out.with_name("f.h5.partial").read_bytes() == before and not out.exists()
    extract.run(config(dataset, out), force=True)  # --force starts over
    with FeatureStore(out) as store:
        assert store.info.encoder == "handcrafted"


@pytest.mark.parametrize("encode_in_workers", [True, False])  # False: workers decode, this process encodes
def test_worker_pool_gives_the_same_file(tmp_path, monkeypatch, encode_in_workers):
    monkeypatch.setattr(HandcraftedEncoder, "encode_in_workers", encode_in_workers)
    dataset = music_avqa_dataset(tmp_path / "data", videos=3)
    pooled = extract.run(config(dataset, tmp_path / "pooled.h5"), workers=2)
    serial = extract.run(config(dataset, tmp_path / "serial.h5"), workers=0)
    assert_same_content(pooled, serial)


# --------------------------------------------------------------------------- formats and encoders


def test_avqa_format_stores_option_embeddings(tmp_path):
    dataset = avqa_dataset(tmp_path / "data")
    out = extract.run(config(dataset, tmp_path / "f.h5", format="avqa"))
    options = ["cello", "piano", "drum", "flute"]
    with FeatureStore(out) as store:
        table = store.questions
        assert store.format == "avqa" and store.answers == sorted(options)
        assert len(table) == 9 and set(table.type) == {"Both"} and set(table.subtype) == {"Which"}
        row = int(np.flatnonzero((table.qid == "12") & (table.split == "val"))[0])  # clip 2, val
        assert table.answer_index[row] == 3 and table.answer[row] == "flute"
        arrays = store.question_arrays([row, 0])
        assert arrays["options"].shape == (2, 4, store.info.dims["text_global"])
        assert arrays["options"].dtype == np.float32
        assert np.allclose(arrays["options"][0], HashedText().encode(options)["global"])
    with h5py.File(out, "r") as h5:
        assert h5["questions/options_text"].asstr()[row].tolist() == options


def test_npy_encoder_averages_segments_and_reports_missing_arrays(tmp_path):
    dataset = music_avqa_dataset(tmp_path / "data", videos=3)
    audio_dir, visual_dir = tmp_path / "vggish", tmp_path / "resnet"
    audio_dir.mkdir()
    visual_dir.mkdir()
    rng = np.random.default_rng(0)
    arrays = {}
    for i in range(3):
        arrays[i] = (rng.standard_normal((60, 128)), rng.standard_normal((60, 512)))
        np.save(audio_dir / f"{i:08d}.npy", arrays[i][0].astype(np.float32))
        if i != 2:
            np.save(visual_dir / f"{i:08d}.npy", arrays[i][1].astype(np.float32))
    cfg = config(dataset, tmp_path / "f.h5", encoder="npy", audio_npy=audio_dir, visual_npy=visual_dir,
                 max_failures=0.5)  # fmt: skip
    out = extract.run(cfg)
    with FeatureStore(out) as store:
        assert store.info.encoder == "npy" and store.info.dims["visual"] == 512
        assert store.failed == {"00000002": f"missing visual npy: {visual_dir / '00000002.npy'}"}
        expected = arrays[1][0].reshape(4, 15, 128).mean(axis=1)  # 60 rows -> 4 segments of 15
        assert np.allclose(store.tokens("00000001", "audio"), expected, atol=2e-3)
        assert store.tokens("00000001", "visual").shape == (4, 512)


def test_unknown_and_unavailable_encoders_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="unknown encoder 'vggish'; choose one of: handcrafted, npy"):
        build_encoder(config(tmp_path, tmp_path / "f.h5", encoder="vggish"))
    with pytest.raises(UserError, match="--encoder npy needs --audio-npy DIR"):
        build_encoder(config(tmp_path, tmp_path / "f.h5", encoder="npy"))


def test_cli_extract_and_its_one_line_errors(tmp_path):
    dataset = music_avqa_dataset(tmp_path / "data", videos=2)
    runner = CliRunner()
    result = runner.invoke(app, ["extract", str(dataset), "--out", str(tmp_path / "f.h5"), "--segments", "4"])
    assert result.exit_code == 0, result.output
    assert "2 videos, 12 questions" in " ".join(result.output.split())
    result = runner.invoke(app, ["extract", str(dataset), "--out", str(tmp_path / "g.h5"), "--format", "vqa"])
    assert result.exit_code == 1 and "unknown --format 'vqa'" in " ".join(result.output.split())
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "g.h5").exists()


def test_bad_annotation_stops_before_any_work(tmp_path):
    dataset = music_avqa_dataset(tmp_path / "data", videos=2)
    rows = json.loads((dataset / "avqa-val.json").read_text())
    rows[3]["anser"] = "banana"
    (dataset / "avqa-val.json").write_text(json.dumps(rows))
    with pytest.raises(UserError, match=r"avqa-val.json: record 3: answer 'banana'"):
        extract.run(config(dataset, tmp_path / "f.h5"))
    assert list(tmp_path.glob("f.h5*")) == []


# --------------------------------------------------------------------------- the handcrafted tokens


def _blob_frames(column: int, colour=(220, 30, 30), count: int = 4) -> np.ndarray:
    frames = np.full((count, 96, 96, 3), 90, np.uint8)
    frames[:, 20:76, column * 32 + 4 : column * 32 + 28] = colour
    return frames


def test_visual_tokens_tell_left_from_right_and_colours():
    visual = HandcraftedVisual()
    left, right = visual.encode(_blob_frames(0)), visual.encode(_blob_frames(2))
    cells = lambda tokens: tokens[0].reshape(6, visual.cell_dim)  # noqa: E731
    red = 4  # first hue bin (red) sits after mean RGB and the luminance std
    assert cells(left)[0, red] > 0.2 and cells(left)[2, red] < 0.01  # top-left cell holds the red blob
    assert cells(right)[2, red] > 0.2 and cells(right)[0, red] < 0.01
    green = visual.encode(_blob_frames(0, colour=(30, 220, 30)))
    assert np.argmax(cells(green)[0, 4:12]) != np.argmax(cells(left)[0, 4:12])


def test_visual_motion_cue_marks_the_moving_cell():
    frames = _blob_frames(0)
    for k in range(len(frames)):  # the right-hand blob moves, the left one stays
        frames[k, 20:76, 64 + 2 * k : 88 + 2 * k] = (30, 30, 220)
    tokens = HandcraftedVisual().encode(frames).reshape(4, 6, -1)
    motion = tokens[..., -1]
    assert motion[1:, 2].min() > 10 * max(motion[1:, 0].max(), 1e-4)


def test_audio_tokens_follow_loudness_and_pitch():
    audio = HandcraftedAudio(segments=4)
    t = np.arange(2 * AUDIO_RATE) / AUDIO_RATE
    envelope = np.repeat([0.05, 0.5, 0.05, 0.5], AUDIO_RATE // 2)  # loud in segments 1 and 3
    tokens = audio.encode((envelope * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    loudness = tokens[:, 2 * audio.n_mels]
    assert loudness[1] > loudness[0] + 3 and loudness[3] > loudness[2] + 3  # ln power: x100 is +4.6
    low = audio.encode((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))
    high = audio.encode((0.3 * np.sin(2 * np.pi * 1760 * t)).astype(np.float32))
    assert np.argmax(high[0, : audio.n_mels]) > np.argmax(low[0, : audio.n_mels]) + 10  # mel band of the pitch
    centroid = 2 * audio.n_mels + 5
    assert high[0, centroid] > low[0, centroid]


def test_text_tokens_are_stable_and_order_aware():
    text = HashedText()
    a = text.encode(["Is the cello on the left louder than the piano on the right?"])
    b = text.encode(["Is the piano on the left louder than the cello on the right?"])
    c = text.encode(["Is the cello on the left louder than the piano on the right"])
    assert a["mask"].sum() == 13 and np.array_equal(a["tokens"], c["tokens"])  # punctuation is not a word
    assert not np.allclose(a["tokens"], b["tokens"])
    assert np.linalg.norm(a["global"]) == pytest.approx(1.0)
    assert float(a["global"][0] @ b["global"][0]) > 0.9  # same words, other order: close globals
    long = text.encode([" ".join(["word"] * 30)])
    assert long["mask"].sum() == text.max_tokens


def test_clip_encoding_shapes_and_globals():
    encoder = HandcraftedEncoder(segments=3)
    clip = Clip("v", _blob_frames(1, count=3), np.zeros(AUDIO_RATE, np.float32), 1.0)
    out = encoder.encode_clips([clip])[0]
    assert out["audio"].shape == (3, encoder.info.dims["audio"]) and np.isfinite(out["audio"]).all()
    assert out["visual"].shape == (3, encoder.info.dims["visual"])
    assert np.allclose(out["visual_global"], out["visual"].mean(0) / np.linalg.norm(out["visual"].mean(0)))
