"""data.py and lib/face_images.py: every shipped layout from fixture trees (good and bad),
transforms, the cache, BatchAugment."""

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision import transforms as T1  # the released code's (v1) transforms, as reference

import data
import model
import text_prompts
from lib import errors, face_images, streaming

IMAGENET = (model.IMAGENET_MEAN, model.IMAGENET_STD)  # BatchAugment's mean and std

HIDDEN = "hidden: name starts with '.'"
APPLE_DOUBLE = "\0\5\26\7Mac OS X"  # the start of macOS's ._x.jpg copies (resource forks)


def _img(path, size=(10, 10), colour=(200, 100, 50), mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, colour if mode == "RGB" else colour[0]).save(path)


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# ---------------------------------------------------------------- RAF-DB
def _rafdb(root, lines, images=True):
    _write(os.path.join(root, "EmoLabel", "list_patition_label.txt"), "\n".join(lines) + "\n")
    os.makedirs(os.path.join(root, "Image", "aligned"), exist_ok=True)
    if images:
        for line in lines:
            stem = line.split()[0][:-4]
            _img(os.path.join(root, "Image", "aligned", f"{stem}_aligned.jpg"), (100, 100))
            _img(os.path.join(root, "Image", "original", f"{stem}.jpg"), (30, 20))


def test_rafdb_layout_splits_and_labels(tmp_path):
    root = str(tmp_path)
    _rafdb(root, ["train_00001.jpg 5", "train_00002.jpg 1", "test_0001.jpg 7", "train_00003.jpg 7"])
    train = data.build_dataset("rafdb", root, "train")
    assert train.classes == [
        "surprise",
        "fear",
        "disgust",
        "happiness",
        "sadness",
        "anger",
        "neutral",
    ]
    assert train.targets == [4, 0, 6]
    image, label = train[0]
    assert (
        isinstance(image, Image.Image)
        and image.mode == "RGB"
        and image.size == (100, 100)
        and label == 4
    )
    assert train.samples[0][0].endswith(os.path.join("aligned", "train_00001_aligned.jpg"))
    test = data.build_dataset("rafdb", root, "test")
    assert test.targets == [6]
    original = data.build_dataset("rafdb", root, "train", aligned=False)
    assert original[1][0].size == (30, 20)


def test_rafdb_bad_inputs(tmp_path, capsys):
    root = str(tmp_path / "raf")
    with pytest.raises(FileNotFoundError, match="raf"):  # root missing
        data.build_dataset("rafdb", root, "train")
    os.makedirs(root)
    with pytest.raises(FileNotFoundError, match="list_patition_label.txt"):
        data.build_dataset("rafdb", root, "train")
    _rafdb(root, ["train_00001.jpg 5", "train_00002.jpg 8"])
    with pytest.raises(ValueError, match=r"list_patition_label.txt:2: label '8' out of range 1..7"):
        data.build_dataset("rafdb", root, "train")
    _rafdb(root, ["train_00001.jpg 5", "train_00002.jpg"])
    with pytest.raises(ValueError, match=r"list_patition_label.txt:2"):
        data.build_dataset("rafdb", root, "train")
    _rafdb(root, ["train_00001.jpg 5", "train_00002.jpg 3"])
    os.remove(os.path.join(root, "Image", "aligned", "train_00002_aligned.jpg"))
    with pytest.raises(FileNotFoundError, match="train_00002_aligned.jpg"):
        data.build_dataset("rafdb", root, "train")
    ds = data.build_dataset("rafdb", root, "train", skip_missing=True)
    assert ds.targets == [4]
    assert "dropped 1 items (listed image does not exist)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no images"):  # empty split
        data.build_dataset("rafdb", root, "test")
    with pytest.raises(ValueError, match="'train' or 'test'"):
        data.build_dataset("rafdb", root, "val")
    with open(os.path.join(root, "Image", "aligned", "train_00001_aligned.jpg"), "wb") as f:
        f.write(b"not a jpeg at all")
    with pytest.raises(RuntimeError, match="train_00001_aligned.jpg"):  # corrupt: named when read
        ds[0]


def test_rafdb_a_name_of_neither_split_is_a_counted_drop_of_both(tmp_path, capsys):
    root = str(tmp_path)
    _rafdb(root, ["train_00001.jpg 5", "Train_00003.jpg 4", "test_0001.jpg 7"])
    line = os.path.join(root, "EmoLabel", "list_patition_label.txt") + ":2: Train_00003.jpg"
    reason = "name is neither train_* nor test_*"
    for split, targets in (("train", [4]), ("test", [6])):
        ds = data.build_dataset("rafdb", root, split)
        assert ds.targets == targets and ds.dropped == {reason: 1}
        assert f"not read: {line} ({reason})" in capsys.readouterr().out


