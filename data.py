"""Datasets in the layouts they ship in, image decoding, and the released per-sample transforms.

build_dataset(name, root, split) reads RAF-DB, AffectNet (csv and npy releases), FERPlus, CK+, the
released code's list files, class folders, or draws synthetic faces (lib/synthetic_faces.py). Items
are (PIL RGB image, label) unless a transform is given. The fast path from a dataset to augmented
batches (a uint8 cache and batched augmentation) is in tools/batches.py.

Bad input never passes silently: a missing root or label file names the expected path and layout; a
label line that cannot be read names its file and line (label files are read as UTF-8 with or
without a byte-order mark, with LF or CRLF endings and trailing blanks); listed images that do not
exist are counted and refused unless skip_missing=True; every dropped item is counted and printed by
reason; a corrupt image is named when it is read. Every image, in training and at inference, is
decoded by load_rgb and brought to the working size by square_uint8 or build_transforms (Resize +
CenterCrop).
"""

import inspect
import os

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

from lib import label_files
from lib.errors import BadInputError, MissingFileError, UnreadableImageError, classes_flag
from lib.synthetic_faces import SyntheticFaces
from text_prompts import DATASET_CLASSES

DATASETS = ["rafdb", "affectnet7", "affectnet8", "ferplus", "ckplus", "list", "folder", "synthetic"]
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
)

# Class names in each dataset's own label order: the words of text_prompts.DATASET_CLASSES.
RAFDB_CLASSES = list(DATASET_CLASSES["rafdb"])  # labels 1-7
AFFECTNET_CLASSES = list(DATASET_CLASSES["affectnet8"])
AFFECTNET_DROPPED = {8: "none", 9: "uncertain", 10: "non-face"}
FERPLUS_CLASSES = list(DATASET_CLASSES["ferplus"])
FERPLUS_VOTES = FERPLUS_CLASSES + ["unknown", "NF"]  # the ten vote columns of label.csv
CKPLUS_CLASSES = list(DATASET_CLASSES["ckplus"])  # codes 1-7


