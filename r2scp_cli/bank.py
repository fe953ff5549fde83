"""The memory bank (issue: build-bank)."""
from .errors import NotImplementedYet


def run(config, force=False):
    raise NotImplementedYet("`r2scp build-bank` lands with its issue")
