"""Sound of a built-in scene: one additive synthesiser voice per sounding player, plus clutter.

Each instrument class has its own timbre: pitch range, partial profile (harmonic or inharmonic),
envelope (bowed/blown sustain or struck/plucked decay, upper partials dying faster), vibrato, a
second detuned reed (accordion) and a noise component (bow, breath, hammer, snare), so the classes
separate in a log-mel spectrum. A player's notes come at its note rate (rhythm), only between its
onset and offset (schedule), at its loudness: the RMS of its voice over its active span is
``loudness_db`` relative to a 0 dB player. Ambient noise, mains hum and short chirps vary per clip and
carry no answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scenes import Player, Scene

REFERENCE_RMS = 0.12  # RMS of a 0 dB player; three loud players stay below full scale
NYQUIST_GUARD_HZ = 7000.0  # partials above this are dropped (16 kHz audio)
PENTATONIC = (0, 2, 4, 7, 9)


@dataclass(frozen=True)
class Timbre:
    """How one instrument class sounds."""

    low_hz: float  # pitch range of its melodies
    high_hz: float
    partials: tuple[float, ...]  # amplitude of each partial
    ratios: tuple[float, ...] | None = None  # partial frequencies / f0 (None: harmonics 1, 2, 3, ...)
    struck: bool = False  # decaying notes (plucked, struck) instead of sustained ones
    attack: float = 0.01  # seconds
    decay: float = 0.5  # struck notes: time constant in seconds
    damping: float = 0.0  # struck notes: extra decay of upper partials
    vibrato_hz: float = 0.0
    vibrato_depth: float = 0.0  # relative pitch deviation
    detune: float = 0.0  # a second voice at (1 + detune) x the pitch: reed beating
    sweep: float = 0.0  # pitch starts (1 + sweep) x higher and drops within 30 ms (membranes)
    noise: float = 0.0  # level of the noise component relative to the partials
    noise_band: tuple[float, float] = (1000.0, 5000.0)
    formants: tuple[tuple[float, float, float], ...] = ()  # body resonances: (centre Hz, gain, width in octaves)

    def resonance(self, freqs: np.ndarray) -> np.ndarray:
        """Gain of the instrument body at ``freqs``: a fixed spectral envelope whatever the pitch,
        which is what makes a class recognisable across its melodies."""
        gain = np.full(freqs.shape, 0.1)
        for centre, height, width in self.formants:
            gain += height * np.exp(-0.5 * (np.log2(np.maximum(freqs, 1.0) / centre) / width) ** 2)
        return gain


def _pluck(count: int, where: float) -> tuple[float, ...]:
    """Partials of a string plucked at a fraction ``where`` of its length."""
    return tuple(round(abs(np.sin(np.pi * k * where)) / k, 4) for k in range(1, count + 1))


TIMBRES: dict[str, Timbre] = {
    "acoustic_guitar": Timbre(82, 660, _pluck(12, 0.2), struck=True, attack=0.003, decay=0.45, damping=0.25,
                              noise=0.02, noise_band=(2000, 5000), formants=((110, 1.0, 0.5), (450, 0.6, 0.6))),
    "accordion": Timbre(175, 880, (1, 0.3, 0.6, 0.2, 0.45, 0.15, 0.3, 0.1, 0.2, 0.08), attack=0.05,
                        detune=0.004, noise=0.01, formants=((900, 1.0, 0.8), (2500, 0.7, 0.5))),
    "cello": Timbre(65, 392, (1, 0.8, 0.6, 0.45, 0.35, 0.25, 0.2, 0.15, 0.1, 0.08, 0.06, 0.05), attack=0.12,
                    vibrato_hz=4.5, vibrato_depth=0.006, noise=0.04, noise_band=(1000, 4000),
                    formants=((250, 1.0, 0.6), (1200, 0.4, 0.5))),
    "drum": Timbre(60, 110, (1, 0.5, 0.3, 0.2), ratios=(1, 1.59, 2.14, 2.3), struck=True, attack=0.002,
                   decay=0.18, damping=1.0, sweep=1.0, noise=0.9, noise_band=(800, 6000), formants=((90, 1.0, 0.8),)),
    "flute": Timbre(262, 1400, (1, 0.22, 0.08, 0.03), attack=0.07, vibrato_hz=5.0, vibrato_depth=0.004,
                    noise=0.18, noise_band=(1500, 6000), formants=((800, 1.0, 1.0),)),
    "piano": Timbre(110, 1400, (1, 0.5, 0.35, 0.2, 0.15, 0.1, 0.07, 0.05),
                    ratios=tuple(round(k * np.sqrt(1 + 0.0004 * k * k), 4) for k in range(1, 9)),
                    struck=True, attack=0.003, decay=0.8, damping=0.35, noise=0.03, noise_band=(1000, 6000),
                    formants=((300, 1.0, 1.0), (2000, 0.3, 0.7))),
    "saxophone": Timbre(138, 700, (1, 0.9, 0.7, 0.8, 0.5, 0.55, 0.35, 0.3, 0.2, 0.2, 0.1, 0.1), attack=0.04,
                        vibrato_hz=5.5, vibrato_depth=0.004, noise=0.06, noise_band=(1500, 5000),
                        formants=((500, 1.0, 0.5), (1800, 0.8, 0.5))),
    "trumpet": Timbre(165, 880, (0.5, 0.8, 1, 0.9, 0.75, 0.6, 0.45, 0.3, 0.2, 0.12), attack=0.025,
                      vibrato_hz=5.0, vibrato_depth=0.003, noise=0.015, formants=((1300, 1.0, 0.6), (3500, 0.5, 0.5))),
    "violin": Timbre(196, 1320, tuple(round((1 + 0.6 * (k in (3, 4, 8, 9))) / k, 4) for k in range(1, 15)),
                     attack=0.09, vibrato_hz=6.0, vibrato_depth=0.008, noise=0.05, noise_band=(2500, 6500),
                     formants=((3000, 1.0, 0.5), (450, 0.6, 0.5))),
    "xylophone": Timbre(520, 2100, (1, 0.35, 0.12), ratios=(1, 3.93, 9.24), struck=True, attack=0.002,
                        decay=0.14, damping=0.6, noise=0.05, noise_band=(2000, 7000), formants=((1500, 1.0, 1.2),)),
}  # fmt: skip


def _melody(timbre: Timbre, notes: int, rng: np.random.Generator) -> np.ndarray:
    """Note frequencies: a random walk on a pentatonic scale inside the class's pitch range."""
    octaves = np.log2(timbre.high_hz / timbre.low_hz)
    steps = np.array([12 * o + s for o in range(int(np.ceil(octaves)) + 1) for s in PENTATONIC], float)
    steps = steps[steps <= 12 * octaves]
    walk = np.cumsum(rng.integers(-2, 3, size=notes)) + rng.integers(len(steps))
    walk = np.abs((walk % (2 * len(steps) - 2)) - (len(steps) - 1))  # reflect at both ends
    return timbre.low_hz * 2.0 ** (steps[walk] / 12.0)


