"""AVQA-style multiple-choice questions about built-in scenes (``r2scp synth --format avqa``).

AVQA (Yang et al., MM 2022) asks free-form questions with four options. The built-in scenes can
answer five of its types: Which, Where, When, Come From, Happening. Each question's relation says
which modality it reads: View (picture only), Sound (soundtrack only) or Both. Distractors are
answers of the same kind (instrument names, counts, places, times, ensembles), preferring ones that
are plausible for this clip (an instrument that is seen but silent, heard but off screen); the
correct option's position is drawn uniformly from 0-3 by the caller.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .questions import NUMBERS, ChoiceQuestion, offscreen_heard, pick, visible_sounding
from .scenes import INSTRUMENTS, LOUD_MARGIN_DB, Scene

PLACES = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
OFF_SCREEN = "off screen"
NOT_SEEN = "not in the picture"
WHEN = {"always": "throughout the clip", "early": "only in the first part", "late": "only in the second part",
        "silent": "not at all"}  # fmt: skip


def _name(instrument: str) -> str:
    words = instrument.replace("_", " ")
    return f"an {words}" if words[0] in "aeiou" else f"a {words}"


def ensemble(classes) -> str:
    """'a cello', 'a cello and a flute', 'a cello, a drum and a flute' (sorted, no repeats)."""
    names = [_name(c) for c in sorted(set(classes))]
    if not names:
        return "nothing"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _ensemble_variants(classes: set[str], related: list[set[str]]) -> tuple[list[str], list[str]]:
    """Wrong ensembles: the clip's other sets (hard), then one class swapped, dropped or added."""
    correct = ensemble(classes)
    hard = [ensemble(s) for s in related if s and ensemble(s) != correct]
    pool = []
    for c in sorted(classes):
        pool += [ensemble((classes - {c}) | {o}) for o in INSTRUMENTS if o not in classes]
        if len(classes) > 1:
            pool.append(ensemble(classes - {c}))
    if len(classes) < 3:
        pool += [ensemble(classes | {o}) for o in INSTRUMENTS if o not in classes]
    return sorted(set(hard)), sorted(set(pool) - {correct})


def _q(scene, qtype, relation, text, answer, hard, pool) -> ChoiceQuestion:
    hard = tuple(sorted({h for h in hard if h != answer}))
    pool = tuple(sorted({p for p in pool if p != answer}))
    return ChoiceQuestion(scene.video_id, qtype, relation, text, answer, hard, pool)


def _place(player) -> str:
    return PLACES[player.position] if player.visible else OFF_SCREEN


# --------------------------------------------------------------------------- fills: scene, rng -> question


def _which_view(scene: Scene, rng):
    p = pick(rng, scene.visible)
    text = f"Which instrument is {PLACES[p.position]} of the stage?"
    clip = scene.visible_classes() | scene.heard_classes()
    return _q(scene, "Which", "View", text, p.instrument, clip - {p.instrument}, INSTRUMENTS)


def _which_sound(scene: Scene, rng):
    heard = sorted(scene.heard_classes())
    answer = pick(rng, heard)
    wrong = [c for c in INSTRUMENTS if c not in heard]
    hard = scene.visible_classes() - set(heard)
    return _q(scene, "Which", "Sound", "Which of these instruments can be heard in the video?", answer, hard, wrong)


def _which_count(scene: Scene, rng):
    answer = NUMBERS[len(visible_sounding(scene))]
    text = "How many of the instruments on screen are being played?"
    hard = {NUMBERS[len(scene.visible)], NUMBERS[len(scene.sounding)]}
    return _q(scene, "Which", "Both", text, answer, hard, NUMBERS[:5])


