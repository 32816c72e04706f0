"""Reading label files: every problem is one error naming the file and line (not UTF-8, not a
number, out of range, an image listed twice with two labels); a BOM, CRLF and trailing blanks are
accepted. By hand, as csv.DictReader names no line; a csv line is one record (an open quote ends).
"""

import csv
import re

import numpy as np

from lib.errors import BadInputError


def rows(path, comma=False):
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
NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", re.ASCII)


def int_value(text, low, high, where, what="label"):
    """The whole number in `text`, within low..high; anything else is an error naming `where`."""
    if not NUMBER.fullmatch(text):
        raise BadInputError(f"{where}: {what} {text!r} is not a number")
    if not float(text).is_integer():
        raise BadInputError(f"{where}: {what} {text!r} is not a whole number")
    if not low <= float(text) <= high:
        raise BadInputError(f"{where}: {what} {text!r} out of range {low}..{high}")
    return int(float(text))


def single_label(path, low, high):
    """The one class code of a file that holds nothing else (CK+'s *_emotion.txt: '   3.0e+00')."""
    found = list(rows(path)) or [(f"{path}:1", [])]
    if len(found) != 1 or len(found[0][1]) != 1:
        where = found[min(1, len(found) - 1)][0]  # the first line too many, or the line itself
        raise BadInputError(f"{where}: expected one class code, the file's only entry")
    return int_value(found[0][1][0], low, high, found[0][0])


def npy_label(path, low, high):
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
    return int_value(text, low, high, path)


def csv_records(path, required):
    """(where, {column: text}) of each record under a header naming the `required` columns, or
    (where, the problem) for a record whose field count does not fit the header."""
    header = None
    for where, row in rows(path, comma=True):
        if header is None and not set(required) <= set(row):
            raise BadInputError(f"{where}: expected a header with {', '.join(required)}, got {row}")
        if header is None:
            header = row
        elif len(row) != len(header):
            yield where, f"expected {len(header)} fields, got {len(row)}"
        else:
            yield where, dict(zip(header, row, strict=True))


def first_time(seen, dropped, key, label, where):
    """True the first time a label file lists `key` (seen: {key: (where, label)}). Listed again,
    with the same label it is counted in `dropped` (the first three named), else an error."""
    first_where, first_label = seen.setdefault(key, (where, label))
    if first_where == where:
        return True
    line = first_where.rsplit(":", 1)[1]
    if label != first_label:
        raise BadInputError(
            f"{where}: {key} is labelled {label} here but {first_label} on line {line}: "
            "keep the line with the right label"
        )
    repeats = dropped["repeated entry, read once"] = dropped.get("repeated entry, read once", 0) + 1
    if repeats <= 3:
        print(f"{where}: repeats line {line} ({key})")
    return False
