"""``--encoder imagebind`` without the real checkpoint: the reimplemented preprocessing against
hand-computed and Kaldi reference values, the adapter end to end on small models of ImageBind's
interface, checkpoint loading and its errors. One test, marked ``gpu``, runs the real weights when
IMAGEBIND_CHECKPOINT is set."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from r2scp_cli.config import ExtractConfig
from r2scp_cli.encoders import imagebind as ib
from r2scp_cli.encoders.preprocessing import (
    CLIP_MEAN,
    CLIP_STD,
    clip_images,
    clip_images_on,
    imagebind_audio,
    imagebind_audio_on,
    kaldi_fbank,
    kaldi_fbank_on,
    kaldi_frame_count,
    kaldi_mel_banks,
    segment_windows,
)  # fmt: skip
from r2scp_cli.errors import UserError
from r2scp_cli.media import Clip

HAS_PACKAGE = importlib.util.find_spec("imagebind") is not None and all(
    importlib.util.find_spec(m) is not None for m in ("einops", "ftfy", "regex", "iopath")
)
needs_package = pytest.mark.skipif(not HAS_PACKAGE, reason=f"ImageBind model code not installed: {ib.INSTALL}")
LN_EPS = -23 * math.log(2)  # ln(float32 epsilon): the fbank floor


# --------------------------------------------------------------------------- preprocessing


def test_two_second_clip_gives_198_frames_padded_to_204():
    assert kaldi_frame_count(32_000) == 1 + (32_000 - 400) // 160 == 198
    assert kaldi_frame_count(399) == 0
    t = np.arange(32_000) / 16_000
    spec = imagebind_audio(0.3 * np.sin(2 * np.pi * 440 * t), duration=2.0, segments=1)
    assert spec.shape == (1, 1, 128, 204)
    pad = 4.268 / 9.138  # a zero fbank value after (x + 4.268) / 9.138
    np.testing.assert_allclose(spec[0, 0, :, 198:], pad, rtol=1e-6)
    assert np.abs(spec[0, 0, :, :198] - pad).min() > 1e-4  # the 198 real frames


def test_silence_normalises_to_the_floor_and_the_padding_constant():
    spec = imagebind_audio(np.zeros(32_000, np.float32), duration=2.0, segments=2)
    np.testing.assert_allclose(spec[:, 0, :, :198], (LN_EPS + 4.268) / 9.138, rtol=1e-6)  # -1.27757
    np.testing.assert_allclose(spec[:, 0, :, 198:], 4.268 / 9.138, rtol=1e-6)  # 0.46706
    empty = imagebind_audio(np.zeros(0, np.float32), duration=1.0, segments=2)
    np.testing.assert_allclose(empty, 4.268 / 9.138, rtol=1e-6)  # no samples: all padding


def test_kaldi_fbank_matches_kaldi_reference_values():
    # 80 bins (Kaldi itself refuses 128 bins at a 512-point FFT); reference values from
    # kaldi-native-fbank 1.23.0 with dither 0, window "hanning", 16 kHz, other options default
    n = np.arange(32_000)
    t = n / 16_000
    buzz = ((n**2 * 7919) % 10_007) / 10_007 - 0.5
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * (100 * t + 1725 * t**2)) + 0.02 * buzz)
    fbank = kaldi_fbank(x.astype(np.float32), num_bins=80)
    assert fbank.shape == (198, 80)
    reference = {
        0: [-5.8953, 2.5910, -5.3930, -2.2355],
        57: [-11.8321, 2.5960, -5.4629, -1.8523],
        197: [-11.5485, 2.5922, -5.7776, -1.7458],
    }
    for frame, values in reference.items():
        np.testing.assert_allclose(fbank[frame, [0, 13, 40, 79]], values, atol=2e-3)


def test_mel_filters_by_hand_at_one_kilohertz():
    banks = kaldi_mel_banks(128, 512, 16_000)
    assert banks.shape == (128, 257) and np.all(banks[:, 256] == 0)  # Nyquist bin unused
    low, high = 1127 * math.log(1 + 20 / 700), 1127 * math.log(1 + 8000 / 700)
    delta = (high - low) / 129
    mel = 1127 * math.log(1 + 1000 / 700)  # FFT bin 32 is 32 * 16000 / 512 = 1000 Hz
    k = math.floor((mel - low) / delta) - 1  # the filter whose falling edge holds 1 kHz
    column = banks[:, 32]
    assert np.flatnonzero(column).tolist() == [k, k + 1]
    assert column[k] == pytest.approx((low + (k + 2) * delta - mel) / delta, rel=1e-9)
    assert column[k + 1] == pytest.approx((mel - low - (k + 1) * delta) / delta, rel=1e-9)
    # between the first and the last centre every FFT bin's weights add up to one
    centres = low + delta * np.arange(1, 129)
    bin_mel = 1127 * np.log1p(np.arange(257) * 31.25 / 700)
    inside = (bin_mel > centres[0]) & (bin_mel < centres[-1])
    np.testing.assert_allclose(banks[:, inside].sum(axis=0), 1.0, rtol=1e-9)


def test_segment_windows_are_centred_and_kept_inside_the_track():
    ramp = np.arange(64_000, dtype=np.float32)  # sample value = its index
    windows = segment_windows(ramp, duration=4.0, segments=8, length=32_000)
    starts = [int(w[0]) for w in windows]
    assert starts == [0, 0, 4_000, 12_000, 20_000, 28_000, 32_000, 32_000]  # centre - 1 s, clamped
    assert all(len(w) == 32_000 for w in windows)
    short = segment_windows(ramp[:16_000], duration=1.0, segments=3, length=32_000)
    assert all(len(w) == 16_000 for w in short)  # a 1-s track: the whole track, fbank-padded later
    assert imagebind_audio(ramp[:16_000] / 64_000, 1.0, 3).shape == (3, 1, 128, 204)


def test_images_resized_short_side_centre_cropped_and_clip_normalised():
    frame = np.zeros((180, 320, 3), np.uint8)
    frame[:, :160] = (255, 0, 0)  # left half red, right half blue
    frame[:, 160:] = (0, 0, 255)
    x = clip_images(frame[None])
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    # resized to 398 x 224, cropped from column 87: the colour edge at 199 lands at column 112
    red = (np.array([1.0, 0.0, 0.0]) - CLIP_MEAN) / CLIP_STD
    blue = (np.array([0.0, 0.0, 1.0]) - CLIP_MEAN) / CLIP_STD
    np.testing.assert_allclose(x[0, :, 100, 50], red, rtol=1e-5)
    np.testing.assert_allclose(x[0, :, 100, 180], blue, rtol=1e-5)
    assert 0 < np.abs(x[0, 0, 100, 108:117] - red[0]).max()  # the edge is near column 112


def test_torch_fbank_and_audio_input_equal_numpy_within_float_rounding():
    rng = np.random.default_rng(1)
    t = np.arange(160_000) / 16_000
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
    waves = rng.standard_normal((3, 5_000)).astype(np.float32)
    np.testing.assert_allclose(kaldi_fbank_on(torch.from_numpy(waves), 64).numpy(), kaldi_fbank(waves, 64), atol=2e-4)
    for track, duration in ((audio, 10.0), (audio[:16_000], 1.0), (audio[:0], 1.0)):  # long, shorter than 2 s, empty
        windows = torch.from_numpy(np.stack(segment_windows(track, duration, 8, 32_000)))
        expected = imagebind_audio(track, duration, 8)
        got = imagebind_audio_on(windows).numpy()
        assert got.shape == expected.shape == (8, 1, 128, 204)
        np.testing.assert_allclose(got, expected, atol=2e-4)


@pytest.mark.parametrize("shape", [(224, 224), (112, 112), (180, 320), (300, 200), (100, 150)])
def test_torch_images_within_two_grey_levels_of_pillow(shape):
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    smooth = np.stack([np.sin(yy / 7.0), np.cos(xx / 5.0), np.sin((xx + yy) / 11.0)], axis=-1) * 120 + 128
    frames = np.stack([smooth.astype(np.uint8), rng.integers(0, 256, (*shape, 3), dtype=np.uint8)])  # smooth, noise
    expected, got = clip_images(frames), clip_images_on(torch.from_numpy(frames)).numpy()
    assert got.shape == expected.shape == (2, 3, 224, 224)
    grey = np.abs(got - expected) * np.asarray(CLIP_STD, np.float32).reshape(1, 3, 1, 1) * 255
    if shape == (224, 224):  # no resize on either side
        assert grey.max() < 1e-3
    assert grey.max() < 2.01 and (grey > 0.5).mean() < 0.01


def test_adapter_prepared_with_torch_keeps_clip_order_and_matches_numpy():
    clips = scene_clips(4)
    rng = np.random.default_rng(3)
    clips.insert(1, Clip("other-size", rng.integers(0, 256, (4, 90, 160, 3), dtype=np.uint8),
                         (0.1 * rng.standard_normal(12_000)).astype(np.float32), 0.75))  # other frames, a short track
    model = StandIn()
    on_numpy = ib.ImageBindEncoder(model, toy_tokenizer, segments=4)
    on_torch = ib.ImageBindEncoder(model, toy_tokenizer, segments=4, preprocess_with="torch")
    assert on_numpy.preprocess_with == "numpy"  # a CPU device prepares with numpy unless told
    assert on_torch.info.preprocessing["prepared_with"].startswith("torch on cpu")
    assert on_torch.info.compatible(on_numpy.info)  # the same recipe: features can be mixed
    spec_n, image_n = on_numpy.prepare(clips)
    spec_t, image_t = on_torch.prepare(clips)
    assert spec_t.shape == spec_n.shape == (12, 1, 128, 204) and image_t.shape == image_n.shape == (12, 3, 224, 224)
    np.testing.assert_allclose(spec_t.numpy(), spec_n.numpy(), atol=2e-4)
    assert (image_t - image_n).abs().max().item() < 2.01 / 255 / min(CLIP_STD)
    for i, clip in enumerate(clips):  # rows stay in the clips' order when shapes are grouped
        alone = on_torch.prepare([clip])
        assert torch.equal(alone[0], spec_t[4 * i : 4 * i + 4]) and torch.equal(alone[1], image_t[4 * i : 4 * i + 4])
    with pytest.raises(ValueError, match="preprocess_with"):
        ib.ImageBindEncoder(model, toy_tokenizer, segments=4, preprocess_with="opencv")


# --------------------------------------------------------------------------- a small model of ImageBind's interface


class _Text(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.embed = nn.Embedding(100, dim)

    def forward(self, text: torch.Tensor) -> dict:
        return {"trunk": {"tokens": self.embed(text)}, "head": {"seq_len": text.argmax(dim=-1)}}


class _CausalMean(nn.Module):
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.cumsum(dim=1) / torch.arange(1, tokens.shape[1] + 1)[None, :, None]


class _Head(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, out, bias=False))


class StandIn(nn.Module):
    """ImageBindModel's interface in miniature: a dict by modality in and out (audio scaled by 20
    as ImageBind's is), and the text preprocessor / trunk / head the adapter reads tokens from."""

    def __init__(self, dim: int = 12, out: int = 6):
        super().__init__()
        self.audio = nn.Linear(128 * 204, out)
        self.vision = nn.Linear(3 * 224 * 224, out)
        self.modality_preprocessors = nn.ModuleDict({"text": _Text(dim)})
        self.modality_trunks = nn.ModuleDict({"text": _CausalMean()})
        self.modality_heads = nn.ModuleDict({"text": _Head(dim, out)})

    def forward(self, inputs: dict) -> dict:
        out = {}
        for key, x in inputs.items():
            assert x.ndim == 4, "one 4-D batch item per segment"
            out[key] = getattr(self, key)(x.flatten(1)) * 20.0
        return out


