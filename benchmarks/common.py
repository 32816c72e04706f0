"""What the benchmark scripts share: writing their result as JSON, atomically
(checkpoint.save_atomic)."""

import json
import os

from lib.checkpoint import save_atomic


def write_json(path, result):
    """Write result (a JSON-able dict) to path atomically; makes the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_atomic(json.dumps(result, indent=2) + "\n", path)
