"""Fuzz tests of the readers of the files and strings a user gives, beyond the dataset label files
(those are in the dataset tests): checkpoints (train.py --resume, evaluate.py --checkpoint),
backbone weights (--backbone-weights), text-anchor files (--anchors), --classes, the numeric flags
and images (face_images.load_rgb).

Each reader is run on many inputs that start from a valid one: the valid file cut at a drawn
length, bytes flipped, overwritten or inserted, random bytes, and, at the boundaries that build a
model from a file (evaluate.py --checkpoint, --backbone-weights), valid torch files of the wrong
structure. The property: the input is read correctly (what comes back equals what was saved), or
the reader raises the project's user error naming the file (the command-line tools print it as one
line); never another exception type, never a silent misread. The number of examples is fixed and
the draws derandomised (tests/conftest.py), so CI runs the same inputs every time. The inputs the
fuzzer found are kept below as plain regression tests.
"""

import argparse
import copy
import gc
import io
import math
import os
from unittest import mock

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_train import make_anchors, tiny_synthetic_args

import data
import evaluate
import model
import text_prompts
import train
from lib import checkpoint, errors, face_images
from lib import synthetic_faces as lib_faces

USER_ERRORS = (errors.BadInputError, errors.MissingFileError)


def dataset_flags(**given):
    """The dataset flags as data.add_flags makes them, `given` set as the user typed them."""
    parser = argparse.ArgumentParser()
    data.add_flags(parser)
    return argparse.Namespace(**dict(vars(parser.parse_args([])), **given))


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


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """The valid files once: a tiny train.py run's last.pt and best.pt (a small backbone in place
    of the ResNet-18), an anchor file; as bytes and as loaded."""
    folder = tmp_path_factory.mktemp("valid")
    names = text_prompts.class_names("synthetic")
    anchors = make_anchors(folder / "anchors.pt", names)
    tiny = mock.patch.object(train, "build_backbone", lambda name, weights=None: TinyBackbone())
    with tiny:
        train.main(tiny_synthetic_args(folder / "run", anchors, epochs=1, num_train=32))
    files = dict(
        train=folder / "run" / "last.pt", model=folder / "run" / "best.pt", anchors=anchors
    )
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


@settings(max_examples=300)
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


# ---------------------------------------------------------------- evaluate.py --checkpoint


@pytest.fixture(scope="module")
def resnet_best():
    """best.pt's content for a random-init ResNet-18 KE2NT (3 classes, 512-d anchors)."""
    torch.manual_seed(0)
    anchors = torch.randn(3, 512)
    net = model.KE2NT(model.build_backbone("resnet18"), anchors, 3, 2)
    meta = dict(backbone="resnet18", image_size=32, mean=[0.5] * 3, std=[0.5] * 3)
    names = ["anger", "happiness", "neutral"]
    return Quiet(
        backbone=net.backbone, model=net.state_dict(), class_names=names, anchors=anchors,
        meta=meta, clip="random-init tiny", epoch=1, args={}, precision=None,
    )  # fmt: skip


@settings(max_examples=30)
@given(st.data())
def test_fuzz_evaluate_checkpoint(resnet_best, scratch, draws):
    """evaluate.load_model of a best.pt of the wrong structure: refused naming the file, or a model
    whose logits are finite, one per class. (The reading itself is fuzzed above; here
    load_checkpoint returns the edited dict, skipping a 45 MB write per example.)"""
    obj = restructured(draws.draw, {k: v for k, v in resnet_best.items() if k != "backbone"})
    path = os.path.join(scratch, "best.pt")
    built = resnet_best["backbone"]  # a copy of one random-init ResNet-18: its weights are replaced
    quick = {"resnet18": lambda: copy.deepcopy(built)}
    build = lambda name: quick.get(name, lambda: model.build_backbone(name))()  # noqa: E731

    def read(path, kind):  # load_checkpoint's promise: a dict with the kind's keys
        keys = checkpoint.REQUIRED_KEYS[kind]
        if not (isinstance(obj, dict) and all(k in obj for k in keys)):
            raise errors.BadInputError(f"{path} is not a train.py checkpoint")
        return obj

    read = mock.patch.object(evaluate, "load_checkpoint", read)
    with read, mock.patch.object(evaluate, "build_backbone", build):
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


