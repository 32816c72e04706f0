"""Datasets in the layouts they ship in: build_dataset(name, root, split) and its command flags.

RAF-DB, AffectNet (csv and npy), FERPlus, CK+, list files and class folders are read as they ship
into lib/face_images.FaceImages; synthetic faces are drawn (lib/synthetic_faces.py). A missing file
names the path expected, a bad label its file:line; every entry is read or counted as a drop."""

import csv
import inspect
import os
import re

import numpy as np

from lib.errors import BadInputError, MissingFileError, bounded, classes_flag
from lib.face_images import IMAGE_EXTENSIONS, FaceImages
from text_prompts import DATASET_CLASSES

DATASETS = ["rafdb", "affectnet7", "affectnet8", "ferplus", "ckplus", "list", "folder", "synthetic"]
RAFDB_CLASSES = list(DATASET_CLASSES["rafdb"])  # labels 1-7
AFFECTNET_CLASSES = list(DATASET_CLASSES["affectnet8"])  # labels 0-7; 8-10 are dropped:
AFFECTNET_DROPPED = {8: "none", 9: "uncertain", 10: "non-face"}
FERPLUS_CLASSES = list(DATASET_CLASSES["ferplus"])  # its first 8 vote columns; then unknown, NF
CKPLUS_CLASSES = list(DATASET_CLASSES["ckplus"])  # codes 1-7


# ---------------------------------------------------------------- label files
# By hand, as csv.DictReader names no line: every problem is one error naming file:line; a BOM,
# CRLF and trailing blanks are accepted; a csv line is one record (an open quote ends).


def _rows(path, comma=False):
    """(where "file:line", fields) per non-blank line: csv fields, or split at the last blanks."""
    with open(path, "rb") as f:
        lines = f.read().splitlines()
    for n, line in enumerate(lines, 1):
        try:
            text = line.decode("utf-8-sig" if n == 1 else "utf-8").rstrip()
        except UnicodeDecodeError as e:
            raise BadInputError(f"{path}:{n}: not UTF-8 ({e.reason} at byte {e.start})") from None
        if text:
            yield f"{path}:{n}", next(csv.reader([text])) if comma else text.rsplit(None, 1)


# a number as label files write it ("3", "3.0", "   3.0e+00") in ASCII digits (float() takes "1_0")
_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", re.ASCII)


def _int_value(text, low, high, where, what="label"):
    """The whole number in `text`, within low..high; anything else is an error naming `where`."""
    if not _NUMBER.fullmatch(text):
        raise BadInputError(f"{where}: {what} {text!r} is not a number")
    if not float(text).is_integer():
        raise BadInputError(f"{where}: {what} {text!r} is not a whole number")
    if not low <= float(text) <= high:
        raise BadInputError(f"{where}: {what} {text!r} out of range {low}..{high}")
    return int(float(text))


def _single_label(path, low, high):
    """The one class code of a file that holds nothing else (CK+'s *_emotion.txt: '   3.0e+00')."""
    found = list(_rows(path)) or [(f"{path}:1", [])]
    if len(found) != 1 or len(found[0][1]) != 1:
        where = found[min(1, len(found) - 1)][0]  # the first line too many, or the line itself
        raise BadInputError(f"{where}: expected one class code, the file's only entry")
    return _int_value(found[0][1][0], low, high, found[0][0])


def _npy_label(path, low, high):
    """The class code in a one-number .npy file (AffectNet's <id>_exp.npy)."""
    try:
        value = np.load(path, allow_pickle=False)
    except Exception as e:  # a damaged header fails in numpy in many ways; no pickle is loaded
        raise BadInputError(f"{path}: not a .npy label file ({type(e).__name__}: {e})") from None
    if not isinstance(value, np.ndarray) or value.size != 1 or value.dtype.kind not in "iufUS":
        shape = getattr(value, "shape", None)
        raise BadInputError(f"{path}: expected one class code, got {type(value).__name__} {shape}")
    item = value.reshape(-1)[0]
    text = item.decode("latin-1") if isinstance(item, bytes) else str(item)
    return _int_value(text, low, high, path)


