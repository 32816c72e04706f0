"""Fuzzing the dataset label readers: every label file data.build_dataset reads (RAF-DB's list, the
AffectNet csv and npy releases, FERPlus's label.csv, CK+'s Emotion files, the `list` layout), run on
valid files changed by hypothesis (fields replaced by tricky numbers, lines repeated, bytes inserted
or removed, files cut short), with one property:

    the file is read correctly, or data.build_dataset raises the project's user error
    (BadInputError, MissingFileError) naming the file, and for a text file its line;
    never another exception, never a line silently dropped or counted twice.

"Read correctly" is checked as counts that must add up (every line of the split is an image read or
a drop counted by reason), images never listed twice, labels in range, and the unchanged file read
exactly. The examples the fuzzer found are kept below as plain tests. The profile in conftest.py
derandomises hypothesis, so CI draws the same examples on every run.
"""

import os
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import data
from lib.errors import BadInputError, MissingFileError

# field values that have broken or fooled a reader of numbers
TRICKY = ["inf", "-inf", "nan", "1e3", "8", "0", "-1", "7.0", "7.5", "1_0", "٣", "５", "0x5", ""]
TRICKY += ["5 5", "1e400", "+3", "3.", "\t4", "None", "3,4", '"3"', "99999999999999999999"]
JUNK = [b"\x00", b"\xff", b"\r", b"\n", b"\t", b" ", b",", b'"', b"\xef\xbb\xbf", b"\xc3", b"\x85"]


def _img(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("L", (8, 8), 100).save(path)


def _write_bytes(path, blob):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(blob)


@st.composite
def mutated(draw, lines, sep):
    """A valid file's lines (bytes), changed by up to four drawn edits; `sep` splits a line into
    fields (b"," for csv, None for whitespace)."""
    lines = list(lines)
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["field", "repeat", "byte", "drop", "blank", "cut", "crlf"]))
        k = draw(st.integers(0, max(len(lines) - 1, 0)))
        if not lines:
            lines.append(b"")
        elif kind == "field":
            fields = (lines[k].split(sep) if sep else lines[k].rsplit(None, 1)) or [b""]
            i = draw(st.integers(0, len(fields) - 1))
            fields[i] = draw(st.sampled_from(TRICKY)).encode()
            lines[k] = (sep or b" ").join(fields)
        elif kind == "repeat":
            lines.insert(draw(st.integers(0, len(lines))), lines[k])
        elif kind == "byte":
            at = draw(st.integers(0, len(lines[k])))
            junk = draw(st.sampled_from(JUNK) | st.binary(min_size=1, max_size=3))
            cut = draw(st.integers(0, 1))
            lines[k] = lines[k][:at] + junk + lines[k][at + cut :]
        elif kind == "drop":
            del lines[k]
        elif kind == "blank":
            lines.insert(k, draw(st.sampled_from([b"", b"   ", b"\t"])))
        elif kind == "crlf":
            lines[k] += b"\r"
    blob = b"\n".join(lines) + b"\n"
    if draw(st.booleans()) and draw(st.integers(0, 9)) == 0:  # now and then, cut short
        blob = blob[: draw(st.integers(0, len(blob)))]
    return blob


def read_or_user_error(build, path, line_level=True):
    """build() -> the dataset, or None after a user error that names `path` (and a line of it when
    line_level). Any other exception fails the test with its traceback."""
    try:
        return build()
    except (BadInputError, MissingFileError) as e:
        message = str(e)
        if "no images in this split" in message:  # every line dropped, each counted: a split fact
            return None
        assert str(path) in message, message
        if line_level and str(path) + ":" in message:
            assert re.search(re.escape(str(path)) + r":\d+: ", message), message
        return None


def assert_conserved(ds, listed):
    """Every listed line of the split is an image read or a counted drop; none is read twice."""
    assert len(ds) + sum(ds.dropped.values()) == listed, (len(ds), ds.dropped, listed)
    paths = [s[0] for s in ds.samples]
    assert len(set(paths)) == len(paths)
    assert all(0 <= t < len(ds.classes) for t in ds.targets)


