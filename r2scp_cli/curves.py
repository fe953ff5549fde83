"""The report's two curves, beside its tables. Part of `r2scp report`.

Accuracy against the missing rate (DESIGN section 7): one line per recovery method, mean ± std over
seeds, one panel per missing modality. A curve gathers evaluations that differ only in the rate: the
complete evaluation (rate 0), the `eval --rate R` ones, and the all-or-nothing one (rate 1), all of
whole clips (no partial loss) and of one mask seed. It is drawn where at least three rates were
evaluated.

Accuracy against the retrieval confidence: a retrieval method's questions in quintiles of their
fill's confidence (the mean key similarity of its neighbours), with zero-fill's accuracy on the very
same questions (same seed, same setting): where a fill costs accuracy, and whether the confidence
says so.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import artifacts
from .config import RECOVERY_METHODS

MIN_RATES = 3
CONFIDENCE_BINS = 5


def _rate_of(evaluation, modality: str) -> float | None:
    """The evaluation's point on ``modality``'s curve, None when it is not on it."""
    protocol = evaluation.protocol
    if protocol.partial < 1.0:
        return None
    if protocol.missing == "none":
        return 0.0
    return protocol.rate if protocol.missing == modality else None


def build_curves(evaluations) -> list[dict]:
    """Curves keyed like report tables (less the protocol): per missing modality, per method and rate,
    the overall accuracy's mean, std and seed count."""
    points: dict[tuple, dict[str, dict[float, dict[int, float]]]] = defaultdict(lambda: defaultdict(dict))
    for evaluation in evaluations:
        base = tuple(evaluation.table[:5])  # encoder, format, kind, split, features
        for modality in ("audio", "visual"):
            rate = _rate_of(evaluation, modality)
            if rate is None:
                continue
            if 0.0 < rate < 1.0 and evaluation.protocol.mask_seed != 0:
                continue  # a curve uses the default masks; other mask seeds are other curves' business
            by_seed = points[(base, modality)][evaluation.recovery].setdefault(rate, {})
            # Complete and `--rate 0` evaluations are the same point: one accuracy per seed.
            by_seed.setdefault(evaluation.seed, evaluation.metrics["overall"]["accuracy"])
    curves = []
    for (base, modality), methods in sorted(points.items(), key=lambda item: str(item[0])):
        rates = sorted({rate for per_rate in methods.values() for rate, seeds in per_rate.items() if seeds})
        if len(rates) < MIN_RATES:
            continue
        lines = {}
        for method in sorted(methods, key=lambda m: (RECOVERY_METHODS + (m,)).index(m)):
            lines[method] = {
                f"{rate:g}": _summary(list(seeds.values())) for rate, seeds in sorted(methods[method].items()) if seeds
            }
        encoder, format, kind, split, features = base
        curves.append({"encoder": encoder, "format": format, "kind": kind, "split": split, "features": features,
                       "missing": modality, "rates": [f"{r:g}" for r in rates], "lines": lines})  # fmt: skip
    return curves


def _summary(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
    }


def base_title(group: dict) -> str:
    """What a report table or curve shows: format, encoder, kind, split and (eval --features) the file."""
    title = f"{group['format']} · encoder {group['encoder']} · {group['kind']} · {group['split']} split"
    return title + (f" · features {group['features']}" if group["features"] else "")


def curve_title(curve: dict) -> str:
    return f"{base_title(curve)} · missing {curve['missing']} against the rate"


def markdown(curves: list[dict]) -> list[str]:
    """One table per curve: rows = method, columns = missing rate."""
    lines = []
    for curve in curves:
        lines += [f"## {curve_title(curve)}", "", "| recovery | " + " | ".join(f"rate {r}" for r in curve["rates"]) + " |"]
        lines.append("|---" * (len(curve["rates"]) + 1) + "|")
        for method, per_rate in curve["lines"].items():
            cells = []
            for rate in curve["rates"]:
                s = per_rate.get(rate)
                cells.append("—" if s is None else f"{s['mean']:.2f}" + (f" ± {s['std']:.2f}" if s["std"] is not None else ""))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", f"Accuracy (%) when a share of the {curve['split']} videos (the rate, chosen by mask seed 0) "
                  f"lose their {curve['missing']}; rate 0 is complete, rate 1 removes it from every video. Mean ± "
                  "std over training seeds.", ""]  # fmt: skip
    return lines


