"""Dataset check: read a dataset exactly as training reads it and compare it with the published
release.

check_dataset(name, root, **options) builds every split with data.build_dataset and reports, per
split, the images found, the images per class, the items dropped and why, the image sizes seen on a
sample, whether they look like the release the paper used (the aligned RAF-DB faces, the 48x48
FERPlus PNGs, the CK+ frames), and the dataset's published counts with where each comes from.
format_check(report) prints it with one verdict line; one_line_comparison(name, split_counts) is the
line train.py prints when it starts. A count that differs from the published one is a warning, not
an error.

Command line (also reached as `python data.py --check ...`):
    python -m tools.dataset_check --check --dataset rafdb --data-root DIR
Exit status: 0 when the dataset was read (even with warnings), 2 when its layout cannot be read.
"""

import argparse
import contextlib
import io
import os
import re
import sys
from collections import Counter

from PIL import Image

import data
from lib import errors

SAMPLE_IMAGES = 200  # images per split whose size is read (evenly spaced, so the check stays fast)

# Published counts; each "source" says where the figure comes from. Splits are this code's split
# names (AffectNet's "test" is the official validation set, as data.build_dataset reads it). Where a
# dataset ships in more than one form, RELEASES holds each form's figures under the start of the
# name data.build_dataset gives what it read (the dataset's .release).
_AFFECTNET_TRAIN_7 = {
    "neutral": 74874,
    "happiness": 134415,
    "sadness": 25459,
    "surprise": 14090,
    "fear": 6378,
    "disgust": 3803,
    "anger": 24882,
}
_AFFECTNET_TRAIN_8 = {**_AFFECTNET_TRAIN_7, "contempt": 3750}  # 287,651 - 283,901 (POSTER)
_AFFECTNET_CSV = (
    "Mollahosseini et al., IEEE TAC 2017: the validation set holds 500 images per expression; "
    "training counts per class as counted from the csv release's training.csv "
    "(github.com/coder-xinxiaohai/AffectNet-7_Processing README); contempt's 3,750 from the npy "
    "release's totals (below)"
)
_AFFECTNET_NPY = (
    "zczcwh/POSTER, data_preprocessing/dataset_affectnet_8class.py: the npy release holds 283,901 "
    "(7 classes) / 287,651 (8 classes) training and 3,500 / 3,999 validation images"
)


def _affectnet(classes, csv_test, npy_test):
    train = _AFFECTNET_TRAIN_8 if classes == 8 else _AFFECTNET_TRAIN_7
    per_class_test = dict.fromkeys(data.AFFECTNET_CLASSES[:classes], 500)
    splits = {"train": sum(train.values())}
    return {
        "csv release": dict(
            release=f"AffectNet csv release ({classes} classes)",
            splits={**splits, "test": csv_test},
            per_class={"train": train, "test": per_class_test},
            source=_AFFECTNET_CSV,
        ),
        "npy release": dict(
            release=f"AffectNet npy release ({classes} classes)",
            splits={**splits, "test": npy_test},
            source=_AFFECTNET_NPY,
        ),
    }


_FERPLUS_RULE = "the majority rule of data.ferplus_majority (Microsoft's src/ferplus.py 'majority')"
RELEASES = {
    "affectnet7": _affectnet(7, 3500, 3500),
    "affectnet8": _affectnet(8, 4000, 3999),
    "ferplus": {
        "master label.csv": dict(
            release="FERPlus with its master label.csv",
            splits={"train": 25045, "valid": 3191, "test": 3137},
            before_rule={"train": 28558, "valid": 3579, "test": 3573},
            source="counted from microsoft/FERPlus data/FER2013{Train,Valid,Test}/label.csv: "
            f"28,558 / 3,579 / 3,573 named rows, 25,045 / 3,191 / 3,137 kept by {_FERPLUS_RULE}",
        ),
        "fer2013new.csv labels": dict(
            release="FERPlus with labels from fer2013new.csv",
            splits={},
            before_rule={},
            source="no published counts for the label.csv files written from fer2013new.csv; its "
            "votes differ from master label.csv's for 1,073 / 246 / 282 images (train / valid / "
            "test), and the majority label for 270 / 53 / 68",
        ),
    },
}
OFFICIAL = {
    "rafdb": dict(
        release="RAF-DB basic release",
        splits={"train": 12271, "test": 3068},
        source=(
            "Li, Deng & Du, CVPR 2017 (RAF-DB basic emotions: 15,339 images, 12,271 train / "
            "3,068 test)"
        ),
    ),
    "ckplus": dict(
        release="CK+ emotion-labelled sequences",
        splits={},
        sequences=327,
        source="Lucey et al., CVPR Workshops 2010, and the CK+ distribution README: 327 of the 593 "
        "sequences (123 subjects) carry an emotion label",
    ),
}


