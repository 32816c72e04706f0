"""lib/checkpoint.py: every failure to read a torch file is one clear error naming it (missing,
folder, empty, truncated, text, tensor-only, refused pickles that are never run, the wrong kind of
checkpoint); save_atomic keeps the previous file on any failure and leaves no temp file; stale
temporaries of dead processes go; the non-finite guard; refuse_overwrite; a CLI wrapped in
errors.cli_errors prints one line, no traceback."""

import errno
import math
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

import text_prompts
from lib import checkpoint, errors, finite_guard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
META = dict(backbone="resnet18", image_size=32, mean=[0.5] * 3, std=[0.5] * 3, dataset="synthetic")


def model_checkpoint(train=False):
    """A small dict shaped like train.py's best.pt (train=False) or last.pt (train=True)."""
    ckpt = dict(
        model={"w": torch.ones(2, 2)},
        class_names=["anger", "neutral"],
        anchors=torch.randn(2, 8),
        meta=dict(META),
        args={"epochs": 2},
        clip="tiny",
        epoch=1,
    )
    if train:
        ckpt.update(
            optimizer={"state": {}, "param_groups": []},
            scheduler={},
            scaler={},
            history=[{"epoch": 1, "epoch_seconds": 1.0}],
            best=dict(
                score=50.0,
                epoch=1,
                selected_on="test",
                test_accuracy=50.0,
                mean_class_accuracy=50.0,
            ),
            last_test=dict(
                accuracy=50.0, mean_class_accuracy=50.0, per_class_accuracy={}, confusion_matrix=[]
            ),
        )
    return ckpt


def saved(tmp_path, obj, name="f.pt"):
    """torch.save obj into tmp_path/name; the path as str."""
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


def message(excinfo):
    return str(excinfo.value)


# ---------------------------------------------------------------- reading: each failure is named


def test_missing_file_is_a_file_not_found_naming_it(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="nowhere.pt does not exist; give the last.pt or best.pt"
    ) as e:
        checkpoint.load_checkpoint(tmp_path / "nowhere.pt", "model")
    assert isinstance(e.value, errors.UserError)
    with pytest.raises(
        errors.MissingFileError, match="a.pt does not exist; make an anchor file with"
    ):
        checkpoint.load_checkpoint(tmp_path / "a.pt", "anchors")
    with pytest.raises(errors.MissingFileError, match="w.pt does not exist$"):
        checkpoint.read_torch_file(tmp_path / "w.pt", "weights file")


def test_folder_without_last_pt_and_folder_for_weights(tmp_path):
    with pytest.raises(
        errors.MissingFileError, match="folder without a last.pt; --resume needs the run's last.pt"
    ):
        checkpoint.load_checkpoint(tmp_path, "train")
    with pytest.raises(errors.BadInputError, match="is a folder, not a file"):
        checkpoint.load_checkpoint(tmp_path, "weights")


def test_run_folder_resolves_to_its_last_pt(tmp_path):
    checkpoint.save_atomic(model_checkpoint(train=True), tmp_path / "last.pt")
    assert checkpoint.resolve_checkpoint_path(str(tmp_path), "train") == str(tmp_path / "last.pt")
    assert checkpoint.load_checkpoint(str(tmp_path), "train")["epoch"] == 1


