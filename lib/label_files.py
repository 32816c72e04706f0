"""Reading the label files a user gives: lines of text, numbers that must be class codes.

Every problem is one error naming the file and line ("file:line: ..."): not UTF-8, not a number, out
of range. A UTF-8 byte-order mark, CRLF line ends and trailing blanks are accepted.
"""

import csv
import math
import re

import numpy as np

from lib.errors import BadInputError


def rows(path, comma=False):
    """(where "file:line", fields) for each non-blank line of a label file: UTF-8 with or without a
    BOM, LF or CRLF, trailing blanks ignored; a line that is not UTF-8 is named by file and line.
    Fields: the comma-separated fields of a csv line (a line is one record: a quote left open does
    not swallow the next line), else the line split at its last run of blanks ("name label")."""
    with open(path, "rb") as f:
        raw = f.read().splitlines()
    for line_no, line in enumerate(raw, 1):
        try:
            text = line.decode("utf-8-sig" if line_no == 1 else "utf-8").rstrip()
        except UnicodeDecodeError as e:
            raise BadInputError(
                f"{path}:{line_no}: not UTF-8 text ({e.reason} at byte {e.start})"
            ) from None
        if text:
            yield f"{path}:{line_no}", next(csv.reader([text])) if comma else text.rsplit(None, 1)


# a decimal number as label files write it: "3", "-1", "3.0", "   3.0000000e+00" (ASCII digits only:
# no "1_0", no other scripts' digits, which float() would also take)
NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", re.ASCII)


def int_value(text, low, high, where, what="label"):
    """The whole number in `text` ('3', '3.0', '   3.0000000e+00'), within low..high; anything else
    (words, fractions, inf, nan, out of range) is one error naming `where` and `what`."""
    if not NUMBER.fullmatch(text):
        raise BadInputError(f"{where}: {what} {text!r} is not a number")
    value = float(text)
    if not (math.isfinite(value) and value == math.floor(value)):
        raise BadInputError(f"{where}: {what} {text!r} is not a whole number")
    if not low <= value <= high:
        raise BadInputError(f"{where}: {what} {text!r} out of range {low}..{high}")
    return int(value)


def int_label(text, low, high, where):
    """A class code: int_value named "label"."""
    return int_value(text, low, high, where, "label")


def single_label(path, low, high):
    """The one class code a label file holds (CK+'s <subject>_<seq>_<frame>_emotion.txt:
    '   3.0000000e+00'); anything else in it is one error naming the file and line."""
    found = list(rows(path))
    if len(found) != 1 or len(found[0][1]) != 1:
        where = found[1][0] if len(found) > 1 else found[0][0] if found else f"{path}:1"
        raise BadInputError(f"{where}: expected one class code, the file's only entry")
    where, (text,) = found[0]
    return int_label(text, low, high, where)


def npy_label(path, low, high):
    """The class code in a one-number .npy file (AffectNet's <id>_exp.npy: a 0-d string or number
    array); a file that is not such an array is one error naming it."""
    try:
        value = np.load(path, allow_pickle=False)
    # a damaged header fails inside numpy's header parser in many ways (ValueError, SyntaxError,
    # tokenize.TokenError, ...); no pickle is ever loaded, so any failure is a bad file
    except Exception as e:
        raise BadInputError(f"{path}: not a .npy label file ({type(e).__name__}: {e})") from None
    if not isinstance(value, np.ndarray) or value.size != 1 or value.dtype.kind not in "iufUS":
        shape = getattr(value, "shape", None)
        raise BadInputError(f"{path}: expected one class code, got {type(value).__name__} {shape}")
    item = value.reshape(-1)[0]
    text = item.decode("latin-1") if isinstance(item, bytes) else str(item)
    return int_value(text, low, high, path)


def csv_records(path, required):
    """(where "file:line", {column: text}) for each record of a csv file with a header row that
    names the `required` columns; a record whose field count does not fit the header comes as
    (where, the problem in words) for the caller to count or refuse."""
    header = None
    for where, row in rows(path, comma=True):
        if header is None:
            missing = [c for c in required if c not in row]
            if missing:
                raise BadInputError(
                    f"{where}: expected a header with {', '.join(required)}, got {row}"
                )
            header = row
        elif len(row) != len(header):
            yield where, f"expected {len(header)} fields, got {len(row)}"
        else:
            yield where, dict(zip(header, row, strict=True))


def skip_malformed(path, malformed, read, dropped, limit=3):
    """Records of `path` that cannot be read (`malformed`: one "file:line: problem" each, beside
    `read` records that could) are skipped, counted in `dropped` and named (the first few), for a
    release known to ship one (AffectNet's training.csv). More than 1% of the records (and more
    than 10) is not a stray record: the file is refused."""
    if not malformed:
        return
    if len(malformed) > max(10, 0.01 * (read + len(malformed))):
        raise BadInputError(
            f"{malformed[0]} (and {len(malformed) - 1:,} more of {read + len(malformed):,} records "
            "cannot be read: is it the file this dataset ships?)"
        )
    dropped["malformed record"] = len(malformed)
    for line in malformed[:limit]:
        print(f"skipped a malformed record: {line}")
    if len(malformed) > limit:
        print(f"skipped {len(malformed) - limit:,} more malformed records of {path}")


class Entries:
    """The images one label file lists, by key (the name or path as written). A key listed again
    with the same label is a repeat: read once, counted and named by both line numbers; with another
    label it is one error naming both lines, since the file cannot say which label is right."""

    def __init__(self):
        self.first, self.repeats = {}, []

    def new(self, key, label, where):
        """True the first time `key` is listed (at `where`, "file:line"), False for a repeat."""
        if key not in self.first:
            self.first[key] = (where, label)
            return True
        first_where, first_label = self.first[key]
        first_line = first_where.rsplit(":", 1)[1]
        if label != first_label:
            raise BadInputError(
                f"{where}: {key} is labelled {label} here but {first_label} on line {first_line}: "
                "keep the line with the right label"
            )
        self.repeats.append(f"{where}: repeats line {first_line} ({key})")
        return False

    def count(self, dropped, limit=3):
        """Add the repeats to `dropped` and name the first few."""
        if self.repeats:
            dropped["repeated entry, read once"] = len(self.repeats)
        for line in self.repeats[:limit]:
            print(line)
        if len(self.repeats) > limit:
            print(f"... and {len(self.repeats) - limit:,} more repeated entries")