def load_rgb(path):
    """Any readable image file -> PIL RGB, decoded the same way for training and inference: EXIF
    orientation applied, 16-bit (and 32-bit) grey scaled to 8 bits, transparency composited over
    white, palette, CMYK and the rest converted. A file that cannot be read raises
    errors.UnreadableImageError naming it (a user error, and a RuntimeError)."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
    except Exception as e:  # truncated or corrupt file, not an image, unreadable
        raise UnreadableImageError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if a.max() > 65535 or a.min() < 0:
            a = (a - a.min()) * (255.0 / max(a.max() - a.min(), 1e-12))
        elif a.max() > 255:
            a = a / 257.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        im.mode == "P" and "transparency" in im.info
    ):
        im = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
    return im.convert("RGB")


def resize_crop(image_size):
    """Resize(S) of the shorter side, then CenterCrop(S): a no-op crop on square faces (RAF-DB,
    FERPlus) that makes other shapes batchable. The deterministic first step of every path to the
    model."""
    return [v2.Resize(image_size), v2.CenterCrop(image_size)]


def square_uint8(image, image_size):
    """PIL image -> uint8 (3, S, S) through _resize_crop: what the cache holds and inference
    feeds."""
    return v2.Compose(resize_crop(image_size) + [v2.PILToTensor()])(image)


class FaceImages(torch.utils.data.Dataset):
    """Image files with labels: .samples [(path, label) or (path, label, (x, y, w, h) face box)],
    .classes, .targets, and .dropped {reason: count} of the items the layout listed but the split
    leaves out."""

    def __init__(self, samples, classes, transform=None, name="", dropped=None):
        self.samples, self.classes = samples, list(classes)
        self.transform, self.name = transform, name
        self.targets = [s[1] for s in samples]
        self.dropped = {k: v for k, v in (dropped or {}).items() if v}

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label, *box = self.samples[index]
        image = load_rgb(path)
        if box:
            x, y, w, h = box[0]
            image = image.crop((x, y, x + w, y + h))
        return (self.transform(image) if self.transform is not None else image), label


def _require(path, what):
    if not os.path.exists(path):
        raise MissingFileError(f"{what}: expected {path} (see the README's dataset section)")
    return path


def _finish(name, split, samples, classes, transform, skip_missing, dropped=None):
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
    return FaceImages(samples, classes, transform, name, dropped)


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
    samples = []
    for where, parts in label_files.rows(label_file):
        if len(parts) != 2:
            raise BadInputError(f"{where}: expected 'name label', got {' '.join(parts)!r}")
        name, label = parts[0].strip(), label_files.int_label(parts[1], 1, 7, where)
        if name.split("_")[0] == split:
            stem, ext = os.path.splitext(name)
            samples.append(
                (os.path.join(image_dir, f"{stem}_aligned{ext}" if aligned else name), label - 1)
            )
    return samples, RAFDB_CLASSES, {}


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

    npy_dir = os.path.join(root, "train_set" if split == "train" else "val_set")
    # newer release: <set>/images/<id>.jpg + <set>/annotations/<id>_exp.npy
    if os.path.isdir(npy_dir):
        ann_dir = _require(os.path.join(npy_dir, "annotations"), "AffectNet annotations folder")
        image_dir = os.path.join(npy_dir, "images")
        samples = []
        for fname in sorted(os.listdir(ann_dir)):
            if not fname.endswith("_exp.npy"):
                continue
            path = os.path.join(ann_dir, fname)
            value = np.load(path, allow_pickle=False)
            label = label_files.int_label(
                str(value.item() if value.ndim == 0 else value.reshape(-1)[0]), 0, 10, path
            )
            if keep(label):
                samples.append((os.path.join(image_dir, fname[: -len("_exp.npy")] + ".jpg"), label))
        return samples, classes, dropped

    csv_name = "training.csv" if split == "train" else "validation.csv"
    candidates = [
        os.path.join(root, csv_name),
        os.path.join(root, "Manually_Annotated_file_lists", csv_name),
    ]
    csv_path = next((p for p in candidates if os.path.isfile(p)), None)
    if csv_path is None:
        raise MissingFileError(
            f"AffectNet: found neither the csv release ({' or '.join(candidates)} with images "
            f"under {os.path.join(root, 'Manually_Annotated_Images')}) nor the npy release "
            f"({npy_dir}/images/<id>.jpg and {npy_dir}/annotations/<id>_exp.npy)"
        )
    image_dir, samples, header = os.path.join(root, "Manually_Annotated_Images"), [], None
    for where, row in label_files.rows(csv_path, comma=True):
        if header is None:
            header = row
            if "subDirectory_filePath" not in row or "expression" not in row:
                raise BadInputError(
                    f"{where}: expected a header with subDirectory_filePath and expression, got "
                    f"{row}"
                )
            i_path, i_expr = row.index("subDirectory_filePath"), row.index("expression")
            continue
        if len(row) != len(header):
            raise BadInputError(f"{where}: expected {len(header)} columns, got {len(row)}")
        label = label_files.int_label(row[i_expr], 0, 10, where)
        if not keep(label):
            continue
        samples.append((os.path.join(image_dir, row[i_path]), label))
        if crop_face:  # (x, y, w, h) face box of the csv, applied when the image is read
            try:
                samples[-1] += (
                    tuple(
                        int(float(row[header.index(k)]))
                        for k in ("face_x", "face_y", "face_width", "face_height")
                    ),
                )
            except ValueError:
                raise BadInputError(f"{where}: face box {row[1:5]} is not numeric") from None
    return samples, classes, dropped


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


def _ferplus(root, split):
    folders = {
        "train": "FER2013Train",
        "valid": "FER2013Valid",
        "val": "FER2013Valid",
        "test": "FER2013Test",
    }
    if split not in folders:
        raise BadInputError(f"ferplus split must be one of {sorted(folders)}, got {split!r}")
    folder = os.path.join(root, folders[split])
    label_file = _require(
        os.path.join(folder, "label.csv"),
        f"FERPlus label file (root/{folders[split]}/label.csv next to the PNGs)",
    )
    samples, dropped = [], {"no majority vote": 0, "majority unknown or NF": 0}
    for where, row in label_files.rows(label_file, comma=True):
        if len(row) != 12:
            raise BadInputError(
                f"{where}: expected 12 columns (name, box, 10 vote counts), got {len(row)}"
            )
        label = ferplus_majority([label_files.int_label(v, 0, 1000, where) for v in row[2:]])
        if label is None or label >= 8:
            dropped["no majority vote" if label is None else "majority unknown or NF"] += 1
        else:
            samples.append((os.path.join(folder, row[0]), label))
    return samples, FERPLUS_CLASSES, dropped


def _image_files(folder):
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))


def _ckplus(root, split, fold=0, num_folds=10, include_neutral=False, last_frames=3):
    img_root = _require(
        os.path.join(root, "cohn-kanade-images"), "CK+ image folder (root/cohn-kanade-images/)"
    )
    emo_root = _require(os.path.join(root, "Emotion"), "CK+ label folder (root/Emotion/)")
    if split not in ("train", "test", "all"):
        raise BadInputError(f"ckplus split must be 'train', 'test' or 'all', got {split!r}")
    if not 0 <= fold < num_folds:
        raise BadInputError(f"ckplus fold must be in 0..{num_folds - 1}, got {fold}")
    subjects = sorted(d for d in os.listdir(emo_root) if os.path.isdir(os.path.join(emo_root, d)))
    samples, unlabelled = [], 0
    # subject-independent folds: subject k goes to fold k % num_folds
    for k, subject in enumerate(subjects):
        in_test = k % num_folds == fold
        if (split == "train" and in_test) or (split == "test" and not in_test):
            continue
        for seq in sorted(os.listdir(os.path.join(emo_root, subject))):
            seq_dir = os.path.join(emo_root, subject, seq)
            labels = (
                [f for f in sorted(os.listdir(seq_dir)) if f.endswith("_emotion.txt")]
                if os.path.isdir(seq_dir)
                else []
            )
            if not labels:
                unlabelled += 1
                continue
            label_file = os.path.join(seq_dir, labels[0])
            with open(label_file, encoding="utf-8-sig") as f:
                code = label_files.int_label(f.read().strip(), 1, 7, f"{label_file}:1")
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
    return samples, list(DATASET_CLASSES["ckplus_neutral" if include_neutral else "ckplus"]), {}


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
    # the released code's format: "relative/path label" lines, 0-based labels, root-relative paths
    classes = _resolve_classes(classes)
    list_file = list_file or os.path.join(root, f"{split}_label.txt")
    _require(list_file, "list file of 'relative/path label' lines (pass list_file=...)")
    samples = []
    for where, parts in label_files.rows(list_file):
        if len(parts) != 2:
            raise BadInputError(f"{where}: expected 'relative/path label', got {' '.join(parts)!r}")
        label = label_files.int_label(parts[1], 0, len(classes) - 1, where)
        samples.append((os.path.join(root, parts[0].strip()), label))
    return samples, classes, {}


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
    return samples, classes, {"not image files": other}


def build_dataset(name, root, split, transform=None, skip_missing=False, **options):
    """Dataset with .classes and .targets; item (PIL RGB image or transform(image), label int).

    name: rafdb (aligned=True), affectnet7, affectnet8, ferplus (split train|valid|test), ckplus
    (fold, num_folds, include_neutral, last_frames; split train|test|all), list (list_file,
    classes), folder (classes), synthetic (num_train, num_test, seed, image_size; root unused).
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
    samples, classes, dropped = builders[name](root, split, **options)
    return _finish(name, split, samples, classes, transform, skip_missing, dropped)


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