def toy_tokenizer(texts: list[str]) -> torch.Tensor:
    """Start 1, characters 2..91, end 99 (the largest id, as ImageBind's), zero padding to 77."""
    ids = torch.zeros(len(texts), 77, dtype=torch.long)
    for row, text in enumerate(texts):
        codes = [1] + [2 + ord(c) % 90 for c in text][:75] + [99]
        ids[row, : len(codes)] = torch.tensor(codes)
    return ids


def tiny_imagebind():
    module = ib.load_model_module()
    small = dict(num_blocks=1, num_heads=2)
    return module.ImageBindModel(
        out_embed_dim=16, vision_embed_dim=32, vision_num_blocks=1, vision_num_heads=2,
        audio_embed_dim=32, audio_num_blocks=1, audio_num_heads=2, text_embed_dim=32, text_num_blocks=1,
        text_num_heads=2, **{f"{m}_{k}": v for m in ("depth", "thermal", "imu") for k, v in small.items()},
        depth_embed_dim=8, thermal_embed_dim=8, imu_embed_dim=8,
    )  # fmt: skip


def scene_clips(segments: int = 4) -> list[Clip]:
    """Two clips whose segments differ: colour changes over frames, a tone then noise in the track."""
    rng = np.random.default_rng(0)
    clips = []
    for i, seconds in enumerate((4.0, 3.0)):
        frames = np.zeros((segments, 120, 200, 3), np.uint8)
        for t in range(segments):
            frames[t, :, : 50 * (t + 1)] = (60 * t, 200 - 40 * i, 90)
        t_axis = np.arange(int(seconds * 16_000)) / 16_000
        audio = np.where(t_axis < seconds / 2, 0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t_axis), 0.2 * rng.standard_normal(len(t_axis)))
        clips.append(Clip(f"v{i}", frames, audio.astype(np.float32), seconds))
    return clips


