"""The command line: help, version, one-line errors, and the allocator setting every command makes."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from r2scp_cli import __version__
from r2scp_cli.cli import app
from r2scp_cli.config import GLIBC_MALLOC

runner = CliRunner()
SUBCOMMANDS = ("synth", "extract", "build-bank", "train-experts", "train-router", "eval", "report", "demo", "doctor")


def test_help_lists_every_subcommand():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in SUBCOMMANDS:
        assert name in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"r2scp {__version__}"


def test_missing_input_artifact_is_one_line_and_exit_1(tmp_path):
    result = runner.invoke(app, ["train-router", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "nowhere" in lines[0] and "r2scp train-experts" in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_every_subpackage_is_packaged():
    """A regular (non-editable) install must carry synth/, encoders/ and retrieval/ too."""
    import tomllib
    from pathlib import Path

    from setuptools import find_packages

    root = Path(__file__).resolve().parent.parent
    include = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    found = set(find_packages(str(root), include=include))
    on_disk = {".".join(p.parent.relative_to(root).parts) for p in (root / "r2scp_cli").rglob("__init__.py")}
    assert found == on_disk
    assert {"r2scp_cli.synth", "r2scp_cli.encoders", "r2scp_cli.retrieval"} <= found


ALLOCATE = """
import ctypes, json, os, resource, sys
from r2scp_cli.config import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(12):  # 64 MiB (as torch allocates a tensor): above glibc's largest dynamic mmap threshold (32 MiB)
    block = libc.malloc(64 << 20)
    ctypes.memset(block, 1, 64 << 20)
    libc.free(block)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"kept": kept, "faults": faults, "tunables": os.environ.get("GLIBC_TUNABLES")}))
"""


def _allocate(mode: str, tunables: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    done = subprocess.run([sys.executable, "-c", ALLOCATE, mode], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_freed_memory_is_kept_for_reuse_and_started_processes_inherit_it():
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's malloc settings apply on Linux")
    default, kept = _allocate("default"), _allocate("keep")
    assert kept["kept"] is True
    assert default["faults"] > 12 * 16384 * 0.9  # every 64 MiB block faulted in again, page by page
    assert kept["faults"] < default["faults"] / 5  # the freed block is reused
    assert kept["tunables"] == GLIBC_MALLOC  # spawned workers start with the same settings
    # a user's own malloc tunables win: nothing changes
    own = _allocate("keep", "glibc.malloc.tcache_count=7")
    assert own["kept"] is False and own["tunables"] == "glibc.malloc.tcache_count=7"
    assert own["faults"] > 12 * 16384 * 0.9
    # other tunables are kept, ours appended
    other = _allocate("keep", "glibc.pthread.rseq=0")
    assert other["kept"] is True and other["tunables"] == f"glibc.pthread.rseq=0:{GLIBC_MALLOC}"
