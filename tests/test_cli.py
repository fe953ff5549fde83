"""The command line: help, version, and one-line errors."""

from typer.testing import CliRunner

from r2scp_cli import __version__
from r2scp_cli.cli import app

runner = CliRunner()
SUBCOMMANDS = ("synth", "extract", "build-bank", "train-experts", "train-router", "eval", "report", "demo")


def test_help_lists_the_eight_subcommands():
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