def official_figures(name, release=None):
    """The published figures for dataset `name` as read (`release`: the dataset's .release), or {}
    where none are known."""
    for start, figures in RELEASES.get(name, {}).items():
        if release and release.startswith(start):
            return figures
    return OFFICIAL.get(name, {})


_SPLITS = {
    "rafdb": ["train", "test"],
    "affectnet7": ["train", "test"],
    "affectnet8": ["train", "test"],
    "ferplus": ["train", "valid", "test"],
    "ckplus": ["train", "test"],
    "list": ["train", "test"],
    "folder": ["train", "test"],
}
_UNLABELLED_LINE = re.compile(r"(\d+) sequences have no emotion label")


def dataset_splits(name, root, options):
    """The splits training can read for this dataset; for list/folder, those whose file or folder
    exists."""
    if name not in _SPLITS:
        raise ValueError(f"--check: unknown dataset {name!r}; known: {sorted(_SPLITS)}")
    splits = _SPLITS[name]
    if name == "list":  # the splits whose file exists: --list-file with {split}, or the default
        pattern = options.get("list_file") or os.path.join(root or "", "{split}_label.txt")
        splits = [s for s in splits if os.path.isfile(pattern.replace("{split}", s))] or ["train"]
    elif name == "folder":
        splits = [s for s in splits if os.path.isdir(os.path.join(root or "", s))] or ["train"]
    return splits


