"""Metrics from predictions and the paper-style report across evaluations."""

import json
import math
import re

import pytest
from PIL import Image
from typer.testing import CliRunner

from r2scp_cli import artifacts, report
from r2scp_cli.cli import app
from r2scp_cli.config import ReportConfig
from r2scp_cli.console import console
from r2scp_cli.errors import UserError
from r2scp_cli.metrics import AVQA_TYPES, compute_metrics, load_predictions, print_metrics

runner = CliRunner()


def prediction(qid, family, subtype, correct):
    return {
        "qid": str(qid), "video_id": f"v{qid}", "type": family, "subtype": subtype,
        "predicted": "two" if correct else "three", "answer": "two", "correct": correct, "weights": None,
    }  # fmt: skip


# Audio/Counting 2 of 3, Audio/Comparative 0 of 1, Visual/Location 2 of 2, Audio-Visual/Temporal 1 of 4.
HAND_MADE = (
    [prediction(i, "Audio", "Counting", i < 2) for i in range(3)]
    + [prediction(3, "Audio", "Comparative", False)]
    + [prediction(4 + i, "Visual", "Location", True) for i in range(2)]
    + [prediction(6 + i, "Audio-Visual", "Temporal", i == 0) for i in range(4)]
)


# --------------------------------------------------------------------------- metrics


def test_music_avqa_metrics_match_hand_counts():
    metrics = compute_metrics(HAND_MADE, "music-avqa")
    assert metrics["format"] == "music-avqa"
    assert metrics["overall"] == {"accuracy": 50.0, "correct": 5, "count": 10}
    assert metrics["types"]["Audio/Counting"]["accuracy"] == pytest.approx(200 / 3)
    assert metrics["types"]["Audio/Counting"]["count"] == 3
    assert metrics["types"]["Audio/Comparative"] == {"accuracy": 0.0, "correct": 0, "count": 1}
    assert metrics["types"]["Visual/Location"] == {"accuracy": 100.0, "correct": 2, "count": 2}
    assert metrics["types"]["Audio-Visual/Temporal"] == {"accuracy": 25.0, "correct": 1, "count": 4}
    # Families pool their questions (2 of 4 = 50 %), not the mean of type accuracies (33.3 %).
    assert metrics["families"] == {
        "Audio": {"accuracy": 50.0, "correct": 2, "count": 4},
        "Visual": {"accuracy": 100.0, "correct": 2, "count": 2},
        "Audio-Visual": {"accuracy": 25.0, "correct": 1, "count": 4},
    }
    assert list(metrics["types"]) == [
        "Audio/Counting", "Audio/Comparative", "Visual/Counting", "Visual/Location",
        "Audio-Visual/Existential", "Audio-Visual/Counting", "Audio-Visual/Location",
        "Audio-Visual/Comparative", "Audio-Visual/Temporal",
    ]  # fmt: skip
    for absent in ("Visual/Counting", "Audio-Visual/Existential", "Audio-Visual/Comparative"):
        assert metrics["types"][absent] == {"accuracy": None, "correct": 0, "count": 0}


def test_avqa_metrics_use_the_subtype_and_keep_all_eight_types():
    records = (
        [prediction(i, "Both", "Which", i < 3) for i in range(4)]
        + [prediction(4 + i, "Sound", "Come From", i == 0) for i in range(2)]
        + [prediction(6, "View", "Where", False)]
    )
    metrics = compute_metrics(records, "avqa")
    assert metrics["overall"] == {"accuracy": 400 / 7, "correct": 4, "count": 7}
    assert metrics["types"]["Which"] == {"accuracy": 75.0, "correct": 3, "count": 4}
    assert metrics["types"]["Come From"] == {"accuracy": 50.0, "correct": 1, "count": 2}
    assert metrics["types"]["Where"] == {"accuracy": 0.0, "correct": 0, "count": 1}
    assert list(metrics["types"]) == list(AVQA_TYPES)
    assert metrics["types"]["Used For"] == {"accuracy": None, "correct": 0, "count": 0}
    assert metrics["families"] == {}


def test_unknown_type_or_format_is_an_error():
    with pytest.raises(UserError, match="question 99: unknown music-avqa question type 'Audio/Location'"):
        compute_metrics([prediction(99, "Audio", "Location", True)], "music-avqa")
    with pytest.raises(UserError, match="unknown dataset format 'vqa'"):
        compute_metrics(HAND_MADE, "vqa")