# ---------------------------------------------------------------- AffectNet
def _affectnet_csv(root, name, rows, lists_dir=False):
    header = (
        "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
        "expression,valence,arousal"
    )
    lines = [header] + [f'{p},0,0,10,10,"1;2;3",{e},0.1,-0.2' for p, e in rows]
    folder = os.path.join(root, "Manually_Annotated_file_lists") if lists_dir else root
    _write(os.path.join(folder, name), "\n".join(lines) + "\n")
    for p, _ in rows:
        _img(os.path.join(root, "Manually_Annotated_Images", p))


def test_affectnet_csv_release(tmp_path, capsys):
    root = str(tmp_path)
    rows = [(f"{k}/img{k}.jpg", k) for k in range(11)] + [("3/extra.png", 1)]
    _affectnet_csv(root, "training.csv", rows)
    _affectnet_csv(root, "validation.csv", [("9/v.jpg", 6)], lists_dir=True)
    ds7 = data.build_dataset("affectnet7", root, "train")
    out = capsys.readouterr().out
    assert ds7.classes == [
        "neutral",
        "happiness",
        "sadness",
        "surprise",
        "fear",
        "disgust",
        "anger",
    ]
    assert ds7.targets == [0, 1, 2, 3, 4, 5, 6, 1]
    for reason in ("label 7 contempt", "label 8 none", "label 9 uncertain", "label 10 non-face"):
        assert f"dropped 1 items ({reason})" in out
    ds8 = data.build_dataset("affectnet8", root, "train")
    assert ds8.targets == [0, 1, 2, 3, 4, 5, 6, 7, 1] and ds8.classes[7] == "contempt"
    assert data.build_dataset("affectnet8", root, "test").targets == [6]  # official validation set
    _img(os.path.join(root, "Manually_Annotated_Images", "0", "img0.jpg"), (40, 30))
    assert data.build_dataset("affectnet7", root, "train")[0][0].size == (40, 30)
    # csv face box (0, 0, 10, 10)
    cropped = data.build_dataset("affectnet7", root, "train", crop_face=True)
    assert cropped[0][0].size == (10, 10) and cropped.targets == ds7.targets


def test_affectnet_csv_bad_inputs(tmp_path, capsys):
    root = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="training.csv.*_exp.npy"):  # names both layouts
        data.build_dataset("affectnet7", root, "train")
    _write(os.path.join(root, "training.csv"), "path,expression\na.jpg,1\n")
    with pytest.raises(ValueError, match=r"training.csv:1: .*subDirectory_filePath"):
        data.build_dataset("affectnet7", root, "train")
    # a stray record that cannot be read is skipped, named and counted; a file of them is refused
    _affectnet_csv(root, "training.csv", [("1/a.jpg", 1), ("1/b.jpg", 11)])
    ds = data.build_dataset("affectnet7", root, "train")
    out = capsys.readouterr().out
    assert ds.targets == [1] and ds.dropped == {"malformed record": 1}
    assert "training.csv:3: label '11' out of range 0..10" in out
    _affectnet_csv(
        root, "training.csv", [("1/a.jpg", 1)] + [(f"1/{k}.jpg", "x") for k in range(11)]
    )
    with pytest.raises(
        ValueError, match=r"training.csv:3: label 'x' is not a number \(and 10 more"
    ):
        data.build_dataset("affectnet7", root, "train")


def test_affectnet_npy_release(tmp_path, capsys):
    root = str(tmp_path)
    labels = {"10": np.array("3"), "11": np.array(7), "12": np.array(["0"]), "13": np.array(9)}
    for key, value in labels.items():
        _img(os.path.join(root, "train_set", "images", f"{key}.jpg"))
        np.save(
            os.path.join(root, "train_set", "annotations", f"{key}_exp.npy")
            if os.makedirs(os.path.join(root, "train_set", "annotations"), exist_ok=True) is None
            else None,
            value,
        )
        np.save(os.path.join(root, "train_set", "annotations", f"{key}_val.npy"), np.array(0.5))
    ds = data.build_dataset("affectnet7", root, "train")
    assert ds.targets == [3, 0] and [os.path.basename(p) for p, _ in ds.samples] == [
        "10.jpg",
        "12.jpg",
    ]
    out = capsys.readouterr().out
    assert (
        "dropped 1 items (label 7 contempt)" in out and "dropped 1 items (label 9 uncertain)" in out
    )
    assert data.build_dataset("affectnet8", root, "train").targets == [3, 7, 0]
    with pytest.raises(FileNotFoundError, match="val_set"):
        data.build_dataset("affectnet8", root, "test")
    with pytest.raises(errors.BadInputError, match="--crop-face: .*train_set is AffectNet's npy"):
        data.build_dataset("affectnet7", root, "train", crop_face=True)  # it has no face boxes


def test_affectnet_an_empty_csv_names_its_first_line(tmp_path):
    (tmp_path / "training.csv").write_text("")
    with pytest.raises(errors.BadInputError, match=r"training.csv:1: expected a header"):
        data.build_dataset("affectnet7", str(tmp_path), "train")


