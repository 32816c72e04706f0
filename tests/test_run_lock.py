"""One run per output folder (lib/run_lock.py): a second run, --overwrite or --resume into a folder
a live run holds is refused with one line naming the folder and the holder's pid; the lock of a
killed run is taken over and said so; of runs started together exactly one wins, also for a stale
lock; the lock goes when main() returns or raises. Real processes throughout, synchronised on files
rather than on timing."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from test_bad_input import assert_one_clear_line, cli
from test_train import make_anchors, tiny_synthetic_args

import text_prompts
import train
from lib import checkpoint, errors, run_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
# takes the lock of argv[1] once the file argv[2] exists, says "held" or "refused: ...", and
# holds it until its stdin closes
RACER = """
import os, sys, time
from lib import errors, run_lock
folder, go = sys.argv[1], sys.argv[2]
os.makedirs(folder, exist_ok=True)
open(go + "." + str(os.getpid()), "w").close()  # ready
while not os.path.exists(go):
    time.sleep(0.001)
try:
    lock = run_lock.RunLock(folder).acquire(log=lambda m: print(m, flush=True))
except errors.BadInputError as e:
    print("refused:", e, flush=True)
    sys.exit(2)
print("held", flush=True)
sys.stdin.read()
lock.release()
"""
# train.main(argv[2:]) under errors.cli_errors, started once the file argv[1] exists
TRAIN_RACER = """
import os, sys, time
import train
from lib import errors
go = sys.argv[1]
open(go + "." + str(os.getpid()), "w").close()
while not os.path.exists(go):
    time.sleep(0.001)
with errors.cli_errors():
    train.main(sys.argv[2:])
"""


def start(code, *args):
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=ROOT,
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def race(code, n, go, *args):
    """n processes of `code`, released together once all have started (each touches go.<pid>)."""
    procs = [start(code, *args, go) if code is RACER else start(code, go, *args) for _ in range(n)]
    deadline = time.time() + 120
    while not all(os.path.exists(f"{go}.{p.pid}") for p in procs):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [
            p.communicate() for p in procs if p.poll() is not None
        ]
        time.sleep(0.01)
    open(go, "w").close()
    return procs


def holder(folder):
    """A process holding folder's lock (until its stdin closes)."""
    os.makedirs(folder, exist_ok=True)
    (p,) = race(RACER, 1, f"{folder}.go", folder)
    assert p.stdout.readline().strip() == "held", p.communicate()
    return p


def kill(p):
    p.send_signal(signal.SIGKILL)
    p.communicate()


def test_one_holder_per_folder_released_on_exit(tmp_path):
    first = run_lock.RunLock(tmp_path).acquire()
    written = json.loads((tmp_path / "run.lock").read_text())
    assert written["pid"] == os.getpid() and written["host"] and written["started"]
    with pytest.raises(errors.BadInputError, match=f"in use by another run \\(pid {os.getpid()} "):
        run_lock.RunLock(tmp_path).acquire()
    assert checkpoint.refuse_overwrite(tmp_path) == []  # a lock is not a run already there
    first.release()
    assert not (tmp_path / "run.lock").exists()
    with run_lock.RunLock(tmp_path) as again:  # free again, and no takeover
        assert again.held and json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / "run.lock").exists()


def test_another_process_holds_then_dies_and_its_lock_is_taken_over(tmp_path):
    p = holder(tmp_path)
    with pytest.raises(errors.BadInputError) as refused:
        run_lock.RunLock(tmp_path).acquire()
    assert str(tmp_path) in str(refused.value) and f"pid {p.pid} " in str(refused.value)
    kill(p)  # kill -9: the file stays, naming a process that no longer runs
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == p.pid
    said = []
    with run_lock.RunLock(tmp_path).acquire(log=said.append):
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    assert len(said) == 1 and "took over" in said[0] and f"pid {p.pid} " in said[0], said


@pytest.mark.parametrize("stale", [False, True], ids=["new folder", "stale lock"])
def test_of_processes_racing_for_a_lock_exactly_one_wins(tmp_path, stale):
    folder = tmp_path / "run"
    if stale:
        kill(holder(folder))
    procs = race(RACER, 4, tmp_path / "go", folder)
    lines = []
    for p in procs:
        lines.append(p.stdout.readline().strip())
        if lines[-1].startswith("took over"):
            lines[-1] += " | " + p.stdout.readline().strip()
    won = [p for p, line in zip(procs, lines, strict=True) if line.endswith("held")]
    assert len(won) == 1, (lines, [p.communicate() for p in procs])
    for p, line in zip(procs, lines, strict=True):
        if p is not won[0]:
            assert line.startswith("refused:") and f"pid {won[0].pid} " in line, lines
    assert sum(line.startswith("took over") for line in lines) == (1 if stale else 0), lines
    for p in procs:
        p.communicate()
    assert not (folder / "run.lock").exists()