@settings(max_examples=80)
@given(st.data())
def test_fuzz_backbone_weights(resnet_weights, scratch, draws):
    """train.py --backbone-weights of a file of the wrong structure: refused naming the file, or
    every backbone tensor the file names is the file's (its values in the module's dtype)."""
    net, state = resnet_weights["net"], resnet_weights["state"]
    start = draws.draw(st.sampled_from(["plain", "state_dict", "module."]))
    if start == "state_dict":
        state = {"state_dict": state, "epoch": 3}
    elif start == "module.":
        state = {"module." + k: v for k, v in state.items()}
    obj = restructured(draws.draw, state)
    path = os.path.join(scratch, "weights.pt")

    def load():
        with errors.user_errors(ValueError, prefix="--backbone-weights: "):  # as train.py does
            return model.load_backbone_weights(net, "resnet18", path)

    with mock.patch.object(model.torch, "load", lambda *a, **k: obj):
        got = user_error_or(load, path)
    if got is not None:  # the tensors the edits changed (the others are the originals) were read
        own, originals = net.state_dict(), {id(v) for v in resnet_weights["state"].values()}
        for key, value in unwrapped(obj).items():
            if key in own and id(value) not in originals:
                assert torch.equal(value.to(own[key].dtype), own[key]), key


# ---------------------------------------------------------------- --anchors


@settings(max_examples=200)
@given(st.data())
def test_fuzz_anchor_bytes(valid, scratch, draws):
    """A damaged anchor file is read exactly as saved (for its class words only), or refused
    naming the file."""
    content = damaged(draws.draw, valid["anchors"]["bytes"])
    path = write(scratch, "anchors.pt", content)
    words = text_prompts.class_names("synthetic")
    names = draws.draw(st.sampled_from([words, words[:-1]]))  # the file's words, or others

    def load():
        with errors.user_errors(ValueError, prefix="--anchors: "):  # as train.py does
            return text_prompts.load_anchors(path, names)

    got = user_error_or(load, path)
    if got is not None:
        saved = valid["anchors"]["loaded"]
        assert names == saved["class_names"] and torch.equal(got.anchors, saved["anchors"])
        assert got[1:] == (len(names), names.index("neutral"), saved["clip"])


# ---------------------------------------------------------------- images


def picture(kind):
    """A small valid JPEG or PNG (a gradient, so that damage shows in the pixels), as bytes."""
    image = Image.new("RGB", (24, 16))
    image.putdata([(8 * x, 12 * y, 100) for y in range(16) for x in range(24)])
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    return buffer.getvalue()


PICTURES = {"jpg": picture("JPEG"), "png": picture("PNG")}


@settings(max_examples=600)
@given(st.data())
def test_fuzz_images(scratch, draws):
    """face_images.load_rgb of a JPEG or PNG cut short or with bytes changed: a PIL RGB image, or
    a user error naming the file (also a RuntimeError, as before). A PNG, whose chunks carry
    CRCs, comes back with the original pixels or not at all."""
    ext = draws.draw(st.sampled_from(sorted(PICTURES)))
    content = damaged(draws.draw, PICTURES[ext])
    path = write(scratch, f"face.{ext}", content)

    def read():  # the error says what the file is, not Pillow's name for its in-memory copy
        try:
            return face_images.load_rgb(path)
        except errors.UnreadableImageError as e:
            assert "<_io." not in str(e), str(e)
            raise

    got = user_error_or(read, path)
    if got is not None:
        assert isinstance(got, Image.Image) and got.mode == "RGB" and min(got.size) >= 1
        if ext == "png":
            original = Image.open(io.BytesIO(PICTURES["png"])).convert("RGB")
            assert got.size == original.size and got.tobytes() == original.tobytes()


# ---------------------------------------------------------------- --classes


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """A list layout (two images, labels 0 and 1) and a folder layout (train/anger, train/neutral)
    whose --classes the fuzzer changes."""
    root = tmp_path_factory.mktemp("layouts")
    for rel in (
        "list/a.jpg",
        "list/b.jpg",
        "folder/train/anger/a.jpg",
        "folder/train/neutral/b.jpg",
    ):
        os.makedirs(os.path.dirname(root / rel), exist_ok=True)
        Image.new("RGB", (4, 4)).save(root / rel)
    (root / "list" / "train_label.txt").write_text("a.jpg 0\nb.jpg 1\n", encoding="utf-8")
    return Quiet(list=str(root / "list"), folder=str(root / "folder"))


def class_strings():
    """--classes values: dataset names, comma lists; spaces, empty, repeated or odd names."""
    word = st.one_of(
        st.sampled_from(["anger", "neutral", "happiness", "sadness", "", " ", "rafdb"]),
        st.text(alphabet="aen ,\t", max_size=6),
        st.text(max_size=4),
    )
    listed = st.lists(word, min_size=1, max_size=4).map(",".join)
    named = st.sampled_from(sorted(data.DATASET_CLASSES) + ["RAFDB", "raf db", ""])
    spaced = st.tuples(st.sampled_from(["", " "]), named, st.sampled_from(["", " ", ","]))
    return st.one_of(listed, named, spaced.map("".join))


