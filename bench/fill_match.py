"""Where does a retrieved fill help, and does the trust know? A diagnostic over finished runs.

For each test video, the share of its n retrieved entries that resemble what it lost: an entry
matches when its key lies among the 10 % of the bank's keys closest to the key of the video's own
entry (`Bank.fill_matches`, the target of `train-experts --trust-match`). It reads the lost
modality's key, so it is a diagnostic, like bench/oracle_retrieval.py: no run uses it at test time.
Videos without an entry in the bank (a split by video) have no match and are left out.

Prints, per missing setting, the accuracy of every method (mean ± std over seeds) on the questions
whose fill has under a fifth of its entries matching (none of 5), between, and four fifths or more;
then, for runs trained with --trust, how well the trust separates lists that mostly match (AUC),
next to the neighbours' mean similarity.

Usage: python bench/fill_match.py RUNS_DIR [RUNS_DIR ...] [--share 0.1]
       RUNS_DIR holds <method>-seed<k>/ with experts/ and eval-<setting>/ (the demo's runs-<encoder>/).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

from r2scp_cli import artifacts
from r2scp_cli.retrieval.bank import Bank

GROUPS = ((0.0, 0.2, "< 0.2"), (0.2, 0.8, "0.2 - 0.8"), (0.8, 1.01, ">= 0.8"))  # share of a fill's entries that match


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    ranks = np.empty(len(score))
    order = np.argsort(score, kind="stable")
    ranks[order] = np.arange(1, len(score) + 1)
    for value in np.unique(score):  # average ranks over ties
        tied = score == value
        ranks[tied] = ranks[tied].mean()
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def read_runs(roots: list[Path]) -> dict[tuple[str, int], Path]:
    runs = {}
    for root in roots:
        for run in sorted(root.glob("*-seed*")):
            found = re.fullmatch(r"(.+)-seed(\d+)", run.name)
            if found and (run / "experts" / "meta.json").exists():
                runs[(found[1], int(found[2]))] = run
    if not runs:
        raise SystemExit(f"no <method>-seed<k> runs with experts/ under {', '.join(map(str, roots))}")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--share", type=float, default=0.1, help="an entry matches within this share of the bank")
    args = parser.parse_args()
    runs = read_runs(args.runs)
    metas = {key: artifacts.read_json(run / "experts" / "meta.json") for key, run in runs.items()}
    banks = {Path(meta["config"]["bank"]) for meta in metas.values()}
    if len(banks) != 1:
        raise SystemExit(f"the runs use {len(banks)} banks; give runs of one bank")
    bank = Bank.open(banks.pop())
    n = max(int(meta["config"]["n"]) for meta in metas.values())
    for m in ("audio", "visual"):
        predictions = {key: [json.loads(line) for line in (run / f"eval-{m}" / "predictions.jsonl").open()]
                       for key, run in runs.items() if (run / f"eval-{m}" / "predictions.jsonl").exists()}  # fmt: skip
        if not predictions:
            continue
        videos = sorted({r["video_id"] for records in predictions.values() for r in records})
        entries, _ = bank.neighbours(videos, m)
        match = dict(zip(videos, bank.fill_matches(videos, m, entries[:, :n], args.share).mean(1)))
        print(f"missing {m}: top-{n} lists of {len(videos)} test videos, mean match {np.nanmean(list(match.values())):.3f}")
        accuracy: dict[tuple[str, str], list[float]] = defaultdict(list)
        counts = {}
        for (method, _), records in sorted(predictions.items()):
            for lo, hi, name in GROUPS:
                chosen = [r["correct"] for r in records if lo <= match[r["video_id"]] < hi]
                counts[name] = len(chosen)
                accuracy[(method, name)].append(100.0 * float(np.mean(chosen)) if chosen else float("nan"))
        methods = sorted({method for method, _ in predictions})
        print(f"  {'entries matching':>18} {'questions':>9}  " + "  ".join(f"{x:>15}" for x in methods))
        for _, _, name in GROUPS:
            cells = []
            for method in methods:
                values = accuracy[(method, name)]
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):6.2f} ± {spread:4.2f}  ")
            print(f"  {name:>18} {counts[name]:>9}  " + " ".join(f"{c:>15}" for c in cells))
        for (method, seed), records in sorted(predictions.items()):
            if records[0].get("trust") is None:
                continue
            first = {}
            for r in records:
                first.setdefault(r["video_id"], r)
            rows = [v for v in first if np.isfinite(match[v])]
            positive = np.array([match[v] >= 0.5 for v in rows])
            trust = np.array([first[v]["trust"] for v in rows])
            similarity = np.array([first[v]["confidence"] for v in rows])
            print(f"  {method} seed {seed}: AUC of the trust {auc(trust, positive):.3f}, of the mean similarity "
                  f"{auc(similarity, positive):.3f} (lists with >= half their entries matching: {positive.mean():.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