def _first_time(seen, dropped, key, label, where):
    """True the first time a file lists `key`; again, a drop, or with another label an error."""
    first_where, first_label = seen.setdefault(key, (where, label))
    if first_where == where:
        return True
    line = first_where.rsplit(":", 1)[1]
    if label != first_label:
        raise BadInputError(
            f"{where}: {key} is labelled {label} here but {first_label} on line {line}: "
            "keep the line with the right label"
        )
    _drop(dropped, REPEATED, where, f"{where}: repeats line {line} ({key})")
    return False


def _drop(dropped, reason, what, note=None):
    """Count `what`, left out, in `dropped` under `reason`; the first three of each are named."""
    dropped[reason] = dropped.get(reason, 0) + 1
    if dropped[reason] <= 3:
        print(note or f"not read: {what} ({reason})")


# ---------------------------------------------------------------- the layouts
REPEATED, NOT_IMAGES = "repeated entry, read once", "not image files"


def _entries(folder, dropped, keep=os.path.isdir, reason="a file where folders are expected"):
    """The sorted names in `folder` that `keep` (a test of the path, or name endings) accepts.
    Hidden entries (a name starting with ".": .DS_Store, .ipynb_checkpoints, macOS's ._x.jpg
    copies) are never data; they and what `keep` refuses, given a `reason`, count in `dropped`."""
    names = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        ok = keep(path) if callable(keep) else path.lower().endswith(keep)
        why = "hidden: name starts with '.'" if name.startswith(".") else None if ok else reason
        if why:
            _drop(dropped, why, path)
        elif ok:
            names.append(name)
    return names


def _require(what, *parts):  # the path os.path.join(*parts), which must exist
    path = os.path.join(*parts)
    if not os.path.exists(path):
        raise MissingFileError(f"{what}: expected {path} (see the README's dataset section)")
    return path


def _name_labels(path, what, low, high, split=None):
    """([(name, label)], dropped) of the 'name label' lines of `path` (RAF-DB's: of `split`)."""
    pairs, seen, dropped = [], {}, {}
    for where, parts in _rows(path):
        if len(parts) != 2:
            raise BadInputError(f"{where}: expected '{what} label', got {' '.join(parts)!r}")
        name, label = parts[0].strip(), _int_value(parts[1], low, high, where)
        prefix = name.split("_")[0]
        if split and prefix not in ("train", "test"):
            _drop(dropped, "name is neither train_* nor test_*", f"{where}: {name}")
        elif prefix == (split or prefix) and _first_time(seen, dropped, name, label, where):
            pairs.append((name, label))
    return pairs, dropped


def _rafdb(root, split, aligned=True):
    # root/EmoLabel/list_patition_label.txt: "train_00001.jpg 5", labels 1-7 in RAFDB_CLASSES order
    label_file = _require("RAF-DB label file", root, "EmoLabel", "list_patition_label.txt")
    if split not in ("train", "test"):
        raise BadInputError(f"rafdb split must be 'train' or 'test', got {split!r}")
    image_dir = _require("RAF-DB image folder", root, "Image", "aligned" if aligned else "original")
    pairs, dropped = _name_labels(label_file, "name", 1, 7, split)
    tail = "_aligned" if aligned else ""  # train_00001.jpg -> train_00001_aligned.jpg
    samples = [(os.path.join(image_dir, tail.join(os.path.splitext(n))), y - 1) for n, y in pairs]
    return samples, RAFDB_CLASSES, dropped, None


# AffectNet as it ships and as the field's loaders lay it out: npy validation folder val_set/
# (yaoing/DAN) or valid_set/ (zczcwh/POSTER); csv images in Manually_Annotated_Images/, at the root
# or in Manually_Annotated/ (kiva12138/AffectNetBaseline), csv files at the root or in *_lists/.
AFFECTNET_NPY_SETS = {"train": ("train_set",), "test": ("val_set", "valid_set")}  # test: validation
AFFECTNET_CSV_DIRS = ("", "Manually_Annotated_file_lists")
AFFECTNET_IMAGE_DIRS = ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images")
AFFECTNET_CSV_COLUMNS = ("subDirectory_filePath", "expression")
# the face box (--crop-face): each column's smallest whole value
AFFECTNET_BOX_COLUMNS = dict(face_x=-(1 << 20), face_y=-(1 << 20), face_width=1, face_height=1)


