"""What the benchmark scripts share: writing their result as JSON, atomically."""
import json
import os


def write_json(path, result):
    """Write result (a JSON-able dict) to path via a temp file and rename; makes the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, path)
