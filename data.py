"""Datasets in the layouts they ship in, image decoding, and the released per-sample transforms.

build_dataset(name, root, split) reads RAF-DB, AffectNet (csv and npy releases), FERPlus, CK+, the
released code's list files, class folders, or draws synthetic faces (lib/synthetic_faces.py). Items
are (PIL RGB image, label) unless a transform is given. The fast path from a dataset to augmented
batches (a uint8 cache and batched augmentation) is in tools/batches.py.

Each reader follows the release as it ships and as the field's loaders lay it out (the sources are
cited where each form is found); .release names the form read where there is more than one.

Bad input never passes silently: a missing root or label file names the expected path and layout; a
label line that cannot be read names its file and line (label files are read as UTF-8 with or
without a byte-order mark, with LF or CRLF endings and trailing blanks); listed images that do not
exist are counted and refused unless skip_missing=True; every dropped item is counted and printed by
reason; a corrupt image is named when it is read. Every image, in training and at inference, is
decoded by load_rgb and brought to the working size by square_uint8 or build_transforms (Resize +
CenterCrop), all three in lib/face_images.py with FaceImages, the dataset every layout returns.
"""

import inspect
import os

from lib import label_files
from lib.errors import BadInputError, MissingFileError, classes_flag
from lib.face_images import IMAGE_EXTENSIONS, FaceImages
from lib.synthetic_faces import SyntheticFaces
from text_prompts import DATASET_CLASSES

DATASETS = ["rafdb", "affectnet7", "affectnet8", "ferplus", "ckplus", "list", "folder", "synthetic"]
# Class names in each dataset's own label order: the words of text_prompts.DATASET_CLASSES.
RAFDB_CLASSES = list(DATASET_CLASSES["rafdb"])  # labels 1-7
AFFECTNET_CLASSES = list(DATASET_CLASSES["affectnet8"])
AFFECTNET_DROPPED = {8: "none", 9: "uncertain", 10: "non-face"}
FERPLUS_CLASSES = list(DATASET_CLASSES["ferplus"])
FERPLUS_VOTES = FERPLUS_CLASSES + ["unknown", "NF"]  # the ten vote columns of label.csv
CKPLUS_CLASSES = list(DATASET_CLASSES["ckplus"])  # codes 1-7


def _require(path, what):
    if not os.path.exists(path):
        raise MissingFileError(f"{what}: expected {path} (see the README's dataset section)")
    return path


def _finish(name, split, samples, classes, transform, skip_missing, dropped=None, release=None):
    """Check that every listed image exists, print drops, refuse an empty split."""
    dropped = dict(dropped or {})
    for reason, count in dropped.items():
        if count:
            print(f"{name} {split}: dropped {count:,} items ({reason})")
    missing = [s[0] for s in samples if not os.path.isfile(s[0])]
    if missing:
        if not skip_missing:
            shown = "\n  ".join(missing[:5])
            raise MissingFileError(
                f"{name} {split}: {len(missing):,} listed images do not exist, e.g.\n  {shown}\n"
                "pass skip_missing=True (train.py --skip-missing) to skip them"
            )
        gone = set(missing)
        samples = [s for s in samples if s[0] not in gone]
        print(
            f"{name} {split}: skipped {len(missing):,} listed images that do not exist "
            "(skip_missing=True)"
        )
        dropped["listed image does not exist"] = len(missing)
    if not samples:
        raise BadInputError(f"{name} {split}: no images in this split")
    return FaceImages(samples, classes, transform, name, dropped, release)


def _rafdb(root, split, aligned=True):
    # root/EmoLabel/list_patition_label.txt: "train_00001.jpg 5", labels 1-7 in RAFDB_CLASSES order
    label_file = _require(
        os.path.join(root, "EmoLabel", "list_patition_label.txt"),
        "RAF-DB label file (root/EmoLabel/list_patition_label.txt)",
    )
    if split not in ("train", "test"):
        raise BadInputError(f"rafdb split must be 'train' or 'test', got {split!r}")
    image_dir = _require(
        os.path.join(root, "Image", "aligned" if aligned else "original"),
        "RAF-DB image folder (root/Image/aligned/ or root/Image/original/)",
    )
    samples, entries, dropped = [], label_files.Entries(), {}
    for where, parts in label_files.rows(label_file):
        if len(parts) != 2:
            raise BadInputError(f"{where}: expected 'name label', got {' '.join(parts)!r}")
        name, label = parts[0].strip(), label_files.int_label(parts[1], 1, 7, where)
        if name.split("_")[0] == split and entries.new(name, label, where):
            stem, ext = os.path.splitext(name)
            samples.append(
                (os.path.join(image_dir, f"{stem}_aligned{ext}" if aligned else name), label - 1)
            )
    entries.count(dropped)
    return samples, RAFDB_CLASSES, dropped, None