def _lines_of(blob, other_split=None):
    """The non-blank lines of a file as bytes (a reader decoding it has accepted every line), but
    those of RAF-DB's `other_split`: a name of neither split is a counted drop of both."""
    out = [ln for ln in blob.splitlines() if ln.strip()]
    if out and out[0].startswith(b"\xef\xbb\xbf"):
        out[0] = out[0][3:]
    if other_split is not None:  # the name: what comes before the last blanks
        name = [ln.decode("utf-8").rstrip().rsplit(None, 1)[0].strip() for ln in out]
        out = [ln for ln, n in zip(out, name, strict=True) if n.split("_")[0] != other_split]
    return out


# ---------------------------------------------------------------- RAF-DB
RAF_LINES = [f"train_{k:05d}.jpg {k % 7 + 1}".encode() for k in range(1, 7)]
RAF_LINES += [f"test_{k:04d}.jpg {k % 7 + 1}".encode() for k in range(1, 4)]


@pytest.fixture(scope="module")
def raf_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("raf"))
    for line in RAF_LINES:
        stem = line.split()[0][:-4].decode()
        _img(os.path.join(root, "Image", "aligned", f"{stem}_aligned.jpg"))
    return root


@settings(max_examples=600)
@given(blob=mutated(RAF_LINES, None))
def test_fuzz_rafdb_label_file(raf_root, blob):
    path = os.path.join(raf_root, "EmoLabel", "list_patition_label.txt")
    _write_bytes(path, blob)
    ds = read_or_user_error(
        lambda: data.build_dataset("rafdb", raf_root, "train", skip_missing=True), path
    )
    if ds is not None:
        assert_conserved(ds, len(_lines_of(blob, other_split="test")))
        if blob == b"\n".join(RAF_LINES) + b"\n":
            assert ds.targets == [k % 7 for k in range(1, 7)]


# ---------------------------------------------------------------- the list layout
LIST_LINES = [f"faces/{k}.png {k % 3}".encode() for k in range(6)]


@pytest.fixture(scope="module")
def list_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("list"))
    for k in range(6):
        _img(os.path.join(root, "faces", f"{k}.png"))
    return root


@settings(max_examples=400)
@given(blob=mutated(LIST_LINES, None))
def test_fuzz_list_file(list_root, blob):
    path = os.path.join(list_root, "train_label.txt")
    _write_bytes(path, blob)

    def build():
        return data.build_dataset(
            "list", list_root, "train", classes=["a", "b", "c"], skip_missing=True
        )

    ds = read_or_user_error(build, path)
    if ds is not None:
        assert_conserved(ds, len(_lines_of(blob)))


# ---------------------------------------------------------------- AffectNet, csv release
CSV_HEADER = (
    b"subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,"
    b"valence,arousal"
)
CSV_LINES = [CSV_HEADER] + [f'{k}/{k}.jpg,0,0,8,8,"1;2",{k},0.1,0.2'.encode() for k in range(11)]


@pytest.fixture(scope="module")
def affectnet_csv_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("affectnet_csv"))
    for k in range(11):
        _img(os.path.join(root, "Manually_Annotated_Images", str(k), f"{k}.jpg"))
    return root


@settings(max_examples=600)
@given(blob=mutated(CSV_LINES, b","), crop_face=st.booleans())
def test_fuzz_affectnet_csv(affectnet_csv_root, blob, crop_face):
    path = os.path.join(affectnet_csv_root, "training.csv")
    _write_bytes(path, blob)

    def build():
        return data.build_dataset(
            "affectnet8", affectnet_csv_root, "train", skip_missing=True, crop_face=crop_face
        )

    ds = read_or_user_error(build, path)
    if ds is not None:
        assert_conserved(ds, len(_lines_of(blob)) - 1)  # every record but the header
        if blob == b"\n".join(CSV_LINES) + b"\n":
            assert ds.targets == list(range(8))


# ---------------------------------------------------------------- AffectNet, npy release
NPY_VALUES = [
    np.array("3"),
    np.array(3),
    np.array([3]),
    np.array(3.0),
    np.array(b"3"),
    np.array(3.5),
    np.array([1, 2]),
    np.array(True),
    np.array(11),
    np.array(-1),
    np.array("x"),
    np.array(np.inf),
    np.zeros((0,)),
    np.array(1 + 2j),
    np.array(["3"], dtype=object),
]


