"""Bad input through the real command lines: a non-zero exit, a short message naming the flag, file
or key, and no traceback; nothing of an earlier run is lost or poisoned. The scripts run as
`python script.py` would, their `__main__` block included, in this process (a new one costs
seconds of imports); test_unreadable_images runs one as a real process."""

import contextlib
import errno
import io
import json
import os
import runpy
import shutil
import subprocess
import sys

import pytest
import torch
from test_train import make_anchors, make_colour_folder, stop_after_epoch_1

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(script, *args, process=False):
    """Run a script of this repository as its own command line does, here or (process=True) in a
    new Python process; (exit code, stderr). A traceback here fails the test where it is raised."""
    path, argv = os.path.join(ROOT, script), [str(a) for a in args]
    if process:
        env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
        done = subprocess.run(
            [sys.executable, path, *argv], cwd=ROOT, env=env, capture_output=True, text=True
        )
        return done.returncode, done.stderr
    err, argv_before = io.StringIO(), sys.argv
    sys.argv = [path, *argv]
    try:
        with contextlib.redirect_stderr(err):
            runpy.run_path(path, run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv_before
    return code, err.getvalue()


def assert_one_clear_line(code, err, *words, lines=1):
    assert code == 2, err
    assert "Traceback" not in err, err
    assert err.startswith("error: ") and err.count("\n") <= lines, err
    for w in words:
        assert w in err, (w, err)


def test_bad_flags_are_refused_before_anything_runs(tmp_path):
    code, err = cli(
        "train.py", "--epochs", "0", "--dataset", "synthetic", "--output", tmp_path / "x"
    )
    assert code == 2 and "Traceback" not in err
    assert (
        err.splitlines()[-1]
        == "train.py: error: argument --epochs: '0' must be a whole number >= 1"
    )
    code, err = cli("train.py", "--lr", "nan", "--dataset", "synthetic", "--output", tmp_path / "x")
    assert code == 2 and err.splitlines()[-1].endswith("argument --lr: 'nan' must be a number > 0")
    assert not os.path.exists(tmp_path / "x")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-epoch run on a colour folder, and its anchors."""
    tmp = tmp_path_factory.mktemp("bad_input")
    root = make_colour_folder(tmp / "faces", per_class_train=8, per_class_test=4)
    anchors = make_anchors(tmp / "anchors.pt", ["anger", "happiness", "neutral"])
    args = [
        "--device",
        "cpu",
        "--dataset",
        "folder",
        "--data-root",
        root,
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--anchors",
        anchors,
        "--output",
        tmp / "run",
        "--quiet",
    ]
    code, err = cli("train.py", *args)
    assert code == 0, err
    return dict(tmp=tmp, args=args, run=tmp / "run")


def test_a_finished_run_is_never_overwritten(finished):
    before = (finished["run"] / "last.pt").read_bytes()
    code, err = cli("train.py", *finished["args"])
    assert_one_clear_line(code, err, "already holds a training run", "--resume", "--overwrite")
    assert (finished["run"] / "last.pt").read_bytes() == before
    # left by a save that was killed: the next save overwrites it
    (finished["run"] / "last.pt.tmp").write_bytes(b"half a checkpoint")
    code, err = cli("train.py", *finished["args"], "--overwrite")
    assert code == 0, err
    assert (finished["run"] / "last.pt").read_bytes() != before
    assert not (finished["run"] / "last.pt.tmp").exists()


def test_a_stopped_overwrite_leaves_nothing_of_the_earlier_run(finished, tmp_path, monkeypatch):
    """--overwrite of a finished run, stopped by Ctrl-C in its first epoch: the folder holds the
    new run's files only (no earlier metrics.json for a summary to report, no earlier evaluation),
    and Ctrl-C is one line saying how to go on."""
    out = tmp_path / "run"
    shutil.copytree(finished["run"], out)
    (out / "eval-folder-test").mkdir()
    (out / "eval-folder-test" / "report.json").write_text("{}")
    args = [*finished["args"][:-3], "--output", out, "--overwrite", "--seed", "7", "--epochs", "2"]
    stop_after_epoch_1(monkeypatch)
    code, err = cli("train.py", *args)
    monkeypatch.undo()
    assert code == 130 and "Traceback" not in err and err.count("\n") == 1, err
    assert f"holds the last finished epoch: continue with python train.py --resume {out}" in err
    assert sorted(os.listdir(out)) == ["best.pt", "last.pt", "log.jsonl", "run.lock"]
    assert torch.load(out / "last.pt", weights_only=True)["args"]["seed"] == 7
    assert cli("evaluate.py", "--summarize", out)[0] == 2  # no metrics.json: nothing to report
    code, err = cli("train.py", "--resume", out, "--quiet")
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["last_epoch"]["epoch"] == 2


def test_output_paths_that_cannot_be_made_are_one_line(finished, tmp_path, monkeypatch):
    (tmp_path / "file.txt").write_text("x")
    args = [*finished["args"][:-3], "--quiet", "--output"]
    code, err = cli("train.py", *args, tmp_path / "file.txt" / "sub")
    assert_one_clear_line(code, err, "--output", "file.txt/sub", "cannot make this folder")
    code, err = cli(
        "evaluate.py", "--checkpoint", finished["run"] / "last.pt", "--images",
        finished["tmp"] / "faces", "--output", tmp_path / "file.txt",
    )  # fmt: skip
    assert_one_clear_line(code, err, "--output", "file.txt", "it is a file, not a folder")
    real_open = os.open  # a read-only disk: the run's lock file cannot be made

    def read_only(path, *a, **k):
        if str(path).endswith("run.lock"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", read_only)
    code, err = cli("train.py", *args, tmp_path / "ro")
    assert_one_clear_line(code, err, "ro", "cannot write in this folder (Read-only file system)")


def test_wrong_or_damaged_checkpoints_are_named(finished):
    tmp, run = finished["tmp"], finished["run"]
    code, err = cli("train.py", "--resume", run / "best.pt")
    assert_one_clear_line(code, err, "best.pt", "not a train.py checkpoint", "last.pt")
    (tmp / "half.pt").write_bytes((run / "last.pt").read_bytes()[:5000])
    code, err = cli("evaluate.py", "--checkpoint", tmp / "half.pt", "--images", tmp / "faces")
    assert_one_clear_line(code, err, "half.pt", "cannot be read")
    (tmp / "notes.pt").write_text("hello")
    code, err = cli("evaluate.py", "--checkpoint", tmp / "notes.pt", "--images", tmp / "faces")
    assert_one_clear_line(code, err, "notes.pt", "cannot be read")
    torch.save(torch.zeros(3), tmp / "tensor.pt")
    code, err = cli("evaluate.py", "--checkpoint", tmp / "tensor.pt", "--images", tmp / "faces")
    assert_one_clear_line(code, err, "tensor.pt")


def test_evaluate_flags_and_empty_folders(finished):
    os.makedirs(finished["tmp"] / "empty", exist_ok=True)
    code, err = cli(
        "evaluate.py",
        "--checkpoint",
        finished["run"] / "last.pt",
        "--images",
        finished["tmp"] / "empty",
    )
    assert_one_clear_line(code, err, "--images: no .jpg")
    code, err = cli(
        "evaluate.py",
        "--checkpoint",
        finished["run"] / "last.pt",
        "--images",
        finished["tmp"] / "faces",
        "--top-k",
        "0",
    )
    assert code == 2 and err.splitlines()[-1].endswith("--top-k: '0' must be a whole number >= 1")


def test_a_dataset_layout_error_is_one_line(tmp_path):
    os.makedirs(tmp_path / "raf")
    code, err = cli(
        "train.py",
        "--dataset",
        "rafdb",
        "--data-root",
        tmp_path / "raf",
        "--output",
        tmp_path / "x",
    )
    assert_one_clear_line(code, err, "list_patition_label.txt")
