"""`r2scp report`: the paper-style report that lays evaluations side by side.

:func:`run` reads many ``metrics.json`` files (written by ``r2scp eval`` with ``metrics.py``) and
builds the table of the paper (rows = recovery method, columns = missing setting, mean ± std over
seeds; one table per missing-modality protocol) as Markdown, JSON and a PNG chart, with the curves of
``curves.py`` (accuracy against the missing rate and against the retrieval confidence).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from rich import box
from rich.table import Table

from . import artifacts, curves
from .config import RECOVERY_METHODS, ReportConfig
from .console import console
from .errors import UserError
from .metrics import load_predictions
from .protocols import Protocol

EVAL_KEYS = ("stage", "recovery", "seed", "encoder", "format", "missing", "split", "kind", "metrics")
REPORT_FILES = ("report.md", "report.json", "report.png")
SETTING_LABELS = {
    "none": "complete",
    "audio": "missing audio",
    "visual": "missing visual",
    "text": "missing text",
    "mixed": "missing mixed",
}


# --------------------------------------------------------------------------- finding evaluations


class TableKey(NamedTuple):
    """What must be equal for two evaluations to share a table."""

    encoder: str
    format: str
    kind: str
    split: str
    features: str | None  # eval --features: another features file than the run's own
    protocol: str = ""  # the missing-modality protocol's family ("": all-or-nothing); protocols never mix


@dataclass(frozen=True)
class Evaluation:
    """One finished ``r2scp eval`` directory."""

    path: Path
    table: TableKey
    recovery: str
    missing: str
    seed: int
    metrics: dict
    retrieval: dict | None = None  # the bank's key quality and verdict (evals before it was recorded: None)
    protocol: Protocol = Protocol()


def _read_evaluation(metrics_path: Path) -> Evaluation | None:
    """The evaluation in a ``metrics.json``, or None when the file belongs to another stage."""
    try:
        data = artifacts.read_json(metrics_path)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{metrics_path}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or data.get("stage") != "eval":
        return None
    missing = [key for key in EVAL_KEYS if key not in data]
    if missing:
        raise UserError(f"{metrics_path}: eval metrics lack {', '.join(missing)}")
    if not isinstance(data["metrics"], dict) or "overall" not in data["metrics"]:
        raise UserError(f"{metrics_path}: eval metrics lack metrics.overall")
    if not isinstance(data["seed"], int):
        raise UserError(f"{metrics_path}: seed {data['seed']!r} is not an integer")
    # `r2scp eval` keeps its own config (with --features) under config.eval.
    features = ((data.get("config") or {}).get("eval") or {}).get("features")
    protocol = Protocol.from_metrics(data)
    degraded = (data.get("protocol") or {}).get("degraded")
    family = " · ".join(part for part in (protocol.family, degraded and f"degraded {degraded}") if part)
    return Evaluation(
        path=metrics_path.parent,
        table=TableKey(data["encoder"], data["format"], data["kind"], data["split"], features, family),
        recovery=data["recovery"],
        missing=data["missing"],
        seed=data["seed"],
        metrics=data["metrics"],
        retrieval=data.get("retrieval"),
        protocol=protocol,
    )


def find_evaluations(paths: tuple[Path, ...]) -> list[Evaluation]:
    """Every finished evaluation in or below the given paths, each once, in path order.

    A directory whose ``metrics.json`` has no ``meta.json`` beside it is an interrupted eval (its
    numbers may be stale): it is skipped with a warning. A path with no evaluation is an error.
    """
    found: dict[Path, Evaluation] = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise UserError(f"{path}: not found")
        count = 0
        for metrics_path in sorted(path.rglob("metrics.json")):  # includes path/metrics.json
            evaluation = _read_evaluation(metrics_path)
            if evaluation is None:
                continue
            if not artifacts.meta_path(evaluation.path).exists():
                warning = f"{evaluation.path}: unfinished eval (no meta.json), skipped"
                console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
                continue
            found.setdefault(evaluation.path.resolve(), evaluation)
            count += 1
        if count == 0:
            raise UserError(f"{path}: no finished evaluations (no metrics.json of `r2scp eval` in or below)")
    return list(found.values())


# --------------------------------------------------------------------------- the table


def _summary(pairs: list[tuple[int, float | None]]) -> dict:
    """Mean and sample std (ddof=1) over seeds of one number; seeds without a value are left out."""
    kept = [(seed, value) for seed, value in pairs if value is not None]
    values = [value for _, value in kept]
    return {
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
        "seeds": [seed for seed, _ in kept],
        "values": values,
    }


def _cell(evaluations: list[Evaluation]) -> dict:
    """One (recovery, missing) cell: overall, family and type summaries over its seeds."""
    evaluations = sorted(evaluations, key=lambda e: e.seed)
    first = evaluations[0].metrics

    def summary(*where: str) -> dict:
        """The summary of the group at ``metrics[where[0]][where[1]...]`` (absent = no value)."""
        pairs = []
        for evaluation in evaluations:
            group = evaluation.metrics
            for key in where:
                group = group.get(key) or {}
            pairs.append((evaluation.seed, group.get("accuracy")))
        return _summary(pairs)

    return {
        "overall": summary("overall"),
        "families": {name: summary("families", name) for name in first.get("families", {})},
        "types": {name: summary("types", name) for name in first.get("types", {})},
        "questions": sorted({e.metrics["overall"]["count"] for e in evaluations}),
        "runs": [str(e.path) for e in evaluations],
    }


def _ordered(names: set[str], order: tuple[str, ...]) -> list[str]:
    """Known names in their canonical order, then the others alphabetically."""
    return [name for name in order if name in names] + sorted(names - set(order))


def _check_unique_seeds(cell: list[Evaluation]) -> None:
    seen: dict[int, Path] = {}
    for evaluation in cell:
        if evaluation.seed in seen:
            raise UserError(
                f"{seen[evaluation.seed]} and {evaluation.path} are both seed {evaluation.seed} of "
                f"{evaluation.recovery} with missing {evaluation.missing}; pass only one of them"
            )
        seen[evaluation.seed] = evaluation.path


def build_tables(evaluations: list[Evaluation]) -> list[dict]:
    """One table per (encoder, format, kind, split, features): cells[recovery][missing]."""
    grouped: dict[TableKey, dict[tuple[str, str], list[Evaluation]]] = defaultdict(lambda: defaultdict(list))
    for evaluation in evaluations:
        grouped[evaluation.table][(evaluation.recovery, evaluation.missing)].append(evaluation)
    tables = []
    for key in sorted(grouped, key=lambda k: tuple(str(part) for part in k)):
        cells = grouped[key]
        for cell in cells.values():
            _check_unique_seeds(cell)
        methods = _ordered({recovery for recovery, _ in cells}, RECOVERY_METHODS)
        settings = _ordered({missing for _, missing in cells}, tuple(SETTING_LABELS))
        table_cells = {
            method: {setting: _cell(cells[(method, setting)]) for setting in settings if (method, setting) in cells}
            for method in methods
        }
        questions = {q for row in table_cells.values() for cell in row.values() for q in cell["questions"]}
        banks = {e.retrieval["bank"]: e.retrieval for cell in cells.values() for e in cell if e.retrieval}
        table = {**key._asdict(), "methods": methods, "settings": settings, "questions": sorted(questions)}
        table = {**table, "cells": table_cells, "retrieval": [banks[b] for b in sorted(banks)]}
        tables.append({**table, "gains": paired_gains(table)})
    return tables


def paired_gains(table: dict, baseline: str = "zero") -> dict:
    """method -> setting -> summary of (method - baseline) accuracy per seed, over the seeds both were
    evaluated with: a seed's luck moves both rows alike, so the paired spread is the one to read."""
    if baseline not in table["cells"]:
        return {}
    gains: dict = {}
    for method in table["methods"]:
        for setting in table["settings"]:
            ours, theirs = _overall(table, method, setting), _overall(table, baseline, setting)
            if method == baseline or ours is None or theirs is None:
                continue
            base = dict(zip(theirs["seeds"], theirs["values"]))
            pairs = [(seed, value - base[seed]) for seed, value in zip(ours["seeds"], ours["values"]) if seed in base]
            if pairs:
                gains.setdefault(method, {})[setting] = _summary(pairs)
    return gains