def check_adapter(encoder: ib.ImageBindEncoder, model: nn.Module, tokenizer) -> None:
    """Shapes, unit norms, one batch item per segment, batch independence, text pooling."""
    T, D = encoder.segments, encoder.info.dims["audio"]
    clips = scene_clips(T)
    out = encoder.encode_clips(clips)
    for clip, arrays in zip(clips, out):
        assert arrays["audio"].shape == arrays["visual"].shape == (T, D)
        for name, values in arrays.items():
            np.testing.assert_allclose(np.linalg.norm(values, axis=-1), 1.0, rtol=1e-5, err_msg=name)
        with torch.inference_mode():  # each segment alone through the model
            spec = torch.from_numpy(imagebind_audio(clip.audio, clip.duration, T))
            image = torch.from_numpy(clip_images(clip.frames))
            for t in (0, T - 1):
                audio = nn.functional.normalize(model({"audio": spec[t : t + 1]})["audio"], dim=-1)[0]
                vision = nn.functional.normalize(model({"vision": image[t : t + 1]})["vision"], dim=-1)[0]
                np.testing.assert_allclose(arrays["audio"][t], audio.numpy(), atol=1e-5)
                np.testing.assert_allclose(arrays["visual"][t], vision.numpy(), atol=1e-5)
        mean = arrays["visual"].mean(axis=0)
        np.testing.assert_allclose(arrays["visual_global"], mean / np.linalg.norm(mean), rtol=1e-5)
        assert np.abs(arrays["audio"][0] - arrays["audio"][-1]).max() > 1e-3  # tone vs noise
    alone = encoder.encode_clips(clips[1:])[0]
    np.testing.assert_allclose(alone["audio"], out[1]["audio"], atol=1e-5)

    questions = ["Where is the violin?", "How many instruments are sounding in the video?"]
    text = encoder.encode_texts(questions)
    assert text["tokens"].shape == (2, ib.QUESTION_TOKENS, D) and text["global"].shape == (2, D)
    ids = torch.as_tensor(tokenizer(questions)).reshape(2, 77)
    end = ids.argmax(dim=-1)
    assert text["mask"].sum(axis=1).tolist() == (end + 1).clamp(max=ib.QUESTION_TOKENS).tolist()
    for row in range(2):  # the sentence embedding is the projected end-of-text token
        if end[row] < ib.QUESTION_TOKENS:
            np.testing.assert_allclose(text["global"][row], text["tokens"][row, end[row]], atol=1e-5)
    if hasattr(model, "modality_postprocessors"):  # ImageBindModel: its own text embedding, normalised
        with torch.inference_mode():
            reference = nn.functional.normalize(model({"text": ids})["text"], dim=-1).numpy()
        np.testing.assert_allclose(text["global"], reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text["tokens"], axis=-1), 1.0, rtol=1e-5)