def test_without_flock_exclusive_creation_decides_and_a_left_lock_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "fcntl", None)
    first = run_lock.RunLock(tmp_path).acquire()
    with pytest.raises(errors.BadInputError, match="delete .*run.lock"):
        run_lock.RunLock(tmp_path).acquire()
    first.release()
    run_lock.RunLock(tmp_path).acquire()  # never released: as if killed
    with pytest.raises(errors.BadInputError, match="delete"):
        run_lock.RunLock(tmp_path).acquire()


def test_train_py_into_a_held_folder_is_refused_also_with_overwrite(tmp_path):
    anchors = make_anchors(tmp_path / "anchors.pt", text_prompts.class_names("synthetic"))
    out = tmp_path / "run"
    p = holder(out)
    code, err = cli("train.py", *tiny_synthetic_args(out, anchors, epochs=1))
    assert_one_clear_line(code, err, str(out), f"pid {p.pid} ", "in use")
    with pytest.raises(errors.BadInputError, match=f"pid {p.pid} "):
        train.main(tiny_synthetic_args(out, anchors, epochs=1) + ["--overwrite"])
    p.communicate("")  # released
    train.main(tiny_synthetic_args(out, anchors, epochs=1))
    assert (out / "metrics.json").exists() and not (out / "run.lock").exists()
    # main() raising after the lock was taken (a finished run is there) releases it too
    with pytest.raises(errors.BadInputError, match="already holds a training run"):
        train.main(tiny_synthetic_args(out, anchors, epochs=1))
    assert not (out / "run.lock").exists()


# train.main(argv[2:]), stopped for good (until killed) once it has saved its first epoch, which
# it says by creating the file argv[1]
PAUSED_TRAIN = """
import inspect, sys, time
import train
saved, save = sys.argv[1], train.save_checkpoints
def save_then_stop(*args, **kwargs):
    save(*args, **kwargs)
    inspect.signature(save).bind(*args, **kwargs).arguments["writer"].wait()  # on disk now
    open(saved, "w").close()
    while True:
        time.sleep(1)
train.save_checkpoints = save_then_stop
train.main(sys.argv[2:])
"""


def test_resume_of_a_running_run_is_refused_then_a_killed_one_is_taken_over(tmp_path, capsys):
    anchors = make_anchors(tmp_path / "anchors.pt", text_prompts.class_names("synthetic"))
    out = tmp_path / "run"
    args = tiny_synthetic_args(out, anchors, epochs=2, num_train=32)
    args.remove("--quiet")
    running = start(PAUSED_TRAIN, tmp_path / "saved", *args)
    deadline = time.time() + 120
    while not (tmp_path / "saved").exists():  # epoch 1 is saved: it has a run to resume
        assert time.time() < deadline and running.poll() is None, running.communicate()
        time.sleep(0.02)
    with pytest.raises(errors.BadInputError) as refused:
        train.main(["--resume", str(out)])
    message = str(refused.value)
    assert str(out) in message and f"pid {running.pid} " in message and "--resume" in message
    assert "\n" not in message
    kill(running)
    assert checkpoint.load_checkpoint(out / "last.pt", "train")["epoch"] == 1
    capsys.readouterr()
    resumed = train.main(["--resume", str(out)])
    printed = capsys.readouterr().out
    assert f"took over the lock {out / 'run.lock'} of pid {running.pid} " in printed
    assert resumed["last_epoch"]["epoch"] == 2 and not (out / "run.lock").exists()


def test_two_train_py_started_together_into_a_new_folder_exactly_one_runs(tmp_path):
    anchors = make_anchors(tmp_path / "anchors.pt", text_prompts.class_names("synthetic"))
    out = tmp_path / "run"
    args = tiny_synthetic_args(out, anchors, epochs=2, num_train=32)
    args.remove("--quiet")
    procs = race(TRAIN_RACER, 2, tmp_path / "go", *args)
    done = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert sorted(code for code, _, _ in done) == [0, 2], done
    (winner, won_out, _), (_, _, lost_err) = sorted(done, key=lambda d: d[0])
    assert_one_clear_line(2, lost_err, str(out), "in use")
    assert "took over" not in won_out
    assert (out / "metrics.json").exists() and not (out / "run.lock").exists()
