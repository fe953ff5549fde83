"""`python -m r2scp_cli` (and `torchrun ... -m r2scp_cli`): the r2scp command line."""

from .cli import app

app(prog_name="r2scp")