def test_adapter_end_to_end_on_a_stand_in_model():
    torch.manual_seed(0)
    model = StandIn()
    encoder = ib.ImageBindEncoder(model, toy_tokenizer, segments=4, weights_sha256="f" * 64)
    assert encoder.info.dims["text_global"] == 6 and encoder.info.joint_space and encoder.info.pretrained
    assert "not contrastively trained" in encoder.info.preprocessing["text"]["tokens"]
    check_adapter(encoder, model, toy_tokenizer)


@needs_package
def test_adapter_end_to_end_on_a_tiny_imagebind_model():
    torch.manual_seed(0)
    model = tiny_imagebind()
    tokenizer = ib.load_tokenizer(None)
    encoder = ib.ImageBindEncoder(model, tokenizer, segments=3, forward_batch=4)
    assert encoder.info.dims["audio"] == 16
    check_adapter(encoder, model, tokenizer)


@needs_package
def test_model_code_imports_without_its_package_init_or_timm():
    module = ib.load_model_module()
    assert hasattr(module, "imagebind_huge")
    assert "imagebind.data" not in sys.modules  # data.py needs torchaudio / torchvision
    assert "timm" not in sys.modules or hasattr(sys.modules["timm"], "__file__")  # stand-ins are gone
    ids = ib.load_tokenizer(None)(["where is the violin", "a"])
    assert ids.shape == (2, 77) and ids[0, 0] == 49406  # <|startoftext|>
    end = int(ids[0].argmax())
    assert ids[0, end] == 49407 and end == 5 and not ids[0, end + 1 :].any()  # 4 words + the marks