def test_load_predictions_round_trip_and_bad_lines(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in HAND_MADE))
    loaded = load_predictions(path)
    assert loaded == HAND_MADE
    assert compute_metrics(loaded, "music-avqa")["overall"]["correct"] == 5

    path.write_text(json.dumps(HAND_MADE[0]) + "\n{not json\n")
    with pytest.raises(UserError, match=r"predictions.jsonl:2: not valid JSON"):
        load_predictions(path)
    path.write_text(json.dumps({"qid": "1", "type": "Audio"}) + "\n")
    with pytest.raises(UserError, match=r"predictions.jsonl:1: prediction lacks video_id, subtype"):
        load_predictions(path)
    with pytest.raises(UserError, match="nowhere.jsonl: not found"):
        load_predictions(tmp_path / "nowhere.jsonl")


def test_print_metrics_shows_types_families_overall_and_counts():
    with console.capture() as captured:
        print_metrics(compute_metrics(HAND_MADE, "music-avqa"), "test split")
    lines = captured.get().splitlines()

    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.split("│")[1:4]] for line in lines) if cells}
    assert rows["Audio Counting"] == ["66.67", "3"]
    assert rows["Audio Comparative"] == ["0.00", "1"]
    assert rows["Audio"] == ["50.00", "4"]
    assert rows["Visual Location"] == ["100.00", "2"]
    assert rows["AV Temporal"] == ["25.00", "4"]
    assert rows["Audio-Visual"] == ["25.00", "4"]
    assert rows["Visual Counting"] == ["—", "0"]
    assert rows["Overall"] == ["50.00", "10"]
    assert len(rows) == 9 + 3 + 1  # types, families, overall


# --------------------------------------------------------------------------- fake evaluations


def fake_eval(directory, recovery, missing, seed, correct, *, total=8, finished=True, **fields):
    """An eval directory as `r2scp eval` writes it: `correct` of `total` questions right.

    ``fields`` overrides top-level keys (encoder, format) or sets ``features`` in the config."""
    avqa = fields.get("format") == "avqa"
    family, subtypes = ("Both", ["Which"]) if avqa else ("Audio", ["Comparative", "Counting"])
    records = [prediction(i, family, subtypes[i % len(subtypes)], i < correct) for i in range(total)]
    config = {"eval": {"run": "runs/x", "missing": missing, "features": fields.pop("features", None)}, "run": {}}
    data = {
        "stage": "eval", "recovery": recovery, "seed": seed, "encoder": "handcrafted", "format": "music-avqa",
        "missing": missing, "split": "test", "kind": "router", **fields,
        "config": config, "fingerprints": {},
    }  # fmt: skip
    data["metrics"] = compute_metrics(records, data["format"])
    directory.mkdir(parents=True)
    artifacts.write_json(directory / "metrics.json", data)
    if finished:
        artifacts.write_json(directory / "meta.json", {"stage": "eval", "run_id": f"{recovery}{missing}{seed}"})
    return directory


# (recovery, missing) -> correct answers out of 8 for seed 0 and seed 1.
CORRECT = {
    ("cmr+cap", "none"): (7, 7), ("cmr+cap", "audio"): (6, 7), ("cmr+cap", "visual"): (5, 7),
    ("zero", "none"): (7, 6), ("zero", "audio"): (2, 4), ("zero", "visual"): (3, 3),
}  # fmt: skip


@pytest.fixture
def runs(tmp_path):
    """Two seeds of cmr+cap and zero under three settings, nested as a demo lays them out."""
    root = tmp_path / "runs"
    for (recovery, missing), per_seed in CORRECT.items():
        for seed, correct in enumerate(per_seed):
            fake_eval(root / f"{recovery}-s{seed}" / "eval" / missing, recovery, missing, seed, correct)
    # A single-seed method, and another stage's metrics.json that must be ignored.
    fake_eval(root / "cap-s0" / "eval" / "audio", "cap", "audio", 0, 5)
    artifacts.write_json(root / "zero-s0" / "metrics.json", {"stage": "train-router", "val": 1.0})
    return root