# AffectNet as it ships, and as the field's loaders lay it out. The npy release's validation folder
# is val_set/ (yaoing/DAN) or valid_set/ (zczcwh/POSTER's preprocessing); the csv release keeps its
# images in Manually_Annotated_Images/ at the root or one level down in Manually_Annotated/
# (kiva12138/AffectNetBaseline), its csv files at the root or in Manually_Annotated_file_lists/.
AFFECTNET_NPY_SETS = {"train": ("train_set",), "test": ("val_set", "valid_set")}
AFFECTNET_CSV_DIRS = ("", "Manually_Annotated_file_lists")
AFFECTNET_IMAGE_DIRS = (
    "Manually_Annotated_Images",
    os.path.join("Manually_Annotated", "Manually_Annotated_Images"),
)
AFFECTNET_CSV_COLUMNS = ("subDirectory_filePath", "expression")
AFFECTNET_BOX_COLUMNS = {  # the face box (--crop-face): each column's smallest whole value
    "face_x": -(1 << 20),
    "face_y": -(1 << 20),
    "face_width": 1,
    "face_height": 1,
}


def _affectnet(root, split, num_classes, crop_face=False):
    classes = AFFECTNET_CLASSES[:num_classes]
    if split not in ("train", "test"):
        raise BadInputError(
            "affectnet split must be 'train' or 'test' (the official validation set), got "
            f"{split!r}"
        )
    dropped = {}

    def keep(label):
        if label < num_classes:
            return True
        reason = f"label {label} {AFFECTNET_DROPPED.get(label, 'contempt')}"
        dropped[reason] = dropped.get(reason, 0) + 1
        return False

    # newer release: <set>/images/<id>.jpg + <set>/annotations/<id>_exp.npy
    npy_dirs = [os.path.join(root, name) for name in AFFECTNET_NPY_SETS[split]]
    npy_dir = next((d for d in npy_dirs if os.path.isdir(d)), None)
    if npy_dir is not None:
        ann_dir = _require(os.path.join(npy_dir, "annotations"), "AffectNet annotations folder")
        image_dir = os.path.join(npy_dir, "images")
        samples = []
        for fname in sorted(os.listdir(ann_dir)):
            if not fname.endswith("_exp.npy"):
                continue
            label = label_files.npy_label(os.path.join(ann_dir, fname), 0, 10)
            if keep(label):
                samples.append((os.path.join(image_dir, fname[: -len("_exp.npy")] + ".jpg"), label))
        release = f"npy release ({os.path.basename(npy_dir)}/)"
        return samples, classes, dropped, release

    csv_name = "training.csv" if split == "train" else "validation.csv"
    candidates = [os.path.join(root, d, csv_name) for d in AFFECTNET_CSV_DIRS]
    csv_path = next((p for p in candidates if os.path.isfile(p)), None)
    image_dirs = [os.path.join(root, d) for d in AFFECTNET_IMAGE_DIRS]
    if csv_path is None:
        raise MissingFileError(
            f"AffectNet: found neither the csv release ({' or '.join(candidates)} with images "
            f"under {' or '.join(image_dirs)}) nor the npy release "
            f"({' or '.join(npy_dirs)} with images/<id>.jpg and annotations/<id>_exp.npy)"
        )
    image_dir = next((d for d in image_dirs if os.path.isdir(d)), image_dirs[0])
    columns = AFFECTNET_CSV_COLUMNS + (tuple(AFFECTNET_BOX_COLUMNS) if crop_face else ())
    samples, malformed, entries = [], [], label_files.Entries()
    for where, record in label_files.csv_records(csv_path, columns):
        if isinstance(record, str):  # a record the file's own header does not fit
            malformed.append(f"{where}: {record}")
            continue
        try:
            label = label_files.int_label(record["expression"], 0, 10, where)
            # (x, y, w, h) face box of the csv, applied when the image is read
            box = crop_face and tuple(
                label_files.int_value(record[k], low, 1 << 20, where, k)
                for k, low in AFFECTNET_BOX_COLUMNS.items()
            )
        except BadInputError as e:
            malformed.append(str(e))
            continue
        if entries.new(record["subDirectory_filePath"], label, where) and keep(label):
            path = os.path.join(image_dir, record["subDirectory_filePath"])
            samples.append((path, label, box) if crop_face else (path, label))
    entries.count(dropped)
    label_files.skip_malformed(csv_path, malformed, len(samples) + sum(dropped.values()), dropped)
    release = f"csv release ({os.path.relpath(image_dir, root)}/)"
    return samples, classes, dropped, release


