"""tools/dataset_check.py: counts, drops, sizes and verdicts against small fixture trees, and the
command line."""

import os
import runpy
import sys

import pytest
from PIL import Image

import data
from lib import errors
from tools import dataset_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _img(path, size, mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, 128 if mode == "L" else (120, 80, 40)).save(path)


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# label lines of the RAF-DB fixture: labels 1-7 = surprise, fear, disgust, happiness, sadness,
# anger, neutral
RAF_LINES = [
    "train_00001.jpg 5",
    "train_00002.jpg 1",
    "train_00003.jpg 7",
    "train_00004.jpg 7",
    "train_00005.jpg 3",
    "test_0001.jpg 7",
    "test_0002.jpg 4",
]


def _rafdb(root, size=(100, 100)):
    _write(os.path.join(root, "EmoLabel", "list_patition_label.txt"), "\n".join(RAF_LINES) + "\n")
    for line in RAF_LINES:
        _img(os.path.join(root, "Image", "aligned", line.split()[0][:-4] + "_aligned.jpg"), size)


def test_rafdb_counts_classes_sizes_and_mismatch_verdict(tmp_path):
    root = str(tmp_path / "raf")
    _rafdb(root)
    report = dataset_check.check_dataset("rafdb", root)
    train, test = report["splits"]["train"], report["splits"]["test"]
    assert (train["images"], test["images"]) == (5, 2)
    names = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
    expected_train = dict.fromkeys(names, 0)  # counted by hand from RAF_LINES
    expected_train.update(sadness=1, surprise=1, neutral=2, disgust=1)
    assert train["per_class"] == expected_train
    assert test["per_class"] == {**dict.fromkeys(names, 0), "neutral": 1, "happiness": 1}
    assert train["dropped"] == {} and train["official"] == 12271 and test["official"] == 3068
    assert train["sizes"] == {"100x100 RGB": 5} and train["unreadable"] == []
    text = dataset_check.format_check(report)
    verdicts = [ln for ln in text.splitlines() if ln.startswith("verdict:")]
    assert len(verdicts) == 1 and text.splitlines()[-1] == verdicts[0]
    assert verdicts[0].startswith(
        "verdict: WARNING 5 train images where the official release has 12,271"
    )
    assert "2 test images where the official release has 3,068" in verdicts[0]
    assert "aligned" not in verdicts[0]  # the sizes are the release's
    assert "train: 5 images (official 12,271)" in text and "Li, Deng & Du, CVPR 2017" in text


def test_rafdb_match_unaligned_and_unreadable_images(tmp_path, monkeypatch):
    root = str(tmp_path / "raf")
    _rafdb(root)
    published = ("RAF-DB basic release", {"train": 5, "test": 2}, "test figures")
    monkeypatch.setitem(dataset_check.PUBLISHED, ("rafdb", ""), published)
    assert (
        dataset_check.check_dataset("rafdb", root)["verdict"]
        == "verdict: matches the official RAF-DB basic release"
    )
    other = str(tmp_path / "raf_big")
    _rafdb(other, size=(224, 224))
    _write(os.path.join(other, "Image", "aligned", "test_0001_aligned.jpg"), "not a jpeg")
    report = dataset_check.check_dataset("rafdb", other)
    assert report["splits"]["train"]["sizes"] == {"224x224 RGB": 5}
    assert report["verdict"].startswith(
        "verdict: WARNING train images are 224x224 RGB: not the aligned RAF-DB faces (100x100 RGB)"
    )
    assert report["splits"]["test"]["unreadable"] == [
        os.path.join(other, "Image", "aligned", "test_0001_aligned.jpg")
    ]
    assert "1 sampled test images cannot be opened" in report["verdict"]