def _affectnet(root, split, num_classes, crop_face=False):
    if split not in ("train", "test"):
        raise BadInputError(f"affectnet split must be 'train' or 'test', got {split!r}")
    # newer release: <set>/images/<id>.jpg + <set>/annotations/<id>_exp.npy
    npy_dirs = [os.path.join(root, name) for name in AFFECTNET_NPY_SETS[split]]
    npy_dir = next((d for d in npy_dirs if os.path.isdir(d)), None)
    if npy_dir is not None and crop_face:  # its images are the faces, cropped already
        raise BadInputError(
            f"--crop-face: {npy_dir} is AffectNet's npy release, which has no boxes"
        )
    if npy_dir is not None:
        ann_dir = _require("AffectNet annotations folder", npy_dir, "annotations")
        samples, dropped, release = [], {}, f"npy release ({os.path.basename(npy_dir)}/)"
        # <id>_exp.npy, the label; <id>_val, _aro and _lnd.npy, the other annotations, no items
        for fname in _entries(ann_dir, dropped, "_exp.npy", reason=""):
            image = os.path.join(npy_dir, "images", fname.removesuffix("_exp.npy") + ".jpg")
            samples.append((image, _npy_label(os.path.join(ann_dir, fname), 0, 10)))
    else:
        samples, dropped, release = _affectnet_csv(root, split, npy_dirs, crop_face)
    for label in (s[1] for s in samples if s[1] >= num_classes):  # 8-10, and 7 of affectnet7
        reason = f"label {label} {AFFECTNET_DROPPED.get(label, 'contempt')}"
        dropped[reason] = dropped.get(reason, 0) + 1
    kept = [s for s in samples if s[1] < num_classes]
    return kept, AFFECTNET_CLASSES[:num_classes], dropped, release


def _affectnet_csv(root, split, npy_dirs, crop_face):
    csv_name = "training.csv" if split == "train" else "validation.csv"
    candidates = [os.path.join(root, d, csv_name) for d in AFFECTNET_CSV_DIRS]
    csv_path = next((p for p in candidates if os.path.isfile(p)), None)
    image_dirs = [os.path.join(root, os.path.normpath(d)) for d in AFFECTNET_IMAGE_DIRS]
    if csv_path is None:
        raise MissingFileError(
            f"AffectNet: found neither the csv release ({' or '.join(candidates)} with images "
            f"under {' or '.join(image_dirs)}) nor the npy release "
            f"({' or '.join(npy_dirs)} with images/<id>.jpg and annotations/<id>_exp.npy)"
        )
    image_dir = next((d for d in image_dirs if os.path.isdir(d)), image_dirs[0])
    columns = AFFECTNET_CSV_COLUMNS + (tuple(AFFECTNET_BOX_COLUMNS) if crop_face else ())
    rows = _rows(csv_path, comma=True)  # a header naming `columns`, then records
    where, header = next(rows, (f"{csv_path}:1", []))
    if not set(columns) <= set(header):
        raise BadInputError(f"{where}: expected a header with {', '.join(columns)}, got {header}")
    samples, malformed, seen, dropped = [], [], {}, {}
    for where, row in rows:
        if len(row) != len(header):  # a record the file's own header does not fit
            malformed.append(f"{where}: expected {len(header)} fields, got {len(row)}")
            continue
        record = dict(zip(header, row, strict=True))
        try:
            label = _int_value(record["expression"], 0, 10, where)
            box = crop_face and tuple(  # the csv's (x, y, w, h) face box, cropped when read
                _int_value(record[k], low, 1 << 20, where, k)
                for k, low in AFFECTNET_BOX_COLUMNS.items()
            )
        except BadInputError as e:
            malformed.append(str(e))
            continue
        name = record["subDirectory_filePath"]
        if _first_time(seen, dropped, name, label, where):
            path = os.path.join(image_dir, name)
            samples.append((path, label, box) if crop_face else (path, label))
    # training.csv ships a stray record or two: skipped, counted and named; more than 1% of the
    # records (and more than 10) is not a stray record, and the file is refused
    total = len(samples) + sum(dropped.values()) + len(malformed)
    if len(malformed) > max(10, 0.01 * total):
        raise BadInputError(
            f"{malformed[0]} (and {len(malformed) - 1:,} more of {total:,} records cannot be "
            "read: is it the file this dataset ships?)"
        )
    for line in malformed:
        _drop(dropped, "malformed record", line, f"skipped a malformed record: {line}")
    return samples, dropped, f"csv release ({os.path.relpath(image_dir, root)}/)"


