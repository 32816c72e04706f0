"""Summarise several training runs: mean and sample standard deviation over seeds, one group per
setting.

summarize_runs(run_dirs) reads each run's metrics.json (written by train.py) and groups runs whose
resolved configuration is equal once the seed and the where/how-verbosely keys (IGNORED_KEYS) are
set aside; runs that differ in anything else are never averaged together. format_summary(groups) is
a Markdown table (dataset, backbone, n, mean and sample std of the last-epoch test accuracy and of
the mean class accuracy, the best-epoch mean labelled with how that epoch was chosen, and, when
there are several groups, the settings that tell them apart); summary_json(groups) is its JSON form.

Command line (also reached as `python evaluate.py --summarize RUN [RUN ...] [--out FILE]`):
    python -m tools.summarize RUN_DIR [RUN_DIR ...] [--out summary.json]
Exit status 2 with one error line naming the file when a run has no usable metrics.json.
"""

import argparse
import json
import math
import os
import re
import statistics
import sys

from lib.checkpoint import save_atomic

# never make runs different
IGNORED_KEYS = frozenset({"seed", "output", "resume", "quiet", "log_every"})


def stats(values):
    """{"mean", "std", "n"}: std is the sample standard deviation sqrt(sum (x - mean)^2 / (n - 1)),
    None for n = 1."""
    n = len(values)
    return dict(
        mean=statistics.fmean(values) if n else None,
        std=statistics.stdev(values) if n > 1 else None,
        n=n,
    )


def _number(metrics, key, path):
    value = metrics.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{path}: '{key}' is missing or not a finite number (got {value!r})")
    return float(value)


def load_run(run_dir):
    """One run's record from RUN_DIR/metrics.json (or a metrics.json path): run, seed, accuracies,
    config."""
    path = (
        run_dir
        if os.path.basename(run_dir) == "metrics.json"
        else os.path.join(run_dir, "metrics.json")
    )
    if not os.path.isfile(path):
        raise ValueError(
            f"{path}: no metrics.json here; pass the output folder of a finished train.py run"
        )
    try:
        with open(path, encoding="utf-8") as f:
            metrics = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not readable as JSON ({e})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("config"), dict):
        raise ValueError(
            f"{path}: no 'config' record (written by an older train.py); "
            "runs can only be grouped by their resolved flags, so rerun it with this version"
        )
    config = metrics["config"]
    best = metrics.get("best") if isinstance(metrics.get("best"), dict) else {}
    return dict(
        run=run_dir,
        path=path,
        seed=config.get("seed"),
        config=config,
        test_accuracy=_number(metrics, "test_accuracy", path),
        mean_class_accuracy=_number(metrics, "mean_class_accuracy", path),
        best_test_accuracy=_number(best, "test_accuracy", f"{path} best") if best else None,
        selected_on=best.get("selected_on"),
        data=metrics.get("data"),
        environment=metrics.get("environment"),
    )


def _setting(config):
    """The configuration that must match for two runs to be averaged: config without
    IGNORED_KEYS."""
    return {k: v for k, v in config.items() if k not in IGNORED_KEYS}


def _differences(records, field):
    """Keys of records[i][field] (dicts) whose values are not the same in every record."""
    dicts = [r.get(field) if isinstance(r.get(field), dict) else {} for r in records]
    keys = sorted(set().union(*dicts))
    return [
        k
        for k in keys
        if len({json.dumps(d.get(k, "(absent)"), sort_keys=True) for d in dicts}) > 1
    ]


def _comparable_environment(env):
    """The environment as far as it can change a result: the precision's choice, not its measured
    rates; a random-init tower's name without its seed (it follows --seed, as the runs' seeds
    differ)."""
    env = dict(env) if isinstance(env, dict) else {}
    if isinstance(env.get("precision"), dict):
        env["precision"] = {k: env["precision"].get(k) for k in ("amp", "channels_last", "device")}
    if env.get("random_anchors"):
        env["clip"] = re.sub(r" \(seed -?\d+\)$", "", str(env.get("clip")))
    return env


def _group_notes(runs):
    """Warnings about a group: repeated seeds, data or environment records that differ between its
    runs."""
    notes = []
    seeds = [r["seed"] for r in runs]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
    if repeated:
        notes.append(
            f"seed {', '.join(map(str, repeated))} appears more than once (the same run twice?)"
        )
    if len({json.dumps(r["data"], sort_keys=True) for r in runs}) > 1:
        notes.append(
            "the runs' data records differ (another copy of the dataset, or seeded synthetic data)"
        )
    env = _differences(
        [dict(environment=_comparable_environment(r["environment"])) for r in runs], "environment"
    )
    if env:
        notes.append(f"environments differ in {', '.join(env)}")
    return notes


