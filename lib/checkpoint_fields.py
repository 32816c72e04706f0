"""What the values of the project's torch files must be, checked once a file is read: a file of
the right kind whose values have the wrong type, shape or content (a foreign or hand-edited file,
one damaged before its checksums were written, nan or inf) is refused naming the file and the key,
before a reader relies on it. lib/checkpoint.py calls these; they raise errors.BadInputError.

kind_of, describe   which of the project's files a loaded object is, in words
check_fields        the known keys of a checkpoint or anchor file (see its docstring)
check_saved_flags   the flags a last.pt records (train.py --resume) against train.py's parser
"""

import argparse
import math

import torch

from lib.errors import BadInputError
from lib.finite_guard import float_tensors

ANCHOR_FORMAT = "ke2nt-text-anchors-v1"  # the format tag of text_prompts.save_anchors files
# the run's states that train.py's last.pt holds as dicts (state_dict())
STATES = ("optimizer", "scheduler", "scaler")


def kind_of(obj):
    """Which of the project's files a loaded object is: "train", "model", "anchors", "weights" or
    None."""
    if not isinstance(obj, dict):
        return None
    if obj.get("format") == ANCHOR_FORMAT:
        return "anchors"
    if "model" in obj and "class_names" in obj:
        return "train" if "optimizer" in obj else "model"
    if obj and all(torch.is_tensor(v) for v in obj.values()):
        return "weights"
    return None


def describe(obj):
    """What a loaded torch file holds, in words: the kind of KE2NT file, a state dict, a tensor,
    ..."""
    words = {
        "anchors": "a text-anchor file from text_prompts.py",
        "train": "a train.py last.pt (with optimizer state)",
        "model": "a best.pt-style model checkpoint without optimizer state",
    }
    kind = kind_of(obj)
    if kind in words:
        return words[kind]
    if kind == "weights":
        return f"a state dict of {len(obj)} tensors (weights only, no class names, anchors or meta)"
    if isinstance(obj, dict):
        keys = sorted(map(str, obj))
        return f"a dict with keys {keys[:8]}" + (
            f" and {len(keys) - 8} more" if len(keys) > 8 else ""
        )
    if torch.is_tensor(obj):
        return f"a single tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"a {type(obj).__name__}"


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _whole(v, low=0):
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def check_fields(obj, path, kind):
    """The known keys of a "train", "model" or "anchors" file: model a dict of finite tensors;
    class_names a non-empty list of distinct, non-empty str; anchors a finite (K, D) float tensor,
    K >= the number of classes, no row all zero (a zero text feature has no direction for the
    cosine); meta with backbone (str), image_size (>= 1), mean and std (3 finite numbers, std > 0);
    epoch an int >= 0; clip and templates str; a last.pt's states dicts of finite tensors, its args
    a dict of flags, its record (history, best, last_test) with the fields that train.py reads
    back."""

    def bad(key, expected):
        return BadInputError(
            f"{path}: key {key!r} must be {expected}, it holds {describe(obj[key])}"
        )

    model = obj.get("model")
    if "model" in obj and not (
        isinstance(model, dict) and all(torch.is_tensor(v) for v in model.values())
    ):
        raise bad("model", "the model's state dict (tensors)")
    names = obj.get("class_names")
    if "class_names" in obj:
        if not (
            isinstance(names, list)
            and names
            and all(isinstance(n, str) and n.strip() for n in names)
        ):
            raise bad("class_names", "a non-empty list of class names")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise BadInputError(
                f"{path}: key 'class_names' names {twice} more than once ({list(names)}); each "
                "class has one name"
            )
    anchors = obj.get("anchors")
    if "anchors" in obj:
        if not (torch.is_tensor(anchors) and anchors.dim() == 2 and anchors.is_floating_point()):
            raise bad("anchors", "a (K, D) float tensor")
        if names and anchors.shape[0] < len(names):
            raise BadInputError(
                f"{path}: class set mismatch: {anchors.shape[0]} anchors for {len(names)} class "
                f"names {list(names)}"
            )
        if not bool(torch.isfinite(anchors).all()):
            raise BadInputError(f"{path}: key 'anchors' holds nan or inf; the file is damaged")
        zero = (anchors == 0).all(dim=1).nonzero().flatten().tolist()
        if zero:
            raise BadInputError(
                f"{path}: key 'anchors' has all-zero rows {zero[:5]}: a zero text feature has no "
                "direction to compare images with; the file is damaged"
            )
    _check_meta(obj, path, bad)
    if "epoch" in obj and not _whole(obj["epoch"]):
        raise bad("epoch", "a whole number >= 0")
    for key in ("clip",) + (("templates",) if kind == "anchors" else ()):
        value = obj.get(key)
        if key == "clip" and key in obj and not isinstance(value, str):
            raise bad("clip", "the name of the anchors' source (a str)")
        if key == "templates" and not (
            isinstance(value, (list, tuple)) and value and all(isinstance(t, str) for t in value)
        ):
            raise bad("templates", "a non-empty list of prompt templates (str)")
    for key in STATES + ("args", "best"):
        required = kind == "train" and key != "best"
        if key in obj and (obj[key] is not None or required) and not isinstance(obj[key], dict):
            raise bad(key, "a dict")
    if kind == "train":
        _check_record(obj, path, bad)
    broken = nonfinite({k: obj[k] for k in ("model", "optimizer") if k in obj})
    if broken:
        raise BadInputError(
            f"{path}: nan or inf in {', '.join(broken)}; train.py never saves such a state, so "
            "the file is damaged"
        )