def _overall(table: dict, method: str, setting: str) -> dict | None:
    """The overall-accuracy summary of a cell, None where the method was not evaluated so."""
    return table["cells"][method].get(setting, {}).get("overall")


def cell_text(summary: dict | None, sign: str = "") -> str:
    """ "mean ± std (n seeds)" for several seeds, the value alone for one, "—" for none (``sign`` "+":
    signed, for differences)."""
    if summary is None or summary["mean"] is None:
        return "—"
    if summary["n"] == 1:
        return f"{summary['mean']:{sign}.2f}"
    return f"{summary['mean']:{sign}.2f} ± {summary['std']:.2f} ({summary['n']} seeds)"


def table_title(table: dict) -> str:
    return curves.base_title(table) + (f" · {table['protocol']}" if table.get("protocol") else "")


def _count_text(table: dict) -> str:
    return f"{', '.join(map(str, table['questions']))} questions"


def _questions_text(table: dict) -> str:
    """The evaluated question count, with a warning when the runs disagree on it."""
    note = " (the runs disagree: check they used the same data)" if len(table["questions"]) > 1 else ""
    return _count_text(table) + note


def legend(table: dict) -> str:
    """What the numbers of a table are, in two sentences."""
    removed = "from every question (complete: none)"
    if table.get("protocol"):
        removed = f"under the protocol {table['protocol']} (eval --rate/--partial/--mask-seed)"
    return (
        f"Accuracy (%) on the {_questions_text(table)} of the {table['split']} split; rows: how the "
        f"missing modality is recovered; columns: the modality removed {removed}. "
        "A cell is mean ± sample std (ddof=1) over training seeds; a single seed shows its value."
    )