def ferplus_majority(votes):
    """Microsoft's FERPlus 'majority' rule: the winning column (0-9: FERPLUS_CLASSES, unknown, NF)
    of ten vote counts, or None. Single votes are zeroed as noise; a column wins with more than half
    of the rest. A face with no winner, or won by unknown or NF, is dropped, as in the reference."""
    votes = [v if v > 1 else 0 for v in votes]
    top = max(range(len(votes)), key=lambda k: votes[k])
    return top if votes[top] > 0.5 * sum(votes) else None


# FERPlus's two label sources (microsoft/FERPlus), whose votes differ for about 1,600 images: the
# label.csv files of its data/ folder and fer2013new.csv as generate_training_data.py writes it out
FERPLUS_FOLDERS = {"train": "FER2013Train", "valid": "FER2013Valid", "test": "FER2013Test"}
FERPLUS_SOURCES = {
    12: "master label.csv (12 columns: name, box, votes)",
    11: "fer2013new.csv labels (11 columns: name, votes; generate_training_data.py)",
}


def _ferplus(root, split):
    split = "valid" if split == "val" else split
    if split not in FERPLUS_FOLDERS:
        raise BadInputError(f"ferplus split must be one of {list(FERPLUS_FOLDERS)}, got {split!r}")
    folder = os.path.join(root, FERPLUS_FOLDERS[split])
    label_file = _require("FERPlus label file (beside the PNGs)", folder, "label.csv")
    samples, seen, dropped = [], {}, {"no majority vote": 0, "majority unknown or NF": 0}
    width = None  # the first row's field count, 12 or 11: the same for every row
    for where, row in _rows(label_file, comma=True):
        if width is None and len(row) in FERPLUS_SOURCES:
            width = len(row)
        if len(row) != width:
            shapes = "12 (name, box, 10 vote counts) or 11 (name, 10 vote counts)"
            expected = f"{width} columns, as line 1 has" if width else f"{shapes} columns"
            raise BadInputError(f"{where}: expected {expected}, got {len(row)}")
        votes = [_int_value(v, 0, 1000, where) for v in row[-10:]]
        if not _first_time(seen, dropped, row[0], votes, where):
            continue
        label = ferplus_majority(votes)
        if label is None or label >= 8:
            dropped["no majority vote" if label is None else "majority unknown or NF"] += 1
        else:
            samples.append((os.path.join(folder, row[0]), label))
    return samples, FERPLUS_CLASSES, dropped, FERPLUS_SOURCES.get(width)


def _ckplus(root, split, fold=0, num_folds=10, include_neutral=False, last_frames=3):
    img_root = _require("CK+ image folder", root, "cohn-kanade-images")
    emo_root = _require("CK+ label folder", root, "Emotion")
    if split not in ("train", "test", "all"):
        raise BadInputError(f"ckplus split must be 'train', 'test' or 'all', got {split!r}")
    if not 0 <= fold < num_folds:
        raise BadInputError(f"ckplus fold must be in 0..{num_folds - 1}, got {fold}")
    sequences, dropped = {}, {}  # subject: [(sequence, its label file or None: most have none)]
    for subject in _entries(emo_root, dropped):
        for seq in _entries(os.path.join(emo_root, subject), dropped):
            seq_dir = os.path.join(emo_root, subject, seq)
            labels = _entries(seq_dir, dropped, "_emotion.txt", "not an emotion label file")
            if len(labels) > 1:
                raise BadInputError(f"{seq_dir}: one *_emotion.txt file expected, got {labels}")
            label_file = os.path.join(seq_dir, labels[0]) if labels else None
            sequences.setdefault(subject, []).append((seq, label_file))
    # subject-independent folds over the subjects that keep a labelled sequence, in name order (as
    # the common CK+ protocol numbers them): the k-th such subject goes to fold k % num_folds
    kept = [s for s in sequences if any(label for _, label in sequences[s])]
    samples, unlabelled = [], 0
    for k, subject in enumerate(kept):
        if split != "all" and (k % num_folds == fold) != (split == "test"):
            continue
        labelled = [(seq, label_file) for seq, label_file in sequences[subject] if label_file]
        unlabelled += len(sequences[subject]) - len(labelled)
        for seq, label_file in labelled:
            code = _single_label(label_file, 1, 7)
            folder = _require(f"CK+ frames of {label_file}", img_root, subject, seq)
            frames = _entries(folder, dropped, IMAGE_EXTENSIONS, NOT_IMAGES)
            # the first frame is the neutral onset, never an emotion frame: the last of the rest are
            if len(frames) < 2:
                _drop(dropped, "sequence with no frame after its neutral first", folder)
                continue
            samples += [(os.path.join(folder, f), code - 1) for f in frames[1:][-last_frames:]]
            if include_neutral:  # the first frame, as the last class (index 7)
                samples.append((os.path.join(folder, frames[0]), 7))
    if unlabelled:
        print(f"ckplus {split}: {unlabelled} sequences have no emotion label (as CK+ ships them)")
    classes = DATASET_CLASSES["ckplus_neutral" if include_neutral else "ckplus"]
    return samples, list(classes), dropped, None