def test_affectnet_npy_hidden_files_are_not_labels(tmp_path):
    root = str(tmp_path)
    _img(os.path.join(root, "train_set", "images", "1.jpg"))
    _write(os.path.join(root, "train_set", "annotations", "._1_exp.npy"), APPLE_DOUBLE)
    np.save(os.path.join(root, "train_set", "annotations", "1_exp.npy"), np.array("3"))
    ds = data.build_dataset("affectnet7", root, "train")
    assert ds.targets == [3] and ds.dropped == {HIDDEN: 1}


def test_affectnet_face_box_is_clipped_to_the_image_and_one_outside_it_refused(tmp_path):
    root = str(tmp_path)
    rows = ["1/a.png,-5,20,10,40,1", "1/b.png,40,0,8,8,2", "1/c.png,0,30,5,5,3"]
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,expression"
    _write(os.path.join(root, "training.csv"), "\n".join([header] + rows) + "\n")
    for name in "abc":  # 40x30, one colour
        _img(os.path.join(root, "Manually_Annotated_Images", "1", f"{name}.png"), (40, 30))
    ds = data.build_dataset("affectnet7", root, "train", crop_face=True)
    crop = ds[0][0]  # the box's part inside the image: x 0..5, y 20..30; no black border
    assert crop.size == (5, 10) and crop.getextrema() == ((200, 200), (100, 100), (50, 50))
    for k, box in ((1, "(40, 0, 8, 8)"), (2, "(0, 30, 5, 5)")):  # touching the edge, no pixel
        with pytest.raises(errors.BadInputError) as e:
            ds[k]
        assert str(e.value).startswith(f"face box (x, y, w, h) {box} of {ds.samples[k][0]} lies")
        assert "outside its 40x30 image" in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- FERPlus Rows of Microsoft's
# FER2013Test/label.csv with their labels worked out by hand from the reference rule (zero single
# votes; keep when one emotion column holds more than half of the rest).
FERPLUS_ROWS = [
    ("0,0,0,0,2,1,0,7,0,0", 7),  # 2 anger + 7 contempt of 9 -> contempt
    ("3,0,0,5,0,0,0,0,2,0", None),  # 5 of 10 is not more than half
    ("6,0,1,2,0,0,0,0,1,0", 0),  # singles removed: 6 of 8 neutral
    ("0,0,4,0,1,2,3,0,0,0", None),  # 4 of 9 surprise
    ("0,0,0,0,9,0,1,0,0,0", 4),  # anger
    ("0,10,0,0,0,0,0,0,0,0", 1),
    ("1,0,0,0,0,0,8,0,0,1", 6),  # fear; the NF single vote is noise
    ("3,0,4,1,1,0,0,0,1,0", 2),  # singles removed: 4 of 7 surprise
    ("0,1,0,4,0,0,0,0,5,0", 8),  # majority unknown (dropped)
    ("1,0,0,0,0,0,0,0,0,9", 9),  # majority not-a-face (dropped)
    ("1,1,1,1,1,1,1,1,1,1", None),  # nothing left after removing single votes
]


def test_ferplus_majority_rule():
    for votes, expected in FERPLUS_ROWS:
        assert data.ferplus_majority([int(v) for v in votes.split(",")]) == expected, votes