def ferplus_majority(votes):
    """Microsoft's FERPlus 'majority' rule: the column (0-9, FERPLUS_VOTES) of the ten vote counts,
    or None.

    Single votes are zeroed as noise; a column wins when it holds more than half of the remaining
    votes. A face with no winner, or won by 'unknown' (8) or 'NF' (9), is dropped, as the reference
    code does.
    """
    votes = [v if v > 1 else 0 for v in votes]
    top = max(range(len(votes)), key=lambda k: votes[k])
    return top if votes[top] > 0.5 * sum(votes) else None


# FERPlus's two label sources (microsoft/FERPlus): the label.csv files of its data/ folder, with 12
# fields (name, face box, ten votes), and fer2013new.csv, which a version of
# src/generate_training_data.py (pull request #15) writes out as label.csv files of 11 fields (name,
# ten votes). Their votes differ for about 1,600 images; the one read is the dataset's release.
FERPLUS_FOLDERS = {"train": "FER2013Train", "valid": "FER2013Valid", "test": "FER2013Test"}
FERPLUS_SOURCES = {
    12: "master label.csv (12 columns: name, box, votes)",
    11: "fer2013new.csv labels (11 columns: name, votes; generate_training_data.py)",
}


def _ferplus(root, split):
    split = "valid" if split == "val" else split
    if split not in FERPLUS_FOLDERS:
        raise BadInputError(
            f"ferplus split must be one of {sorted(FERPLUS_FOLDERS)}, got {split!r}"
        )
    folder = os.path.join(root, FERPLUS_FOLDERS[split])
    label_file = _require(
        os.path.join(folder, "label.csv"),
        f"FERPlus label file (root/{FERPLUS_FOLDERS[split]}/label.csv next to the PNGs)",
    )
    samples, dropped = [], {"no majority vote": 0, "majority unknown or NF": 0}
    entries, width = (
        label_files.Entries(),
        None,
    )  # the field count of the first row: 12 or 11, the same for every row
    for where, row in label_files.rows(label_file, comma=True):
        if width is None and len(row) in FERPLUS_SOURCES:
            width = len(row)
        if len(row) != width:
            shapes = "12 (name, box, 10 vote counts) or 11 (name, 10 vote counts)"
            expected = f"{width} columns, as line 1 has" if width else f"{shapes} columns"
            raise BadInputError(f"{where}: expected {expected}, got {len(row)}")
        votes = [label_files.int_label(v, 0, 1000, where) for v in row[-10:]]
        if not entries.new(row[0], votes, where):
            continue
        label = ferplus_majority(votes)
        if label is None or label >= 8:
            dropped["no majority vote" if label is None else "majority unknown or NF"] += 1
        else:
            samples.append((os.path.join(folder, row[0]), label))
    entries.count(dropped)
    return samples, FERPLUS_CLASSES, dropped, FERPLUS_SOURCES.get(width)


def _image_files(folder):
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))


def _subfolders(folder):
    """The sub-folders of `folder`, sorted; files and hidden entries (.DS_Store) left out."""
    names = sorted(os.listdir(folder))
    return [d for d in names if not d.startswith(".") and os.path.isdir(os.path.join(folder, d))]