def _where_seen(scene: Scene, rng):
    unique = [p for p in scene.visible if scene.count_visible(p.instrument) == 1]
    if rng.random() < 0.2 or not unique:
        offscreen = offscreen_heard(scene)
        instrument = pick(rng, offscreen or [c for c in INSTRUMENTS if c not in scene.visible_classes()])
        answer = NOT_SEEN
    else:
        p = pick(rng, unique)
        instrument, answer = p.instrument, PLACES[p.position]
    options = [*PLACES.values(), NOT_SEEN]
    return _q(scene, "Where", "View", f"Where is the {instrument.replace('_', ' ')} in the picture?", answer,
              (), options)  # fmt: skip


def _where_loudest(scene: Scene, rng):
    ranked = sorted(scene.sounding, key=lambda p: p.loudness_db, reverse=True)
    if len(ranked) < 2 or ranked[0].loudness_db - ranked[1].loudness_db < LOUD_MARGIN_DB:
        return None
    options = [*PLACES.values(), OFF_SCREEN]
    return _q(scene, "Where", "Both", "Where is the loudest instrument?", _place(ranked[0]), (), options)


def _come_from(scene: Scene, rng):
    named = [p for p in scene.sounding if sum(q.instrument == p.instrument for q in scene.players) == 1]
    if not named:
        return None
    p = pick(rng, named)
    text = f"Where does the sound of the {p.instrument.replace('_', ' ')} come from?"
    return _q(scene, "Come From", "Both", text, _place(p), (), [*PLACES.values(), OFF_SCREEN])


def _when(scene: Scene, rng):
    p = pick(rng, scene.visible)
    text = f"When is the {p.instrument.replace('_', ' ')} {PLACES[p.position]} playing?"
    return _q(scene, "When", "Both", text, WHEN[p.schedule], (), WHEN.values())


def _happening_sound(scene: Scene, rng):
    heard = scene.heard_classes()
    hard, pool = _ensemble_variants(heard, [scene.visible_classes()])
    return _q(scene, "Happening", "Sound", "What can be heard in the video?", ensemble(heard), hard, pool)


def _happening_both(scene: Scene, rng):
    playing = {p.instrument for p in visible_sounding(scene)}
    hard, pool = _ensemble_variants(playing, [scene.visible_classes(), scene.heard_classes()])
    if not playing:
        pool = [ensemble({c}) for c in INSTRUMENTS]
    text = "Which instruments on screen are being played?"
    return _q(scene, "Happening", "Both", text, ensemble(playing), hard, pool)


AVQA_TEMPLATES: dict[str, tuple[float, tuple[Callable, ...]]] = {
    "Which": (3.0, (_which_view, _which_sound, _which_count)),
    "Where": (2.2, (_where_seen, _where_loudest)),
    "Come From": (1.5, (_come_from,)),
    "When": (1.7, (_when,)),
    "Happening": (2.0, (_happening_sound, _happening_both)),
}  # expected questions per video and type, and the type's templates


def avqa_questions(scene: Scene, rng: np.random.Generator) -> list[ChoiceQuestion]:
    """About ten multiple-choice questions on one scene, no question text twice."""
    questions: list[ChoiceQuestion] = []
    seen: set[str] = set()
    for quota, fills in AVQA_TEMPLATES.values():
        for _ in range(int(quota) + int(rng.random() < quota % 1)):
            for index in rng.permutation(len(fills)):
                question = fills[index](scene, rng)
                if question is not None and question.text not in seen:
                    seen.add(question.text)
                    questions.append(question)
                    break
    return questions


def options(question: ChoiceQuestion, rng: np.random.Generator) -> tuple[list[str], int]:
    """Four distinct options and the correct index: up to two distractors from the clip's
    plausible wrong answers, the rest from all answers of the same kind; correct position uniform."""
    hard = [question.hard[i] for i in rng.permutation(len(question.hard))][: int(rng.integers(1, 3))]
    rest = [p for p in question.pool if p not in hard]
    wrong = hard + [rest[i] for i in rng.permutation(len(rest))][: 3 - len(hard)]
    wrong = [wrong[i] for i in rng.permutation(len(wrong))]
    position = int(rng.integers(4))
    return wrong[:position] + [question.answer] + wrong[position:], position