def _resolve_classes(classes):  # a dataset name, or the class names
    if isinstance(classes, str) and classes not in DATASET_CLASSES:
        raise BadInputError(f"unknown class list {classes!r}; known: {sorted(DATASET_CLASSES)}")
    classes = list(DATASET_CLASSES[classes] if isinstance(classes, str) else classes)
    if len({c for c in classes if isinstance(c, str) and c.strip()}) < len(classes):
        raise BadInputError(f"classes {classes}: each class needs one non-empty name, given once")
    return classes


def _list(root, split, list_file=None, classes="rafdb"):
    # the released code's format: "relative/path label" lines, 0-based labels, root-relative paths;
    # one file per split: list_file with "{split}" in it, or <root>/<split>_label.txt
    classes = _resolve_classes(classes)
    list_file = (list_file or os.path.join(root, "{split}_label.txt")).replace("{split}", split)
    if not os.path.isfile(list_file):
        beside = os.path.join(os.path.dirname(os.path.abspath(root)), "{split}_label.txt")
        hint = " (a path with {split} in it names one file per split)"
        if os.path.isfile(beside.replace("{split}", split)):
            hint = f"; it lies beside the image folder: pass --list-file '{beside}'"
        raise MissingFileError(f"list file of 'path label' lines: expected {list_file}{hint}")
    pairs, dropped = _name_labels(list_file, "relative/path", 0, len(classes) - 1)
    return [(os.path.join(root, n), label) for n, label in pairs], classes, dropped, None


def _folder(root, split, classes=None):
    base = os.path.join(root, split) if split not in (None, "", "all") else root
    _require("folder with one sub-folder per class (root/<split>/<class>/*.jpg)", base)
    dropped = {}
    found = _entries(base, dropped, reason="a file beside the class folders")
    classes = _resolve_classes(classes) if classes is not None else found
    unknown = [d for d in found if d not in classes]
    if unknown:  # test/ read with train/'s classes: a class train/ lacks has no index
        raise BadInputError(
            f"{base}: sub-folders {unknown} are not in the classes {classes} of train/ or --classes"
        )
    samples = []  # a class with no folder here is a class with no images in this split
    for label, d in enumerate(os.path.join(base, c) for c in classes):
        images = _entries(d, dropped, IMAGE_EXTENSIONS, NOT_IMAGES) if os.path.isdir(d) else []
        samples += [(os.path.join(d, f), label) for f in images]
    return samples, classes, dropped, None


def _synthetic(split, transform, num_train=2800, num_test=700, seed=0, image_size=64):
    from lib.synthetic_faces import SyntheticFaces  # the drawing code: imported only for it

    num = {"train": num_train, "test": num_test}.get(split, 0)
    return SyntheticFaces(num, DATASET_CLASSES["synthetic"], split, seed, image_size, transform)