def nonfinite(states, limit=5):
    """The names of up to `limit` floating tensors in states (nested dicts) holding nan or inf. A
    finite sum proves a tensor finite (any nan or inf makes it nan or inf): on the CPU 10x faster
    than isfinite().all(), which runs only where the sum is not finite (nan, inf or an
    overflow)."""
    bad = [
        name
        for name, t in float_tensors(states)
        if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all())
    ]
    return bad[:limit] + ([f"{len(bad) - limit} more"] if len(bad) > limit else [])


def _check_meta(obj, path, bad):
    if "meta" not in obj:
        return
    meta = obj["meta"]
    if not (
        isinstance(meta, dict) and all(k in meta for k in ("backbone", "image_size", "mean", "std"))
    ):
        raise bad("meta", "a dict with backbone, image_size, mean and std")
    triples = [meta["mean"], meta["std"]]
    if not (
        isinstance(meta["backbone"], str)
        and _whole(meta["image_size"], 1)
        and all(isinstance(t, (list, tuple)) and len(t) == 3 for t in triples)
        and all(_number(v) for t in triples for v in t)
        and all(v > 0 for v in meta["std"])
    ):
        raise BadInputError(
            f"{path}: key 'meta' must hold backbone (a name), image_size (a whole number >= 1), "
            f"mean and std (3 finite numbers each, std > 0); it holds {meta!r}"[:400]
        )


def _check_record(obj, path, bad):
    """A last.pt's record as run_records reads it back (written after an epoch, never before):
    history a non-empty list of epoch rows (epoch, epoch_seconds), best the best epoch (score,
    epoch, selected_on, test_accuracy, mean_class_accuracy), last_test a report (accuracy,
    mean_class_accuracy, per_class_accuracy, confusion_matrix)."""
    history, best, last = obj["history"], obj["best"], obj["last_test"]
    if not (
        isinstance(history, list)
        and history
        and all(
            isinstance(r, dict) and _whole(r.get("epoch"), 1) and _number(r.get("epoch_seconds"))
            for r in history
        )
    ):
        raise bad("history", "a non-empty list of epoch rows (dicts with epoch and epoch_seconds)")
    numbers = ("score", "test_accuracy", "mean_class_accuracy")
    if not (
        isinstance(best, dict)
        and all(_number(best.get(k)) for k in numbers)
        and _whole(best.get("epoch"), 1)
        and best.get("selected_on") in ("val", "test")
    ):
        raise bad("best", "the best epoch's record (score, epoch, selected_on, accuracies)")
    if not (
        isinstance(last, dict)
        and _number(last.get("accuracy"))
        and _number(last.get("mean_class_accuracy"))
        and isinstance(last.get("per_class_accuracy"), dict)
        and isinstance(last.get("confusion_matrix"), list)
    ):
        raise bad("last_test", "the last epoch's test report (accuracy, mean_class_accuracy, ...)")


def check_saved_flags(saved, parser, path):
    """The flags a last.pt records (vars(args) of its run) against train.py's parser, filled in
    place: a flag the run's version of train.py did not have takes its default (a new flag's
    default keeps the old behaviour), one this train.py does not have is dropped, each said; each
    value must be of the type its flag parses to and among its choices. Ranges are
    errors.check_flags'."""
    flags = [a for a in parser._actions if a.dest != "help"]
    if not all(isinstance(k, str) for k in saved):
        raise BadInputError(f"{path}: key 'args' holds keys that are not flag names")
    unknown = sorted(set(saved) - {a.dest for a in flags})
    if unknown:  # a flag since removed, or a damaged file: nothing this train.py could use
        print(f"note: {path} records settings train.py does not know, ignored: {unknown!r:.80}")
        for k in unknown:
            del saved[k]
    missing = sorted(a.dest for a in flags if a.dest not in saved)
    if missing:
        print(f"note: {path} was made by a train.py without {missing}: their defaults are used")
        saved.update({a.dest: a.default for a in flags if a.dest in missing})
    for a in flags:
        value, flag = saved[a.dest], a.option_strings[0]
        if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            ok = isinstance(value, bool)
        elif a.choices is not None:
            ok = value in a.choices and (value is not None or a.default is None)
        elif a.type is int:
            ok = (value is None and a.default is None) or (
                isinstance(value, int) and not isinstance(value, bool)
            )
        elif a.type is float:
            ok = (value is None and a.default is None) or _number(value)
        elif a.nargs is not None:
            ok = value is None or (
                isinstance(value, list) and all(isinstance(v, str) for v in value)
            )
        else:
            ok = value is None or isinstance(value, str)
        if not ok:
            raise BadInputError(
                f"{path}: the run's setting {flag} holds {value!r:.60}, which {flag} cannot take; "
                "the file is damaged"
            )
