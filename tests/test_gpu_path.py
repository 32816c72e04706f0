"""Faults of the GPU path that a CPU can show: a device compared by its spelling, a host-device sync
inside a training step, a checkpoint write still running when the run's lock is released.
tests/test_cuda.py checks the same on a GPU."""

import contextlib
import functools
import json
import time

import pytest
import torch
from test_train import assert_same_run, make_anchors, stop_after_epoch_1, tiny_synthetic_args
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import evaluate
import text_prompts
import train
from lib import batches, checkpoint
from lib import device as dev

aten = torch.ops.aten
# what makes a GPU wait for the host: a value read back (item, tolist, bool, float), a tensor made
# from Python data (copied from the host), a shape that depends on the values (nonzero)
SYNCS = {
    aten._local_scalar_dense.default,
    aten.lift_fresh.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten.is_nonzero.default,
    aten.equal.default,
}


class HostSyncs(TorchDispatchMode):
    """Records every op of SYNCS run inside it, and indexing with a boolean mask (a nonzero); and,
    apart, every op that makes a float64 tensor (MPS has no float64)."""

    def __init__(self):
        super().__init__()
        self.seen, self.float64 = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        masked = func is aten.index.Tensor and any(
            i is not None and i.dtype == torch.bool for i in args[1]
        )
        if func in SYNCS or masked:
            self.seen.append(str(func))
        out = func(*args, **(kwargs or {}))
        if any(torch.is_tensor(t) and t.dtype == torch.float64 for t in tree_leaves(out)):
            self.float64.append(str(func))
        return out


@pytest.fixture(scope="module")
def anchors(tmp_path_factory):
    folder = tmp_path_factory.mktemp("anchors")
    return make_anchors(folder / "anchors.pt", text_prompts.class_names("synthetic"))


