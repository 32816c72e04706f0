"""Dataset check: read a dataset as training does and compare its images per split, per class, the
drops and a sample of image sizes with the published release (a difference is a warning).

    python -m tools.dataset_check --dataset rafdb --data-root DIR
Exit status 0 when the dataset was read (even with warnings), 2 when its layout cannot be read.
"""

import argparse
import os
import sys
from collections import Counter

from PIL import Image

import data
from lib.errors import BadInputError

_AN_CSV = "Mollahosseini et al., IEEE TAC 2017: 500 validation images per class"
_AN_NPY = "zczcwh/POSTER data_preprocessing: the npy release's training and validation totals"
_FER = "counted from microsoft/FERPlus label.csv, kept by the majority rule (data.ferplus_majority)"
_RAF = "Li, Deng & Du, CVPR 2017: 15,339 images"
PUBLISHED = {  # (dataset, start of the .release read): (release, {split: images}, source)
    ("rafdb", ""): ("RAF-DB basic release", dict(train=12271, test=3068), _RAF),
    ("affectnet7", "csv"): ("AffectNet csv release", dict(train=283901, test=3500), _AN_CSV),
    ("affectnet7", "npy"): ("AffectNet npy release", dict(train=283901, test=3500), _AN_NPY),
    ("affectnet8", "csv"): ("AffectNet csv release", dict(train=287651, test=4000), _AN_CSV),
    ("affectnet8", "npy"): ("AffectNet npy release", dict(train=287651, test=3999), _AN_NPY),
    ("ferplus", "master"): ("FERPlus label.csv", dict(train=25045, valid=3191, test=3137), _FER),
}
CKPLUS_SEQUENCES = 327  # Lucey et al., CVPR Workshops 2010: 327 of 593 sequences carry an emotion
SHAPES = {  # the image size and mode as the release ships: (what it is, the "WxH mode" allowed)
    "rafdb": ("aligned RAF-DB faces", {"100x100 RGB"}),
    "ferplus": ("FERPlus images", {"48x48 L"}),
    "ckplus": ("CK+ frames", {f"640x{h} {m}" for h in (490, 480) for m in ("L", "RGB")}),
}


def official_figures(name, release=None):
    """{release, splits, source}: the published figures of `name` read as `release`, or {}."""
    for (dataset, start), (what, splits, source) in PUBLISHED.items():
        if dataset == name and (release or "").startswith(start):
            return dict(release=what, splits=splits, source=source)
    return {}


def sample_sizes(samples, limit=200):
    """{"WxH mode": n} over up to `limit` evenly spaced images, and those that cannot be opened."""
    sizes, unreadable = Counter(), []
    for path, *_ in samples[:: max(1, -(-len(samples) // limit))]:
        try:
            with Image.open(path) as im:  # the header only
                sizes[f"{im.size[0]}x{im.size[1]} {im.mode}"] += 1
        except Exception:  # not an image, truncated: training would fail on it
            unreadable.append(path)
    return dict(sizes.most_common()), unreadable


def check_dataset(name, root, **options):
    """The report (a dict) of dataset `name` at `root`; CK+ defaults to fold 0."""
    options = {"fold": 0, **options} if name == "ckplus" else options
    splits = ["train", "valid", "test"] if name == "ferplus" else ["train", "test"]
    read = {s: data.build_dataset(name, root, s, **options) for s in splits}
    data.require_disjoint(read["train"], read["test"])
    release = read["train"].release
    official = official_figures(name, release)
    published = official.get("splits", {})
    report = dict(dataset=name, root=root, options=options, read_as=release, official=official)
    report["splits"], warnings = {}, []
    what, allowed = SHAPES.get(name, (None, None))
    for split, ds in read.items():
        counts, (sizes, unreadable) = Counter(ds.targets), sample_sizes(ds.samples)
        n, want = len(ds), published.get(split)
        per_class = {c: counts[i] for i, c in enumerate(ds.classes)}
        entry = dict(images=n, per_class=per_class, dropped=dict(ds.dropped), sizes=sizes)
        report["splits"][split] = dict(entry, unreadable=unreadable, official=want)
        if want not in (None, n):
            warnings.append(f"{n:,} {split} images where the official release has {want:,}")
        if allowed and sizes and not set(sizes) <= allowed:
            seen, allowed_ = ", ".join(list(sizes)[:3]), ", ".join(sorted(allowed))
            warnings.append(f"{split} images are {seen}: not the {what} ({allowed_})")
        if unreadable:
            warnings.append(
                f"{len(unreadable)} sampled {split} images cannot be opened, e.g. {unreadable[0]}"
            )
    if name == "ckplus":  # a sequence is a frame's folder, its subject the folder above
        seqs = {os.path.dirname(p) for ds in read.values() for p, _ in ds.samples}
        report["sequences"], report["subjects"] = len(seqs), len({os.path.dirname(s) for s in seqs})
        if len(seqs) != CKPLUS_SEQUENCES:
            warnings.append(f"{len(seqs):,} labelled sequences where CK+ has {CKPLUS_SEQUENCES}")
    report["warnings"] = warnings
    read_as = f" (read as the {release})" if release else ""
    if warnings:
        report["verdict"] = f"verdict: WARNING{read_as} " + "; ".join(warnings)
    elif official or name == "ckplus":
        what = official.get("release", f"CK+ count of {CKPLUS_SEQUENCES} labelled sequences")
        report["verdict"] = f"verdict: matches the official {what}"
    else:
        report["verdict"] = f"verdict: read without errors{read_as}; no published counts"
    return report


def _counts(d):
    return ", ".join(f"{k} {v:,}" for k, v in d.items()) or "none"


def format_check(report):
    """The report as text, one block per split, the source, and the verdict as the last line."""
    opts = ", ".join(f"{k}={v}" for k, v in report["options"].items()) or "none"
    lines = [f"{report['dataset']} at {report['root']} (options: {opts})"]
    for split, e in report["splits"].items():
        off = "no published count" if e["official"] is None else f"official {e['official']:,}"
        lines.append(f"  {split}: {e['images']:,} images ({off})")
        lines.append(f"    per class: {_counts(e['per_class'])}")
        lines.append(f"    dropped: {_counts(e['dropped'])}")
        lines.append(f"    sizes sampled: {_counts(dict(list(e['sizes'].items())[:5]))}")
    if "sequences" in report:
        lines.append(
            f"  {report['sequences']:,} labelled sequences from {report['subjects']:,} subjects"
        )
    if report["official"]:
        lines.append(f"  source: {report['official']['source']}")
    return "\n".join(lines + [report["verdict"]])


def main(argv=None):
    """Command line: print the check and return 0, or one error line and 2."""
    p = argparse.ArgumentParser(description="Check a dataset against its published release.")
    p.add_argument("--dataset", required=True, choices=sorted(set(data.DATASETS) - {"synthetic"}))
    data.add_flags(p)  # as train.py reads them (CK+: fold 0 unless --fold)
    args = p.parse_args(argv)
    try:
        report = check_dataset(args.dataset, args.data_root, **data.dataset_options(args))
    except (BadInputError, FileNotFoundError) as e:  # the user's layout; bugs keep the traceback
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(format_check(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
