"""Dataset readers: the real MUSIC-AVQA files, template filling, AVQA records, bad records."""

import json
from collections import Counter
from pathlib import Path

import pytest

from r2scp_cli.datasets import (
    MUSIC_AVQA_ANSWERS,
    MUSIC_AVQA_TYPES,
    fill_template,
    read_avqa,
    read_dataset,
    read_music_avqa,
)
from r2scp_cli.errors import UserError

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "music-avqa"
if not REAL.is_dir():
    REAL = Path("/work/shared/data/music-avqa")
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="real MUSIC-AVQA annotation files not present")

AVQA_EXAMPLE = {
    "id": 1139, "video_name": "06GyG4-wONQ_000006", "video_id": 1395,
    "question_text": "How many animals are there in the video?", "multi_choice": ["3", "One", "4", "2"],
    "answer": 3, "question_relation": "Both", "question_type": "Which",
}  # fmt: skip


@pytest.fixture(scope="module")
def real():
    return {
        name: read_music_avqa(REAL / name, "test")
        for name in ("avqa-val.json", "avqa-test-update.json", "v2-test_balance.json")
    }


@needs_real
def test_real_files_parse_completely(real):
    counts = {name: len(f.questions) for name, f in real.items()}
    assert counts == {"avqa-val.json": 4595, "avqa-test-update.json": 9129, "v2-test_balance.json": 10819}
    for name, f in real.items():
        raw = json.loads((REAL / name).read_text())
        assert [q.video_id for q in f.questions] == [r["video_id"] for r in raw]  # order kept, nothing dropped
        assert [q.answer for q in f.questions] == [r["anser"] for r in raw]
        assert all(MUSIC_AVQA_ANSWERS[q.answer_index] == q.answer for q in f.questions)
        assert all(q.subtype in MUSIC_AVQA_TYPES[q.family] for q in f.questions)
        assert len({q.qid for q in f.questions}) == len(f.questions)  # qids are unique within a file


@needs_real
def test_real_type_counts_of_the_corrected_test_split(real):
    kinds = Counter((q.family, q.subtype) for q in real["avqa-test-update.json"].questions)
    assert kinds[("Audio", "Counting")] == 1017
    assert kinds[("Visual", "Location")] == 1225
    assert kinds[("Audio-Visual", "Temporal")] == 822
    assert len(kinds) == 9


@needs_real
def test_template_filling_on_real_records(real):
    val = real["avqa-val.json"].questions
    assert val[0].text == "Is the ukulele in the video always playing"
    assert (val[0].qid, val[0].video_id, val[0].answer) == ("7", "00000028", "yes")
    # a full-width question mark ends this template: "How many sounding <Object> in the video？"
    assert val[3].text == "How many sounding banjo in the video"
    # four placeholders, two kinds, filled left to right
    assert val[1140].text == "Is the violin on the middle louder than the piano on the left"
    v2 = real["v2-test_balance.json"].questions
    # no question_id, a trailing blank after the "?", two placeholders
    assert (v2[3].qid, v2[3].text) == ("v2-test_balance:3", "Are there flute and clarinet sound")
    # templ_values stored as a real (empty) list, extra keys present
    assert (v2[104].video_id, v2[104].text) == ("sa00006547", "Is this sound from the instrument in the video")


@needs_real
def test_real_quirks_are_counted_not_dropped(real):
    val, v2 = real["avqa-val.json"], real["v2-test_balance.json"]
    # val repeats 27 question ids with other answers: both records stay, the later one renamed
    assert val.quirks["repeated question id"] == 27
    twins = [q for q in val.questions if q.qid in ("291", "avqa-val:27")]
    assert [(q.qid, q.answer) for q in twins] == [("291", "yes"), ("avqa-val:27", "no")]
    assert v2.quirks["missing question id"] == 1724
    assert v2.quirks["templ_values as a list"] == 226
    assert v2.quirks["extra key unmatch_audio"] == 226
    assert v2.quirks["full-width question mark"] == 576
    ids = {q.video_id for q in v2.questions}
    assert {"6cjIJVzP6eI_#05_flip", "sa00006547"} & ids  # odd video ids are kept verbatim
    first_missing = next(i for i, r in enumerate(json.loads((REAL / "v2-test_balance.json").read_text()))
                         if "question_id" not in r)  # fmt: skip
    assert v2.questions[first_missing].qid == f"v2-test_balance:{first_missing}"


def test_fill_template_rules():
    assert fill_template("Where is the <Object>?", ["piano"]) == "Where is the piano"
    assert fill_template("Is the <Object> louder than the <Object>？ ", ["a", "b"]) == "Is the a louder than the b"
    assert fill_template("How many instruments are sounding?", []) == "How many instruments are sounding"
    with pytest.raises(ValueError, match="2 placeholders but 1 templ_values"):
        fill_template("Is the <Object> on the <LR>?", ["piano"])


def _record(**changes):
    record = {
        "video_id": "00000001", "question_id": 5, "type": '["Audio", "Counting"]',
        "question_content": "How many <Object> are sounding?", "templ_values": '["violin"]',
        "question_deleted": 0, "anser": "two",
    }  # fmt: skip
    record.update(changes)
    return record


