"""Dataset readers (MUSIC-AVQA, AVQA) and the answer vocabulary.

MUSIC-AVQA quirks handled (all present in the released files, see
../shared/data/music-avqa/README.md): the answer key spelled ``anser``; ``type`` and
``templ_values`` as strings holding lists or as real lists (v2); absent ``question_id`` and
``question_deleted`` (v2); extra keys (``unmatch_audio``, ``audio_instrument``,
``video_instrument``, ``person``), ignored; question ids repeated within a file (val, with other
answers: both records kept, see :class:`_QidRule`); trailing blanks and full-width question marks;
video ids of any shape (``sa00006547``, YouTube ids, ``_flip`` and ``_#03`` suffixes), used as
the media file's stem unchanged. No released record has an answer outside the 42 words or a
placeholder count different from its values, so both remain hard errors.
"""

from __future__ import annotations

import ast
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .errors import UserError

# MUSIC-AVQA's 42 answer words, in the order of a published model's output layer (index 33, "ten",
# never occurs in the test split and was recovered from the gap).
MUSIC_AVQA_ANSWERS: tuple[str, ...] = (
    "two", "cello", "congas", "zero", "no", "pipa", "six", "yes", "one", "four",
    "three", "seven", "five", "ukulele", "right", "piano", "left", "accordion", "clarinet", "guzheng",
    "more than ten", "nine", "indoor", "saxophone", "drum", "violin", "middle", "outdoor", "bagpipe", "bassoon",
    "acoustic_guitar", "banjo", "electric_bass", "ten", "eight", "flute", "simultaneously", "trumpet", "erhu", "xylophone",
    "tuba", "suona",
)  # fmt: skip

# The nine question types: family -> subtypes.
MUSIC_AVQA_TYPES: dict[str, tuple[str, ...]] = {
    "Audio": ("Counting", "Comparative"),
    "Visual": ("Counting", "Location"),
    "Audio-Visual": ("Existential", "Counting", "Location", "Comparative", "Temporal"),
}

# AVQA (Yang et al., MM 2022) question types.
AVQA_TYPES: tuple[str, ...] = (
    "Which", "Come From", "Happening", "Where", "Why", "Before Next", "When", "Used For",
)  # fmt: skip

# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Question:
    """One QA record, the same shape for both formats.

    MUSIC-AVQA: ``family`` is Audio / Visual / Audio-Visual, ``subtype`` e.g. Counting, ``answer``
    one of the 42 words and ``answer_index`` its index in :data:`MUSIC_AVQA_ANSWERS`.
    AVQA: ``family`` is the record's ``question_relation`` (or ""), ``subtype`` its
    ``question_type``, ``options`` the four choices and ``answer_index`` the correct one (0-3).
    ``video_id`` is always the media file's stem (AVQA: ``video_name``).
    """

    qid: str
    video_id: str
    split: str
    family: str
    subtype: str
    text: str
    answer: str
    answer_index: int
    options: tuple[str, ...] = ()


@dataclass
class AnnotationFile:
    """The questions of one annotation file and the tolerated quirks met while reading it."""

    path: Path
    split: str
    questions: list[Question]
    quirks: Counter = field(default_factory=Counter)


@dataclass
class Dataset:
    """A dataset directory read for some splits: questions, answer vocabulary, quirk counts."""

    root: Path
    format: str
    files: list[AnnotationFile]
    answers: tuple[str, ...]
    clips: dict[str, Path] | None = None  # a clip folder (library): video id -> media file; no questions

    @property
    def library(self) -> bool:
        return self.clips is not None

    @property
    def questions(self) -> list[Question]:
        return [q for f in self.files for q in f.questions]

    @property
    def quirks(self) -> dict[str, int]:
        total: Counter = Counter()
        for f in self.files:
            total.update(f.quirks)
        return dict(sorted(total.items()))

    def video_ids(self) -> list[str]:
        """Sorted ids of the videos that the questions refer to (a library: of its clips)."""
        if self.clips is not None:
            return sorted(self.clips)
        return sorted({q.video_id for q in self.questions})

    def video_path(self, video_id: str) -> Path:
        if self.clips is not None:
            return self.clips[video_id]
        return self.root / "videos" / f"{video_id}.mp4"


# --------------------------------------------------------------------------- MUSIC-AVQA

_QUESTION_MARKS = ("?", "\uff1f")  # the ASCII and the full-width question mark (both occur)


