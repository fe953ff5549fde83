"""The whole chain through the CLI: `r2scp demo --quick` on a tiny dataset prints the table."""

import json

import pytest
from typer.testing import CliRunner

from r2scp_cli import demo
from r2scp_cli.cli import app
from r2scp_cli.config import RECOVERY_METHODS
from r2scp_cli.console import console
from r2scp_cli.encoders import pretrained

SETTINGS = ("none", "audio", "visual")


# The default encoder is pretrained when its wheels are installed (as the README's commands do).
DEFAULT_ENCODER = "handcrafted" if pretrained.missing_parts() else "pretrained"


@pytest.mark.parametrize("format, encoder", [("music-avqa", None), ("avqa", "handcrafted")])
def test_quick_demo_end_to_end(tmp_path, format, encoder):
    out = tmp_path / "demo"
    args = ["demo", "--quick", "--videos", "40", "--format", format, "--out", str(out)]
    args += ["--encoder", encoder] if encoder else []
    encoder = encoder or DEFAULT_ENCODER
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"{encoder} features" in result.output
    report = json.loads((out / f"report-{encoder}" / "report.json").read_text())
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
            metrics = json.loads((out / f"runs-{encoder}/{method}-seed0/eval-{setting}/metrics.json").read_text())
            assert metrics["encoder"] == encoder
            assert abs(metrics["metrics"]["overall"]["accuracy"] - cell["overall"]["mean"]) < 1e-9
    for method in RECOVERY_METHODS:  # the table on screen has a row per method
        assert any(line.split()[:1] == [method] for line in result.output.splitlines())
    markdown = (out / f"report-{encoder}" / "report.md").read_text()
    assert "| cmr+cap |" in markdown.replace("**", "")
    # bind keys fitted to the train questions' weak labels with MUSIC-AVQA's wording, plain bind with AVQA's
    bank_meta = json.loads((out / f"bank-{encoder}" / "meta.json").read_text())
    assert bank_meta["config"]["weak_labels"] == (format == "music-avqa")
    coverage = bank_meta["figures"]["binder"].get("weak_labels")
    assert (coverage is not None and coverage["labelled_videos"] > 0) == (format == "music-avqa")

    # A second run reuses every finished stage.
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0
    assert "already" in again.output


def test_default_encoder_falls_back_to_handcrafted_with_one_line(monkeypatch):
    monkeypatch.setattr(pretrained, "missing_parts", lambda: ["package aisfx"])
    with console.capture() as captured:
        assert demo.resolve_encoder("auto") == "handcrafted"
    text = captured.get()
    assert "pretrained encoder not installed (missing package aisfx)" in text
    assert pretrained.INSTALL in text and text.count("\n") == 1  # one line, the command unbroken
    monkeypatch.setattr(pretrained, "missing_parts", lambda: [])
    assert demo.resolve_encoder("auto") == "pretrained"
    assert demo.resolve_encoder("handcrafted") == "handcrafted"  # an explicit choice is kept


def test_weak_labels_only_where_they_apply(tmp_path, make_features):
    """The demo asks build-bank for weak labels only with bind keys and MUSIC-AVQA's wording."""
    from r2scp_cli.config import DemoConfig

    features = make_features(tmp_path / "features.h5", n_videos=12)
    assert demo.uses_weak_labels(DemoConfig(tmp_path), features)
    assert not demo.uses_weak_labels(DemoConfig(tmp_path, weak_labels=False), features)
    assert not demo.uses_weak_labels(DemoConfig(tmp_path, format="avqa"), features)
    joint = make_features(tmp_path / "joint.h5", n_videos=12, joint_space=True)  # keys auto -> unified
    assert not demo.uses_weak_labels(DemoConfig(tmp_path), joint)


def test_data_seed_draws_the_dataset_not_the_library(tmp_path, monkeypatch):
    """`demo --data-seed N` synthesises the dataset with seed N; the library keeps its own seed."""
    from r2scp_cli.config import DemoConfig

    synthesised = []

    def fake_synth(config):
        synthesised.append((config.out.name, config.seed, config.library))
        return config.out

    monkeypatch.setattr(demo.synth, "run", fake_synth)
    monkeypatch.setattr(demo.extract, "run", lambda config: config.out)
    monkeypatch.setattr(demo.bank, "run", lambda config: config.out)
    monkeypatch.setattr(demo, "uses_weak_labels", lambda config, features: False)
    budget = demo.budget_for(DemoConfig(tmp_path, library_videos=10), demo.QUICK)
    for data_seed in (0, 5):
        synthesised.clear()
        demo.prepare_bank(DemoConfig(tmp_path, data_seed=data_seed), budget)
        assert synthesised == [("data", data_seed, False), ("library-10", demo.LIBRARY_SEED, True)]


def test_negative_data_seed_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--data-seed", "-1", "--out", str(out)])
    assert result.exit_code == 1
    assert "--data-seed -1: must be 0 or more" in result.output
    assert not out.exists()
