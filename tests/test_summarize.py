"""tools/summarize.py: grouping by setting, mean and sample std against hand computations, table,
JSON, errors."""

import json
import math
import os

import pytest
from test_bad_input import cli

from lib.errors import BadInputError
from tools import summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = dict(
    dataset="rafdb",
    backbone="resnet18",
    seed=29,
    output="runs/a",
    resume=None,
    quiet=False,
    log_every=50,
    epochs=50,
    lr=0.002,
    batch_size=64,
    clip="ViT-B/16",
)


def _run(tmp_path, name, acc, mca, best, selected_on="test", **config):
    folder = tmp_path / name
    folder.mkdir()
    metrics = dict(
        test_accuracy=acc,
        mean_class_accuracy=mca,
        class_names=["a", "b"],
        best=dict(test_accuracy=best, selected_on=selected_on, epoch=7),
        config={**CONFIG, "output": str(folder), **config},
        environment=dict(torch="2.4.0", device="cpu"),
        data=dict(train=10, test=5),
    )
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return str(folder)


def _three_seeds(tmp_path, **config):
    return [
        _run(
            tmp_path,
            f"s{seed}",
            acc,
            mca,
            best,
            seed=seed,
            quiet=seed == 2,
            log_every=seed,
            **config,
        )
        for seed, acc, mca, best in (
            (1, 80.0, 70.0, 81.0),
            (2, 82.0, 73.0, 84.0),
            (3, 84.0, 76.0, 84.0),
        )
    ]


def test_three_seeds_one_group_hand_computed(tmp_path):
    groups = summarize.summarize_runs(_three_seeds(tmp_path))
    assert len(groups) == 1  # seed, output, quiet and log_every differ: still one group
    g = groups[0]
    # by hand: mean (80+82+84)/3 = 82; squared deviations 4+0+4 = 8; 8/(3-1) = 4; sqrt = 2
    assert g["test_accuracy"]["mean"] == pytest.approx(82.0) and g["test_accuracy"][
        "std"
    ] == pytest.approx(2.0)
    # mean class: (70+73+76)/3 = 73; deviations 9+0+9 = 18; 18/2 = 9; sqrt = 3
    assert g["mean_class_accuracy"]["mean"] == pytest.approx(73.0) and g["mean_class_accuracy"][
        "std"
    ] == pytest.approx(3.0)
    assert (
        g["best_test_accuracy"]["mean"] == pytest.approx((81 + 84 + 84) / 3)
        and g["selected_on"] == "test"
    )
    assert g["test_accuracy"]["n"] == 3 and g["differs"] == {} and g["repeated_seeds"] == []
    table = summarize.format_summary(groups)
    assert (
        "| 1 | rafdb | resnet18 | 3 | 82.00 ± 2.00 | 73.00 ± 3.00 | 83.00 (best-on-test, "
        "optimistic) |  |" in table
    )


def test_different_lr_is_its_own_group_and_named(tmp_path):
    runs = _three_seeds(tmp_path) + [_run(tmp_path, "lr", 90.0, 85.0, 91.0, lr=0.001)]
    groups = summarize.summarize_runs(runs)
    assert [g["test_accuracy"]["n"] for g in groups] == [3, 1]
    assert groups[0]["differs"] == {"lr": 0.002} and groups[1]["differs"] == {"lr": 0.001}
    assert groups[1]["test_accuracy"] == {"mean": 90.0, "std": None, "n": 1}
    assert [r["seed"] for r in groups[0]["runs"]] == [1, 2, 3]
    table = summarize.format_summary(groups)
    assert (
        "| 2 | rafdb | resnet18 | 1 | 90.00 ± - | 85.00 ± - | 91.00 (best-on-test, optimistic) | "
        "lr=0.001 |" in table
    )
    assert "| 1 | rafdb | resnet18 | 3 | 82.00 ± 2.00 |" in table and "lr=0.002" in table