def fill_template(template: str, values: Sequence[str]) -> str:
    """A MUSIC-AVQA question with its placeholders filled, as the benchmark's own loader does it:
    split on single spaces; drop the final question mark; every word containing ``<`` takes the
    next value, left to right. Raises ValueError when placeholders and values differ in number.

    The official loader drops the last character unconditionally; here it is dropped only when it
    is a question mark (ASCII or full-width), which is every record of the released files.
    """
    words = template.rstrip().split(" ")
    if words[-1].endswith(_QUESTION_MARKS):
        words[-1] = words[-1][:-1]
    slots = [i for i, word in enumerate(words) if "<" in word]
    if len(slots) != len(values):
        raise ValueError(f"{len(slots)} placeholders but {len(values)} templ_values")
    for slot, value in zip(slots, values, strict=True):
        words[slot] = str(value)
    return " ".join(words)


def _json_list(value, what: str) -> list:
    """A field that holds a list, or a string holding one (JSON, or a Python literal)."""
    if isinstance(value, list):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{what} is neither a list nor a string holding one")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"{what} {value!r} is not a list") from None
    if not isinstance(parsed, list):
        raise ValueError(f"{what} {value!r} is not a list")
    return parsed


def _load_records(path: Path) -> list:
    if not path.exists():
        raise UserError(f"{path}: annotation file not found")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(records, list):
        raise UserError(f"{path}: expected a JSON list of records, found {type(records).__name__}")
    return records


class _QidRule:
    """qid = the record's id, or ``<file stem>:<index>`` when the id is absent or already used in
    the file (the released val file repeats 27 question ids, with different answers)."""

    def __init__(self, path: Path, quirks: Counter):
        self.stem, self.quirks, self.seen = path.stem, quirks, set()

    def __call__(self, raw_id, index: int) -> str:
        if raw_id is None:
            self.quirks["missing question id"] += 1
            qid = f"{self.stem}:{index}"
        elif str(raw_id) in self.seen:
            self.quirks["repeated question id"] += 1
            qid = f"{self.stem}:{index}"
        else:
            qid = str(raw_id)
        self.seen.add(qid)
        return qid


_MUSIC_AVQA_KEYS = {"video_id", "question_id", "type", "question_content", "templ_values", "question_deleted", "anser"}
_ANSWER_INDEX = {answer: i for i, answer in enumerate(MUSIC_AVQA_ANSWERS)}


