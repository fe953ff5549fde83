"""Pictures of a built-in scene: a per-clip background and one procedural drawing per visible player.

Every instrument class has its own colour, outline and texture (a small orange violin, a big maroon
cello, a tan guitar with a sound hole, a black piano with key stripes, a silver flute, a gold trumpet,
an amber saxophone, a blue drum, a rainbow xylophone, a red pleated accordion), drawn at its slot
(left, middle or right third of the frame) so that coarse spatial colour/shape statistics tell which
instrument is where. A player bobs and tilts while it sounds (partial visual evidence of the sound)
and stands still otherwise. The background tells indoor (warm wall, wooden floor) from outdoor (sky,
grass); its palette, texture, props and lighting vary per clip and carry no other answer.

Drawing is vectorised: each shape is a boolean mask over a pixel grid in the player's own rotated
coordinates (u across, v down, in units of the player's height / 2).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .scenes import Player, Scene

Layers = list[tuple[np.ndarray, tuple[int, int, int]]]
SLOT_X = {"left": 1 / 6, "middle": 1 / 2, "right": 5 / 6}
BOB = 0.05  # vertical motion of a sounding player, share of the frame height
TILT = 0.15  # radians

BLACK, WHITE, SILVER = (20, 20, 25), (240, 240, 235), (200, 205, 220)


# --------------------------------------------------------------------------- shape masks


def _ellipse(u, v, cx, cy, rx, ry) -> np.ndarray:
    return ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 <= 1.0


def _rect(u, v, x0, y0, x1, y1) -> np.ndarray:
    return (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)


def _capsule(u, v, a: tuple[float, float], b: tuple[float, float], radius: float) -> np.ndarray:
    """Points within ``radius`` of the segment a-b."""
    ab = np.subtract(b, a)
    s = np.clip(((u - a[0]) * ab[0] + (v - a[1]) * ab[1]) / float(ab @ ab), 0.0, 1.0)
    return (u - a[0] - s * ab[0]) ** 2 + (v - a[1] - s * ab[1]) ** 2 <= radius**2


def _stripes(w, frequency: float, duty: float) -> np.ndarray:
    return np.mod(w * frequency, 1.0) < duty


# --------------------------------------------------------------------------- instruments


def _violin(u, v) -> Layers:
    body = _ellipse(u, v, 0, 0.4, 0.27, 0.26) | _ellipse(u, v, 0, 0.0, 0.21, 0.21)
    holes = _ellipse(u, v, -0.11, 0.22, 0.02, 0.09) | _ellipse(u, v, 0.11, 0.22, 0.02, 0.09)
    return [(body, (215, 110, 40)), (_rect(u, v, -0.03, -0.8, 0.03, 0.45), BLACK),
            (_ellipse(u, v, 0, -0.85, 0.06, 0.07), (215, 110, 40)), (holes, BLACK)]  # fmt: skip


def _cello(u, v) -> Layers:
    body = _ellipse(u, v, 0, 0.45, 0.42, 0.36) | _ellipse(u, v, 0, -0.05, 0.33, 0.3)
    return [(body, (105, 35, 30)), (_rect(u, v, -0.045, -0.98, 0.045, 0.5), BLACK),
            (_rect(u, v, -0.012, 0.8, 0.012, 1.0), SILVER), (_stripes(v, 10, 0.1) & body, (70, 20, 18))]  # fmt: skip


def _guitar(u, v) -> Layers:
    body = _ellipse(u, v, 0, 0.5, 0.38, 0.3) | _ellipse(u, v, 0, 0.08, 0.3, 0.25)
    neck = _rect(u, v, -0.05, -0.95, 0.05, 0.1)
    return [(body, (228, 192, 120)), (neck, (110, 70, 30)), (neck & _stripes(v, 12, 0.15), SILVER),
            (_ellipse(u, v, 0, 0.25, 0.1, 0.1), BLACK)]  # fmt: skip


def _piano(u, v) -> Layers:
    keys = _rect(u, v, -0.48, 0.15, 0.48, 0.5)
    return [(_rect(u, v, -0.5, -0.6, 0.5, 0.65), BLACK), (keys, WHITE),
            (keys & (v < 0.36) & _stripes(u + 0.5, 14, 0.4), BLACK), (_rect(u, v, -0.5, 0.65, -0.42, 1.0), BLACK),
            (_rect(u, v, 0.42, 0.65, 0.5, 1.0), BLACK)]  # fmt: skip


def _flute(u, v) -> Layers:
    rod = _capsule(u, v, (-0.5, 0.15), (0.5, -0.25), 0.085)
    holes = rod & _capsule(u, v, (-0.5, 0.15), (0.5, -0.25), 0.035) & _stripes(u + 0.5, 8, 0.3)
    return [(rod, SILVER), (holes, (60, 60, 70)), (_ellipse(u, v, -0.1, 0.35, 0.16, 0.12), (190, 150, 120))]


def _trumpet(u, v) -> Layers:
    bell = (u >= 0.15) & (u <= 0.5) & (np.abs(v) <= 0.05 + (u - 0.15) * 0.7)
    valves = _rect(u, v, -0.2, -0.25, 0.05, 0.0) & _stripes(u + 0.2, 12, 0.45)
    return [(_rect(u, v, -0.5, -0.05, 0.2, 0.05) | bell, (240, 195, 40)),
            (_rect(u, v, -0.35, 0.05, 0.1, 0.18), (225, 175, 35)), (valves, SILVER)]  # fmt: skip


def _saxophone(u, v) -> Layers:
    body = (_capsule(u, v, (0.12, -0.75), (0.1, 0.45), 0.08) | _capsule(u, v, (0.1, 0.45), (-0.12, 0.6), 0.1)
            | _capsule(u, v, (-0.12, 0.6), (-0.22, 0.2), 0.12) | _capsule(u, v, (0.12, -0.75), (-0.1, -0.9), 0.03))
    keys = _capsule(u, v, (0.12, -0.55), (0.1, 0.3), 0.035) & _stripes(v, 9, 0.35)
    return [(body, (175, 115, 35)), (keys, (90, 60, 20)), (_ellipse(u, v, -0.22, 0.15, 0.12, 0.05), BLACK)]


def _drum(u, v) -> Layers:
    shell = _rect(u, v, -0.45, -0.1, 0.45, 0.55) | _ellipse(u, v, 0, 0.55, 0.45, 0.12)
    lugs = shell & _stripes(u + v, 5, 0.12)
    return [(shell, (40, 80, 200)), (lugs, SILVER), (_ellipse(u, v, 0, -0.1, 0.45, 0.12), (235, 230, 210)),
            (_capsule(u, v, (-0.3, -0.7), (-0.1, -0.2), 0.025) | _capsule(u, v, (0.3, -0.7), (0.1, -0.2), 0.025),
             (150, 110, 60))]  # fmt: skip


_RAINBOW = ((220, 40, 40), (240, 140, 30), (240, 220, 40), (60, 180, 60), (40, 110, 220), (140, 60, 200))


def _xylophone(u, v) -> Layers:
    layers: Layers = [(_rect(u, v, -0.5, -0.6, 0.5, 0.6) & ~_rect(u, v, -0.42, -0.55, 0.42, 0.55), (90, 55, 30))]
    for i, colour in enumerate(_RAINBOW):
        top = -0.55 + i * 0.19
        layers.append((_rect(u, v, -0.44 + 0.035 * i, top, 0.44 - 0.035 * i, top + 0.13), colour))
    return layers


def _accordion(u, v) -> Layers:
    body = _rect(u, v, -0.42, -0.5, 0.42, 0.5)
    return [(body, (200, 30, 45)), (body & (np.abs(u) < 0.25) & _stripes(u, 9, 0.3), BLACK),
            (_rect(u, v, 0.27, -0.5, 0.42, 0.5), WHITE), (_rect(u, v, 0.27, -0.5, 0.42, 0.5) & _stripes(v, 9, 0.3),
                                                          BLACK)]  # fmt: skip


DRAWINGS: dict[str, Callable[[np.ndarray, np.ndarray], Layers]] = {
    "acoustic_guitar": _guitar, "accordion": _accordion, "cello": _cello, "drum": _drum, "flute": _flute,
    "piano": _piano, "saxophone": _saxophone, "trumpet": _trumpet, "violin": _violin, "xylophone": _xylophone,
}  # fmt: skip


class _Sprite:
    """One visible player: drawn once upright on its own canvas, then placed at each frame's pose."""

    def __init__(self, player: "Player", size: int, brightness: float, rng: np.random.Generator):
        self.player = player
        self.unit = 0.3 * size * rng.uniform(0.9, 1.1)
        self.cx = (SLOT_X[player.position] + rng.uniform(-0.02, 0.02)) * size
        self.cy = (0.58 + rng.uniform(-0.03, 0.03)) * size
        self.phases = rng.uniform(0, 2 * np.pi, size=2)
        self.size = size
        self.half = (int(np.ceil(0.55 * self.unit)), int(np.ceil(1.05 * self.unit)))  # canvas half-width, -height
        self.colours, self.cover = self._canvas(brightness)
        self._cache: dict[tuple[float, float], tuple] = {}

    def _canvas(self, brightness: float) -> tuple[np.ndarray, np.ndarray]:
        """The upright drawing: colours uint8 [h, w, 3] and coverage bool [h, w], u in [-0.5, 0.5],
        v in [-1, 1] (plus a margin), one pixel per 1 / unit."""
        ys, xs = np.mgrid[-self.half[1] : self.half[1] + 1, -self.half[0] : self.half[0] + 1].astype(np.float32)
        u, v = xs / self.unit, ys / self.unit
        layers = DRAWINGS[self.player.instrument](u, v)
        label = np.zeros(u.shape, np.uint8)
        for index, (mask, _) in enumerate(layers, start=1):
            label[mask] = index
        palette = np.asarray([(0, 0, 0)] + [colour for _, colour in layers], np.float32)
        colours = palette[label] * ((1.0 - 0.12 * v) * brightness)[..., None]
        return np.clip(colours, 0, 255).astype(np.uint8), label > 0

    def pose(self, t: float) -> tuple[float, float]:
        """Vertical offset (pixels) and tilt (radians) at time t: still unless the player sounds."""
        if not self.player.onset <= t < self.player.offset:
            return 0.0, 0.0
        dy = BOB * self.size * np.sin(2 * np.pi * 1.3 * t + self.phases[0])
        return float(dy), float(TILT * np.sin(2 * np.pi * 0.9 * t + self.phases[1]))

    def _place(self, dy: float, angle: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
        """Region of the frame, its colours and coverage at one pose (nearest-pixel rotation)."""
        cos, sin = np.cos(angle), np.sin(angle)
        reach_x = abs(cos) * self.half[0] + abs(sin) * self.half[1] + 1
        reach_y = abs(sin) * self.half[0] + abs(cos) * self.half[1] + 1
        x0, x1 = int(max(self.cx - reach_x, 0)), int(min(self.cx + reach_x + 1, self.size))
        y0, y1 = int(max(self.cy + dy - reach_y, 0)), int(min(self.cy + dy + reach_y + 1, self.size))
        y, x = np.ogrid[y0:y1, x0:x1]
        x, y = x.astype(np.float32) - np.float32(self.cx), y.astype(np.float32) - np.float32(self.cy + dy)
        col = np.rint(cos * x + sin * y).astype(np.int64) + self.half[0]
        row = np.rint(-sin * x + cos * y).astype(np.int64) + self.half[1]
        inside = (col >= 0) & (col < self.cover.shape[1]) & (row >= 0) & (row < self.cover.shape[0])
        np.clip(col, 0, self.cover.shape[1] - 1, out=col)
        np.clip(row, 0, self.cover.shape[0] - 1, out=row)
        cover = (self.cover[row, col] & inside)[..., None]
        return slice(y0, y1), slice(x0, x1), self.colours[row, col], cover

    def draw(self, frame: np.ndarray, t: float) -> None:
        pose = self.pose(t)
        if pose not in self._cache:  # a still player is placed once per clip
            self._cache[pose] = self._place(*pose)
        rows, cols, colours, cover = self._cache[pose]
        np.copyto(frame[rows, cols], colours, where=cover)


# --------------------------------------------------------------------------- background

_WALLS = ((200, 170, 130), (180, 140, 110), (210, 190, 150), (170, 120, 100), (190, 160, 120))


def _smooth_field(size: int, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Low-frequency colour variation [H, W, 3]: three random plane waves per clip, built from
    outer products (sin(a + b) = sin a cos b + cos a sin b) rather than per-pixel sines."""
    grid = np.linspace(0.0, 1.0, size, dtype=np.float32)
    field = np.zeros((size, size, 3), np.float32)
    for _ in range(3):
        ky, kx = rng.uniform(-3, 3, size=2)
        a = 2 * np.pi * ky * grid + rng.uniform(0, 2 * np.pi)
        b = 2 * np.pi * kx * grid
        wave = np.outer(np.sin(a), np.cos(b)) + np.outer(np.cos(a), np.sin(b))
        field += wave[..., None] * rng.uniform(-amplitude, amplitude, size=3).astype(np.float32)
    return field


def _indoor(size: int, rng: np.random.Generator) -> np.ndarray:
    ys = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    xs = np.linspace(0.0, 1.0, size, dtype=np.float32)[None, :, None]
    wall = np.asarray(_WALLS[rng.integers(len(_WALLS))], np.float32) + rng.uniform(-15, 15, size=3)
    image = wall * (1.0 - 0.15 * ys) * (1.0 + rng.uniform(0, 0.12) * (_stripes(xs, rng.uniform(6, 20), 0.5) - 0.5))
    floor_top = rng.uniform(0.6, 0.75)
    wood = np.asarray((130, 90, 55), np.float32) + rng.uniform(-20, 20, size=3)
    floor = wood * (1.0 - 0.15 * _stripes(ys, rng.uniform(10, 25), 0.1))
    return np.where(ys >= floor_top, floor, image)


def _outdoor(size: int, rng: np.random.Generator) -> np.ndarray:
    ys = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    top = np.asarray((90, 140, 215) if rng.random() < 0.7 else (150, 160, 180), np.float32)
    top = top + rng.uniform(-20, 20, size=3)
    image = np.repeat(top + (np.asarray((175, 205, 235), np.float32) - top) * ys, size, axis=1)
    grid = np.linspace(0.0, 1.0, size, dtype=np.float32)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    for _ in range(int(rng.integers(0, 5))):  # clouds
        cloud = _ellipse(xx, yy, rng.uniform(0, 1), rng.uniform(0.05, 0.35), rng.uniform(0.08, 0.2), 0.05)
        image[cloud] = (240, 240, 245)
    horizon = rng.uniform(0.6, 0.75)
    for _ in range(int(rng.integers(0, 4))):  # trees at the horizon
        x = rng.uniform(0, 1)
        image[_rect(xx, yy, x - 0.015, horizon - 0.15, x + 0.015, horizon)] = (100, 70, 40)
        image[_ellipse(xx, yy, x, horizon - 0.2, 0.07, 0.09)] = (40, 110, 45)
    grass = np.asarray((70, 130, 60), np.float32) + rng.uniform(-25, 25, size=3)
    return np.where(ys >= horizon, grass * (1.0 + 0.1 * (_stripes(xx[..., None] + yy[..., None] * 3, 40, 0.5) - 0.5)),
                    image)  # fmt: skip


def _props(image: np.ndarray, count: int, rng: np.random.Generator) -> None:
    """Non-instrument clutter: coloured rectangles, discs and bars at random places."""
    size = image.shape[0]
    grid = np.linspace(0.0, 1.0, size, dtype=np.float32)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    for _ in range(count):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0.05, 0.9), rng.uniform(0.03, 0.09)
        shape = int(rng.integers(3))
        if shape == 0:
            mask = _rect(xx, yy, cx - r, cy - r, cx + r, cy + r * 1.5)
        elif shape == 1:
            mask = _ellipse(xx, yy, cx, cy, r, r)
        else:
            mask = _rect(xx, yy, cx - r * 0.3, cy - r * 2, cx + r * 0.3, cy + r * 2)
        image[mask] = rng.uniform(30, 230, size=3)


def render_frames(scene: "Scene", fps: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [N, size, size, 3] with N = round(seconds * fps); frame k shows time (k + 0.5) / fps."""
    count = max(1, int(round(scene.seconds * fps)))
    background = _indoor(size, rng) if scene.setting == "indoor" else _outdoor(size, rng)
    background = background + _smooth_field(size, rng, 12.0)
    _props(background, scene.clutter.props, rng)
    background = np.clip(background * scene.clutter.brightness, 0, 255).astype(np.uint8)
    sprites = [_Sprite(player, size, scene.clutter.brightness, rng) for player in scene.visible]
    frames = np.empty((count, size, size, 3), np.uint8)
    for k in range(count):
        frames[k] = background
        for sprite in sprites:
            sprite.draw(frames[k], (k + 0.5) / fps)
    return frames