def _write(path, records):
    path.write_text(json.dumps(records))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        ({"anser": "seventeen"}, "answer 'seventeen' is not one of the 42 MUSIC-AVQA answer words"),
        ({"templ_values": "[]"}, "1 placeholders but 0 templ_values"),
        ({"templ_values": '["a", "b"]'}, "1 placeholders but 2 templ_values"),
        ({"type": '["Audio", "Location"]'}, "is not one of the nine MUSIC-AVQA question types"),
        ({"type": "Audio"}, "type 'Audio' is not a list"),
        ({"video_id": 17}, "video_id 17 is not a non-empty string"),
    ],
)
def test_bad_music_avqa_record_names_file_and_index(tmp_path, change, message):
    path = _write(tmp_path / "avqa-train.json", [_record(), _record(question_id=6, **change)])
    with pytest.raises(UserError) as error:
        read_music_avqa(path, "train")
    assert str(error.value).startswith(f"{path}: record 1: ")
    assert message in str(error.value)


def test_music_avqa_schema_variants(tmp_path):
    records = [
        _record(),
        _record(question_id=6, type=["Visual", "Location"], templ_values=["left"], anser="yes",
                question_content="Is the <LR> instrument a piano?"),  # fmt: skip
        {k: v for k, v in _record(video_id="xY-z_flip").items() if k not in ("question_id", "question_deleted")},
        {**_record(question_id=5, anser="one"), "unmatch_audio": 1},
    ]
    read = read_music_avqa(_write(tmp_path / "avqa-test.json", records), "test")
    # id 5 repeats in record 3 and record 2 has none: both get "<file stem>:<index>"
    assert [q.qid for q in read.questions] == ["5", "6", "avqa-test:2", "avqa-test:3"]
    assert [q.answer for q in read.questions] == ["two", "yes", "two", "one"]
    assert read.questions[1].text == "Is the left instrument a piano"
    assert read.questions[1].answer_index == MUSIC_AVQA_ANSWERS.index("yes")
    assert read.questions[2].video_id == "xY-z_flip"
    assert read.quirks["type as a list"] == 1 and read.quirks["extra key unmatch_audio"] == 1


def test_not_a_list_and_missing_file(tmp_path):
    path = tmp_path / "avqa-train.json"
    path.write_text('{"video_id": "1"}')
    with pytest.raises(UserError, match="expected a JSON list"):
        read_music_avqa(path, "train")
    path.write_text("[{")
    with pytest.raises(UserError, match="not valid JSON"):
        read_music_avqa(path, "train")
    with pytest.raises(UserError, match="annotation file not found"):
        read_music_avqa(tmp_path / "nope.json", "train")


def test_avqa_reader_on_the_documented_example(tmp_path):
    second = {**AVQA_EXAMPLE, "id": 7, "video_name": "abc_000001", "answer": 0}
    second["multi_choice"] = ["A dog", "x", "y", "z"]
    del second["question_relation"]
    read = read_avqa(_write(tmp_path / "train_qa.json", [AVQA_EXAMPLE, second]), "train")
    first = read.questions[0]
    assert (first.qid, first.video_id, first.split) == ("1139", "06GyG4-wONQ_000006", "train")
    assert (first.family, first.subtype) == ("Both", "Which")
    assert first.text == "How many animals are there in the video?"
    assert first.options == ("3", "One", "4", "2")
    assert (first.answer, first.answer_index) == ("2", 3)
    assert (read.questions[1].family, read.questions[1].answer) == ("", "A dog")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"answer": 4}, "answer 4 is not an option index 0-3"),
        ({"answer": "2"}, "answer '2' is not an option index 0-3"),
        ({"multi_choice": ["a", "b", "c"]}, "is not a list of 4 strings"),
        ({"video_name": ""}, "video_name '' is not a non-empty string"),
    ],
)
def test_bad_avqa_record_names_file_and_index(tmp_path, change, message):
    path = _write(tmp_path / "val_qa.json", [AVQA_EXAMPLE, {**AVQA_EXAMPLE, **change}])
    with pytest.raises(UserError) as error:
        read_avqa(path, "val")
    assert str(error.value).startswith(f"{path}: record 1: ") and message in str(error.value)


def test_avqa_missing_key(tmp_path):
    record = {k: v for k, v in AVQA_EXAMPLE.items() if k != "question_text"}
    with pytest.raises(UserError, match=r"record 0: lacks question_text"):
        read_avqa(_write(tmp_path / "val_qa.json", [record]), "val")


def test_read_dataset_layouts_and_vocabularies(tmp_path):
    for split in ("train", "test"):
        _write(tmp_path / f"{split}_qa.json", [{**AVQA_EXAMPLE, "id": hash(split) % 100}])
    dataset = read_dataset(tmp_path, "avqa", ("train", "test"))
    assert dataset.answers == ("2", "3", "4", "One")  # sorted set of all option strings
    assert dataset.video_ids() == ["06GyG4-wONQ_000006"]
    assert dataset.video_path("v1") == tmp_path / "videos" / "v1.mp4"
    _write(tmp_path / "avqa-train.json", [_record()])
    music = read_dataset(tmp_path, "music-avqa", ("train",))
    assert music.answers == MUSIC_AVQA_ANSWERS and len(music.questions) == 1
    with pytest.raises(UserError, match="avqa-val.json: annotation file not found"):
        read_dataset(tmp_path, "music-avqa", ("train", "val"))
    with pytest.raises(UserError, match="dataset directory not found"):
        read_dataset(tmp_path / "nowhere", "music-avqa", ("train",))
    with pytest.raises(UserError, match="unknown dataset format 'vqa'"):
        read_dataset(tmp_path, "vqa", ("train",))