def key_quality_lines(table: dict) -> list[str]:
    """Under a table: the key quality of each bank its runs retrieved from, and what it means."""
    lines = []
    for bank in table.get("retrieval", []):
        parts = []
        for m, quality in bank["key_quality"].items():
            if quality.get("recall@10") is not None:
                parts.append(f"recover {m} recall@10 {quality['recall@10']:.3f} (chance {quality['chance@10']:.3f})")
        measured = ", ".join(parts) or "not measured"
        lines.append(f"Key quality ({bank['key_mode']} keys, held-out videos, {bank['bank']}): {measured}. {bank['verdict']}.")
    return lines


# --------------------------------------------------------------------------- outputs


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _detail_tables(table: dict) -> list[str]:
    """Per missing setting: rows = method, columns = families (MUSIC-AVQA) or types (AVQA)."""
    section, noun = ("families", "family") if table["format"] == "music-avqa" else ("types", "type")
    lines = []
    for setting in table["settings"]:
        rows = {method: row[setting] for method, row in table["cells"].items() if setting in row}
        names = list(dict.fromkeys(name for cell in rows.values() for name in cell[section]))
        body = [
            [method] + [cell_text(cell[section].get(name)) for name in names] + [cell_text(cell["overall"])]
            for method, cell in rows.items()
        ]
        lines += ["", f"**{SETTING_LABELS.get(setting, setting)}**, by question {noun}:", ""]
        lines += _markdown_table(["recovery"] + names + ["overall"], body)
    return lines


