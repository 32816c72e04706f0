"""lib/checkpoint.py: a damaged, foreign or unsafe file is one line naming it and nothing pickled
runs; saves are atomic; one run per output folder (flock), free again when its holder dies, however
it dies (a real process holds it there); a CLI ends a user error in one line."""

import functools
import os
import pickle
import signal
import subprocess
import sys
import types

import pytest
import torch
from test_train import make_anchors, stop_after_epoch_1, tiny_synthetic_args

import text_prompts
import train
from lib import checkpoint, errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def best_pt():
    return dict(
        model={"w": torch.ones(2)}, class_names=["a", "b"], anchors=torch.ones(2, 4), meta={}
    )


def saved(tmp_path, obj, name="f.pt"):
    torch.save(obj, tmp_path / name)
    return str(tmp_path / name)


# ---------------------------------------------------------------- reading: each failure named


def test_missing_file_and_folder_without_last_pt(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt does not exist; give the last.pt") as e:
        checkpoint.load_checkpoint(tmp_path / "nowhere.pt", "model")
    assert isinstance(e.value, errors.UserError)
    with pytest.raises(errors.MissingFileError, match="last.pt does not exist; --resume needs"):
        checkpoint.load_checkpoint(tmp_path, "train")
    checkpoint.save_atomic(best_pt(), tmp_path / "last.pt")  # a run folder stands for its last.pt
    assert checkpoint.load_checkpoint(tmp_path, "model")["class_names"] == ["a", "b"]


def damaged(tmp_path, how):
    path = saved(tmp_path, best_pt(), "best.pt")
    with open(path, "rb") as f:
        raw = f.read()
    if how == "empty":
        raw = b""
    elif how == "truncated":
        raw = raw[: len(raw) // 2]
    elif how == "text":
        raw = b"hello, these are my notes\n"
    elif how == "flipped":  # one byte of the tensor data: torch.load alone would read 1.0000xx
        at = raw.index(torch.ones(2).numpy().tobytes())
        raw = raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1 :]
    with open(path, "wb") as f:
        f.write(raw)
    return path


@pytest.mark.parametrize("how", ["empty", "truncated", "text", "flipped"])
def test_damaged_or_foreign_files_are_one_line_naming_the_file(tmp_path, how):
    path = damaged(tmp_path, how)
    with pytest.raises(errors.BadInputError) as e:
        checkpoint.load_checkpoint(path, "model")
    assert path in str(e.value) and "\n" not in str(e.value)


def test_other_kinds_of_file_name_the_keys_they_lack(tmp_path):
    with pytest.raises(errors.BadInputError, match=r"not a train.py checkpoint \(no \['optimizer'"):
        checkpoint.load_checkpoint(saved(tmp_path, best_pt()), "train")  # best.pt for --resume
    with pytest.raises(errors.BadInputError, match=r"not a train.py checkpoint \(no \['model'"):
        checkpoint.load_checkpoint(saved(tmp_path, torch.ones(3)), "model")  # a bare tensor


class WritesMarker:
    """Unpickling this object runs exec(), which creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_pickled_objects_are_refused_and_never_run(tmp_path):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(WritesMarker(control)))  # the payload works when unpickled unsafely
    assert control.exists()
    marker = tmp_path / "marker"
    evil = saved(tmp_path, dict(best_pt(), extra=WritesMarker(marker)), "evil.pt")
    with pytest.raises(errors.BadInputError, match="evil.pt cannot be read.*could run code"):
        checkpoint.load_checkpoint(evil, "model")
    (tmp_path / "plain.pt").write_bytes(pickle.dumps({"x": WritesMarker(marker)}, protocol=2))
    with pytest.raises(errors.BadInputError, match="plain.pt cannot be read"):
        checkpoint.load_checkpoint(tmp_path / "plain.pt", "model")
    assert not marker.exists()


# ---------------------------------------------------------------- writing: atomic


def test_save_atomic_round_trips_text_and_torch(tmp_path):
    checkpoint.save_atomic("naïve ✓\n", tmp_path / "a.txt")
    assert (tmp_path / "a.txt").read_bytes() == "naïve ✓\n".encode()
    checkpoint.save_atomic({"x": torch.arange(5)}, tmp_path / "c.pt")
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["x"], torch.arange(5))
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "c.pt"]


def _short_write(obj, f):  # torch's own words for a write the disk cut short
    f.write(b"PK\x03\x04 half a checkpoint")
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


@pytest.mark.parametrize("failure", ["full disk", "short write", "ctrl-c", "unpicklable"])
def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch, failure):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"epoch": 1}, path)
    new = {"epoch": 2}
    if failure == "full disk":  # the temporary file lands on /dev/full: the kernel's ENOSPC
        os.symlink("/dev/full", f"{path}.tmp")
        with pytest.raises(errors.WriteError) as e:
            checkpoint.save_atomic(new, path)
        assert "No space left on device" in str(e.value) and str(path) in str(e.value)
    elif failure == "short write":  # what it says depends on the disk's free space
        monkeypatch.setattr(checkpoint.torch, "save", _short_write)
        empty = types.SimpleNamespace(total=10**9, used=10**9, free=0)
        monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: empty)
        with pytest.raises(errors.WriteError, match=r"\(No space left on device: 0 bytes free\)"):
            checkpoint.save_atomic(new, path)
    elif failure == "ctrl-c":  # stopped while the bytes were on their way to the disk
        monkeypatch.setattr(
            checkpoint.os, "fsync", lambda fd: (_ for _ in ()).throw(KeyboardInterrupt)
        )
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save_atomic(new, path)
    else:  # a bug, not the user's: its own error, and no file touched
        with pytest.raises(Exception) as e:  # noqa: B017 - whatever pickling raises
            checkpoint.save_atomic({"x": lambda: 0}, path)
        assert not isinstance(e.value, errors.UserError)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["last.pt"]


def test_background_writer_writes_the_snapshot_taken_at_write_time(tmp_path):
    state = {"w": torch.zeros(3), "nested": [torch.ones(2)]}
    with checkpoint.BackgroundWriter() as writer:
        writer.write([(state, str(tmp_path / "last.pt")), ("line\n", str(tmp_path / "log.jsonl"))])
        state["w"].add_(5)  # training goes on changing the tensors while the file is written
        state["nested"][0].zero_()
    on_disk = torch.load(tmp_path / "last.pt", weights_only=True)
    assert torch.equal(on_disk["w"], torch.zeros(3))
    assert torch.equal(on_disk["nested"][0], torch.ones(2))
    assert (tmp_path / "log.jsonl").read_text() == "line\n"
    writer = checkpoint.BackgroundWriter()
    writer.write([({"x": lambda: 0}, str(tmp_path / "bad.pt"))])  # cannot be pickled: a bug
    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises, wait() re-raises
        writer.wait()
    assert not (tmp_path / "bad.pt").exists()


# ---------------------------------------------------------------- one run per folder

HOLDER = """
import sys
from lib import checkpoint
with checkpoint.run_lock(sys.argv[1], "a hint"):
    print("held", flush=True)
    sys.stdin.read()
"""


def holder(folder):
    os.makedirs(folder, exist_ok=True)
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        cwd=ROOT,
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_held_folder_is_refused_and_free_once_its_holder_is_killed(tmp_path):
    p = holder(tmp_path)
    refused = pytest.raises(errors.BadInputError, match="is in use by another run; a hint")
    with refused, checkpoint.run_lock(str(tmp_path), "a hint", wait_s=0.5):
        pass
    p.send_signal(signal.SIGKILL)
    p.wait()
    # no stale lock to clean; and one holder in this process too
    with (
        checkpoint.run_lock(str(tmp_path), "a hint", wait_s=0.5),
        pytest.raises(errors.BadInputError),
        checkpoint.run_lock(str(tmp_path), "a hint", wait_s=0.1),
    ):
        pass


def test_a_new_run_never_replaces_a_finished_one(tmp_path):
    anchors = make_anchors(tmp_path / "anchors.pt", text_prompts.class_names("synthetic"))
    out = tmp_path / "run"
    train.main(tiny_synthetic_args(out, anchors, epochs=1))
    with pytest.raises(errors.BadInputError, match="already holds a training run.*--overwrite"):
        train.main(tiny_synthetic_args(out, anchors, epochs=1))
    (tmp_path / "file").write_text("x")
    with pytest.raises(errors.BadInputError, match="is a file, not a folder"):
        train.main(tiny_synthetic_args(tmp_path / "file", anchors, epochs=1))


def test_resume_of_a_held_run_is_refused_then_goes_on_once_free(tmp_path, monkeypatch):
    """--resume takes the folder's lock too (the lock's release by a killed holder is tested above
    with a real process; here this process holds it, through another open file)."""
    anchors = make_anchors(tmp_path / "anchors.pt", text_prompts.class_names("synthetic"))
    out = tmp_path / "run"
    stop_after_epoch_1(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train.main(tiny_synthetic_args(out, anchors, epochs=2, num_train=32))
    monkeypatch.undo()
    held = checkpoint.run_lock(str(out), "held by the test")
    monkeypatch.setattr(checkpoint, "run_lock", functools.partial(checkpoint.run_lock, wait_s=0.2))
    refused = pytest.raises(errors.BadInputError, match="in use by another run; --resume it once")
    with held, refused:
        train.main(["--resume", str(out)])
    assert train.main(["--resume", str(out)])["last_epoch"]["epoch"] == 2


# ---------------------------------------------------------------- a CLI ends a user error in one
# line, exit 2 (3 for nan or inf); a bug keeps its traceback


def test_cli_user_errors_are_one_line_bugs_keep_their_traceback(tmp_path, capsys):
    best = saved(tmp_path, best_pt(), "best.pt")
    with pytest.raises(SystemExit) as user, errors.cli_errors():
        checkpoint.load_checkpoint(best, "train")
    err = capsys.readouterr().err
    assert user.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: {best} is not a train.py checkpoint")
    with pytest.raises(SystemExit) as nan, errors.cli_errors():
        raise errors.NonFiniteError("stopping after epoch 1: nan or inf")
    assert nan.value.code == 3 and capsys.readouterr().err.startswith("error: stopping after")
    with pytest.raises(ZeroDivisionError), errors.cli_errors():  # a bug: its traceback stays
        print(1 / 0)