def _envelope(local: np.ndarray, period: float, timbre: Timbre) -> np.ndarray:
    """Amplitude within each note: attack, then decay (struck) or sustain with a release gap."""
    rise = 1.0 - np.exp(-local / max(timbre.attack, 1e-4) * 3.0)
    if timbre.struck:
        return rise * np.exp(-local / timbre.decay)
    release = np.clip((period - local) / (0.15 * period), 0.0, 1.0)  # audible gap between notes
    return rise * release


def _band_noise(length: int, band: tuple[float, float], sample_rate: int, rng) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(length))
    freqs = np.fft.rfftfreq(length, 1.0 / sample_rate)
    spectrum[(freqs < band[0]) | (freqs > band[1])] = 0.0
    noise = np.fft.irfft(spectrum, n=length)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-9)


def _partials(timbre: Timbre, phase, f0, env, local, body: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sum of the timbre's partials over a phase track, each with a random start phase.

    Harmonic partials come from powers of exp(i phase) (a complex multiply per partial instead of
    a sine); on struck notes partial r decays (1 + damping (r - 1)) times faster than the first.
    ``body`` [K, S] is each partial's resonance gain.
    """
    harmonic = timbre.ratios is None
    ratios = range(1, len(timbre.partials) + 1) if harmonic else timbre.ratios
    base = np.exp(1j * phase).astype(np.complex64) if harmonic else None
    power = base.copy() if harmonic else None
    extra_decay = np.exp(-local * timbre.damping / timbre.decay).astype(np.float32) if timbre.struck else None
    env_k = env.astype(np.float32)
    voice = np.zeros(len(phase), np.float32)
    for k, (ratio, amp) in enumerate(zip(ratios, timbre.partials)):
        start = rng.uniform(0, 2 * np.pi)
        if harmonic:
            wave = power.imag * np.float32(np.cos(start)) + power.real * np.float32(np.sin(start))
            power *= base
        else:
            wave = np.sin(ratio * phase + start).astype(np.float32)
        if timbre.struck and k:
            env_k = env_k * extra_decay ** np.float32(ratio - ratios[k - 1])
        voice += np.float32(amp) * body[k] * env_k * wave * (ratio * f0 < NYQUIST_GUARD_HZ)
    return voice


def player_voice(player: "Player", t: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """The voice of one sounding player over the samples ``t`` of its active span, RMS = 1."""
    timbre = TIMBRES[player.instrument]
    local_t = t - player.onset
    period = 1.0 / player.notes_per_second
    note = np.floor(local_t / period).astype(np.int64)
    local = local_t - note * period
    melody = _melody(timbre, int(note[-1]) + 1, rng)
    ratios = np.asarray(timbre.ratios or range(1, len(timbre.partials) + 1), float)
    body = timbre.resonance(ratios[:, None] * melody[None]).astype(np.float32)[:, note]  # [K, S]
    f0 = melody[note]
    if timbre.sweep:
        f0 = f0 * (1.0 + timbre.sweep * np.exp(-local / 0.03))
    if timbre.vibrato_depth:
        f0 = f0 * (1.0 + timbre.vibrato_depth * np.sin(2 * np.pi * timbre.vibrato_hz * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    env = _envelope(local, period, timbre)
    voice = _partials(timbre, phase, f0, env, local, body, rng)
    if timbre.detune:
        voice += 0.7 * _partials(timbre, phase * (1 + timbre.detune), f0, env, local, body, rng)
    voice /= np.sqrt(np.mean(voice**2)) + 1e-9
    if timbre.noise:
        noise_env = env**2 if timbre.struck else env
        voice += timbre.noise * noise_env * _band_noise(len(t), timbre.noise_band, sample_rate, rng)
    edge = np.minimum(np.clip(local_t / 0.005, 0, 1), np.clip((player.offset - t) / 0.02, 0, 1))
    voice *= edge  # no clicks at the onset and offset
    return voice / (np.sqrt(np.mean(voice**2)) + 1e-9)


def _ambient(scene: "Scene", length: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Clutter: tilted noise, optional hum, a few chirps; none of it depends on the players."""
    clutter = scene.clutter
    spectrum = np.fft.rfft(rng.standard_normal(length))
    freqs = np.maximum(np.fft.rfftfreq(length, 1.0 / sample_rate), 20.0)
    noise = np.fft.irfft(spectrum * freqs ** (-clutter.noise_tilt / 2), n=length)
    out = REFERENCE_RMS * 10 ** (clutter.noise_db / 20) * noise / (np.sqrt(np.mean(noise**2)) + 1e-9)
    t = np.arange(length) / sample_rate
    if clutter.hum_hz:
        hum = sum(np.sin(2 * np.pi * k * clutter.hum_hz * t) / k for k in (1, 2, 3))
        out += REFERENCE_RMS * 10 ** (-38 / 20) * hum
    for _ in range(clutter.chirps):
        duration = rng.uniform(0.06, 0.15)
        start = int(rng.uniform(0, max(t[-1] - duration, 0.0)) * sample_rate)
        n = min(int(duration * sample_rate), length - start)
        f = np.linspace(rng.uniform(1000, 5000), rng.uniform(1000, 5000), n)
        chirp = np.sin(2 * np.pi * np.cumsum(f) / sample_rate) * np.hanning(n)
        out[start : start + n] += REFERENCE_RMS * 10 ** (rng.uniform(-36, -26) / 20) * 2 * chirp
    return out


def render_audio(scene: "Scene", sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """The clip's mono soundtrack, float32 in [-1, 1], ``scene.seconds`` long."""
    length = int(round(scene.seconds * sample_rate))
    t = np.arange(length) / sample_rate
    mix = _ambient(scene, length, sample_rate, rng)
    for player in scene.players:
        start, stop = np.searchsorted(t, [player.onset, player.offset])
        if not player.sounding or stop - start < 2:
            continue
        voice = player_voice(player, t[start:stop], sample_rate, rng)
        mix[start:stop] += REFERENCE_RMS * 10 ** (player.loudness_db / 20) * voice
    peak = np.max(np.abs(mix))
    if peak > 0.98:  # rare: scale the whole clip, which keeps every relative level
        mix *= 0.98 / peak
    return mix.astype(np.float32)