def _ckplus(root, split, fold=0, num_folds=10, include_neutral=False, last_frames=3):
    img_root = _require(
        os.path.join(root, "cohn-kanade-images"), "CK+ image folder (root/cohn-kanade-images/)"
    )
    emo_root = _require(os.path.join(root, "Emotion"), "CK+ label folder (root/Emotion/)")
    if split not in ("train", "test", "all"):
        raise BadInputError(f"ckplus split must be 'train', 'test' or 'all', got {split!r}")
    if not 0 <= fold < num_folds:
        raise BadInputError(f"ckplus fold must be in 0..{num_folds - 1}, got {fold}")
    # each subject's sequences, with the label file of those that have one (CK+ ships most without)
    sequences = {}
    for subject in _subfolders(emo_root):
        for seq in _subfolders(os.path.join(emo_root, subject)):
            seq_dir = os.path.join(emo_root, subject, seq)
            labels = [f for f in sorted(os.listdir(seq_dir)) if f.endswith("_emotion.txt")]
            label_file = os.path.join(seq_dir, labels[0]) if labels else None
            sequences.setdefault(subject, []).append((seq, label_file))
    # subject-independent folds over the subjects that keep a labelled sequence, in name order (as
    # the common CK+ protocol numbers them): the k-th such subject goes to fold k % num_folds
    kept = [s for s in sequences if any(label for _, label in sequences[s])]
    samples, unlabelled = [], 0
    for k, subject in enumerate(kept):
        in_test = k % num_folds == fold
        if (split == "train" and in_test) or (split == "test" and not in_test):
            continue
        unlabelled += sum(label is None for _, label in sequences[subject])
        for seq, label_file in sequences[subject]:
            if label_file is None:
                continue
            code = label_files.single_label(label_file, 1, 7)
            frame_dir = _require(
                os.path.join(img_root, subject, seq), f"CK+ frames of {label_file}"
            )
            frames = _image_files(frame_dir)
            if not frames:
                raise BadInputError(
                    f"CK+ sequence folder {frame_dir} holds no images (labelled by {label_file})"
                )
            for fname in frames[-last_frames:]:
                samples.append((os.path.join(frame_dir, fname), code - 1))
            if include_neutral:  # neutral is appended as the last class (index 7)
                samples.append((os.path.join(frame_dir, frames[0]), 7))
    if unlabelled:
        print(
            f"ckplus {split}: {unlabelled} sequences have no emotion label (CK+ ships them "
            "unlabelled); not used"
        )
    classes = list(DATASET_CLASSES["ckplus_neutral" if include_neutral else "ckplus"])
    return samples, classes, {}, None


def _resolve_classes(classes):
    if isinstance(classes, str):
        if classes not in DATASET_CLASSES:
            raise BadInputError(f"unknown class list {classes!r}; known: {sorted(DATASET_CLASSES)}")
        return list(DATASET_CLASSES[classes])
    classes = list(classes)
    repeated = len(set(classes)) < len(classes)
    if repeated or not all(isinstance(c, str) and c.strip() for c in classes):
        raise BadInputError(f"classes {classes}: each class needs one non-empty name, given once")
    return classes


def _list(root, split, list_file=None, classes="rafdb"):
    # the released code's format: "relative/path label" lines, 0-based labels, root-relative paths;
    # one file per split: list_file with "{split}" in it, or <root>/<split>_label.txt
    classes = _resolve_classes(classes)
    pattern = list_file or os.path.join(root, "{split}_label.txt")
    list_file = pattern.replace("{split}", split)
    if not os.path.isfile(list_file):
        beside = os.path.join(os.path.dirname(os.path.abspath(root)), f"{split}_label.txt")
        hint = (
            f"; {beside} lies beside the image folder, as in the released code: pass "
            f"--list-file '{os.path.join(os.path.dirname(beside), '{split}_label.txt')}'"
            if os.path.isfile(beside)
            else " (a path with {split} in it names one file per split)"
        )
        raise MissingFileError(
            f"list file of 'relative/path label' lines: expected {list_file}{hint}"
        )
    samples, entries, dropped = [], label_files.Entries(), {}
    for where, parts in label_files.rows(list_file):
        if len(parts) != 2:
            raise BadInputError(f"{where}: expected 'relative/path label', got {' '.join(parts)!r}")
        label = label_files.int_label(parts[1], 0, len(classes) - 1, where)
        if entries.new(parts[0].strip(), label, where):
            samples.append((os.path.join(root, parts[0].strip()), label))
    entries.count(dropped)
    return samples, classes, dropped, None


