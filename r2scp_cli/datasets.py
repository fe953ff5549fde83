"""Dataset readers (MUSIC-AVQA, AVQA) and the answer vocabulary."""

from __future__ import annotations

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