def test_out_json(tmp_path, capsys):
    runs = _three_seeds(tmp_path) + [_run(tmp_path, "lr", 90.0, 85.0, 91.0, lr=0.001)]
    out = tmp_path / "sub" / "summary.json"
    assert summarize.main(runs + ["--out", str(out)]) == 0
    both = json.loads(out.read_text())["groups"]
    assert len(both) == 2 and both[0]["test_accuracy"]["n"] == 3
    assert math.isclose(both[0]["test_accuracy"]["mean"], 82.0)
    assert math.isclose(both[0]["test_accuracy"]["std"], 2.0)
    assert math.isclose(both[0]["mean_class_accuracy"]["std"], 3.0)
    assert [(r["seed"], r["test_accuracy"]) for r in both[0]["runs"]] == [
        (1, 80.0),
        (2, 82.0),
        (3, 84.0),
    ]
    assert both[0]["runs"][0]["run"] == runs[0] and "config" not in both[0]["runs"][0]
    assert both[0]["selected_on"] == "test"
    assert both[1]["differs"] == {"lr": 0.001} and both[1]["test_accuracy"]["std"] is None
    assert both[0]["setting"]["lr"] == 0.002 and "seed" not in both[0]["setting"]
    assert "summary written to" in capsys.readouterr().out


def test_val_selection_label_and_notes(tmp_path):
    a = _run(tmp_path, "a", 80.0, 70.0, 79.0, selected_on="val", seed=1, val_fraction=0.1)
    b = _run(tmp_path, "b", 81.0, 71.0, 80.0, selected_on="val", seed=1, val_fraction=0.1)
    groups = summarize.summarize_runs([a, b])
    assert groups[0]["selected_on"] == "val" and "(best-on-val)" in summarize.format_summary(groups)
    assert groups[0]["repeated_seeds"] == [1]
    assert "note: seed 1 appears more than once" in summarize.format_summary(groups)


def test_errors_name_the_file(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInputError, match=r"empty[/\\]metrics.json: no metrics.json"):
        summarize.summarize_runs([str(empty)])
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.json").write_text(
        json.dumps(dict(test_accuracy=80.0, mean_class_accuracy=70.0))
    )
    with pytest.raises(BadInputError, match=r"old[/\\]metrics.json: no 'config' record"):
        summarize.summarize_runs([str(old)])
    assert summarize.main([str(old)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and os.path.join(str(old), "metrics.json") in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json")
    with pytest.raises(BadInputError, match="not readable as JSON"):
        summarize.summarize_runs([str(broken)])
    nan = _run(tmp_path, "nan", float("nan"), 70.0, 80.0)
    with pytest.raises(BadInputError, match="'test_accuracy' is missing or not a finite number"):
        summarize.summarize_runs([nan])


def test_the_readme_command_on_runs_train_py_wrote(tmp_path, capsys):
    """The README's loop as written, on runs train.py made (seeds and folders differ, and so does
    the argv each run keeps): one group, its mean and sample std in the table and in --out."""
    from test_train import COLOUR_CLASSES, make_anchors, make_colour_folder

    root = make_colour_folder(tmp_path / "data", per_class_train=6, per_class_test=4, size=16)
    anchors = make_anchors(tmp_path / "anchors.pt", COLOUR_CLASSES)
    flags = ["--dataset", "folder", "--data-root", root, "--anchors", anchors, "--epochs", "1"]
    flags += ["--image-size", "16", "--batch-size", "6", "--amp", "off", "--device", "cpu"]
    runs, accuracies = [tmp_path / f"s{seed}" for seed in (1, 2)], []
    for seed, run in zip((1, 2), runs, strict=True):
        assert cli("train.py", *flags, "--seed", seed, "--output", run, "--quiet")[0] == 0
        accuracies.append(json.loads((run / "metrics.json").read_text())["test_accuracy"])
    capsys.readouterr()
    out = tmp_path / "summary.json"
    assert cli("evaluate.py", "--summarize", *runs, "--out", out)[0] == 0
    (group,) = json.loads(out.read_text())["groups"]
    mean, std = sum(accuracies) / 2, abs(accuracies[0] - accuracies[1]) / math.sqrt(2)
    assert group["test_accuracy"]["n"] == 2 and group["differs"] == {}
    assert math.isclose(group["test_accuracy"]["mean"], mean)
    assert math.isclose(group["test_accuracy"]["std"], std)
    assert f"{mean:.2f} ± {std:.2f}" in capsys.readouterr().out
    code, err = cli("evaluate.py", "--summarize", runs[0], tmp_path / "nowhere")
    assert code == 2 and "Traceback" not in err and "nowhere" in err
    assert err.count("\n") == 1