def test_empty_file(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(errors.BadInputError, match=r"last.pt is empty \(0 bytes\)"):
        checkpoint.load_checkpoint(tmp_path / "last.pt", "train")


def test_truncated_file(tmp_path):
    path = saved(tmp_path, model_checkpoint(train=True), "last.pt")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(errors.BadInputError) as e:
        checkpoint.load_checkpoint(path, "train")
    assert (
        path in message(e)
        and "truncated or damaged" in message(e)
        and "central directory" not in message(e)
    )


def test_text_file_is_not_a_torch_file(tmp_path):
    (tmp_path / "notes.pt").write_text("hello, these are my notes\nsecond line\n", encoding="utf-8")
    with pytest.raises(
        errors.BadInputError, match="notes.pt is not a torch file \\(it is text, starting 'hello"
    ):
        checkpoint.load_checkpoint(tmp_path / "notes.pt", "model")


def test_tensor_only_and_list_files(tmp_path):
    with pytest.raises(
        errors.BadInputError, match=r"t.pt holds a single tensor of shape \(3,\), not a checkpoint"
    ):
        checkpoint.load_checkpoint(saved(tmp_path, torch.ones(3), "t.pt"), "train")
    with pytest.raises(errors.BadInputError, match=r"l.pt holds a list of 2 items"):
        checkpoint.load_checkpoint(saved(tmp_path, [torch.ones(1), 2], "l.pt"), "model")


class WritesMarker:
    """Unpickling this object runs exec(), which creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_pickled_objects_are_refused_and_never_run(tmp_path):
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(WritesMarker(control)))  # the payload works when unpickled unsafely
    assert control.exists()
    marker = tmp_path / "marker"
    in_torch = saved(
        tmp_path, {"model": {"w": torch.ones(1)}, "extra": WritesMarker(marker)}, "evil.pt"
    )
    with pytest.raises(errors.BadInputError) as e:
        checkpoint.load_checkpoint(in_torch, "model")
    assert "evil.pt" in message(e) and "refused for safety" in message(e) and "(exec)" in message(e)
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"x": WritesMarker(marker)}, protocol=2))
    with pytest.raises(
        errors.BadInputError, match="plain.pt is not a torch file \\(a plain Python pickle"
    ):
        checkpoint.load_checkpoint(plain, "weights")
    assert not marker.exists()


def test_best_pt_for_resume_says_what_it_is(tmp_path):
    path = saved(tmp_path, model_checkpoint(train=False), "best.pt")
    with pytest.raises(errors.BadInputError) as e:
        checkpoint.load_checkpoint(path, "train")
    assert message(e).startswith(
        f"{path} is a best.pt-style model checkpoint without optimizer state; "
        "--resume needs the run's last.pt"
    )
    assert checkpoint.load_checkpoint(path, "model")["class_names"] == ["anger", "neutral"]


def test_old_last_pt_missing_keys_is_named_not_called_another_kind(tmp_path):
    ckpt = model_checkpoint(train=True)
    del ckpt["history"]
    with pytest.raises(errors.BadInputError, match=r"missing keys \['history'\]"):
        checkpoint.load_checkpoint(saved(tmp_path, ckpt, "last.pt"), "train")


def test_bad_field_types_are_named(tmp_path):
    ckpt = model_checkpoint()
    ckpt["anchors"] = torch.randn(1, 8)  # fewer anchors than classes
    with pytest.raises(
        errors.BadInputError, match="class set mismatch: 1 anchors for 2 class names"
    ):
        checkpoint.load_checkpoint(saved(tmp_path, ckpt), "model")
    ckpt = model_checkpoint()
    ckpt["model"] = {"w": torch.ones(1), "note": "text"}
    with pytest.raises(errors.BadInputError, match="key 'model' must be the model's state dict"):
        checkpoint.load_checkpoint(saved(tmp_path, ckpt), "model")


def test_anchor_files(tmp_path):
    assert checkpoint.ANCHOR_FORMAT == text_prompts.ANCHOR_FORMAT
    names = text_prompts.class_names("rafdb")
    good = str(tmp_path / "a.pt")
    text_prompts.save_anchors(good, torch.randn(7, 16), names, None, "tiny")
    assert checkpoint.load_checkpoint(good, "anchors")["class_names"] == names
    wrong = saved(tmp_path, {"format": "some-other-v2", "anchors": torch.randn(7, 16)}, "wrong.pt")
    with pytest.raises(errors.BadInputError, match="wrong.pt: not a text-anchor file"):
        checkpoint.load_checkpoint(wrong, "anchors")
    with pytest.raises(
        errors.BadInputError, match="is a text-anchor file from text_prompts.py; --resume"
    ):
        checkpoint.load_checkpoint(good, "train")
    for k in (6, 8):
        rows = saved(
            tmp_path,
            dict(
                format=checkpoint.ANCHOR_FORMAT,
                anchors=torch.randn(k, 16),
                class_names=names,
                templates=["{name}"],
                clip="x",
            ),
            "rows.pt",
        )
        with pytest.raises(errors.BadInputError, match=rf"rows.pt: .*\b{k}\b.* 7 class names"):
            checkpoint.load_checkpoint(rows, "anchors")


def test_weights_file_is_checked_then_unwrapped_by_build_backbone(tmp_path):
    import model

    state = model.build_backbone("resnet18").state_dict()
    path = saved(
        tmp_path, {"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3}, "w.pth"
    )
    assert sorted(checkpoint.load_checkpoint(path, "weights")["state_dict"]) == sorted(
        "module." + k for k in state
    )
    # unwrapped and 'module.' stripped by model.py
    net = model.build_backbone("resnet18", weights=str(path))
    assert all(torch.equal(net.state_dict()[k], state[k]) for k in state)
    with pytest.raises(ValueError, match="key 'lr' holds a float, not a tensor"):
        model.build_backbone(
            "resnet18", weights=str(saved(tmp_path, {"w": torch.ones(1), "lr": 0.1}))
        )
    with pytest.raises(errors.BadInputError, match="holds no tensors"):
        checkpoint.load_checkpoint(saved(tmp_path, {"lr": 0.1}), "weights")
    with pytest.raises(errors.BadInputError, match="not backbone weights"):
        checkpoint.load_checkpoint(saved(tmp_path, model_checkpoint(train=True)), "weights")


# ---------------------------------------------------------------- writing


def temp_files(folder):
    return [n for n in os.listdir(folder) if checkpoint.TEMP_NAME.match(n)]


def test_save_atomic_round_trips_text_bytes_and_torch(tmp_path):
    checkpoint.save_atomic("naïve ✓\n", tmp_path / "a.txt")
    assert (tmp_path / "a.txt").read_bytes() == "naïve ✓\n".encode()
    checkpoint.save_atomic(b"\x00\x01", tmp_path / "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    checkpoint.save_atomic({"x": torch.arange(5)}, tmp_path / "c.pt")
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["x"], torch.arange(5))
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4608 vs 4518"),
        OSError(errno.ENOSPC, "No space left on device"),
    ],
)
def test_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path, monkeypatch, failure):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"epoch": 1}, path)
    seen = []

    def half_written_then_fail(obj, f):
        seen.append(os.path.basename(f.name))
        f.write(b"PK\x03\x04 partial bytes")
        raise failure

    monkeypatch.setattr(checkpoint.torch, "save", half_written_then_fail)
    with pytest.raises(errors.WriteError) as e:
        checkpoint.save_atomic({"epoch": 2}, path)
    assert (
        str(path) in message(e)
        and "the disk may be full" in message(e)
        and isinstance(e.value, OSError)
    )
    assert seen == [f"last.pt.tmp{os.getpid()}"] and checkpoint.TEMP_NAME.match(seen[0])
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert temp_files(tmp_path) == []


def test_unpicklable_object_is_a_bug_not_a_user_error_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "best.pt"
    checkpoint.save_atomic({"epoch": 1}, path)
    with pytest.raises(Exception) as e:
        checkpoint.save_atomic({"fn": lambda x: x}, path)
    assert not isinstance(e.value, errors.UserError)
    assert torch.load(path, weights_only=True) == {"epoch": 1} and temp_files(tmp_path) == []


def test_interrupt_during_write_removes_the_temp(tmp_path, monkeypatch):
    def interrupted(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_atomic({"epoch": 2}, tmp_path / "last.pt")
    assert os.listdir(tmp_path) == []


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = [
            f"last.pt.tmp{dead.pid}",
            f"notes.txt.tmp{dead.pid}",
            f"best.pt.tmp{live.pid}",
            f"log.jsonl.tmp{os.getpid()}",
            "last.pt",
            "notes.tmp",
            "last.pt.tmpx1",
        ]
        for n in names:
            (tmp_path / n).write_bytes(b"x")
        run_files = checkpoint.remove_stale_temporaries(tmp_path, names=checkpoint.RUN_FILES)
        any_name = checkpoint.remove_stale_temporaries(tmp_path)
    finally:
        live.kill()
        live.wait()
    assert run_files == [str(tmp_path / f"last.pt.tmp{dead.pid}")]  # only a run file's temp
    assert any_name == [str(tmp_path / f"notes.txt.tmp{dead.pid}")]
    assert sorted(os.listdir(tmp_path)) == sorted(names[2:])
    assert checkpoint.remove_stale_temporaries(tmp_path / "absent") == []


# ---------------------------------------------------------------- non-finite guard, overwrite
# refusal


def test_all_finite_matches_an_elementwise_check():
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    states = {
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "steps": torch.tensor([2**62]),
    }

    def reference(d):  # every float element, one by one in Python
        return all(
            math.isfinite(v)
            for sd in (d["model"], d["optimizer"]["state"][0])
            for t in sd.values()
            if t.is_floating_point()
            for v in t.flatten().tolist()
        )

    assert finite_guard.all_finite(states) and reference(states)
    for bad in (float("nan"), float("inf"), -float("inf")):
        momentum = opt.state_dict()["state"][0]["momentum_buffer"].clone()
        momentum[0, 1] = bad
        broken = dict(
            states, optimizer={"state": {0: {"momentum_buffer": momentum}}, "param_groups": []}
        )
        assert not finite_guard.all_finite(broken) and not reference(broken)
        assert finite_guard.nonfinite_names(broken) == ["optimizer.state.0.momentum_buffer"]


def test_require_finite_names_the_tensor_and_the_kept_checkpoint(tmp_path):
    last = tmp_path / "last.pt"
    # finite: no error
    finite_guard.require_finite({"model": {"w": torch.ones(2)}}, "after epoch 1", last)
    checkpoint.save_atomic({"epoch": 1}, last)
    with pytest.raises(errors.NonFiniteError) as e:
        finite_guard.require_finite(
            {"model": {"w": torch.tensor([1.0, float("nan")])}},
            "after epoch 2",
            str(last),
            hint="lower --lr (now 0.05)",
        )
    assert message(e) == (
        f"stopping after epoch 2: nan or inf in model.w; nothing was saved, {last} is unchanged "
        f"and holds the last good state (--resume {last} continues from it); lower --lr (now 0.05)"
    )
    assert e.value.exit_code == 3


def test_refuse_overwrite(tmp_path):
    assert checkpoint.refuse_overwrite(tmp_path / "new") == []
    (tmp_path / "best.pt").write_bytes(b"x")
    assert checkpoint.refuse_overwrite(tmp_path) == ["best.pt"]  # no last.pt: nothing to resume
    (tmp_path / "last.pt").write_bytes(b"x")
    with pytest.raises(errors.BadInputError) as e:
        checkpoint.refuse_overwrite(str(tmp_path))
    last = os.path.join(str(tmp_path), "last.pt")
    assert (
        f"--resume {last}" in message(e)
        and "fresh --output" in message(e)
        and "--overwrite" in message(e)
    )
    assert checkpoint.refuse_overwrite(tmp_path, overwrite=True) == ["last.pt", "best.pt"]
    with pytest.raises(errors.BadInputError, match="is a file, not a folder"):
        checkpoint.refuse_overwrite(last)


# ---------------------------------------------------------------- a CLI ends a user error in one
# line

CLI = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import torch
    from lib import checkpoint, errors, finite_guard

    def main(what):
        if what == "bug":
            return 1 / 0
        if what == "nan":
            nan = {"model": {"w": torch.tensor(float("nan"))}}
            finite_guard.require_finite(nan, "after epoch 1")
        checkpoint.load_checkpoint(what, "train")

    with errors.cli_errors():
        main(sys.argv[2])
""")