@settings(max_examples=300)
@given(st.data())
def test_fuzz_classes_flag(layouts, draws):
    """--classes for the list and folder layouts: the dataset's classes are the names given (a
    dataset name's classes, or the comma list with the spaces around each name dropped), each
    once, every listed image kept; or a user error naming --classes (or the layout file that the
    classes do not fit)."""
    text = draws.draw(class_strings())
    layout = draws.draw(st.sampled_from(["list", "folder"]))
    args = dataset_flags(classes=text)

    def build():
        options = data.dataset_options(args)
        return data.build_dataset(layout, layouts[layout], "train", **options)

    try:
        dataset = build()
    except USER_ERRORS as e:
        assert "--classes" in str(e) or layouts[layout] in str(e), str(e)
        event("refused (user error)")
        return
    event("read")
    if text.strip() in data.DATASET_CLASSES and "," not in text:
        expected = list(data.DATASET_CLASSES[text.strip()])
    else:
        expected = [n.strip() for n in text.split(",")]
    assert dataset.classes == expected
    assert all(expected) and len(set(expected)) == len(expected), "empty or repeated class names"
    assert len(dataset) == 2 and all(0 <= y < len(expected) for y in dataset.targets)


# ---------------------------------------------------------------- the numeric flags


def flag_values():
    """What a user may type after a numeric flag: whole and decimal numbers of any size and sign,
    nan, inf, the spellings float() and int() accept, text."""
    return st.one_of(
        st.integers(-(2**70), 2**70).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["nan", "-inf", "1e400", "1e-400", "-0", "0.0", "1_000", " 7 ", "0x10"]),
        st.text(max_size=5),
    )


def usable(name, value):
    """What the code after the parser does with a flag's value, as it does it; raises if it
    cannot."""
    if name == "seed":  # train.py and the batch generators (seed + 1), synthetic faces
        torch.Generator().manual_seed(value + 1)
        torch.Generator().manual_seed(value)
        lib_faces.SyntheticFaces(1, text_prompts.class_names("synthetic"), seed=value)[0]
    elif isinstance(value, float):
        assert math.isfinite(value), (name, value)
    else:
        assert isinstance(value, int) and value >= 0, (name, value)


NUMERIC = {
    "train": [a for a in train.build_parser()._actions if a.type not in (None, str)],
    "evaluate": [a for a in evaluate.build_parser()._actions if a.type not in (None, str)],
}


@settings(max_examples=300)
@given(st.data())
def test_fuzz_flags(draws):
    """A value given to a numeric flag of train.py or evaluate.py: argparse's own refusal (exit 2),
    or a value that the code after it can use."""
    script = draws.draw(st.sampled_from(sorted(NUMERIC)))
    action = draws.draw(st.sampled_from(NUMERIC[script]))
    flag, text = action.option_strings[0], draws.draw(flag_values())
    parser = train.build_parser() if script == "train" else evaluate.build_parser()
    try:
        args = parser.parse_args([flag, text])
    except SystemExit as e:  # argparse: "argument --epochs: '0' must be a whole number >= 1"
        assert e.code == 2
        event("refused by argparse")
        return
    event("accepted")
    usable(action.dest, getattr(args, action.dest))


# ---------------------------------------------------------------- what the fuzzer found, kept


def changed(content, old, new):
    assert content.count(old) == 1
    return content.replace(old, new)


def test_found_a_changed_byte_in_a_tensor_or_a_name_is_refused(valid, tmp_path):
    """torch.load checks no CRC: one changed byte in a tensor's data, or in a class name inside
    the pickled structure, loaded as other numbers or another name without a word."""
    content = valid["model"]["bytes"]
    first = valid["model"]["loaded"]["model"]["backbone.conv.bias"].numpy().tobytes()[:8]
    for damaged_content in (
        changed(content, first, bytes([first[0] ^ 1]) + first[1:]),
        changed(content, b"happiness", b"happinesz"),
    ):
        path = write(tmp_path, "best.pt", damaged_content)
        with pytest.raises(errors.BadInputError, match="is damaged .* fails its CRC check") as e:
            checkpoint.load_checkpoint(path, "model")
        assert path in str(e.value)


