"""Questions about built-in scenes: MUSIC-AVQA templates (open answers) and AVQA multiple choice.

Each template is the exact MUSIC-AVQA wording with its placeholders, its family/subtype, and a
``fill`` that picks placeholder values in a scene and computes the answer from the scene's facts.
Which facts a family may read is the point of the dataset:

- Audio questions read only what the soundtrack carries: the sounding players' classes, onsets,
  offsets, loudness and note rates (never positions, visibility or the setting);
- Visual questions read only what the picture carries: the visible players' classes and positions
  and the setting (never schedules or loudness);
- Audio-Visual questions need both: which visible player sounds, where the loudest one stands.

Yes/no templates take the wanted answer (drawn 50/50 by the caller) and return ``None`` when the
scene cannot give it, so each template's answers stay balanced. Questions refer to a class only when
the class names one player (``Scene.unique_visible`` / ``unique_sounding``), and compare loudness,
duration or onsets only when the difference is clear: at least 6 dB, or a fifth of the clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .scenes import INSTRUMENTS, LOUD_MARGIN_DB, POSITIONS, Player, Scene

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
TIME_GAP = 0.2  # share of the clip by which two onsets or durations must differ to be ordered


@dataclass(frozen=True)
class Question:
    """One MUSIC-AVQA question about one video, before ids and splits are assigned."""

    video_id: str
    family: str  # Audio | Visual | Audio-Visual
    subtype: str  # Counting, Comparative, Location, Existential, Temporal
    content: str  # template with placeholders, exactly as in MUSIC-AVQA
    values: tuple[str, ...]
    answer: str

    @property
    def text(self) -> str:
        return fill_template(self.content, self.values)


@dataclass(frozen=True)
class ChoiceQuestion:
    """One AVQA question: its text, relation, the correct option and where distractors come from."""

    video_id: str
    question_type: str  # Which, Where, When, Come From, Happening
    relation: str  # View, Sound, Both
    text: str
    answer: str
    hard: tuple[str, ...]  # plausible wrong options from the same clip, preferred as distractors
    pool: tuple[str, ...]  # every other wrong option of the same kind

    @property
    def content(self) -> str:  # the template key used for balancing and statistics
        return f"{self.question_type}/{self.relation}"


def fill_template(content: str, values: tuple[str, ...] | list[str]) -> str:
    """MUSIC-AVQA's rule: split on spaces, each token holding ``<`` takes the next value, drop the
    final question mark."""
    tokens, values = content.split(" "), list(values)
    if sum("<" in token for token in tokens) != len(values):
        raise ValueError(f"{content!r} has a different number of placeholders than {values}")
    filled = [values.pop(0) if "<" in token else token for token in tokens]
    return " ".join(filled).strip().rstrip("?？").strip()


def pick(rng: np.random.Generator, items):
    """One item of a sequence (keeps its Python type, unlike ``rng.choice``)."""
    return items[int(rng.integers(len(items)))]


def _count(n: int) -> str:
    return NUMBERS[n] if n <= 10 else "more than ten"


def _others(exclude) -> list[str]:
    return [c for c in INSTRUMENTS if c not in exclude]


# --------------------------------------------------------------------------- scene facts


def _gap(scene: Scene) -> float:
    return TIME_GAP * scene.seconds


def _ordered(players: list[Player], scene: Scene, rank: int) -> Player | None:
    """The player whose onset has this rank (0 first, -1 last), if it is clearly apart."""
    ranked = sorted(players, key=lambda p: p.onset)
    if len(ranked) < 2:
        return None
    target = ranked[rank]
    others = [abs(p.onset - target.onset) for p in ranked if p is not target]
    return target if min(others) >= _gap(scene) else None


def visible_sounding(scene: Scene) -> list[Player]:
    """Players that are on screen and sound at some point."""
    return [p for p in scene.visible if p.sounding]


def offscreen_heard(scene: Scene) -> list[str]:
    """Classes heard but not seen."""
    return sorted(p.instrument for p in scene.sounding if not p.visible)


# --------------------------------------------------------------------------- generic fills


def _exists(present: set[str], decoys: set[str], rng, want: str):
    """'Is there a X?': yes names a present class; no names a decoy (present in the other
    modality) half the time, otherwise any absent class."""
    if want == "yes":
        return ([pick(rng, sorted(present))], "yes") if present else None
    decoys = sorted(decoys - present)
    pool = decoys if decoys and rng.random() < 0.5 else _others(present)
    return [pick(rng, pool)], "no"


def _both_exist(present: set[str], decoys: set[str], rng, want: str):
    """'Are there X and Y?': yes needs two present classes; no mixes a present and an absent one."""
    present_list = sorted(present)
    if want == "yes":
        if len(present_list) < 2:
            return None
        pair = [str(c) for c in rng.choice(present_list, size=2, replace=False)]
        return pair, "yes"
    decoy_list = sorted(decoys - present)
    second = pick(rng, decoy_list) if decoy_list and rng.random() < 0.5 else pick(rng, _others(present))
    absent_rest = [c for c in _others(present) if c != second]
    first = pick(rng, present_list) if present_list and rng.random() < 0.6 else pick(rng, absent_rest)
    pair = [first, second] if rng.random() < 0.5 else [second, first]
    return pair, "no"


def _compare(players: list[Player], key: Callable[[Player], float], margin: float, rng, want: str):
    """A pair (p, q) whose key differs by at least ``margin``, ordered so that 'p > q' is ``want``."""
    pairs = [(p, q) for i, p in enumerate(players) for q in players[i + 1 :] if abs(key(p) - key(q)) >= margin]
    if not pairs:
        return None
    p, q = pick(rng, pairs)
    greater, smaller = (p, q) if key(p) > key(q) else (q, p)
    return (greater, smaller) if want == "yes" else (smaller, greater)


def _loudness(p: Player) -> float:
    return p.loudness_db


def _duration(p: Player) -> float:
    return p.duration


def _rate(p: Player) -> float:
    return p.notes_per_second


# --------------------------------------------------------------------------- MUSIC-AVQA fills
# Each takes (scene, rng, want) and returns (values, answer) or None.


def _a_sound(scene, rng, want):
    return _exists(scene.heard_classes(), scene.visible_classes(), rng, want)


def _a_sounds(scene, rng, want):
    return _both_exist(scene.heard_classes(), scene.visible_classes(), rng, want)


def _a_heard_count(scene, rng, want):
    return [], _count(len(scene.sounding))


def _a_comparative(key, margin_of):
    def fill(scene, rng, want):
        pair = _compare(scene.unique_sounding(), key, margin_of(scene), rng, want)
        return ([pair[0].instrument, pair[1].instrument], want) if pair else None

    return fill


def _v_seen(scene, rng, want):
    return _exists(scene.visible_classes(), set(offscreen_heard(scene)), rng, want)


def _v_seen_both(scene, rng, want):
    return _both_exist(scene.visible_classes(), set(offscreen_heard(scene)), rng, want)


def _v_count_object(scene, rng, want):
    if rng.random() < 0.25:
        offscreen = offscreen_heard(scene)
        pool = offscreen if offscreen and rng.random() < 0.5 else _others(scene.visible_classes())
        return [pick(rng, pool)], "zero"
    instrument = pick(rng, [p.instrument for p in scene.visible])
    return [instrument], _count(scene.count_visible(instrument))


def _v_types(scene, rng, want):
    return [], _count(len(scene.visible_classes()))


def _v_setting(scene, rng, want):
    return [], scene.setting


def _v_solo(scene, rng, want):
    return ([], scene.visible[0].instrument) if len(scene.visible) == 1 else None


def _v_neighbour(scene, rng, want):
    """'What is the instrument on the <LR> of <Object>?': the nearest visible player on that side."""
    options = []
    for p in scene.visible:
        if scene.count_visible(p.instrument) != 1:
            continue
        index = POSITIONS.index(p.position)
        left = [q for q in scene.visible if POSITIONS.index(q.position) < index]
        right = [q for q in scene.visible if POSITIONS.index(q.position) > index]
        options += [("left", p, left[-1])] if left else []
        options += [("right", p, right[0])] if right else []
    if not options:
        return None
    side, p, neighbour = pick(rng, options)
    return [side, p.instrument], neighbour.instrument


def _v_extreme(scene, rng, want):
    if len(scene.visible) < 2:
        return None
    side = pick(rng, ["leftest", "rightest"])
    return [side], (scene.visible[0] if side == "leftest" else scene.visible[-1]).instrument


def _e_always(scene, rng, want):
    pool = [p for p in scene.unique_visible() if (p.schedule == "always") == (want == "yes")]
    return ([pick(rng, pool).instrument], want) if pool else None


def _e_from_video(scene, rng, want):
    answer = "no" if offscreen_heard(scene) else "yes"
    return ([], answer) if answer == want else None


def _c_sounding(scene, rng, want):
    return [], _count(len(visible_sounding(scene)))


def _c_not_whole(scene, rng, want):
    return [], _count(sum(p.schedule != "always" for p in scene.visible))


def _c_sounding_object(scene, rng, want):
    if rng.random() < 0.2:
        offscreen = offscreen_heard(scene)
        instrument = pick(rng, offscreen if offscreen else _others(scene.visible_classes()))
    else:
        instrument = pick(rng, [p.instrument for p in scene.visible])
    return [instrument], _count(sum(p.instrument == instrument for p in visible_sounding(scene)))


def _c_sounding_types(scene, rng, want):
    return [], _count(len({p.instrument for p in visible_sounding(scene)}))


def _l_loudest(scene, rng, want):
    ranked = sorted(scene.sounding, key=_loudness, reverse=True)
    if len(scene.visible) < 2 or not ranked or not ranked[0].visible:
        return None
    if len(ranked) > 1 and ranked[0].loudness_db - ranked[1].loudness_db < LOUD_MARGIN_DB:
        return None
    return ["loudest"], ranked[0].position


def _l_first_from(scene, rng, want):
    which = pick(rng, ["first", "last"])
    ref = _ordered(scene.sounding, scene, 0 if which == "first" else -1)
    if ref is None or not ref.visible or len(scene.visible) < 2:
        return None
    if want == "yes":
        return [which, ref.position], "yes"
    return [which, pick(rng, [p.position for p in scene.visible if p is not ref])], "no"


def _p_comparative(key, margin, with_class: bool):
    def fill(scene, rng, want):
        pair = _compare(visible_sounding(scene), key, margin, rng, want)
        if pair is None:
            return None
        p, q = pair
        values = [p.instrument, p.position, q.instrument, q.position] if with_class else [p.position, q.position]
        return values, want

    return fill


def _t_where_first(scene, rng, want):
    which = pick(rng, ["first", "last"])
    ref = _ordered(scene.sounding, scene, 0 if which == "first" else -1)
    return ([which], ref.position) if ref is not None and ref.visible else None


def _t_before_after(scene, rng, want):
    """'Which instrument makes sounds <BA> the <Object>?': the one player clearly before/after."""
    unique = scene.unique_sounding()
    options = []
    for p in (p for p in unique if p.visible):
        for word, sign in (("before", -1), ("after", 1)):
            hits = [q for q in scene.sounding if q is not p and sign * (q.onset - p.onset) >= _gap(scene)]
            if len(hits) == 1 and hits[0] in unique:
                options.append((word, p, hits[0]))
    if not options:
        return None
    word, p, hit = pick(rng, options)
    return [word, p.instrument], hit.instrument


def _t_comes_in(scene, rng, want):
    ranked = sorted(scene.sounding, key=lambda p: p.onset)
    rank = int(rng.integers(2))
    if len(ranked) < 2:
        return None
    target = ranked[rank]
    apart = all(abs(q.onset - target.onset) >= _gap(scene) for q in ranked if q is not target)
    if not apart or target not in scene.unique_sounding():
        return None
    return [("first", "second")[rank]], target.instrument


def _t_which_object(scene, rng, want):
    """'Which <Object> makes the sound <FL>?' about a class seen twice: a side or 'simultaneously'."""
    repeated = sorted({p.instrument for p in scene.visible if scene.count_visible(p.instrument) > 1})
    if not repeated:
        return None
    instrument, which = pick(rng, repeated), pick(rng, ["first", "last"])
    group = [p for p in visible_sounding(scene) if p.instrument == instrument]
    if not group:
        return None
    onsets = [p.onset for p in group]
    if max(onsets) - min(onsets) < _gap(scene):
        answer = "simultaneously" if len(group) > 1 else group[0].position
        return [instrument, which], answer
    ref = _ordered(group, scene, 0 if which == "first" else -1)
    return ([instrument, which], ref.position) if ref is not None else None


@dataclass(frozen=True)
class Template:
    family: str
    subtype: str
    content: str
    fill: Callable
    yes_no: bool = False


def _const(value: float) -> Callable[[Scene], float]:
    return lambda scene: value


MUSIC_AVQA_TEMPLATES: tuple[Template, ...] = (
    Template("Audio", "Counting", "Is there a <Object> sound?", _a_sound, True),
    Template("Audio", "Counting", "Are there <Object> and <Object> sound? ", _a_sounds, True),
    Template("Audio", "Counting", "How many musical instruments were heard throughout the video?", _a_heard_count),
    Template("Audio", "Comparative", "Is the <Object> louder than the <Object>?",
             _a_comparative(_loudness, _const(LOUD_MARGIN_DB)), True),
    Template("Audio", "Comparative", "Is the <Object> playing longer than the <Object>?",
             _a_comparative(_duration, _gap), True),
    Template("Audio", "Comparative", "Is the <Object> more rhythmic than the <Object>?",
             _a_comparative(_rate, _const(0.5)), True),
    Template("Visual", "Counting", "Is there a <Object> in the entire video?", _v_seen, True),
    Template("Visual", "Counting", "Are there <Object> and <Object> instruments in the video?", _v_seen_both, True),
    Template("Visual", "Counting", "How many <Object> are in the entire video?", _v_count_object),
    Template("Visual", "Counting", "How many types of musical instruments appeared in the entire video?", _v_types),
    Template("Visual", "Location", "Where is the performance?", _v_setting),
    Template("Visual", "Location", "What kind of musical instrument is it?", _v_solo),
    Template("Visual", "Location", "What is the instrument on the <LR> of <Object>?", _v_neighbour),
    Template("Visual", "Location", "What kind of instrument is the <LRer> instrument? ", _v_extreme),
    Template("Audio-Visual", "Existential", "Is the <Object> in the video always playing?", _e_always, True),
    Template("Audio-Visual", "Existential", "Is this sound from the instrument in the video?", _e_from_video, True),
    Template("Audio-Visual", "Counting", "How many instruments are sounding in the video?", _c_sounding),
    Template("Audio-Visual", "Counting", "How many instruments in the video did not sound from beginning to end?",
             _c_not_whole),
    Template("Audio-Visual", "Counting", "How many sounding <Object> in the video？", _c_sounding_object),
    Template("Audio-Visual", "Counting", "How many types of musical instruments sound in the video?",
             _c_sounding_types),
    Template("Audio-Visual", "Location", "Where is the <LL> instrument?", _l_loudest),
    Template("Audio-Visual", "Location", "Is the <FL> sound coming from the <LR> instrument?", _l_first_from, True),
    Template("Audio-Visual", "Comparative", "Is the instrument on the <LR> louder than the instrument on the <LR>?",
             _p_comparative(_loudness, LOUD_MARGIN_DB, False), True),
    Template("Audio-Visual", "Comparative",
             "Is the instrument on the <LR> more rhythmic than the instrument on the <LR>?",
             _p_comparative(_rate, 0.5, False), True),
    Template("Audio-Visual", "Comparative", "Is the <Object> on the <LR> louder than the <Object> on the <LR>?",
             _p_comparative(_loudness, LOUD_MARGIN_DB, True), True),
    Template("Audio-Visual", "Temporal", "Where is the <FL> sounding instrument?", _t_where_first),
    Template("Audio-Visual", "Temporal", "Which instrument makes sounds <BA> the <Object>?", _t_before_after),
    Template("Audio-Visual", "Temporal", "What is the <TH> instrument that comes in?", _t_comes_in),
    Template("Audio-Visual", "Temporal", "Which <Object> makes the sound <FL>?", _t_which_object),
)  # fmt: skip

# Questions tried per video and type; with templates that do not fit a scene and yes/no balancing,
# about ten questions per video remain.
MUSIC_AVQA_QUOTAS: dict[tuple[str, str], float] = {
    ("Audio", "Counting"): 1.6, ("Audio", "Comparative"): 1.8,
    ("Visual", "Counting"): 1.6, ("Visual", "Location"): 1.7,
    ("Audio-Visual", "Existential"): 1.5, ("Audio-Visual", "Counting"): 1.6,
    ("Audio-Visual", "Location"): 2.0, ("Audio-Visual", "Comparative"): 2.0, ("Audio-Visual", "Temporal"): 2.0,
}  # fmt: skip


def music_avqa_questions(scene: Scene, rng: np.random.Generator) -> list[Question]:
    """About ten questions on one scene: per type, templates in random order until one fits."""
    questions: list[Question] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for (family, subtype), quota in MUSIC_AVQA_QUOTAS.items():
        templates = [t for t in MUSIC_AVQA_TEMPLATES if (t.family, t.subtype) == (family, subtype)]
        for _ in range(int(quota) + int(rng.random() < quota % 1)):
            for index in rng.permutation(len(templates)):
                template = templates[index]
                want = pick(rng, ["yes", "no"]) if template.yes_no else ""
                filled = template.fill(scene, rng, want)
                if filled is None or (template.content, tuple(filled[0])) in seen:
                    continue
                seen.add((template.content, tuple(filled[0])))
                questions.append(
                    Question(scene.video_id, family, subtype, template.content, tuple(filled[0]), filled[1])
                )
                break
    return questions