def _read_split(name, root, split, options):
    """data.build_dataset for one split, its printed notes captured: (dataset, {reason: n dropped},
    lines)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        ds = data.build_dataset(name, root, split, **options)
    lines = [ln.strip() for ln in buffer.getvalue().splitlines() if ln.strip()]
    dropped = dict(getattr(ds, "dropped", {}))  # synthetic faces drop nothing and carry no record
    m = next((_UNLABELLED_LINE.search(ln) for ln in lines if _UNLABELLED_LINE.search(ln)), None)
    # CK+ ships some sequences without an emotion label: not a drop of ours, but worth showing
    if m:
        dropped["sequence has no emotion label"] = int(m.group(1))
    return ds, dropped, lines


def sample_sizes(samples, limit=SAMPLE_IMAGES):
    """Sizes and modes of up to `limit` evenly spaced images: {"sampled", "sizes" {"WxH": n},
    "modes", "unreadable"}."""
    step = max(1, -(-len(samples) // limit))  # ceil(N / limit)
    sizes, modes, unreadable = Counter(), Counter(), []
    for path, *_ in samples[::step][:limit]:
        try:
            with Image.open(path) as im:  # reads the header only
                sizes[f"{im.size[0]}x{im.size[1]}"] += 1
                modes[im.mode] += 1
        except Exception:  # not an image, truncated header, unreadable: training would fail on it
            unreadable.append(path)
    return dict(
        sampled=sum(sizes.values()) + len(unreadable),
        sizes=dict(sizes.most_common()),
        modes=dict(modes.most_common()),
        unreadable=unreadable,
    )


def release_look(name, sizes):
    """(looks like the release the paper used: True/False/None, one-sentence note) from the sampled
    sizes."""
    found = set(sizes["sizes"])
    if not found:
        return None, "no image could be read"
    if name == "rafdb":
        if found == {"100x100"}:
            return True, "looks like the aligned release (100x100)"
        return False, "not the aligned release: the aligned RAF-DB faces are 100x100"
    if name == "ferplus":
        if found == {"48x48"} and set(sizes["modes"]) == {"L"}:
            return True, "looks like the FERPlus release (48x48 grey)"
        return False, "not the FERPlus release as shipped: its images are 48x48 8-bit grey"
    if name == "ckplus":
        if found <= {"640x490", "640x480"}:
            return True, "looks like the CK+ frames (640x490 / 640x480)"
        return False, "not the CK+ frames as shipped (640x490 / 640x480): pre-cropped or resized?"
    if name.startswith("affectnet"):
        return None, "AffectNet face crops vary in size; no single expected size"
    return None, "no published image size to compare with"


def _ckplus_counts(samples):
    """(labelled sequences, subjects) among CK+ samples: the sequence is the frame's folder, its
    parent the subject."""
    seqs = {os.path.dirname(p) for p, *_ in samples}
    return len(seqs), len({os.path.dirname(s) for s in seqs})


def check_dataset(name, root, **options):
    """Report dict for every split training reads: counts, drops, sizes, release look, published
    figures.

    options: what train.py passes to data.build_dataset (fold, include_neutral, list_file, classes,
    ...); CK+ defaults to fold 0. Raises the FileNotFoundError / ValueError of data.build_dataset on
    a bad layout.
    """
    if name == "ckplus":
        options = {"fold": 0, **options}
    read = {
        split: _read_split(name, root, split, options)
        for split in dataset_splits(name, root, options)
    }
    if "train" in read and "test" in read:
        data.require_disjoint(read["train"][0], read["test"][0])
    # the release as read (AffectNet's csv or npy form, FERPlus's label source) and its figures
    release = getattr(next(iter(read.values()))[0], "release", None)
    official = official_figures(name, release)
    report = dict(
        dataset=name,
        root=root,
        options=dict(options),
        read_as=release,
        official=official,
        splits={},
    )
    for split, (ds, dropped, lines) in read.items():
        counts = Counter(ds.targets)
        sizes = sample_sizes(ds.samples)
        looks, look_note = release_look(name, sizes)
        entry = dict(
            images=len(ds),
            per_class={c: counts.get(i, 0) for i, c in enumerate(ds.classes)},
            dropped=dropped,
            notes=lines,
            sizes=sizes,
            looks_like_release=looks,
            look_note=look_note,
            official=official.get("splits", {}).get(split),
            official_per_class=official.get("per_class", {}).get(split),
        )
        if name == "ferplus":
            entry["before_rule"] = dict(
                read=len(ds) + sum(dropped.values()),
                official=official.get("before_rule", {}).get(split),
            )
        if name == "ckplus":
            entry["sequences"], entry["subjects"] = _ckplus_counts(ds.samples)
        report["splits"][split] = entry
    if name == "ckplus":
        report["sequences"] = sum(e["sequences"] for e in report["splits"].values())
        report["subjects"] = sum(e["subjects"] for e in report["splits"].values())
    report["warnings"] = _warnings(report)
    report["verdict"] = _verdict(report)
    return report


def _warnings(report):
    """One phrase per difference from the published release (counts, per-class counts, sizes,
    unreadable files)."""
    out = []
    for split, e in report["splits"].items():
        if e["official"] is not None and e["images"] != e["official"]:
            out.append(
                f"{e['images']:,} {split} images where the official release has {e['official']:,}"
            )
        if e["official_per_class"]:
            off = [c for c, n in e["official_per_class"].items() if e["per_class"].get(c) != n]
            if off:
                out.append(
                    f"{split} per-class counts differ from the published ones for {', '.join(off)}"
                )
        if e["looks_like_release"] is False:
            out.append(
                f"{split} images are {'/'.join(list(e['sizes']['sizes'])[:3])}: {e['look_note']}"
            )
        if e["sizes"]["unreadable"]:
            out.append(
                f"{len(e['sizes']['unreadable'])} sampled {split} images cannot be opened, "
                f"e.g. {e['sizes']['unreadable'][0]}"
            )
    seqs = report["official"].get("sequences")
    if seqs is not None and report.get("sequences") != seqs:
        out.append(f"{report['sequences']:,} labelled sequences where CK+ has {seqs:,}")
    return out


def _verdict(report):
    """One line: WARNING and the differences, or what the dataset matches; it names the form of the
    release that was read (AffectNet's csv or npy release, FERPlus's label source)."""
    read_as = f" (read as the {report['read_as']})" if report["read_as"] else ""
    if report["warnings"]:
        return f"verdict: WARNING{read_as} " + "; ".join(report["warnings"])
    compared = (
        any(e["official"] is not None for e in report["splits"].values())
        or "sequences" in report["official"]
    )
    if compared:
        return f"verdict: matches the official {report['official']['release']}"
    return (
        f"verdict: read without errors{read_as}; no published counts to compare "
        f"{report['dataset']} with"
        + (f" ({report['official']['source'].split(';')[0]})" if report["official"] else "")
    )


def _fmt_counts(d):
    return ", ".join(f"{k} {v:,}" for k, v in d.items()) if d else "none"


def format_check(report):
    """The report as text: per split, found vs published, classes, drops, sizes; the sources; one
    verdict line."""
    opts = ", ".join(f"{k}={v}" for k, v in report["options"].items()) or "none"
    lines = [f"{report['dataset']} at {report['root']} (options: {opts})"]
    if report["read_as"]:
        lines.append(f"  read as: {report['read_as']}")
    for split, e in report["splits"].items():
        off = f"official {e['official']:,}" if e["official"] is not None else "no published count"
        lines.append(f"  {split}: {e['images']:,} images ({off})")
        if "before_rule" in e:
            b = e["before_rule"]
            ref = f"{b['official']:,}" if b["official"] is not None else "no published count"
            lines.append(f"    label rows before the majority rule: {b['read']:,} ({ref})")
        if "sequences" in e:
            lines.append(
                f"    {e['sequences']:,} labelled sequences from {e['subjects']:,} subjects"
            )
        lines.append(f"    per class: {_fmt_counts(e['per_class'])}")
        lines.append(f"    dropped: {_fmt_counts(e['dropped'])}")
        s = e["sizes"]
        sizes = ", ".join(f"{k} x{v}" for k, v in list(s["sizes"].items())[:5]) or "none readable"
        lines.append(
            f"    sizes ({s['sampled']} sampled): {sizes}; modes {_fmt_counts(s['modes'])}; "
            f"{e['look_note']}"
        )
    if "sequences" in report:
        lines.append(
            f"  all splits: {report['sequences']:,} labelled sequences from {report['subjects']:,} "
            f"subjects (CK+: {report['official']['sequences']:,} sequences)"
        )
    if report["official"]:
        lines.append(f"  source: {report['official']['source']}")
    lines.append(report["verdict"])
    return "\n".join(lines)


def one_line_comparison(name, split_counts, release=None):
    """The one line train.py prints at start: {split: images} beside the published counts of the
    release as read (the dataset's .release), and a verdict."""
    official = official_figures(name, release)
    parts, off = [], []
    for split, n in split_counts.items():
        ref = official.get("splits", {}).get(split)
        parts.append(f"{split} {n:,}" + (f" (official {ref:,})" if ref is not None else ""))
        if ref is not None and n != ref:
            off.append(f"{n:,} {split} images where the official release has {ref:,}")
    line = f"data check: {name} " + ", ".join(parts)
    if off:
        return line + ": WARNING " + "; ".join(off) + " (python data.py --check for details)"
    if any(official.get("splits", {}).get(s) is not None for s in split_counts):
        return line + f": matches the official {official['release']}"
    return line + ": no published per-split image counts to compare with"


def build_parser():
    p = argparse.ArgumentParser(
        description="Check a dataset against its published release (as training reads it)."
    )
    p.add_argument("--check", action="store_true", required=True, help="run the dataset check")
    p.add_argument("--dataset", required=True, choices=sorted(_SPLITS))
    p.add_argument(
        "--data-root", required=True, help="dataset folder (see the README's dataset section)"
    )
    p.add_argument("--fold", type=int, default=None, help="CK+: the test fold (default 0)")
    p.add_argument(
        "--include-neutral", action="store_true", help="CK+: add the neutral first frames"
    )
    p.add_argument(
        "--list-file", default=None, help="list: 'relative/path label' files ({split}: each split)"
    )
    p.add_argument(
        "--classes",
        default=None,
        help="list/folder: class order, a dataset name or comma-separated words",
    )
    p.add_argument(
        "--skip-missing",
        action="store_true",
        help="count listed images that do not exist instead of failing",
    )
    return p


def main(argv=None):
    """Command line: print the check and return 0, or print one error line naming the path and
    return 2."""
    args = build_parser().parse_args(argv)
    try:
        report = check_dataset(args.dataset, args.data_root, **data.dataset_options(args))
    except (
        errors.UserError
    ) as e:  # a layout that cannot be read: one line naming the path; bugs keep their traceback
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return e.exit_code
    print(format_check(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