def run_cli(tmp_path, what):
    script = tmp_path / "cli.py"
    script.write_text(CLI, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(script), ROOT, what], capture_output=True, text=True, timeout=120
    )


def test_cli_user_errors_are_one_line_bugs_keep_their_traceback(tmp_path):
    best = saved(tmp_path, model_checkpoint(), "best.pt")
    user = run_cli(tmp_path, best)
    assert user.returncode == 2 and "Traceback" not in user.stderr
    assert user.stderr.splitlines() == [
        f"error: {best} is a best.pt-style model checkpoint without optimizer "
        "state; --resume needs the run's last.pt (train.py writes it into the "
        "run's --output folder)"
    ]
    nan = run_cli(tmp_path, "nan")
    assert nan.returncode == 3 and "Traceback" not in nan.stderr
    assert nan.stderr.startswith("error: stopping after epoch 1: nan or inf in model.w")
    bug = run_cli(tmp_path, "bug")
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "ZeroDivisionError" in bug.stderr


def test_background_writer_writes_the_snapshot_taken_at_write_time(tmp_path):
    state = {"w": torch.zeros(3), "nested": [torch.ones(2)]}
    writer = checkpoint.BackgroundWriter()
    writer.write([(state, str(tmp_path / "last.pt")), ("line\n", str(tmp_path / "log.jsonl"))])
    state["w"].add_(5)  # training goes on changing the tensors while the file is written
    state["nested"][0].zero_()
    writer.wait()
    saved_state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert torch.equal(saved_state["w"], torch.zeros(3)) and torch.equal(
        saved_state["nested"][0], torch.ones(2)
    )
    assert (tmp_path / "log.jsonl").read_text() == "line\n"
    # cannot be pickled: a bug, raised at wait()
    writer.write([({"x": lambda: 0}, str(tmp_path / "bad.pt"))])
    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises for a lambda, wait() re-raises it
        writer.wait()
    assert not (tmp_path / "bad.pt").exists() and temp_files(tmp_path) == []
