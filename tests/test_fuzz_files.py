"""Fuzz tests of the readers of the files and strings a user gives, beyond the dataset label files
(those are in the dataset tests): checkpoints (train.py --resume, evaluate.py --checkpoint),
backbone weights (--backbone-weights), text-anchor files (--anchors), --classes, the flags that
errors.check_flags checks, and images (data.load_rgb).

Each reader is run on many inputs that start from a valid one: the valid file cut at a drawn
length, bytes flipped, overwritten or inserted, random bytes, and valid torch files of the wrong
structure (keys dropped, values of the wrong type, shape or dtype, nan and inf, lists, tensors,
nested junk). The property: the input is read correctly (what comes back equals what was saved),
or the reader raises the project's user error (errors.BadInputError or errors.MissingFileError,
which the command-line tools print as one line) naming the file; never another exception type,
never a silent misread. The number of examples is fixed and the draws derandomised
(tests/conftest.py), so CI runs the same inputs every time. The inputs the fuzzer found are kept
below as plain regression tests.
"""

import copy
import io
import math
import os
import random
from unittest import mock

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from PIL import Image

import data
import evaluate
import model
import text_prompts
import train
from lib import checkpoint, errors
from tools import run_records

USER_ERRORS = (errors.BadInputError, errors.MissingFileError)


def user_error_or(read, path):
    """read(); a user error must name path (its text); any other exception fails the test.
    Returns what read returned, or None after a user error."""
    try:
        got = read()
    except USER_ERRORS as e:
        assert str(path) in str(e), f"the error does not name {path}: {e}"
        assert "Traceback" not in str(e)
        event("refused (user error)")
        return None
    event("read")
    return got


def same(a, b):
    """Deep equality of loaded checkpoint content (tensors by value, dtype and shape)."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return (
            torch.is_tensor(a)
            and torch.is_tensor(b)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and a == b


class Quiet(dict):
    """A fixture's dict that hypothesis prints in a few words, not as megabytes of bytes."""

    def __repr__(self):
        return f"<{', '.join(map(str, self))}>"


# ---------------------------------------------------------------- strategies


def damaged(draw, valid):
    """valid bytes cut short, with bytes flipped, overwritten or inserted, or random bytes."""
    how = draw(st.sampled_from(["cut", "flip", "overwrite", "insert", "random", "cut+flip"]))
    b = bytearray(valid)
    if how == "random":
        return draw(st.binary(min_size=0, max_size=2 * len(valid)))
    if how.startswith("cut"):
        b = b[: draw(st.integers(0, len(b) - 1))]
    if how.endswith("flip") and b:
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(b) - 1))
            b[i] ^= 1 << draw(st.integers(0, 7))
    if how == "overwrite":
        i = draw(st.integers(0, len(b) - 1))
        b[i : i + 8] = draw(st.binary(min_size=1, max_size=8))
    if how == "insert":
        i = draw(st.integers(0, len(b)))
        b[i:i] = draw(st.binary(min_size=1, max_size=16))
    return bytes(b)


def tensors():
    """Small tensors of any shape and several dtypes, some with nan or inf."""
    shape = st.lists(st.integers(0, 3), min_size=0, max_size=3)
    dtype = st.sampled_from([torch.float32, torch.float16, torch.float64, torch.int64, torch.bool])
    fill = st.sampled_from([0.0, 1.0, -2.5, math.nan, math.inf])
    return st.builds(lambda s, d, v: torch.full(s, v).to(d), shape, dtype, fill)