def test_found_a_last_pt_whose_states_or_flags_do_not_fit_is_named(valid, tmp_path, capsys):
    """A run's states that do not fit raised load_state_dict's KeyError / RuntimeError; a flag list
    that is not one raised a TypeError in argparse."""
    for key, value in (("optimizer", {}), ("model", {"x": torch.ones(1)}), ("argv", "--lr 1")):
        path = os.path.join(tmp_path, f"{key}.pt")
        torch.save(dict(valid["train"]["loaded"], **{key: value}), path)
        tiny = mock.patch.object(train, "build_backbone", lambda name, weights=None: TinyBackbone())
        with tiny, pytest.raises(errors.BadInputError, match=f"--resume {path}: .*{key}") as e:
            train.main(["--resume", path, "--output", str(tmp_path / key)])
        assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "edit, words",
    [
        (dict(meta=dict(backbone="", image_size=32, mean=[0.5] * 3, std=[0.5] * 3)), "backbone ''"),
        (dict(model={"w": torch.ones(1)}), "Missing key"),
        (dict(class_names=["anger", "anger", "neutral"]), "class names"),
    ],
)
def test_found_evaluate_checkpoints_that_build_no_model(valid, tmp_path, edit, words):
    """evaluate.load_model raised ValueError (unknown backbone '') and KeyError (no model
    anchors); repeated class names were read silently."""
    path = os.path.join(tmp_path, "best.pt")
    torch.save(dict(valid["model"]["loaded"], **edit), path)
    with pytest.raises(errors.BadInputError, match=words) as e:
        evaluate.load_model(path, torch.device("cpu"))
    assert path in str(e.value)


def test_found_a_changed_byte_in_a_png_s_image_data_is_refused(tmp_path):
    """Pillow checks no CRC of a PNG's image data: a flipped bit in the IDAT chunk (byte 57 of the
    fuzzer's picture) decoded as other pixels."""
    content = bytearray(PICTURES["png"])
    content[content.index(b"IDAT") + 4 + 12] ^= 2
    path = write(tmp_path, "face.png", bytes(content))
    with pytest.raises(errors.UnreadableImageError, match="bad header checksum in b'IDAT'") as e:
        face_images.load_rgb(path)
    assert path in str(e.value)


class _Unreadable(torch.utils.data.Dataset):
    def __init__(self, path):
        self.path = path

    def __len__(self):
        return 1

    def __getitem__(self, index):
        return face_images.square_uint8(face_images.load_rgb(self.path), 8)


def test_found_an_unreadable_image_is_a_user_error_of_one_line(tmp_path, monkeypatch):
    """load_rgb raised a plain RuntimeError: a traceback from train.py's cache (fixed on main at
    the same time by the lock branch). A user error (still a RuntimeError), one line also when a
    DataLoader worker raised it."""
    path = write(tmp_path, "face.jpg", PICTURES["jpg"][:200])
    with pytest.raises(errors.UnreadableImageError, match="cannot read image .*face.jpg") as e:
        face_images.load_rgb(path)
    assert isinstance(e.value, RuntimeError) and isinstance(e.value, errors.BadInputError)
    loader = torch.utils.data.DataLoader(_Unreadable(path), num_workers=1)
    with pytest.raises(errors.UnreadableImageError) as e:
        next(iter(loader))
    assert str(e.value).startswith(f"cannot read image {path}: ") and "\n" not in str(e.value)
    # the iterator, held by the traceback, is collected here in 0.1 s (see test_unreadable_images)
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.1)
    del e
    gc.collect()


@pytest.mark.parametrize(
    "text, words",
    [
        ("anger,anger", r"\['anger'\] named more than once"),
        ("", "--classes '': neither a dataset name"),
        ("anger,,neutral", "an empty class name"),
    ],
)
def test_found_classes_flags_refused(text, words):
    """--classes 'anger,anger' gave two classes of one name; '' was ignored (the default classes
    used)."""
    with pytest.raises(errors.BadInputError, match=words):
        data.dataset_options(dataset_flags(classes=text))


def test_found_classes_flags_with_spaces(layouts):
    """'affectnet7 ' was refused without naming --classes; ' anger , neutral' made the class
    ' anger '."""
    assert data.dataset_options(dataset_flags(classes="affectnet7 ")) == dict(classes="affectnet7")
    options = data.dataset_options(dataset_flags(classes=" anger , neutral"))
    assert data.build_dataset("folder", layouts["folder"], "train", **options).classes == [
        "anger",
        "neutral",
    ]


@pytest.mark.parametrize("value", ["-1", str(2**63)])
def test_found_seeds_that_torch_or_the_synthetic_faces_refuse(value, capsys):
    """--seed -1 passed the checks and failed later (ValueError of the synthetic faces, torch's
    overflow for seed + 1 beyond 64 bits)."""
    with pytest.raises(SystemExit):
        train.get_args(["--seed", value])
    assert "argument --seed" in capsys.readouterr().err
    assert train.get_args(["--seed", str(2**63 - 1)]).seed == 2**63 - 1
