"""The run's files: atomic saves, in the background too; weights-only loads of train.py's
checkpoints; folders made from flags; one run per output folder, locked while it runs."""

import concurrent.futures
import contextlib
import fcntl
import glob
import os
import shutil
import time
import zipfile

import torch

from lib.errors import BadInputError, MissingFileError, WriteError

REQUIRED_KEYS = {
    "model": ("model", "class_names", "anchors", "meta"),
    "train": (
        *("model", "optimizer", "scheduler", "scaler", "argv", "epoch", "history", "best"),
        *("last_test", "precision", "anchors", "class_names", "clip", "meta", "world_size", "data"),
    ),
}
NEEDS = {
    "model": "give the last.pt or best.pt that train.py writes",
    "train": "--resume needs the last.pt that this version of train.py writes into its --output",
}
# A run's files in its folder: train.py's, and the reports evaluate.py writes beside them by default
RUN_FILES = ("last.pt", "best.pt", "log.jsonl", "metrics.json")
REPORTS = ("eval-*", "predictions")


def save_atomic(obj, path):
    """Write obj (a str as UTF-8 text, else with torch.save) to path atomically; a failed write (a
    full disk) is a WriteError naming the path and the reason, the previous file unchanged. torch's
    own short write says only "unexpected pos": the disk's free space says what happened."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            if isinstance(obj, str):
                f.write(obj.encode())
            else:
                torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # a full disk, no permission; or Ctrl-C: no temporary file left
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if not (isinstance(e, OSError) or "unexpected pos" in str(e)):
            raise
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        full = "No space left on device" if free < 2**26 else "the write stopped short"
        reason = getattr(e, "strerror", None) or f"{full}: {free:,} bytes free"
        raise WriteError(
            f"could not write {path} ({reason}); the previous file is unchanged"
        ) from e


def output_folder(path, flag):
    """Make the folder `path` given by `flag` (and its parents); a file in the way, no
    permission, a read-only disk: one BadInputError naming the flag and the system's reason."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:  # FileExistsError: `path` itself is there, not a folder
        why = "it is a file, not a folder" if isinstance(e, FileExistsError) else e.strerror or e
        raise BadInputError(f"{flag} {path}: cannot make this folder ({why})") from None
    return path


def snapshot(obj):
    """obj with every tensor copied to the CPU (nested dicts and lists), safe to write while
    training changes the originals: a GPU's tensors are queued without blocking, then waited for
    once."""

    def copy(x):
        if torch.is_tensor(x):
            return x.detach().to("cpu", copy=True, non_blocking=True)
        if isinstance(x, dict):
            return {k: copy(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(copy(v) for v in x)
        return x

    out = copy(obj)
    if torch.cuda.is_initialized():  # the copies from this process's GPU (lib/device.py)
        torch.cuda.synchronize()
    return out


class BackgroundWriter:
    """save_atomic off the training thread, so the next epoch trains while a checkpoint is written.
    write([(obj, path), ...]) snapshots at once and returns; wait() returns once the files are on
    disk, raising what the write raised. As a context manager it waits on the way out, however the
    block ends (an error in flight is not masked by a failed write)."""

    def __init__(self):
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._pending = None

    def write(self, files):
        self.wait()
        copies = [(snapshot(obj), path) for obj, path in files]
        self._pending = self._pool.submit(lambda: [save_atomic(o, p) for o, p in copies])

    def wait(self):
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        try:
            with contextlib.suppress(Exception) if kind else contextlib.nullcontext():
                self.wait()
        finally:
            self._pool.shutdown()


def load_checkpoint(path, kind="model"):
    """A train.py file as a dict: "train" (last.pt, for --resume) or "model" (last.pt or
    best.pt); a run folder stands for its last.pt. Missing, damaged (zipfile's CRC check: torch.load
    checks none), holding pickled objects, or without the kind's keys: one BadInputError naming the
    file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "last.pt")
    if not os.path.isfile(path):
        raise MissingFileError(f"checkpoint {path} does not exist; {NEEDS[kind]}")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        obj = None if damaged else torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        if "Weights only load failed" in str(e):
            why = "it holds pickled Python objects, refused since loading them could run code"
        raise BadInputError(f"checkpoint {path} cannot be read ({why}); {NEEDS[kind]}") from None
    if damaged:
        raise BadInputError(f"checkpoint {path} is damaged ({damaged} fails its CRC check)")
    missing = [k for k in REQUIRED_KEYS[kind] if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise BadInputError(f"{path} is not a train.py checkpoint (no {missing}); {NEEDS[kind]}")
    return obj


@contextlib.contextmanager
def run_lock(folder, hint, wait_s=5.0):
    """Hold <folder>/run.lock (flock) while the block runs, else a BadInputError ending with `hint`.
    The file is never deleted (a second run could lock a new one beside it); DataLoader workers
    inherit the lock and end within seconds of their run, hence the short wait."""
    try:
        fd = os.open(os.path.join(folder, "run.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a read-only folder
        raise BadInputError(f"{folder}: cannot write in this folder ({e.strerror or e})") from None
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BadInputError(f"{folder} is in use by another run; {hint}") from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def run_folder(output, resume=None, overwrite=False):
    """--output made and locked while the run lasts. A folder never holds two runs' files: one
    there is refused, unless it is the run being resumed, or --overwrite, which deletes its files
    and the reports evaluate.py wrote beside them (once the lock is held) before the new run."""
    output_folder(output, "--output")
    last_pt = os.path.join(output, "last.pt")
    resuming = bool(resume) and os.path.abspath(last_pt) == os.path.abspath(resume)
    found = [name for name in RUN_FILES if os.path.exists(os.path.join(output, name))]
    if found and not (resuming or overwrite):
        raise BadInputError(
            f"{output} already holds a training run ({', '.join(found)}); continue it with "
            f"--resume {last_pt}, start a new one with a fresh --output FOLDER, or pass "
            "--overwrite to replace it"
        )
    hint = "--resume it once it has ended" if resuming else "wait, or give a fresh --output FOLDER"
    with run_lock(output, hint):
        if not resuming:  # --overwrite: the earlier run goes, all of it
            for path in [os.path.join(output, n) for n in RUN_FILES]:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            for pattern in REPORTS:
                for path in glob.glob(os.path.join(glob.escape(output), pattern)):
                    shutil.rmtree(path, ignore_errors=True)
        yield