def test_a_device_trains_resumes_and_evaluates_the_same_however_it_is_written(
    tmp_path, anchors, monkeypatch
):
    plain, spelled = tmp_path / "plain", tmp_path / "spelled"
    train.main(tiny_synthetic_args(plain, anchors, epochs=2, num_train=48))  # --device cpu
    flags = tiny_synthetic_args(spelled, anchors, epochs=2, num_train=48)
    flags[flags.index("--device") + 1] = "cpu:0"
    stop_after_epoch_1(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train.main(flags)
    monkeypatch.undo()
    train.main(["--resume", str(spelled), "--device", "cpu:0", "--quiet"])
    assert_same_run(plain, spelled, epochs=2)
    reports = [
        evaluate.main(
            [
                "--checkpoint",
                str(run / "last.pt"),
                "--dataset",
                "synthetic",
                "--num-test",
                "28",
                "--device",
                device,
                "--output",
                str(tmp_path / f"eval-{device}"),
            ]
        )  # fmt: skip
        for run, device in ((plain, "cpu"), (spelled, "cpu:0"))
    ]
    assert reports[0]["confusion_matrix"] == reports[1]["confusion_matrix"]


def test_a_training_step_makes_the_device_wait_for_nothing(tmp_path, anchors):
    """A whole training step (the batch from the cache, the forward, the three losses, backward,
    SGD, the running sums) on the CPU, every op watched: on a GPU any of SYNCS would make the GPU
    wait for the host (torch.cuda.set_sync_debug_mode("error") checks the same in test_cuda.py),
    and no op may make a float64 tensor, which an Apple GPU (mps) cannot hold."""
    args = train.get_args(tiny_synthetic_args(tmp_path / "run", anchors, epochs=1))
    ddp = dev.OneProcess(torch.device("cpu"))
    args.num_workers = dev.default_workers(ddp.device)
    splits = train.load_data(args, ddp, lambda *a: None)
    batches.seed_epoch(splits.generators, args.seed, 1)
    t = text_prompts.load_anchors(anchors, splits.class_names).anchors
    net, precision, optimizer, _, scaler = train.build_training(
        args, t, splits.class_names, ddp.device, None, lambda *a: None, ddp
    )
    model, criterion = train.for_training(args, net, ddp)
    sums = {}
    loader = iter(splits.train)  # the epoch's order is drawn here, once
    # one process (no reduction hook), and the losses' path under torchrun (a hook: here the sum
    # over one process)
    for global_sum in (None, lambda sums: sums):
        loss = functools.partial(criterion, global_sum=global_sum)
        with HostSyncs() as watch:
            x, y = next(loader)
            step = train.train_step(model, loss, x, y, optimizer, scaler, precision)
            sums = train.add_up(sums, step, len(y))  # as train_one_epoch sums them
        assert watch.seen == [] and watch.float64 == [], (watch.seen, watch.float64)
    # the watch sees what it is for: the count the loss once made from len(labels), a value read
    # (on the CPU it cannot see tolist(), which reads memory without an op), a float64 sum
    with HostSyncs() as watch:
        torch.tensor(float(len(y)))
        sums["loss"].item()
        sums["loss"].double() * len(y)
    assert watch.seen == ["aten.lift_fresh.default", "aten._local_scalar_dense.default"]
    assert watch.float64 == ["aten._to_copy.default", "aten.mul.Tensor"]


def test_every_way_out_of_train_waits_for_the_last_write_before_releasing_the_lock(
    tmp_path, anchors, monkeypatch
):
    events = []
    real_save, real_lock = checkpoint.save_atomic, checkpoint.run_lock

    def slow_save(obj, path):
        time.sleep(0.3)  # still writing when the run stops
        real_save(obj, path)
        events.append("written " + str(path).rsplit("/", 1)[-1])

    @contextlib.contextmanager
    def lock(*a, **k):
        try:
            with real_lock(*a, **k):
                yield
        finally:
            events.append("released")

    monkeypatch.setattr(checkpoint, "save_atomic", slow_save)
    monkeypatch.setattr(checkpoint, "run_lock", lock)
    real_write = checkpoint.BackgroundWriter.write

    def interrupted(writer, files):
        real_write(writer, files)
        raise KeyboardInterrupt  # right after the epoch's write was handed to the writer

    monkeypatch.setattr(checkpoint.BackgroundWriter, "write", interrupted)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train.main(tiny_synthetic_args(out, anchors, epochs=2))
    assert events == ["written best.pt", "written last.pt", "written log.jsonl", "released"]
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == [
        1
    ]


def test_a_streaming_run_with_decoding_workers_resumes_bit_exact(tmp_path, anchors, monkeypatch):
    """The per-sample path with a worker process: the workers' seeds come from each epoch's own
    seed, so a run stopped after epoch 1 and resumed draws epoch 2 as an uninterrupted run does."""
    extra = ["--cache", "off", "--num-workers", "1"]
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    train.main(tiny_synthetic_args(full, anchors, epochs=2, num_train=32) + extra)
    stop_after_epoch_1(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train.main(tiny_synthetic_args(stopped, anchors, epochs=2, num_train=32) + extra)
    monkeypatch.undo()
    train.main(["--resume", str(stopped), "--quiet"])
    assert_same_run(full, stopped, epochs=2)


def test_compile_covers_evaluation_too(tmp_path, anchors, monkeypatch):
    """--compile compiles the training forward and evaluation's classify (evaluating through the
    compiled module's .classify ran the plain method)."""
    compiled = []

    def compile_(fn):
        name = getattr(fn, "__name__", type(fn).__name__)

        def run(*a, **k):
            compiled.append(name)
            return fn(*a, **k)

        if not isinstance(fn, torch.nn.Module):
            return run
        wrapper = torch.nn.Module()  # as torch.compile's OptimizedModule: a module around it
        wrapper._orig_mod, wrapper.forward = fn, run
        return wrapper

    monkeypatch.setattr(torch, "compile", compile_)
    train.main(tiny_synthetic_args(tmp_path / "run", anchors, epochs=1) + ["--compile"])
    assert "KE2NT" in compiled and "classify" in compiled