def test_main_exit_codes_and_one_line_errors(tmp_path, capsys):
    root = str(tmp_path / "raf")
    _rafdb(root)
    assert dataset_check.main(["--dataset", "rafdb", "--data-root", root]) == 0
    assert "verdict: WARNING 5 train images" in capsys.readouterr().out
    broken = str(tmp_path / "broken")
    os.makedirs(os.path.join(broken, "Image", "aligned"))
    assert dataset_check.main(["--dataset", "rafdb", "--data-root", broken]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and os.path.join(broken, "EmoLabel", "list_patition_label.txt") in err
    )
    # a listed image missing
    os.remove(os.path.join(root, "Image", "aligned", "train_00002_aligned.jpg"))
    assert dataset_check.main(["--dataset", "rafdb", "--data-root", root]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train_00002_aligned.jpg" in err
    assert dataset_check.main(["--dataset", "rafdb", "--data-root", root, "--skip-missing"]) == 0
    assert "listed image does not exist 1" in capsys.readouterr().out


def test_the_readme_command(tmp_path, capsys, monkeypatch):
    """`python -m tools.dataset_check ...` as the README writes it, its __main__ block included."""
    root = str(tmp_path / "raf")
    _rafdb(root)
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        assert "python -m tools.dataset_check --dataset rafdb --data-root data/raf_db" in f.read()

    def command(*argv):
        monkeypatch.setattr(sys, "argv", ["-m", "--dataset", "rafdb", "--data-root", *argv])
        monkeypatch.delitem(sys.modules, "tools.dataset_check", raising=False)  # afresh
        with pytest.raises(SystemExit) as done:
            runpy.run_module("tools.dataset_check", run_name="__main__", alter_sys=True)
        return done.value.code, capsys.readouterr()

    code, out = command(root)
    assert code == 0 and out.out.strip().splitlines()[-1].startswith("verdict: WARNING 5 train")
    missing = str(tmp_path / "nowhere")
    code, out = command(missing)
    assert code == 2 and "Traceback" not in out.err
    assert out.err.count("\n") == 1 and missing in out.err


def _ckplus(root):
    """S005: two labelled sequences and one unlabelled; S010 and S011: one labelled each. 640x490
    frames."""
    layout = {
        ("S005", "001"): 3,
        ("S005", "002"): 5,
        ("S005", "003"): None,
        ("S010", "001"): 1,
        ("S011", "004"): 7,
    }
    for (subject, seq), code in layout.items():
        for frame in range(1, 6):
            _img(
                os.path.join(
                    root, "cohn-kanade-images", subject, seq, f"{subject}_{seq}_{frame:08d}.png"
                ),
                (640, 490),
                "L",
            )
        seq_dir = os.path.join(root, "Emotion", subject, seq)
        os.makedirs(seq_dir, exist_ok=True)
        if code is not None:
            _write(
                os.path.join(seq_dir, f"{subject}_{seq}_00000005_emotion.txt"),
                f"   {code}.0000000e+00\n",
            )


def test_ckplus_sequences_subjects_and_drops(tmp_path):
    root = str(tmp_path / "ck")
    _ckplus(root)
    # fold 0: the first subject (S005) is the test fold; the last 3 frames of each sequence
    report = dataset_check.check_dataset("ckplus", root)
    test, train = report["splits"]["test"], report["splits"]["train"]
    assert (test["images"], train["images"]) == (6, 6)
    assert (report["sequences"], report["subjects"]) == (4, 3)
    # codes 3 and 5
    assert test["per_class"]["disgust"] == 3 and test["per_class"]["happiness"] == 3
    assert report["options"] == {"fold": 0} and "frames" not in report["verdict"]
    assert report["verdict"] == "verdict: WARNING 4 labelled sequences where CK+ has 327"
    text = dataset_check.format_check(report)
    assert "4 labelled sequences from 3 subjects" in text
    neutral = dataset_check.check_dataset("ckplus", root, fold=1, include_neutral=True)
    # S010 is subject 1: one sequence, one first frame
    assert neutral["splits"]["test"]["per_class"]["neutral"] == 1


def test_ferplus_drops_and_grey_48(tmp_path):
    root = str(tmp_path / "fer")
    # happiness
    rows = {
        "train": [
            "a.png,box,10,0,0,0,0,0,0,0,0,0",  # neutral
            "b.png,box,3,3,3,1,0,0,0,0,0,0",  # singles zeroed: 3/3/3 of 9, no majority
            "c.png,box,0,0,0,0,0,0,0,0,8,2",  # majority unknown
            "d.png,box,0,9,0,0,0,0,0,0,0,1",
        ],
        "valid": ["e.png,box,0,0,10,0,0,0,0,0,0,0"],
        "test": ["f.png,box,0,0,0,10,0,0,0,0,0,0"],
    }
    folders = {"train": "FER2013Train", "valid": "FER2013Valid", "test": "FER2013Test"}
    for split, lines in rows.items():
        _write(os.path.join(root, folders[split], "label.csv"), "\n".join(lines) + "\n")
        for line in lines:
            _img(os.path.join(root, folders[split], line.split(",")[0]), (48, 48), "L")
    report = dataset_check.check_dataset("ferplus", root)
    train = report["splits"]["train"]
    assert train["images"] == 2 and train["per_class"]["neutral"] == 1
    assert train["per_class"]["happiness"] == 1
    assert train["dropped"] == {"no majority vote": 1, "majority unknown or NF": 1}
    # 12 columns: the master label.csv, whose counts are published
    assert report["read_as"] == data.FERPLUS_SOURCES[12] and train["official"] == 25045
    assert train["sizes"] == {"48x48 L": 2} and list(report["splits"]) == ["train", "valid", "test"]
    assert report["verdict"].startswith(
        "verdict: WARNING (read as the master label.csv (12 columns: name, box, votes)) 2 train "
        "images where the official release has 25,045"
    )
    assert "not the FERPlus images" not in report["verdict"]


def test_official_figures_follow_the_form_read():
    assert dataset_check.official_figures("rafdb") == dict(
        release="RAF-DB basic release",
        splits={"train": 12271, "test": 3068},
        source="Li, Deng & Du, CVPR 2017: 15,339 images",
    )
    npy = "npy release (valid_set/)"  # AffectNet: the figures follow the form read
    assert dataset_check.official_figures("affectnet7", npy)["splits"]["test"] == 3500
    assert dataset_check.official_figures("affectnet8", npy)["splits"]["test"] == 3999
    assert dataset_check.official_figures("affectnet8", "csv")["splits"]["test"] == 4000
    assert dataset_check.official_figures("ferplus", data.FERPLUS_SOURCES[11]) == {}
    assert dataset_check.official_figures("synthetic") == {}


def test_unknown_dataset_and_bad_option(tmp_path):
    with pytest.raises(errors.BadInputError, match="unknown dataset"):
        dataset_check.check_dataset("imagenet", str(tmp_path))
    root = str(tmp_path / "raf")
    _rafdb(root)
    with pytest.raises(TypeError, match="fold"):
        dataset_check.check_dataset("rafdb", root, fold=1)
