"""Summarise training runs: mean and sample standard deviation (n - 1) over seeds, the runs grouped
by their flags (IGNORED_KEYS aside), so that runs that differ are never averaged together.

    python -m tools.summarize RUN_DIR [RUN_DIR ...] [--out summary.json]  (evaluate.py --summarize)
"""

import argparse
import json
import math
import os
import statistics
import sys

from lib.checkpoint import save_atomic
from lib.errors import BadInputError

# what never makes two runs differ: the seed, where the files go, how the run was started and spoke
IGNORED_KEYS = frozenset({"seed", "output", "resume", "overwrite", "argv", "quiet", "log_every"})
BEST_LABELS = {"test": "best-on-test, optimistic", "val": "best-on-val", "mixed": "mixed selection"}


def load_run(run_dir):
    """One run from RUN_DIR/metrics.json (or that file); BadInputError naming the file."""
    path = run_dir if run_dir.endswith("metrics.json") else os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        raise BadInputError(f"{path}: no metrics.json here; pass a finished train.py run's folder")
    try:
        with open(path, encoding="utf-8") as f:
            metrics = json.load(f)
    except (OSError, ValueError) as e:  # also a JSON or UTF-8 decoding error
        raise BadInputError(f"{path}: not readable as JSON ({e})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("config"), dict):
        raise BadInputError(f"{path}: no 'config' record (an older train.py): rerun it")

    def number(record, key):
        v = record.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise BadInputError(f"{path}: '{key}' is missing or not a finite number (got {v!r})")
        return float(v)

    best = metrics.get("best") if isinstance(metrics.get("best"), dict) else {}
    run = dict(run=run_dir, seed=metrics["config"].get("seed"), config=metrics["config"])
    run.update({key: number(metrics, key) for key in ("test_accuracy", "mean_class_accuracy")})
    best_accuracy = number(best, "test_accuracy") if best else None
    return dict(run, best_test_accuracy=best_accuracy, selected_on=best.get("selected_on"))


def summarize_runs(run_dirs):
    """Groups of runs equal but for IGNORED_KEYS, with their stats and the settings that differ."""
    by_setting = {}
    for run_dir in run_dirs:
        run = load_run(run_dir)
        setting = {k: v for k, v in run.pop("config").items() if k not in IGNORED_KEYS}
        key = json.dumps(setting, sort_keys=True, default=str)
        by_setting.setdefault(key, (setting, []))[1].append(run)
    groups = []
    for setting, runs in by_setting.values():
        chosen = {r["selected_on"] for r in runs if r["best_test_accuracy"] is not None}
        seeds = [r["seed"] for r in runs]
        g = dict(setting=setting, runs=runs)
        for k in ("test_accuracy", "mean_class_accuracy", "best_test_accuracy"):
            v = [r[k] for r in runs if r[k] is not None]
            std = statistics.stdev(v) if len(v) > 1 else None
            g[k] = dict(mean=statistics.fmean(v) if v else None, std=std, n=len(v))
        g["selected_on"] = (chosen.pop() if len(chosen) == 1 else "mixed") if chosen else None
        g["repeated_seeds"] = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
        groups.append(g)
    keys = sorted(set().union(*(g["setting"] for g in groups)))
    keys = [k for k in keys if len({repr(g["setting"].get(k, "(absent)")) for g in groups}) > 1]
    for g in groups:
        g["differs"] = {k: g["setting"].get(k, "(absent)") for k in keys}
    return groups


def _pm(s):  # "mean ± std", "-" for what one run cannot give
    std = "-" if s["std"] is None else f"{s['std']:.2f}"
    return "-" if s["mean"] is None else f"{s['mean']:.2f} ± {std}"


def format_summary(groups):
    """Markdown table, one row per group, then each group's seeds; accuracies in percent."""
    head = "group | dataset | backbone | n | test acc (last epoch) | mean class acc (last epoch)"
    lines = [f"| {head} | best epoch test acc | settings that differ |", "|---" * 8 + "|"]
    for i, g in enumerate(groups, 1):
        b, label = g["best_test_accuracy"]["mean"], BEST_LABELS.get(g["selected_on"], "best epoch")
        differs = ", ".join(f"{k}={json.dumps(v)}" for k, v in g["differs"].items())
        setting, n = g["setting"], g["test_accuracy"]["n"]
        row = [i, setting.get("dataset"), setting.get("backbone"), n, _pm(g["test_accuracy"])]
        row += [_pm(g["mean_class_accuracy"]), "-" if b is None else f"{b:.2f} ({label})", differs]
        lines.append("| " + " | ".join(map(str, row)) + " |")
    lines.append("\nmean ± sample standard deviation (n - 1) over seeds; report the last epoch's")
    if any(g["selected_on"] == "test" for g in groups):
        lines[-1] += " (a best-on-test epoch was chosen on the test set itself)"
    for i, g in enumerate(groups, 1):
        seeds = ", ".join(f"{r['seed']}: {r['test_accuracy']:.2f}" for r in g["runs"])
        lines.append(f"group {i} seeds (test acc): {seeds}")
        if g["repeated_seeds"]:
            repeated = ", ".join(map(str, g["repeated_seeds"]))
            lines.append(f"note: seed {repeated} appears more than once (the same run twice?)")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description="Mean and sample std over seeds of train.py runs.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="train.py output folders")
    p.add_argument("--out", default=None, help="also write the summary as JSON to this file")
    args = p.parse_args(argv)
    try:
        groups = summarize_runs(args.runs)
        print(format_summary(groups))
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            save_atomic(json.dumps(dict(groups=groups), indent=2) + "\n", args.out)
            print(f"summary written to {args.out}")
    except (BadInputError, OSError) as e:  # a run's file, or --out that cannot be written
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
