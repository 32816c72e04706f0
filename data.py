"""Datasets in the layouts they ship in, the released per-sample transforms, and the cached fast path.

build_dataset(name, root, split) reads RAF-DB, AffectNet (csv and npy releases), FERPlus, CK+, the
released code's list files, class folders, or draws synthetic faces (synthetic_faces.py). Items are
(PIL RGB image, label) unless a transform is given. Nothing is dropped silently: every drop is counted
and printed; a missing root or label file names the expected path and layout.

Fast path: cache_images decodes once into uint8 [N, 3, S, S]; BatchAugment applies the released recipe
(crop p=0.5 pad 4, hflip, normalise, erasing p=0.5) to whole batches on any device, with randomness
drawn only from a passed torch.Generator so a resumed run replays exactly.
"""
import csv
import inspect
import math
import os

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torchvision.transforms import v2

from synthetic_faces import SyntheticFaces

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# Class names in each dataset's own label order (the words of text_prompts.py).
RAFDB_CLASSES = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]  # labels 1-7
AFFECTNET_CLASSES = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt"]
AFFECTNET_DROPPED = {8: "none", 9: "uncertain", 10: "non-face"}
FERPLUS_CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
FERPLUS_VOTES = FERPLUS_CLASSES + ["unknown", "NF"]  # the ten vote columns of label.csv
CKPLUS_CLASSES = ["anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise"]  # codes 1-7
CLASS_LISTS = {"rafdb": RAFDB_CLASSES, "affectnet7": AFFECTNET_CLASSES[:7], "affectnet8": AFFECTNET_CLASSES,
               "ferplus": FERPLUS_CLASSES, "ckplus": CKPLUS_CLASSES, "ckplus_neutral": CKPLUS_CLASSES + ["neutral"],
               "synthetic": RAFDB_CLASSES}
_ALIASES = {"happy": "happiness", "sad": "sadness", "angry": "anger", "surprised": "surprise",
            "fearful": "fear", "disgusted": "disgust", "neutrality": "neutral"}


def _load_rgb(path):
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:  # truncated or corrupt file, not an image, unreadable
        raise RuntimeError(f"cannot read image {path}: {e}") from e


class FaceImages(torch.utils.data.Dataset):
    """Image files with labels: .samples [(path, label) or (path, label, (x, y, w, h) face box)], .classes, .targets."""

    def __init__(self, samples, classes, transform=None, name=""):
        self.samples, self.classes, self.transform, self.name = samples, list(classes), transform, name
        self.targets = [s[1] for s in samples]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label, *box = self.samples[index]
        image = _load_rgb(path)
        if box:
            x, y, w, h = box[0]
            image = image.crop((x, y, x + w, y + h))
        return (self.transform(image) if self.transform is not None else image), label


