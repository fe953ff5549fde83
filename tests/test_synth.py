"""`r2scp synth`: the built-in dataset.

Answers are audited against ``scenes.jsonl`` by an independent re-implementation of every template
(``audit`` below works on the plain JSON scene, not on the generator's classes), which also serves
as the single-modality oracles: an oracle that knows only one modality's facts of a clip answers on a
clip whose other modality comes from a different scene.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from r2scp_cli.cli import app
from r2scp_cli.config import SynthConfig
from r2scp_cli.datasets import AVQA_TYPES, MUSIC_AVQA_ANSWERS, MUSIC_AVQA_TYPES
from r2scp_cli.errors import UserError
from r2scp_cli.synth import dataset as synth
from r2scp_cli.synth.picture import render_frames
from r2scp_cli.synth.questions import MUSIC_AVQA_TEMPLATES, fill_template
from r2scp_cli.synth.scenes import INSTRUMENTS, Clutter, Player, Scene
from r2scp_cli.synth.sound import REFERENCE_RMS, render_audio

runner = CliRunner()
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
POS = ("left", "middle", "right")
MUSIC_KEYS = ["video_id", "question_id", "type", "question_content", "templ_values", "question_deleted", "anser"]
AVQA_KEYS = ["id", "video_name", "video_id", "question_text", "multi_choice", "answer", "question_relation",
             "question_type"]  # fmt: skip
SAMPLE_RATE = 16_000


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, SynthConfig]:
    out = tmp_path_factory.mktemp("synth") / "data"
    config = SynthConfig(out, videos=6, seed=3, size=64)
    synth.run(config)
    return out, config


@pytest.fixture(scope="module")
def big() -> synth.SynthDataset:
    return synth.generate(SynthConfig(Path("unused"), videos=1000, seed=7))


@pytest.fixture(scope="module")
def big_avqa() -> synth.SynthDataset:
    return synth.generate(SynthConfig(Path("unused"), videos=1000, seed=7, format="avqa"))


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate, channels = stream.rate, stream.codec_context.channels
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert channels == 1
    return frames, audio, rate


def _records(out: Path, fmt: str = "music-avqa") -> dict[str, list[dict]]:
    return {s: json.loads((out / synth.annotation_name(fmt, s)).read_text()) for s in synth.SPLITS}


def _scenes(out: Path) -> dict[str, dict]:
    return {s["video_id"]: s for s in map(json.loads, (out / "scenes.jsonl").read_text().splitlines())}


# --------------------------------------------------------------------------- independent auditor


def audit(content: str, values: list[str], scene: dict) -> str | None:
    """The answer a question should have on a JSON scene, or None when its premise fails."""
    players = scene["players"]
    seen = sorted((p for p in players if p["position"]), key=lambda p: POS.index(p["position"]))
    heard = [p for p in players if p["schedule"] != "silent"]
    seen_heard = [p for p in seen if p["schedule"] != "silent"]
    gap = 0.2 * scene["seconds"]
    yn = {True: "yes", False: "no"}

    def only(group, name):
        hits = [p for p in group if p["instrument"] == name]
        return hits[0] if len(hits) == 1 else None

    def at(position):
        return next((p for p in seen if p["position"] == position), None)

    def apart(group, target):
        return all(abs(q["onset"] - target["onset"]) >= gap for q in group if q is not target)

    def extreme(group, which):
        if len(group) < 2:
            return None
        ranked = sorted(group, key=lambda p: p["onset"])
        target = ranked[0] if which == "first" else ranked[-1]
        return target if apart(group, target) else None

    def compare(a, b, key, margin):
        if a is None or b is None or abs(a[key] - b[key]) < margin:
            return None
        return yn[a[key] > b[key]]

    def duration(p):
        return dict(p, duration=p["offset"] - p["onset"])

    v = values
    if content == "Is there a <Object> sound?":
        return yn[v[0] in {p["instrument"] for p in heard}]
    if content == "Are there <Object> and <Object> sound? ":
        return yn[{v[0], v[1]} <= {p["instrument"] for p in heard}]
    if content == "How many musical instruments were heard throughout the video?":
        return NUMBERS[len(heard)]
    if content == "Is the <Object> louder than the <Object>?":
        return compare(only(heard, v[0]), only(heard, v[1]), "loudness_db", 6.0)
    if content == "Is the <Object> playing longer than the <Object>?":
        a, b = only(heard, v[0]), only(heard, v[1])
        return compare(a and duration(a), b and duration(b), "duration", gap)
    if content == "Is the <Object> more rhythmic than the <Object>?":
        return compare(only(heard, v[0]), only(heard, v[1]), "notes_per_second", 0.5)
    if content == "Is there a <Object> in the entire video?":
        return yn[v[0] in {p["instrument"] for p in seen}]
    if content == "Are there <Object> and <Object> instruments in the video?":
        return yn[{v[0], v[1]} <= {p["instrument"] for p in seen}]
    if content == "How many <Object> are in the entire video?":
        return NUMBERS[sum(p["instrument"] == v[0] for p in seen)]
    if content == "How many types of musical instruments appeared in the entire video?":
        return NUMBERS[len({p["instrument"] for p in seen})]
    if content == "Where is the performance?":
        return scene["setting"]
    if content == "What kind of musical instrument is it?":
        return seen[0]["instrument"] if len(seen) == 1 else None
    if content == "What is the instrument on the <LR> of <Object>?":
        p = only(seen, v[1])
        if p is None:
            return None
        offset = {id(q): POS.index(q["position"]) - POS.index(p["position"]) for q in seen}
        side = [q for q in seen if offset[id(q)] * (1 if v[0] == "right" else -1) > 0]
        side.sort(key=lambda q: abs(offset[id(q)]))
        return side[0]["instrument"] if side else None
    if content == "What kind of instrument is the <LRer> instrument? ":
        return (seen[0] if v[0] == "leftest" else seen[-1])["instrument"] if len(seen) > 1 else None
    if content == "Is the <Object> in the video always playing?":
        p = only(players, v[0])
        return yn[p["schedule"] == "always"] if p is not None and p["position"] else None
    if content == "Is this sound from the instrument in the video?":
        return yn[all(p["position"] for p in heard)]
    if content == "How many instruments are sounding in the video?":
        return NUMBERS[len(seen_heard)]
    if content == "How many instruments in the video did not sound from beginning to end?":
        return NUMBERS[sum(p["schedule"] != "always" for p in seen)]
    if content == "How many sounding <Object> in the video？":
        return NUMBERS[sum(p["instrument"] == v[0] for p in seen_heard)]
    if content == "How many types of musical instruments sound in the video?":
        return NUMBERS[len({p["instrument"] for p in seen_heard})]
    if content == "Where is the <LL> instrument?":
        ranked = sorted(heard, key=lambda p: -p["loudness_db"])
        if not ranked or len(seen) < 2 or not ranked[0]["position"]:
            return None
        if len(ranked) > 1 and ranked[0]["loudness_db"] - ranked[1]["loudness_db"] < 6.0:
            return None
        return ranked[0]["position"]
    if content == "Is the <FL> sound coming from the <LR> instrument?":
        ref = extreme(heard, v[0])
        return yn[ref["position"] == v[1]] if ref is not None and ref["position"] and at(v[1]) else None
    if content == "Is the instrument on the <LR> louder than the instrument on the <LR>?":
        return compare(*[p if p in seen_heard else None for p in (at(v[0]), at(v[1]))], "loudness_db", 6.0)
    if content == "Is the instrument on the <LR> more rhythmic than the instrument on the <LR>?":
        return compare(*[p if p in seen_heard else None for p in (at(v[0]), at(v[1]))], "notes_per_second", 0.5)
    if content == "Is the <Object> on the <LR> louder than the <Object> on the <LR>?":
        pair = [p if p in seen_heard and p["instrument"] == name else None
                for p, name in ((at(v[1]), v[0]), (at(v[3]), v[2]))]  # fmt: skip
        return compare(*pair, "loudness_db", 6.0)
    if content == "Where is the <FL> sounding instrument?":
        ref = extreme(heard, v[0])
        return ref["position"] if ref is not None and ref["position"] else None
    if content == "Which instrument makes sounds <BA> the <Object>?":
        p = only(heard, v[1])
        if p is None:
            return None
        sign = -1 if v[0] == "before" else 1
        hits = [q for q in heard if q is not p and sign * (q["onset"] - p["onset"]) >= gap]
        return hits[0]["instrument"] if len(hits) == 1 and only(heard, hits[0]["instrument"]) else None
    if content == "What is the <TH> instrument that comes in?":
        ranked = sorted(heard, key=lambda p: p["onset"])
        k = ("first", "second").index(v[0])
        if len(ranked) < 2 or not apart(ranked, ranked[k]) or not only(heard, ranked[k]["instrument"]):
            return None
        return ranked[k]["instrument"]
    if content == "Which <Object> makes the sound <FL>?":
        group = [p for p in seen_heard if p["instrument"] == v[0]]
        if not group:
            return None
        onsets = [p["onset"] for p in group]
        if max(onsets) - min(onsets) < gap:
            return "simultaneously" if len(group) > 1 else group[0]["position"]
        ref = extreme(group, v[1])
        return ref["position"] if ref is not None else None
    raise AssertionError(f"no audit rule for {content!r}")


def _music_items(dataset: synth.SynthDataset) -> list[tuple[dict, dict]]:
    """(record, scene json) pairs of every question of a generated dataset."""
    scenes = {s.video_id: s.to_json() for s in dataset.scenes}
    records = synth.music_avqa_records(dataset)
    return [(r, scenes[r["video_id"]]) for split in synth.SPLITS for r in records[split]]


def _hybrid(keep: dict, other: dict, known: str) -> dict:
    """A scene with ``keep``'s facts of the ``known`` modality and ``other``'s facts of the rest: the
    sounding players of the audio scene (off screen) and the visible players of the visual scene (silent)."""
    sound, picture = (keep, other) if known == "audio" else (other, keep)
    heard = [dict(p, position=None) for p in sound["players"] if p["schedule"] != "silent"]
    seen = [dict(p, schedule="silent", onset=0.0, offset=0.0) for p in picture["players"] if p["position"]]
    return dict(keep, players=heard + seen, setting=picture["setting"])


# --------------------------------------------------------------------------- files and schema


def test_music_avqa_files_have_the_exact_record_schema(small):
    out, config = small
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "avqa-test.json", "avqa-train.json", "avqa-val.json", "meta.json", "scenes.jsonl", "videos",
    ]  # fmt: skip
    assert sorted(p.name for p in (out / "videos").iterdir()) == [f"{i:08d}.mp4" for i in range(1, 7)]
    records = _records(out)
    scenes = _scenes(out)
    ids = []
    for split, rows in records.items():
        assert rows, split
        for record in rows:
            assert list(record) == MUSIC_KEYS
            assert isinstance(record["question_id"], int) and record["question_deleted"] == 0
            assert re.fullmatch(r"\d{8}", record["video_id"]) and record["video_id"] in scenes
            family, subtype = json.loads(record["type"])
            assert subtype in MUSIC_AVQA_TYPES[family]
            values = json.loads(record["templ_values"])
            assert all(isinstance(x, str) for x in values)
            assert len(values) == sum("<" in t for t in record["question_content"].split(" "))
            assert record["anser"] in MUSIC_AVQA_ANSWERS
            assert audit(record["question_content"], values, scenes[record["video_id"]]) == record["anser"]
            ids.append(record["question_id"])
    assert len(ids) == len(set(ids))
    generated = synth.generate(config)
    assert records == synth.music_avqa_records(generated)  # the files hold what generate() makes
    assert synth.read_scenes(out) == generated.scenes
    meta = json.loads((out / "meta.json").read_text())
    assert meta["stage"] == "synth" and meta["figures"]["questions"] == len(ids)
    readme = (out / "README.md").read_text()
    assert "r2scp synth OUT --videos 6 --seed 3" in readme and f"{len(records['test'])} questions" in readme


def test_template_filling_follows_the_music_avqa_rule():
    assert fill_template(
        "Is the <Object> on the <LR> louder than the <Object> on the <LR>?", ["flute", "left", "cello", "right"]
    ) == "Is the flute on the left louder than the cello on the right"
    assert fill_template("What kind of instrument is the <LRer> instrument? ", ["leftest"]) == (
        "What kind of instrument is the leftest instrument"
    )
    assert fill_template("How many sounding <Object> in the video？", ["violin"]) == (
        "How many sounding violin in the video"
    )
    assert fill_template("Where is the performance?", []) == "Where is the performance"
    with pytest.raises(ValueError, match="placeholders"):
        fill_template("Is there a <Object> sound?", [])


def test_every_clip_decodes_to_the_declared_frames_and_audio(small):
    out, config = small
    expected_frames = round(config.seconds * config.fps)
    samples = round(config.seconds * SAMPLE_RATE)
    for path in sorted((out / "videos").glob("*.mp4")):
        frames, audio, rate = _decode(path)
        assert frames.shape == (expected_frames, config.size, config.size, 3), path.name
        assert rate == SAMPLE_RATE
        assert samples <= len(audio) < samples + 1024, path.name  # AAC pads to whole 1024-sample frames
        assert np.sqrt(np.mean(audio[:samples] ** 2)) > 1e-3


def test_same_arguments_give_identical_files_and_media(small, tmp_path):
    out, config = small
    again = SynthConfig(tmp_path / "again", videos=config.videos, seed=config.seed, size=config.size)
    synth.run(again, workers=2)  # a process pool must not change anything
    for name in ["avqa-train.json", "avqa-val.json", "avqa-test.json", "scenes.jsonl", "README.md"]:
        assert (out / name).read_bytes() == (again.out / name).read_bytes(), name
    for path in sorted((out / "videos").glob("*.mp4")):
        first, second = _decode(path), _decode(again.out / "videos" / path.name)
        assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    run_id = json.loads((again.out / "meta.json").read_text())["run_id"]
    result = runner.invoke(app, ["synth", str(again.out), "--videos", "6", "--seed", "3", "--size", "64"])
    assert result.exit_code == 0 and "already synthesised" in result.output
    assert json.loads((again.out / "meta.json").read_text())["run_id"] == run_id


# --------------------------------------------------------------------------- answers, types, priors


def test_answers_agree_with_the_scenes_for_every_template(big):
    items = _music_items(big)
    wrong = [
        (r["question_content"], r["templ_values"], r["anser"])
        for r, scene in items
        if audit(r["question_content"], json.loads(r["templ_values"]), scene) != r["anser"]
    ]
    assert wrong == []
    assert {r["question_content"] for r, _ in items} == {t.content for t in MUSIC_AVQA_TEMPLATES}


def test_all_nine_types_present_and_yes_no_balanced_per_template(big):
    kinds = Counter((q.family, q.subtype) for q in big.questions)
    assert set(kinds) == {(f, s) for f, subs in MUSIC_AVQA_TYPES.items() for s in subs}
    assert min(kinds.values()) >= 200
    assert 8.5 <= len(big.questions) / len(big.scenes) <= 11.5
    for template in (t for t in MUSIC_AVQA_TEMPLATES if t.yes_no):
        answers = [q.answer for q in big.questions if q.content == template.content]
        assert len(answers) >= 50, template.content
        assert 0.4 <= answers.count("yes") / len(answers) <= 0.6, template.content


def test_question_only_prior_stays_below_60_percent(big):
    accuracy = synth.question_prior_accuracy(big.split("train"), big.split("test"))
    assert 0.3 < accuracy < 0.6, accuracy
    # the prior itself: majority per filled text, then per template
    def q(instrument: str, answer: str) -> synth.Question:
        return synth.Question("1", "Audio", "Counting", "Is there a <Object> sound?", (instrument,), answer)

    train = [q("cello", "yes"), q("cello", "yes"), q("cello", "no"), q("flute", "yes")]
    assert synth.question_prior_accuracy(train, [q("cello", "yes"), q("cello", "no"), q("drum", "yes")]) == 2 / 3


def test_one_modality_alone_cannot_answer_the_other_modalitys_questions(big):
    items = _music_items(big)
    train_majority = {}
    for record, _ in items:
        train_majority.setdefault(record["question_content"], Counter())[record["anser"]] += 1
    rng = np.random.default_rng(0)
    scene_list = [s.to_json() for s in big.scenes]
    accuracy: dict[tuple[str, str], list[bool]] = {}
    for record, scene in items:
        other = scene_list[int(rng.integers(len(scene_list)))]
        while other["video_id"] == scene["video_id"]:
            other = scene_list[int(rng.integers(len(scene_list)))]
        family = json.loads(record["type"])[0]
        for known in ("audio", "visual"):
            guess = audit(record["question_content"], json.loads(record["templ_values"]), _hybrid(scene, other, known))
            if guess is None:  # premise unknown to the oracle: it falls back on the template's majority
                guess = train_majority[record["question_content"]].most_common(1)[0][0]
            accuracy.setdefault((known, family), []).append(guess == record["anser"])
    score = {key: float(np.mean(hits)) for key, hits in accuracy.items()}
    assert score[("audio", "Audio")] == 1.0 and score[("visual", "Visual")] == 1.0
    assert score[("audio", "Visual")] < 0.6 and score[("visual", "Audio")] < 0.6, score
    assert score[("audio", "Audio-Visual")] < 0.8 and score[("visual", "Audio-Visual")] < 0.8, score


def test_split_by_qa_mixes_videos_and_split_by_video_does_not(big):
    shares = Counter(big.splits)
    for split, share in zip(synth.SPLITS, synth.SPLIT_SHARES):
        assert abs(shares[split] / len(big.splits) - share) < 0.03
    splits_per_video = Counter(len({s for q, s in zip(big.questions, big.splits) if q.video_id == v})
                               for v in {q.video_id for q in big.questions})  # fmt: skip
    assert sum(n for k, n in splits_per_video.items() if k >= 2) / sum(splits_per_video.values()) > 0.95
    by_video = synth.generate(SynthConfig(Path("unused"), videos=300, seed=7, split_by="video"))
    owner: dict[str, set[str]] = {}
    for q, s in zip(by_video.questions, by_video.splits):
        owner.setdefault(q.video_id, set()).add(s)
    assert all(len(s) == 1 for s in owner.values())
    assert set().union(*owner.values()) == set(synth.SPLITS)


# --------------------------------------------------------------------------- AVQA format


def _audit_avqa(record: dict, scene: dict) -> None:
    """The option at ``answer`` is right for the scene, and no other option is."""
    players, text = scene["players"], record["question_text"]
    seen = [p for p in players if p["position"]]
    heard = [p for p in players if p["schedule"] != "silent"]
    place = {"left": "on the left", "middle": "in the middle", "right": "on the right", None: "off screen"}
    names = lambda option: {c for c in INSTRUMENTS if c.replace("_", " ") in option}  # noqa: E731
    options, correct = record["multi_choice"], record["multi_choice"][record["answer"]]
    named = next((c for c in INSTRUMENTS if f"the {c.replace('_', ' ')} " in text), None)
    if text.startswith("Which instrument is"):
        position = next(k for k, phrase in place.items() if phrase and phrase in text)
        assert correct == next(p["instrument"] for p in seen if p["position"] == position)
        assert set(options) <= set(INSTRUMENTS)
    elif text == "Which of these instruments can be heard in the video?":
        assert [o for o in options if o in {p["instrument"] for p in heard}] == [correct]
    elif text == "How many of the instruments on screen are being played?":
        assert correct == NUMBERS[sum(p["schedule"] != "silent" for p in seen)] and set(options) <= set(NUMBERS)
    elif text.startswith("Where is the") and text.endswith("in the picture?"):
        hits = [p for p in seen if p["instrument"] == named]
        assert correct == (place[hits[0]["position"]] if hits else "not in the picture")
    elif text == "Where is the loudest instrument?":
        assert correct == place[max(heard, key=lambda p: p["loudness_db"])["position"]]
    elif text.startswith("Where does the sound of the"):
        assert correct == place[next(p["position"] for p in heard if p["instrument"] == named)]
    elif text.startswith("When is the"):
        when = {"always": "throughout the clip", "early": "only in the first part",
                "late": "only in the second part", "silent": "not at all"}  # fmt: skip
        player = next(p for p in seen if p["instrument"] == named and place[p["position"]] in text)
        assert correct == when[player["schedule"]]
    elif text == "What can be heard in the video?":
        assert names(correct) == {p["instrument"] for p in heard}
    elif text == "Which instruments on screen are being played?":
        playing = {p["instrument"] for p in seen if p["schedule"] != "silent"}
        assert names(correct) == playing and (playing or correct == "nothing")
    else:
        raise AssertionError(f"no audit rule for {text!r}")


def test_avqa_format_writes_avqa_records_that_agree_with_the_scenes(tmp_path):
    out = tmp_path / "avqa"
    synth.run(SynthConfig(out, videos=4, seed=5, size=32, seconds=2.0, format="avqa"))
    assert sorted(p.name for p in out.glob("*.json")) == ["meta.json", "test_qa.json", "train_qa.json", "val_qa.json"]
    scenes = _scenes(out)
    for rows in _records(out, "avqa").values():
        for record in rows:
            assert list(record) == AVQA_KEYS
            assert isinstance(record["id"], int) and record["video_id"] == int(record["video_name"])
            assert (out / "videos" / f"{record['video_name']}.mp4").exists()
            assert len(set(record["multi_choice"])) == 4 and record["answer"] in range(4)
            assert record["question_type"] in AVQA_TYPES and record["question_relation"] in ("View", "Sound", "Both")
            _audit_avqa(record, scenes[record["video_name"]])


def test_avqa_has_no_position_bias_and_every_answer_is_right(big_avqa):
    records = synth.avqa_records(big_avqa)
    assert 0.21 <= synth.position_prior_accuracy(records["train"], records["test"]) <= 0.29
    positions = Counter(r["answer"] for rows in records.values() for r in rows)
    assert max(positions.values()) / sum(positions.values()) < 0.27
    scenes = {s.video_id: s.to_json() for s in big_avqa.scenes}
    kinds = Counter()
    for rows in records.values():
        for record in rows:
            _audit_avqa(record, scenes[record["video_name"]])
            kinds[record["question_type"], record["question_relation"]] += 1
    assert {t for t, _ in kinds} == {"Which", "Where", "When", "Come From", "Happening"}
    assert {r for _, r in kinds} == {"View", "Sound", "Both"}


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--videos", "0"], "--videos must be at least 1 (got 0)"),
        (["--format", "kinetics"], "--format must be one of music-avqa, avqa (got 'kinetics')"),
        (["--split-by", "clip"], "--split-by must be one of qa, video (got 'clip')"),
        (["--size", "33"], "--size must be an even number of pixels"),
        (["--seconds", "0.5"], "--seconds must be between 1 and 600"),
    ],
)
def test_bad_arguments_fail_in_one_line_and_write_nothing(tmp_path, args, message):
    out = tmp_path / "data"
    result = runner.invoke(app, ["synth", str(out), *args])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    assert not out.exists()


def test_refuses_a_directory_that_is_not_a_synth_output(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="is not empty and is not a synth dataset"):
        synth.run(SynthConfig(foreign, videos=1, size=32))
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    other_stage = tmp_path / "features"
    other_stage.mkdir()
    (other_stage / "meta.json").write_text(json.dumps({"stage": "extract"}))
    with pytest.raises(UserError, match="holds the output of `r2scp extract`"):
        synth.run(SynthConfig(other_stage, videos=1, size=32))
    assert json.loads((other_stage / "meta.json").read_text()) == {"stage": "extract"}


def test_a_smaller_rerun_leaves_exactly_one_dataset(tmp_path):
    out = tmp_path / "data"
    synth.run(SynthConfig(out, videos=3, size=32, seconds=1.0))
    synth.run(SynthConfig(out, videos=2, size=32, seconds=1.0, format="avqa"))
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["00000001.mp4", "00000002.mp4"]
    assert not list(out.glob("avqa-*.json")) and len(list(out.glob("*_qa.json"))) == 3


# --------------------------------------------------------------------------- the facts are in the media


def _solo(instrument: str, schedule="always", onset=0.0, offset=1.0, loudness=0.0, seed=0, seconds=1.0) -> Scene:
    player = Player(instrument, "middle", schedule, onset, offset, loudness, 2.0)
    return Scene("x", seconds, "indoor", (player,), Clutter(-60.0, 1.0, 0.0, 0, 0, 1.0), seed)


def _ridge_probe(features: np.ndarray, labels: np.ndarray, train: np.ndarray) -> float:
    """Accuracy of a linear (ridge, one-vs-rest) classifier on standardised features."""
    mean, std = features[train].mean(0), features[train].std(0) + 1e-6
    z = np.c_[(features - mean) / std, np.ones(len(features))]
    targets = np.eye(labels.max() + 1)[labels] * 2 - 1
    weights = np.linalg.solve(z[train].T @ z[train] + np.eye(z.shape[1]), z[train].T @ targets[train])
    return float(np.mean((z[~train] @ weights).argmax(1) == labels[~train]))


def _log_bands(audio: np.ndarray, count: int = 32) -> np.ndarray:
    """Mean (level removed) and spread over time of log energies in ``count`` log-spaced bands."""
    frames = np.lib.stride_tricks.sliding_window_view(audio, 512)[::256] * np.hanning(512)
    power = np.abs(np.fft.rfft(frames)) ** 2
    freqs = np.fft.rfftfreq(512, 1 / SAMPLE_RATE)
    edges = np.geomspace(50, 8000, count + 1)
    bands = [power[:, (freqs >= lo) & (freqs < hi)].sum(1) for lo, hi in zip(edges, edges[1:])]
    energy = np.log(np.stack(bands, 1) + 1e-6)
    mean = energy.mean(0)
    return np.concatenate([mean - mean.mean(), energy.std(0)])


PROBE_SEEDS, PROBE_TRAIN_SEEDS = 24, 16  # renders per class; the rest are held out


def test_timbres_are_told_apart_by_a_linear_probe_on_log_band_energies():
    features, labels = [], []
    for seed in range(PROBE_SEEDS):
        for label, instrument in enumerate(INSTRUMENTS):
            scene = _solo(instrument, seed=seed)
            features.append(_log_bands(render_audio(scene, SAMPLE_RATE, np.random.default_rng(seed))))
            labels.append(label)
    labels = np.array(labels)
    train = np.arange(len(labels)) < PROBE_TRAIN_SEEDS * len(INSTRUMENTS)
    assert _ridge_probe(np.array(features), labels, train) >= 0.7


def test_pictures_are_told_apart_on_a_coarse_grid_of_their_slot():
    features, labels = [], []
    for seed in range(PROBE_SEEDS):
        rng = np.random.default_rng(seed)
        position = POS[seed % 3]
        for label, instrument in enumerate(INSTRUMENTS):
            clutter = Clutter(-60.0, 1.0, 0.0, 0, int(rng.integers(0, 5)), float(rng.uniform(0.8, 1.15)))
            scene = Scene("x", 1.0, ("indoor", "outdoor")[seed % 2],
                          (Player(instrument, position, "silent", 0.0, 0.0, 0.0, 1.0),), clutter, seed)  # fmt: skip
            frame = render_frames(scene, 1, 64, np.random.default_rng(seed))[0].astype(float) / 255
            slot = frame[:, POS.index(position) * 21 : POS.index(position) * 21 + 21]
            cells = [slot[r * 16 : r * 16 + 16, c * 10 : c * 10 + 10] for r in range(4) for c in range(2)]
            features.append(np.concatenate([np.r_[c.mean((0, 1)), c.std((0, 1))] for c in cells]))
            labels.append(label)
    labels = np.array(labels)
    train = np.arange(len(labels)) < PROBE_TRAIN_SEEDS * len(INSTRUMENTS)
    assert _ridge_probe(np.array(features), labels, train) >= 0.7


def test_loudness_and_schedule_are_audible_and_motion_follows_the_sound():
    def rms(audio):
        return float(np.sqrt(np.mean(audio**2)))

    loud = render_audio(_solo("cello", loudness=0.0), SAMPLE_RATE, np.random.default_rng(1))
    soft = render_audio(_solo("cello", loudness=-12.0), SAMPLE_RATE, np.random.default_rng(1))
    assert abs(rms(loud) / REFERENCE_RMS - 1) < 0.05
    assert abs(20 * np.log10(rms(loud) / rms(soft)) - 12.0) < 0.5
    late = _solo("trumpet", schedule="late", onset=1.0, offset=2.0, seconds=2.0)
    audio = render_audio(late, SAMPLE_RATE, np.random.default_rng(1))
    assert 20 * np.log10(rms(audio[SAMPLE_RATE:]) / rms(audio[: SAMPLE_RATE - 200])) > 30  # silence, then the note
    frames = render_frames(late, 4, 64, np.random.default_rng(1))
    assert all(np.array_equal(frames[0], frames[k]) for k in range(4))  # still while silent
    assert sum(not np.array_equal(frames[3], frames[k]) for k in range(4, 8)) >= 3  # moves while sounding