def _folder(root, split, classes=None):
    base = os.path.join(root, split) if split not in (None, "", "all") else root
    _require(base, "folder with one sub-folder per class (root/<split>/<class>/*.jpg)")
    found = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
    classes = _resolve_classes(classes) if classes is not None else found
    unknown = [d for d in found if d not in classes]
    if unknown:
        raise BadInputError(f"{base}: sub-folders {unknown} are not among the classes {classes}")
    samples, other = [], 0
    for label, name in enumerate(classes):
        d = os.path.join(base, name)
        if os.path.isdir(d):
            files = sorted(os.listdir(d))
            images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
            other += len(files) - len(images)
            samples += [(os.path.join(d, f), label) for f in images]
    return samples, classes, {"not image files": other}, None


def build_dataset(name, root, split, transform=None, skip_missing=False, **options):
    """Dataset with .classes and .targets; item (PIL RGB image or transform(image), label int).

    name: rafdb (aligned=True), affectnet7, affectnet8, ferplus (split train|valid|test), ckplus
    (fold, num_folds, include_neutral, last_frames; split train|test|all), list (list_file: a path
    with {split} in it, one file per split; classes), folder (classes), synthetic (num_train,
    num_test, seed, image_size; root unused).
    skip_missing: skip listed images that do not exist (printing how many) instead of raising.
    """
    if name == "synthetic":
        o = dict(num_train=2800, num_test=700, seed=0, image_size=64)
        bad = set(options) - set(o)
        if bad:
            raise TypeError(f"synthetic: unknown options {sorted(bad)}; accepted: {sorted(o)}")
        o.update(options)
        num, classes = o[f"num_{split}"] if split in ("train", "test") else 0, DATASET_CLASSES[name]
        return SyntheticFaces(num, classes, split, o["seed"], o["image_size"], transform)
    builders = {
        "rafdb": _rafdb,
        "affectnet7": lambda r, s, crop_face=False: _affectnet(r, s, 7, crop_face),
        "affectnet8": lambda r, s, crop_face=False: _affectnet(r, s, 8, crop_face),
        "ferplus": _ferplus,
        "ckplus": _ckplus,
        "list": _list,
        "folder": _folder,
    }
    if name not in builders:
        raise BadInputError(f"unknown dataset {name!r}; known: {sorted(builders) + ['synthetic']}")
    if root is None or not os.path.isdir(root):
        raise MissingFileError(
            f"{name}: dataset root {root} is not a folder (see the README's dataset section)"
        )
    accepted = list(inspect.signature(builders[name]).parameters)[2:]
    if set(options) - set(accepted):
        raise TypeError(
            f"{name}: unknown options {sorted(set(options) - set(accepted))}; accepted: {accepted}"
        )
    samples, classes, dropped, release = builders[name](root, split, **options)
    return _finish(name, split, samples, classes, transform, skip_missing, dropped, release)


def require_disjoint(train, test):
    """Refuse a training run whose test split holds images of its train split: its test accuracy
    would be measured on training images (a `list` file given for both splits, say)."""
    seen = {os.path.normpath(s[0]) for s in getattr(train, "samples", [])}
    shared = [s[0] for s in getattr(test, "samples", []) if os.path.normpath(s[0]) in seen]
    if shared:
        hint = (
            ": a --list-file without {split} in it names one file for both; give one per split, "
            "e.g. --list-file 'data/raf_db/{split}_label.txt'"
            if train.name == "list"
            else ""
        )
        raise BadInputError(
            f"{train.name}: train and test share {len(shared):,} of the {len(test):,} test images "
            f"(e.g. {shared[0]}), so the test accuracy would be measured on training images{hint}"
        )


def dataset_options(args):
    """The build_dataset options that command-line flags give (train.py and evaluate.py share them):
    --fold, --include-neutral, --list-file, --classes (a dataset name or comma-separated words),
    --skip-missing, --crop-face."""
    options = {}
    if getattr(args, "fold", None) is not None:
        options["fold"] = args.fold
    if getattr(args, "include_neutral", False):
        options["include_neutral"] = True
    if getattr(args, "list_file", None):
        options["list_file"] = args.list_file
    if getattr(args, "classes", None) is not None:
        options["classes"] = classes_flag(args.classes, DATASET_CLASSES)
    if getattr(args, "skip_missing", False):
        options["skip_missing"] = True
    if getattr(args, "crop_face", False):
        options["crop_face"] = True
    return options


if __name__ == "__main__":  # python data.py --check --dataset NAME --data-root DIR
    import runpy

    # tools/dataset_check.py owns the command and imports this file, never the reverse
    runpy.run_module("tools.dataset_check", run_name="__main__")
