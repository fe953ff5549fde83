"""The built-in dataset generator (issue: synth)."""
from .errors import NotImplementedYet


def run(config, force=False):
    raise NotImplementedYet("`r2scp synth` lands with its issue")
