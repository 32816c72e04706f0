"""--images: the photos to classify (one file, or a folder searched recursively) and the predictions
table (on screen, predictions.csv, predictions.json)."""

import csv
import io
import json
import os

from lib import face_images
from lib.checkpoint import save_atomic
from lib.errors import BadInputError, MissingFileError


def list_images(path):
    """A file -> [file]; a folder -> its image files (by extension), recursively, sorted."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise MissingFileError(f"--images: no such file or folder: {path}")
    found = [
        os.path.join(d, f)
        for d, _, files in os.walk(path)
        for f in files
        if f.lower().endswith(face_images.IMAGE_EXTENSIONS)
    ]
    if not found:
        raise BadInputError(
            f"--images: {path} holds no image files ({', '.join(face_images.IMAGE_EXTENSIONS)})"
        )
    return sorted(found)


def write_predictions(rows, skipped, out, k, checkpoint):
    """The predictions table on screen, predictions.csv and predictions.json in `out`."""
    width = max([len(r["path"]) for r in rows] + [4])
    print(f"{'file':<{width}}  " + "  ".join(f"{'top ' + str(i + 1):<18}" for i in range(k)))
    for r in rows:
        print(
            f"{r['path']:<{width}}  "
            + "  ".join(f"{t['class_name'][:10]:<10} {t['probability']:.3f}  " for t in r["top"])
        )
    table = io.StringIO()
    w = csv.writer(table)
    w.writerow(["path"] + [f"{c}{i + 1}" for i in range(k) for c in ("class", "probability")])
    for r in rows:
        w.writerow(
            [r["path"]]
            + [v for t in r["top"] for v in (t["class_name"], f"{t['probability']:.6f}")]
        )
    save_atomic(table.getvalue(), os.path.join(out, "predictions.csv"))
    save_atomic(
        json.dumps(
            dict(checkpoint=os.path.abspath(checkpoint), predictions=rows, skipped=skipped),
            indent=2,
        ),
        os.path.join(out, "predictions.json"),
    )
    print(
        f"{len(rows)} images classified, {len(skipped)} skipped; "
        f"{os.path.join(out, 'predictions.csv')} and predictions.json"
    )