def save(curves: list[dict], path: Path, colours: dict[str, str]) -> None:
    """One panel per curve: a line per method, the std band shaded (matplotlib's Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0 * min(2, len(curves)), 4.2 * ((len(curves) + 1) // 2)), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots((len(curves) + 1) // 2, min(2, len(curves)), squeeze=False).ravel()
    for axes, curve in zip(grid, curves):
        for method, per_rate in curve["lines"].items():
            rates = [float(r) for r in curve["rates"] if r in per_rate]
            means = [per_rate[f"{r:g}"]["mean"] for r in rates]
            stds = [per_rate[f"{r:g}"]["std"] or 0.0 for r in rates]
            colour = colours.get(method)
            axes.plot(rates, means, marker="o", label=method, color=colour)
            axes.fill_between(rates, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                              color=colour, alpha=0.15, linewidth=0)  # fmt: skip
        axes.set_xlabel(f"share of videos missing {curve['missing']} (rate)")
        axes.set_ylabel("accuracy (%)")
        axes.set_title(curve_title(curve), fontsize=8)
        axes.grid(alpha=0.3)
        axes.legend(title="recovery", fontsize=8, title_fontsize=8)
    for axes in grid[len(curves) :]:
        axes.set_visible(False)
    figure.suptitle("R2ScP: accuracy against the missing rate (mean ± std over seeds)", fontweight="bold")
    with artifacts.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)


# --------------------------------------------------------------------------- confidence


def build_confidence(evaluations, load_predictions) -> list[dict]:
    """Per (table key, missing modality, retrieval method): the questions of each seed's evaluation in
    confidence quintiles, with the method's and zero-fill's accuracy on them; averaged over seeds."""
    def whole(evaluation) -> bool:
        p = evaluation.protocol
        return p.missing in ("audio", "visual") and p.rate >= 1.0 and p.partial >= 1.0 and not evaluation.table.protocol

    zero = {(tuple(e.table[:5]), e.protocol.missing, e.seed): e for e in evaluations if e.recovery == "zero" and whole(e)}
    per_seed: dict[tuple, list[list[dict]]] = defaultdict(list)
    for evaluation in evaluations:
        if evaluation.recovery not in ("cmr", "cmr+cap") or not whole(evaluation):
            continue
        if not (evaluation.path / "predictions.jsonl").exists():
            continue
        records = [r for r in load_predictions(evaluation.path / "predictions.jsonl") if r.get("confidence") is not None]
        if len(records) < CONFIDENCE_BINS:
            continue  # an evaluation from before confidences were recorded
        base = tuple(evaluation.table[:5])
        reference = zero.get((base, evaluation.protocol.missing, evaluation.seed))
        zero_correct = None
        if reference is not None and (reference.path / "predictions.jsonl").exists():
            zero_correct = {r["qid"]: r["correct"] for r in load_predictions(reference.path / "predictions.jsonl")}
        records.sort(key=lambda r: r["confidence"])
        bins = []
        for chunk in np.array_split(np.arange(len(records)), CONFIDENCE_BINS):
            rows = [records[i] for i in chunk]
            bins.append({
                "confidence": statistics.fmean(r["confidence"] for r in rows),
                "accuracy": 100.0 * statistics.fmean(r["correct"] for r in rows),
                "zero": None if zero_correct is None else 100.0 * statistics.fmean(zero_correct[r["qid"]] for r in rows),
                "count": len(rows),
            })  # fmt: skip
        per_seed[(base, evaluation.protocol.missing, evaluation.recovery)].append(bins)
    out = []
    for (base, missing, method), seeds in sorted(per_seed.items(), key=lambda item: str(item[0])):
        bins = []
        for index in range(CONFIDENCE_BINS):
            at = [seed[index] for seed in seeds]
            zero_values = [b["zero"] for b in at if b["zero"] is not None]
            bins.append({
                "confidence": statistics.fmean(b["confidence"] for b in at),
                "accuracy": statistics.fmean(b["accuracy"] for b in at),
                "zero": statistics.fmean(zero_values) if len(zero_values) == len(at) else None,
                "count": sum(b["count"] for b in at),
            })  # fmt: skip
        encoder, format, kind, split, features = base
        out.append({"encoder": encoder, "format": format, "kind": kind, "split": split, "features": features,
                    "missing": missing, "method": method, "seeds": len(seeds), "bins": bins})  # fmt: skip
    return out


def confidence_markdown(groups: list[dict]) -> list[str]:
    lines = []
    for group in groups:
        title = curve_title(group).replace("against the rate", f"· {group['method']} against the retrieval confidence")
        lines += [f"## {title}", "", "| confidence quintile | mean similarity | " + group["method"] + " | zero-fill, same questions |",
                  "|---|---:|---:|---:|"]  # fmt: skip
        for index, b in enumerate(group["bins"], 1):
            zero = "—" if b["zero"] is None else f"{b['zero']:.2f}"
            label = f"{index}" + {1: " (lowest)", CONFIDENCE_BINS: " (highest)"}.get(index, "")
            lines.append(f"| {label} | {b['confidence']:.3f} | {b['accuracy']:.2f} | {zero} |")
        lines += ["", f"The questions whose {group['missing']} was retrieved, split into five equal groups by the fill's "
                  f"confidence; accuracy (%) of {group['method']} and of zero-fill (same seed) on each group, mean over "
                  f"{group['seeds']} seed(s).", ""]  # fmt: skip
    return lines


def save_confidence(groups: list[dict], path: Path, colours: dict[str, str]) -> None:
    """One panel per (missing modality, table): a solid line per retrieval method, dashed: zero-fill on
    the same questions."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels: dict[tuple, list[dict]] = defaultdict(list)
    for group in groups:
        panels[(group["encoder"], group["format"], group["kind"], group["split"], group["features"], group["missing"])].append(group)
    figure = Figure(figsize=(6.0 * min(2, len(panels)), 4.2 * ((len(panels) + 1) // 2)), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots((len(panels) + 1) // 2, min(2, len(panels)), squeeze=False).ravel()
    for axes, members in zip(grid, panels.values()):
        for group in members:
            x = [b["confidence"] for b in group["bins"]]
            colour = colours.get(group["method"])
            axes.plot(x, [b["accuracy"] for b in group["bins"]], marker="o", color=colour, label=group["method"])
            if all(b["zero"] is not None for b in group["bins"]):
                axes.plot(x, [b["zero"] for b in group["bins"]], marker="x", linestyle="--", color=colour,
                          label=f"zero-fill on {group['method']}'s questions")  # fmt: skip
        axes.set_xlabel("retrieval confidence (mean key similarity of the neighbours), per quintile")
        axes.set_ylabel("accuracy (%)")
        axes.set_title(curve_title(members[0]).replace("against the rate", "against the retrieval confidence"), fontsize=8)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    for axes in grid[len(panels) :]:
        axes.set_visible(False)
    figure.suptitle("R2ScP: accuracy against the retrieval confidence (mean over seeds)", fontweight="bold")
    with artifacts.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