def test_report_means_and_stds_over_seeds(runs, tmp_path):
    out = report.run(ReportConfig((runs,), tmp_path / "report"))
    data = json.loads((out / "report.json").read_text())
    assert data["evaluations"] == 13
    (table,) = data["tables"]
    assert (table["encoder"], table["format"], table["kind"], table["split"]) == ("handcrafted", "music-avqa", "router", "test")
    assert table["methods"] == ["zero", "cap", "cmr+cap"]
    assert table["settings"] == ["none", "audio", "visual"]
    assert table["questions"] == [8]

    audio = table["cells"]["cmr+cap"]["audio"]["overall"]  # 6/8 and 7/8
    assert audio["values"] == [75.0, 87.5] and audio["seeds"] == [0, 1] and audio["n"] == 2
    assert audio["mean"] == 81.25
    assert audio["std"] == pytest.approx(math.sqrt(2 * 6.25**2))  # sample std, ddof=1
    zero_audio = table["cells"]["zero"]["audio"]["overall"]  # 2/8 and 4/8
    assert zero_audio["mean"] == 37.5 and zero_audio["std"] == pytest.approx(math.sqrt(2 * 12.5**2))
    zero_visual = table["cells"]["zero"]["visual"]["overall"]  # 3/8 twice
    assert zero_visual["mean"] == 37.5 and zero_visual["std"] == 0.0
    cap = table["cells"]["cap"]
    assert list(cap) == ["audio"] and cap["audio"]["overall"]["std"] is None
    assert cap["audio"]["overall"]["mean"] == 62.5
    # Family and type summaries: seed 0 of cmr+cap/audio gets Comparative 0,2,4 right and Counting 1,3,5.
    assert table["cells"]["cmr+cap"]["audio"]["families"]["Audio"]["mean"] == 81.25
    assert table["cells"]["cmr+cap"]["audio"]["types"]["Audio/Comparative"]["values"] == [75.0, 100.0]
    assert table["cells"]["cmr+cap"]["audio"]["types"]["Visual/Location"]["n"] == 0

    text = (out / "report.md").read_text()
    assert "| recovery | complete | missing audio | missing visual |" in text
    assert "| zero | 81.25 ± 8.84 (2 seeds) | 37.50 ± 17.68 (2 seeds) | 37.50 ± 0.00 (2 seeds) |" in text
    assert "| cap | — | 62.50 | — |" in text
    assert "| cmr+cap | 87.50 ± 0.00 (2 seeds) | 81.25 ± 8.84 (2 seeds) | 75.00 ± 17.68 (2 seeds) |" in text
    assert "Accuracy (%) on the 8 questions of the test split" in text
    assert text.index("| zero |") < text.index("| cap |") < text.index("| cmr+cap |")

    meta = artifacts.read_json(out / "meta.json")
    assert meta["stage"] == "report" and meta["figures"] == {"evaluations": 13, "tables": 1}
    assert len(meta["inputs"]) == 13


def test_gains_over_zero_fill_are_paired_by_seed(runs, tmp_path):
    """Per seed, method minus zero-fill on the seeds both have; the spread is that of the differences."""
    out = report.run(ReportConfig((runs,), tmp_path / "report"))
    (table,) = json.loads((out / "report.json").read_text())["tables"]
    gains = table["gains"]
    assert list(gains) == ["cap", "cmr+cap"]
    # cmr+cap - zero: complete 7-7 and 7-6, audio 6-2 and 7-4, visual 5-3 and 7-3 of 8 questions
    assert gains["cmr+cap"]["none"]["values"] == [0.0, 12.5] and gains["cmr+cap"]["none"]["seeds"] == [0, 1]
    assert gains["cmr+cap"]["audio"]["mean"] == 43.75
    assert gains["cmr+cap"]["audio"]["std"] == pytest.approx(8.8388, abs=1e-4)  # unpaired: 8.84 and 17.68
    assert gains["cmr+cap"]["visual"]["values"] == [25.0, 50.0]
    assert list(gains["cap"]) == ["audio"] and gains["cap"]["audio"]["values"] == [37.5]  # seed 0 only
    text = (out / "report.md").read_text()
    assert "Gain over zero-fill, paired by seed" in text
    assert "| cmr+cap | +6.25 ± 8.84 (2 seeds) | +43.75 ± 8.84 (2 seeds) | +37.50 ± 17.68 (2 seeds) |" in text
    assert "| cap | — | +37.50 | — |" in text
    without_zero = report.run(ReportConfig((runs / "cmr+cap-s0", runs / "cmr+cap-s1"), tmp_path / "no-zero"))
    assert "Gain over zero-fill" not in (without_zero / "report.md").read_text()


def test_report_png_is_a_real_chart(runs, tmp_path):
    out = report.run(ReportConfig((runs,), tmp_path / "report"))
    with Image.open(out / "report.png") as image:
        assert image.format == "PNG"
        width, height = image.size
        assert 700 <= width <= 3000 and 400 <= height <= 3000
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 20  # bars, text and axes, not a blank canvas
    assert not list(out.glob(".*.tmp"))


