"""--images: the photos to classify (a file, or a folder searched recursively) and the predictions
table (on screen, predictions.csv, predictions.json)."""

import csv
import io
import json
import os
from pathlib import Path

from lib.checkpoint import save_atomic
from lib.errors import BadInputError, MissingFileError
from lib.face_images import IMAGE_EXTENSIONS


def list_images(path):
    """A file -> [file]; a folder -> its image files (by extension), recursively, sorted; hidden
    entries (a part of the path starting with ".") are left out, and counted."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise MissingFileError(f"--images: no such file or folder: {path}")
    found = [p for p in Path(path).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS]
    hidden = [p for p in found if any(part.startswith(".") for part in p.relative_to(path).parts)]
    if hidden:  # .ipynb_checkpoints/, macOS's ._x.jpg: never photos, as in the datasets
        print(
            f"--images: left out {len(hidden)} hidden files (names starting '.'), e.g. {hidden[0]}"
        )
    found = sorted(str(p) for p in found if p not in hidden and p.is_file())
    if not found:
        raise BadInputError(f"--images: no {', '.join(IMAGE_EXTENSIONS)} files in {path}")
    return found


def write_predictions(rows, skipped, out, k, checkpoint):
    """The predictions table on screen, predictions.csv and predictions.json in `out`."""
    table = io.StringIO()
    w = csv.writer(table)
    w.writerow(["path"] + [f"{c}{i + 1}" for i in range(k) for c in ("class", "probability")])
    width = max([len(r["path"]) for r in rows] + [4])
    print(f"{'file':<{width}}  " + "  ".join(f"{'top ' + str(i + 1):<18}" for i in range(k)))
    for r in rows:
        cells = [v for t in r["top"] for v in (t["class_name"], f"{t['probability']:.6f}")]
        w.writerow([r["path"]] + cells)
        tops = [f"{t['class_name'][:10]:<10} {t['probability']:.3f}  " for t in r["top"]]
        print(f"{r['path']:<{width}}  " + "  ".join(tops))
    table_path = os.path.join(out, "predictions.csv")
    save_atomic(table.getvalue(), table_path)
    record = dict(checkpoint=os.path.abspath(checkpoint), predictions=rows, skipped=skipped)
    save_atomic(json.dumps(record, indent=2), os.path.join(out, "predictions.json"))
    print(f"{len(rows)} images classified, {len(skipped)} skipped; {table_path}, predictions.json")
