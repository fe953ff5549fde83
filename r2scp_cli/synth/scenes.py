"""Latent scenes of the built-in dataset: plain data, rendered by sound.py and picture.py.

A scene is a short performance: 1-3 instruments visible at left/middle/right (solos and duets
dominate, as in MUSIC-AVQA), sometimes an extra instrument that sounds off screen, each player with a
schedule (always, starts late, stops early, silent), a loudness and a note rate. Questions are
answered from the scene alone; the renderer puts every fact that a question needs into the media:
timbre, pitch range and envelope identify an instrument in a log-mel spectrum, colour, shape and
texture identify it in the picture, at its slot on a coarse left/middle/right grid. Per-clip clutter
(background, props, ambient noise, hum, chirps) varies independently of the facts, so raw global
vectors of two clips with the same instruments are close but not equal.

Everything is a pure function of the scene (and its ``render_seed``), so a clip renders identically
in any process and in any order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

INSTRUMENTS: tuple[str, ...] = (
    "acoustic_guitar", "accordion", "cello", "drum", "flute",
    "piano", "saxophone", "trumpet", "violin", "xylophone",
)  # fmt: skip
POSITIONS: tuple[str, ...] = ("left", "middle", "right")
SCHEDULES: tuple[str, ...] = ("always", "late", "early", "silent")
SETTINGS: tuple[str, ...] = ("indoor", "outdoor")
NOTE_RATES: tuple[float, ...] = (1.0, 2.0, 4.0)  # notes per second: any two differ by at least 2x

# Scene composition: 45 % solos, 40 % duets, 15 % trios; schedules of visible and off-screen players.
_VISIBLE_COUNTS = ((1, 2, 3), (0.45, 0.40, 0.15))
_LAYOUTS = {
    1: ((("middle",), ("left",), ("right",)), (0.6, 0.2, 0.2)),
    2: ((("left", "right"), ("left", "middle"), ("middle", "right")), (0.6, 0.2, 0.2)),
    3: ((("left", "middle", "right"),), (1.0,)),
}
_VISIBLE_SCHEDULES = (0.45, 0.22, 0.15, 0.18)
_OFFSCREEN_SCHEDULES = (0.5, 0.3, 0.2, 0.0)
P_OFFSCREEN = 0.3  # share of clips with a sounding instrument that is not on screen
P_DUPLICATE = 0.25  # share of ensembles where one class is played twice (two violins)
LOUDNESS_DB = (-18.0, 0.0)  # per-player level: RMS of its voice relative to a 0 dB player
LOUD_MARGIN_DB = 6.0  # "louder" is only asked when two players differ by at least this much


@dataclass(frozen=True)
class Player:
    """One instrument of a scene: where it is (``None`` = off screen) and how it sounds."""

    instrument: str
    position: str | None
    schedule: str  # always | late | early | silent
    onset: float  # seconds; 0 for silent players
    offset: float  # seconds; 0 for silent players
    loudness_db: float
    notes_per_second: float

    @property
    def visible(self) -> bool:
        return self.position is not None

    @property
    def sounding(self) -> bool:
        return self.schedule != "silent"

    @property
    def duration(self) -> float:
        return self.offset - self.onset


@dataclass(frozen=True)
class Clutter:
    """Per-clip background that carries no answer: picture style and ambient sound levels."""

    noise_db: float  # ambient noise level
    noise_tilt: float  # spectral slope of the ambient noise (0 white, 1 pink, 2 brown)
    hum_hz: float  # 0 = no hum
    chirps: int  # short non-instrument sound events
    props: int  # non-instrument objects in the picture
    brightness: float  # global picture gain


@dataclass(frozen=True)
class Scene:
    """Everything a question can ask about one clip, plus what the renderer needs."""

    video_id: str
    seconds: float
    setting: str  # indoor | outdoor
    players: tuple[Player, ...]  # visible players left to right, then the off-screen one (if any)
    clutter: Clutter
    render_seed: int

    # ---- facts used by the questions
    @property
    def visible(self) -> list[Player]:
        return [p for p in self.players if p.visible]

    @property
    def sounding(self) -> list[Player]:
        return [p for p in self.players if p.sounding]

    def heard_classes(self) -> set[str]:
        return {p.instrument for p in self.sounding}

    def visible_classes(self) -> set[str]:
        return {p.instrument for p in self.visible}

    def count_visible(self, instrument: str) -> int:
        return sum(p.instrument == instrument for p in self.visible)

    def unique_visible(self) -> list[Player]:
        """Visible players whose class occurs once in the whole scene (a class name names them)."""
        return [p for p in self.visible if sum(q.instrument == p.instrument for q in self.players) == 1]

    def unique_sounding(self) -> list[Player]:
        """Sounding players whose class no other sounding player has (the ear can single them out)."""
        return [p for p in self.sounding if sum(q.instrument == p.instrument for q in self.sounding) == 1]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Scene":
        players = tuple(Player(**p) for p in data["players"])
        return cls(
            data["video_id"], data["seconds"], data["setting"], players, Clutter(**data["clutter"]),
            data["render_seed"],
        )


# --------------------------------------------------------------------------- sampling


def _schedule(schedule: str, seconds: float, rng: np.random.Generator) -> tuple[float, float]:
    """Onset and offset of a schedule: late starts and early stops are at least a quarter clip in."""
    if schedule == "always":
        return 0.0, seconds
    if schedule == "late":
        return round(float(rng.uniform(0.25, 0.6)) * seconds, 2), seconds
    if schedule == "early":
        return 0.0, round(float(rng.uniform(0.4, 0.75)) * seconds, 2)
    return 0.0, 0.0


def _player(instrument: str, position: str | None, probs, seconds: float, rng) -> Player:
    schedule = str(rng.choice(SCHEDULES, p=probs))
    onset, offset = _schedule(schedule, seconds, rng)
    return Player(
        instrument=instrument,
        position=position,
        schedule=schedule,
        onset=onset,
        offset=offset,
        loudness_db=round(float(rng.uniform(*LOUDNESS_DB)), 1),
        notes_per_second=float(rng.choice(NOTE_RATES)),
    )


def _ensemble(count: int, rng: np.random.Generator) -> list[str]:
    """Classes of the visible players; in some ensembles one class is played twice."""
    classes = [str(c) for c in rng.choice(INSTRUMENTS, size=count, replace=False)]
    if count >= 2 and rng.random() < P_DUPLICATE:
        classes[int(rng.integers(1, count))] = classes[0]
    return classes


def sample_scene(video_id: str, seconds: float, rng: np.random.Generator) -> Scene:
    """Draw one scene. At least one player sounds; an off-screen class is never also on screen."""
    count = int(rng.choice(_VISIBLE_COUNTS[0], p=_VISIBLE_COUNTS[1]))
    layouts, weights = _LAYOUTS[count]
    layout = layouts[int(rng.choice(len(layouts), p=weights))]
    classes = _ensemble(count, rng)
    while True:
        players = [_player(c, pos, _VISIBLE_SCHEDULES, seconds, rng) for c, pos in zip(classes, layout)]
        if rng.random() < P_OFFSCREEN:
            others = [c for c in INSTRUMENTS if c not in classes]
            players.append(_player(str(rng.choice(others)), None, _OFFSCREEN_SCHEDULES, seconds, rng))
        if any(p.sounding for p in players):
            break
    clutter = Clutter(
        noise_db=round(float(rng.uniform(-48.0, -34.0)), 1),
        noise_tilt=round(float(rng.uniform(0.0, 2.0)), 2),
        hum_hz=round(float(rng.uniform(45.0, 160.0)), 1) if rng.random() < 0.5 else 0.0,
        chirps=int(rng.integers(0, 5)),
        props=int(rng.integers(0, 5)),
        brightness=round(float(rng.uniform(0.8, 1.15)), 3),
    )
    return Scene(
        video_id=video_id,
        seconds=float(seconds),
        setting=str(rng.choice(SETTINGS)),
        players=tuple(players),
        clutter=clutter,
        render_seed=int(rng.integers(0, 2**31 - 1)),
    )