def _require(path, what):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what}: expected {path} (see the README's dataset section)")
    return path


def _finish(name, split, samples, classes, transform, skip_missing, dropped=None):
    """Check that every listed image exists, print drops, refuse an empty split."""
    for reason, count in (dropped or {}).items():
        if count:
            print(f"{name} {split}: dropped {count:,} items ({reason})")
    missing = [s[0] for s in samples if not os.path.isfile(s[0])]
    if missing:
        if not skip_missing:
            shown = "\n  ".join(missing[:5])
            raise FileNotFoundError(f"{name} {split}: {len(missing):,} listed images do not exist, e.g.\n  {shown}\n"
                                    "pass skip_missing=True (train.py --skip-missing) to skip them")
        gone = set(missing)
        samples = [s for s in samples if s[0] not in gone]
        print(f"{name} {split}: skipped {len(missing):,} listed images that do not exist (skip_missing=True)")
    if not samples:
        raise ValueError(f"{name} {split}: no images in this split")
    return FaceImages(samples, classes, transform, name)


def _rows(path, comma=False):
    """(where "file:line", fields) for each non-empty line of a label file."""
    with open(path, newline="", encoding="utf-8") as f:
        lines = csv.reader(f) if comma else (line.rsplit(None, 1) for line in f)
        for line_no, row in enumerate(lines, 1):
            if row:
                yield f"{path}:{line_no}", row


def _int_label(text, low, high, where):
    try:
        value = int(float(text))
    except ValueError:
        raise ValueError(f"{where}: label {text!r} is not a number") from None
    if not (low <= value <= high and float(text) == value):
        raise ValueError(f"{where}: label {text!r} out of range {low}..{high}")
    return value


def _rafdb(root, split, aligned=True):
    # root/EmoLabel/list_patition_label.txt: "train_00001.jpg 5", labels 1-7 in RAFDB_CLASSES order
    label_file = _require(os.path.join(root, "EmoLabel", "list_patition_label.txt"),
                          "RAF-DB label file (root/EmoLabel/list_patition_label.txt)")
    if split not in ("train", "test"):
        raise ValueError(f"rafdb split must be 'train' or 'test', got {split!r}")
    image_dir = _require(os.path.join(root, "Image", "aligned" if aligned else "original"),
                         "RAF-DB image folder (root/Image/aligned/ or root/Image/original/)")
    samples = []
    for where, parts in _rows(label_file):
        if len(parts) != 2:
            raise ValueError(f"{where}: expected 'name label', got {' '.join(parts)!r}")
        name, label = parts[0].strip(), _int_label(parts[1], 1, 7, where)
        if name.split("_")[0] == split:
            stem, ext = os.path.splitext(name)
            samples.append((os.path.join(image_dir, f"{stem}_aligned{ext}" if aligned else name), label - 1))
    return samples, RAFDB_CLASSES, {}


def _affectnet(root, split, num_classes, crop_face=False):
    classes = AFFECTNET_CLASSES[:num_classes]
    if split not in ("train", "test"):
        raise ValueError(f"affectnet split must be 'train' or 'test' (the official validation set), got {split!r}")
    dropped = {}

    def keep(label):
        if label < num_classes:
            return True
        reason = f"label {label} {AFFECTNET_DROPPED.get(label, 'contempt')}"
        dropped[reason] = dropped.get(reason, 0) + 1
        return False

    npy_dir = os.path.join(root, "train_set" if split == "train" else "val_set")
    if os.path.isdir(npy_dir):  # newer release: <set>/images/<id>.jpg + <set>/annotations/<id>_exp.npy
        ann_dir = _require(os.path.join(npy_dir, "annotations"), "AffectNet annotations folder")
        image_dir = os.path.join(npy_dir, "images")
        samples = []
        for fname in sorted(os.listdir(ann_dir)):
            if not fname.endswith("_exp.npy"):
                continue
            path = os.path.join(ann_dir, fname)
            value = np.load(path, allow_pickle=False)
            label = _int_label(str(value.item() if value.ndim == 0 else value.reshape(-1)[0]), 0, 10, path)
            if keep(label):
                samples.append((os.path.join(image_dir, fname[:-len("_exp.npy")] + ".jpg"), label))
        return samples, classes, dropped

    csv_name = "training.csv" if split == "train" else "validation.csv"
    candidates = [os.path.join(root, csv_name), os.path.join(root, "Manually_Annotated_file_lists", csv_name)]
    csv_path = next((p for p in candidates if os.path.isfile(p)), None)
    if csv_path is None:
        raise FileNotFoundError(
            f"AffectNet: found neither the csv release ({' or '.join(candidates)} with images under "
            f"{os.path.join(root, 'Manually_Annotated_Images')}) nor the npy release ({npy_dir}/images/<id>.jpg "
            f"and {npy_dir}/annotations/<id>_exp.npy)")
    image_dir, samples, header = os.path.join(root, "Manually_Annotated_Images"), [], None
    for where, row in _rows(csv_path, comma=True):
        if header is None:
            header = row
            if "subDirectory_filePath" not in row or "expression" not in row:
                raise ValueError(f"{where}: expected a header with subDirectory_filePath and expression, got {row}")
            i_path, i_expr = row.index("subDirectory_filePath"), row.index("expression")
            continue
        if len(row) != len(header):
            raise ValueError(f"{where}: expected {len(header)} columns, got {len(row)}")
        label = _int_label(row[i_expr], 0, 10, where)
        if not keep(label):
            continue
        samples.append((os.path.join(image_dir, row[i_path]), label))
        if crop_face:  # (x, y, w, h) face box of the csv, applied when the image is read
            try:
                samples[-1] += (tuple(int(float(row[header.index(k)])) for k in ("face_x", "face_y", "face_width",
                                                                                  "face_height")),)
            except ValueError:
                raise ValueError(f"{where}: face box {row[1:5]} is not numeric") from None
    return samples, classes, dropped


def ferplus_majority(votes):
    """Microsoft's FERPlus 'majority' rule: the column (0-9, FERPLUS_VOTES) of the ten vote counts, or None.

    Single votes are zeroed as noise; a column wins when it holds more than half of the remaining votes.
    A face with no winner, or won by 'unknown' (8) or 'NF' (9), is dropped, as the reference code does.
    """
    votes = [v if v > 1 else 0 for v in votes]
    top = max(range(len(votes)), key=lambda k: votes[k])
    return top if votes[top] > 0.5 * sum(votes) else None


def _ferplus(root, split):
    folders = {"train": "FER2013Train", "valid": "FER2013Valid", "val": "FER2013Valid", "test": "FER2013Test"}
    if split not in folders:
        raise ValueError(f"ferplus split must be one of {sorted(folders)}, got {split!r}")
    folder = os.path.join(root, folders[split])
    label_file = _require(os.path.join(folder, "label.csv"),
                          f"FERPlus label file (root/{folders[split]}/label.csv next to the PNGs)")
    samples, dropped = [], {"no majority vote": 0, "majority unknown or NF": 0}
    for where, row in _rows(label_file, comma=True):
        if len(row) != 12:
            raise ValueError(f"{where}: expected 12 columns (name, box, 10 vote counts), got {len(row)}")
        label = ferplus_majority([_int_label(v, 0, 1000, where) for v in row[2:]])
        if label is None or label >= 8:
            dropped["no majority vote" if label is None else "majority unknown or NF"] += 1
        else:
            samples.append((os.path.join(folder, row[0]), label))
    return samples, FERPLUS_CLASSES, dropped


def _image_files(folder):
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))


