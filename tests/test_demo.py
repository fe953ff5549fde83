"""The whole chain through the CLI: `r2scp demo --quick` on a tiny dataset prints the table."""

import json

import pytest
from typer.testing import CliRunner

from r2scp_cli.cli import app
from r2scp_cli.config import RECOVERY_METHODS

SETTINGS = ("none", "audio", "visual")


@pytest.mark.parametrize("format", ["music-avqa", "avqa"])
def test_quick_demo_end_to_end(tmp_path, format):
    out = tmp_path / "demo"
    args = ["demo", "--quick", "--videos", "40", "--format", format, "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report-handcrafted" / "report.json").read_text())
    (table,) = report["tables"]
    assert table["format"] == format
    assert report["evaluations"] == 15
    assert table["methods"] == list(RECOVERY_METHODS)
    assert table["settings"] == list(SETTINGS)
    annotations = "avqa-test.json" if format == "music-avqa" else "test_qa.json"
    test_questions = len(json.loads((out / "data" / annotations).read_text()))
    for method in RECOVERY_METHODS:
        for setting in SETTINGS:
            cell = table["cells"][method][setting]
            assert cell["overall"]["n"] == 1
            assert 0.0 <= cell["overall"]["mean"] <= 100.0
            assert cell["questions"] == [test_questions]
            metrics = json.loads((out / f"runs-handcrafted/{method}-seed0/eval-{setting}/metrics.json").read_text())
            assert abs(metrics["metrics"]["overall"]["accuracy"] - cell["overall"]["mean"]) < 1e-9
    for method in RECOVERY_METHODS:  # the table on screen has a row per method
        assert any(line.split()[:1] == [method] for line in result.output.splitlines())
    markdown = (out / "report-handcrafted" / "report.md").read_text()
    assert "| cmr+cap |" in markdown.replace("**", "")

    # A second run reuses every finished stage.
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0
    assert "already" in again.output