def _music_avqa_question(record, index: int, split: str, qid_rule: _QidRule, quirks: Counter) -> Question:
    """One MUSIC-AVQA record; ValueError says what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError(f"is a {type(record).__name__}, not an object")
    answer_key = "anser" if "anser" in record else "answer"
    missing = [key for key in ("video_id", "type", "question_content", answer_key) if key not in record]
    if missing:
        raise ValueError(f"lacks {', '.join(missing)}")
    video_id = record["video_id"]
    if not isinstance(video_id, str) or not video_id:
        raise ValueError(f"video_id {video_id!r} is not a non-empty string")
    kind = _json_list(record["type"], "type")
    if len(kind) != 2 or kind[0] not in MUSIC_AVQA_TYPES or kind[1] not in MUSIC_AVQA_TYPES[kind[0]]:
        raise ValueError(f"type {kind!r} is not one of the nine MUSIC-AVQA question types")
    values = _json_list(record.get("templ_values", "[]"), "templ_values")
    text = fill_template(record["question_content"], values)
    answer = record[answer_key]
    if answer not in _ANSWER_INDEX:
        raise ValueError(f"answer {answer!r} is not one of the {len(MUSIC_AVQA_ANSWERS)} MUSIC-AVQA answer words")
    _count_quirks(record, answer_key, quirks)
    qid = qid_rule(record.get("question_id"), index)
    return Question(qid, video_id, split, kind[0], kind[1], text, answer, _ANSWER_INDEX[answer])


def _count_quirks(record: dict, answer_key: str, quirks: Counter) -> None:
    """Tally the tolerated deviations of one record (reported in the extract stage's meta)."""
    if answer_key == "answer":
        quirks["answer key spelled 'answer' (not 'anser')"] += 1
    if isinstance(record["type"], list):
        quirks["type as a list"] += 1
    if isinstance(record.get("templ_values"), list):
        quirks["templ_values as a list"] += 1
    if "question_deleted" not in record:
        quirks["missing question_deleted"] += 1
    elif record["question_deleted"]:
        quirks["question_deleted set (kept)"] += 1
    if record["question_content"] != record["question_content"].rstrip():
        quirks["trailing blanks in question_content"] += 1
    if record["question_content"].rstrip().endswith("\uff1f"):
        quirks["full-width question mark"] += 1
    for key in sorted(set(record) - _MUSIC_AVQA_KEYS - {"answer"}):
        quirks[f"extra key {key}"] += 1


def read_music_avqa(path: Path, split: str) -> AnnotationFile:
    """Every record of a MUSIC-AVQA annotation file (original, corrected or v2 schema).

    Nothing is dropped: a record that cannot be read (unknown answer word, placeholder count
    different from its values, unknown question type, missing key) is a UserError naming the
    file and the record's index; tolerated quirks are counted in ``quirks``.
    """
    return _read_annotations(path, split, _music_avqa_question)


def _read_annotations(path: Path, split: str, parse) -> AnnotationFile:
    """Parse every record with ``parse(record, index, split, qid_rule, quirks)``; a record that
    fails is a UserError naming the file and its index."""
    path = Path(path)
    quirks: Counter = Counter()
    qid_rule = _QidRule(path, quirks)
    questions = []
    for index, record in enumerate(_load_records(path)):
        try:
            questions.append(parse(record, index, split, qid_rule, quirks))
        except ValueError as error:
            raise UserError(f"{path}: record {index}: {error}") from None
    return AnnotationFile(path, split, questions, quirks)


# --------------------------------------------------------------------------- AVQA

AVQA_OPTIONS = 4


def _avqa_question(record, index: int, split: str, qid_rule: _QidRule) -> Question:
    """One AVQA record; ValueError says what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError(f"is a {type(record).__name__}, not an object")
    missing = [k for k in ("video_name", "question_text", "multi_choice", "answer", "question_type") if k not in record]
    if missing:
        raise ValueError(f"lacks {', '.join(missing)}")
    options = record["multi_choice"]
    if not isinstance(options, list) or len(options) != AVQA_OPTIONS or not all(isinstance(o, str) for o in options):
        raise ValueError(f"multi_choice {options!r} is not a list of {AVQA_OPTIONS} strings")
    answer = record["answer"]
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < AVQA_OPTIONS:
        raise ValueError(f"answer {answer!r} is not an option index 0-{AVQA_OPTIONS - 1}")
    video_name = record["video_name"]
    if not isinstance(video_name, str) or not video_name:
        raise ValueError(f"video_name {video_name!r} is not a non-empty string")
    relation = record.get("question_relation") or ""
    return Question(
        qid=qid_rule(record.get("id"), index),
        video_id=video_name,
        split=split,
        family=str(relation),
        subtype=str(record["question_type"]),
        text=str(record["question_text"]).strip(),
        answer=options[answer],
        answer_index=answer,
        options=tuple(options),
    )


def read_avqa(path: Path, split: str) -> AnnotationFile:
    """Every record of an AVQA (Yang et al.) ``*_qa.json`` file; a bad record is a UserError
    naming the file and index. ``question_relation`` is optional; other keys are ignored."""
    def parse(record, index, split, qid_rule, _quirks):
        return _avqa_question(record, index, split, qid_rule)

    return _read_annotations(path, split, parse)


# --------------------------------------------------------------------------- dataset directories

_LAYOUT = {
    "music-avqa": ("avqa-{split}.json", read_music_avqa),
    "avqa": ("{split}_qa.json", read_avqa),
}


def annotation_path(root: Path, format: str, split: str) -> Path:
    """Where a split's annotation file lives in a dataset directory of ``format``."""
    if format not in _LAYOUT:
        raise UserError(f"unknown dataset format '{format}'; choose one of: {', '.join(_LAYOUT)}")
    return Path(root) / _LAYOUT[format][0].format(split=split)


def read_dataset(root: Path, format: str, splits: Sequence[str]) -> Dataset:
    """The annotation files of ``splits`` in a dataset directory, checked and read.

    The answer vocabulary is :data:`MUSIC_AVQA_ANSWERS` for MUSIC-AVQA and the sorted set of all
    option strings for AVQA.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: dataset directory not found")
    if not splits:
        raise UserError("no splits given")
    files = []
    for split in splits:
        path = annotation_path(root, format, split)
        files.append(_LAYOUT[format][1](path, split))
    if format == "music-avqa":
        answers = MUSIC_AVQA_ANSWERS
    else:
        answers = tuple(sorted({o for f in files for q in f.questions for o in q.options}))
    return Dataset(root, format, files, answers)


# --------------------------------------------------------------------------- clip folders (libraries)

CLIP_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")


def read_clip_folder(root: Path) -> Dataset:
    """A folder of clips without annotations, read as a library: ``root/videos/*`` when ``root/videos``
    exists (the layout of `r2scp synth --library` and of MUSIC-AVQA), else ``root/*``; files ending in
    one of :data:`CLIP_SUFFIXES` (any case), not recursively. A clip's video id is its file stem.
    Annotation files, if any, are ignored. A folder without clips, or two clips with one stem, is a
    UserError."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: clip folder not found")
    folder = root / "videos" if (root / "videos").is_dir() else root
    clips: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in CLIP_SUFFIXES:
            continue
        if path.stem in clips:
            raise UserError(f"{folder}: two clips with the video id '{path.stem}' ({clips[path.stem].name}, {path.name})")
        clips[path.stem] = path
    if not clips:
        raise UserError(f"{folder}: no clips ({', '.join('*' + s for s in CLIP_SUFFIXES)}) to extract as a library")
    return Dataset(root, "library", [], (), clips)
