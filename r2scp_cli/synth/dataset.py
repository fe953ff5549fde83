"""`r2scp synth`: the built-in dataset, in MUSIC-AVQA's exact format (or AVQA's), with real mp4 clips.

``run`` samples one scene per video (``scenes.py``), asks about ten questions per scene
(``questions.py``; ``avqa.py`` for ``--format avqa``), balances yes/no answers per
template, splits by QA pair (as MUSIC-AVQA) or by video, renders every clip (``picture.py``,
``sound.py``) to H.264 + AAC with a pool of processes, and writes the annotation files,
``scenes.jsonl`` (the latent facts behind every answer) and a README. Every random choice comes from ``numpy`` generators seeded by (seed, video index,
purpose), so the same arguments give the same bytes whatever the worker count.

``--library`` writes clips only (``videos/``, ``scenes.jsonl``, README; no questions, no annotation
files) for `r2scp extract --library` and `build-bank --library`. The scenes come from the same
sampler and renderer as a dataset's, under ids ``lib<seed>-000001``... that no dataset id (8 digits)
can equal, from random streams keyed apart from every dataset's (``LIBRARY_STREAM``): a library of
any seed never holds a clip of a dataset of any seed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import artifacts
from ..config import DATASET_FORMATS, SynthConfig
from ..console import console, progress_bar
from ..errors import UserError
from ..media import AUDIO_RATE, write_mp4
from .avqa import avqa_questions, options
from .picture import render_frames
from .questions import Question, music_avqa_questions
from .scenes import INSTRUMENTS, LOUDNESS_DB, P_DUPLICATE, P_OFFSCREEN, Scene, sample_scene
from .sound import render_audio

SPLITS = ("train", "val", "test")
SPLIT_SHARES = (0.6, 0.15, 0.25)
SPLIT_BY = ("qa", "video")
YES_NO_MAX_SHARE = 0.55  # the majority answer of a yes/no template is trimmed down to this share
WORKERS = 2  # render processes (the output does not depend on it)
POOL_MIN_VIDEOS = 16  # fewer videos render in this process: starting workers would cost more
SCENES_NAME = "scenes.jsonl"
LIBRARY_STREAM = 5  # appended to the scene generator's seed of a library clip (a dataset's has none)


@dataclass
class SynthDataset:
    """Scenes and questions of one configuration, with each question's split."""

    config: SynthConfig
    scenes: list[Scene]
    questions: list  # Question (music-avqa) or ChoiceQuestion (avqa), video by video
    splits: list[str]

    def split(self, name: str) -> list:
        return [q for q, s in zip(self.questions, self.splits) if s == name]


# --------------------------------------------------------------------------- generation (no media)


def validate(config: SynthConfig) -> None:
    """One-line errors for arguments that cannot make a dataset; nothing is written before this."""
    checks = (
        (config.videos >= 1, f"--videos must be at least 1 (got {config.videos})"),
        (config.seed >= 0, f"--seed must be 0 or more (got {config.seed})"),
        (1.0 <= config.seconds <= 600.0, f"--seconds must be between 1 and 600 (got {config.seconds})"),
        (1 <= config.fps <= 60, f"--fps must be between 1 and 60 (got {config.fps})"),
        (32 <= config.size <= 1024 and config.size % 2 == 0,
         f"--size must be an even number of pixels from 32 to 1024 (got {config.size})"),
        (config.split_by in SPLIT_BY, f"--split-by must be one of {', '.join(SPLIT_BY)} (got {config.split_by!r})"),
        (config.format in DATASET_FORMATS,
         f"--format must be one of {', '.join(DATASET_FORMATS)} (got {config.format!r})"),
    )  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def video_id(index: int) -> str:
    """MUSIC-AVQA style 8-digit video ids, from 00000001."""
    return f"{index + 1:08d}"


def library_video_id(seed: int, index: int) -> str:
    """Library ids ``lib<seed>-000001``...: never an 8-digit dataset id, and distinct across library seeds."""
    return f"lib{seed}-{index + 1:06d}"