def test_encoders_and_other_features_get_separate_tables(runs, tmp_path):
    fake_eval(runs / "pretrained" / "eval-audio", "cmr+cap", "audio", 0, 8, encoder="pretrained")
    fake_eval(runs / "poison" / "eval-audio", "cmr+cap", "audio", 0, 2, features="poisoned.h5")
    out = report.run(ReportConfig((runs,), tmp_path / "report"))
    tables = json.loads((out / "report.json").read_text())["tables"]
    assert [(t["encoder"], t["features"]) for t in tables] == [
        ("handcrafted", None), ("handcrafted", "poisoned.h5"), ("pretrained", None)
    ]
    assert tables[0]["cells"]["cmr+cap"]["audio"]["overall"]["values"] == [75.0, 87.5]
    assert tables[1]["cells"]["cmr+cap"]["audio"]["overall"]["values"] == [25.0]
    assert tables[2]["cells"]["cmr+cap"]["audio"]["overall"]["values"] == [100.0]
    text = (out / "report.md").read_text()
    assert "## music-avqa · encoder pretrained · router · test split\n" in text
    assert "## music-avqa · encoder handcrafted · router · test split · features poisoned.h5\n" in text


def test_avqa_report_breaks_down_by_question_type(tmp_path):
    for seed, correct in enumerate((3, 4)):
        fake_eval(tmp_path / "avqa" / f"s{seed}" / "text", "cmr+cap", "text", seed, correct, total=4, format="avqa")
    out = report.run(ReportConfig((tmp_path / "avqa",), tmp_path / "report"))
    (table,) = json.loads((out / "report.json").read_text())["tables"]
    assert table["format"] == "avqa" and table["settings"] == ["text"]
    assert table["cells"]["cmr+cap"]["text"]["types"]["Which"]["values"] == [75.0, 100.0]
    assert table["cells"]["cmr+cap"]["text"]["types"]["Why"]["n"] == 0
    text = (out / "report.md").read_text()
    assert "| recovery | missing text |" in text
    assert "| cmr+cap | 87.50 ± 17.68 (2 seeds) |" in text
    assert "| recovery | Which | Come From | Happening | Where | Why | Before Next | When | Used For | overall |" in text


def test_an_eval_dir_given_directly_and_twice_counts_once(runs, tmp_path):
    one = runs / "cap-s0" / "eval" / "audio"
    out = report.run(ReportConfig((one, runs / "cap-s0"), tmp_path / "report"))
    (table,) = json.loads((out / "report.json").read_text())["tables"]
    assert table["cells"] == {"cap": {"audio": table["cells"]["cap"]["audio"]}}
    assert table["cells"]["cap"]["audio"]["overall"]["n"] == 1


def test_a_run_dir_with_its_own_metrics_still_finds_the_evals_below(runs, tmp_path):
    # zero-s0/metrics.json belongs to train-router; its evals live in zero-s0/eval/*.
    out = report.run(ReportConfig((runs / "zero-s0",), tmp_path / "report"))
    (table,) = json.loads((out / "report.json").read_text())["tables"]
    assert table["settings"] == ["none", "audio", "visual"]
    assert [table["cells"]["zero"][s]["overall"]["values"] for s in table["settings"]] == [[87.5], [25.0], [37.5]]


def test_a_path_without_evaluations_is_one_line_and_writes_nothing(tmp_path):
    empty = tmp_path / "empty"
    artifacts.write_json(empty / "train" / "metrics.json", {"stage": "train-router"})
    for path in (empty, tmp_path / "nowhere"):
        result = runner.invoke(app, ["report", str(path), "--out", str(tmp_path / "out")])
        assert result.exit_code == 1
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and str(path.name) in lines[0] and "Traceback" not in result.output
        assert not (tmp_path / "out").exists()
    assert "no finished evaluations" in runner.invoke(app, ["report", str(empty), "--out", str(tmp_path / "o")]).output


def test_unfinished_eval_is_skipped_with_a_warning(runs, tmp_path):
    fake_eval(runs / "late" / "eval", "cmr", "audio", 0, 8, finished=False)
    with console.capture() as captured:
        out = report.run(ReportConfig((runs,), tmp_path / "report"))
    assert "unfinished eval (no meta.json), skipped" in captured.get()
    assert "cmr" not in json.loads((out / "report.json").read_text())["tables"][0]["cells"]
    with pytest.raises(UserError, match="no finished evaluations"):
        report.run(ReportConfig((runs / "late",), tmp_path / "other"))
    assert not (tmp_path / "other").exists()