def test_ferplus_layout(tmp_path, capsys):
    root = str(tmp_path)
    lines = [
        f'fer{k:07d}.png,"(0, 0, 48, 48)",{votes}' for k, (votes, _) in enumerate(FERPLUS_ROWS)
    ]
    _write(os.path.join(root, "FER2013Valid", "label.csv"), "\n".join(lines) + "\n")
    for k in range(len(FERPLUS_ROWS)):
        _img(os.path.join(root, "FER2013Valid", f"fer{k:07d}.png"), (48, 48), mode="L")
    ds = data.build_dataset("ferplus", root, "valid")
    assert ds.classes == [
        "neutral",
        "happiness",
        "surprise",
        "sadness",
        "anger",
        "disgust",
        "fear",
        "contempt",
    ]
    assert ds.targets == [e for _, e in FERPLUS_ROWS if e is not None and e < 8]
    assert ds[0][0].mode == "RGB" and ds[0][0].size == (48, 48)
    out = capsys.readouterr().out
    assert (
        "dropped 3 items (no majority vote)" in out
        and "dropped 2 items (majority unknown or NF)" in out
    )
    with pytest.raises(FileNotFoundError, match=os.path.join("FER2013Train", "label.csv")):
        data.build_dataset("ferplus", root, "train")
    lines[3] = 'fer0000003.png,"(0, 0, 48, 48)",1,2,3'
    _write(os.path.join(root, "FER2013Valid", "label.csv"), "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"label.csv:4: expected 12 columns"):
        data.build_dataset("ferplus", root, "valid")


# ---------------------------------------------------------------- CK+
def _ckplus(root, n_subjects=12):
    for s in range(n_subjects):
        subject = f"S{s * 5 + 5:03d}"
        for q, code in enumerate([s % 7 + 1, None]):  # one labelled and one unlabelled sequence
            seq = f"{q + 1:03d}"
            for f in range(1, 6):
                _img(
                    os.path.join(
                        root, "cohn-kanade-images", subject, seq, f"{subject}_{seq}_{f:08d}.png"
                    ),
                    (16, 12),
                    colour=(f * 40, 0, 0),
                    mode="L" if s % 2 else "RGB",
                )
            emo = os.path.join(root, "Emotion", subject, seq)
            os.makedirs(emo, exist_ok=True)
            if code is not None:
                _write(
                    os.path.join(emo, f"{subject}_{seq}_00000005_emotion.txt"), f"   {code:.7e}\n"
                )


def test_ckplus_frames_labels_and_folds(tmp_path, capsys):
    root = str(tmp_path)
    _ckplus(root)
    everything = data.build_dataset("ckplus", root, "all")
    assert everything.classes == [
        "anger",
        "contempt",
        "disgust",
        "fear",
        "happiness",
        "sadness",
        "surprise",
    ]
    assert (
        len(everything) == 12 * 3
        and "12 sequences have no emotion label" in capsys.readouterr().out
    )
    first = [os.path.basename(p) for p, _ in everything.samples[:3]]
    assert first == [f"S005_001_{f:08d}.png" for f in (3, 4, 5)]
    assert everything.targets[:3] == [0, 0, 0]

    def subject(path):
        return os.path.basename(path).split("_")[0]

    seen = set()
    for fold in range(10):
        train = data.build_dataset("ckplus", root, "train", fold=fold)
        test = data.build_dataset("ckplus", root, "test", fold=fold)
        assert len(train) + len(test) == len(everything)
        test_subjects = {subject(p) for p, _ in test.samples}
        assert not test_subjects & {subject(p) for p, _ in train.samples}  # subject-independent
        seen |= test_subjects
    assert len(seen) == 12
    neutral = data.build_dataset("ckplus", root, "all", include_neutral=True)
    assert neutral.classes[7] == "neutral" and len(neutral) == 12 * 4
    assert neutral.targets[:4] == [0, 0, 0, 7] and neutral.samples[3][0].endswith("00000001.png")


def _ck_sequence(root, subject, frames, extra=()):
    """One CK+ sequence 001 of `frames` frames labelled 3 (disgust), and the `extra` files (name,
    text) in both its frame and its label folder."""
    seq = os.path.join(root, "cohn-kanade-images", subject, "001")
    for f in range(1, frames + 1):
        _img(os.path.join(seq, f"{subject}_001_{f:08d}.png"), (16, 12), mode="L")
    emo = os.path.join(root, "Emotion", subject, "001")
    _write(os.path.join(emo, f"{subject}_001_{frames:08d}_emotion.txt"), "3\n")
    for name, text in extra:
        _write(os.path.join(seq, name.format(subject)), text)
        _write(os.path.join(emo, name.format(subject)), text)


def test_ckplus_the_first_frame_is_neutral_never_an_emotion_frame(tmp_path, capsys):
    root = str(tmp_path)
    for subject, frames in (("S005", 2), ("S010", 1), ("S011", 5)):
        _ck_sequence(root, subject, frames)
    ds = data.build_dataset("ckplus", root, "all", include_neutral=True)
    names = [os.path.basename(p) for p, _ in ds.samples]
    emotion = [f"S011_001_{f:08d}.png" for f in (3, 4, 5)]
    assert names == ["S005_001_00000002.png", "S005_001_00000001.png", *emotion, names[-1]]
    assert names[-1] == "S011_001_00000001.png" and ds.targets == [2, 7, 2, 2, 2, 7]
    reason = "sequence with no frame after its neutral first"
    assert ds.dropped == {reason: 1}  # S010: one frame, its neutral onset
    folder = os.path.join(root, "cohn-kanade-images", "S010", "001")
    assert f"not read: {folder} ({reason})" in capsys.readouterr().out


def test_ckplus_hidden_files_are_neither_frames_nor_labels(tmp_path):
    root = str(tmp_path)
    extra = [("._{}_001_00000001.png", APPLE_DOUBLE), (".DS_Store", "Bud1"), ("Thumbs.db", "x")]
    _ck_sequence(root, "S005", 4, extra)
    ds = data.build_dataset("ckplus", root, "all", include_neutral=True)
    names = [os.path.basename(p) for p, _ in ds.samples]
    assert names == [f"S005_001_{f:08d}.png" for f in (2, 3, 4, 1)]
    assert ds.targets == [2, 2, 2, 7]
    assert ds.dropped == {HIDDEN: 4, "not image files": 1, "not an emotion label file": 1}


def test_ckplus_bad_inputs(tmp_path):
    root = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="cohn-kanade-images"):
        data.build_dataset("ckplus", root, "all")
    _ckplus(root, 2)
    _write(os.path.join(root, "Emotion", "S010", "001", "S010_001_00000005_emotion.txt"), "9.0\n")
    with pytest.raises(
        ValueError, match=r"S010_001_00000005_emotion.txt:1: label '9.0' out of range 1..7"
    ):
        data.build_dataset("ckplus", root, "all")
    with pytest.raises(ValueError, match="fold"):
        data.build_dataset("ckplus", root, "test", fold=10)
    with pytest.raises(TypeError, match=r"ckplus: unknown options \['folds'\]; accepted: \['fold'"):
        data.build_dataset("ckplus", root, "test", folds=3)


