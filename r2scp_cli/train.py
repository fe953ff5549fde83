"""Stage 1 and stage 2 training (issue: model and training)."""
from . import artifacts
from .errors import NotImplementedYet


def run_experts(config, force=False, resume=False):
    raise NotImplementedYet("`r2scp train-experts` lands with its issue")


def run_router(config, force=False, resume=False):
    artifacts.require(config.experts, "train-experts")
    raise NotImplementedYet("`r2scp train-router` lands with its issue")