def junk():
    """Values a torch file of the wrong structure may hold (all readable with weights_only)."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**40), 2**40),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
        tensors(),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.tuples(inner, inner),
            st.dictionaries(st.text(max_size=6), inner, max_size=3),
        ),
        max_leaves=6,
    )


# ---------------------------------------------------------------- the valid inputs


class TinyBackbone(torch.nn.Module):
    out_dim = 8

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


def tiny_run(folder):
    """A last.pt and best.pt written by run_records.save_checkpoints from a tiny KE2NT, as train.py
    writes them (SGD, the lambda schedule, a disabled scaler, the rng state, args)."""
    torch.manual_seed(0)
    names = ["anger", "happiness", "neutral"]
    anchors = torch.randn(3, 8)
    net = model.KE2NT(TinyBackbone(), anchors, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.rand(2, 3, 8, 8))[2].sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    args = train.get_args(["--dataset", "synthetic", "--output", str(folder), "--epochs", "2"])
    run = run_records.new_run(args, anchors, names, "random-init tiny (seed 0)", {"amp": "off"})
    test = evaluate.class_metrics(torch.tensor([[1, 0, 0], [1, 0, 0], [0, 0, 0]]), names)
    run_records.record_epoch(
        run, 1, dict(ls=1, lt=1, lc=1, train_accuracy=1, images=2, seconds=1), 0.1, test, None,
        50.0, 1.0,
    )  # fmt: skip
    generators = {"order": torch.Generator().manual_seed(1)}
    run_records.save_checkpoints(run, net, optimizer, scheduler, scaler, generators, args, test)
    return os.path.join(folder, "last.pt"), os.path.join(folder, "best.pt")


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """The valid files once: a tiny run's last.pt and best.pt, an anchor file, as bytes and as
    loaded."""
    folder = tmp_path_factory.mktemp("valid")
    last, best = tiny_run(folder)
    anchors = os.path.join(folder, "anchors.pt")
    text_prompts.save_anchors(
        anchors, torch.randn(3, 8), ["anger", "happiness", "neutral"], None, "random-init tiny"
    )
    files = dict(train=last, model=best, anchors=anchors)
    return Quiet(
        (kind, dict(bytes=open(p, "rb").read(), loaded=torch.load(p, weights_only=True)))
        for kind, p in files.items()
    )


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def write(folder, name, content):
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(content)
    return path


# ---------------------------------------------------------------- checkpoints: bytes


@settings(max_examples=150)
@given(st.data())
def test_fuzz_checkpoint_bytes(valid, scratch, draws):
    """A damaged last.pt or best.pt is read exactly as saved, or refused naming the file."""
    kind = draws.draw(st.sampled_from(["train", "model"]))
    content = damaged(draws.draw, valid[kind]["bytes"])
    path = write(scratch, "last.pt", content)
    got = user_error_or(lambda: checkpoint.load_checkpoint(path, kind), path)
    assert got is None or same(got, valid[kind]["loaded"]), "a damaged file was misread silently"


def shared_copy(obj):
    """A copy of the dicts and lists of obj that shares its tensors (edits replace, never write)."""
    if isinstance(obj, dict):
        return {k: shared_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [shared_copy(v) for v in obj]
    return obj


def tweaked(draw, value):
    """value changed the way a damaged or foreign file may differ: a tensor with nan, inf or a zero
    row, in another shape or dtype; a list with a duplicate, an empty or a junk item; an odd
    string or number; or junk."""
    if torch.is_tensor(value) and value.numel():
        how = draw(
            st.sampled_from(["nan", "inf", "zero", "flat", "unsqueeze", "int", "half", "empty"])
        )
        t = value.detach().clone()
        if how == "zero" and t.is_floating_point():
            t.view(1 if t.dim() == 0 else t.shape[0], -1)[0] = 0.0  # the first row
            return t
        if how in ("nan", "inf") and t.is_floating_point():
            t.view(-1)[draw(st.integers(0, t.numel() - 1))] = math.nan if how == "nan" else math.inf
            return t
        return {
            "flat": t.reshape(-1), "unsqueeze": t.unsqueeze(0), "int": t.long(),
            "half": t.half(), "empty": t.reshape(-1)[:0],
        }.get(how, t)  # fmt: skip
    if isinstance(value, list) and value:
        how = draw(st.sampled_from(["duplicate", "empty item", "junk item", "no items"]))
        if how == "no items":
            return []
        i = draw(st.integers(0, len(value) - 1))
        item = {"duplicate": value[0], "empty item": ""}.get(how) if how != "junk item" else None
        return value[:i] + [draw(junk()) if how == "junk item" else item] + value[i + 1 :]
    if isinstance(value, str):
        return draw(st.sampled_from(["", " ", value + "\n" + value, value * 50]))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return draw(st.sampled_from([-1, 2**70, True, 0.5, math.nan, math.inf]))
    return draw(junk())


def restructured(draw, valid):
    """The dict `valid` with one to three edits, each at the top level or one level down: a key
    dropped, a value tweaked or replaced by junk, a key added; one time in ten a whole-file
    replacement by junk."""
    if draw(st.integers(0, 9)) == 0:
        return draw(junk())
    obj = shared_copy(valid)
    for _ in range(draw(st.integers(1, 3))):
        where = obj
        keys = sorted(where, key=str)
        if keys and draw(st.booleans()):
            inner = where[draw(st.sampled_from(keys))]
            if isinstance(inner, dict) and inner:
                where, keys = inner, sorted(inner, key=str)
        edit = draw(st.sampled_from(["drop", "tweak", "tweak", "replace", "add"]))
        key = draw(st.sampled_from(keys)) if keys else None
        if key is None or edit == "add":
            where[draw(st.one_of(st.text(max_size=6), st.integers(0, 3)))] = draw(junk())
        elif edit == "drop":
            del where[key]
        elif edit == "tweak":
            where[key] = tweaked(draw, where[key])
        else:
            where[key] = draw(junk())
    return obj


def saved_file(folder, name, obj):
    path = os.path.join(folder, name)
    torch.save(obj, path)
    return path


# ---------------------------------------------------------------- checkpoints: structure


@settings(max_examples=200)
@given(st.data())
def test_fuzz_checkpoint_structure(valid, scratch, draws):
    """A torch file of the wrong structure given for any kind is refused naming the file, or it
    passes the checks of that kind with the types the readers rely on."""
    kind = draws.draw(st.sampled_from(["train", "model", "anchors", "weights"]))
    start = draws.draw(st.sampled_from(["train", "model", "anchors"]))
    obj = restructured(draws.draw, valid[start]["loaded"])
    path = saved_file(scratch, "file.pt", obj)
    got = user_error_or(lambda: checkpoint.load_checkpoint(path, kind), path)
    if got is None or kind == "weights":
        return
    names, anchors = got["class_names"], got["anchors"]
    assert isinstance(names, list) and all(isinstance(n, str) and n for n in names)
    assert len(set(names)) == len(names), "duplicate class names read silently"
    assert anchors.dim() == 2 and anchors.shape[0] >= len(names) and anchors.is_floating_point()
    assert bool(torch.isfinite(anchors).all()), "non-finite anchors read silently"
    if kind == "anchors":
        got = text_prompts.load_anchors(path)
        assert all(isinstance(t, str) for t in got["templates"]) and isinstance(got["clip"], str)


@settings(max_examples=150)
@given(st.data())
def test_fuzz_resume(valid, scratch, draws):
    """train.py --resume of a last.pt of the wrong structure: refused naming the file, or the run's
    flags, model, optimizer, scheduler, scaler and random states are restored from it."""
    obj = restructured(draws.draw, valid["train"]["loaded"])
    path = saved_file(scratch, "last.pt", obj)

    def resume():
        args = train.get_args(["--resume", path])
        resumed = checkpoint.load_checkpoint(path, "train")
        torch.manual_seed(0)
        net = model.KE2NT(TinyBackbone(), torch.randn(3, 8), 2)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        run = run_records.new_run(args, resumed["anchors"], resumed["class_names"], "x", None)
        generators = {"order": torch.Generator()}
        parts = (net, optimizer, scheduler, scaler)
        run_records.resume_run(resumed, parts, generators, run, args, lambda *a: None)
        # what a resumed run reads of the record: after its next epoch, and at the end
        test = evaluate.class_metrics(
            torch.eye(len(run["class_names"]), dtype=torch.long), run["class_names"]
        )
        avg = dict(ls=1, lt=1, lc=1, train_accuracy=1, images=2, seconds=1)
        run_records.record_epoch(run, run["epoch"] + 1, avg, 0.1, test, None, 50.0, 1.0)
        run_records.write_metrics(args, path, {}, {})
        return args, run

    states = torch.get_rng_state(), random.getstate()
    try:
        got = user_error_or(resume, path)
    finally:
        torch.set_rng_state(states[0])
        random.setstate(states[1])
    if got is not None:
        args, run = got
        assert isinstance(args.epochs, int) and isinstance(run["epoch"], int)


# ---------------------------------------------------------------- evaluate.py --checkpoint


@pytest.fixture(scope="module")
def resnet_best():
    """best.pt's content for a random-init ResNet-18 KE2NT (3 classes, 512-d anchors)."""
    torch.manual_seed(0)
    anchors = torch.randn(3, 512)
    net = model.KE2NT(model.build_backbone("resnet18"), anchors, 2)
    meta = dict(backbone="resnet18", image_size=32, mean=[0.5] * 3, std=[0.5] * 3, dataset="x")
    names = ["anger", "happiness", "neutral"]
    return Quiet(
        backbone=net.backbone, model=net.state_dict(), class_names=names, anchors=anchors,
        meta=meta, clip="random-init tiny", epoch=1, args={}, precision=None,
    )  # fmt: skip