# ---------------------------------------------------------------- list and folder
def test_list_layout(tmp_path):
    root = str(tmp_path)
    _img(os.path.join(root, "a", "x 1.jpg"))
    _img(os.path.join(root, "b", "y.png"))
    _write(os.path.join(root, "train_label.txt"), "a/x 1.jpg 6\nb/y.png 0\n\n")
    ds = data.build_dataset("list", root, "train")
    assert ds.targets == [6, 0] and ds.classes[6] == "neutral"
    ds = data.build_dataset(
        "list",
        root,
        "x",
        list_file=os.path.join(root, "train_label.txt"),
        classes=["a", "b", "c", "d", "e", "f", "g"],
    )
    assert ds.classes[0] == "a"
    _write(os.path.join(root, "bad.txt"), "a/x 1.jpg 6\nb/y.png 7\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: label '7' out of range 0..6"):
        data.build_dataset("list", root, "train", list_file=os.path.join(root, "bad.txt"))
    with pytest.raises(FileNotFoundError, match="test_label.txt"):
        data.build_dataset("list", root, "test")


def test_folder_layout(tmp_path, capsys):
    root = str(tmp_path)
    _img(os.path.join(root, "train", "sadness", "1.png"))
    _img(os.path.join(root, "train", "happiness", "2.JPG"))
    _img(os.path.join(root, "train", "happiness", "3.jpg"))
    _write(os.path.join(root, "train", "happiness", "notes.txt"), "hi")
    ds = data.build_dataset("folder", root, "train")
    assert ds.classes == ["happiness", "sadness"] and ds.targets == [0, 0, 1]
    assert "dropped 1 items (not image files)" in capsys.readouterr().out
    ds = data.build_dataset("folder", root, "train", classes="rafdb")
    assert ds.classes == data.RAFDB_CLASSES and sorted(ds.targets) == [3, 3, 4]
    os.makedirs(os.path.join(root, "train", "smiling"))
    with pytest.raises(ValueError, match="smiling"):
        data.build_dataset("folder", root, "train", classes="rafdb")


def test_folder_hidden_entries_are_neither_classes_nor_images(tmp_path, capsys):
    root = str(tmp_path)
    _img(os.path.join(root, "train", "anger", "1.jpg"))
    _img(os.path.join(root, "train", "happiness", "2.jpg"))
    os.makedirs(os.path.join(root, "train", ".ipynb_checkpoints"))  # Jupyter makes one
    _write(os.path.join(root, "train", ".DS_Store"), "Bud1")
    _write(os.path.join(root, "train", "anger", "._1.jpg"), APPLE_DOUBLE)
    _write(os.path.join(root, "train", "labels.csv"), "1.jpg,anger\n")
    ds = data.build_dataset("folder", root, "train")
    assert ds.classes == ["anger", "happiness"] and ds.targets == [0, 1]
    assert ds.dropped == {HIDDEN: 3, "a file beside the class folders": 1}
    apple = os.path.join(root, "train", "anger", "._1.jpg")
    assert f"not read: {apple} ({HIDDEN})" in capsys.readouterr().out


def test_folder_test_split_read_with_the_train_split_classes(tmp_path):
    root = str(tmp_path)
    for split, names in (
        ("train", ["anger", "happiness", "sadness"]),
        ("test", ["anger", "sadness"]),
    ):
        for name in names:
            _img(os.path.join(root, split, name, f"{name}.jpg"))
    os.makedirs(os.path.join(root, "test", ".ipynb_checkpoints"))  # not a class
    train = data.build_dataset("folder", root, "train")
    test = data.build_dataset("folder", root, "test", classes=train.classes)
    assert test.classes == train.classes and test.targets == [0, 2]  # sadness is 2, as in train
    os.makedirs(os.path.join(root, "test", "surprise"))
    with pytest.raises(errors.BadInputError) as e:
        data.build_dataset("folder", root, "test", classes=train.classes)
    test_dir = os.path.join(root, "test")
    assert str(e.value).startswith(f"{test_dir}: sub-folders ['surprise'] are not in the classes")
    assert "\n" not in str(e.value)


