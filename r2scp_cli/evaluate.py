"""Evaluation and report (issue: eval/report/demo)."""
from .errors import NotImplementedYet


def run(config, force=False):
    raise NotImplementedYet("`r2scp eval` lands with its issue")


def report(config):
    raise NotImplementedYet("`r2scp report` lands with its issue")
