"""The datasets as they really ship: fixture trees in the layouts of the public releases and of the
loaders the field uses, each of which an earlier reader misread or refused.

Sources of each layout: hangyu94/KE2NT (swint_raf_main.py: data/raf_db/Image with train_label.txt
and test_label.txt beside it), zczcwh/POSTER (AffectNet npy release with valid_set/),
kiva12138/AffectNetBaseline (Manually_Annotated/Manually_Annotated_Images), microsoft/FERPlus
(master label.csv with a box column; generate_training_data.py writing 11 columns from
fer2013new.csv; src/train.py selecting on FER2013Valid), the CK+ distribution
(Emotion/<subject>/<sequence>/).
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

import data
import train
from tests.test_train import make_anchors
from tools import dataset_check


def _img(path, size=(48, 48), mode="L", value=128):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, value).save(path)


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# ---------------------------------------------------------------- 1. the released code's lists
def _released_rafdb_layout(base):
    """data/raf_db/Image/<name> with train_label.txt and test_label.txt beside Image/, 0-based."""
    image_root = os.path.join(base, "raf_db", "Image")
    lists = {"train": ["train_00001.jpg 0", "train_00002.jpg 3"], "test": ["test_0001.jpg 6"]}
    for split, lines in lists.items():
        _write(os.path.join(base, "raf_db", f"{split}_label.txt"), "\n".join(lines) + "\n")
        for line in lines:
            _img(os.path.join(image_root, line.split()[0]), (100, 100), "RGB")
    return image_root


def test_list_reads_one_file_per_split_and_refuses_one_file_for_both(tmp_path):
    image_root = _released_rafdb_layout(str(tmp_path))
    beside = os.path.join(str(tmp_path), "raf_db")
    # the lists lie beside the image root: the error says where, and what to pass
    with pytest.raises(FileNotFoundError, match=r"lies beside the image folder.*\{split\}_label"):
        data.build_dataset("list", image_root, "train")
    pattern = os.path.join(beside, "{split}_label.txt")
    train_set = data.build_dataset("list", image_root, "train", list_file=pattern)
    test_set = data.build_dataset("list", image_root, "test", list_file=pattern)
    assert train_set.targets == [0, 3] and test_set.targets == [6]
    data.require_disjoint(train_set, test_set)  # passes: the splits share no image
    # one file for both splits: the test split would be the training images
    one = os.path.join(beside, "train_label.txt")
    same = data.build_dataset("list", image_root, "test", list_file=one)
    with pytest.raises(ValueError, match=r"share 2 of the 2 test images.*\{split\}"):
        data.require_disjoint(train_set, same)
    report = dataset_check.check_dataset("list", image_root, list_file=pattern)
    assert {s: e["images"] for s, e in report["splits"].items()} == {"train": 2, "test": 1}
    with pytest.raises(ValueError, match="share 2 of the 2"):
        dataset_check.check_dataset("list", image_root, list_file=one)


def test_train_refuses_a_list_file_given_for_both_splits(tmp_path):
    image_root = _released_rafdb_layout(str(tmp_path))
    anchors = make_anchors(tmp_path / "anchors.pt", list(data.RAFDB_CLASSES))
    args = ["--dataset", "list", "--data-root", image_root, "--anchors", anchors, "--quiet"]
    args += ["--device", "cpu", "--output", str(tmp_path / "run"), "--batch-size", "2"]
    one = os.path.join(str(tmp_path), "raf_db", "train_label.txt")
    with pytest.raises(ValueError, match="test accuracy would be measured on training images"):
        train.main(args + ["--list-file", one])


# ---------------------------------------------------------------- 2-5. AffectNet
def _npy_release(root, folder, labels):
    for key, label in labels.items():
        _img(os.path.join(root, folder, "images", f"{key}.jpg"), (20, 20), "RGB")
        os.makedirs(os.path.join(root, folder, "annotations"), exist_ok=True)
        np.save(os.path.join(root, folder, "annotations", f"{key}_exp.npy"), np.array(str(label)))


def test_affectnet_npy_release_with_valid_set(tmp_path):
    root = str(tmp_path)
    _npy_release(root, "train_set", {"1": 0, "2": 7})
    _npy_release(root, "valid_set", {"3": 6, "4": 7})  # POSTER's name for the validation folder
    test = data.build_dataset("affectnet8", root, "test")
    assert test.targets == [6, 7] and test.release == "npy release (valid_set/)"
    assert data.build_dataset("affectnet7", root, "test").targets == [6]


def _csv(path, records):
    header = (
        "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
        "expression,valence,arousal"
    )
    _write(path, "\n".join([header] + records) + "\n")


def test_affectnet_csv_release_nested_in_manually_annotated(tmp_path, capsys):
    root = str(tmp_path)
    images = os.path.join(root, "Manually_Annotated", "Manually_Annotated_Images")
    good = [f'{k}/{k}.jpg,0,0,10,10,"1;2",{k},0.1,0.2' for k in range(3)]
    for k in range(3):
        _img(os.path.join(images, str(k), f"{k}.jpg"), (20, 20), "RGB")
    # one malformed record, as the official training.csv is said to hold: a field missing
    records = good[:1] + ['9/x.jpg,0,0,10,10,"1;2",0.1,0.2'] + good[1:]
    _csv(os.path.join(root, "Manually_Annotated_file_lists", "training.csv"), records)
    ds = data.build_dataset("affectnet7", root, "train")
    out = capsys.readouterr().out
    assert ds.targets == [0, 1, 2] and ds.samples[0][0] == os.path.join(images, "0", "0.jpg")
    assert ds.release == "csv release (Manually_Annotated/Manually_Annotated_Images/)"
    assert ds.dropped == {"malformed record": 1}
    assert "training.csv:3: expected 9 fields, got 8" in out


def test_affectnet_published_figures_follow_the_release_read():
    npy, csv = "npy release (valid_set/)", "csv release (Manually_Annotated_Images/)"
    figures = dataset_check.official_figures("affectnet8", npy)
    assert figures["release"] == "AffectNet npy release"
    assert figures["splits"] == {"train": 287651, "test": 3999}
    figures = dataset_check.official_figures("affectnet8", csv)
    assert figures["release"] == "AffectNet csv release"
    assert figures["splits"] == {"train": 287651, "test": 4000}


# ---------------------------------------------------------------- 6-9. FERPlus
# (votes, label): neutral, happiness, no majority, surprise
FER_VOTES = [("10,0,0,0,0,0,0,0,0,0", 0), ("0,9,0,0,0,0,0,0,1,0", 1), ("3,3,3,1,0,0,0,0,0,0", None)]
FER_VOTES.append(("0,0,10,0,0,0,0,0,0,0", 2))


def _ferplus(root, box=True, per_split=(8, 4, 4)):
    """FER2013Train/Valid/Test with 48x48 grey PNGs and label.csv in the master form (a box column)
    or as generate_training_data.py writes it from fer2013new.csv (no box)."""
    for folder, n in zip(("FER2013Train", "FER2013Valid", "FER2013Test"), per_split, strict=True):
        lines = []
        for k in range(n):
            votes, label = FER_VOTES[k % len(FER_VOTES)]
            name = f"{folder}{k:05d}.png"
            lines.append(f'{name},"(0, 0, 48, 48)",{votes}' if box else f"{name},{votes}")
            _img(os.path.join(root, folder, name), value=40 + 60 * (label or 0))
        _write(os.path.join(root, folder, "label.csv"), "\n".join(lines) + "\n")


def test_ferplus_label_sources_are_read_and_named(tmp_path):
    master, generated = str(tmp_path / "master"), str(tmp_path / "generated")
    _ferplus(master, box=True)
    _ferplus(generated, box=False)
    a = data.build_dataset("ferplus", master, "train")
    b = data.build_dataset("ferplus", generated, "train")
    assert a.targets == b.targets == [0, 1, 2, 0, 1, 2]
    assert a.release == data.FERPLUS_SOURCES[12] and b.release == data.FERPLUS_SOURCES[11]
    report = dataset_check.check_dataset("ferplus", generated)
    assert report["read_as"] == data.FERPLUS_SOURCES[11]
    assert report["verdict"].startswith(f"verdict: read without errors (read as the {b.release})")
    assert report["splits"]["train"]["official"] is None  # no published counts for this form
    assert "train: 6 images (no published count)" in dataset_check.format_check(report)
    master_check = dataset_check.format_check(dataset_check.check_dataset("ferplus", master))
    assert "train: 6 images (official 25,045)" in master_check
    # one file mixing the two forms is refused at the first row that differs
    with open(os.path.join(generated, "FER2013Test", "label.csv"), "a") as f:
        f.write('extra.png,"(0, 0, 48, 48)",10,0,0,0,0,0,0,0,0,0\n')
    with pytest.raises(
        ValueError, match=r"label.csv:5: expected 11 columns, as line 1 has, got 12"
    ):
        data.build_dataset("ferplus", generated, "test")


def test_ferplus_run_selects_on_fer2013valid_and_records_the_label_source(tmp_path):
    root = str(tmp_path / "ferplus")
    _ferplus(root, box=False)
    anchors = make_anchors(tmp_path / "anchors.pt", list(data.FERPLUS_CLASSES))
    out = tmp_path / "run"
    args = ["--dataset", "ferplus", "--data-root", root, "--anchors", anchors, "--quiet"]
    args += ["--device", "cpu", "--image-size", "32", "--batch-size", "2", "--epochs", "1"]
    args += ["--amp", "off", "--output", str(out)]
    metrics = train.main(args)
    record = json.loads((out / "metrics.json").read_text())["data"]
    assert record["val"]["images"] == 3 and record["val_carved_from_train"] == 0
    assert record["train"]["images"] == 6 and record["train_after_val"] == 6
    assert record["train"]["release"] == data.FERPLUS_SOURCES[11]
    history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert history[0]["val_accuracy"] is not None and metrics["best"]["epoch"] == 1


# ---------------------------------------------------------------- 10. CK+
def _ckplus(root, subjects):
    """subjects: {subject: [code or None per sequence]}; a .DS_Store in every Emotion folder."""
    for subject, codes in subjects.items():
        for q, code in enumerate(codes, 1):
            seq = f"{q:03d}"
            for frame in range(1, 5):
                name = f"{subject}_{seq}_{frame:08d}.png"
                _img(os.path.join(root, "cohn-kanade-images", subject, seq, name), (64, 49))
            emo = os.path.join(root, "Emotion", subject, seq)
            os.makedirs(emo, exist_ok=True)
            if code is not None:
                _write(os.path.join(emo, f"{subject}_{seq}_00000004_emotion.txt"), f" {code}.0\n")
        _write(os.path.join(root, "Emotion", subject, ".DS_Store"), "\0\0\0\1Bud1")
    _write(os.path.join(root, "Emotion", ".DS_Store"), "\0\0\0\1Bud1")


def test_ckplus_ignores_ds_store_and_folds_number_only_labelled_subjects(tmp_path, capsys):
    root = str(tmp_path)
    # S005 has no labelled sequence: it takes no fold number
    _ckplus(root, {"S005": [None], "S010": [3, None], "S011": [5], "S014": [1]})
    folds = []
    for fold in range(3):
        test = data.build_dataset("ckplus", root, "test", fold=fold, num_folds=3)
        folds.append(sorted({p.split(os.sep)[-3] for p, _ in test.samples}))
    assert folds == [["S010"], ["S011"], ["S014"]]
    capsys.readouterr()
    everything = data.build_dataset("ckplus", root, "all")
    # one unlabelled sequence among the kept subjects (S010's second); no .DS_Store counted
    assert "ckplus all: 1 sequences have no emotion label" in capsys.readouterr().out
    assert len(everything) == 3 * 3