def library_scenes(config: SynthConfig) -> list[Scene]:
    """The scenes of a library: the dataset's sampler, on streams no dataset uses."""
    validate(config)
    return [sample_scene(library_video_id(config.seed, i), config.seconds,
                         np.random.default_rng([config.seed, i, 0, LIBRARY_STREAM]))
            for i in range(config.videos)]  # fmt: skip


def balance_yes_no(questions: list, rng: np.random.Generator) -> list:
    """Drop randomly chosen majority answers of each yes/no template down to ``YES_NO_MAX_SHARE``."""
    by_template: dict[str, dict[str, list[int]]] = {}
    for index, question in enumerate(questions):
        if question.answer in ("yes", "no"):
            by_template.setdefault(question.content, {"yes": [], "no": []})[question.answer].append(index)
    dropped: set[int] = set()
    for content in sorted(by_template):
        groups = by_template[content]
        major, minor = sorted(groups, key=lambda a: (-len(groups[a]), a))
        keep = int(len(groups[minor]) * YES_NO_MAX_SHARE / (1 - YES_NO_MAX_SHARE))
        surplus = len(groups[major]) - keep
        if surplus > 0:
            dropped.update(int(i) for i in rng.choice(groups[major], size=surplus, replace=False))
    return [q for i, q in enumerate(questions) if i not in dropped]


def assign_splits(questions: list, config: SynthConfig) -> list[str]:
    """By QA pair (each question drawn 60/15/25) or by video (each video drawn, its questions follow)."""
    rng = np.random.default_rng([config.seed, 2])
    if config.split_by == "qa":
        return [str(s) for s in rng.choice(SPLITS, size=len(questions), p=SPLIT_SHARES)]
    per_video = {video_id(i): str(s) for i, s in enumerate(rng.choice(SPLITS, size=config.videos, p=SPLIT_SHARES))}
    return [per_video[q.video_id] for q in questions]


def generate(config: SynthConfig) -> SynthDataset:
    """Scenes, questions and splits of a configuration: everything but the media, in milliseconds per video."""
    validate(config)
    scenes = [sample_scene(video_id(i), config.seconds, np.random.default_rng([config.seed, i, 0]))
              for i in range(config.videos)]  # fmt: skip
    ask = music_avqa_questions if config.format == "music-avqa" else avqa_questions
    questions = [q for i, scene in enumerate(scenes) for q in ask(scene, np.random.default_rng([config.seed, i, 1]))]
    if config.format == "music-avqa":
        questions = balance_yes_no(questions, np.random.default_rng([config.seed, 3]))
    return SynthDataset(config, scenes, questions, assign_splits(questions, config))


# --------------------------------------------------------------------------- annotation records


def music_avqa_records(dataset: SynthDataset) -> dict[str, list[dict]]:
    """MUSIC-AVQA records per split: `type` and `templ_values` are strings holding JSON lists."""
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for question_id, (q, split) in enumerate(zip(dataset.questions, dataset.splits)):
        out[split].append({
            "video_id": q.video_id,
            "question_id": question_id,
            "type": json.dumps([q.family, q.subtype]),
            "question_content": q.content,
            "templ_values": json.dumps(list(q.values)),
            "question_deleted": 0,
            "anser": q.answer,
        })  # fmt: skip
    return out


def avqa_records(dataset: SynthDataset) -> dict[str, list[dict]]:
    """AVQA records per split: four options, the correct one at a uniformly drawn position."""
    rng = np.random.default_rng([dataset.config.seed, 4])
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for index, (q, split) in enumerate(zip(dataset.questions, dataset.splits)):
        choices, answer = options(q, rng)
        out[split].append({
            "id": index,
            "video_name": q.video_id,
            "video_id": int(q.video_id),
            "question_text": q.text,
            "multi_choice": choices,
            "answer": answer,
            "question_relation": q.relation,
            "question_type": q.question_type,
        })  # fmt: skip
    return out


def annotation_name(fmt: str, split: str) -> str:
    return f"avqa-{split}.json" if fmt == "music-avqa" else f"{split}_qa.json"


# --------------------------------------------------------------------------- priors (no media)


def _majority(counter: Counter) -> str:
    return min(counter.items(), key=lambda item: (-item[1], item[0]))[0]


