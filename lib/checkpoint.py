"""The one place that writes and reads the project's files safely.

save_atomic       a write either completes or leaves the previous file as it was (temp file,
                  fsync, rename)
BackgroundWriter  save_atomic in a background thread, from a snapshot taken at once
remove_stale_temporaries
                  the temp files an interrupted save_atomic left behind
read_torch_file   torch.load(weights_only=True): pickled code is never run; every failure is one
                  clear error naming the file (missing, a folder, empty, truncated, not a torch
                  file, refused)
load_checkpoint   a file checked to be the kind asked for: "train" (last.pt for --resume), "model"
                  (last.pt / best.pt), "anchors" (text_prompts.save_anchors) or "weights" (a state
                  dict)
all_finite / require_finite
                  the non-finite guard before a save, one host-device sync per call
refuse_overwrite  a new run never replaces the files of another run

Failures caused by the user's input raise errors.UserError subclasses (see errors.py).
"""

import contextlib
import errno
import os
import re
import warnings
import zipfile

import torch

from lib.checkpoint_fields import ANCHOR_FORMAT, check_fields, describe, kind_of
from lib.errors import BadInputError, MissingFileError, WriteError
from lib.finite_guard import float_tensors
from lib.run_lock import pid_alive

# "{name}.tmp{pid}", as save_atomic writes
TEMP_NAME = re.compile(r"^(?P<name>.+)\.tmp(?P<pid>\d+)$")
RUN_FILES = ("last.pt", "best.pt", "log.jsonl", "metrics.json")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip format (PyTorch >= 1.6)
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # no space; over the disk quota
_LEGACY_MAGIC = (
    b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # the legacy format's pickled magic number
)

REQUIRED_KEYS = {
    "train": (
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "epoch",
        "args",
        "anchors",
        "class_names",
        "clip",
        "meta",
        "history",
        "best",
        "last_test",
    ),
    "model": ("model", "class_names", "anchors", "meta"),
    "anchors": ("format", "anchors", "class_names", "templates", "clip"),
    "weights": (),
}
WHAT = {
    "train": "checkpoint",
    "model": "checkpoint",
    "anchors": "anchor file",
    "weights": "weights file",
}
NEEDS = {
    "train": "--resume needs the run's last.pt (train.py writes it into the run's --output folder)",
    "model": "give the last.pt or best.pt that train.py writes",
    "anchors": "make an anchor file with `python text_prompts.py --dataset NAME --out FILE`",
    "weights": "--backbone-weights needs a state dict of the backbone's tensors",
}