def test_one_image_file_has_one_label(tmp_path):
    root = str(tmp_path)
    _img(os.path.join(root, "a", "x.jpg"))
    _img(os.path.join(root, "a", "y.jpg"))
    # the same files, written another way: read once each, counted
    _write(os.path.join(root, "train_label.txt"), "a/x.jpg 1\na/y.jpg 2\n./a/x.jpg 1\na//y.jpg 2\n")
    ds = data.build_dataset("list", root, "train")
    assert ds.targets == [1, 2] and ds.dropped == {"repeated entry, read once": 2}
    _write(os.path.join(root, "train_label.txt"), "a/x.jpg 1\na/y.jpg 2\n./a/x.jpg 3\n")
    with pytest.raises(errors.BadInputError, match=r"x\.jpg is listed as fear and as happiness"):
        data.build_dataset("list", root, "train")


def test_messages_say_what_a_file_that_is_no_image_is(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not a picture")
    for name, what in (("empty.jpg", "an empty file"), ("notes.png", "not an image file Pillow")):
        with pytest.raises(errors.UnreadableImageError) as e:
            face_images.load_rgb(str(tmp_path / name))
        assert str(e.value).startswith(f"cannot read image {tmp_path / name}: {what}")
    root = str(tmp_path / "list")
    _img(os.path.join(root, "a", "x.jpg"))
    os.makedirs(os.path.join(root, "a", "y.jpg"))  # a folder where an image is listed
    _write(os.path.join(root, "train_label.txt"), "a/x.jpg 1\na/y.jpg 2\na/z.jpg 3\n")
    with pytest.raises(errors.MissingFileError) as e:
        data.build_dataset("list", root, "train")
    message = str(e.value)
    assert "y.jpg (is a folder)" in message and "z.jpg (does not exist)" in message
    assert message.endswith(": pass --skip-missing to skip them") and "\n" not in message
    ds = data.build_dataset("list", root, "train", skip_missing=True)
    assert ds.targets == [1]
    assert ds.dropped == {"listed image is a folder": 1, "listed image does not exist": 1}


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="rafdb"):
        data.build_dataset("raf-db", "/nowhere", "train")


# ---------------------------------------------------------------- labels across datasets, sampler
def test_map_labels():
    map_labels = text_prompts.map_labels
    assert map_labels(data.FERPLUS_CLASSES, data.RAFDB_CLASSES) == [6, 3, 0, 4, 5, 2, 1, None]
    assert map_labels(data.RAFDB_CLASSES, data.CKPLUS_CLASSES) == [6, 3, 2, 4, 5, 0, None]
    assert map_labels(["Happy", "angry", "bored"], data.RAFDB_CLASSES) == [3, 5, None]


def test_class_balanced_sampler_equalises_classes():
    targets = [0] * 90 + [1] * 9 + [2] * 1
    draws = []
    for _ in range(2):
        sampler = streaming.class_balanced_sampler(
            targets, generator=torch.Generator().manual_seed(3)
        )
        draws.append(list(sampler))
    assert draws[0] == draws[1] and len(draws[0]) == 100
    many = torch.tensor(
        [targets[i] for _ in range(300) for i in streaming.class_balanced_sampler(targets)]
    )
    freq = torch.bincount(many, minlength=3).float() / len(many)
    assert torch.allclose(freq, torch.full((3,), 1 / 3), atol=0.02), freq


# ---------------------------------------------------------------- transforms
def _face(seed, size=(100, 100)):
    return Image.fromarray(
        np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    )


def _released(train, s=112):  # the released code's composition, torchvision v1
    if not train:
        return T1.Compose(
            [T1.Resize(s), T1.ToTensor(), T1.Normalize(model.IMAGENET_MEAN, model.IMAGENET_STD)]
        )
    return T1.Compose(
        [
            T1.Resize(s),
            T1.RandomApply([T1.RandomCrop(s, padding=4)], p=0.5),
            T1.RandomHorizontalFlip(),
            T1.ToTensor(),
            T1.Normalize(model.IMAGENET_MEAN, model.IMAGENET_STD),
            T1.RandomErasing(scale=(0.02, 0.25)),
        ]
    )


def test_build_transforms_matches_released_recipe():
    img = _face(0)

    def close(a, b):  # v1 divides by 255, v2 multiplies by 1/255
        return torch.allclose(a, b, atol=1e-6, rtol=0)

    assert close(streaming.build_transforms(False, 112, *IMAGENET)(img), _released(False)(img))
    ours, ref = streaming.build_transforms(True, 112, *IMAGENET), _released(True)
    for seed in range(20):  # same torch seed -> same crop, flip and erasing draws -> same tensor
        torch.manual_seed(seed)
        a = ours(img)
        torch.manual_seed(seed)
        assert close(a, ref(img)), seed
    # non-square: centre crop
    assert streaming.build_transforms(False, 64, *IMAGENET)(_face(1, (80, 60))).shape == (
        3,
        64,
        64,
    )