def read_as(obj):
    """checkpoint.read_torch_file replaced by one returning obj: the structure tests of the large
    (ResNet-18) files skip the 45 MB write; the bytes of a torch file are fuzzed above."""
    return mock.patch.object(checkpoint, "read_torch_file", lambda path, what="": obj)


@settings(max_examples=40)
@given(st.data())
def test_fuzz_evaluate_checkpoint(resnet_best, scratch, draws):
    """evaluate.load_model of a best.pt of the wrong structure: refused naming the file, or a model
    whose logits are finite, one per class."""
    obj = restructured(draws.draw, {k: v for k, v in resnet_best.items() if k != "backbone"})
    path = write(scratch, "best.pt", b"")
    built = resnet_best["backbone"]  # a copy of one random-init ResNet-18: its weights are replaced
    quick = {"resnet18": lambda: copy.deepcopy(built)}
    build = lambda name: quick.get(name, lambda: model.build_backbone(name))()  # noqa: E731
    with read_as(obj), mock.patch.object(evaluate, "build_backbone", build):
        got = user_error_or(lambda: evaluate.load_model(path, torch.device("cpu")), path)
    if got is not None:
        net, ckpt = got
        with torch.no_grad():
            logits = net.classify(torch.rand(1, 3, 32, 32))
        assert logits.shape == (1, len(ckpt["class_names"]))
        assert bool(torch.isfinite(logits).all()), "a checkpoint gave non-finite logits"