def _npy_bytes(value):
    import io

    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=True)
    return buffer.getvalue()


@settings(max_examples=400)
@given(
    base=st.sampled_from(NPY_VALUES),
    cut=st.integers(0, 200),
    flips=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=3),
    random=st.none() | st.binary(max_size=64),
)
def test_fuzz_affectnet_npy(tmp_path_factory, base, cut, flips, random):
    root = str(tmp_path_factory.mktemp("affectnet_npy"))
    _img(os.path.join(root, "train_set", "images", "1.jpg"))
    blob = bytearray(_npy_bytes(base) if random is None else random)
    for at, byte in flips:
        if at < len(blob):
            blob[at] = byte
    if cut < len(blob) and cut % 3 == 0:  # a third of the examples cut short
        blob = blob[:cut]
    path = os.path.join(root, "train_set", "annotations", "1_exp.npy")
    _write_bytes(path, bytes(blob))
    ds = read_or_user_error(
        lambda: data.build_dataset("affectnet8", root, "train"), path, line_level=False
    )
    if ds is not None:
        assert_conserved(ds, 1)


# ---------------------------------------------------------------- FERPlus
FER_LINES = [f'fer{k:07d}.png,"(0, 0, 48, 48)",10,0,0,0,0,0,0,0,0,0'.encode() for k in range(4)]
FER_LINES += [f"fer{k:07d}.png,0,9,0,0,0,0,0,0,1,0".encode() for k in range(4, 6)]  # 11 columns


@pytest.fixture(scope="module")
def ferplus_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ferplus"))
    for k in range(6):
        _img(os.path.join(root, "FER2013Train", f"fer{k:07d}.png"))
    return root


@settings(max_examples=600)
@given(blob=mutated(FER_LINES[:4], b",") | mutated(FER_LINES[4:], b","))
def test_fuzz_ferplus_label_csv(ferplus_root, blob):
    path = os.path.join(ferplus_root, "FER2013Train", "label.csv")
    _write_bytes(path, blob)
    ds = read_or_user_error(
        lambda: data.build_dataset("ferplus", ferplus_root, "train", skip_missing=True), path
    )
    if ds is not None:
        assert_conserved(ds, len(_lines_of(blob)))
        assert ds.release in data.FERPLUS_SOURCES.values()


# ---------------------------------------------------------------- CK+
@pytest.fixture(scope="module")
def ckplus_root(tmp_path_factory):
    """One sequence of four frames, and a macOS copy (._name, not an image) beside the first frame
    and beside the label file: hidden entries, never a frame or a label."""
    root = str(tmp_path_factory.mktemp("ckplus"))
    for frame in range(1, 5):
        _img(os.path.join(root, "cohn-kanade-images", "S005", "001", f"S005_001_{frame:08d}.png"))
    for hidden in ("cohn-kanade-images/S005/001/._S005_001_00000001.png", EMOTION_COPY):
        _write_bytes(os.path.join(root, hidden), b"\0\5\26\7Mac OS X")
    return root


EMOTION_COPY = "Emotion/S005/001/._S005_001_00000004_emotion.txt"


@settings(max_examples=400)
@given(blob=mutated([b"   3.0000000e+00"], None))
def test_fuzz_ckplus_emotion_file(ckplus_root, blob):
    path = os.path.join(ckplus_root, "Emotion", "S005", "001", "S005_001_00000004_emotion.txt")
    _write_bytes(path, blob)
    ds = read_or_user_error(lambda: data.build_dataset("ckplus", ckplus_root, "all"), path)
    if ds is not None:  # one labelled sequence: its last three frames, the hidden copies counted
        assert len(ds) == 3 and len(set(ds.targets)) == 1 and 0 <= ds.targets[0] < 7
        assert ds.dropped == {"hidden: name starts with '.'": 2}