def question_prior_accuracy(train: list[Question], test: list[Question]) -> float:
    """Accuracy on ``test`` of the majority train answer per filled question text (falling back to
    the template's majority, then the overall one): what a model that ignores the media can reach."""
    by_text: dict[str, Counter] = {}
    by_template: dict[str, Counter] = {}
    for q in train:
        by_text.setdefault(q.text, Counter())[q.answer] += 1
        by_template.setdefault(q.content, Counter())[q.answer] += 1
    overall = _majority(Counter(q.answer for q in train)) if train else ""
    hits = 0
    for q in test:
        table = by_text.get(q.text) or by_template.get(q.content)
        hits += (_majority(table) if table else overall) == q.answer
    return hits / max(len(test), 1)


def position_prior_accuracy(train: list[dict], test: list[dict]) -> float:
    """AVQA: accuracy of always choosing the most frequent correct position of the train split."""
    position = _majority(Counter(r["answer"] for r in train)) if train else 0
    return sum(r["answer"] == position for r in test) / max(len(test), 1)


def figures(dataset: SynthDataset, records: dict[str, list[dict]]) -> dict:
    """Counts and priors for meta.json, the README and the console."""
    kinds = Counter(
        f"{q.family}/{q.subtype}" if isinstance(q, Question) else f"{q.question_type}/{q.relation}"
        for q in dataset.questions
    )
    out = {
        "videos": len(dataset.scenes),
        "questions": len(dataset.questions),
        "questions_per_video": round(len(dataset.questions) / max(len(dataset.scenes), 1), 2),
        "splits": {s: len(records[s]) for s in SPLITS},
        "videos_per_split": {s: len({q.video_id for q in dataset.split(s)}) for s in SPLITS},
        "types": dict(sorted(kinds.items())),
    }
    if dataset.config.format == "music-avqa":
        yes_no = [q.answer for q in dataset.questions if q.answer in ("yes", "no")]
        out["yes_share"] = round(yes_no.count("yes") / max(len(yes_no), 1), 4)
        out["question_prior_accuracy"] = round(
            question_prior_accuracy(dataset.split("train"), dataset.split("test")), 4
        )
    else:
        out["position_prior_accuracy"] = round(position_prior_accuracy(records["train"], records["test"]), 4)
    return out


# --------------------------------------------------------------------------- media


def render(scene: Scene, fps: int, size: int, sample_rate: int = AUDIO_RATE) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 [N, H, W, 3] at ``fps`` and mono float32 audio in [-1, 1], deterministically from
    the scene's ``render_seed`` (so a clip renders identically in any process and in any order)."""
    frames = render_frames(scene, fps, size, np.random.default_rng([scene.render_seed, 1]))
    audio = render_audio(scene, sample_rate, np.random.default_rng([scene.render_seed, 2]))
    return frames, audio


def _render_one(task: tuple[dict, int, int, str]) -> str:
    """Render one scene and write its mp4 atomically (runs in a worker process)."""
    scene_json, fps, size, path = task
    scene = Scene.from_json(scene_json)
    frames, audio = render(scene, fps, size)
    with artifacts.atomic_path(Path(path)) as tmp:
        write_mp4(tmp, frames, fps, audio)
    return scene.video_id


def render_videos(config: SynthConfig, scenes: list[Scene], workers: int | None = None) -> None:
    """Write ``videos/<video_id>.mp4`` for every scene, with a progress bar."""
    videos = Path(config.out) / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    tasks = [(s.to_json(), config.fps, config.size, str(videos / f"{s.video_id}.mp4")) for s in scenes]
    if workers is None:
        workers = 1 if len(tasks) < POOL_MIN_VIDEOS else min(WORKERS, os.cpu_count() or 1)
    with progress_bar() as bar:
        task = bar.add_task("render clips", total=len(tasks))
        if workers <= 1:
            for item in tasks:
                _render_one(item)
                bar.advance(task)
            return
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for _ in pool.map(_render_one, tasks, chunksize=4):
                bar.advance(task)


# --------------------------------------------------------------------------- output directory