def test_bad_metrics_files_and_duplicate_seeds_are_errors(runs, tmp_path):
    twin = fake_eval(tmp_path / "twin", "zero", "audio", 0, 1)
    with pytest.raises(UserError, match=r"are both seed 0 of zero with missing audio; pass only one of them"):
        report.run(ReportConfig((runs, twin), tmp_path / "report"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text("{")
    with pytest.raises(UserError, match=r"broken/metrics.json: not valid JSON"):
        report.run(ReportConfig((broken,), tmp_path / "report"))
    artifacts.write_json(broken / "metrics.json", {"stage": "eval", "recovery": "zero", "metrics": {}})
    with pytest.raises(UserError, match=r"broken/metrics.json: eval metrics lack seed, encoder, format"):
        report.run(ReportConfig((broken,), tmp_path / "report"))
    assert not (tmp_path / "report").exists()


def test_cli_report_prints_the_table_and_reuses_a_finished_report(runs, tmp_path):
    out = tmp_path / "report"
    result = runner.invoke(app, ["report", str(runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "music-avqa · encoder handcrafted · router · test split" in result.output

    def screen_rows(output):
        """Table rows keyed by method; cells are separated by two or more spaces."""
        cells = [re.split(r"\s{2,}", line.strip()) for line in output.splitlines()]
        return {row[0]: row[1:] for row in cells if row[0] in ("recovery", "zero", "cap", "cmr+cap")}

    rows = screen_rows(result.output)
    assert rows["recovery"] == ["seeds", "complete", "missing audio", "missing visual"]
    assert rows["cmr+cap"] == ["2", "87.50 ± 0.00", "81.25 ± 8.84", "75.00 ± 17.68"]
    assert rows["zero"] == ["2", "81.25 ± 8.84", "37.50 ± 17.68", "37.50 ± 0.00"]
    assert rows["cap"] == ["1", "—", "62.50", "—"]
    assert "  cmr+cap: +6.25 ± 8.84 / +43.75 ± 8.84 / +37.50 ± 17.68" in result.output  # paired by seed
    assert "  cap: — / +37.50 / —" in result.output
    run_id = artifacts.read_json(out / "meta.json")["run_id"]

    again = runner.invoke(app, ["report", str(runs), "--out", str(out)])
    assert again.exit_code == 0 and "report up to date" in again.output
    assert screen_rows(again.output) == rows
    assert artifacts.read_json(out / "meta.json")["run_id"] == run_id


def test_key_quality_of_the_bank_is_shown_under_the_table(tmp_path):
    from r2scp_cli.retrieval.bank import key_verdict

    figures = {m: {"key_quality": {"recall@10": r, "chance@10": 0.075}} for m, r in (("audio", 0.31), ("visual", 0.18))}
    retrieval = {"bank": "runs/bank-x", "key_mode": "bind", "key_quality": {m: f["key_quality"] for m, f in figures.items()},
                 "verdict": key_verdict(figures)}  # fmt: skip
    fake_eval(tmp_path / "runs" / "a" / "none", "cmr", "none", 0, 5, retrieval=retrieval)
    fake_eval(tmp_path / "runs" / "b" / "none", "zero", "none", 0, 4, retrieval=retrieval)  # the same bank: one line
    with console.capture() as captured:
        out = report.run(ReportConfig((tmp_path / "runs",), tmp_path / "report"))
    expected = ("Key quality (bind keys, held-out videos, runs/bank-x): recover audio recall@10 0.310 (chance 0.075), "
                "recover visual recall@10 0.180 (chance 0.075). weak keys (2.4x chance): retrieval helps little")  # fmt: skip
    markdown = (out / "report.md").read_text()
    assert markdown.count("Key quality (") == 1 and expected in markdown
    assert expected in " ".join(captured.get().split())
    (table,) = json.loads((out / "report.json").read_text())["tables"]
    assert table["retrieval"] == [retrieval]


# --------------------------------------------------------------------------- protocols and curves


def _protocol(missing, rate=1.0, partial=1.0, mask_seed=0):
    return {"missing": missing, "rate": rate, "partial": partial, "mask_seed": mask_seed}


def test_protocols_never_share_a_table_and_rates_draw_a_curve(tmp_path):
    """Rate and partial evaluations get their own tables, titled by protocol; complete, rate and
    whole-split evaluations of one modality make a curve whose points are the seeds' mean and std."""
    root = tmp_path / "runs"
    correct = {  # (recovery, rate) -> correct of 8 for seeds 0 and 1 (missing audio)
        ("zero", 0.0): (8, 6), ("zero", 0.5): (6, 4), ("zero", 1.0): (4, 2),
        ("cmr+cap", 0.0): (8, 8), ("cmr+cap", 0.5): (7, 7), ("cmr+cap", 1.0): (6, 4),
    }  # fmt: skip
    for (recovery, rate), per_seed in correct.items():
        for seed, right in enumerate(per_seed):
            missing = "none" if rate == 0.0 else "audio"
            fake_eval(root / f"{recovery}-{seed}" / f"eval-{missing}-{rate}", recovery, missing, seed, right,
                      protocol=_protocol(missing, rate=rate))  # fmt: skip
    fake_eval(root / "partial" / "e", "zero", "audio", 0, 5, protocol=_protocol("audio", partial=0.5))
    out = report.run(ReportConfig((root,), tmp_path / "report"))
    saved = json.loads((out / "report.json").read_text())
    titles = [report.table_title(t) for t in saved["tables"]]
    assert len(titles) == 3
    assert any(t.endswith("· rate 0.5 · mask seed 0") for t in titles)
    assert any(t.endswith("· partial 0.5 · mask seed 0") for t in titles)
    whole = next(t for t in saved["tables"] if not t["protocol"])
    assert whole["settings"] == ["none", "audio"]
    (curve,) = saved["curves"]
    assert curve["missing"] == "audio" and curve["rates"] == ["0", "0.5", "1"]
    line = curve["lines"]["zero"]
    assert line["0.5"]["mean"] == pytest.approx(62.5) and line["0.5"]["std"] == pytest.approx(math.sqrt(2 * 12.5**2))
    assert curve["lines"]["cmr+cap"]["1"]["mean"] == pytest.approx(62.5)
    assert "| zero | 87.50 ± 17.68 | 62.50 ± 17.68 | 37.50 ± 17.68 |" in (out / "report.md").read_text()
    assert Image.open(out / "curves.png").size[0] > 400


def test_no_curve_without_three_rates(tmp_path):
    root = tmp_path / "runs"
    fake_eval(root / "a", "zero", "none", 0, 6, protocol=_protocol("none"))
    fake_eval(root / "b", "zero", "audio", 0, 4, protocol=_protocol("audio"))
    out = report.run(ReportConfig((root,), tmp_path / "report"))
    assert json.loads((out / "report.json").read_text())["curves"] == []
    assert not (out / "curves.png").exists()


def test_accuracy_against_confidence_compares_with_zero_fill_on_the_same_questions(tmp_path):
    """Ten questions with confidences 0.1..1.0: the retrieval method is right on the six most confident,
    zero-fill on the even-numbered ones; quintiles of two questions each, accuracies counted by hand."""
    root = tmp_path / "runs"
    method_right = [i >= 4 for i in range(10)]
    zero_right = [i % 2 == 0 for i in range(10)]
    for recovery, right in (("cmr+cap", method_right), ("zero", zero_right)):
        directory = fake_eval(root / recovery / "eval-audio", recovery, "audio", 0, 5, total=10,
                              protocol=_protocol("audio"))  # fmt: skip
        records = [{**prediction(i, "Audio", "Counting", right[i]),
                    "confidence": None if recovery == "zero" else round(0.1 * (i + 1), 2), "trust": None}
                   for i in reversed(range(10))]  # fmt: skip
        (directory / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = report.run(ReportConfig((root,), tmp_path / "report"))
    (group,) = json.loads((out / "report.json").read_text())["confidence"]
    assert (group["method"], group["missing"], group["seeds"]) == ("cmr+cap", "audio", 1)
    assert [b["count"] for b in group["bins"]] == [2] * 5
    assert [round(b["confidence"], 2) for b in group["bins"]] == [0.15, 0.35, 0.55, 0.75, 0.95]
    assert [b["accuracy"] for b in group["bins"]] == [0.0, 0.0, 100.0, 100.0, 100.0]
    assert [b["zero"] for b in group["bins"]] == [50.0] * 5
    assert "| 1 (lowest) | 0.150 | 0.00 | 50.00 |" in (out / "report.md").read_text()
    assert Image.open(out / "confidence.png").size[0] > 400
