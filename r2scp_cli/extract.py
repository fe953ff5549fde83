"""Media and questions -> features.h5 (issue: extract)."""
from .errors import NotImplementedYet


def run(config, force=False):
    raise NotImplementedYet("`r2scp extract` lands with its issue")