# ---------------------------------------------------------------- cache and BatchAugment
class _Pics(torch.utils.data.Dataset):
    def __init__(self, n, size=(100, 100), transform=None):
        self.n, self.size, self.transform, self.classes = n, size, transform, ["a", "b"]
        self.targets = [i % 2 for i in range(n)]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        img = _face(i, self.size)
        return (self.transform(img) if self.transform else img), self.targets[i]


def test_cache_equals_per_sample_test_path(capsys):
    ds = _Pics(7)
    images, labels = face_images.cache_images(ds, 112)
    assert "7 images at 112x112 uint8" in capsys.readouterr().out
    assert (
        images.dtype == torch.uint8
        and images.shape == (7, 3, 112, 112)
        and labels.tolist() == ds.targets
    )
    per_sample = torch.stack(
        [streaming.build_transforms(False, 112, *IMAGENET)(ds[i][0]) for i in range(7)]
    )
    torch.testing.assert_close(
        face_images.BatchAugment(112, *IMAGENET, train=False)(images), per_sample, atol=1e-6, rtol=0
    )
    again, _ = face_images.cache_images(ds, 112, num_workers=2, batch_size=3)
    assert torch.equal(images, again)


def test_cache_refuses_when_too_big_and_needs_pil_items(capsys):
    assert face_images.cache_images(_Pics(4), 32, max_bytes=4 * 3 * 32 * 32 - 1) is None
    assert "exceeds the limit" in capsys.readouterr().out
    assert face_images.available_memory() > 0
    with pytest.raises(TypeError, match="transform=None"):
        face_images.cache_images(
            _Pics(2, transform=streaming.build_transforms(False, 32, *IMAGENET)), 32
        )


