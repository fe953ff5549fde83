"""The command line: help, version, and one-line errors."""

from typer.testing import CliRunner

from r2scp_cli import __version__
from r2scp_cli.cli import app

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