def _check_out(out: Path) -> None:
    """Refuse a directory that holds something other than a (possibly unfinished) synth dataset."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    meta = artifacts.meta_path(out)
    if meta.exists():
        try:
            stage = artifacts.read_json(meta).get("stage")
        except (ValueError, AttributeError):
            raise UserError(f"{meta}: unreadable meta file; remove it or choose another directory") from None
        if stage != "synth":
            raise UserError(f"{out}: holds the output of `r2scp {stage}`; choose another directory for synth")
    elif out.is_dir() and any(out.iterdir()) and not (out / SCENES_NAME).exists():
        raise UserError(f"{out}: exists, is not empty and is not a synth dataset; choose a new directory")


def _remove_stale(out: Path, scenes: list[Scene]) -> None:
    """In an earlier synth output: clips of ids no longer generated, leftover temporary files and the
    annotation files (of the other format, or of a dataset where a library is written now), so the
    directory holds exactly one dataset or library."""
    wanted = {f"{s.video_id}.mp4" for s in scenes}
    for path in sorted((out / "videos").glob("*")) if (out / "videos").is_dir() else []:
        if path.is_file() and (path.name not in wanted or path.name.endswith(".tmp")):
            path.unlink()
    for fmt in DATASET_FORMATS:
        for split in SPLITS:
            path = out / annotation_name(fmt, split)
            if path.exists():
                path.unlink()


def scenes_jsonl(scenes: list[Scene]) -> str:
    return "".join(json.dumps(s.to_json()) + "\n" for s in scenes)


def read_scenes(out: Path) -> list[Scene]:
    """The scenes of a synth output, to audit answers."""
    lines = (Path(out) / SCENES_NAME).read_text(encoding="utf-8").splitlines()
    return [Scene.from_json(json.loads(line)) for line in lines if line.strip()]


def readme(config: SynthConfig, stats: dict) -> str:
    """OUT/README.md: what the dataset is and how it was made (no timestamps: reruns are identical)."""
    files = ", ".join(f"`{annotation_name(config.format, s)}`" for s in SPLITS)
    types = "\n".join(f"| {kind} | {count} |" for kind, count in stats["types"].items())
    prior = (
        f"- question-only prior (majority answer per filled question, fitted on train, scored on test): "
        f"{stats['question_prior_accuracy']:.1%}\n- share of yes among yes/no answers: {stats['yes_share']:.1%}"
        if config.format == "music-avqa"
        else f"- always choosing the most frequent train answer position scores {stats['position_prior_accuracy']:.1%} "
        "on test (four options, correct position drawn uniformly)"
    )
    return f"""# Built-in audio-visual question answering dataset

Generated offline by `r2scp synth OUT --videos {config.videos} --seed {config.seed} \
--seconds {config.seconds:g} --fps {config.fps} --size {config.size} --split-by {config.split_by} \
--format {config.format}`. No external data: every clip and question is a function of these arguments,
and the same arguments give byte-identical annotation files and identical decoded media.

## Files

- `videos/<video_id>.mp4`: {config.videos} clips of {config.seconds:g} s, {config.size}x{config.size} pixels at
  {config.fps} fps (H.264) with a 16 kHz mono AAC track;
- {files}: the questions, {'MUSIC-AVQA' if config.format == 'music-avqa' else 'AVQA'} record format;
- `scenes.jsonl`: one latent scene per video (players with instrument, position or null when off
  screen, schedule, onset and offset in seconds, loudness in dB, note rate; setting; clutter), from
  which every answer can be audited.

## Scenes

1-3 instruments visible at left/middle/right (45% solos, 40% duets, 15% trios; {P_DUPLICATE:.0%} of
duets and trios play one class twice), in {P_OFFSCREEN:.0%} of clips one more instrument that sounds
off screen. Classes: {', '.join(INSTRUMENTS)}. Each player sounds always, starts late, stops early or
stays silent, at its own loudness ({LOUDNESS_DB[0]:g}..{LOUDNESS_DB[1]:g} dB) and note rate (1, 2 or 4
notes/s). Sound: an additive synthesiser per class (pitch range, partials, body resonances, sustained
or decaying envelope, vibrato, noise). Picture: a procedural drawing
per class (colour, outline, texture) at its slot; a player bobs and tilts while it sounds. Indoor
(wall, floor) or outdoor (sky, grass). Clutter that carries no answer varies per clip: background
palette and texture, props, lighting, ambient noise, hum and chirps.