def _ckplus(root, split, fold=0, num_folds=10, include_neutral=False, last_frames=3):
    img_root = _require(os.path.join(root, "cohn-kanade-images"), "CK+ image folder (root/cohn-kanade-images/)")
    emo_root = _require(os.path.join(root, "Emotion"), "CK+ label folder (root/Emotion/)")
    if split not in ("train", "test", "all"):
        raise ValueError(f"ckplus split must be 'train', 'test' or 'all', got {split!r}")
    if not 0 <= fold < num_folds:
        raise ValueError(f"ckplus fold must be in 0..{num_folds - 1}, got {fold}")
    subjects = sorted(d for d in os.listdir(emo_root) if os.path.isdir(os.path.join(emo_root, d)))
    samples, unlabelled = [], 0
    for k, subject in enumerate(subjects):  # subject-independent folds: subject k goes to fold k % num_folds
        in_test = k % num_folds == fold
        if (split == "train" and in_test) or (split == "test" and not in_test):
            continue
        for seq in sorted(os.listdir(os.path.join(emo_root, subject))):
            seq_dir = os.path.join(emo_root, subject, seq)
            labels = [f for f in sorted(os.listdir(seq_dir)) if f.endswith("_emotion.txt")] if os.path.isdir(
                seq_dir) else []
            if not labels:
                unlabelled += 1
                continue
            label_file = os.path.join(seq_dir, labels[0])
            with open(label_file, encoding="utf-8") as f:
                code = _int_label(f.read().strip(), 1, 7, f"{label_file}:1")
            frame_dir = _require(os.path.join(img_root, subject, seq), f"CK+ frames of {label_file}")
            frames = _image_files(frame_dir)
            if not frames:
                raise ValueError(f"CK+ sequence folder {frame_dir} holds no images (labelled by {label_file})")
            for fname in frames[-last_frames:]:
                samples.append((os.path.join(frame_dir, fname), code - 1))
            if include_neutral:  # neutral is appended as the last class (index 7)
                samples.append((os.path.join(frame_dir, frames[0]), 7))
    if unlabelled:
        print(f"ckplus {split}: {unlabelled} sequences have no emotion label (CK+ ships them unlabelled); not used")
    return samples, CLASS_LISTS["ckplus_neutral" if include_neutral else "ckplus"], {}