def markdown(tables: list[dict]) -> str:
    """The report as Markdown: per table a title, the main table, its legend and the detail tables."""
    lines = ["# R2ScP: accuracy with a missing modality", ""]
    for table in tables:
        header = ["recovery"] + [SETTING_LABELS.get(s, s) for s in table["settings"]]
        rows = [[m] + [cell_text(_overall(table, m, s)) for s in table["settings"]] for m in table["methods"]]
        lines += [f"## {table_title(table)}", ""] + _markdown_table(header, rows)
        lines += ["", legend(table)]
        if table.get("gains"):
            gains = table["gains"]
            lines += ["", "Gain over zero-fill, paired by seed (mean ± std of the per-seed differences, on the "
                      "seeds both rows have):", ""]  # fmt: skip
            lines += _markdown_table(header, [[m] + [cell_text(gains[m].get(s), "+") for s in table["settings"]] for m in gains])
        if table.get("retrieval"):
            lines += ["", *key_quality_lines(table)]
        lines += _detail_tables(table) + [""]
    return "\n".join(lines)


def _screen_cell(summary: dict | None, seeds: int) -> str:
    """A cell on screen, where a column gives the row's seed count: "mean ± std", "(n seeds)" only
    where the cell has fewer seeds than its row."""
    if summary is None or summary["mean"] is None:
        return "—"
    text = f"{summary['mean']:.2f}" if summary["n"] == 1 else f"{summary['mean']:.2f} ± {summary['std']:.2f}"
    return text if summary["n"] == seeds else f"{text} ({summary['n']} seed{'s' * (summary['n'] > 1)})"


def print_tables(tables: list[dict]) -> None:
    """The main table of each group on screen, with its legend.

    Laid out like a paper's table (rules, no cell borders) and with the seed count in its own column,
    so that four settings fit 80 columns without wrapping a cell."""
    for table in tables:
        screen = Table(
            title=table_title(table), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True
        )
        screen.add_column("recovery", no_wrap=True)
        screen.add_column("seeds", justify="right", no_wrap=True)
        for setting in table["settings"]:
            screen.add_column(SETTING_LABELS.get(setting, setting), justify="right", no_wrap=True)
        for method in table["methods"]:
            cells = [_overall(table, method, setting) for setting in table["settings"]]
            seeds = max(cell["n"] for cell in cells if cell)
            screen.add_row(method, str(seeds), *[_screen_cell(cell, seeds) for cell in cells])
        console.print(screen)
        console.print(legend(table), style="dim")
        gains = table.get("gains", {})
        if any(gain["n"] > 1 for row in gains.values() for gain in row.values()):  # one seed: read it off the table
            labels = " / ".join(SETTING_LABELS.get(s, s) for s in table["settings"])
            console.print(f"Gain over zero-fill, paired by seed (mean ± std of the differences; {labels}):")
            for method, row in gains.items():
                cells = [row.get(s) for s in table["settings"]]
                console.print(f"  {method}: " + " / ".join("—" if g is None else f"{g['mean']:+.2f}" + (f" ± {g['std']:.2f}" if g["n"] > 1 else "")
                                                       for g in cells))  # fmt: skip
        for line in key_quality_lines(table):
            console.print(line, markup=False)


def method_colours(tables: list[dict]) -> dict[str, str]:
    """A colour per recovery method, the same in every report and picture."""
    others = _ordered({m for table in tables for m in table["methods"]}, RECOVERY_METHODS)
    methods = list(RECOVERY_METHODS) + [m for m in others if m not in RECOVERY_METHODS]
    return {method: f"C{index % 10}" for index, method in enumerate(methods)}