## Questions

About ten per video, from MUSIC-AVQA's templates and 42-word answer vocabulary (AVQA mode: Which,
Where, When, Come From and Happening questions with four options). Audio questions read only the
soundtrack's facts, Visual questions only the picture's, Audio-Visual questions need both. Yes/no
answers are balanced per template (at most {YES_NO_MAX_SHARE:.0%} for either). Split by
{'QA pair (a video appears in several splits, as in MUSIC-AVQA)' if config.split_by == 'qa' else 'video'},
about 60/15/25% train/val/test: {stats['splits']['train']} / {stats['splits']['val']} / \
{stats['splits']['test']} questions.

{prior}

| type | questions |
|---|---|
{types}
"""


def run(config: SynthConfig, force: bool = False, workers: int | None = None) -> Path:
    """Write the dataset to ``config.out`` and return it; a finished identical run is kept as is."""
    validate(config)
    out = Path(config.out)
    _check_out(out)
    stage = artifacts.begin("synth", out, config, inputs={}, force=force)
    if stage.finished:
        console.print(f"{out}: already synthesised with these arguments (use --force to redo)", soft_wrap=True)
        return out
    if config.library:
        return _run_library(config, out, stage, workers)
    dataset = generate(config)
    _remove_stale(out, dataset.scenes)
    artifacts.write_text(out / SCENES_NAME, scenes_jsonl(dataset.scenes))
    render_videos(config, dataset.scenes, workers)
    records = music_avqa_records(dataset) if config.format == "music-avqa" else avqa_records(dataset)
    for split in SPLITS:
        artifacts.write_json(out / annotation_name(config.format, split), records[split])
    stats = figures(dataset, records)
    artifacts.write_text(out / "README.md", readme(config, stats))
    stage.finish(figures=stats)
    console.print(
        f"{out}: {stats['videos']} videos, {stats['questions']} questions "
        f"(train {stats['splits']['train']}, val {stats['splits']['val']}, test {stats['splits']['test']})",
        soft_wrap=True,
    )
    return out


def library_readme(config: SynthConfig) -> str:
    """OUT/README.md of a library (no timestamps: reruns are identical)."""
    return f"""# Built-in clip library

Generated offline by `r2scp synth OUT --library --videos {config.videos} --seed {config.seed} \
--seconds {config.seconds:g} --fps {config.fps} --size {config.size}`: clips only, no questions, for
`r2scp extract OUT --library --out LIB.h5` and `r2scp build-bank FEATURES --library LIB.h5`.

- `videos/<video_id>.mp4`: {config.videos} clips of {config.seconds:g} s, {config.size}x{config.size} pixels at
  {config.fps} fps (H.264) with a 16 kHz mono AAC track, drawn and rendered like the built-in dataset's;
- `scenes.jsonl`: the latent scene of every clip.

Video ids `lib{config.seed}-000001`... live in their own namespace: no dataset id (8 digits) equals
one, and a library's scenes come from random streams no dataset uses, so a library of any seed never
repeats a dataset clip.
"""


def _run_library(config: SynthConfig, out: Path, stage, workers: int | None) -> Path:
    """Clips, scenes and README of a library; no annotation files."""
    scenes = library_scenes(config)
    _remove_stale(out, scenes)
    artifacts.write_text(out / SCENES_NAME, scenes_jsonl(scenes))
    render_videos(config, scenes, workers)
    artifacts.write_text(out / "README.md", library_readme(config))
    stats = {"videos": len(scenes), "library": True, "first_id": scenes[0].video_id, "last_id": scenes[-1].video_id}
    stage.finish(figures=stats)
    console.print(f"{out}: a library of {len(scenes)} clips ({stats['first_id']} .. {stats['last_id']}), no questions",
                  soft_wrap=True)  # fmt: skip
    return out