def summarize_runs(run_dirs):
    """Groups of runs equal but for IGNORED_KEYS, in order of first appearance; each with its
    statistics.

    Group: dataset, backbone, setting (the shared config), differs ({key: value} for the keys whose
    values differ between groups; empty for one group), runs, test_accuracy / mean_class_accuracy /
    best_test_accuracy ({"mean", "std", "n"}), selected_on ("test", "val", "mixed" or None), notes.
    Raises ValueError naming the file for a run without a usable metrics.json.
    """
    if not run_dirs:
        raise ValueError("no run folders given")
    by_key = {}
    for run_dir in run_dirs:
        record = load_run(run_dir)
        key = json.dumps(_setting(record["config"]), sort_keys=True, default=str)
        by_key.setdefault(key, []).append(record)
    groups = []
    for runs in by_key.values():
        setting = _setting(runs[0]["config"])
        best = [r["best_test_accuracy"] for r in runs if r["best_test_accuracy"] is not None]
        chosen = {r["selected_on"] for r in runs if r["best_test_accuracy"] is not None}
        groups.append(
            dict(
                dataset=setting.get("dataset"),
                backbone=setting.get("backbone"),
                setting=setting,
                runs=runs,
                test_accuracy=stats([r["test_accuracy"] for r in runs]),
                mean_class_accuracy=stats([r["mean_class_accuracy"] for r in runs]),
                best_test_accuracy=stats(best),
                selected_on=(chosen.pop() if len(chosen) == 1 else "mixed") if chosen else None,
                notes=_group_notes(runs),
            )
        )
    keys = _differences(groups, "setting") if len(groups) > 1 else []
    for g in groups:
        g["differs"] = {k: g["setting"].get(k, "(absent)") for k in keys}
    return groups


def _pm(s):
    """'mean ± std' with two decimals; '-' for a missing value (std of a single run)."""
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.2f} ± {s['std']:.2f}" if s["std"] is not None else f"{s['mean']:.2f} ± -"


def best_label(selected_on):
    """How the best epoch was chosen, as the table labels it."""
    return {
        "test": "best-on-test, optimistic",
        "val": "best-on-val",
        "mixed": "best epoch, selection mixed",
    }.get(selected_on, "best epoch")


def format_summary(groups):
    """Markdown table, one row per group, then one line per group note; accuracies in percent."""
    several = len(groups) > 1
    head = [
        "dataset",
        "backbone",
        "n",
        "test acc (last epoch)",
        "mean class acc (last epoch)",
        "best epoch test acc",
    ]
    if several:
        head = ["group"] + head + ["settings that differ"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for i, g in enumerate(groups, 1):
        best = (
            "-"
            if g["best_test_accuracy"]["mean"] is None
            else (f"{g['best_test_accuracy']['mean']:.2f} ({best_label(g['selected_on'])})")
        )
        row = [
            str(g["dataset"]),
            str(g["backbone"]),
            str(g["test_accuracy"]["n"]),
            _pm(g["test_accuracy"]),
            _pm(g["mean_class_accuracy"]),
            best,
        ]
        if several:
            row = (
                [str(i)]
                + row
                + [", ".join(f"{k}={json.dumps(v)}" for k, v in g["differs"].items())]
            )
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(
        "mean ± sample standard deviation (n-1) over seeds; '-' where one run gives no spread. "
        "Report the last-epoch numbers"
        + (
            "; a best-on-test epoch was chosen on the test set itself."
            if any(g["selected_on"] == "test" for g in groups)
            else "."
        )
    )
    for i, g in enumerate(groups, 1):
        seeds = ", ".join(f"{r['seed']}: {r['test_accuracy']:.2f}" for r in g["runs"])
        lines.append(
            f"group {i} seeds (test acc): {seeds}" if several else f"seeds (test acc): {seeds}"
        )
        lines += [f"note{f' (group {i})' if several else ''}: {n}" for n in g["notes"]]
    return "\n".join(lines)


def _group_json(g):
    runs = [
        dict(
            run=r["run"],
            seed=r["seed"],
            test_accuracy=r["test_accuracy"],
            mean_class_accuracy=r["mean_class_accuracy"],
            best_test_accuracy=r["best_test_accuracy"],
        )
        for r in g["runs"]
    ]
    return dict(
        dataset=g["dataset"],
        backbone=g["backbone"],
        test_accuracy=g["test_accuracy"],
        mean_class_accuracy=g["mean_class_accuracy"],
        best_test_accuracy=dict(
            g["best_test_accuracy"],
            selected_on=g["selected_on"],
            label=best_label(g["selected_on"]),
        ),
        runs=runs,
        differs=g["differs"],
        setting=g["setting"],
        notes=g["notes"],
    )


def summary_json(groups):
    """One group: {"test_accuracy": {"mean", "std", "n"}, "mean_class_accuracy", "runs", ...};
    several: {"groups": [...]}."""
    if len(groups) == 1:
        return _group_json(groups[0])
    return dict(groups=[_group_json(g) for g in groups])


def main(argv=None):
    """Command line: print the table (and write --out JSON); return 0, or 2 with one error line."""
    p = argparse.ArgumentParser(
        description="Mean and sample std over seeds of train.py runs, grouped by setting."
    )
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="train.py output folders (each with metrics.json)",
    )
    p.add_argument("--out", default=None, help="also write the summary as JSON to this file")
    args = p.parse_args(argv)
    try:
        groups = summarize_runs(args.runs)
    except ValueError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(format_summary(groups))
    if args.out:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            save_atomic(json.dumps(summary_json(groups), indent=2) + "\n", args.out)
        except OSError as e:
            print(f"error: --out {args.out}: {e}", file=sys.stderr)
            return 2
        print(f"summary written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