def _uint8_batch(b, s=16, seed=0):
    return torch.randint(
        0, 256, (b, 3, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_batch_augment_eval_is_plain_normalisation():
    x = _uint8_batch(5, 20)
    mean, std = (
        torch.tensor(model.IMAGENET_MEAN).view(1, 3, 1, 1),
        torch.tensor(model.IMAGENET_STD).view(1, 3, 1, 1),
    )
    torch.testing.assert_close(
        face_images.BatchAugment(20, *IMAGENET, train=False)(x),
        (x.float() / 255 - mean) / std,
        atol=1e-6,
        rtol=0,
    )
    half = face_images.BatchAugment(20, mean=(0.5,) * 3, std=(0.5,) * 3, train=False)(x)
    torch.testing.assert_close(half, x.float() / 127.5 - 1, atol=1e-6, rtol=0)
    with pytest.raises(TypeError, match="uint8"):
        face_images.BatchAugment(20, *IMAGENET)(x.float())


def test_batch_augment_takes_mean_and_std_from_its_caller():
    """lib/ lies below the top-level files (tests/test_style.py): no default from model.py."""
    with pytest.raises(TypeError, match="mean"):
        face_images.BatchAugment(16)


class _Dtypes(TorchDispatchMode):
    """Records the dtype of every tensor the ops run inside it make."""

    def __init__(self):
        super().__init__()
        self.made = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = torch.utils._pytree.tree_leaves(out)
        self.made |= {t.dtype for t in leaves if isinstance(t, torch.Tensor)}
        return out


def test_batch_augment_makes_no_float64_tensor():  # MPS has none
    aug = face_images.BatchAugment(16, *IMAGENET)
    with _Dtypes() as seen:
        aug(_uint8_batch(8), generator=torch.Generator().manual_seed(0))
    assert torch.float32 in seen.made and torch.float64 not in seen.made, seen.made


def test_batch_augment_is_a_function_of_the_generator_state():
    aug, x = face_images.BatchAugment(16, *IMAGENET), _uint8_batch(32)
    a = aug(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, aug(x, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(a, aug(x, generator=torch.Generator().manual_seed(2)))
    g = torch.Generator().manual_seed(5)
    aug(x, generator=g)
    state = g.get_state()  # resuming from a saved state replays the next batch exactly
    nxt = aug(x, generator=g)
    assert torch.equal(nxt, aug(x, generator=torch.Generator().set_state(state)))


def test_batch_augment_crop_is_a_padded_crop():
    s, p, b = 12, 4, 400
    aug = face_images.BatchAugment(
        s, mean=(0, 0, 0), std=(1, 1, 1), crop_p=0.5, flip_p=0.0, erase_p=0.0
    )
    x = _uint8_batch(b, s)
    y = aug(x, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x.float() / 255, (p, p, p, p))
    offsets = []
    for k in range(b):
        hits = [
            (i, j)
            for i in range(2 * p + 1)
            for j in range(2 * p + 1)
            if torch.allclose(y[k], padded[k, :, i : i + s, j : j + s], atol=1e-6, rtol=0)
        ]
        assert len(hits) == 1, k
        offsets.append(hits[0])
    unchanged = sum(o == (p, p) for o in offsets) / b  # P = 0.5 + 0.5 / 81
    assert abs(unchanged - (0.5 + 0.5 / 81)) < 0.08
    rows = torch.tensor([o[0] for o in offsets if o != (p, p)])
    assert rows.min() == 0 and rows.max() == 2 * p  # the whole offset range is used


def test_batch_augment_flip():
    aug = face_images.BatchAugment(
        8, mean=(0, 0, 0), std=(1, 1, 1), crop_p=0.0, flip_p=0.5, erase_p=0.0
    )
    x = _uint8_batch(1000, 8)
    y, ref = aug(x, generator=torch.Generator().manual_seed(0)), x.float() / 255
    same = ((y - ref).abs() < 1e-6).flatten(1).all(1)
    flipped = ((y - ref.flip(-1)).abs() < 1e-6).flatten(1).all(1)
    assert bool((same | flipped).all())
    assert abs(flipped.float().mean().item() - 0.5) < 0.05


def test_batch_augment_erasing_matches_torchvision_distribution():
    s, b = 32, 3000
    aug = face_images.BatchAugment(s, *IMAGENET, crop_p=0.0, flip_p=0.0, erase_p=0.5)
    x = torch.full((b, 3, s, s), 200, dtype=torch.uint8)  # normalised values are all non-zero
    zero = (aug(x, generator=torch.Generator().manual_seed(0)) == 0).all(1)  # (B, S, S)
    erased = zero.flatten(1).any(1)
    ours = []
    for k in torch.nonzero(erased)[:, 0]:
        r, c = torch.nonzero(zero[k], as_tuple=True)
        h, w = r.max() - r.min() + 1, c.max() - c.min() + 1
        assert h * w == len(r)  # one filled rectangle
        ours.append(h * w / s**2)
    torch.manual_seed(0)
    ref_tf, img = T1.RandomErasing(p=0.5, scale=(0.02, 0.25)), torch.ones(3, s, s)
    ref = [(ref_tf(img) == 0).all(0).float().mean().item() for _ in range(b)]
    ref_on = [a for a in ref if a > 0]
    assert abs(erased.float().mean().item() - len(ref_on) / b) < 0.04
    ours = torch.tensor(ours, dtype=torch.float)
    assert ours.min() > 0.02 - 0.01 and ours.max() < 0.25 + 0.03
    assert abs(ours.mean().item() - float(np.mean(ref_on))) < 0.01


def test_training_and_inference_decode_an_image_the_same_way(tmp_path):
    """An EXIF-rotated JPEG and a transparent PNG, read by a `folder` dataset into the training
    cache and by the inference path (face_images.load_rgb + square_uint8), give the same pixels:
    upright, over white."""
    upright = np.zeros((48, 48, 3), dtype=np.uint8)
    # a red bar across the top left: its place shows the orientation
    upright[:8, :24] = (
        250,
        10,
        10,
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned; viewers rotate it 90 degrees clockwise
    os.makedirs(tmp_path / "train" / "anger")
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(
        tmp_path / "train" / "anger" / "turned.jpg", exif=exif.tobytes(), quality=100
    )
    rgba = np.zeros((48, 48, 4), dtype=np.uint8)
    # left half opaque blue, right half fully transparent (hidden black)
    rgba[:, :24] = (
        0,
        0,
        200,
        255,
    )
    os.makedirs(tmp_path / "train" / "happiness")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "train" / "happiness" / "clear.png")

    ds = data.build_dataset("folder", str(tmp_path), "train")
    cached, _ = face_images.cache_images(ds, 32)  # (2, 3, 32, 32) uint8, the training path
    for i, (path, _) in enumerate(ds.samples):
        inference = face_images.square_uint8(face_images.load_rgb(path), 32)
        assert torch.equal(cached[i], inference), path
    turned, clear = cached[0].float(), cached[1].float()
    assert turned[0, :3, :12].mean() > 200 and turned[0, -8:, :].mean() < 30  # red on top, upright
    # white, not black
    assert clear[:, :, :10].mean(dim=(1, 2)).tolist()[2] > 190 and clear[:, :, -10:].min() == 255


def test_label_files_with_a_bom_crlf_and_trailing_blanks_lose_no_line(tmp_path):
    root = str(tmp_path)
    _rafdb(root, ["train_00001.jpg 5", "train_00002.jpg 1", "train_00003.jpg 7"])
    label_file = os.path.join(root, "EmoLabel", "list_patition_label.txt")
    with open(label_file, "wb") as f:  # as saved by a Windows editor
        f.write(
            "\ufefftrain_00001.jpg 5  \r\ntrain_00002.jpg 1\r\n\r\ntrain_00003.jpg 7 \r\n".encode(
                "utf-8"
            )
        )
    assert data.build_dataset("rafdb", root, "train").targets == [4, 0, 6]
    with open(label_file, "ab") as f:
        f.write(b"train_00004.jpg \xff\r\n")
    with pytest.raises(ValueError, match=r"list_patition_label.txt:5: not UTF-8"):
        data.build_dataset("rafdb", root, "train")