def save_chart(tables: list[dict], path: Path) -> None:
    """A grouped bar chart per table: groups = missing setting, bars = recovery method, error bars = std.

    Drawn on matplotlib's Agg canvas without pyplot, so no global backend state is touched; the
    import is here because matplotlib is slow to import and only the report needs it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colours = method_colours(tables)
    widest = max(len(table["settings"]) * len(table["methods"]) for table in tables)
    figure = Figure(figsize=(max(7.0, 1.5 + 0.55 * widest), 1.0 + 4.2 * len(tables)), layout="constrained")
    FigureCanvasAgg(figure)
    for axes, table in zip(figure.subplots(len(tables), 1, squeeze=False)[:, 0], tables):
        _draw_table(axes, table, colours)
    figure.suptitle("R2ScP: accuracy with a missing modality (mean ± std over seeds)", fontweight="bold")
    with artifacts.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)


def _draw_table(axes, table: dict, colours: dict[str, str]) -> None:
    """One table's bars, each labelled with its mean above its error bar (none for a single seed)."""
    settings, methods = table["settings"], table["methods"]
    width = 0.8 / len(methods)
    tallest = 0.0
    for index, method in enumerate(methods):
        offset = (index - (len(methods) - 1) / 2) * width
        cells = [(x, _overall(table, method, setting)) for x, setting in enumerate(settings)]
        drawn = [(x + offset, cell) for x, cell in cells if cell and cell["mean"] is not None]
        axes.bar([x for x, _ in drawn], [c["mean"] for _, c in drawn], width, label=method, color=colours[method])
        spread = [(x, c) for x, c in drawn if c["std"] is not None]
        axes.errorbar(
            [x for x, _ in spread], [c["mean"] for _, c in spread], yerr=[c["std"] for _, c in spread],
            fmt="none", ecolor="black", capsize=3, linewidth=1,
        )  # fmt: skip
        for x, cell in drawn:
            top = cell["mean"] + (cell["std"] or 0.0)
            axes.annotate(
                f"{cell['mean']:.1f}", (x, top), xytext=(0, 2), textcoords="offset points",
                ha="center", va="bottom", fontsize=7,
            )  # fmt: skip
            tallest = max(tallest, top)
    axes.set_xticks(range(len(settings)), [SETTING_LABELS.get(s, s) for s in settings])
    axes.set_ylim(0, min(112.0, tallest * 1.1 + 3))  # room for the labels
    axes.set_ylabel("accuracy (%)")
    axes.set_title(f"{table_title(table)} ({_count_text(table)})", fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    axes.legend(title="recovery", fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def run(config: ReportConfig, force: bool = False) -> Path:
    """Find the evaluations, build the tables, write report.md/.json/.png into ``config.out``."""
    out = Path(config.out)
    evaluations = find_evaluations(config.runs)
    tables = build_tables(evaluations)  # before begin(): an inconsistent set writes nothing
    inputs = {str(e.path): e.path for e in sorted(evaluations, key=lambda e: str(e.path))}
    stage = artifacts.begin("report", out, config, inputs=inputs, force=force)
    if stage.finished:
        console.print(f"{out}: report up to date with its {len(inputs)} evaluations", soft_wrap=True)
        print_tables(tables)
        return out
    rate_curves = curves.build_curves(evaluations)
    confidence = curves.build_confidence(evaluations, load_predictions)
    artifacts.write_json(out / "report.json", {"evaluations": len(evaluations), "tables": tables, "curves": rate_curves,
                                               "confidence": confidence})  # fmt: skip
    extra = curves.markdown(rate_curves) + curves.confidence_markdown(confidence)
    artifacts.write_text(out / "report.md", markdown(tables) + "\n".join(extra))
    save_chart(tables, out / "report.png")
    written = [out / name for name in REPORT_FILES]
    colours = method_colours(tables)
    for name, drawn, save in (("curves.png", rate_curves, curves.save), ("confidence.png", confidence, curves.save_confidence)):
        if drawn:
            save(drawn, out / name, colours)
            written.append(out / name)
        else:
            (out / name).unlink(missing_ok=True)  # a report redone without them keeps no stale picture
    print_tables(tables)
    console.print(f"wrote {', '.join(str(path) for path in written)}", soft_wrap=True)
    stage.finish(figures={"evaluations": len(evaluations), "tables": len(tables)})
    return out