# ---------------------------------------------------------------- --backbone-weights


@pytest.fixture(scope="module")
def resnet_weights():
    """A ResNet-18 backbone, and a weights file's content for it: torchvision names with the fc
    head a real file carries."""
    torch.manual_seed(1)
    net = model.build_backbone("resnet18")
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state.update({"fc.weight": torch.randn(7, 512), "fc.bias": torch.zeros(7)})
    return Quiet(net=net, state=state)


def unwrapped(obj):
    """The flat state of a weights file as model.load_backbone_weights reads it."""
    for container in ("state_dict_backbone", "state_dict"):
        if isinstance(obj.get(container), dict):
            obj = obj[container]
            break
    return {k.removeprefix("module."): v for k, v in obj.items()}


@settings(max_examples=50)
@given(st.data())
def test_fuzz_backbone_weights(resnet_weights, scratch, draws):
    """train.py --backbone-weights of a file of the wrong structure: refused naming the file, or
    every backbone tensor is the file's (same values, a floating tensor for a floating one),
    finite."""
    net, state = resnet_weights["net"], resnet_weights["state"]
    start = draws.draw(st.sampled_from(["plain", "state_dict", "module."]))
    if start == "state_dict":
        state = {"state_dict": state, "epoch": 3}
    elif start == "module.":
        state = {"module." + k: v for k, v in state.items()}
    obj = restructured(draws.draw, state)
    path = write(scratch, "weights.pt", b"")

    def load():
        with errors.user_errors(ValueError, prefix="--backbone-weights: "):  # as train.py does
            return model.load_backbone_weights(net, "resnet18", path)

    with read_as(obj):
        got = user_error_or(load, path)
    if got is not None:  # the tensors the edits changed (the others are the originals) were read
        own, originals = net.state_dict(), {id(v) for v in resnet_weights["state"].values()}
        for key, value in unwrapped(obj).items():
            if key in own and id(value) not in originals:
                assert value.is_floating_point() == own[key].is_floating_point(), key
                assert torch.equal(value.to(own[key].dtype), own[key]), key
                assert bool(torch.isfinite(value.float()).all()), key


# ---------------------------------------------------------------- --anchors


@settings(max_examples=150)
@given(st.data())
def test_fuzz_anchor_bytes(valid, scratch, draws):
    """A damaged anchor file is read exactly as saved, or refused naming the file."""
    content = damaged(draws.draw, valid["anchors"]["bytes"])
    path = write(scratch, "anchors.pt", content)
    names = draws.draw(st.sampled_from([None, ["anger", "happiness", "neutral"]]))
    got = user_error_or(lambda: text_prompts.load_anchors(path, names), path)
    if got is not None:
        saved = valid["anchors"]["loaded"]
        assert torch.equal(got["anchors"], saved["anchors"])
        assert (got["class_names"], got["templates"]) == (saved["class_names"], saved["templates"])
        assert got["clip"] == saved["clip"]


# ---------------------------------------------------------------- images


def picture(kind):
    """A small valid JPEG or PNG (a gradient, so that damage shows in the pixels), as bytes."""
    image = Image.new("RGB", (24, 16))
    image.putdata([(8 * x, 12 * y, 100) for y in range(16) for x in range(24)])
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    return buffer.getvalue()


PICTURES = {"jpg": picture("JPEG"), "png": picture("PNG")}


@settings(max_examples=200)
@given(st.data())
def test_fuzz_images(scratch, draws):
    """data.load_rgb of a JPEG or PNG cut short or with bytes changed: a PIL RGB image, or a user
    error naming the file (also a RuntimeError, as before). A PNG, whose chunks carry CRCs, comes
    back with the original pixels or not at all."""
    ext = draws.draw(st.sampled_from(sorted(PICTURES)))
    content = damaged(draws.draw, PICTURES[ext])
    path = write(scratch, f"face.{ext}", content)
    got = user_error_or(lambda: data.load_rgb(path), path)
    if got is not None:
        assert isinstance(got, Image.Image) and got.mode == "RGB" and min(got.size) >= 1
        if ext == "png":
            original = Image.open(io.BytesIO(PICTURES["png"])).convert("RGB")
            assert got.size == original.size and got.tobytes() == original.tobytes()