def save_atomic(obj, path):
    """Write obj (str -> UTF-8 text, bytes, or anything torch.save takes) to path atomically: a temp
    file "{name}.tmp{pid}" in the same folder, flush + fsync, os.replace, then fsync of the folder.
    On any failure the temp file is removed and the previous file at path stays as it was; a failed
    write (e.g. a full disk) raises errors.WriteError naming the path; any other failure (e.g. an
    object that cannot be pickled: a bug) is re-raised unchanged."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f"{name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if isinstance(obj, str):
                f.write(obj.encode("utf-8"))
            elif isinstance(obj, (bytes, bytearray)):
                f.write(obj)
            else:
                torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if _write_failure(e):
            full = isinstance(e, RuntimeError) or getattr(e, "errno", None) in _DISK_FULL
            reason = (
                str(e).strip().splitlines()[0]
                if isinstance(e, RuntimeError)
                else (e.strerror or str(e))
            )
            raise WriteError(
                f"could not write {path} ({reason})"
                + ("; the disk may be full" if full else "")
                + "; the previous version of the file, if any, is unchanged"
            ) from e
        raise
    _fsync_folder(folder)


def _write_failure(e):
    """True for the errors of a failed write: OSError, or torch's "unexpected pos" of a short
    write."""
    return isinstance(e, OSError) or (isinstance(e, RuntimeError) and "unexpected pos" in str(e))


def _fsync_folder(folder):
    """Make the rename durable where the platform allows opening a folder (POSIX)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def snapshot(obj):
    """obj with every tensor copied to the CPU (nested dicts, lists, tuples): safe to write while
    training goes on changing the originals. A GPU's tensors are all queued for copying without
    blocking (into pinned memory), then waited for once: not hundreds of blocking copies."""
    devices = set()

    def copy(x):
        if torch.is_tensor(x):
            devices.add(x.device)
            return x.detach().to("cpu", copy=True, non_blocking=True)
        if isinstance(x, dict):
            return {k: copy(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(copy(v) for v in x)
        return x

    out = copy(obj)
    for device in devices:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return out


class BackgroundWriter:
    """save_atomic off the training thread, so that the next epoch trains while a checkpoint is
    written. write() takes a snapshot on the CPU at once and returns; the files are written in one
    background thread, one call at a time; wait() returns when they are on disk and raises what the
    write raised. As a context manager it waits on the way out, however the block ends (an error
    in flight is not masked by a failed write, which leaves the previous file whole)."""

    def __init__(self):
        import concurrent.futures

        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="checkpoint"
        )
        self._pending = None

    def write(self, files):
        """files: [(obj, path)], written in order with save_atomic."""
        self.wait()
        copies = [(snapshot(obj), path) for obj, path in files]
        self._pending = self._pool.submit(lambda: [save_atomic(obj, path) for obj, path in copies])

    def wait(self):
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        try:
            if kind is None:
                self.wait()
            else:
                with contextlib.suppress(Exception):
                    self.wait()
        finally:
            self._pool.shutdown()


def remove_stale_temporaries(folder, names=None):
    """Delete the "{name}.tmp{pid}" files in folder whose writing process no longer runs (an
    interrupted save_atomic); with `names` (e.g. RUN_FILES) only the temp files of those names. Temp
    files of a live process are kept. Returns the paths removed (sorted)."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for entry in sorted(os.listdir(folder)):
        m = TEMP_NAME.match(entry)
        path = os.path.join(folder, entry)
        if (
            m
            and (names is None or m["name"] in names)
            and os.path.isfile(path)
            and not pid_alive(int(m["pid"]))
        ):
            with contextlib.suppress(OSError):
                os.remove(path)
                removed.append(path)
    return removed


def read_torch_file(path, what="checkpoint"):
    """torch.load(path, map_location="cpu", weights_only=True), every failure one BadInputError (or
    MissingFileError) naming the file. Files that are not torch files (empty, text, plain pickles)
    are never handed to the unpickler; pickled Python objects inside a torch file are refused, not
    run."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(f"{what} {path} does not exist")
    if os.path.isdir(path):
        raise BadInputError(f"{what} {path} is a folder, not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_MAGIC))
    except OSError as e:
        raise BadInputError(f"cannot read {what} {path}: {e.strerror or e}") from e
    if not head:
        raise BadInputError(
            f"{what} {path} is empty (0 bytes): an interrupted copy or write; copy or make it again"
        )
    if not (head.startswith(_ZIP_MAGIC) or head == _LEGACY_MAGIC):
        raise BadInputError(f"{what} {path} is not a torch file ({_content_kind(path, head)})")
    if head.startswith(_ZIP_MAGIC):
        _check_records(path, what)
    try:
        with warnings.catch_warnings():
            # torch's pickle-protocol notes; the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BadInputError(_load_failure(path, what, e, head.startswith(_ZIP_MAGIC))) from None


def _check_records(path, what):
    """Every record of a zip-format torch file against the CRC-32 that torch.save wrote beside it:
    torch.load checks none, so a changed byte in a tensor or in the pickled structure would load as
    other numbers or names without a word. A mismatch, or a zip that cannot be walked, is a
    BadInputError naming the file. Records saved without a CRC (torch.serialization.
    set_crc32_options(False) writes 0) are not checked."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0:
                    continue
                with archive.open(info) as record:
                    while record.read(1 << 22):
                        pass
    except Exception as e:  # BadZipFile, EOFError, zlib.error, NotImplementedError, ...: the file
        first_line = (str(e).splitlines() or [""])[0][:120]
        raise BadInputError(
            f"{what} {path} is truncated or damaged ({type(e).__name__}: {first_line}); copy or "
            "make it again"
        ) from None


def _content_kind(path, head):
    """A few words on what a non-torch file looks like: a pickle, text (with its first line), or
    binary."""
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a plain Python pickle; pickles are never loaded, since loading one can run code"
    with open(path, "rb") as f:
        start = f.read(200)
    try:
        text = start.decode("utf-8-sig")
    except UnicodeDecodeError:
        return "unrecognised binary content"
    first = text.strip().splitlines()[0][:60] if text.strip() else ""
    return f"it is text, starting {first!r}"


def _load_failure(path, what, e, is_zip):
    """The one-line message for a torch.load failure: refused pickled objects, or a damaged file."""
    message = str(e)
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if "Weights only load failed" in message and found:
        return (
            f"{what} {path} holds pickled Python objects ({found[1]}) beyond tensors and plain "
            "containers; they are refused for safety (loading them could run code). Re-save only "
            "the tensors, e.g. torch.save(model.state_dict(), FILE), where you trust the file"
        )
    if "Weights only load failed" in message:
        return (
            f"{what} {path} cannot be read by weights-only loading: it is damaged, or holds "
            "content beyond tensors and plain containers, which is refused for safety (never run)"
        )
    if is_zip and ("central directory" in message or "PytorchStreamReader" in message):
        return (
            f"{what} {path} is truncated or damaged (an interrupted copy or write); "
            "copy or make it again"
        )
    if is_zip and ("data.pkl" in message or "not in a subdirectory" in message):
        return f"{what} {path} is a zip archive but not a torch file"
    first_line = (message.strip().splitlines() or ["no message"])[0][:120]  # EOFError: none
    return f"{what} {path} is truncated or damaged ({type(e).__name__}: {first_line})"


def resolve_checkpoint_path(path, kind="train"):
    """A run folder given for a "train" or "model" checkpoint -> its last.pt; any other path
    unchanged."""
    path = os.fspath(path)
    if kind in ("train", "model") and os.path.isdir(path):
        inner = os.path.join(path, "last.pt")
        if not os.path.isfile(inner):
            raise MissingFileError(f"{path} is a folder without a last.pt; {NEEDS[kind]}")
        return inner
    return path


def load_checkpoint(path, kind):
    """Read path as a `kind` file ("train", "model", "anchors", "weights") and check it. Returns the
    dict ("weights": the dict as read; model.load_backbone_weights unwraps it). The wrong kind of
    file gets a message saying what it is and what to give instead."""
    if kind not in REQUIRED_KEYS:
        raise ValueError(f"kind must be one of {sorted(REQUIRED_KEYS)}, got {kind!r}")
    path = resolve_checkpoint_path(path, kind)
    if not os.path.exists(path):
        raise MissingFileError(f"{WHAT[kind]} {path} does not exist; {NEEDS[kind]}")
    obj = read_torch_file(path, WHAT[kind])
    if not isinstance(obj, dict):
        raise BadInputError(f"{path} holds {describe(obj)}, not a {WHAT[kind]} dict; {NEEDS[kind]}")
    if kind == "weights":
        return _check_weights(obj, path)
    if kind == "anchors" and obj.get("format") != ANCHOR_FORMAT:
        raise BadInputError(
            f"{path}: not a text-anchor file (it is {describe(obj)}, without format "
            f"{ANCHOR_FORMAT!r}); {NEEDS[kind]}"
        )
    missing = [k for k in REQUIRED_KEYS[kind] if k not in obj]
    if missing:
        other = kind_of(obj)
        if other not in (None, kind) and (kind, other) != ("model", "train"):
            raise BadInputError(f"{path} is {describe(obj)}; {NEEDS[kind]}")
        raise BadInputError(
            f"{path} is not a {WHAT[kind]} of this project: missing keys {missing}; {NEEDS[kind]}"
        )
    check_fields(obj, path, kind)
    if kind == "anchors" and obj["anchors"].shape[0] != len(obj["class_names"]):
        raise BadInputError(
            f"{path}: class set mismatch: {obj['anchors'].shape[0]} anchors for "
            f"{len(obj['class_names'])} class names {list(obj['class_names'])}; an anchor file "
            "has one per class"
        )
    return obj


def _check_weights(obj, path):
    """A weights file's dict, returned as it is (model.py unwraps 'state_dict' containers and strips
    'module.'); a KE2NT checkpoint, or a dict without a tensor, is refused by name."""
    if "model" in obj and "class_names" in obj:
        raise BadInputError(
            f"{path} is {describe(obj)}, not backbone weights; {NEEDS['weights']} (a train.py "
            "checkpoint goes to evaluate.py --checkpoint, a run's last.pt to --resume)"
        )
    if not any(torch.is_tensor(v) for _, v in float_tensors(obj)):
        raise BadInputError(f"{path} holds no tensors; {NEEDS['weights']}")
    return obj


def refuse_overwrite(output_dir, overwrite=False):
    """A new run into output_dir: if it holds a last.pt (a finished or running run) and overwrite is
    False, BadInputError naming --resume, a fresh --output and --overwrite. Returns the run files
    present."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise BadInputError(f"--output {output_dir} is a file, not a folder")
    present = [n for n in RUN_FILES if os.path.isfile(os.path.join(output_dir, n))]
    if "last.pt" in present and not overwrite:
        last = os.path.join(output_dir, "last.pt")
        raise BadInputError(
            f"{output_dir} already holds a training run ({', '.join(present)}); continue it "
            f"with --resume {last}, start a new one with a fresh --output FOLDER, or pass "
            "--overwrite to replace it"
        )
    return present
