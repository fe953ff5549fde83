"""The whole chain on the built-in data (issue: eval/report/demo)."""
from .errors import NotImplementedYet


def run(config):
    raise NotImplementedYet("`r2scp demo` lands with its issue")
