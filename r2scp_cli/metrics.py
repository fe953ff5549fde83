"""Accuracy from an evaluation's predictions, as MUSIC-AVQA's official evaluation counts it.

:func:`compute_metrics` turns predictions into per-type, per-family and overall accuracies (what
``r2scp eval`` writes to ``metrics.json``); :func:`load_predictions` reads a ``predictions.jsonl``;
:func:`print_metrics` shows one evaluation. Percent of the questions of a group answered correctly,
with the exact number of questions; a family (Audio, Visual, Audio-Visual) pools the questions of its
types rather than averaging the type accuracies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from .console import console
from .datasets import AVQA_TYPES, MUSIC_AVQA_TYPES
from .errors import UserError

PREDICTION_KEYS = ("qid", "video_id", "type", "subtype", "predicted", "answer", "correct", "weights")
# As in MUSIC-AVQA's official evaluation, type rows say "AV" for the Audio-Visual family.
_SHORT = {"Audio-Visual": "AV"}


def type_keys(format: str) -> tuple[str, ...]:
    """The question types of a dataset format: "Audio/Counting", ... or AVQA's eight types."""
    if format == "music-avqa":
        return tuple(f"{family}/{sub}" for family, subs in MUSIC_AVQA_TYPES.items() for sub in subs)
    if format == "avqa":
        return AVQA_TYPES
    raise UserError(f"unknown dataset format {format!r}; expected music-avqa or avqa")


def _type_key(record: dict, format: str) -> str:
    """A prediction's type key: "family/subtype" for MUSIC-AVQA, the question type for AVQA."""
    return f"{record['type']}/{record['subtype']}" if format == "music-avqa" else record["subtype"]


def _accuracy(correct: int, count: int) -> dict:
    """Percent correct with its exact counts; ``None`` for a group without questions."""
    return {"accuracy": 100.0 * correct / count if count else None, "correct": correct, "count": count}


def compute_metrics(records: list[dict], format: str) -> dict:
    """Overall, per-family and per-type accuracy of predictions (objects of ``predictions.jsonl``).

    Returns ``{"format", "overall", "families", "types"}``; each group is ``{"accuracy" (percent or
    None), "correct", "count"}``. Every type of the format is present, with count 0 when absent from
    the data; families are MUSIC-AVQA's three (empty for AVQA). A record of an unknown type is an
    error rather than a question silently left out of every group.
    """
    keys = type_keys(format)
    tally = {key: [0, 0] for key in keys}  # correct, count
    for record in records:
        key = _type_key(record, format)
        if key not in tally:
            raise UserError(f"question {record['qid']}: unknown {format} question type {key!r}")
        tally[key][0] += bool(record["correct"])
        tally[key][1] += 1
    families = {}
    if format == "music-avqa":
        for family, subs in MUSIC_AVQA_TYPES.items():
            members = [tally[f"{family}/{sub}"] for sub in subs]
            families[family] = _accuracy(sum(c for c, _ in members), sum(n for _, n in members))
    return {
        "format": format,
        "overall": _accuracy(sum(c for c, _ in tally.values()), sum(n for _, n in tally.values())),
        "families": families,
        "types": {key: _accuracy(*tally[key]) for key in keys},
    }


def load_predictions(path: Path) -> list[dict]:
    """The records of a ``predictions.jsonl`` file, each checked for the keys metrics need."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found; run `r2scp eval` first")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        missing = [key for key in PREDICTION_KEYS if not isinstance(record, dict) or key not in record]
        if missing:
            raise UserError(f"{path}:{number}: prediction lacks {', '.join(missing)}")
        records.append(record)
    return records


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _type_label(key: str) -> str:
    """ "Audio-Visual/Existential" -> "AV Existential"; AVQA types stay as they are."""
    return " ".join(_SHORT.get(part, part) for part in key.split("/"))


def print_metrics(metrics: dict, title: str) -> None:
    """Print per-type accuracies, family accuracies and the overall one, with question counts."""
    table = Table(title=title, title_justify="left")
    table.add_column("Question type")
    table.add_column("Accuracy (%)", justify="right")
    table.add_column("Questions", justify="right")

    def add(label: str, group: dict, **style: Any) -> None:
        table.add_row(label, _percent(group["accuracy"]), str(group["count"]), **style)

    families = metrics["families"]
    for key, group in metrics["types"].items():
        add(_type_label(key), group)
        family = key.split("/")[0]
        last_of_family = family in families and key == f"{family}/{MUSIC_AVQA_TYPES[family][-1]}"
        if last_of_family:
            add(family, families[family], style="bold", end_section=True)
    if not families:
        table.rows[-1].end_section = True
    add("Overall", metrics["overall"], style="bold")
    console.print(table)
