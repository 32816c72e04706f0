"""Reading the label files a user gives: lines of text, numbers that must be class codes.

Every problem is one error naming the file and line ("file:line: ..."): not UTF-8, not a number, out
of range. A UTF-8 byte-order mark, CRLF line ends and trailing blanks are accepted.
"""

import csv

from lib.errors import BadInputError


def rows(path, comma=False):
    """(where "file:line", fields) for each non-blank line of a label file: UTF-8 with or without a
    BOM, LF or CRLF, trailing blanks ignored; a line that is not UTF-8 is named by file and line."""
    with open(path, "rb") as f:
        raw = f.read().splitlines()
    lines = []
    for line_no, line in enumerate(raw, 1):
        try:
            lines.append(line.decode("utf-8-sig" if line_no == 1 else "utf-8").rstrip())
        except UnicodeDecodeError as e:
            raise BadInputError(
                f"{path}:{line_no}: not UTF-8 text ({e.reason} at byte {e.start})"
            ) from None
    rows = csv.reader(lines) if comma else (line.rsplit(None, 1) for line in lines)
    for line_no, row in enumerate(rows, 1):
        if row:
            yield f"{path}:{line_no}", row


def int_label(text, low, high, where):
    try:
        value = int(float(text))
    except ValueError:
        raise BadInputError(f"{where}: label {text!r} is not a number") from None
    if not (low <= value <= high and float(text) == value):
        raise BadInputError(f"{where}: label {text!r} out of range {low}..{high}")
    return value