def build_dataset(name, root, split, transform=None, skip_missing=False, **options):
    """Dataset with .classes and .targets; item (PIL RGB image or transform(image), label int).
    The options are the keyword arguments of the dataset's reader above (synthetic: root unused);
    skip_missing: drop listed images that are not files (counted) instead of raising."""
    builders = dict(rafdb=_rafdb, ferplus=_ferplus, ckplus=_ckplus, list=_list, folder=_folder)
    builders["affectnet7"] = lambda r, s, crop_face=False: _affectnet(r, s, 7, crop_face)
    builders["affectnet8"] = lambda r, s, crop_face=False: _affectnet(r, s, 8, crop_face)
    builders["synthetic"] = _synthetic
    if name not in builders:
        raise BadInputError(f"unknown dataset {name!r}; known: {sorted(builders)}")
    accepted = list(inspect.signature(builders[name]).parameters)[2:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"{name}: unknown options {unknown}; accepted: {accepted}")
    if name == "synthetic":
        return _synthetic(split, transform, **options)
    if root is None or not os.path.isdir(root):
        raise MissingFileError(f"{name}: dataset root {root} is not a folder (see the README)")
    samples, classes, dropped, release = builders[name](root, split, **options)
    once = {}  # one image file, one label: listed again with it, the file is read once
    for k, s in enumerate(samples):
        at, first = once.setdefault(os.path.normpath(s[0]), (k, s))
        if first[1] != s[1]:
            raise BadInputError(
                f"{name} {split}: {s[0]} is listed as {classes[first[1]]} and as {classes[s[1]]}"
            )
        if at != k:
            _drop(dropped, REPEATED, s[0])
    samples = [s for _, s in once.values()]
    bad = [s[0] for s in samples if not os.path.isfile(s[0])]
    why = {p: "is a folder" if os.path.isdir(p) else "does not exist" for p in bad}
    if bad and not skip_missing:
        shown = ", ".join(f"{p} ({why[p]})" for p in bad[:3])
        raise MissingFileError(
            f"{name} {split}: {len(bad):,} listed images are not image files, e.g. {shown}: "
            "pass --skip-missing to skip them"
        )
    samples = [s for s in samples if s[0] not in why]
    for path in bad:
        _drop(dropped, f"listed image {why[path]}", path)
    for reason, count in dropped.items():
        if count:
            print(f"{name} {split}: dropped {count:,} items ({reason})")
    if not samples:
        raise BadInputError(f"{name} {split}: no images in this split")
    return FaceImages(samples, classes, transform, name, dropped, release)


def require_disjoint(train, test):
    """Refuse a test split that holds images of the train split (a `list` file given for both)."""
    seen = {os.path.normpath(s[0]) for s in getattr(train, "samples", [])}
    shared = [s[0] for s in getattr(test, "samples", []) if os.path.normpath(s[0]) in seen]
    if shared:
        hint = ": give each split its own --list-file, e.g. 'data/raf_db/{split}_label.txt'"
        raise BadInputError(
            f"{train.name}: train and test share {len(shared):,} of the {len(test):,} test images "
            f"(e.g. {shared[0]}), so the test accuracy would be measured on training images"
            + (hint if train.name == "list" else "")
        )


# how a dataset is read: the flags train.py, evaluate.py and tools/dataset_check.py share
DATASET_FLAGS = ("fold", "include_neutral", "crop_face", "skip_missing", "list_file", "classes")


def add_flags(parser):
    """--data-root and the DATASET_FLAGS, on a command line's parser."""
    a = parser.add_argument
    a("--data-root", default=None, help="the dataset's folder as it ships (README: Datasets)")
    a("--fold", type=bounded(int, 0, 10), default=None, help="CK+: the test fold (0-9)")
    a("--include-neutral", action="store_true", help="CK+: the neutral first frames too")
    a("--crop-face", action="store_true", help="AffectNet: crop each image to the csv's face box")
    a("--skip-missing", action="store_true", help="skip (and count) listed images that are missing")
    a("--list-file", default=None, help="list: 'path label' file, {split} in it (default: root's)")
    a("--classes", default=None, help="list/folder: class order, a dataset name or 'w1,w2,...'")


def dataset_options(args):
    """build_dataset's options from the dataset flags (add_flags)."""
    options = {
        f: True for f in ("include_neutral", "skip_missing", "crop_face") if getattr(args, f)
    }
    if args.fold is not None:
        options["fold"] = args.fold
    if args.classes is not None:
        options["classes"] = classes_flag(args.classes, DATASET_CLASSES)
    if args.list_file:
        options["list_file"] = args.list_file
    return options