def _resolve_classes(classes):
    if isinstance(classes, str):
        if classes not in CLASS_LISTS:
            raise ValueError(f"unknown class list {classes!r}; known: {sorted(CLASS_LISTS)}")
        return list(CLASS_LISTS[classes])
    return list(classes)


def _list(root, split, list_file=None, classes="rafdb"):
    # the released code's format: "relative/path label" lines, 0-based labels, paths relative to root
    classes = _resolve_classes(classes)
    list_file = list_file or os.path.join(root, f"{split}_label.txt")
    _require(list_file, "list file of 'relative/path label' lines (pass list_file=...)")
    samples = []
    for where, parts in _rows(list_file):
        if len(parts) != 2:
            raise ValueError(f"{where}: expected 'relative/path label', got {' '.join(parts)!r}")
        samples.append((os.path.join(root, parts[0].strip()), _int_label(parts[1], 0, len(classes) - 1, where)))
    return samples, classes, {}


def _folder(root, split, classes=None):
    base = os.path.join(root, split) if split not in (None, "", "all") else root
    _require(base, "folder with one sub-folder per class (root/<split>/<class>/*.jpg)")
    found = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
    classes = _resolve_classes(classes) if classes is not None else found
    unknown = [d for d in found if d not in classes]
    if unknown:
        raise ValueError(f"{base}: sub-folders {unknown} are not among the classes {classes}")
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

    name: rafdb (aligned=True), affectnet7, affectnet8, ferplus (split train|valid|test), ckplus (fold,
    num_folds, include_neutral, last_frames; split train|test|all), list (list_file, classes), folder
    (classes), synthetic (num_train, num_test, seed, image_size; root unused).
    skip_missing: skip listed images that do not exist (printing how many) instead of raising.
    """
    if name == "synthetic":
        o = dict(num_train=2800, num_test=700, seed=0, image_size=64)
        bad = set(options) - set(o)
        if bad:
            raise TypeError(f"synthetic: unknown options {sorted(bad)}; accepted: {sorted(o)}")
        o.update(options)
        return SyntheticFaces(o[f"num_{split}"] if split in ("train", "test") else 0, split, o["seed"],
                              o["image_size"], transform)
    builders = {"rafdb": _rafdb, "affectnet7": lambda r, s, crop_face=False: _affectnet(r, s, 7, crop_face),
                "affectnet8": lambda r, s, crop_face=False: _affectnet(r, s, 8, crop_face), "ferplus": _ferplus, "ckplus": _ckplus,
                "list": _list, "folder": _folder}
    if name not in builders:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(builders) + ['synthetic']}")
    if root is None or not os.path.isdir(root):
        raise FileNotFoundError(f"{name}: dataset root {root} is not a folder (see the README's dataset section)")
    accepted = list(inspect.signature(builders[name]).parameters)[2:]
    if set(options) - set(accepted):
        raise TypeError(f"{name}: unknown options {sorted(set(options) - set(accepted))}; accepted: {accepted}")
    samples, classes, dropped = builders[name](root, split, **options)
    return _finish(name, split, samples, classes, transform, skip_missing, dropped)


def map_labels(source_classes, target_classes):
    """For each source class index, the index of the same class name in target_classes, or None."""
    canon = lambda c: _ALIASES.get(c.lower(), c.lower())  # noqa: E731
    target = [canon(c) for c in target_classes]
    return [target.index(canon(c)) if canon(c) in target else None for c in source_classes]


def class_balanced_sampler(targets, generator=None):
    """Sampler drawing len(targets) indices with replacement, each class equally likely."""
    t = torch.as_tensor(list(targets), dtype=torch.long)
    weights = 1.0 / torch.bincount(t).double()[t]  # (N,)
    return torch.utils.data.WeightedRandomSampler(weights, len(t), replacement=True, generator=generator)


def build_transforms(train, image_size=112, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Per-sample PIL -> float [3, S, S] transform, the released recipe (torchvision.transforms.v2).

    Resize(S) (shorter side) then CenterCrop(S): the crop is a no-op on square faces (RAF-DB, FERPlus) and
    makes other shapes batchable. Train adds RandomApply(RandomCrop(S, padding=4), p=0.5), horizontal
    flip, and RandomErasing(scale=(0.02, 0.25)) after Normalize, as the released code does.
    """
    ops = [v2.Resize(image_size), v2.CenterCrop(image_size)]
    if train:
        ops += [v2.RandomApply([v2.RandomCrop(image_size, padding=4)], p=0.5), v2.RandomHorizontalFlip()]
    ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if train:
        ops += [v2.RandomErasing(scale=(0.02, 0.25))]
    return v2.Compose(ops)