# --------------------------------------------------------------------------- checkpoints and errors


def test_checkpoint_loads_strictly_mapped_and_leaves_initialisers_intact(tmp_path):
    torch.manual_seed(1)
    reference = StandIn()
    path = tmp_path / "ck.pth"
    torch.save(reference.state_dict(), path)
    loaded = ib.load_weights(StandIn, path)
    for name, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    probe = torch.zeros(4)
    nn.init.ones_(probe)  # the initialisers skipped while building are back
    assert probe.tolist() == [1.0] * 4


def test_bad_checkpoints_are_one_clear_line(tmp_path):
    state = StandIn().state_dict()
    state.pop("vision.bias")
    torch.save(state, tmp_path / "partial.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    torch.save([1, 2], tmp_path / "list.pth")
    for name, expected in (("partial.pth", "does not match"), ("junk.pth", "not a readable PyTorch checkpoint"),
                           ("list.pth", "not a state dict")):  # fmt: skip
        with pytest.raises(UserError) as error:
            ib.load_weights(StandIn, tmp_path / name)
        assert expected in str(error.value) and str(tmp_path / name) in str(error.value)
        assert "\n" not in str(error.value)
    assert "vision.bias" in str(pytest.raises(UserError, ib.load_weights, StandIn, tmp_path / "partial.pth").value)


def _config(tmp_path: Path, **kwargs) -> ExtractConfig:
    return ExtractConfig(dataset=tmp_path, out=tmp_path / "out" / "f.h5", encoder="imagebind", **kwargs)


def test_missing_checkpoint_says_how_to_give_one(tmp_path, monkeypatch):
    monkeypatch.delenv(ib.CHECKPOINT_ENV, raising=False)
    with pytest.raises(UserError) as error:
        ib.build(_config(tmp_path))
    message = str(error.value)
    assert "--checkpoint" in message and ib.CHECKPOINT_ENV in message and "never downloads" in message
    monkeypatch.setenv(ib.CHECKPOINT_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(UserError, match="nowhere.pth: ImageBind checkpoint not found"):
        ib.build(_config(tmp_path))
    with pytest.raises(UserError, match="elsewhere.pth: ImageBind checkpoint not found"):
        ib.build(_config(tmp_path, checkpoint=tmp_path / "elsewhere.pth"))  # the flag wins over the variable
    assert not (tmp_path / "out").exists()


def test_missing_model_code_or_cuda_is_one_line(tmp_path, monkeypatch):
    checkpoint = tmp_path / "ck.pth"
    torch.save({}, checkpoint)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "imagebind" else real(name, *a))
    with pytest.raises(UserError, match=r"needs the package 'imagebind': pip install 'r2scp\[imagebind\]'"):
        ib.build(_config(tmp_path, checkpoint=checkpoint))
    with pytest.raises(UserError, match=r"--device gpu0: not a torch device"):
        ib.build(_config(tmp_path, checkpoint=checkpoint, device="gpu0"))
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device cuda: this torch .* sees no CUDA device"):
            ib.build(_config(tmp_path, checkpoint=checkpoint, device="cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not os.environ.get(ib.CHECKPOINT_ENV), reason=f"real weights: set {ib.CHECKPOINT_ENV}")
def test_real_imagebind_checkpoint_binds_colours_to_their_names(tmp_path):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder = ib.build(_config(tmp_path, device=device, segments=2))
    assert encoder.info.dims["audio"] == 1024 and len(encoder.info.weights_sha256) == 64
    frames = {c: np.broadcast_to(np.array(rgb, np.uint8), (2, 224, 224, 3)).copy()
              for c, rgb in (("red", (220, 20, 20)), ("blue", (20, 20, 220)))}  # fmt: skip
    quiet = np.zeros(32_000, np.float32)
    red, blue = encoder.encode_clips([Clip(c, f, quiet, 2.0) for c, f in frames.items()])
    text = encoder.encode_texts(["a red image", "a blue image"])["global"]
    assert red["visual_global"] @ text[0] > red["visual_global"] @ text[1]
    assert blue["visual_global"] @ text[1] > blue["visual_global"] @ text[0]


def tiny_music_avqa(root: Path, videos: int = 2) -> Path:
    """``videos`` 2-s clips and one question per video and split."""
    from r2scp_cli.media import write_mp4

    (root / "videos").mkdir(parents=True)
    records = {split: [] for split in ("train", "val", "test")}
    rng = np.random.default_rng(0)
    for i in range(videos):
        frames = rng.integers(0, 255, (8, 64, 96, 3), dtype=np.uint8)
        tone = 0.3 * np.sin(2 * np.pi * (300 + 200 * i) * np.arange(32_000) / 16_000)
        write_mp4(root / "videos" / f"{i:08d}.mp4", frames, 4, tone.astype(np.float32))
        for s, split in enumerate(records):
            records[split].append({
                "video_id": f"{i:08d}", "question_id": 10 * i + s, "type": '["Audio", "Counting"]',
                "question_content": "How many <Object> are sounding?", "templ_values": '["violin"]',
                "question_deleted": 0, "anser": "two",
            })  # fmt: skip
    for split, rows in records.items():
        (root / f"avqa-{split}.json").write_text(json.dumps(rows))
    return root


@needs_package
def test_cli_extract_with_a_checkpoint_writes_a_joint_space_store(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from r2scp_cli.artifacts import sha256_file
    from r2scp_cli.cli import app
    from r2scp_cli.features import FeatureStore

    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pth"
    torch.save(tiny_imagebind().state_dict(), checkpoint)
    monkeypatch.setattr(ib.load_model_module(), "imagebind_huge", lambda pretrained=False: tiny_imagebind())
    monkeypatch.delenv(ib.CHECKPOINT_ENV, raising=False)
    data, out = tiny_music_avqa(tmp_path / "data"), tmp_path / "f.h5"
    args = ["extract", str(data), "--encoder", "imagebind", "--out", str(out), "--segments", "2"]

    missing = CliRunner().invoke(app, args)
    assert missing.exit_code == 1 and "needs a checkpoint" in missing.output and "Traceback" not in missing.output
    assert not out.exists() and not out.with_name("f.h5.partial").exists()

    result = CliRunner().invoke(app, [*args, "--checkpoint", str(checkpoint)])
    assert result.exit_code == 0, result.output
    with FeatureStore(out) as store:
        info = store.info
        assert (info.encoder, info.joint_space, info.weights_sha256) == ("imagebind", True, sha256_file(checkpoint))
        assert set(info.dims.values()) == {16} and info.question_tokens == ib.QUESTION_TOKENS
        tokens = store.tokens("00000001", "audio")
        assert tokens.shape == (2, 16)
        np.testing.assert_allclose(np.linalg.norm(tokens, axis=1), 1.0, rtol=2e-3)  # stored as float16
        q = store.question_arrays([0, 1])
        assert q["mask"].sum(axis=1).tolist() == [7, 7]  # <sot> how many violin are sounding <eot>
        np.testing.assert_allclose(np.linalg.norm(q["global"], axis=1), 1.0, rtol=1e-5)


# --------------------------------------------------------------------------- --precision


def test_precision_auto_on_cpu_is_fp32_bit_for_bit_and_each_is_recorded():
    torch.manual_seed(0)
    model = StandIn()
    clips, questions = scene_clips(3), ["Where is the violin?", "Is the piano louder than the drum?"]
    encoders = {p: ib.ImageBindEncoder(model, toy_tokenizer, segments=3, precision=p) for p in ("auto", "fp32", "fp16")}
    for asked, used in (("auto", "fp32"), ("fp32", "fp32"), ("fp16", "fp16")):
        info = encoders[asked].info
        assert (info.preprocessing["precision"], info.encoder_version) == (used, f"1-{used}")
    out = {p: (e.encode_clips(clips), e.encode_texts(questions)) for p, e in encoders.items()}
    for a, b in zip(out["auto"][0], out["fp32"][0]):
        assert all(np.array_equal(a[name], b[name]) for name in a)
    assert all(np.array_equal(out["auto"][1][name], out["fp32"][1][name]) for name in out["fp32"][1])
    # fp16 autocast runs on the CPU too: other bits, the same directions
    half, full = out["fp16"][0][0]["audio"], out["fp32"][0][0]["audio"]
    assert not np.array_equal(half, full) and (half * full).sum(axis=1).min() > 0.999
    assert (out["fp16"][1]["global"] * out["fp32"][1]["global"]).sum(axis=1).min() > 0.999
    assert not encoders["fp16"].info.compatible(encoders["fp32"].info)  # never mixed in a bank or a run
    assert encoders["auto"].info.compatible(encoders["fp32"].info)


def test_bad_or_misplaced_precision_is_one_line(tmp_path):
    from r2scp_cli.encoders.registry import build_encoder

    with pytest.raises(UserError, match=r"^unknown --precision 'fp8'; choose one of: auto, fp32, fp16$"):
        ib.ImageBindEncoder(StandIn(), toy_tokenizer, segments=2, precision="fp8")
    with pytest.raises(UserError, match="unknown --precision 'bf16'"):  # before the checkpoint is looked for
        ib.build(_config(tmp_path, precision="bf16", checkpoint=tmp_path / "nowhere.pth"))
    handcrafted = ExtractConfig(dataset=tmp_path, out=tmp_path / "f.h5", precision="fp16")
    with pytest.raises(UserError, match=r"--precision fp16: only --encoder imagebind .* \('handcrafted' runs in float32\)"):
        build_encoder(handcrafted)
    assert build_encoder(ExtractConfig(dataset=tmp_path, out=tmp_path / "f.h5")).info.encoder == "handcrafted"


def test_extraction_records_precision_and_refuses_to_resume_with_another(tmp_path, monkeypatch):
    """The adapter's real build path (checkpoint, strict load) with the stand-in as the architecture."""
    from typer.testing import CliRunner

    from r2scp_cli import extract
    from r2scp_cli.cli import app
    from r2scp_cli.features import FeatureStore

    torch.manual_seed(0)
    checkpoint = tmp_path / "ck.pth"
    torch.save(StandIn().state_dict(), checkpoint)
    monkeypatch.setattr(ib, "load_model_module", lambda: types.SimpleNamespace(imagebind_huge=lambda pretrained=False: StandIn()))
    monkeypatch.setattr(ib, "load_tokenizer", lambda path: toy_tokenizer)
    data, out = tiny_music_avqa(tmp_path / "data"), tmp_path / "f.h5"
    partial = out.with_name("f.h5.partial")
    args = ["extract", str(data), "--out", str(out), "--segments", "2"]

    for extra, message in ((["--encoder", "imagebind", "--checkpoint", str(checkpoint), "--precision", "fp8"],
                            "unknown --precision 'fp8'"),
                           (["--precision", "fp16"], "only --encoder imagebind has a choice of precision")):  # fmt: skip
        bad = CliRunner().invoke(app, [*args, *extra])
        assert bad.exit_code == 1 and message in bad.output and len(bad.output.strip().splitlines()) == 1
        assert not out.exists() and not partial.exists()

    def config(precision: str) -> ExtractConfig:
        return ExtractConfig(data, out, "imagebind", segments=2, checkpoint=checkpoint, precision=precision)

    encode_texts = ib.ImageBindEncoder.encode_texts
    monkeypatch.setattr(ib.ImageBindEncoder, "encode_texts", lambda self, texts: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # interrupted after the videos, before the questions
        extract.run(config("fp16"), workers=0)
    assert partial.exists() and not out.exists()
    monkeypatch.setattr(ib.ImageBindEncoder, "encode_texts", encode_texts)
    with pytest.raises(UserError, match=r"f\.h5\.partial: an unfinished extraction with other settings \(encoder_version, preprocessing\)"):
        extract.run(config("auto"), workers=0)  # auto is fp32 on the CPU
    assert extract.run(config("fp16"), workers=0) == out  # the same precision resumes
    fp32 = extract.run(replace(config("fp32"), out=tmp_path / "g.h5"), workers=0)
    with FeatureStore(out) as half, FeatureStore(fp32) as full:
        assert (half.info.preprocessing["precision"], half.info.encoder_version) == ("fp16", "1-fp16")
        assert (full.info.preprocessing["precision"], full.info.encoder_version) == ("fp32", "1-fp32")
        assert not half.info.compatible(full.info)
        a, b = half.tokens("00000001", "audio"), full.tokens("00000001", "audio")
        assert np.abs(a - b).max() > 0 and (a * b).sum(axis=1).min() > 0.999