# ---------------------------------------------------------------- what the fuzzer found
def test_found_a_label_inf_is_one_line_not_an_overflow(tmp_path):
    os.makedirs(tmp_path / "Image" / "aligned")
    _write_bytes(str(tmp_path / "EmoLabel" / "list_patition_label.txt"), b"train_00001.jpg inf\n")
    with pytest.raises(BadInputError, match=r"list_patition_label.txt:1: label 'inf' is not a"):
        data.build_dataset("rafdb", str(tmp_path), "train", skip_missing=True)


@pytest.mark.parametrize("text", ["1_0", "٣", "５", "1e400", "nan"])
def test_found_numbers_python_takes_are_not_labels(tmp_path, text):
    # float() reads "1_0" as 10, and Arabic-Indic or full-width digits: not a label file's numbers
    os.makedirs(tmp_path / "Image" / "aligned")
    _write_bytes(
        str(tmp_path / "EmoLabel" / "list_patition_label.txt"), f"train_1.jpg {text}\n".encode()
    )
    with pytest.raises(BadInputError, match="list_patition_label.txt:1: label"):
        data.build_dataset("rafdb", str(tmp_path), "train")


def test_found_a_repeated_line_is_read_once_and_named_by_both_lines(tmp_path, capsys):
    _img(str(tmp_path / "Image" / "aligned" / "train_00001_aligned.jpg"))
    path = tmp_path / "EmoLabel" / "list_patition_label.txt"
    _write_bytes(str(path), b"train_00001.jpg 2\ntest_0001.jpg 1\ntrain_00001.jpg 2\n")
    ds = data.build_dataset("rafdb", str(tmp_path), "train")
    assert ds.targets == [1] and ds.dropped == {"repeated entry, read once": 1}
    assert f"{path}:3: repeats line 1 (train_00001.jpg)" in capsys.readouterr().out
    _write_bytes(str(path), b"train_00001.jpg 2\ntrain_00001.jpg 5\n")
    with pytest.raises(
        BadInputError, match=r":2: train_00001.jpg is labelled 5 here but 2 on line 1"
    ):
        data.build_dataset("rafdb", str(tmp_path), "train")


def test_found_an_open_quote_does_not_swallow_the_next_record(tmp_path, capsys):
    for k in range(2):
        _img(str(tmp_path / "Manually_Annotated_Images" / "1" / f"{k}.jpg"))
    lines = [CSV_HEADER, b'1/0.jpg,0,0,8,8,"1;2,1,0.1,0.2', b'1/1.jpg,0,0,8,8,"1;2",1,0.1,0.2']
    _write_bytes(str(tmp_path / "training.csv"), b"\n".join(lines) + b"\n")
    ds = data.build_dataset("affectnet7", str(tmp_path), "train")
    # line 2 is one malformed record (its open quote holds the rest of the line); line 3 is read
    assert ds.targets == [1] and ds.dropped == {"malformed record": 1}
    assert "training.csv:2: expected 9 fields, got 6" in capsys.readouterr().out


def test_found_a_ckplus_label_file_that_is_not_text(tmp_path):
    for frame in range(1, 4):
        _img(str(tmp_path / "cohn-kanade-images" / "S005" / "001" / f"S005_001_{frame:08d}.png"))
    path = tmp_path / "Emotion" / "S005" / "001" / "S005_001_00000003_emotion.txt"
    _write_bytes(str(path), b"\xff\xfe3\x00")  # UTF-16, say
    with pytest.raises(BadInputError, match=r"S005_001_00000003_emotion.txt:1: not UTF-8"):
        data.build_dataset("ckplus", str(tmp_path), "all")
    _write_bytes(str(path), b"3\n4\n")
    with pytest.raises(BadInputError, match=r"emotion.txt:2: expected one class code"):
        data.build_dataset("ckplus", str(tmp_path), "all")


def test_found_an_npy_label_with_a_damaged_header(tmp_path):
    _img(str(tmp_path / "train_set" / "images" / "1.jpg"))
    blob = bytearray(_npy_bytes(np.array("3")))
    blob[10] = 0  # inside the header's dict literal: numpy's parser raises a tokenize error
    path = tmp_path / "train_set" / "annotations" / "1_exp.npy"
    _write_bytes(str(path), bytes(blob))
    with pytest.raises(BadInputError, match=r"1_exp.npy: not a .npy label file"):
        data.build_dataset("affectnet8", str(tmp_path), "train")