def available_memory():
    """Bytes of RAM available now (MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class _Resized(torch.utils.data.Dataset):
    def __init__(self, dataset, size):
        self.dataset, self.resize = dataset, v2.Compose([v2.Resize(size), v2.CenterCrop(size), v2.PILToTensor()])

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset[index]
        if not isinstance(image, Image.Image):
            raise TypeError(f"cache_images needs a dataset built with transform=None (PIL items), got {type(image)}")
        return self.resize(image), label


def cache_images(dataset, image_size, num_workers=0, max_bytes=None, batch_size=256):
    """Decode every image once: (uint8 [N, 3, S, S], LongTensor [N]), or None when it would not fit.

    Images go through Resize(S) + CenterCrop(S), the deterministic part of build_transforms.
    max_bytes defaults to half the RAM available now.
    """
    n = len(dataset)
    n_bytes = n * 3 * image_size * image_size
    if max_bytes is None:
        avail = available_memory()
        max_bytes = avail // 2 if avail is not None else float("inf")
    print(f"cache: {n:,} images at {image_size}x{image_size} uint8 = {n_bytes / 2**20:,.1f} MiB")
    if n_bytes > max_bytes:
        print(f"cache: {n_bytes / 2**20:,.1f} MiB exceeds the limit of {max_bytes / 2**20:,.1f} MiB; "
              "not caching (images will be decoded per step)")
        return None
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    labels = torch.empty(n, dtype=torch.long)
    loader = torch.utils.data.DataLoader(_Resized(dataset, image_size), batch_size=batch_size,
                                         num_workers=num_workers, shuffle=False)
    i = 0
    for x, y in loader:
        images[i:i + len(x)], labels[i:i + len(x)] = x, y
        i += len(x)
    return images, labels


class BatchAugment(nn.Module):
    """The released recipe on a batch: uint8 [B, 3, S, S] -> normalised float [B, 3, S, S].

    train=True: per sample, with p=0.5 a random crop of the 4-pixel zero-padded image, a horizontal flip
    with p=0.5, Normalize, then with p=0.5 a zero (in normalised space) rectangle of area fraction
    U(0.02, 0.25) and aspect exp(U(log 0.3, log 3.3)) (torchvision's RandomErasing, 10 tries).
    train=False: Normalize only. All randomness comes from `generator` (its device; CPU by default).
    """

    def __init__(self, image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, train=True,
                 crop_p=0.5, padding=4, flip_p=0.5, erase_p=0.5, erase_scale=(0.02, 0.25), erase_ratio=(0.3, 3.3)):
        super().__init__()
        self.image_size, self.train_mode, self.padding = image_size, train, padding
        self.crop_p, self.flip_p, self.erase_p = crop_p, flip_p, erase_p
        self.erase_scale, self.erase_ratio = erase_scale, erase_ratio
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images, generator=None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError(f"BatchAugment expects uint8 [B, 3, S, S], got {images.dtype} {tuple(images.shape)}")
        if self.train_mode:
            images = self._crop_flip(images, generator)  # still uint8: a quarter of the memory traffic
        x = images.float().mul_(1.0 / 255).sub_(self.mean.to(images.device)).div_(self.std.to(images.device))
        if self.train_mode:
            x.masked_fill_(self._erase_mask(x, generator), 0.0)
        return x  # (B, 3, S, S)

    def _rand(self, generator, *shape):
        dev = generator.device if generator is not None else "cpu"
        return torch.rand(*shape, generator=generator, device=dev)

    def _crop_flip(self, images, generator):
        B, C, H, W = images.shape
        P, dev = self.padding, images.device
        u = self._rand(generator, B, 4).to(dev)  # (B, 4): crop?, row offset, column offset, flip?
        crop = u[:, 0] < self.crop_p
        off_i = torch.where(crop, (u[:, 1] * (2 * P + 1)).long().clamp_(max=2 * P), P)  # (B,) in 0..2P
        off_j = torch.where(crop, (u[:, 2] * (2 * P + 1)).long().clamp_(max=2 * P), P)
        r, c = torch.arange(H, device=dev), torch.arange(W, device=dev)
        rows = off_i[:, None] + r  # (B, H)
        cols = off_j[:, None] + torch.where((u[:, 3] < self.flip_p)[:, None], c.flip(0), c)  # (B, W), flip folded in
        padded = nn.functional.pad(images, (P, P, P, P))  # (B, C, H+2P, W+2P), zeros = black as in RandomCrop
        out = padded.gather(2, rows[:, None, :, None].expand(B, C, H, W + 2 * P))
        return out.gather(3, cols[:, None, None, :].expand(B, C, H, W))

    def _erase_mask(self, x, generator):
        B, _, H, W = x.shape
        u = self._rand(generator, B, 10, 4).to(x.device).double()  # 10 tries: area, log-ratio, top, left
        lo, hi = self.erase_scale
        area = H * W * (lo + (hi - lo) * u[..., 0])
        log_r = math.log(self.erase_ratio[0]) + (math.log(self.erase_ratio[1]) - math.log(self.erase_ratio[0])) * u[..., 1]
        h = torch.sqrt(area * torch.exp(log_r)).round().long()  # (B, 10)
        w = torch.sqrt(area / torch.exp(log_r)).round().long()
        ok = (h < H) & (w < W)
        first = torch.where(ok.any(1), ok.float().argmax(1), 0)[:, None]  # first fitting try, (B, 1)
        h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]  # (B,)
        top = (u[..., 2].gather(1, first)[:, 0] * (H - h + 1)).long().clamp_(max=H - h)
        left = (u[..., 3].gather(1, first)[:, 0] * (W - w + 1)).long().clamp_(max=W - w)
        on = (self._rand(generator, B).to(x.device) < self.erase_p) & ok.any(1)  # (B,)
        r = torch.arange(H, device=x.device)[None, :, None]
        c = torch.arange(W, device=x.device)[None, None, :]
        m = (r >= top[:, None, None]) & (r < (top + h)[:, None, None]) & (c >= left[:, None, None]) & (
            c < (left + w)[:, None, None])  # (B, H, W)
        return (m & on[:, None, None])[:, None]  # (B, 1, H, W)
